#!/usr/bin/env bash
# Removes everything hack/local-up.sh created: processes, namespaces, links, rules,
# mounts, cgroups and state dirs.
. "$(dirname "$0")/lib.sh"
require_root
LOCAL_DIR="${NODERT_LOCAL_DIR:-/var/lib/nodert-local}"
[ -d "$LOCAL_DIR" ] || { ip link del nodert0 2>/dev/null || true; log "nothing to remove"; exit 0; }
for d in "$LOCAL_DIR"/node-*; do
    [ -d "$d" ] || continue
    log "stopping $(basename "$d")"
    "$REPO_ROOT/hack/node.sh" stop --dir "$d" || warn "stopping $d failed"
done
for comp in ec2-emulator registry control-plane; do
    if [ -d "$LOCAL_DIR/$comp" ]; then
        log "stopping $comp"
        "$REPO_ROOT/hack/$comp.sh" stop --dir "$LOCAL_DIR/$comp" || warn "stopping $comp failed"
    fi
done
# The pod CIDR routes through it go with the bridge.
ip link del nodert0 2>/dev/null || true
rm -rf "$LOCAL_DIR"
log "local cluster removed"
