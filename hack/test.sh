#!/usr/bin/env bash
# Installs everything the tests need, then runs every test: formatting, lints, unit,
# integration and end-to-end. `.ci/run` runs exactly this.
. "$(dirname "$0")/lib.sh"
require_root
cd "$REPO_ROOT"
start=$SECONDS

"$REPO_ROOT/hack/install-deps.sh"
"$REPO_ROOT/hack/build-kubernetes.sh"
"$REPO_ROOT/hack/images.sh"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building binaries"
cargo build --workspace --bins --locked
export NODERT_BIN_DIR="$CARGO_TARGET_DIR/debug"
log "cargo test"
cargo test --workspace --locked --no-fail-fast
log "all tests passed in $((SECONDS - start))s"
