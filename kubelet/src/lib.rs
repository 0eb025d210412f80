//! The kubelet as a library: the binary in `main.rs` wires these modules together, and
//! keeping them here lets unit tests reach every piece.

pub mod bootstrap;
pub mod cloud;
pub mod config;
pub mod credentials;
pub mod cri;
pub mod install;
pub mod node;
pub mod pods;
pub mod probes;
pub mod quantity;
pub mod server;
pub mod volumes;
