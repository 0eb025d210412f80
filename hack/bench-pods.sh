#!/usr/bin/env bash
# Kubelet benchmark, one run, one machine, one control plane, one kubelet at a time, the
# same runtime under both:
#   ours      our kubelet        + containerd 1.6 + runc + ptp/host-local
#   upstream  kubelet 1.20.2     + containerd 1.6 + runc + ptp/host-local (kubeAPIQPS 50)
# Each kubelet gets a containerd of its own, configured alike (hack/reference-node.sh), so
# only the kubelet differs. Pod startup latency as the Kubernetes SLO defines it (creation
# until all containers run and the pod is Ready, seen through the API server; image
# present) for N pods one after another and N at once, then the kubelet's PSS with N pods.
# Not a test: it prints figures (docs/benchmarks.md).
#
#   ./hack/bench-pods.sh [--pods N]
. "$(dirname "$0")/lib.sh"
require_root

PODS=30
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done

. "$REPO_ROOT/hack/bench-lib.sh"
bench_prepare
bench_cluster nodert-bench-pods
mkdir -p "$WORK"/{ours,ours-containerd,upstream}
BENCH_STOP=("reference-node.sh $WORK/ours-containerd" "node.sh $WORK/ours"
    "reference-node.sh $WORK/upstream")
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
WEB_IMAGE=registry.k8s.io/e2e-test-images/nginx:1.14-2

# measure NODE WHO: $WORK/WHO.{seq,conc} and WHO_pss (the kubelet's, with $PODS pods).
measure() {
    local node="$1" who="$2"
    log "$who kubelet: $PODS pods one after another"
    startup "$node" >"$WORK/$who.seq"
    # node.sh restarts its kubelet when it exits: the current pid is in kubelet.pid.
    local pid
    if [ "$who" = ours ]; then pid="$(cat "$WORK/ours/kubelet.pid")"
    else pid="$(grep '^KUBELET_PID=' "$WORK/upstream/env" | cut -d= -f2)"; fi
    printf -v "${who}_pss" %s "$(pss_kb "$pid")"
    delete_phase "$node" seq
    log "$who kubelet: $PODS pods at once"
    startup_concurrent "$node" >"$WORK/$who.conc"
    delete_phase "$node" conc
}
# Each kubelet has the machine to itself while it is measured: ours (and its containerd)
# is stopped before the upstream one starts.
"$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/ours-containerd" --containerd-only \
    --node bench-ours-rt --registry "$REG" --pod-cidr 10.247.1.0/24
"$REPO_ROOT/hack/node.sh" start --dir "$WORK/ours" --control-plane "$WORK/cp" \
    --registry "$WORK/registry" --node bench-kubelet-ours \
    --cri-socket "$(grep '^CONTAINERD_SOCK=' "$WORK/ours-containerd/env" | cut -d= -f2)"
measure bench-kubelet-ours ours
"$REPO_ROOT/hack/node.sh" stop --dir "$WORK/ours"
"$REPO_ROOT/hack/reference-node.sh" stop --dir "$WORK/ours-containerd"
"$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/upstream" --control-plane "$WORK/cp" \
    --node bench-kubelet-upstream --registry "$REG" --pod-cidr 10.247.2.0/24
measure bench-kubelet-upstream upstream

echo
echo "Kubelet benchmark ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r)); containerd 1.6 under both, images present"
printf '%-42s %12s %12s %8s\n' "" "upstream" "ours" "ratio"
row "startup, $PODS pods one by one," seq
row "startup, $PODS pods at once," conc
printf '%-42s %9s MB %9s MB %7.2fx\n' "kubelet PSS with $PODS pods" "$((upstream_pss / 1024))" \
    "$((ours_pss / 1024))" "$(awk -v a="$ours_pss" -v b="$upstream_pss" 'BEGIN{print a/b}')"
