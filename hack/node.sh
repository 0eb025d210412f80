#!/usr/bin/env bash
# One of our nodes: ipamd (podcidr mode) + runtime-shim + kubelet, with vpc-cni (chained
# with the reference portmap plugin) networking pods from the node's pod CIDR, joined to a
# control plane started by control-plane.sh and pulling through a registry started by
# registry.sh. All state is private to D.
#
#   node.sh run --dir D [--owner-pid P] --control-plane CP_DIR --registry REG_DIR
#               --node NAME [--pod-cidr CIDR]
#               [--bridge BR --node-ip IP/PREFIX --gateway GW [--cluster-cidr CIDR] [--mac MAC]]
#               [--eni --ec2-endpoint URL --imds-endpoint URL --instance-type TYPE]
#               [--cri-socket PATH]
#   node.sh start|stop --dir D [...]
#
# With --bridge the node is a machine of its own on the network: a network namespace
# named NAME whose eth0 (IP/PREFIX) is a veth port of bridge BR on this host, with a
# default route via GW. The daemons join only its network namespace (nsenter --net; not
# `ip netns exec`, whose private mount namespace would hide the runtime's mounts from its
# next incarnation), the kubelet serves :10250 on IP, and the upstream kube-proxy 1.20.2
# runs there in iptables mode, as on EKS. The control plane must then listen on an address
# of BR's subnet (control-plane.sh --advertise-address). The registry stays on this host's
# loopback: a relay makes it appear on the node's loopback, the only place runtime-shim
# takes a plain-HTTP mirror from.
#
# With --eni (needs --bridge) the node is an emulated EC2 instance: eth0 is its primary
# ENI (--mac, --node-ip), ipamd runs in `eni` mode against the EC2 emulator, and the
# instance's IMDS appears at 169.254.169.254 inside the node, as on EC2; both are relayed
# from this host's loopback. The kubelet's --max-pods comes from `ipamd max-pods`.
# ipamd reads WARM_ENI_TARGET, WARM_IP_TARGET, ... from the environment, as aws-node does.
#
# With --cri-socket the node runs only our kubelet, against that CRI runtime (a
# `reference-node.sh --containerd-only` instance, say) and its own CNI: no runtime-shim,
# no ipamd. hack/bench-pods.sh compares kubelets on the same runtime that way.
#
# `run` publishes in D/env: NODE_NAME, CRI_SOCKET, IPAMD_PID, KUBELET_PID, RUNTIME_SHIM_PID
# (first pids; the daemons are restarted when they exit, D/<daemon>.pid has the current one),
# and with --bridge NETNS, NODE_IP, KUBE_PROXY_PID.
. "$(dirname "$0")/lib.sh"

BIN_DIR="${NODERT_BIN_DIR:-$CARGO_TARGET_DIR/debug}"

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    local node="" reg_dir="" cidr="10.244.100.0/24" bridge="" node_ip="" gateway=""
    local cluster_cidr=10.244.0.0/16 mac="" eni="" ec2_endpoint="" imds_endpoint="" itype=""
    local cri_socket=""
    CP_DIR="" NETNS=""
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --control-plane) CP_DIR="$(cd "$2" && pwd)"; shift 2 ;;
            --registry) reg_dir="$(cd "$2" && pwd)"; shift 2 ;;
            --node) node="$2"; shift 2 ;;
            --pod-cidr) cidr="$2"; shift 2 ;;
            --bridge) bridge="$2"; shift 2 ;;
            --node-ip) node_ip="$2"; shift 2 ;;
            --gateway) gateway="$2"; shift 2 ;;
            --cluster-cidr) cluster_cidr="$2"; shift 2 ;;
            --mac) mac="$2"; shift 2 ;;
            --eni) eni=1; shift ;;
            --ec2-endpoint) ec2_endpoint="$2"; shift 2 ;;
            --imds-endpoint) imds_endpoint="$2"; shift 2 ;;
            --instance-type) itype="$2"; shift 2 ;;
            --cri-socket) cri_socket="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -n "$node" ] && [ -n "$CP_DIR" ] && [ -n "$reg_dir" ] ||
        die "--control-plane DIR, --registry DIR and --node NAME are required"
    local bins=(kubelet runtime-shim vpc-cni ipamd)
    [ -z "$cri_socket" ] || bins=(kubelet)
    for b in "${bins[@]}"; do
        [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not built: run cargo build --bins (or set NODERT_BIN_DIR)"
    done
    if [ -n "$bridge" ]; then
        [ -n "$node_ip" ] && [ -n "$gateway" ] || die "--bridge needs --node-ip IP/PREFIX and --gateway GW"
        ip link show "$bridge" >/dev/null 2>&1 || die "bridge $bridge does not exist"
    fi
    NODE="$node"
    PIDS=() AUX_PIDS=()
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"
    mkdir -p "$DIR/net.d" "$DIR/kubelet"

    # IN_NODE: the prefix that runs a command in the node's network namespace.
    IN_NODE=()
    local kubelet_addr=127.0.0.1 kubelet_port
    kubelet_port="$(free_port)"
    if [ -n "$bridge" ]; then
        make_node_netns "$bridge" "$node_ip" "$gateway" "$mac"
        IN_NODE=(nsenter "--net=/var/run/netns/$NETNS" --)
        relay_tcp registry "$(grep '^REGISTRY=' "$reg_dir/env" | cut -d= -f2-)" 127.0.0.1
        kubelet_addr=0.0.0.0 kubelet_port=10250
        publish NETNS "$NETNS"
        publish NODE_IP "${node_ip%/*}"
    fi

    local max_pods=()
    if [ -z "$cri_socket" ]; then
        start_runtime
        cri_socket="$DIR/cri.sock"
    fi

    local kubeconfig node_ip_flag=()
    kubeconfig="$("$REPO_ROOT/hack/control-plane.sh" node-credentials --dir "$CP_DIR" --node "$node")"
    # The API server reaches :10250 with its kubelet-client certificate (our CA) for
    # logs, exec and port-forward; everyone else needs a token the API server accepts.
    cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $kubelet_addr
port: $kubelet_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CP_DIR/pki/ca.crt}
authorization: {mode: Webhook}
EOF
    # On the host's network the kubelet serves on loopback only: that is its address.
    node_ip_flag=(--node-ip "${node_ip:-127.0.0.1}")
    node_ip_flag[1]="${node_ip_flag[1]%/*}"
    supervise kubelet "${IN_NODE[@]}" "$BIN_DIR/kubelet" --kubeconfig "$kubeconfig" \
        --config "$DIR/kubelet/config.yaml" --container-runtime-endpoint "unix://$cri_socket" \
        --hostname-override "$node" --root-dir "$DIR/kubelet/root" --cert-dir "$DIR/kubelet/pki" \
        "${node_ip_flag[@]}" "${max_pods[@]}"
    KUBELET_SUPERVISOR="${PIDS[-1]}"
    wait_node_ready "$CP_DIR" "$node" "$KUBELET_SUPERVISOR" "$DIR/kubelet.log" 60
    if [ -n "$bridge" ]; then
        local kp_kubeconfig
        kp_kubeconfig="$(grep '^KUBE_PROXY_KUBECONFIG=' "$CP_DIR/env" | cut -d= -f2-)"
        # conntrack limits and timeouts are host-wide sysctls: leave them to the host.
        "${IN_NODE[@]}" "$KUBE_BIN_DIR/kube-proxy" --kubeconfig "$kp_kubeconfig" \
            --hostname-override "$node" --proxy-mode iptables --cluster-cidr "$cluster_cidr" \
            --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
            --conntrack-tcp-timeout-close-wait 0 --metrics-bind-address 127.0.0.1:10249 \
            --healthz-bind-address 127.0.0.1:10256 >"$DIR/kube-proxy.log" 2>&1 &
        AUX_PIDS+=($!)
        publish KUBE_PROXY_PID $!
        wait_for "kube-proxy" 60 "${IN_NODE[@]}" bash -c \
            "kill -0 $! && curl -sf http://127.0.0.1:10256/healthz >/dev/null"
    fi
    publish NODE_NAME "$node"
    publish CRI_SOCKET "$cri_socket"
    log "node $node ready"
    serve_until_stopped
}

# start_runtime: ipamd, the CNI config and runtime-shim of the node, supervised. Reads
# cmd_run's locals (node, cidr, eni, ...) and sets its max_pods in eni mode.
start_runtime() {
    local ipam_args=(--mode podcidr --pod-cidr "$cidr")
    if [ -n "$eni" ]; then
        [ -n "$bridge" ] && [ -n "$ec2_endpoint" ] && [ -n "$imds_endpoint" ] && [ -n "$itype" ] ||
            die "--eni needs --bridge, --ec2-endpoint, --imds-endpoint and --instance-type"
        local ec2_hostport="${ec2_endpoint#http://}" imds_hostport="${imds_endpoint#http://}"
        relay_tcp ec2 "$ec2_hostport" 127.0.0.1
        ip -n "$NETNS" addr add 169.254.169.254/32 dev lo
        relay_tcp imds "$imds_hostport" 169.254.169.254 80
        ipam_args=(--mode eni --ec2-endpoint "http://$ec2_hostport" --imds-endpoint http://169.254.169.254)
        max_pods=(--max-pods "$("$BIN_DIR/ipamd" max-pods --instance-type "$itype")")
    fi
    AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}" \
        supervise ipamd "${IN_NODE[@]}" "$BIN_DIR/ipamd" "${ipam_args[@]}" \
        --socket "$DIR/ipamd.sock" --state-dir "$DIR/ipamd"
    wait_for "ipamd" 30 test -S "$DIR/ipamd.sock"
    cat >"$DIR/net.d/10-vpc-cni.conflist" <<EOF
{"cniVersion":"1.0.0","name":"pods-$node","plugins":[
 {"type":"vpc-cni","ipamdSocket":"$DIR/ipamd.sock","mtu":1500},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}
EOF
    local mirrors=() m
    for m in $(grep '^MIRRORS=' "$reg_dir/env" | cut -d= -f2-); do mirrors+=(--registry-mirror "$m"); done
    supervise runtime-shim "${IN_NODE[@]}" "$BIN_DIR/runtime-shim" --listen "unix://$DIR/cri.sock" \
        --root "$DIR/shim-root" --state "$DIR/shim-state" --cni-conf-dir "$DIR/net.d" \
        --cni-bin-dir "/usr/lib/cni:$BIN_DIR" --cni-cache-dir "$DIR/cni-cache" "${mirrors[@]}"
    wait_for "runtime-shim" 30 test -S "$DIR/cri.sock"
}

# supervise NAME CMD...: runs CMD, and again a second after each exit, as systemd's
# Restart=always does on a real node: killing a daemon is how tests prove restarts lose
# nothing. Output is appended to $DIR/NAME.log; the daemon's current pid is in
# $DIR/NAME.pid and its first one is published as NAME_PID (IPAMD_PID, ...). The
# supervisor's pid goes to PIDS; TERM to it stops the daemon and the loop.
supervise() {
    local name="$1"; shift
    rm -f "$DIR/$name.pid"
    (
        child=""
        trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
        while true; do
            "$@" >>"$DIR/$name.log" 2>&1 &
            child=$!
            echo "$child" >"$DIR/$name.pid"
            wait "$child" || true
            sleep 1
        done
    ) &
    PIDS+=($!)
    wait_for "$name to start" 10 test -s "$DIR/$name.pid"
    local var="${name^^}"
    publish "${var//-/_}_PID" "$(cat "$DIR/$name.pid")"
}

# make_node_netns BRIDGE IP/PREFIX GATEWAY [MAC]: the node's namespace, wired to BRIDGE.
make_node_netns() {
    local bridge="$1" addr="$2" gw="$3" mac="${4:-}" host_if
    NETNS="$NODE"
    # Interface names are at most 15 bytes: name the host end after a hash of the node.
    host_if="nrt$(printf %s "$NODE" | sha256sum | cut -c1-10)"
    ip netns add "$NETNS"
    ip link add "$host_if" type veth peer name eth0 netns "$NETNS" ${mac:+address "$mac"}
    ip link set "$host_if" master "$bridge" up
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add "$addr" dev eth0
    ip -n "$NETNS" link set eth0 up
    ip -n "$NETNS" route add default via "$gw"
    # A node routes its pods' traffic; these sysctls are per network namespace.
    ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.default.rp_filter=0
}

# relay_tcp NAME HOST:PORT NODE_ADDR [NODE_PORT]: what listens on this host's loopback at
# HOST:PORT, reachable inside the node at NODE_ADDR:NODE_PORT (default: the same port),
# through a unix socket in D.
relay_tcp() {
    local name="$1" target="$2" addr="$3" port="${4:-${2##*:}}" sock="$DIR/$1-relay.sock"
    socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:$target" &
    AUX_PIDS+=($!)
    wait_for "$name relay socket" 10 test -S "$sock"
    "${IN_NODE[@]}" socat "TCP-LISTEN:$port,bind=$addr,fork,reuseaddr" "UNIX-CONNECT:$sock" &
    AUX_PIDS+=($!)
}

teardown() {
    local kc=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$CP_DIR/admin.kubeconfig")
    # Drain first, so the kubelet tears every pod down through the runtime and CNI.
    if [ -n "${NODE:-}" ] && [ -n "${KUBELET_SUPERVISOR:-}" ] && kill -0 "$KUBELET_SUPERVISOR" 2>/dev/null; then
        # Cordon first, or controllers put replacement pods right back on this node.
        "${kc[@]}" cordon "$NODE" >/dev/null 2>&1 || true
        "${kc[@]}" delete pods -A --field-selector "spec.nodeName=$NODE" --wait=false >/dev/null 2>&1 || true
        for _ in $(seq 120); do
            [ -z "$("${kc[@]}" get pods -A --field-selector "spec.nodeName=$NODE" -o name 2>/dev/null)" ] && break
            sleep 0.5
        done
        "${kc[@]}" delete node "$NODE" >/dev/null 2>&1 || true
    fi
    [ ${#AUX_PIDS[@]} -eq 0 ] || reap_children "${AUX_PIDS[@]}"
    # The kubelet and runtime first; ipamd last, so DELs during shutdown still reach it.
    [ ${#PIDS[@]} -le 1 ] || reap_children "${PIDS[@]:1}"
    [ ${#PIDS[@]} -eq 0 ] || reap_children "${PIDS[0]}"
    # Whatever a drain could not remove (a node torn down without its API server).
    sweep_runtime_shim "$DIR/shim-root" "$DIR/shim-state" "$DIR"
    # The pods' host-side veths and the node's eth0 go with the namespace; the host end of
    # eth0 goes with its peer.
    [ -z "${NETNS:-}" ] || ip netns del "$NETNS" 2>/dev/null || true
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
