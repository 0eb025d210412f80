#!/usr/bin/env bash
# Side-by-side node benchmark, one run, one machine, one control plane:
#   our node      kubelet + runtime-shim + vpc-cni/ipamd (hack/node.sh)
#   upstream node kubelet 1.20.2 + containerd 1.6 + runc + ptp/host-local (hack/reference-node.sh)
# For each node, in this order:
#  1. startup latency of N pods created one after another (kubectl apply until the API
#     shows the pod Running and Ready, polled every 50 ms: the same client overhead for
#     both), then the memory (PSS, /proc/PID/smaps_rollup) of all node daemons with the
#     N pods running;
#  2. startup latency of N pods created at once (one apply of N pods; a pod's latency is
#     when a poll of the API, every 50 ms, first shows it Running and Ready);
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
WEB_IMAGE=registry.k8s.io/e2e-test-images/nginx:1.14-2

# pod_manifest NAME NODE [PHASE]: a busybox pod sleeping on NODE, labelled bench=NODE and
# phase=PHASE (so one phase's pods can be listed and deleted together).
pod_manifest() {
    cat <<EOF
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$1","namespace":"default","labels":{"bench":"$2","phase":"${3:-seq}"}},
 "spec":{"nodeName":"$2","terminationGracePeriodSeconds":0,
  "containers":[{"name":"c","image":"$IMAGE","command":["sleep","3600"]}]}}
EOF
}

# web_manifest NAME NODE: a web server pod on NODE.
web_manifest() {
    cat <<EOF
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$1","namespace":"default","labels":{"bench":"$2","phase":"web"}},
 "spec":{"nodeName":"$2","terminationGracePeriodSeconds":0,
  "containers":[{"name":"web","image":"$WEB_IMAGE"}]}}
EOF
}

pod_ready() {
    [ "$("${KC[@]}" get pod "$1" -o jsonpath='{.status.phase}/{.status.containerStatuses[0].ready}' 2>/dev/null)" = "Running/true" ]
}

# startup NODE: creates $PODS pods one after another; prints one latency in ms per pod.
startup() {
    local node="$1" i t0 t1
    # Warm-up pod: pulls the image, so every measured pod finds it present. It stays, as
    # the client of the connectivity measurement.
    pod_manifest "warm-$node" "$node" warm | "${KC[@]}" apply -f - >/dev/null
    wait_for "warm-up pod on $node" 120 pod_ready "warm-$node"
    for i in $(seq 1 "$PODS"); do
        t0=$(date +%s%N)
        pod_manifest "p$i-$node" "$node" | "${KC[@]}" apply -f - >/dev/null
        until pod_ready "p$i-$node"; do sleep 0.05; done
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000))
    done
}

# startup_concurrent NODE: creates $PODS pods in one apply; prints one latency in ms per pod.
startup_concurrent() {
    local node="$1" i t0 now name state
    local -A seen=()
    {
        echo '{"apiVersion":"v1","kind":"List","items":['
        for i in $(seq 1 "$PODS"); do
            [ "$i" = 1 ] || echo ,
            pod_manifest "c$i-$node" "$node" conc
        done
        echo ']}'
    } >"$WORK/conc-$node.json"
    t0=$(date +%s%N)
    "${KC[@]}" apply -f "$WORK/conc-$node.json" >/dev/null
    while [ ${#seen[@]} -lt "$PODS" ]; do
        [ $((($(date +%s%N) - t0) / 1000000000)) -lt 300 ] || die "$node: pods not Ready 300 s after creation"
        while read -r name state; do
            now=$(date +%s%N)
            if [ "$state" = Running/true ] && [ -z "${seen[$name]:-}" ]; then
                seen[$name]=1
                echo $(((now - t0) / 1000000))
            fi
        done < <("${KC[@]}" get pods -l "bench=$node,phase=conc" -o \
            jsonpath='{range .items[*]}{.metadata.name} {.status.phase}/{.status.containerStatuses[0].ready}{"\n"}{end}')
        sleep 0.05
    done
}

# delete_phase NODE PHASE: deletes that phase's pods and waits until they are gone.
delete_phase() {
    "${KC[@]}" delete pods -l "bench=$1,phase=$2" --wait=false >/dev/null
    wait_for "$1's $2 pods to go" 180 phase_gone "$1" "$2"
}
phase_gone() { [ -z "$("${KC[@]}" get pods -l "bench=$1,phase=$2" -o name)" ]; }

# netns_of_ip IP: the named network namespace whose interfaces hold IP.
netns_of_ip() {
    local ns
    for ns in $(ip netns list | awk '{print $1}'); do
        ip -n "$ns" -4 -o addr show 2>/dev/null | grep -q " $1/" && { echo "$ns"; return; }
    done
    die "no network namespace holds $1"
}

# connectivity NODE: per web pod, the ms from its apply until the warm-up pod on NODE gets
# an HTTP answer from it.
connectivity() {
    local node="$1" client i t0 ip
    client="$(netns_of_ip "$("${KC[@]}" get pod "warm-$node" -o jsonpath='{.status.podIP}')")"
    # The web image, pulled before measuring.
    web_manifest "webwarm-$node" "$node" | "${KC[@]}" apply -f - >/dev/null
    wait_for "web warm-up pod on $node" 120 pod_ready "webwarm-$node"
    for i in $(seq 1 "$WEB_PODS"); do
        t0=$(date +%s%N)
        web_manifest "w$i-$node" "$node" | "${KC[@]}" apply -f - >/dev/null
        ip=""
        until [ -n "$ip" ]; do
            ip="$("${KC[@]}" get pod "w$i-$node" -o jsonpath='{.status.podIP}')"
            [ -n "$ip" ] || sleep 0.02
        done
        until ip netns exec "$client" curl -s -m 1 -o /dev/null "http://$ip/"; do sleep 0.02; done
        echo $((($(date +%s%N) - t0) / 1000000))
    done
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
measure bench-ours ours
measure bench-upstream upstream

# row LABEL KIND: p50/p90/p99 of one measurement for both nodes, with the ratio.
row() {
    local label="$1" kind="$2" q u o
    for q in 0.5 0.9 0.99; do
        u=$(percentile "$q" <"$WORK/upstream.$kind")
        o=$(percentile "$q" <"$WORK/ours.$kind")
        printf '%-42s %9s ms %9s ms %7.2fx\n' "$label p$(awk -v q="$q" 'BEGIN{print q*100}')" "$u" "$o" \
            "$(awk -v a="$o" -v b="$u" 'BEGIN{print a/b}')"
    done
}
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
