//! CRI v1 (`runtime.v1`) messages and gRPC client/server stubs.
//!
//! Generated at build time from `proto/api.proto` by `protox` (a pure-Rust protobuf
//! compiler), so building the workspace never needs a system `protoc`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("runtime.v1");
}
