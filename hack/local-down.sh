#!/usr/bin/env bash
# Removes everything hack/local-up.sh created: processes, namespaces, links, rules,
# mounts, cgroups and state dirs (cluster.sh's teardown does the work).
. "$(dirname "$0")/lib.sh"
require_root
LOCAL_DIR="${NODERT_LOCAL_DIR:-/var/lib/nodert-local}"
[ -d "$LOCAL_DIR" ] || { log "nothing to remove"; exit 0; }
if [ -d "$LOCAL_DIR/cluster" ]; then
    log "stopping the cluster (nodes drain first)"
    "$REPO_ROOT/hack/cluster.sh" stop --dir "$LOCAL_DIR/cluster" || warn "stopping the cluster failed"
fi
rm -rf "$LOCAL_DIR"
log "local cluster removed"
