#!/usr/bin/env bash
# CNI latency: vpc-cni + ipamd (podcidr mode) vs the reference ptp + host-local
# (containernetworking-plugins, /usr/lib/cni), one network namespace at a time, measured
# in one run on this machine the way a runtime calls them (exec, config on stdin).
# Not a test: it prints figures.
#
#   ./hack/bench-cni.sh [--count N]
#
# NODERT_BIN_DIR=DIR uses the vpc-cni and ipamd already built there instead of building
# release binaries (which, with aws-sdk-ec2, take minutes the first time).
. "$(dirname "$0")/lib.sh"
require_root

COUNT=40
while [ $# -gt 0 ]; do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        *) die "unknown flag $1" ;;
    esac
done

"$REPO_ROOT/hack/install-deps.sh"
if [ -n "${NODERT_BIN_DIR:-}" ]; then
    BIN="$NODERT_BIN_DIR"
else
    log "building release binaries"
    (cd "$REPO_ROOT" && cargo build --release --locked -q -p cni-plugin --bin vpc-cni --bin ipamd)
    BIN="$CARGO_TARGET_DIR/release"
fi

WORK="$(mktemp -d /tmp/nodert-bench-cni.XXXXXX)"
TAG="nrtbc$$"
IPAMD_PID=""
cleanup() {
    [ -z "$IPAMD_PID" ] || reap_children "$IPAMD_PID"
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do ip netns del "$ns"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Ranges of their own, so routes left by an interrupted run are easy to tell apart.
OURS_CIDR=10.251.0.0/24
REF_CIDR=10.252.0.0/24
"$BIN/ipamd" --mode podcidr --pod-cidr "$OURS_CIDR" --socket "$WORK/ipamd.sock" \
    --state-dir "$WORK/ipamd" >"$WORK/ipamd.log" 2>&1 &
IPAMD_PID=$!
wait_for "ipamd" 30 test -S "$WORK/ipamd.sock"

OURS_CONF="{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"vpc-cni\",\"ipamdSocket\":\"$WORK/ipamd.sock\",\"mtu\":1500}"
REF_CONF="{\"cniVersion\":\"0.4.0\",\"name\":\"bench\",\"type\":\"ptp\",\"ipMasq\":false,
 \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$WORK/host-local\",\"ranges\":[[{\"subnet\":\"$REF_CIDR\"}]],
 \"routes\":[{\"dst\":\"0.0.0.0/0\"}]}}"

# cni DIR TYPE COMMAND NETNS CONF: one invocation as a runtime makes it.
cni() {
    CNI_COMMAND="$3" CNI_CONTAINERID="$4" CNI_NETNS="/var/run/netns/$4" CNI_IFNAME=eth0 \
        CNI_PATH="$1" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$4" \
        "$1/$2" <<<"$5" >/dev/null || die "$2 $3 $4 failed"
}

now_us() { echo $(($(date +%s%N) / 1000)); }

# measure NAME DIR TYPE CONF: COUNT namespaces, ADD then DEL each; writes NAME.add/.del (µs).
measure() {
    local name="$1" dir="$2" type="$3" conf="$4" i ns t0 t1 t2
    : >"$WORK/$name.add"
    : >"$WORK/$name.del"
    for i in $(seq "$COUNT"); do
        ns="$TAG-$name-$i"
        ip netns add "$ns"
        t0="$(now_us)"
        cni "$dir" "$type" ADD "$ns" "$conf"
        t1="$(now_us)"
        cni "$dir" "$type" DEL "$ns" "$conf"
        t2="$(now_us)"
        echo $((t1 - t0)) >>"$WORK/$name.add"
        echo $((t2 - t1)) >>"$WORK/$name.del"
        ip netns del "$ns"
    done
}

# pct FILE P: the P-th percentile of the numbers in FILE, in ms with one decimal.
pct() {
    sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.1f", a[i]/1000}'
}

log "ptp + host-local: $COUNT ADD/DEL"
measure ref /usr/lib/cni ptp "$REF_CONF"
log "vpc-cni + ipamd (podcidr): $COUNT ADD/DEL"
measure ours "$BIN" vpc-cni "$OURS_CONF"

echo
echo "CNI latency, $COUNT sequential ADD+DEL each ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
printf '%-28s %10s %10s %10s %10s\n' "" "ADD p50" "ADD p99" "DEL p50" "DEL p99"
for n in ref ours; do
    label="ptp + host-local"
    [ "$n" = ours ] && label="vpc-cni + ipamd (podcidr)"
    printf '%-28s %8s ms %8s ms %8s ms %8s ms\n' "$label" \
        "$(pct "$WORK/$n.add" 50)" "$(pct "$WORK/$n.add" 99)" \
        "$(pct "$WORK/$n.del" 50)" "$(pct "$WORK/$n.del" 99)"
done
