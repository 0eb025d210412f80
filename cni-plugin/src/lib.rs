//! Node networking: the `vpc-cni` CNI plugin and the `ipamd` address-management daemon.

pub mod aws;
pub mod cni;
pub mod eni;
pub mod ipam;
pub mod net;
pub mod peers;
pub mod plugin;
pub mod rpc;

/// An error and its sources, one line ("connecting: No such file or directory").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
