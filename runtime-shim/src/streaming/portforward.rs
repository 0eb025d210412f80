//! portforward.k8s.io: for each connection the client opens an `error` and a `data`
//! stream with the same `requestID` and the pod `port`; we connect to that port on the
//! pod's loopback, inside its network namespace, and copy bytes both ways. A failure
//! to connect is reported on the error stream, as upstream.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_cri::v1::PortForwardRequest;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::spdy::{Sender, Stream};
use crate::runtime::Runtime;

pub async fn run<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: Arc<Runtime>,
    req: PortForwardRequest,
    tx: Sender<W>,
    mut incoming: mpsc::UnboundedReceiver<Stream>,
) {
    let netns = match runtime.sandbox(&req.pod_sandbox_id) {
        Some(sb) => sb.namespaces.and_then(|ns| ns.net),
        None => {
            tracing::warn!(sandbox = %req.pod_sandbox_id, "port-forward to an unknown sandbox");
            let _ = tx.go_away().await;
            return;
        }
    };
    // Streams of one request arrive one after the other: pair them by requestID.
    let mut halves: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let id = s.header("requestid").unwrap_or_default().to_string();
        let entry = halves.entry(id.clone()).or_default();
        match s.header("streamtype") {
            Some("error") => entry.0 = Some(s),
            Some("data") => entry.1 = Some(s),
            _ => continue,
        }
        if let (Some(_), Some(_)) = entry
            && let Some((Some(error), Some(data))) = halves.remove(&id)
        {
            let pod = req.pod_sandbox_id.clone();
            tokio::spawn(forward(pod, netns.clone(), error, data, tx.clone()));
        }
    }
}

async fn forward<W: AsyncWrite + Unpin>(
    pod: String,
    netns: Option<PathBuf>,
    error: Stream,
    mut data: Stream,
    tx: Sender<W>,
) {
    let port: Option<u16> = data.header("port").and_then(|p| p.parse().ok());
    let conn = match port {
        // The kubelet's message around containerd's.
        Some(port) => connect(netns, port).await.map_err(|e| {
            format!(
                "error forwarding port {port} to pod {pod}, uid : failed to connect to \
                 localhost:{port} inside namespace {pod:?}: {e}"
            )
        }),
        None => Err(format!(
            "invalid port header {:?}",
            data.header("port").unwrap_or_default()
        )),
    };
    let tcp = match conn {
        Ok(t) => t,
        Err(message) => {
            let _ = tx.data(error.id, message.as_bytes(), true).await;
            let _ = tx.data(data.id, &[], true).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let upstream = async {
        while let Some(bytes) = data.incoming.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.data(data.id, &buf[..n], false).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.data(data.id, &[], true).await;
    };
    tokio::join!(upstream, downstream);
    let _ = tx.data(error.id, &[], true).await;
}

/// A TCP connection to 127.0.0.1:`port` in the pod's network namespace (the host's for
/// hostNetwork pods). The socket is made by a short-lived thread inside the namespace;
/// a socket stays in the namespace it was created in.
async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Some(path) = netns else {
        return TcpStream::connect(addr).await;
    };
    let stream = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        let file = std::fs::File::open(&path)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}
