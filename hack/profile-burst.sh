#!/usr/bin/env bash
# Where the CPU of "N pods at once" goes on our node: a control plane, a registry and one
# of our nodes (as hack/bench.sh starts them; with --on-containerd our kubelet on a
# containerd 1.6 of its own, as hack/bench-pods.sh runs it), then R rounds of N pods created at once
# (tests/src/bin/pod-burst), each followed by deleting them and a pause so the next round
# starts idle. Per round: wall time, p50/p99 startup, the machine's CPU time, and each
# daemon's (user + system, with the children it reaped). What no daemon accounts for is
# mostly runc and the per-container monitors (reaped only when their container ends),
# the CNI plugins' own processes counting with runtime-shim. Not a test: it prints figures.
#
#   ./hack/profile-burst.sh [--pods N] [--rounds R] [--on-containerd]
. "$(dirname "$0")/lib.sh"
require_root
PODS=30
ROUNDS=2
ON_CONTAINERD=0
while [ $# -gt 0 ]; do
    case "$1" in
        --on-containerd) ON_CONTAINERD=1; shift ;;
        --pods) PODS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
. "$REPO_ROOT/hack/bench-lib.sh"
bench_prepare
bench_cluster nodert-profile
mkdir -p "$WORK"/{ours,containerd}
if [ "$ON_CONTAINERD" = 1 ]; then
    BENCH_STOP=("reference-node.sh $WORK/containerd" "node.sh $WORK/ours")
    "$REPO_ROOT/hack/reference-node.sh" start --dir "$WORK/containerd" --containerd-only \
        --node profile-rt --registry "$REG" --pod-cidr 10.247.1.0/24
    "$REPO_ROOT/hack/node.sh" start --dir "$WORK/ours" --control-plane "$WORK/cp" \
        --registry "$WORK/registry" --node profile-ours \
        --cri-socket "$(grep '^CONTAINERD_SOCK=' "$WORK/containerd/env" | cut -d= -f2)"
else
    BENCH_STOP=("node.sh $WORK/ours")
    "$REPO_ROOT/hack/node.sh" start --dir "$WORK/ours" --control-plane "$WORK/cp" \
        --registry "$WORK/registry" --node profile-ours --pod-cidr 10.246.1.0/24
fi
pod_manifest warm-profile-ours profile-ours warm | "${KC[@]}" apply -f - >/dev/null
wait_for "warm-up pod" 120 pod_ready warm-profile-ours

# ticks PID: the CPU a process and the children it reaped have used, in clock ticks.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)
declare -A PID
for name in kube-apiserver etcd kube-scheduler kube-controller-manager; do
    PID[$name]=$(pgrep -f "(^|/)$name( |$)" | head -1 || true)
done
for var in KUBELET RUNTIME_SHIM IPAMD; do
    pid=$(grep "^${var}_PID=" "$WORK/ours/env" | cut -d= -f2 || true)
    [ -z "$pid" ] || PID[$var]=$pid
done
if [ "$ON_CONTAINERD" = 1 ]; then
    PID[CONTAINERD]=$(grep '^CONTAINERD_PID=' "$WORK/containerd/env" | cut -d= -f2)
fi

for round in $(seq 1 "$ROUNDS"); do
    declare -A BEFORE=()
    for k in "${!PID[@]}"; do BEFORE[$k]=$(ticks "${PID[$k]}"); done
    m0=$(cpu_ticks | cut -d" " -f1)
    t0=$(date +%s%N)
    startup_concurrent profile-ours >"$WORK/round.$round"
    t1=$(date +%s%N)
    m1=$(cpu_ticks | cut -d" " -f1)
    machine=$(((m1 - m0) * 1000 / HZ))
    printf 'round %s: %s pods at once in %s ms wall, startup p50 %s ms, p99 %s ms; CPU used %s ms\n' \
        "$round" "$PODS" $(((t1 - t0) / 1000000)) "$(percentile 0.5 <"$WORK/round.$round")" \
        "$(percentile 0.99 <"$WORK/round.$round")" "$machine"
    accounted=0
    for k in $(printf '%s\n' "${!PID[@]}" | sort); do
        ms=$((($(ticks "${PID[$k]}") - BEFORE[$k]) * 1000 / HZ))
        accounted=$((accounted + ms))
        printf '  %-26s %6s ms\n' "${k,,}" "$ms"
    done
    printf '  %-26s %6s ms\n' "the rest (runc, monitors, shims)" $((machine - accounted))
    delete_phase profile-ours conc
done
