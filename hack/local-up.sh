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
log "[1/5] installing prerequisites"
"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/build-kubernetes.sh"
"$REPO_ROOT/hack/images.sh"

log "[2/5] building our binaries"
(cd "$REPO_ROOT" && cargo build --bins --locked -q)

log "[3/5] control plane, registry and ${NODES} node(s), each node a network namespace running kubelet + runtime-shim + CNI + kube-proxy"
[ "$MODE" = podcidr ] || log "eni mode: each node is an instance of the EC2 emulator; pods get secondary IPs of its ENIs from ipamd"
CLUSTER="$LOCAL_DIR/cluster"
if [ -f "$CLUSTER/ready" ] && kill -0 "$(cat "$CLUSTER.runner-pid" 2>/dev/null)" 2>/dev/null; then
    log "cluster already running"
else
    "$REPO_ROOT/hack/cluster.sh" start --dir "$CLUSTER" --nodes "$NODES" --mode "$MODE"
fi
KUBECONFIG_PATH="$(grep '^KUBECONFIG=' "$CLUSTER/env" | cut -d= -f2-)"

log "[4/5] nodes"
"$KUBE_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" get nodes -o wide

log "[5/5] demo workload"
KUBECTL=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH")
"${KUBECTL[@]}" apply -f "$REPO_ROOT/hack/demo.yaml" >/dev/null
"${KUBECTL[@]}" rollout status deployment/demo --timeout=120s >/dev/null ||
    die "the demo deployment did not become available; see $CLUSTER/node-*/kubelet.log"
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
