#!/usr/bin/env bash
# A whole local cluster: the control plane, the registry with the test images and N of our
# nodes, each node a network namespace on a bridge of this host (see node.sh --bridge), with
# every node's pod CIDR routed to it from the host and from the other nodes. What
# local-up.sh runs for people and the end-to-end tests run for CI.
#
#   cluster.sh run --dir D [--owner-pid P] [--name NAME] [--nodes N] [--bridge BR]
#                  [--mode podcidr|eni] [--node-net A.B.C] [--pod-net A.B] [--vpc-net A.B]
#   cluster.sh start|stop --dir D [...]
#
# Defaults: NAME nodert (nodes NAME-node-1..N, each in a network namespace of that name),
# 2 nodes, bridge nodert0, nodes at A.B.C.11.. on A.B.C.0/24 = 172.30.0.0/24 with the host
# at .1, node i's pod CIDR A.B.(100+i).0/24 in A.B.0.0/16 = 10.244.0.0/16. Choose other
# names and networks to run several clusters side by side.
#
# --mode eni: every node is an instance of the EC2 emulator (hack/ec2-emulator.sh): VPC
# A.B.0.0/16 (default 10.0), subnet A.B.0.0/20, the bridge is the subnet with the host as
# its VPC router at A.B.0.1, each node's eth0 its primary ENI, pods get secondary IPs of
# the node's ENIs from ipamd in eni mode, and hack/imds/vpc.py plugs ENIs into nodes and
# delivers a packet only to the ENI that EC2 says holds its address. No pod CIDRs.
#
# `run` publishes in D/env: KUBECONFIG, APISERVER_URL, NODES (names), NODE_IPS, POD_CIDRS,
# CLUSTER_CIDR, BRIDGE, and the dirs CONTROL_PLANE_DIR, REGISTRY_DIR, NODE_DIRS.
. "$(dirname "$0")/lib.sh"

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    local name=nodert nodes=2 node_net=172.30.0 pod_net=10.244 mode=podcidr vpc_net=10.0
    BRIDGE=nodert0
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --nodes) nodes="$2"; shift 2 ;;
            --bridge) BRIDGE="$2"; shift 2 ;;
            --node-net) node_net="$2"; shift 2 ;;
            --pod-net) pod_net="$2"; shift 2 ;;
            --mode) mode="$2"; shift 2 ;;
            --vpc-net) vpc_net="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ "$nodes" -ge 1 ] 2>/dev/null || die "--nodes must be a positive number"
    case "$mode" in podcidr|eni) ;; *) die "--mode must be podcidr or eni" ;; esac
    ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: another cluster runs (or leaked); stop it or pick --bridge"
    STARTED=() VPC_PID=""
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"

    local i names=() ips=() cidrs=() dirs=() macs=() gateway prefix=24 cluster_cidr node_args=()
    for i in $(seq 1 "$nodes"); do names+=("$name-node-$i"); done
    if [ "$mode" = eni ]; then
        log "EC2 emulator: $nodes instance(s) in VPC $vpc_net.0.0/16"
        start_component ec2-emulator --instances "$nodes" --vpc-cidr "$vpc_net.0.0/16" \
            --subnet-cidr "$vpc_net.0.0/20"
        local ec2_endpoint ids imds mac addr gw itype=m5.large
        ec2_endpoint="$(grep '^EC2_ENDPOINT=' "$DIR/ec2-emulator/env" | cut -d= -f2-)"
        read -ra ids <<<"$(grep '^INSTANCE_IDS=' "$DIR/ec2-emulator/env" | cut -d= -f2-)"
        read -ra imds <<<"$(grep '^IMDS_ENDPOINTS=' "$DIR/ec2-emulator/env" | cut -d= -f2-)"
        for i in $(seq 0 $((nodes - 1))); do
            read -r mac addr gw < <(cd "$REPO_ROOT/hack/imds" &&
                "$VENV_DIR/bin/python" vpc.py info --ec2-endpoint "$ec2_endpoint" --instance "${ids[$i]}")
            macs+=("$mac")
            ips+=("${addr%/*}")
            prefix="${addr#*/}" gateway="$gw"
        done
        cluster_cidr="$vpc_net.0.0/16"
        # The host is the VPC router: only the /32s vpc.py installs, nothing on-link.
        ip link add "$BRIDGE" type bridge
        ip addr add "$gateway/$prefix" dev "$BRIDGE" noprefixroute
        ip link set "$BRIDGE" up
        local vpc_nodes=()
        for i in $(seq 0 $((nodes - 1))); do vpc_nodes+=(--node "${ids[$i]}=${names[$i]}"); done
        (cd "$REPO_ROOT/hack/imds" && exec "$VENV_DIR/bin/python" vpc.py run --ec2-endpoint "$ec2_endpoint" \
            --bridge "$BRIDGE" --vpc-cidr "$cluster_cidr" "${vpc_nodes[@]}") >"$DIR/vpc.log" 2>&1 &
        VPC_PID=$!
        wait_for "the VPC data plane (vpc.py)" 30 grep -q '^ready' "$DIR/vpc.log"
    else
        gateway="$node_net.1" cluster_cidr="$pod_net.0.0/16"
        for i in $(seq 1 "$nodes"); do
            ips+=("$node_net.$((10 + i))")
            cidrs+=("$pod_net.$((100 + i)).0/24")
        done
        ip link add "$BRIDGE" type bridge
        ip addr add "$gateway/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi

    log "control plane"
    start_component control-plane --advertise-address "$gateway"
    log "registry"
    start_component registry

    for i in $(seq 0 $((nodes - 1))); do
        log "node ${names[$i]}"
        if [ "$mode" = eni ]; then
            node_args=(--eni --mac "${macs[$i]}" --ec2-endpoint "$ec2_endpoint"
                --imds-endpoint "${imds[$i]}" --instance-type "$itype")
        else
            node_args=(--pod-cidr "${cidrs[$i]}")
        fi
        start_component "node-$((i + 1))" --control-plane "$DIR/control-plane" \
            --registry "$DIR/registry" --node "${names[$i]}" \
            --bridge "$BRIDGE" --node-ip "${ips[$i]}/$prefix" --gateway "$gateway" \
            --cluster-cidr "$cluster_cidr" "${node_args[@]}"
        dirs+=("$DIR/node-$((i + 1))")
    done
    if [ "$mode" = podcidr ]; then
        # TODO(issue 4): ipamd's podcidr mode should program these routes from the Node objects.
        local j
        for i in $(seq 0 $((nodes - 1))); do
            ip route replace "${cidrs[$i]}" via "${ips[$i]}"
            for j in $(seq 0 $((nodes - 1))); do
                [ "$i" = "$j" ] || ip -n "${names[$j]}" route replace "${cidrs[$i]}" via "${ips[$i]}"
            done
        done
    fi

    publish KUBECONFIG "$DIR/control-plane/admin.kubeconfig"
    publish APISERVER_URL "$(grep '^APISERVER_URL=' "$DIR/control-plane/env" | cut -d= -f2-)"
    publish NODES "${names[*]}"
    publish NODE_IPS "${ips[*]}"
    publish POD_CIDRS "${cidrs[*]}"
    publish CLUSTER_CIDR "$cluster_cidr"
    publish BRIDGE "$BRIDGE"
    publish MODE "$mode"
    [ "$mode" != eni ] || publish EC2_DIR "$DIR/ec2-emulator"
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
    # vpc.py unplugs the ENIs it plugged and removes its routes.
    [ -z "${VPC_PID:-}" ] || reap_children "$VPC_PID"
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
