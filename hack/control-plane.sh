#!/usr/bin/env bash
# A real Kubernetes 1.20.2 control plane on loopback: etcd (Debian's etcd-server) and
# kube-apiserver, kube-controller-manager, kube-scheduler built by build-kubernetes.sh.
# TLS everywhere with a CA generated per instance, Node+RBAC authorization, the
# NodeRestriction admission plugin, bootstrap-token auth, service-account signing keys and
# BoundServiceAccountTokenVolume. Random free ports and a private data dir, so several
# instances (parallel tests) never collide.
#
#   control-plane.sh run --dir D [--owner-pid P] [--advertise-address IP] [--cluster-signing-duration D]
#                                                  foreground; tears down on TERM or when P exits
#   control-plane.sh start --dir D [...]           the same in the background; returns when ready
#   control-plane.sh stop --dir D
#   control-plane.sh status --dir D                exit 0 when the apiserver is ready
#   control-plane.sh node-credentials --dir D --node NAME
#                                                  prints a kubeconfig path for system:node:NAME
#   control-plane.sh bootstrap-token --dir D       prints a bootstrap kubeconfig path (kubeadm-style token)
#
# The apiserver listens on loopback; --advertise-address IP makes it listen on IP instead
# (an address of this host, e.g. the bridge local-up.sh puts its node namespaces on), so
# nodes in other network namespaces, and pods through the `kubernetes` Service, reach it.
# Every kubeconfig names that address. etcd, the controller-manager and the scheduler stay
# on loopback. --cluster-signing-duration (a Go duration, default 8760h as upstream) is
# the lifetime of the certificates the controller-manager signs for CSRs: short ones let
# tests see kubelet client certificate rotation.
#
# `run` publishes in D/env: KUBECONFIG (admin, system:masters), KUBE_PROXY_KUBECONFIG
# (system:kube-proxy), APISERVER_URL, CA_CERT, CA_KEY, SA_KEY, SA_PUB, DATA_DIR, ETCD_URL
# and the components' PIDs.
. "$(dirname "$0")/lib.sh"

SERVICE_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
SA_ISSUER=https://kubernetes.default.svc.cluster.local

kubectl_admin() { "$KUBE_BIN_DIR/kubectl" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

# cert NAME CN [O] [SAN]: a key and a certificate signed by the instance's CA. Random
# serials, not a shared serial file: tests mint node credentials concurrently.
cert() {
    local name="$1" cn="$2" org="${3:-}" san="${4:-}" subj="/CN=$2"
    [ -n "$org" ] && subj="/O=$org$subj"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
        -out "$PKI/$name.csr" 2>/dev/null
    local ext="$PKI/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$ext"
}

# kubeconfig FILE USER (--cert NAME | --token TOKEN): a self-contained kubeconfig.
kubeconfig() {
    local file="$1" user="$2" kind="$3" value="$4" server
    server="$(cat "$DIR/apiserver-url")"
    {
        cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
contexts:
- name: $user@local
  context: {cluster: local, user: $user}
current-context: $user@local
users:
- name: $user
  user:
EOF
        case "$kind" in
            --cert)
                echo "    client-certificate-data: $(base64 -w0 "$PKI/$value.crt")"
                echo "    client-key-data: $(base64 -w0 "$PKI/$value.key")"
                ;;
            --token) echo "    token: $value" ;;
        esac
    } >"$file.tmp"
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
}

make_pki() {
    PKI="$DIR/pki"
    mkdir -p "$PKI"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 -sha256 \
        -subj "/CN=nodert-local-ca" -out "$PKI/ca.crt" 2>/dev/null
    cert etcd etcd "" "IP:127.0.0.1,DNS:localhost"
    cert apiserver-etcd-client kube-apiserver-etcd-client
    cert apiserver kube-apiserver "" \
        "IP:$API_HOST,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert admin kubernetes-admin system:masters
    cert controller-manager system:kube-controller-manager
    cert scheduler system:kube-scheduler
    # Bound to the system:node-proxier ClusterRole by the apiserver's default RBAC.
    cert kube-proxy system:kube-proxy
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

# spawn NAME CMD...: starts a component in the background, logging to $DIR/NAME.log.
spawn() {
    local name="$1"; shift
    "$@" >"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
    publish "${name^^}_PID" $!
    PIDS+=($!)
}

teardown() {
    # etcd last: an apiserver that loses etcd first hangs in shutdown until killed.
    [ ${#PIDS[@]} -le 1 ] || reap_children "${PIDS[@]:1}"
    [ ${#PIDS[@]} -eq 0 ] || reap_children "${PIDS[0]}"
    # The data dir is private to this instance: nothing of it survives.
    [ -n "${DIR:-}" ] && rm -rf "$DIR"
}

alive_or_die() {
    local name="$1" pid
    pid="$(cat "$DIR/$name.pid")"
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup; its log ($DIR/$name.log) ends with:
$(tail -20 "$DIR/$name.log")"
}

cmd_run() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$DIR"
    API_HOST=127.0.0.1
    local signing_duration=8760h
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --advertise-address) API_HOST="$2"; shift 2 ;;
            --cluster-signing-duration) signing_duration="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -x "$KUBE_BIN_DIR/kube-apiserver" ] || die "kube-apiserver not built: run hack/build-kubernetes.sh"
    command -v etcd >/dev/null || die "etcd not installed: run hack/install-deps.sh"
    PIDS=()
    trap teardown EXIT
    : >"$DIR/env"
    rm -f "$DIR/ready"
    local t0=$SECONDS

    make_pki
    local etcd_port etcd_peer api_port
    etcd_port="$(free_port)" etcd_peer="$(free_port)" api_port="$(free_port)"
    echo "https://$API_HOST:$api_port" >"$DIR/apiserver-url"

    spawn etcd etcd --name nodert --data-dir "$DIR/etcd" \
        --listen-client-urls "https://127.0.0.1:$etcd_port" \
        --advertise-client-urls "https://127.0.0.1:$etcd_port" \
        --listen-peer-urls "https://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "https://127.0.0.1:$etcd_peer" \
        --initial-cluster "nodert=https://127.0.0.1:$etcd_peer" \
        --cert-file "$PKI/etcd.crt" --key-file "$PKI/etcd.key" \
        --trusted-ca-file "$PKI/ca.crt" --client-cert-auth \
        --peer-cert-file "$PKI/etcd.crt" --peer-key-file "$PKI/etcd.key" \
        --peer-trusted-ca-file "$PKI/ca.crt" --peer-client-cert-auth \
        --listen-metrics-urls "" --log-level warn

    local gates=BoundServiceAccountTokenVolume=true
    spawn apiserver "$KUBE_BIN_DIR/kube-apiserver" \
        --bind-address="$API_HOST" --advertise-address="$API_HOST" \
        --secure-port="$api_port" --insecure-port=0 \
        --etcd-servers="https://127.0.0.1:$etcd_port" --etcd-cafile="$PKI/ca.crt" \
        --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --enable-bootstrap-token-auth \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer="$SA_ISSUER" --api-audiences="$SA_ISSUER" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true --profiling=false \
        --feature-gates="$gates" -v=1

    wait_for "etcd" 30 alive_and_healthy_etcd "$etcd_port"
    wait_for_apiserver

    kubeconfig "$DIR/admin.kubeconfig" admin --cert admin
    kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager --cert controller-manager
    kubeconfig "$DIR/scheduler.kubeconfig" scheduler --cert scheduler
    kubeconfig "$DIR/kube-proxy.kubeconfig" kube-proxy --cert kube-proxy

    spawn controller_manager "$KUBE_BIN_DIR/kube-controller-manager" \
        --kubeconfig="$DIR/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --cluster-signing-duration="$signing_duration" \
        --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
        --use-service-account-credentials=true \
        --controllers='*,bootstrapsigner,tokencleaner' \
        --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --feature-gates="$gates" -v=1
    spawn scheduler "$KUBE_BIN_DIR/kube-scheduler" \
        --kubeconfig="$DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false -v=1

    # Pods can only be created once the controller-manager has made the namespace's
    # `default` ServiceAccount and published kube-root-ca.crt (which projected
    # service-account volumes mount): ready means both exist.
    wait_for "the default ServiceAccount (kube-controller-manager)" 60 \
        kubectl_admin -n default get serviceaccount default
    wait_for "the kube-root-ca.crt ConfigMap" 60 kubectl_admin -n default get configmap kube-root-ca.crt
    alive_or_die controller_manager
    alive_or_die scheduler

    publish KUBECONFIG "$DIR/admin.kubeconfig"
    publish KUBE_PROXY_KUBECONFIG "$DIR/kube-proxy.kubeconfig"
    publish APISERVER_URL "https://$API_HOST:$api_port"
    publish ETCD_URL "https://127.0.0.1:$etcd_port"
    publish CA_CERT "$PKI/ca.crt"
    publish CA_KEY "$PKI/ca.key"
    publish SA_KEY "$PKI/sa.key"
    publish SA_PUB "$PKI/sa.pub"
    publish SERVICE_CIDR "$SERVICE_CIDR"
    publish CLUSTER_CIDR "$CLUSTER_CIDR"
    publish DATA_DIR "$DIR"
    log "control plane ready at https://$API_HOST:$api_port in $((SECONDS - t0))s"
    serve_until_stopped
}

alive_and_healthy_etcd() {
    alive_or_die etcd
    curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/apiserver-etcd-client.crt" \
        --key "$PKI/apiserver-etcd-client.key" "https://127.0.0.1:$1/health"
}

apiserver_ready() {
    alive_or_die apiserver
    [ "$(curl -s --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "$(cat "$DIR/apiserver-url")/readyz")" = ok ]
}
wait_for_apiserver() { wait_for "kube-apiserver /readyz" 90 apiserver_ready; }

cmd_status() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)" PKI="$DIR/pki"
    [ -f "$DIR/ready" ] && apiserver_ready
}

cmd_node_credentials() {
    local node=""
    parse_run_args "$@"
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in --node) node="$2"; shift 2 ;; *) die "unknown flag $1" ;; esac
    done
    [ -n "$node" ] || die "--node NAME is required"
    DIR="$(cd "$RUN_DIR" && pwd)" PKI="$DIR/pki"
    [ -f "$PKI/ca.key" ] || die "$DIR is not a running control plane's dir"
    cert "node-$node" "system:node:$node" system:nodes
    kubeconfig "$DIR/node-$node.kubeconfig" "system:node:$node" --cert "node-$node"
    echo "$DIR/node-$node.kubeconfig"
}

# A kubeadm-style bootstrap token: the Secret, plus the RBAC bindings kubeadm creates
# so that the token may create CSRs that the controller-manager auto-approves.
cmd_bootstrap_token() {
    parse_run_args "$@"
    DIR="$(cd "$RUN_DIR" && pwd)" PKI="$DIR/pki"
    [ -f "$DIR/admin.kubeconfig" ] || die "$DIR is not a running control plane's dir"
    local id secret group=system:bootstrappers:kubeadm:default-node-token
    id="$(openssl rand -hex 3)"
    secret="$(openssl rand -hex 8)"
    kubectl_admin -n kube-system create secret generic "bootstrap-token-$id" \
        --type bootstrap.kubernetes.io/token \
        --from-literal=token-id="$id" --from-literal=token-secret="$secret" \
        --from-literal=usage-bootstrap-authentication=true \
        --from-literal=usage-bootstrap-signing=true \
        --from-literal=auth-extra-groups="$group" >/dev/null
    local binding role subject
    for binding in \
        "kubeadm:kubelet-bootstrap system:node-bootstrapper $group" \
        "kubeadm:node-autoapprove-bootstrap system:certificates.k8s.io:certificatesigningrequests:nodeclient $group" \
        "kubeadm:node-autoapprove-certificate-rotation system:certificates.k8s.io:certificatesigningrequests:selfnodeclient system:nodes"; do
        read -r name role subject <<<"$binding"
        kubectl_admin create clusterrolebinding "$name" --clusterrole "$role" --group "$subject" \
            --dry-run=client -o yaml | kubectl_admin apply -f - >/dev/null
    done
    kubeconfig "$DIR/bootstrap-$id.kubeconfig" "tls-bootstrap-token-user" --token "$id.$secret"
    echo "$DIR/bootstrap-$id.kubeconfig"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) cmd_run "$@" ;;
    start) require_root; start_detached "control plane" "$@" ;;
    stop) stop_detached "$@" ;;
    status) cmd_status "$@" ;;
    node-credentials) cmd_node_credentials "$@" ;;
    bootstrap-token) cmd_bootstrap_token "$@" ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
