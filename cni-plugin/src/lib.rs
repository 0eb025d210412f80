//! Node networking: the `vpc-cni` CNI plugin and the `ipamd` address-management daemon.

pub mod aws;
pub mod cni;
pub mod net;
