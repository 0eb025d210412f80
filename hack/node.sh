#!/usr/bin/env bash
# One of our nodes: ipamd (podcidr mode) + runtime-shim + kubelet, with vpc-cni (chained
# with the reference portmap plugin) networking pods from the node's pod CIDR, joined to a
# control plane started by control-plane.sh and pulling through a registry started by
# registry.sh. All state is private to D.
#
#   node.sh run --dir D [--owner-pid P] --control-plane CP_DIR --registry REG_DIR
#               --node NAME [--pod-cidr CIDR]
#   node.sh start|stop --dir D [...]
#
# `run` publishes in D/env: NODE_NAME, CRI_SOCKET, IPAMD_PID, KUBELET_PID, RUNTIME_SHIM_PID.
. "$(dirname "$0")/lib.sh"

BIN_DIR="${NODERT_BIN_DIR:-$CARGO_TARGET_DIR/debug}"

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    local node="" reg_dir="" cidr="10.244.100.0/24"
    CP_DIR=""
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --control-plane) CP_DIR="$(cd "$2" && pwd)"; shift 2 ;;
            --registry) reg_dir="$(cd "$2" && pwd)"; shift 2 ;;
            --node) node="$2"; shift 2 ;;
            --pod-cidr) cidr="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -n "$node" ] && [ -n "$CP_DIR" ] && [ -n "$reg_dir" ] ||
        die "--control-plane DIR, --registry DIR and --node NAME are required"
    for b in kubelet runtime-shim vpc-cni ipamd; do
        [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not built: run cargo build --bins (or set NODERT_BIN_DIR)"
    done
    NODE="$node"
    PIDS=()
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"
    mkdir -p "$DIR/net.d" "$DIR/kubelet"

    "$BIN_DIR/ipamd" --mode podcidr --pod-cidr "$cidr" --socket "$DIR/ipamd.sock" \
        --state-dir "$DIR/ipamd" >"$DIR/ipamd.log" 2>&1 &
    PIDS+=($!)
    publish IPAMD_PID $!
    wait_for "ipamd" 30 test -S "$DIR/ipamd.sock"
    cat >"$DIR/net.d/10-vpc-cni.conflist" <<EOF
{"cniVersion":"1.0.0","name":"pods-$node","plugins":[
 {"type":"vpc-cni","ipamdSocket":"$DIR/ipamd.sock","mtu":1500},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}
EOF
    local mirrors=() m
    for m in $(grep '^MIRRORS=' "$reg_dir/env" | cut -d= -f2-); do mirrors+=(--registry-mirror "$m"); done
    "$BIN_DIR/runtime-shim" --listen "unix://$DIR/cri.sock" --root "$DIR/shim-root" \
        --state "$DIR/shim-state" --cni-conf-dir "$DIR/net.d" --cni-bin-dir "/usr/lib/cni:$BIN_DIR" \
        --cni-cache-dir "$DIR/cni-cache" "${mirrors[@]}" >"$DIR/runtime-shim.log" 2>&1 &
    PIDS+=($!)
    publish RUNTIME_SHIM_PID $!
    wait_for "runtime-shim" 30 test -S "$DIR/cri.sock"

    local kubeconfig port
    kubeconfig="$("$REPO_ROOT/hack/control-plane.sh" node-credentials --dir "$CP_DIR" --node "$node")"
    port="$(free_port)"
    printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: 127.0.0.1\nport: %s\n' \
        "$port" >"$DIR/kubelet/config.yaml"
    "$BIN_DIR/kubelet" --kubeconfig "$kubeconfig" --config "$DIR/kubelet/config.yaml" \
        --container-runtime-endpoint "unix://$DIR/cri.sock" --hostname-override "$node" \
        --root-dir "$DIR/kubelet/root" --cert-dir "$DIR/kubelet/pki" >"$DIR/kubelet.log" 2>&1 &
    PIDS+=($!)
    publish KUBELET_PID $!
    wait_node_ready "$CP_DIR" "$node" $! "$DIR/kubelet.log" 60
    publish NODE_NAME "$node"
    publish CRI_SOCKET "$DIR/cri.sock"
    log "node $node ready"
    serve_until_stopped
}

teardown() {
    local kc=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$CP_DIR/admin.kubeconfig")
    # Drain first, so the kubelet tears every pod down through the runtime and CNI.
    if [ -n "${NODE:-}" ] && [ ${#PIDS[@]} -eq 3 ] && kill -0 "${PIDS[2]}" 2>/dev/null; then
        # Cordon first, or controllers put replacement pods right back on this node.
        "${kc[@]}" cordon "$NODE" >/dev/null 2>&1 || true
        "${kc[@]}" delete pods -A --field-selector "spec.nodeName=$NODE" --wait=false >/dev/null 2>&1 || true
        for _ in $(seq 120); do
            [ -z "$("${kc[@]}" get pods -A --field-selector "spec.nodeName=$NODE" -o name 2>/dev/null)" ] && break
            sleep 0.5
        done
        "${kc[@]}" delete node "$NODE" >/dev/null 2>&1 || true
    fi
    # The kubelet and runtime first; ipamd last, so DELs during shutdown still reach it.
    [ ${#PIDS[@]} -le 1 ] || reap_children "${PIDS[@]:1}"
    [ ${#PIDS[@]} -eq 0 ] || reap_children "${PIDS[0]}"
    # Whatever a drain could not remove (a node torn down without its API server).
    sweep_runtime_shim "$DIR/shim-root" "$DIR/shim-state" "$DIR"
    rm -rf "$DIR"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) require_root; cmd_run "$@" ;;
    start) require_root; start_detached "node" "$@" ;;
    stop) stop_detached "$@" ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
