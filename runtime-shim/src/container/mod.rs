//! Containers: OCI spec generation, the OCI runtime (runc), the per-container monitor
//! and CRI log files.
pub mod logs;
pub mod monitor;
pub mod runc;
pub mod spec;
pub mod stats;
