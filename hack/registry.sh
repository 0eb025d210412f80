#!/usr/bin/env bash
# A real OCI registry (Debian's docker-registry, distribution 2.8) on loopback, holding
# the test images hack/images.sh built: its storage starts as a private copy of the seed.
#
#   registry.sh run --dir D [--owner-pid P] [--htpasswd USER:PASSWORD]
#   registry.sh start --dir D [--htpasswd USER:PASSWORD]   the same in the background
#   registry.sh stop --dir D
#   registry.sh status --dir D
#
# With --htpasswd the registry requires HTTP basic auth (for credential tests).
# `run` publishes in D/env: REGISTRY (host:port), REGISTRY_URL, REGISTRY_PID and
# MIRRORS, a space-separated list of HOST=URL pairs (runtime-shim's --registry-mirror
# syntax) covering every upstream registry the seed has images for.
. "$(dirname "$0")/lib.sh"

SEED="$REGISTRY_SEED"

cmd_run() {
    parse_run_args "$@"
    # RUN_DIR, not a local: the EXIT trap runs after cmd_run has returned.
    local dir htpasswd=""
    dir="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$dir"
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --htpasswd) htpasswd="$2"; shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -d "$SEED/storage" ] || die "no test images in $SEED: run hack/images.sh"
    command -v docker-registry >/dev/null || die "docker-registry not installed: run hack/install-deps.sh"
    REG_PID=""
    trap 'if [ -n "$REG_PID" ]; then reap_children "$REG_PID"; fi; rm -rf "$RUN_DIR"' EXIT
    : >"$dir/env"
    rm -f "$dir/ready"

    cp -a "$SEED/storage" "$dir/storage"
    local port auth=""
    port="$(free_port)"
    if [ -n "$htpasswd" ]; then
        command -v htpasswd >/dev/null || die "htpasswd not installed: run hack/install-deps.sh"
        htpasswd -Bbn "${htpasswd%%:*}" "${htpasswd#*:}" >"$dir/htpasswd" 2>/dev/null
        auth="auth: {htpasswd: {realm: nodert-test, path: $dir/htpasswd}}"
    fi
    cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $dir/storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
$auth
EOF
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REG_PID=$!
    # /v2/ answers 200, or 401 when auth is on: either way it is serving.
    wait_for "docker-registry on 127.0.0.1:$port" 30 \
        bash -c "kill -0 $REG_PID && curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/v2/ | grep -q '200\|401'"

    local hosts mirrors=""
    hosts="$(cut -d/ -f1 "$SEED/images.txt" | sort -u)"
    for h in $hosts; do mirrors+="$h=http://127.0.0.1:$port/$h "; done
    publish REGISTRY "127.0.0.1:$port"
    publish REGISTRY_URL "http://127.0.0.1:$port"
    publish REGISTRY_PID "$REG_PID"
    publish MIRRORS "${mirrors% }"
    log "registry ready at 127.0.0.1:$port"
    serve_until_stopped
}

cmd_status() {
    parse_run_args "$@"
    local reg
    reg="$(grep '^REGISTRY=' "$RUN_DIR/env" 2>/dev/null | cut -d= -f2)"
    [ -n "$reg" ] && curl -s -o /dev/null "http://$reg/v2/"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) cmd_run "$@" ;;
    start) start_detached "registry" "$@" ;;
    stop) stop_detached "$@" ;;
    status) cmd_status "$@" ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
