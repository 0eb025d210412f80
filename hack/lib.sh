# Shared helpers for hack/ scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# Everything expensive (built Kubernetes binaries, images, the Python venv, cargo's
# target dir) lives under $NODERT_CACHE, outside the clone, so reruns are fast and a
# fresh clone never rebuilds what this machine already has.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR="${SHARED_DIR:-$REPO_ROOT/../shared}"
export NODERT_CACHE="${NODERT_CACHE:-/var/cache/node-runtime}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NODERT_CACHE/target}"
KUBE_VERSION=1.20.2
KUBE_BIN_DIR="$NODERT_CACHE/kubernetes-$KUBE_VERSION/bin"
VENV_DIR="$NODERT_CACHE/venv"
# The test images hack/images.sh builds and hack/registry.sh serves (overridable so that a
# branch changing the images can try them without replacing the ones others are using).
REGISTRY_SEED="${NODERT_REGISTRY_SEED:-$NODERT_CACHE/registry-seed}"
mkdir -p "$NODERT_CACHE"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

require_root() { [ "$(id -u)" = 0 ] || die "$0 must run as root (it creates namespaces, mounts and links)"; }

# apt_install PKG...: installs only what is missing; `apt-get update` at most once a day.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    # A previous install that was interrupted leaves packages unpacked but not
    # configured, and every later apt-get then fails; finish it first.
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a >/dev/null
    local stamp="$NODERT_CACHE/.apt-updated"
    if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
        log "apt-get update"
        apt-get update -qq
        touch "$stamp"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# private_apt DIR SED_EXPR: an apt configuration of our own in DIR whose sources are the
# machine's Debian sources (/etc/apt/sources.list.d/debian.sources) rewritten by SED_EXPR
# (e.g. to add deb-src entries or a suite), so the system's own sources stay untouched.
# Sets PRIVATE_APT_OPTS, the options that make apt-get use it; its lists are refreshed at
# most once a day.
private_apt() {
    local dir="$1" expr="$2"
    [ -f /etc/apt/sources.list.d/debian.sources ] ||
        die "/etc/apt/sources.list.d/debian.sources not found: this script expects a Debian 12 machine"
    mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/sources.d"
    sed "$expr" /etc/apt/sources.list.d/debian.sources >"$dir/sources.d/debian.sources"
    PRIVATE_APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/sources.d"
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache::Archives="$dir/archives")
    if [ -z "$(find "$dir/.updated" -mmin -1440 2>/dev/null)" ] ||
        ! cmp -s "$dir/sources.d/debian.sources" "$dir/.updated"; then
        log "apt-get update (private sources in $dir)"
        apt-get "${PRIVATE_APT_OPTS[@]}" update -qq
        cp "$dir/sources.d/debian.sources" "$dir/.updated"
    fi
}

# free_port: an unused loopback TCP port (race-free enough for tests: the kernel picks it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# host_ip: this machine's first global IPv4 address (a Node's InternalIP must not be
# loopback; the address is local, so nothing leaves the machine).
host_ip() { ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1; }

# wait_for DESCRIPTION SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# watch_owner PID: in a foreground `run` script, returns when PID has exited. Fixtures pass
# their own PID so that a test process that dies (panic, SIGKILL) still gets its
# components torn down.
watch_owner() {
    local pid="$1"
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
}

# parse_run_args "$@": the common flags of a foreground `run` subcommand.
# Sets RUN_DIR, OWNER_PID (may be empty) and RUN_ARGS (the rest).
parse_run_args() {
    RUN_DIR="" OWNER_PID="" RUN_ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) RUN_DIR="$2"; shift 2 ;;
            --owner-pid) OWNER_PID="$2"; shift 2 ;;
            *) RUN_ARGS+=("$1"); shift ;;
        esac
    done
    [ -n "$RUN_DIR" ] || die "--dir is required"
    mkdir -p "$RUN_DIR"
}

# publish KEY VALUE: adds a line to $RUN_DIR/env (read by test fixtures and local-up).
publish() { printf '%s=%s\n' "$1" "$2" >>"$RUN_DIR/env"; }

# serve_until_stopped: the tail of every `run` subcommand. Marks the component ready,
# then blocks until SIGTERM/SIGINT or the owner process exits; the caller's EXIT trap
# does the teardown.
serve_until_stopped() {
    touch "$RUN_DIR/ready"
    if [ -n "${OWNER_PID:-}" ]; then
        watch_owner "$OWNER_PID" &
    else
        sleep infinity &
    fi
    SERVE_WAITER=$!
    # The waiter must not outlive us (the EXIT trap may `wait` for children).
    trap 'kill "$SERVE_WAITER" 2>/dev/null; exit 0' TERM INT
    wait "$SERVE_WAITER" || true
    # The owner is gone, so nobody will read the log the fixture kept beside the dir.
    if [ -n "${OWNER_PID:-}" ] && ! kill -0 "$OWNER_PID" 2>/dev/null; then rm -f "$RUN_DIR.log"; fi
}

# wait_node_ready CP_DIR NODE KUBELET_PID LOG SECONDS: until the Node reports Ready=True;
# dies with the kubelet's log if the kubelet exits first.
wait_node_ready() {
    local cp="$1" node="$2" pid="$3" logfile="$4" secs="$5"
    node_is_ready() {
        kill -0 "$pid" || die "kubelet exited; $logfile ends with:
$(tail -20 "$logfile")"
        "$KUBE_BIN_DIR/kubectl" --kubeconfig "$cp/admin.kubeconfig" get node "$node" \
            -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
    }
    wait_for "node $node Ready" "$secs" node_is_ready
}

# sweep_runtime_shim ROOT STATE BASE: removes from the kernel whatever a runtime-shim with
# --root ROOT and --state STATE left behind (it keeps containers running on purpose):
# monitors and containers, their cgroups, infra processes, pinned pod namespaces, and every mount under
# BASE. The safety net of node teardown and of test fixtures, after a graceful path.
sweep_runtime_shim() {
    local root="$1" state="$2" base="$3" b id c p
    for b in "$root"/containers/*/bundle; do
        [ -d "$b" ] || continue
        if [ -f "$b/monitor.pid" ]; then kill -KILL "$(cat "$b/monitor.pid")" 2>/dev/null || true; fi
        id="$(basename "$(dirname "$b")")"
        runc --root "$state/runc" delete --force "$id" >/dev/null 2>&1 || true
        for c in /sys/fs/cgroup/*/runtime-shim/"$id"; do rmdir "$c" 2>/dev/null || true; done
    done
    for b in "$root"/sandboxes/*.json "$root"/sandboxes-setup/*.json; do
        [ -f "$b" ] || continue
        id="$(basename "$b" .json)"
        # The pod's infra process (PID mode POD), if its PID still runs ours.
        p="$(jq -r '.infra.pid // empty' "$b" 2>/dev/null || true)"
        if [ -n "$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "__pause $state/"; then
            kill -KILL "$p" 2>/dev/null || true
        fi
        umount "/var/run/netns/runtime-shim-${id:0:16}" 2>/dev/null || true
        rm -f "/var/run/netns/runtime-shim-${id:0:16}"
    done
    grep " $base/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

# start_detached WHAT --dir D [args]: the background form of the calling script's `run`
# (used by local-up.sh): detached from the terminal, logging to D.log; returns once
# D/ready exists.
start_detached() {
    local what="$1"; shift
    parse_run_args "$@"
    local dir runner
    dir="$(cd "$RUN_DIR" && pwd)"
    rm -f "$dir/ready"
    setsid bash "$0" run --dir "$dir" "${RUN_ARGS[@]}" >"$dir.log" 2>&1 </dev/null &
    runner=$!
    echo "$runner" >"$dir.runner-pid"
    local deadline=$((SECONDS + 300))
    until [ -f "$dir/ready" ]; do
        kill -0 "$runner" 2>/dev/null || die "$what failed to start; $dir.log ends with:
$(tail -20 "$dir.log")"
        [ $SECONDS -lt $deadline ] || die "$what not ready after 300s; see $dir.log"
        sleep 0.2
    done
}

# stop_detached --dir D: stops what start_detached started and removes D.
stop_detached() {
    parse_run_args "$@"
    local dir pid
    dir="$(cd "$RUN_DIR" && pwd)"
    pid="$(cat "$dir.runner-pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        # Teardowns drain pods and wait for them: give them time before removing D.
        for _ in $(seq 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -rf "$dir" "$dir.runner-pid"
}

# reap_children PID...: TERM, up to 5 s of grace, then KILL; waits for all of them.
reap_children() {
    local pid alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait "$@" 2>/dev/null || true
}
