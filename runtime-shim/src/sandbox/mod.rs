//! Pod sandboxes: pinned namespaces and the per-pod files containers bind-mount.
pub mod files;
pub mod namespaces;
