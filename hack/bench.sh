#!/usr/bin/env bash
# Side-by-side node benchmark, one run, one machine, one control plane:
#   our node      kubelet + runtime-shim + vpc-cni/ipamd (hack/node.sh)
#   upstream node kubelet 1.20.2 + containerd 1.6 + runc + ptp/host-local (hack/reference-node.sh)
# For each: pod startup latency of N pods created one after another (kubectl apply until
# the API shows the pod Running and Ready, polled every 50 ms: the same client overhead
# for both), then the memory (PSS, from /proc/PID/smaps_rollup) of all node daemons
# with the N pods running. Not a test: it prints figures.
#
#   ./hack/bench.sh [--pods N]
. "$(dirname "$0")/lib.sh"
require_root

PODS=30
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done

"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/build-kubernetes.sh"
"$REPO_ROOT/hack/images.sh"
log "building release binaries"
(cd "$REPO_ROOT" && cargo build --release --locked -q --bins)
export NODERT_BIN_DIR="$CARGO_TARGET_DIR/release"

WORK="$(mktemp -d /tmp/nodert-bench.XXXXXX)"
cleanup() {
    "$REPO_ROOT/hack/node.sh" stop --dir "$WORK/ours" >/dev/null 2>&1 || true
    "$REPO_ROOT/hack/reference-node.sh" stop --dir "$WORK/upstream" >/dev/null 2>&1 || true
    "$REPO_ROOT/hack/registry.sh" stop --dir "$WORK/registry" >/dev/null 2>&1 || true
    "$REPO_ROOT/hack/control-plane.sh" stop --dir "$WORK/cp" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK"/{cp,registry,ours,upstream}
"$REPO_ROOT/hack/control-plane.sh" start --dir "$WORK/cp"
"$REPO_ROOT/hack/registry.sh" start --dir "$WORK/registry"
REG="$(grep '^REGISTRY=' "$WORK/registry/env" | cut -d= -f2)"
"$REPO_ROOT/hack/node.sh" start --dir "$WORK/ours" --control-plane "$WORK/cp" \
    --registry "$WORK/registry" --node bench-ours --pod-cidr 10.246.1.0/24
"$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/upstream" --control-plane "$WORK/cp" \
    --node bench-upstream --registry "$REG" --pod-cidr 10.246.2.0/24
KC=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$WORK/cp/admin.kubeconfig")
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2

pod_manifest() {
    cat <<EOF
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$1","namespace":"default","labels":{"bench":"$2"}},
 "spec":{"nodeName":"$2","terminationGracePeriodSeconds":0,
  "containers":[{"name":"c","image":"$IMAGE","command":["sleep","3600"]}]}}
EOF
}

# startup NODE: prints one latency in ms per pod.
startup() {
    local node="$1" i t0 t1
    # Warm-up pod: pulls the image, so every measured pod finds it present.
    pod_manifest "warm-$node" "$node" | "${KC[@]}" apply -f - >/dev/null
    wait_for "warm-up pod on $node" 120 pod_ready "warm-$node"
    for i in $(seq 1 "$PODS"); do
        t0=$(date +%s%N)
        pod_manifest "p$i-$node" "$node" | "${KC[@]}" apply -f - >/dev/null
        until pod_ready "p$i-$node"; do sleep 0.05; done
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000))
    done
}
pod_ready() {
    [ "$("${KC[@]}" get pod "$1" -o jsonpath='{.status.phase}/{.status.containerStatuses[0].ready}' 2>/dev/null)" = "Running/true" ]
}
percentile() { sort -n | awk -v q="$1" '{a[NR]=$1} END {i=int((NR-1)*q+0.5)+1; print a[i]}'; }

# pss_kb PID...: summed proportional set size.
pss_kb() {
    local pid total=0 v
    for pid in "$@"; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

log "our node: $PODS pods"
startup bench-ours >"$WORK/ours.ms"
ours_pids=($(grep -E '^(IPAMD|RUNTIME_SHIM|KUBELET)_PID=' "$WORK/ours/env" | cut -d= -f2)
    $(pgrep -f "__monitor.*$WORK/ours/" || true))
ours_pss=$(pss_kb "${ours_pids[@]}")

log "upstream node: $PODS pods"
startup bench-upstream >"$WORK/upstream.ms"
up_pids=($(grep -E '^(CONTAINERD|KUBELET)_PID=' "$WORK/upstream/env" | cut -d= -f2)
    $(pgrep -f "containerd-shim-runc-v2 .*$WORK/upstream/" || true))
up_pss=$(pss_kb "${up_pids[@]}")

echo
echo "Node benchmark: $PODS pods created one after another, image present ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
printf '%-34s %12s %12s %8s\n' "" "upstream" "ours" "ratio"
for q in 0.5 0.9 0.99; do
    u=$(percentile "$q" <"$WORK/upstream.ms")
    o=$(percentile "$q" <"$WORK/ours.ms")
    printf '%-34s %9s ms %9s ms %7.2fx\n' "startup p$(awk -v q="$q" 'BEGIN{print q*100}')" "$u" "$o" "$(awk -v a="$o" -v b="$u" 'BEGIN{print a/b}')"
done
printf '%-34s %9s MB %9s MB %7.2fx\n' "node daemons PSS with $PODS pods" "$((up_pss / 1024))" "$((ours_pss / 1024))" \
    "$(awk -v a="$ours_pss" -v b="$up_pss" 'BEGIN{print a/b}')"
echo "  upstream: kubelet + containerd + ${#up_pids[@]} processes in all (shims included)"
echo "  ours:     kubelet + runtime-shim + ipamd + monitors, ${#ours_pids[@]} processes in all"
