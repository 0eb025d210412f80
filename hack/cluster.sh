#!/usr/bin/env bash
# A whole local cluster: the control plane, the registry with the test images and N of our
# nodes, each node a network namespace on a bridge of this host (see node.sh --bridge), with
# every node's pod CIDR routed to it from the host and from the other nodes. What
# local-up.sh runs for people and the end-to-end tests run for CI.
#
#   cluster.sh run --dir D [--owner-pid P] [--name NAME] [--nodes N] [--bridge BR]
#                  [--node-net A.B.C] [--pod-net A.B]
#   cluster.sh start|stop --dir D [...]
#
# Defaults: NAME nodert (nodes NAME-node-1..N, each in a network namespace of that name),
# 2 nodes, bridge nodert0, nodes at A.B.C.11.. on A.B.C.0/24 = 172.30.0.0/24 with the host
# at .1, node i's pod CIDR A.B.(100+i).0/24 in A.B.0.0/16 = 10.244.0.0/16. Choose other
# names and networks to run several clusters side by side.
#
# `run` publishes in D/env: KUBECONFIG, APISERVER_URL, NODES (names), NODE_IPS, POD_CIDRS,
# CLUSTER_CIDR, BRIDGE, and the dirs CONTROL_PLANE_DIR, REGISTRY_DIR, NODE_DIRS.
. "$(dirname "$0")/lib.sh"

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    local name=nodert nodes=2 node_net=172.30.0 pod_net=10.244
    BRIDGE=nodert0
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --nodes) nodes="$2"; shift 2 ;;
            --bridge) BRIDGE="$2"; shift 2 ;;
            --node-net) node_net="$2"; shift 2 ;;
            --pod-net) pod_net="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ "$nodes" -ge 1 ] 2>/dev/null || die "--nodes must be a positive number"
    ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: another cluster runs (or leaked); stop it or pick --bridge"
    STARTED=()
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"

    local gateway="$node_net.1" cluster_cidr="$pod_net.0.0/16"
    ip link add "$BRIDGE" type bridge
    ip addr add "$gateway/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up

    log "control plane"
    start_component control-plane --advertise-address "$gateway"
    log "registry"
    start_component registry

    local i names=() ips=() cidrs=() dirs=()
    for i in $(seq 1 "$nodes"); do
        names+=("$name-node-$i")
        ips+=("$node_net.$((10 + i))")
        cidrs+=("$pod_net.$((100 + i)).0/24")
    done
    for i in $(seq 0 $((nodes - 1))); do
        log "node ${names[$i]}"
        start_component "node-$((i + 1))" --control-plane "$DIR/control-plane" \
            --registry "$DIR/registry" --node "${names[$i]}" --pod-cidr "${cidrs[$i]}" \
            --bridge "$BRIDGE" --node-ip "${ips[$i]}/24" --gateway "$gateway" \
            --cluster-cidr "$cluster_cidr"
        dirs+=("$DIR/node-$((i + 1))")
    done
    # TODO(issue 4): ipamd's podcidr mode should program these routes from the Node objects.
    local j
    for i in $(seq 0 $((nodes - 1))); do
        ip route replace "${cidrs[$i]}" via "${ips[$i]}"
        for j in $(seq 0 $((nodes - 1))); do
            [ "$i" = "$j" ] || ip -n "${names[$j]}" route replace "${cidrs[$i]}" via "${ips[$i]}"
        done
    done

    publish KUBECONFIG "$DIR/control-plane/admin.kubeconfig"
    publish APISERVER_URL "$(grep '^APISERVER_URL=' "$DIR/control-plane/env" | cut -d= -f2-)"
    publish NODES "${names[*]}"
    publish NODE_IPS "${ips[*]}"
    publish POD_CIDRS "${cidrs[*]}"
    publish CLUSTER_CIDR "$cluster_cidr"
    publish BRIDGE "$BRIDGE"
    publish CONTROL_PLANE_DIR "$DIR/control-plane"
    publish REGISTRY_DIR "$DIR/registry"
    publish NODE_DIRS "${dirs[*]}"
    log "cluster $name ready: ${names[*]}"
    serve_until_stopped
}

# start_component NAME ARGS...: hack/<script>.sh start --dir $DIR/NAME ARGS (node-* run
# node.sh), remembered for teardown.
start_component() {
    local comp="$1" script="$1"; shift
    case "$comp" in node-*) script=node ;; esac
    mkdir -p "$DIR/$comp"
    STARTED+=("$script:$comp")
    "$REPO_ROOT/hack/$script.sh" start --dir "$DIR/$comp" "$@"
}

teardown() {
    # Nodes first (they drain through the API server), then the rest, newest first.
    local k entry
    for ((k = ${#STARTED[@]} - 1; k >= 0; k--)); do
        entry="${STARTED[$k]}"
        "$REPO_ROOT/hack/${entry%%:*}.sh" stop --dir "$DIR/${entry#*:}" || warn "stopping ${entry#*:} failed"
    done
    # The pod CIDR routes through the bridge go with it.
    [ -z "${BRIDGE:-}" ] || ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$DIR"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) require_root; cmd_run "$@" ;;
    start) require_root; start_detached "cluster" "$@" ;;
    stop) stop_detached "$@" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
