//! ipamd's gRPC API (proto/ipamd.proto) over a unix socket: the server side that wraps
//! the allocator, and the client the plugin uses.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::ipam::{Added, AttachmentKey, AttachmentMeta, IpamError, PodCidrIpam, now_ms};

pub mod pb {
    tonic::include_proto!("vpccni.ipamd.v1");
}

pub use pb::ipamd_client::IpamdClient;
pub use pb::ipamd_server::{Ipamd, IpamdServer};

/// Where the plugin finds the daemon unless the network configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vpc-cni/ipamd.sock";
/// Where the daemon keeps its journal unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vpc-cni";

/// What the gRPC service needs from an allocator, whatever its mode.
pub trait Allocator: Send + 'static {
    /// Assigns an address to `key` (or returns the one it holds), on disk on return.
    fn add(
        &mut self,
        key: AttachmentKey,
        meta: AttachmentMeta,
        now_ms: u64,
    ) -> Result<Added, IpamError>;
    /// Releases `key`'s address; `None` if it held none.
    fn del(&mut self, key: &AttachmentKey, now_ms: u64) -> Result<Option<Ipv4Addr>, IpamError>;
    fn status(&self, now_ms: u64) -> pb::StatusReply;
}

impl Allocator for PodCidrIpam {
    fn add(
        &mut self,
        key: AttachmentKey,
        meta: AttachmentMeta,
        now_ms: u64,
    ) -> Result<Added, IpamError> {
        let (ip, existing) = PodCidrIpam::add(self, key, meta, now_ms)?;
        // podcidr mode adds no policy rules.
        Ok(Added {
            ip,
            route_table: 0,
            existing,
            rule_destinations: Vec::new(),
        })
    }

    fn del(&mut self, key: &AttachmentKey, now_ms: u64) -> Result<Option<Ipv4Addr>, IpamError> {
        PodCidrIpam::del(self, key, now_ms)
    }

    fn status(&self, now_ms: u64) -> pb::StatusReply {
        let stats = self.stats(now_ms);
        pb::StatusReply {
            free: stats.free,
            assigned: stats.assigned,
            cooldown: stats.cooldown,
            mode: "podcidr".into(),
            pod_cidr: self.cidr().to_string(),
            ..Default::default()
        }
    }
}

/// The service over any [`Allocator`]. Allocation does file I/O (an fsync per change),
/// so it runs on the blocking pool; the mutex serialises changes, which the journal
/// needs anyway, and is shared with eni mode's reconcile loop.
pub struct IpamService<A> {
    ipam: Arc<Mutex<A>>,
}

impl<A> Clone for IpamService<A> {
    fn clone(&self) -> Self {
        IpamService {
            ipam: self.ipam.clone(),
        }
    }
}

/// podcidr mode's service.
pub type PodCidrService = IpamService<PodCidrIpam>;

impl<A: Allocator> IpamService<A> {
    pub fn new(ipam: A) -> Self {
        IpamService::shared(Arc::new(Mutex::new(ipam)))
    }

    /// A service over an allocator someone else (the reconcile loop) also holds.
    pub fn shared(ipam: Arc<Mutex<A>>) -> Self {
        IpamService { ipam }
    }

    async fn with_ipam<T, F>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(&mut A) -> Result<T, IpamError> + Send + 'static,
        T: Send + 'static,
    {
        let ipam = self.ipam.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = ipam.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Status::internal(format!("allocator task failed: {e}")))?
        .map_err(to_status)
    }
}

fn to_status(e: IpamError) -> Status {
    match e {
        IpamError::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
        IpamError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn key(container_id: String, ifname: String) -> Result<AttachmentKey, Status> {
    if container_id.is_empty() || ifname.is_empty() {
        return Err(Status::invalid_argument(
            "container_id and ifname are required",
        ));
    }
    Ok(AttachmentKey {
        container_id,
        ifname,
    })
}

#[tonic::async_trait]
impl<A: Allocator> Ipamd for IpamService<A> {
    async fn add_network(
        &self,
        req: Request<pb::AddNetworkRequest>,
    ) -> Result<Response<pb::AddNetworkReply>, Status> {
        let r = req.into_inner();
        let key = key(r.container_id, r.ifname)?;
        let meta = AttachmentMeta {
            netns: r.netns,
            pod_namespace: r.pod_namespace,
            pod_name: r.pod_name,
        };
        let log_key = key.clone();
        let added = self
            .with_ipam(move |ipam| ipam.add(key, meta, now_ms()))
            .await
            .inspect_err(|e| {
                tracing::warn!(container = %log_key.container_id, ifname = %log_key.ifname, "AddNetwork: {}", e.message())
            })?;
        tracing::info!(container = %log_key.container_id, ifname = %log_key.ifname, ip = %added.ip, route_table = added.route_table, existing = added.existing, "AddNetwork");
        Ok(Response::new(pb::AddNetworkReply {
            ip: format!("{}/32", added.ip),
            gateway: String::new(),
            route_table: added.route_table,
            existing: added.existing,
            rule_destinations: added
                .rule_destinations
                .iter()
                .map(|d| d.to_string())
                .collect(),
        }))
    }

    async fn del_network(
        &self,
        req: Request<pb::DelNetworkRequest>,
    ) -> Result<Response<pb::DelNetworkReply>, Status> {
        let r = req.into_inner();
        let key = key(r.container_id, r.ifname)?;
        let log_key = key.clone();
        let ip = self.with_ipam(move |ipam| ipam.del(&key, now_ms())).await?;
        tracing::info!(container = %log_key.container_id, ifname = %log_key.ifname, ip = ?ip, "DelNetwork");
        Ok(Response::new(pb::DelNetworkReply {
            ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let reply = self.with_ipam(|ipam| Ok(ipam.status(now_ms()))).await?;
        Ok(Response::new(reply))
    }
}

/// Binds `socket` (replacing a stale socket file: the caller holds the state lock, and
/// a live daemon on the same path would be a misconfiguration we cannot detect cheaply)
/// and serves `service` until `shutdown` resolves; the socket file is removed afterwards.
pub async fn serve<S: Ipamd>(
    socket: &Path,
    service: S,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", socket.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Only root (the runtime executing the plugin) may allocate addresses.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", socket.display()))?;
    }
    tracing::info!(socket = %socket.display(), "serving ipamd");
    let result = tonic::transport::Server::builder()
        .add_service(IpamdServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("ipamd server failed");
    let _ = std::fs::remove_file(socket);
    result
}

/// How long the plugin waits for the daemon: a runtime retries a failed ADD, and a
/// plugin hanging on a dead daemon would hold up the whole sandbox start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the daemon at `socket` (a path, or `unix://` + path).
pub async fn connect(socket: &Path) -> Result<IpamdClient<Channel>, tonic::transport::Error> {
    let path = socket_path(socket);
    // tonic needs a URI; the connector ignores it and dials the socket instead.
    let channel = Endpoint::from_static("http://[::1]:1")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(IpamdClient::new(channel))
}

/// Accepts `unix:///path` as well as a bare path.
pub fn socket_path(socket: &Path) -> PathBuf {
    let s = socket.to_string_lossy();
    match s.strip_prefix("unix://") {
        Some(rest) => PathBuf::from(rest),
        None => socket.to_path_buf(),
    }
}
