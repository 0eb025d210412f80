//! The streaming server behind CRI Exec, Attach and PortForward: the RPC stores the
//! request under a single-use token and answers with a URL; the kubelet (or crictl,
//! critest) then upgrades an HTTP connection at that URL to SPDY/3.1 and runs
//! Kubernetes' remotecommand (`v4.channel.k8s.io`, exec and attach) or `portforward.k8s.io` protocol
//! on it, as containerd's streaming server does.

mod attach;
mod portforward;
mod remotecommand;
mod server;
pub mod spdy;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

pub use server::serve;
pub use tokens::Tokens;

use crate::runtime::Runtime;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Request {
    Exec(k8s_cri::v1::ExecRequest),
    Attach(k8s_cri::v1::AttachRequest),
    PortForward(k8s_cri::v1::PortForwardRequest),
}

/// Shared by the CRI service (which issues tokens) and the HTTP server (which redeems
/// them).
#[derive(Clone)]
pub struct Streaming {
    pub tokens: Arc<Tokens>,
    pub runtime: Arc<Runtime>,
    /// Where the server listens; URLs point here.
    pub addr: SocketAddr,
}

impl Streaming {
    /// The URL the client connects to for `request`.
    pub fn url(&self, request: Request) -> String {
        let kind = match request {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        };
        let token = self.tokens.insert(request);
        format!("http://{}/{kind}/{token}", self.addr)
    }
}
