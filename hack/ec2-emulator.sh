#!/usr/bin/env bash
# An EC2 API emulator (moto, from PyPI) on loopback with a VPC, a subnet and N emulated
# instances, plus one IMDSv2 endpoint per instance (hack/imds/imds.py) whose answers
# follow the instance's ENIs in moto.
#
#   ec2-emulator.sh run --dir D [--owner-pid P] [--instances N] [--instance-type TYPE]
#                       [--vpc-cidr CIDR --subnet-cidr CIDR]   (default 10.0.0.0/16, 10.0.0.0/20)
#   ec2-emulator.sh start --dir D [...]      the same in the background
#   ec2-emulator.sh stop --dir D
#
# `run` publishes in D/env: EC2_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, VPC_ID, VPC_CIDR, SUBNET_ID, SECURITY_GROUP_ID, INSTANCE_IDS and
# IMDS_ENDPOINTS (space-separated, same order), IMDS_ENDPOINT (the first instance's).
. "$(dirname "$0")/lib.sh"

PY="$VENV_DIR/bin/python"

cmd_run() {
    parse_run_args "$@"
    local dir instances=1 type=m5.large cidrs=()
    dir="$(cd "$RUN_DIR" && pwd)"
    RUN_DIR="$dir"
    set -- "${RUN_ARGS[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --instances) instances="$2"; shift 2 ;;
            --instance-type) type="$2"; shift 2 ;;
            --vpc-cidr|--subnet-cidr) cidrs+=("$1" "$2"); shift 2 ;;
            *) die "unknown flag $1" ;;
        esac
    done
    [ -x "$VENV_DIR/bin/moto_server" ] || die "moto not installed: run hack/install-deps.sh"
    PIDS=()
    trap '[ ${#PIDS[@]} -eq 0 ] || reap_children "${PIDS[@]}"; rm -rf "$RUN_DIR"' EXIT
    : >"$dir/env"
    rm -f "$dir/ready"

    local port endpoint
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    # moto_server with unique, unreserved private IPs (see hack/imds/moto_server.py).
    "$PY" "$REPO_ROOT/hack/imds/moto_server.py" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    PIDS+=($!)
    local moto_pid=$!
    wait_for "moto on $endpoint" 60 bash -c "kill -0 $moto_pid && curl -sf $endpoint/moto-api/"

    "$PY" "$REPO_ROOT/hack/imds/imds.py" setup --ec2-endpoint "$endpoint" \
        --instances "$instances" --instance-type "$type" "${cidrs[@]}" >"$dir/world.json"
    local ids listen=() imds=() id p
    ids="$(jq -r '.instance_ids | join(" ")' "$dir/world.json")"
    for id in $ids; do
        p="$(free_port)"
        listen+=(--listen "127.0.0.1:$p=$id")
        imds+=("http://127.0.0.1:$p")
    done
    "$PY" "$REPO_ROOT/hack/imds/imds.py" serve --ec2-endpoint "$endpoint" "${listen[@]}" \
        >"$dir/imds.log" 2>&1 &
    PIDS+=($!)
    local imds_pid=$!
    for e in "${imds[@]}"; do
        wait_for "IMDS on $e" 30 bash -c "kill -0 $imds_pid && curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $e/latest/api/token"
    done

    publish EC2_ENDPOINT "$endpoint"
    publish AWS_REGION "$(jq -r .region "$dir/world.json")"
    publish AWS_ACCESS_KEY_ID testing
    publish AWS_SECRET_ACCESS_KEY testing
    publish VPC_ID "$(jq -r .vpc_id "$dir/world.json")"
    publish VPC_CIDR "$(jq -r .vpc_cidr "$dir/world.json")"
    publish SUBNET_ID "$(jq -r .subnet_id "$dir/world.json")"
    publish SECURITY_GROUP_ID "$(jq -r .security_group_id "$dir/world.json")"
    publish INSTANCE_IDS "$ids"
    publish IMDS_ENDPOINTS "${imds[*]}"
    publish IMDS_ENDPOINT "${imds[0]}"
    publish MOTO_PID "$moto_pid"
    publish IMDS_PID "$imds_pid"
    log "EC2 emulator at $endpoint, $instances instance(s): $ids"
    serve_until_stopped
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    run) cmd_run "$@" ;;
    start) start_detached "EC2 emulator" "$@" ;;
    stop) stop_detached "$@" ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
