#!/usr/bin/env bash
# Side-by-side CRI latency: runtime-shim vs containerd 1.6 (+ runc, same ptp/host-local
# CNI, same image from the same local registry), measured in one run on this machine
# by the same client (tests/src/bin/cri-bench.rs): N sequential pod lifecycles (p50 and
# p95 of each call), then the daemons' memory (PSS) with H pods running: runtime-shim +
# its per-container monitors against containerd + its shims. Not a test: it prints figures.
#
#   ./hack/bench-cri.sh [--count N] [--hold H]
. "$(dirname "$0")/lib.sh"
require_root

COUNT=40
HOLD=30
while [ $# -gt 0 ]; do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        --hold) HOLD="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done

"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/images.sh"
log "building release binaries"
(cd "$REPO_ROOT" && cargo build --release --locked -q -p runtime-shim -p node-tests --bin runtime-shim --bin cri-bench)
BIN="$CARGO_TARGET_DIR/release"

WORK="$(mktemp -d /tmp/nodert-bench.XXXXXX)"
SHIM_PID=""
cleanup() {
    # Pods a failed run left behind are removed through CRI first: killing a runtime leaves
    # its containers, mounts and namespaces running (by design: they outlive the daemon).
    if [ -n "$SHIM_PID" ]; then
        if kill -0 "$SHIM_PID" 2>/dev/null; then
            "$BIN/cri-bench" --socket "$WORK/shim/cri.sock" --remove-all || warn "could not remove runtime-shim's pods"
        else
            warn "runtime-shim exited during the run; the end of its log:"
            tail -n 20 "$WORK/shim.log" >&2 || true
        fi
        reap_children "$SHIM_PID"
    fi
    if [ -S "$WORK/containerd/containerd.sock" ]; then
        "$BIN/cri-bench" --socket "$WORK/containerd/containerd.sock" --remove-all || warn "could not remove containerd's pods"
    fi
    "$REPO_ROOT/hack/reference-node.sh" stop --dir "$WORK/containerd" >/dev/null 2>&1 || true
    "$REPO_ROOT/hack/registry.sh" stop --dir "$WORK/registry" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/registry" "$WORK/containerd" "$WORK/shim/net.d"
"$REPO_ROOT/hack/registry.sh" start --dir "$WORK/registry"
REG="$(grep '^REGISTRY=' "$WORK/registry/env" | cut -d= -f2)"
"$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/containerd" --containerd-only --registry "$REG"

cat >"$WORK/shim/net.d/10-bench.conflist" <<EOF
{"cniVersion":"0.4.0","name":"bench","plugins":[{"type":"ptp","ipMasq":false,
 "ipam":{"type":"host-local","dataDir":"$WORK/shim/ipam","ranges":[[{"subnet":"10.89.0.0/24"}]],
 "routes":[{"dst":"0.0.0.0/0"}]}}]}
EOF
mirrors=()
for m in $(grep '^MIRRORS=' "$WORK/registry/env" | cut -d= -f2-); do mirrors+=(--registry-mirror "$m"); done
"$BIN/runtime-shim" --listen "unix://$WORK/shim/cri.sock" --root "$WORK/shim/root" \
    --state "$WORK/shim/state" --cni-conf-dir "$WORK/shim/net.d" --cni-bin-dir /usr/lib/cni \
    --cni-cache-dir "$WORK/shim/cni-cache" "${mirrors[@]}" >"$WORK/shim.log" 2>&1 &
SHIM_PID=$!
wait_for "runtime-shim" 30 test -S "$WORK/shim/cri.sock"

IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
log "containerd: $COUNT pod lifecycles"
"$BIN/cri-bench" --socket "$WORK/containerd/containerd.sock" --image "$IMAGE" --count "$COUNT" \
    --log-dir "$WORK/logs-containerd" >"$WORK/containerd.json"
log "runtime-shim: $COUNT pod lifecycles"
"$BIN/cri-bench" --socket "$WORK/shim/cri.sock" --image "$IMAGE" --count "$COUNT" \
    --log-dir "$WORK/logs-shim" >"$WORK/shim.json"

echo
echo "CRI latency, $COUNT sequential pod lifecycles each ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
printf '%-18s %14s %14s %14s %14s %8s\n' call "containerd p50" "shim p50" "containerd p95" "shim p95" "p50 x"
for call in RunPodSandbox CreateContainer StartContainer StopContainer RemoveContainer StopPodSandbox RemovePodSandbox; do
    jq -r --arg c "$call" --slurpfile s "$WORK/shim.json" \
        '[$c, .[$c].p50_ms, $s[0][$c].p50_ms, .[$c].p95_ms, $s[0][$c].p95_ms] | @tsv' "$WORK/containerd.json" |
        awk -F'\t' '{printf "%-18s %11.1f ms %11.1f ms %11.1f ms %11.1f ms %7.2fx\n", $1, $2, $3, $4, $5, ($3 > 0 ? $3 / $2 : 0)}'
done

. "$REPO_ROOT/hack/bench-lib.sh"

# held_pss SOCKET DAEMON_PID PER_POD_PATTERN: "daemon_kb per_pod_kb count" with $HOLD pods
# running on the runtime at SOCKET.
held_pss() {
    local ready="$WORK/held.ready" pid daemon pods=()
    rm -f "$ready"
    "$BIN/cri-bench" --socket "$1" --image "$IMAGE" --hold "$HOLD" --ready-file "$ready" \
        --log-dir "$WORK/logs-held" &
    pid=$!
    wait_for "$HOLD pods running on $1" 300 test -e "$ready"
    daemon="$(pss_kb "$2")"
    mapfile -t pods < <(pgrep -f "$3" || true)
    echo "$daemon $(pss_kb "${pods[@]}") ${#pods[@]}"
    rm -f "$ready"
    wait "$pid"
}
log "containerd: memory with $HOLD pods"
# Not `read < <(held_pss ...)`: read would return at the echo, before held_pss has waited
# for the pods' removal, and the next step (or the teardown) would race with it.
held_pss "$WORK/containerd/containerd.sock" \
    "$(grep '^CONTAINERD_PID=' "$WORK/containerd/env" | cut -d= -f2)" \
    "containerd-shim-runc-v2 .*-address $WORK/containerd/containerd.sock" >"$WORK/held.containerd"
read -r c_daemon c_pods c_n <"$WORK/held.containerd"
log "runtime-shim: memory with $HOLD pods"
held_pss "$WORK/shim/cri.sock" "$SHIM_PID" "__monitor.*$WORK/shim/" >"$WORK/held.shim"
read -r s_daemon s_pods s_n <"$WORK/held.shim"
echo
echo "PSS with $HOLD pods running"
printf '%-28s %12s %12s %8s\n' "" containerd runtime-shim ratio
printf '%-28s %9s MB %9s MB %7.2fx\n' "daemon" "$((c_daemon / 1024))" "$((s_daemon / 1024))" \
    "$(awk -v a="$s_daemon" -v b="$c_daemon" 'BEGIN{print a/b}')"
printf '%-28s %9.2f MB %9.2f MB %7.2fx\n' "per pod (shim / monitor)" \
    "$(awk -v a="$c_pods" -v n="$c_n" 'BEGIN{print n ? a/n/1024 : 0}')" \
    "$(awk -v a="$s_pods" -v n="$s_n" 'BEGIN{print n ? a/n/1024 : 0}')" \
    "$(awk -v a="$s_pods" -v n="$s_n" -v b="$c_pods" -v m="$c_n" 'BEGIN{print (n && b) ? (a/n)/(b/m) : 0}')"
echo "  containerd: $c_n shim processes; runtime-shim: $s_n monitor processes"
