//! `runtime-shim`: a CRI v1 container runtime. The binary in `main.rs` only parses flags
//! and starts the gRPC server; everything else lives in these modules so that tests and
//! the kubelet can reuse pieces (the image store, the OCI spec builder).
pub mod container;
pub mod cri;
pub mod image;
pub mod runtime;
pub mod sandbox;
pub mod state;
pub mod streaming;
