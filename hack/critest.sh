#!/usr/bin/env bash
# The CRI validation suite (cri-tools' critest) against runtime-shim.
#
#   critest.sh install                      Go 1.23 and critest + ginkgo, cached; prints critest's path
#   critest.sh [--focus RE] [--skip RE]... [--parallel N] [--report-dir D] [-- CRITEST_FLAGS...]
#
# The run starts its own runtime-shim (private --root/--state/--listen under a temp dir,
# ptp + host-local + portmap CNI from /usr/lib/cni, images mirrored to a hack/registry.sh
# instance seeded by hack/images.sh), runs critest against it, prints critest's output
# and exits with critest's status. Everything it started is torn down on exit.
# --focus/--skip are ginkgo regexes over spec names (repeatable: any of them matches);
# the Benchmark specs are always skipped (critest itself does that).
# runtime-shim comes from $NODERT_BIN_DIR if set, else it is built (debug) here.
. "$(dirname "$0")/lib.sh"

CRITEST_VERSION=v1.32.0
CRITEST_DIR="$NODERT_CACHE/critest-$CRITEST_VERSION"
GO_PACKAGE=golang-1.23-go
GO_BIN=/usr/lib/go-1.23/bin/go

# install_go: Go 1.23 (critest 1.32 needs >= 1.23; bookworm's own golang-go is 1.19) from
# bookworm-backports, added for the machine's own Debian mirror in a private apt config.
install_go() {
    dpkg-query -W -f='${Status}' "$GO_PACKAGE" 2>/dev/null | grep -q "install ok installed" && return 0
    # Only the stanza of the main archive carries bookworm-updates; add backports beside it.
    private_apt "$NODERT_CACHE/apt-backports" '/^Suites:/ s/\<bookworm-updates\>/& bookworm-backports/'
    grep -q bookworm-backports "$NODERT_CACHE/apt-backports/sources.d/debian.sources" ||
        die "could not add bookworm-backports to a copy of /etc/apt/sources.list.d/debian.sources"
    log "installing $GO_PACKAGE from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get "${PRIVATE_APT_OPTS[@]}" install -y -qq \
        --no-install-recommends "$GO_PACKAGE" >/dev/null
}

# install_critest: critest and the ginkgo CLI it runs parallel nodes with (`-parallel N`
# execs `ginkgo` from PATH), both at the versions cri-tools' go.mod pins, into CRITEST_DIR.
# critest is a test binary (cmd/critest holds only cri_test.go), so it is built with
# `go test -c` in the module's source as cri-tools' Makefile does; `go install
# .../cmd/critest@VERSION` refuses a package with no non-test files. The module and its
# dependencies come from the Go module proxy (GOPROXY), as any Go module download does.
install_critest() {
    if [ -x "$CRITEST_DIR/critest" ] && [ -x "$CRITEST_DIR/ginkgo" ]; then return 0; fi
    install_go
    export GOPATH="$NODERT_CACHE/gopath" GOCACHE="$NODERT_CACHE/gocache" GOTOOLCHAIN=local
    export HOME="${HOME:-$NODERT_CACHE/gohome}" CGO_ENABLED=0
    local version="$CRITEST_VERSION" src json
    json="$("$GO_BIN" mod download -json "sigs.k8s.io/cri-tools@$version" 2>&1 || true)"
    if ! src="$(jq -er .Dir <<<"$json" 2>/dev/null)"; then
        warn "go mod download sigs.k8s.io/cri-tools@$version: $(jq -r .Error <<<"$json" 2>/dev/null || echo "$json")"
        # The nearest release of the same minor line the proxy serves, said out loud.
        version="$("$GO_BIN" list -m -versions sigs.k8s.io/cri-tools 2>/dev/null | tr ' ' '\n' |
            grep "^${CRITEST_VERSION%.*}\.[0-9]*$" | sort -V | tail -1 || true)"
        [ -n "$version" ] || die "the Go module proxy ($("$GO_BIN" env GOPROXY)) serves neither \
sigs.k8s.io/cri-tools@$CRITEST_VERSION nor another ${CRITEST_VERSION%.*}.x; critest cannot be installed here \
(a critest and ginkgo built elsewhere from cri-tools $CRITEST_VERSION can be put in $CRITEST_DIR)"
        warn "sigs.k8s.io/cri-tools@$CRITEST_VERSION refused; using $version"
        src="$("$GO_BIN" mod download -json "sigs.k8s.io/cri-tools@$version" | jq -er .Dir)"
    fi
    log "building critest $version and ginkgo"
    local out="$CRITEST_DIR.tmp"
    rm -rf "$out" && mkdir -p "$out"
    (cd "$src" && "$GO_BIN" test -c -o "$out/critest" \
        -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$version" ./cmd/critest &&
        "$GO_BIN" build -o "$out/ginkgo" github.com/onsi/ginkgo/v2/ginkgo) ||
        die "building critest $version failed"
    rm -rf "$CRITEST_DIR" && mv "$out" "$CRITEST_DIR"
}

cmd_install() {
    require_root
    apt_install jq
    install_critest
    echo "$CRITEST_DIR/critest"
}

cmd_run() {
    require_root
    ARGS=("$@")
    local focus=() skip=() parallel=2 report_dir="" extra=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --focus) focus+=("-ginkgo.focus=$2"); shift 2 ;;
            --skip) skip+=("-ginkgo.skip=$2"); shift 2 ;;
            --parallel) parallel="$2"; shift 2 ;;
            --report-dir) report_dir="$2"; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            *) die "unknown flag $1 (see $0 --help)" ;;
        esac
    done
    "$REPO_ROOT/hack/install-deps.sh"
    "$REPO_ROOT/hack/images.sh"
    apt_install jq
    install_critest
    local bin="${NODERT_BIN_DIR:-}"
    if [ -z "$bin" ]; then
        log "building runtime-shim"
        (cd "$REPO_ROOT" && cargo build --locked -q -p runtime-shim --bin runtime-shim)
        bin="$CARGO_TARGET_DIR/debug"
    fi
    [ -x "$bin/runtime-shim" ] || die "no runtime-shim in $bin"
    # The rest runs in a mount namespace of its own whose / is rshared, as / is on a
    # systemd host: the mount-propagation specs need mounts to propagate between host
    # paths and containers, and this machine's / is private. Everything mounted in there
    # (rootfs overlays, pinned pod namespaces) goes away with the namespace.
    if [ -z "${CRITEST_MOUNT_NS:-}" ]; then
        CRITEST_MOUNT_NS=1 NODERT_BIN_DIR="$bin" exec unshare --mount --propagation private \
            bash "$0" "${ARGS[@]}"
    fi
    mount --make-rshared /

    WORK="$(mktemp -d /tmp/nodert-critest.XXXXXX)"
    NET_NAME="critest-$$"
    SHIM_PID=""
    trap cleanup EXIT
    mkdir -p "$WORK/registry" "$WORK/shim/net.d"
    "$REPO_ROOT/hack/registry.sh" start --dir "$WORK/registry"

    # A /24 of our own, so that concurrent runs (and other fixtures' ptp networks) do not
    # route the same pod addresses to different veths.
    local subnet="10.$((200 + RANDOM % 50)).$((RANDOM % 256)).0/24"
    # portmap: critest's port-mapping specs reach a pod through a host port.
    cat >"$WORK/shim/net.d/10-critest.conflist" <<EOF
{"cniVersion":"0.4.0","name":"$NET_NAME","plugins":[
 {"type":"ptp","ipMasq":false,
  "ipam":{"type":"host-local","dataDir":"$WORK/shim/ipam","ranges":[[{"subnet":"$subnet"}]],
          "routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
    local mirrors=() m
    for m in $(grep '^MIRRORS=' "$WORK/registry/env" | cut -d= -f2-); do mirrors+=(--registry-mirror "$m"); done
    NO_COLOR=1 "$bin/runtime-shim" --listen "unix://$WORK/shim/cri.sock" --root "$WORK/shim/root" \
        --state "$WORK/shim/state" --cni-conf-dir "$WORK/shim/net.d" --cni-bin-dir /usr/lib/cni \
        --cni-cache-dir "$WORK/shim/cni-cache" "${mirrors[@]}" >"$WORK/shim.log" 2>&1 &
    SHIM_PID=$!
    wait_for "runtime-shim" 30 test -S "$WORK/shim/cri.sock"

    local args=(-runtime-endpoint "unix://$WORK/shim/cri.sock" -image-endpoint "unix://$WORK/shim/cri.sock"
        -parallel "$parallel" "${focus[@]}" "${skip[@]}" -ginkgo.no-color)
    [ -z "$report_dir" ] || args+=(-report-dir "$report_dir")
    args+=("${extra[@]}")
    log "critest ${args[*]}"
    local rc=0
    # critest execs `ginkgo` for -parallel; it writes a symlink to itself under TMPDIR.
    (cd "$WORK" && PATH="$CRITEST_DIR:$PATH" TMPDIR="$WORK" "$CRITEST_DIR/critest" "${args[@]}") || rc=$?
    if [ $rc -ne 0 ]; then
        echo "--- runtime-shim log (last 40 lines of $WORK/shim.log) ---"
        tail -40 "$WORK/shim.log"
    fi
    return $rc
}

# cleanup: the shim (gracefully, then whatever it left in the kernel), the registry, WORK.
cleanup() {
    if [ -n "$SHIM_PID" ]; then reap_children "$SHIM_PID"; fi
    if [ -d "$WORK/shim" ]; then
        sweep_runtime_shim "$WORK/shim/root" "$WORK/shim/state" "$WORK"
        sweep_cni_leftovers
    fi
    "$REPO_ROOT/hack/registry.sh" stop --dir "$WORK/registry" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}

# sweep_cni_leftovers: portmap's per-pod DNAT chains (CNI-DN-*) of pods whose sandboxes
# were never stopped, found by our network's name in their comments, with the jumps to
# them. Their veths and addresses die with the pinned namespaces and WORK.
sweep_cni_leftovers() {
    command -v iptables-save >/dev/null || return 0
    local rules chains alt
    rules="$(iptables-save -t nat)"
    chains="$(grep -F "name: \\\"$NET_NAME\\\"" <<<"$rules" | grep -oE 'CNI-DN-[0-9a-f]+' | sort -u || true)"
    [ -n "$chains" ] || return 0
    alt="$(tr '\n' '|' <<<"$chains")"
    alt="${alt%|}"
    {
        echo '*nat'
        grep -E -- "-j ($alt)( |\$)" <<<"$rules" | grep -vE -- "^-A ($alt) " | sed 's/^-A /-D /'
        for c in $chains; do echo "-F $c"; echo "-X $c"; done
        echo COMMIT
    } | iptables-restore --noflush || warn "could not remove portmap chains $chains"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    -h | --help) sed -n '2,14p' "$0" >&2; exit 2 ;;
    *) cmd_run "$@" ;;
esac
