#!/usr/bin/env bash
# The main job: a local cluster on this machine, no Docker. Brings up the control plane
# (etcd, kube-apiserver, controller-manager, scheduler 1.20.2), a local OCI registry with
# the test images, and our node(s), then runs a demo workload. Idempotent: running it
# again reuses what is already up. `hack/local-down.sh` removes everything.
#
#   ./hack/local-up.sh [--nodes N] [--mode eni|podcidr]
. "$(dirname "$0")/lib.sh"
require_root

NODES=2
MODE=eni
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES="$2"; shift 2 ;;
        --mode) MODE="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown flag $1 (see --help)" ;;
    esac
done
case "$MODE" in eni|podcidr) ;; *) die "--mode must be eni or podcidr" ;; esac

LOCAL_DIR="${NODERT_LOCAL_DIR:-/var/lib/nodert-local}"
mkdir -p "$LOCAL_DIR"
# The nodes' network: every node is a network namespace with one port on this bridge; the
# host (control plane, registry, EC2 emulator) is its gateway.
BRIDGE=nodert0
NODE_NET=172.30.0
GATEWAY="$NODE_NET.1"
node_ip() { echo "$NODE_NET.$((10 + $1))"; }
pod_cidr() { echo "10.244.$((100 + $1)).0/24"; }

log "[1/5] installing prerequisites"
"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/build-kubernetes.sh"
"$REPO_ROOT/hack/images.sh"

log "[2/5] control plane"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
fi
if [ -f "$LOCAL_DIR/control-plane/ready" ] && "$REPO_ROOT/hack/control-plane.sh" status --dir "$LOCAL_DIR/control-plane" >/dev/null 2>&1; then
    log "control plane already running"
else
    "$REPO_ROOT/hack/control-plane.sh" start --dir "$LOCAL_DIR/control-plane" \
        --advertise-address "$GATEWAY"
fi
KUBECONFIG_PATH="$(grep '^KUBECONFIG=' "$LOCAL_DIR/control-plane/env" | cut -d= -f2-)"

log "[3/5] local registry and EC2 emulator"
if [ -f "$LOCAL_DIR/registry/ready" ] && "$REPO_ROOT/hack/registry.sh" status --dir "$LOCAL_DIR/registry" >/dev/null 2>&1; then
    log "registry already running"
else
    "$REPO_ROOT/hack/registry.sh" start --dir "$LOCAL_DIR/registry"
fi
if [ "$MODE" = eni ]; then
    if [ -f "$LOCAL_DIR/ec2-emulator/ready" ]; then
        log "EC2 emulator already running"
    else
        "$REPO_ROOT/hack/ec2-emulator.sh" start --dir "$LOCAL_DIR/ec2-emulator" --instances "$NODES"
    fi
fi

log "[4/5] nodes (kubelet + runtime-shim + CNI + kube-proxy, each in its own network namespace)"
log "building our binaries"
(cd "$REPO_ROOT" && cargo build --bins --locked -q)
[ "$MODE" = podcidr ] || warn "--mode eni: nodes are not emulated EC2 instances yet; pods get IPs from each node's pod CIDR"
for i in $(seq 1 "$NODES"); do
    d="$LOCAL_DIR/node-$i"
    if [ -f "$d/ready" ]; then
        log "node nodert-node-$i already running"
    else
        "$REPO_ROOT/hack/node.sh" start --dir "$d" --control-plane "$LOCAL_DIR/control-plane" \
            --registry "$LOCAL_DIR/registry" --node "nodert-node-$i" --pod-cidr "$(pod_cidr "$i")" \
            --bridge "$BRIDGE" --node-ip "$(node_ip "$i")/24" --gateway "$GATEWAY"
        log "node nodert-node-$i ready"
    fi
done
# Pod CIDRs are routed to their node, from the host and from every other node.
# TODO(issue 4): ipamd's podcidr mode should program these from the Node objects.
for i in $(seq 1 "$NODES"); do
    ip route replace "$(pod_cidr "$i")" via "$(node_ip "$i")"
    for j in $(seq 1 "$NODES"); do
        [ "$i" = "$j" ] || ip -n "nodert-nodert-node-$j" route replace "$(pod_cidr "$i")" via "$(node_ip "$i")"
    done
done

log "[5/5] demo workload"
KUBECTL=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH")
"${KUBECTL[@]}" apply -f "$REPO_ROOT/hack/demo.yaml" >/dev/null
"${KUBECTL[@]}" rollout status deployment/demo --timeout=120s >/dev/null ||
    die "the demo deployment did not become available; see $LOCAL_DIR/node-*/kubelet.log"
"${KUBECTL[@]}" get pods -o wide

cat <<EOM

The cluster is up. Use it with:

    export KUBECONFIG=$KUBECONFIG_PATH
    export PATH=$KUBE_BIN_DIR:\$PATH   # kubectl 1.20.2, built with the control plane
    kubectl get nodes -o wide
    kubectl get pods -o wide
    kubectl scale deployment demo --replicas=0

Tear it down with ./hack/local-down.sh
EOM
