//! Node networking: the `vpc-cni` CNI plugin and the `ipamd` address-management daemon.

pub mod aws;
pub mod cni;
pub mod ipam;
pub mod net;
pub mod peers;
pub mod plugin;
pub mod rpc;
