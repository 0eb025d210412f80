#!/usr/bin/env bash
# Builds the upstream Kubernetes 1.20.2 binaries the tests and benchmarks run against
# (kube-apiserver, kube-controller-manager, kube-scheduler for the control plane; kubelet
# and kube-proxy for the reference node and the e2e cluster) from Debian bookworm's
# `kubernetes` source package, which vendors its Go dependencies, so no network beyond
# Debian's mirror is needed. The binaries are cached in $KUBE_BIN_DIR; a second run
# returns at once.
. "$(dirname "$0")/lib.sh"
require_root

# kubectl comes from the same tree: Debian's kubernetes-client package conflicts with
# kubectl packages some machines already carry (e.g. Google Cloud's).
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
STAMP="$KUBE_BIN_DIR/.built"

if [ -f "$STAMP" ]; then
    for b in "${BINARIES[@]}"; do [ -x "$KUBE_BIN_DIR/$b" ] || rm -f "$STAMP"; done
    [ -f "$STAMP" ] && exit 0
fi

apt_install golang-go dpkg-dev rsync make
start=$SECONDS

# deb-src entries for the machine's own Debian mirror, in a private apt configuration.
private_apt "$NODERT_CACHE/apt-src" 's/^Types: deb$/Types: deb deb-src/'

SRC_PARENT="$NODERT_CACHE/src"
SRC_DIR="$SRC_PARENT/kubernetes-$KUBE_VERSION"
if [ ! -f "$SRC_DIR/.unpacked" ]; then
    log "fetching Debian's kubernetes source package"
    rm -rf "$SRC_PARENT" && mkdir -p "$SRC_PARENT"
    (cd "$SRC_PARENT" && apt-get "${PRIVATE_APT_OPTS[@]}" source -qq kubernetes 2>&1 | grep -v "unsandboxed as root" >&2 || true)
    src="$(find "$SRC_PARENT" -maxdepth 1 -type d -name "kubernetes-*" | head -1)"
    # bookworm's version string is 1.20.5+really1.20.2: check what is really inside.
    [ -n "$src" ] && grep -q "gitVersion=v$KUBE_VERSION\|$KUBE_VERSION" "$src/debian/changelog" ||
        die "apt-get source kubernetes did not produce a kubernetes $KUBE_VERSION tree in $SRC_PARENT"
    [ "$src" = "$SRC_DIR" ] || mv "$src" "$SRC_DIR"
    touch "$SRC_DIR/.unpacked"
fi

log "building ${BINARIES[*]} $KUBE_VERSION (takes 15-25 minutes on 2 cores the first time)"
cd "$SRC_DIR"
# The Kubernetes 1.20 build wants the tree at its import path inside a GOPATH.
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
# A half-finished earlier build leaves empty placeholder generators in _output that
# make then considers up to date.
rm -rf _output
export GOPATH="$SRC_DIR/.go" GOCACHE="$NODERT_CACHE/gocache" HOME="$NODERT_CACHE/gohome"
mkdir -p "$HOME"
what=""
for b in "${BINARIES[@]}"; do what+="cmd/$b "; done
(CGO_ENABLED=0 make WHAT="$what" >"$NODERT_CACHE/kubernetes-build.log" 2>&1) ||
    die "kubernetes build failed: see the end of $NODERT_CACHE/kubernetes-build.log"

mkdir -p "$KUBE_BIN_DIR"
for b in "${BINARIES[@]}"; do
    built="$(find "$SRC_DIR/_output" -type f -name "$b" -perm -u+x | head -1)"
    [ -n "$built" ] || die "the build did not produce $b (see $NODERT_CACHE/kubernetes-build.log)"
    install -m 0755 "$built" "$KUBE_BIN_DIR/$b"
done
touch "$STAMP"
log "kubernetes $KUBE_VERSION binaries in $KUBE_BIN_DIR ($((SECONDS - start))s)"
