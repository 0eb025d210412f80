#!/usr/bin/env bash
# Side-by-side CNI latency: vpc-cni (+ ipamd, warm pool) against the reference ptp +
# host-local plugins, in one run on this machine, driven the same way: the plugin
# executable run by this script with the CNI_* environment and the network config on
# stdin, timed around the exec, as a runtime runs it. Every pod is a real network
# namespace.
#   1. N pods one after another: ADD each (all N coexist), then DEL each.
#   2. a burst of B concurrent ADDs (then DELs, not timed).
# Then ipamd's PSS with the B pods attached. Not a test: it prints figures.
#
#   ./hack/bench-cni.sh [--pods N] [--burst B]
#
# NODERT_BIN_DIR=DIR uses the vpc-cni and ipamd already built there instead of building
# release binaries (which, with aws-sdk-ec2, take minutes the first time).
#
# ipamd runs in podcidr mode here (pool warm from the start: every address of the CIDR is
# free); in eni mode its ADD path is the same pool lookup and journal append.
. "$(dirname "$0")/lib.sh"
require_root

PODS=100
BURST=30
while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS="$2"; shift 2 ;;
        --burst) BURST="$2"; shift 2 ;;
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
REF_BIN=/usr/lib/cni
[ -x "$REF_BIN/ptp" ] || die "reference plugins missing in $REF_BIN: run hack/install-deps.sh"

WORK="$(mktemp -d /tmp/nodert-bench-cni.XXXXXX)"
TAG="nrtb$$"
IPAMD_PID=""
cleanup() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -z "$IPAMD_PID" ] || reap_children "$IPAMD_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/ipamd" --mode podcidr --pod-cidr 10.249.0.0/22 --socket "$WORK/ipamd.sock" \
    --state-dir "$WORK/ipamd" >"$WORK/ipamd.log" 2>&1 &
IPAMD_PID=$!
wait_for "ipamd" 30 test -S "$WORK/ipamd.sock"

cat >"$WORK/vpc-cni.json" <<EOF
{"cniVersion":"1.0.0","name":"bench-vpc","type":"vpc-cni","ipamdSocket":"$WORK/ipamd.sock","mtu":1500}
EOF
cat >"$WORK/ptp.json" <<EOF
{"cniVersion":"1.0.0","name":"bench-ptp","type":"ptp","ipMasq":false,"mtu":1500,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.249.8.0/22"}]],"dataDir":"$WORK/host-local",
  "routes":[{"dst":"0.0.0.0/0"}]}}
EOF

# cni PLUGIN COMMAND ID: runs one CNI command for pod ID; prints its wall time in µs.
cni() {
    local plugin="$1" cmd="$2" id="$3" t0 t1 conf="$WORK/vpc-cni.json" exe="$BIN/vpc-cni"
    if [ "$plugin" = ptp ]; then conf="$WORK/ptp.json" exe="$REF_BIN/ptp"; fi
    t0=${EPOCHREALTIME/./}
    CNI_COMMAND="$cmd" CNI_CONTAINERID="$TAG-$plugin-$id" CNI_NETNS="/var/run/netns/$TAG-$plugin-$id" \
        CNI_IFNAME=eth0 CNI_PATH="$REF_BIN:$BIN" \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$plugin-$id" \
        "$exe" <"$conf" >"$WORK/out" 2>&1 || die "$plugin $cmd $id failed: $(cat "$WORK/out")"
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
}

# run_plugin PLUGIN: $WORK/PLUGIN.{add,del,burst} in µs, one line per call.
run_plugin() {
    local p="$1" i
    log "$p: $PODS pods one after another"
    for i in $(seq 1 "$PODS"); do ip netns add "$TAG-$p-$i"; done
    for i in $(seq 1 "$PODS"); do cni "$p" ADD "$i"; done >"$WORK/$p.add"
    for i in $(seq 1 "$PODS"); do cni "$p" DEL "$i"; done >"$WORK/$p.del"
    for i in $(seq 1 "$PODS"); do ip netns del "$TAG-$p-$i"; done
    log "$p: $BURST concurrent ADDs"
    for i in $(seq 1 "$BURST"); do ip netns add "$TAG-$p-b$i"; done
    local adds=()
    for i in $(seq 1 "$BURST"); do
        cni "$p" ADD "b$i" >"$WORK/$p.burst.$i" &
        adds+=($!)
    done
    wait "${adds[@]}"
    cat "$WORK/$p".burst.* >"$WORK/$p.burst"
    if [ "$p" = vpc-cni ]; then IPAMD_PSS="$(pss_kb "$IPAMD_PID")"; fi
    for i in $(seq 1 "$BURST"); do cni "$p" DEL "b$i" >/dev/null; ip netns del "$TAG-$p-b$i"; done
}

. "$REPO_ROOT/hack/bench-lib.sh"
run_plugin vpc-cni
run_plugin ptp

# line LABEL KIND: p50/p95 in ms of both plugins, with the ratio.
line() {
    local q r v
    for q in 0.5 0.95; do
        r=$(percentile "$q" <"$WORK/ptp.$2")
        v=$(percentile "$q" <"$WORK/vpc-cni.$2")
        printf '%-34s %10.2f ms %10.2f ms %7.2fx\n' "$1 p$(awk -v q="$q" 'BEGIN{print q*100}')" \
            "$(awk -v x="$r" 'BEGIN{print x/1000}')" "$(awk -v x="$v" 'BEGIN{print x/1000}')" \
            "$(awk -v a="$v" -v b="$r" 'BEGIN{print a/b}')"
    done
}
echo
echo "CNI latency ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
printf '%-34s %13s %13s %8s\n' "" "ptp+host-local" "vpc-cni" "ratio"
line "ADD, $PODS sequential," add
line "DEL, $PODS sequential," del
line "ADD, burst of $BURST," burst
echo "ipamd PSS with $BURST pods attached: $((IPAMD_PSS / 1024)) MB"
