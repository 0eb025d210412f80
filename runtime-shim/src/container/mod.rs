//! Containers: OCI spec generation (with seccomp profiles), the OCI runtime (runc), the
//! per-container monitor with its attach socket, terminals, the exec reaper and CRI
//! log files.
pub mod attach;
pub mod console;
pub mod exec_reaper;
pub mod logs;
pub mod monitor;
pub mod runc;
pub mod seccomp;
pub mod spec;
pub mod stats;
