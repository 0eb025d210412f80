#!/usr/bin/env bash
# The upstream node stack we measure ourselves against: kubelet 1.20.2 (built by
# build-kubernetes.sh) + Debian's containerd 1.6 + runc + the reference CNI plugins
# (ptp + host-local), joined to a control plane started by control-plane.sh. Everything
# (sockets, state, root dirs, CNI config and IPAM state, the cgroup root) is private to D,
# so it never touches a system containerd or kubelet.
#
#   reference-node.sh run --dir D [--owner-pid P] --control-plane CP_DIR --node NAME
#                     [--registry HOST:PORT] [--pod-cidr CIDR] [--kube-api-qps N]
#   reference-node.sh run --dir D [--owner-pid P] --containerd-only [--registry HOST:PORT]
#                     just the CRI runtime (for testing our kubelet against containerd)
#   reference-node.sh start|stop --dir D [...]
#
# --registry: a registry.sh instance to use as mirror for registry.k8s.io, docker.io,
# gcr.io and k8s.gcr.io (so unmodified manifests pull the offline test images).
# `run` publishes in D/env: NODE_NAME, CONTAINERD_SOCK, KUBELET_PORT, CONTAINERD_PID, KUBELET_PID.
. "$(dirname "$0")/lib.sh"

# The cgroup v1 controllers kubelet and runc use here (hybrid hierarchy, cgroupfs driver).
CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory pids blkio devices freezer hugetlb net_cls perf_event)

cgroup_dirs() {
    local c
    for c in "${CGROUP_CONTROLLERS[@]}"; do
        [ -d "/sys/fs/cgroup/$c" ] && echo "/sys/fs/cgroup/$c/$1"
    done
    [ -d /sys/fs/cgroup/systemd ] && echo "/sys/fs/cgroup/systemd/$1"
    return 0
}

# remove_cgroup_tree ROOT: removes a cgroup subtree bottom-up in every hierarchy.
remove_cgroup_tree() {
    local d
    for d in $(cgroup_dirs "$1"); do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}

write_containerd_config() {
    local registry="$1"
    mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/certs.d"
    cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd.sock"
[ttrpc]
  address = "$DIR/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # Lowering oom_score_adj is denied on this machine (see ENVIRONMENT.md).
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$DIR/certs.d"
EOF
    if [ -n "$registry" ]; then
        local host
        for host in registry.k8s.io docker.io gcr.io k8s.gcr.io; do
            mkdir -p "$DIR/certs.d/$host"
            cat >"$DIR/certs.d/$host/hosts.toml" <<EOF
server = "https://$host"
[host."http://$registry/v2/$host"]
  capabilities = ["pull", "resolve"]
  override_path = true
EOF
        done
    fi
}

write_cni_config() {
    local cidr="$1"
    cat >"$DIR/cni/net.d/10-reference.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "reference",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

write_kubelet_config() {
    local port="$1" qps="$2" ip="$3"
    cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: $port
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CP_DIR/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
kubeAPIQPS: $qps
kubeAPIBurst: $((qps * 2))
serializeImagePulls: false
# The KUBE-FIREWALL/KUBE-MARK-* chains it would add are host-wide and outlive it; this
# node runs no kube-proxy that needs them.
makeIPTablesUtilChains: false
# Test machines run with little free disk; never evict for it.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
EOF
}

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    local node="" registry="" cidr="10.88.0.0/24" qps=50 containerd_only=0
    CP_DIR=""
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --control-plane) CP_DIR="$(cd "$2" && pwd)"; shift 2 ;;
            --node) node="$2"; shift 2 ;;
            --registry) registry="$2"; shift 2 ;;
            --pod-cidr) cidr="$2"; shift 2 ;;
            --kube-api-qps) qps="$2"; shift 2 ;;
            --containerd-only) containerd_only=1; shift ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -n "$node" ] || node="containerd-$$"
    [ $containerd_only = 1 ] || [ -n "$CP_DIR" ] || die "--control-plane DIR is required (or --containerd-only)"
    [ $containerd_only = 1 ] || [ -x "$KUBE_BIN_DIR/kubelet" ] || die "kubelet not built: run hack/build-kubernetes.sh"
    command -v containerd >/dev/null || die "containerd not installed: run hack/install-deps.sh"
    CGROUP_ROOT="nodert-ref-$node"
    PIDS=()
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"

    write_containerd_config "$registry"
    write_cni_config "$cidr"
    containerd --config "$DIR/containerd/config.toml" >"$DIR/containerd.log" 2>&1 &
    PIDS+=($!)
    publish CONTAINERD_PID $!
    wait_for "containerd" 30 test -S "$DIR/containerd.sock"

    publish CONTAINERD_SOCK "$DIR/containerd.sock"
    if [ $containerd_only = 1 ]; then
        log "containerd ready at $DIR/containerd.sock"
        serve_until_stopped
        return
    fi

    local kubeconfig port
    kubeconfig="$("$REPO_ROOT/hack/control-plane.sh" node-credentials --dir "$CP_DIR" --node "$node")"
    port="$(free_port)"
    mkdir -p "$DIR/kubelet"
    local ip
    ip="$(host_ip)"
    [ -n "$ip" ] || die "no global IPv4 address on this machine for the node's InternalIP"
    write_kubelet_config "$port" "$qps" "$ip"
    local d
    for d in $(cgroup_dirs "$CGROUP_ROOT"); do mkdir -p "$d"; done
    "$KUBE_BIN_DIR/kubelet" --config "$DIR/kubelet/config.yaml" --kubeconfig "$kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$DIR/containerd.sock" \
        --runtime-request-timeout=2m --hostname-override="$node" --node-ip="$ip" \
        --root-dir="$DIR/kubelet/root" --cert-dir="$DIR/kubelet/pki" \
        --volume-plugin-dir="$DIR/kubelet/volume-plugins" \
        --pod-infra-container-image=registry.k8s.io/pause:3.10 -v=1 \
        >"$DIR/kubelet.log" 2>&1 &
    PIDS+=($!)
    publish KUBELET_PID $!
    wait_node_ready "$CP_DIR" "$node" $! "$DIR/kubelet.log" 120
    publish NODE_NAME "$node"
    publish KUBELET_PORT "$port"
    log "reference node $node ready"
    serve_until_stopped
}

teardown() {
    # The kubelet first (it would restart what we remove), then every container through
    # containerd, then the pods' network namespaces (their veth pairs and routes go with
    # them), then containerd.
    [ ${#PIDS[@]} -le 1 ] || reap_children "${PIDS[@]:1}"
    local netns=() id ns
    if [ -S "$DIR/containerd.sock" ]; then
        local ctr=(ctr -a "$DIR/containerd.sock" -n k8s.io)
        for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            ns="$("${ctr[@]}" containers info "$id" 2>/dev/null |
                jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty')"
            [ -n "$ns" ] && netns+=("$ns")
            "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        sleep 0.5
        for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
            "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
        done
    fi
    [ ${#PIDS[@]} -eq 0 ] || reap_children "${PIDS[0]}"
    # containerd-shim processes are detached by design: stop the ones of this node.
    local shims="containerd-shim-runc-v2 .*-address $DIR/containerd.sock"
    pkill -KILL -f "$shims" 2>/dev/null || true
    for _ in $(seq 50); do pgrep -f "$shims" >/dev/null || break; sleep 0.1; done
    for ns in $(printf '%s\n' "${netns[@]}" | sort -u); do
        umount "$ns" 2>/dev/null || true
        rm -f "$ns"
    done
    if [ -n "${DIR:-}" ]; then
        grep " $DIR/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        [ -n "${CGROUP_ROOT:-}" ] && remove_cgroup_tree "$CGROUP_ROOT"
        rm -rf "$DIR"
    fi
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) require_root; cmd_run "$@" ;;
    start) require_root; start_detached "reference node" "$@" ;;
    stop) stop_detached "$@" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
