# Measurements the hack/bench*.sh scripts share. Source it after lib.sh. The pod
# functions need KC (the kubectl command as an array), WORK (a scratch dir), PODS,
# WEB_PODS, IMAGE and WEB_IMAGE; they measure through the API server, so both stacks
# pay the same client overhead.

# bench_prepare: everything a node benchmark needs installed, and release binaries of
# ours in NODERT_BIN_DIR.
bench_prepare() {
    "$REPO_ROOT/hack/install-deps.sh"
    "$REPO_ROOT/hack/build-kubernetes.sh"
    "$REPO_ROOT/hack/images.sh"
    log "building release binaries"
    (cd "$REPO_ROOT" && cargo build --release --locked -q --bins)
    export NODERT_BIN_DIR="$CARGO_TARGET_DIR/release"
}

# bench_cluster PREFIX: a scratch WORK dir with a control plane and a registry started in
# it (KC and REG set). Components the caller starts go into BENCH_STOP as
# "SCRIPT DIR" entries; on exit they are stopped in reverse order, then the control
# plane and registry, and WORK is removed.
bench_cluster() {
    WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
    BENCH_STOP=()
    trap bench_cleanup EXIT
    mkdir -p "$WORK"/{cp,registry}
    "$REPO_ROOT/hack/control-plane.sh" start --dir "$WORK/cp"
    "$REPO_ROOT/hack/registry.sh" start --dir "$WORK/registry"
    REG="$(grep '^REGISTRY=' "$WORK/registry/env" | cut -d= -f2)"
    KC=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$WORK/cp/admin.kubeconfig")
}

bench_cleanup() {
    local i entry
    for ((i = ${#BENCH_STOP[@]} - 1; i >= 0; i--)); do
        entry=(${BENCH_STOP[$i]})
        "$REPO_ROOT/hack/${entry[0]}" stop --dir "${entry[1]}" >/dev/null 2>&1 || true
    done
    "$REPO_ROOT/hack/registry.sh" stop --dir "$WORK/registry" >/dev/null 2>&1 || true
    "$REPO_ROOT/hack/control-plane.sh" stop --dir "$WORK/cp" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}

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

# startup NODE: creates $PODS pods one after another, each once the one before is Ready;
# prints one latency in ms per pod, from its create request until a watch sees it Ready
# (tests/src/bin/pod-burst.rs --one-by-one).
startup() {
    local node="$1"
    # Warm-up pod: pulls the image, so every measured pod finds it present. It stays, as
    # the client of the connectivity measurement.
    pod_manifest "warm-$node" "$node" warm | "${KC[@]}" apply -f - >/dev/null
    wait_for "warm-up pod on $node" 120 pod_ready "warm-$node"
    "$NODERT_BIN_DIR/pod-burst" --kubeconfig "$WORK/cp/admin.kubeconfig" --node "$node" \
        --image "$IMAGE" --count "$PODS" --one-by-one --phase seq --prefix p
}

# startup_concurrent NODE: creates $PODS pods at once; prints one latency in ms per pod,
# each from its own create request until a watch sees it Ready (tests/src/bin/pod-burst.rs:
# a `kubectl apply` of a List would create them one after another).
startup_concurrent() {
    "$NODERT_BIN_DIR/pod-burst" --kubeconfig "$WORK/cp/admin.kubeconfig" --node "$1" \
        --image "$IMAGE" --count "$PODS"
}

# delete_phase NODE PHASE: deletes that phase's pods, waits until they are gone from the
# API, then until the machine is idle: the runtime is still tearing their containers down
# when the API objects go, and the next phase must not pay for that.
delete_phase() {
    "${KC[@]}" delete pods -l "bench=$1,phase=$2" --wait=false >/dev/null
    wait_for "$1's $2 pods to go" 180 phase_gone "$1" "$2"
    local deadline=$((SECONDS + 60))
    until machine_idle; do
        [ $SECONDS -lt $deadline ] || { warn "the machine is still busy 60 s after $1's $2 pods went"; break; }
    done
}
phase_gone() { [ -z "$("${KC[@]}" get pods -l "bench=$1,phase=$2" -o name)" ]; }

# cpu_ticks: the clock ticks all cores have spent busy (user, nice, system, irq, softirq)
# and idle (idle, iowait) since boot, as "BUSY IDLE".
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; }

# machine_idle: under 15% of all cores busy over the next second.
machine_idle() {
    local a b
    a=($(cpu_ticks))
    sleep 1
    b=($(cpu_ticks))
    local busy=$((b[0] - a[0])) idle=$((b[1] - a[1]))
    [ $((busy * 100)) -lt $((15 * (busy + idle))) ]
}

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
