#!/usr/bin/env bash
# Installs every system package and Python tool the project needs. Idempotent.
. "$(dirname "$0")/lib.sh"
require_root

apt_install \
    ca-certificates curl jq openssl iproute2 iptables nftables conntrack socat procps psmisc kmod \
    util-linux e2fsprogs \
    golang-go etcd-server dpkg-dev rsync make gcc libc6-dev apache2-utils \
    docker-registry skopeo umoci busybox-static \
    runc containerd containernetworking-plugins \
    python3-venv python3-pip

# moto (EC2 emulator) and boto3 (used by the IMDS emulator) in a private venv.
if [ ! -x "$VENV_DIR/bin/moto_server" ]; then
    log "installing moto into $VENV_DIR"
    python3 -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' 'boto3==1.44.5'
fi

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
