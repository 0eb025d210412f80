//! Per-pod network plumbing over netlink: namespaces, the veth pair, and the addresses,
//! routes, neighbour entries and policy rules that connect a pod to the node.

pub mod eni;
pub mod netns;
pub mod pod;
pub mod repair;
pub mod snat;
pub mod veth;

use std::io;
use std::path::PathBuf;

pub use eni::{EniNetwork, setup_eni_network, subnet_gateway};
pub use netns::{NetNs, host_netlink};
pub use pod::{
    FROM_POD_RULE_PRIORITY, POD_GATEWAY, PodLinks, PodNetwork, TO_POD_RULE_PRIORITY,
    check_pod_network, setup_pod_network, teardown_pod_network, teardown_released, teardown_stale,
};
pub(crate) use pod::{Route4, ipv4_routes};
pub use veth::{LinkInfo, MacAddr, host_veth_name};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open network namespace {}: {source}", path.display())]
    OpenNetns { path: PathBuf, source: io::Error },

    #[error(
        "{} is not a network namespace; pass a netns file such as /var/run/netns/NAME or /proc/PID/ns/net",
        path.display()
    )]
    NotANetns { path: PathBuf },

    #[error("cannot enter network namespace {}: {source}", path.display())]
    EnterNetns { path: PathBuf, source: io::Error },

    #[error("cannot {op}: {source}")]
    Socket { op: String, source: io::Error },

    #[error("cannot {op}: {source}")]
    Sysctl { op: String, source: io::Error },

    #[error("cannot {op}: {}", describe(source))]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },

    #[error("interface name {name:?} is invalid: {why}")]
    InvalidName { name: String, why: String },

    #[error("interface {name} already exists in {}; the runtime must DEL the old attachment first or use another CNI_IFNAME", netns.display())]
    AlreadyExists { name: String, netns: PathBuf },

    #[error(
        "{0} disappeared while it was being configured; something else is changing this node's interfaces"
    )]
    Vanished(String),

    #[error("pod network is not as set up: {}", .0.join("; "))]
    CheckFailed(Vec<String>),

    #[error("iptables -t nat {args}: {stderr}")]
    Iptables { args: String, stderr: String },
}

impl NetError {
    /// The kernel's errno behind a failed netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. } => netlink_errno(source),
            _ => None,
        }
    }
}

pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// "File exists (os error 17)" reads better than the netlink message dump.
fn describe(e: &rtnetlink::Error) -> String {
    match netlink_errno(e) {
        Some(errno) => io::Error::from_raw_os_error(errno).to_string(),
        None => e.to_string(),
    }
}

/// Wraps a netlink failure with what we were trying to do.
pub(crate) fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}
