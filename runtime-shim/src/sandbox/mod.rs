//! Pod sandboxes: pinned namespaces and the per-pod files containers bind-mount.
pub mod cni;
pub mod files;
pub mod infra;
pub mod namespaces;
pub mod netstats;
