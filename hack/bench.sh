#!/usr/bin/env bash
# Side-by-side node benchmark, one run, one machine, one control plane, one node at a time:
#   our node      kubelet + runtime-shim + vpc-cni/ipamd (hack/node.sh)
#   upstream node kubelet 1.20.2 + containerd 1.6 + runc + ptp/host-local (hack/reference-node.sh)
# For each node, in this order:
#  1. startup latency of N pods created one after another (each created once the one
#     before is Ready; a pod's latency runs from its create request until a watch sees it
#     Running and Ready, tests/src/bin/pod-burst.rs), then the memory (PSS,
#     /proc/PID/smaps_rollup) of all node daemons with the N pods running;
#  2. startup latency of N pods created at once (N concurrent create requests; a pod's
#     latency runs from its own request until a watch sees it Running and Ready);
#  3. pod-to-pod connectivity after creation, for M web pods one after another: from the
#     apply until a client pod on the same node gets an HTTP answer from the new pod.
# Not a test: it prints figures.
#
#   ./hack/bench.sh [--pods N] [--web-pods M]
. "$(dirname "$0")/lib.sh"
require_root

PODS=30
WEB_PODS=10
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        --web-pods) WEB_PODS="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done

. "$REPO_ROOT/hack/bench-lib.sh"
bench_prepare
bench_cluster nodert-bench
mkdir -p "$WORK"/{ours,upstream}
BENCH_STOP=("node.sh $WORK/ours" "reference-node.sh $WORK/upstream")
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
WEB_IMAGE=registry.k8s.io/e2e-test-images/nginx:1.14-2

# measure NODE WHO: every figure for one node: $WORK/WHO.{seq,conc,conn}, WHO_pss, WHO_nproc.
measure() {
    local node="$1" who="$2" pids
    log "$who node: $PODS pods one after another"
    startup "$node" >"$WORK/$who.seq"
    if [ "$who" = ours ]; then
        pids=($(grep -E '^(IPAMD|RUNTIME_SHIM|KUBELET)_PID=' "$WORK/ours/env" | cut -d= -f2)
            $(pgrep -f "__monitor.*$WORK/ours/" || true))
    else
        pids=($(grep -E '^(CONTAINERD|KUBELET)_PID=' "$WORK/upstream/env" | cut -d= -f2)
            $(pgrep -f "containerd-shim-runc-v2 .*$WORK/upstream/" || true))
    fi
    printf -v "${who}_pss" %s "$(pss_kb "${pids[@]}")"
    printf -v "${who}_nproc" %s "${#pids[@]}"
    delete_phase "$node" seq
    log "$who node: $PODS pods at once"
    startup_concurrent "$node" >"$WORK/$who.conc"
    delete_phase "$node" conc
    log "$who node: pod-to-pod connectivity of $WEB_PODS new web pods"
    connectivity "$node" >"$WORK/$who.conn"
}
# Each node has the machine to itself while it is measured, as a real node has: ours is
# stopped before the upstream node starts (an idle node beside the measured one slowed
# our 30-at-once burst by ~0.5 s).
"$REPO_ROOT/hack/node.sh" start --dir "$WORK/ours" --control-plane "$WORK/cp" \
    --registry "$WORK/registry" --node bench-ours --pod-cidr 10.246.1.0/24
measure bench-ours ours
"$REPO_ROOT/hack/node.sh" stop --dir "$WORK/ours"
"$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/upstream" --control-plane "$WORK/cp" \
    --node bench-upstream --registry "$REG" --pod-cidr 10.246.2.0/24
measure bench-upstream upstream

echo
echo "Node benchmark ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r)); images present"
printf '%-42s %12s %12s %8s\n' "" "upstream" "ours" "ratio"
row "startup, $PODS pods one by one," seq
row "startup, $PODS pods at once," conc
row "pod-to-pod HTTP after creation ($WEB_PODS)," conn
printf '%-42s %9s MB %9s MB %7.2fx\n' "node daemons PSS with $PODS pods" "$((upstream_pss / 1024))" \
    "$((ours_pss / 1024))" "$(awk -v a="$ours_pss" -v b="$upstream_pss" 'BEGIN{print a/b}')"
echo "  upstream: kubelet + containerd + shims, $upstream_nproc processes"
echo "  ours:     kubelet + runtime-shim + ipamd + monitors, $ours_nproc processes"
