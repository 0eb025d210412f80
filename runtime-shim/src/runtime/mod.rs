//! The runtime's core: sandboxes and containers as records on disk plus what the kernel
//! and the monitors say about them. The CRI layer only translates to and from this.

mod containers;
mod exec;
mod keyed_locks;
mod reclaim;
mod recovery;
mod sandboxes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::container::runc::OciRuntime;
use crate::image::store::ImageStore;
use crate::sandbox::namespaces::PodNamespaces;
use crate::state::records::{Record, RecordStore};

pub use containers::ContainerStatus;
pub use exec::ExecSession;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: k8s_cri::v1::PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: SandboxState,
    /// `None` once the namespaces are gone (after StopPodSandbox).
    pub namespaces: Option<PodNamespaces>,
    pub host_network: bool,
    /// The pod network, while attached: what DEL needs even if the conf dir changed.
    pub network: Option<PodNetwork>,
    /// PID 1 of the pod-wide PID namespace, while the pod has one (PID mode POD).
    #[serde(default)]
    pub infra: Option<crate::sandbox::infra::Infra>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodNetwork {
    pub attachment: crate::sandbox::cni::Attachment,
    /// The network configuration ADD ran with.
    pub config: String,
    pub ip: Option<String>,
}

impl Record for SandboxRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: k8s_cri::v1::ContainerConfig,
    /// The image ID (config digest) and the name it was asked for by.
    pub image_id: String,
    pub image_name: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    /// Absolute path of the CRI log file ("" when the kubelet asked for none).
    pub log_path: String,
    pub cgroups_path: String,
}

impl Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Under `--root`: the records of sandboxes being set up (hack/lib.sh's sweep reads it).
pub const SETUPS_DIR: &str = "sandboxes-setup";

pub struct Runtime {
    pub(crate) root: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) sandboxes: RecordStore<SandboxRecord>,
    /// Sandboxes whose RunPodSandbox has not finished: what they may hold in the kernel
    /// and in CNI, so that a daemon killed half-way can undo it when it starts again
    /// (see `recover`).
    pub(crate) setups: RecordStore<SandboxRecord>,
    pub(crate) containers: RecordStore<ContainerRecord>,
    pub(crate) oci: Arc<dyn OciRuntime>,
    pub(crate) cni_conf_dir: PathBuf,
    pub(crate) cni: crate::sandbox::cni::Cni,
    /// Serialises requests about the same pod or sandbox (retries of one request).
    pub(crate) locks: keyed_locks::KeyedLocks,
    /// Sandbox set-ups hold it shared, CNI GC exclusively: an attachment whose ADD is in
    /// flight is in no list GC could be given yet, and must not be collected.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
    /// Removed containers whose leftovers are being reclaimed (see reclaim.rs).
    pub(crate) reclaims: reclaim::Reclaims,
}

impl Runtime {
    pub fn open(
        root: &Path,
        state: &Path,
        images: Arc<ImageStore>,
        oci: Arc<dyn OciRuntime>,
        cni_conf_dir: &Path,
        cni: crate::sandbox::cni::Cni,
    ) -> std::io::Result<Self> {
        Ok(Runtime {
            root: root.to_path_buf(),
            state: state.to_path_buf(),
            images,
            sandboxes: RecordStore::open(&root.join("sandboxes"))?,
            setups: RecordStore::open(&root.join(SETUPS_DIR))?,
            containers: RecordStore::open(&root.join("containers"))?,
            oci,
            cni_conf_dir: cni_conf_dir.to_path_buf(),
            cni,
            locks: keyed_locks::KeyedLocks::default(),
            gc_lock: tokio::sync::RwLock::new(()),
            reclaims: reclaim::Reclaims::default(),
        })
    }

    /// Waits for the background work a stopping daemon must not cut short.
    pub async fn drain(&self) {
        self.reclaims.wait(None).await;
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// Whether a valid CNI network configuration exists (NetworkReady).
    pub fn network_configured(&self) -> bool {
        matches!(crate::sandbox::cni::load(&self.cni_conf_dir), Ok(Some(_)))
    }

    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    pub(crate) fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// A container's socket of `kind` (attach, console). In the state dir, named by
    /// half the ID: a unix socket path must stay under 108 bytes.
    pub(crate) fn io_socket(&self, id: &str, kind: &str) -> PathBuf {
        self.state
            .join("io")
            .join(format!("{}.{kind}", &id[..id.len().min(32)]))
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64
}

/// A 64-hex-character ID, like containerd's.
pub(crate) fn new_id() -> String {
    let mut buf = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    hex::encode(buf)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<std::io::Error> for RuntimeError {
    fn from(e: std::io::Error) -> Self {
        RuntimeError::Internal(e.into())
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;
