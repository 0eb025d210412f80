//! ipamd's gRPC API (proto/ipamd.proto) over a unix socket: the server side that wraps
//! the allocator, and the client the plugin uses.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::ipam::deferred::{self, DeferredDel};
use crate::ipam::{Added, AttachmentKey, AttachmentMeta, IpamError, PodCidrIpam, Pool, now_ms};
use crate::net::repair::{self, Repairs, Wanted};
use crate::net::veth::attachment_host_veth;
use crate::net::{NetError, host_netlink};

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
    /// The assignments, for GC and housekeeping.
    fn pool(&self) -> &Pool;
    /// What `key` holds, as its ADD answered it; `None` if it holds nothing.
    fn lookup(&self, key: &AttachmentKey) -> Option<Added>;
}

/// Releases every assignment not in `valid` (CNI GC); returns what was released, with
/// what the ADD said about the pod.
pub fn gc<A: Allocator>(
    ipam: &mut A,
    valid: &HashSet<AttachmentKey>,
    now_ms: u64,
) -> Result<Vec<pb::Released>, IpamError> {
    let stale: Vec<(AttachmentKey, AttachmentMeta)> = ipam
        .pool()
        .assignments()
        .filter(|(k, _)| !valid.contains(*k))
        .map(|(k, a)| (k.clone(), a.meta.clone()))
        .collect();
    let mut released = Vec::new();
    for (key, meta) in stale {
        if let Some(ip) = ipam.del(&key, now_ms)? {
            released.push(pb::Released {
                container_id: key.container_id,
                ifname: key.ifname,
                ip: ip.to_string(),
                netns: meta.netns,
                pod_namespace: meta.pod_namespace,
                pod_name: meta.pod_name,
            });
        }
    }
    Ok(released)
}

/// Applies the DELs the plugin left in `dir` while ipamd was unreachable
/// ([`deferred`]); returns the released attachments and addresses. A request stays
/// on disk if its release could not be journaled, to be retried.
pub fn apply_deferred<A: Allocator>(
    ipam: &mut A,
    dir: &Path,
    now_ms: u64,
) -> Vec<(AttachmentKey, Ipv4Addr)> {
    let pending = match deferred::pending(dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "reading deferred DELs: {e}");
            return Vec::new();
        }
    };
    let mut released = Vec::new();
    for (path, req) in pending {
        match req {
            Ok(req) => match release_deferred(ipam, &req, now_ms) {
                Ok(Some(ip)) => released.push((req.key(), ip)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(container = %req.container_id, ifname = %req.ifname, "deferred DEL: {e}");
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(file = %path.display(), "dropping an unreadable deferred DEL: {e}")
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), "removing an applied deferred DEL: {e}");
        }
    }
    released
}

/// Runs [`repair::repair_host`] on `ipam`'s assignments, on a runtime of its own (the
/// caller is a blocking thread holding the allocator).
fn repair_plumbing<A: Allocator>(ipam: &A, grace: Duration) -> Result<Repairs, NetError> {
    let settled_before = now_ms().saturating_sub(grace.as_millis() as u64);
    let pool = ipam.pool();
    let held: HashSet<Ipv4Addr> = pool.assignments().map(|(_, a)| a.ip).collect();
    let wanted: Vec<Wanted> = pool
        .assignments()
        .filter(|(_, a)| a.assigned_at_ms <= settled_before)
        .filter_map(|(key, a)| {
            let added = ipam.lookup(key)?;
            Some(Wanted {
                ip: a.ip,
                host_veth: attachment_host_veth(
                    &a.meta.pod_namespace,
                    &a.meta.pod_name,
                    &key.container_id,
                ),
                table: (added.route_table != 0).then_some(added.route_table),
                rule_destinations: added.rule_destinations,
            })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetError::Socket {
            op: "start a runtime for netlink".into(),
            source,
        })?;
    rt.block_on(async {
        let host = host_netlink()?;
        repair::repair_host(&host, &wanted, &held, &|ip| pool.in_range(ip)).await
    })
}

/// Only an assignment made before the DEL is the one it was for.
fn release_deferred<A: Allocator>(
    ipam: &mut A,
    req: &DeferredDel,
    now_ms: u64,
) -> Result<Option<Ipv4Addr>, IpamError> {
    let key = req.key();
    match ipam.pool().get(&key) {
        Some(a) if a.assigned_at_ms <= req.requested_at_ms => ipam.del(&key, now_ms),
        _ => Ok(None),
    }
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

    fn pool(&self) -> &Pool {
        PodCidrIpam::pool(self)
    }

    fn lookup(&self, key: &AttachmentKey) -> Option<Added> {
        PodCidrIpam::pool(self).get(key).map(|a| Added {
            ip: a.ip,
            route_table: 0,
            existing: true,
            rule_destinations: Vec::new(),
        })
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

    /// One housekeeping pass (ipamd runs one before it serves): applies the deferred
    /// DELs in `dir`, then repairs pods' host routes and rules against the store
    /// ([`repair`]), leaving alone pods assigned less than `grace` ago (their ADD may
    /// still be plumbing them). The allocator stays locked throughout, which the repair
    /// needs; a pass takes milliseconds.
    pub async fn housekeep_once(&self, dir: &Path, grace: Duration) {
        let ipam = self.ipam.clone();
        let dir = dir.to_path_buf();
        let pass = tokio::task::spawn_blocking(move || {
            let mut guard = ipam.lock().unwrap_or_else(|p| p.into_inner());
            let released = apply_deferred(&mut *guard, &dir, now_ms());
            (released, repair_plumbing(&*guard, grace))
        })
        .await;
        let (released, repairs) = match pass {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("housekeeping failed: {e}");
                return;
            }
        };
        for (key, ip) in released {
            tracing::info!(container = %key.container_id, ifname = %key.ifname, %ip, "applied a DEL that could not reach ipamd");
        }
        match repairs {
            Ok(r) => {
                for what in &r.restored {
                    tracing::warn!("restored a live pod's {what}");
                }
                for what in &r.removed {
                    tracing::info!("removed a stale {what}");
                }
            }
            Err(e) => tracing::warn!("repairing pods' host routes and rules: {e}"),
        }
    }

    /// [`IpamService::housekeep_once`] every `interval`, forever.
    pub async fn housekeeping(self, dir: PathBuf, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.housekeep_once(&dir, interval).await;
        }
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

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkReply>, Status> {
        let r = req.into_inner();
        let key = key(r.container_id, r.ifname)?;
        let found = self.with_ipam(move |ipam| Ok(ipam.lookup(&key))).await?;
        Ok(Response::new(match found {
            None => pb::GetNetworkReply::default(),
            Some(a) => pb::GetNetworkReply {
                found: true,
                ip: format!("{}/32", a.ip),
                route_table: a.route_table,
                rule_destinations: a.rule_destinations.iter().map(|d| d.to_string()).collect(),
            },
        }))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let valid = req
            .into_inner()
            .valid
            .into_iter()
            .map(|a| key(a.container_id, a.ifname))
            .collect::<Result<HashSet<_>, _>>()?;
        let kept = valid.len();
        let released = self
            .with_ipam(move |ipam| gc(ipam, &valid, now_ms()))
            .await?;
        for r in &released {
            tracing::info!(container = %r.container_id, ifname = %r.ifname, ip = %r.ip, "GC released a stale attachment");
        }
        tracing::info!(valid = kept, released = released.len(), "Gc");
        Ok(Response::new(pb::GcReply { released }))
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
