//! Pod volumes, laid out as upstream lays them out:
//! `<root-dir>/pods/<uid>/volumes/kubernetes.io~<kind>/<name>`. [`PodVolumes`] sets
//! them up before the sandbox exists, refreshes the API-backed ones while the pod
//! runs, and turns each container's `volumeMounts` into CRI mounts;
//! [`tear_down`] removes all of it when the pod is gone.

pub mod atomic_writer;
mod downward_api;
pub mod empty_dir;
pub mod host_path;
mod keyed;
mod keys;
mod mounts;
mod ownership;
mod projected;
pub mod token;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pods::fieldpath::PodAddresses;
use crate::pods::sources::{self, KeyedKind};
use atomic_writer::Payload;
use empty_dir::Medium;
use keyed::KeyedSource;
pub use mounts::container_mounts;
use token::TokenCache;

/// How often configMap, secret and downwardAPI contents are re-read while the pod
/// runs (upstream's default sync period).
const REFRESH: Duration = Duration::from_secs(60);

/// A volume the kubelet could not set up: upstream's FailedMount wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

/// `<root-dir>/pods/<uid>`.
pub fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

/// The kinds of volume this kubelet supports, with the directory kind upstream uses.
enum Kind<'a> {
    EmptyDir(Medium),
    HostPath {
        path: &'a str,
        kind: Option<&'a str>,
    },
    ConfigMap(&'a k8s_openapi::api::core::v1::ConfigMapVolumeSource),
    Secret(&'a k8s_openapi::api::core::v1::SecretVolumeSource),
    DownwardApi(&'a k8s_openapi::api::core::v1::DownwardAPIVolumeSource),
    Projected(&'a k8s_openapi::api::core::v1::ProjectedVolumeSource),
}

impl<'a> Kind<'a> {
    fn of(v: &'a Volume) -> Result<Self, String> {
        if let Some(e) = &v.empty_dir {
            let medium = match e.medium.as_deref() {
                Some("Memory") => Medium::Memory {
                    size_bytes: e
                        .size_limit
                        .as_ref()
                        .map(|q| crate::quantity::parse_units(&q.0))
                        .transpose()
                        .map_err(|e| format!("invalid sizeLimit: {e}"))?,
                },
                None | Some("") => Medium::Disk,
                Some(other) => return Err(format!("unknown storage medium {other:?}")),
            };
            return Ok(Kind::EmptyDir(medium));
        }
        if let Some(h) = &v.host_path {
            return Ok(Kind::HostPath {
                path: &h.path,
                kind: h.type_.as_deref(),
            });
        }
        if let Some(c) = &v.config_map {
            return Ok(Kind::ConfigMap(c));
        }
        if let Some(s) = &v.secret {
            return Ok(Kind::Secret(s));
        }
        if let Some(d) = &v.downward_api {
            return Ok(Kind::DownwardApi(d));
        }
        if let Some(p) = &v.projected {
            return Ok(Kind::Projected(p));
        }
        Err("volume type not supported by this kubelet (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)".into())
    }

    /// `kubernetes.io~<plugin>`; `None` for hostPath, which has no pod directory.
    fn plugin_dir(&self) -> Option<&'static str> {
        Some(match self {
            Kind::EmptyDir(_) => "kubernetes.io~empty-dir",
            Kind::HostPath { .. } => return None,
            Kind::ConfigMap(_) => "kubernetes.io~configmap",
            Kind::Secret(_) => "kubernetes.io~secret",
            Kind::DownwardApi(_) => "kubernetes.io~downward-api",
            Kind::Projected(_) => "kubernetes.io~projected",
        })
    }

    /// API-backed volumes are mounted read-only whatever the volumeMount says.
    fn read_only(&self) -> bool {
        matches!(
            self,
            Kind::ConfigMap(_) | Kind::Secret(_) | Kind::DownwardApi(_) | Kind::Projected(_)
        )
    }

    fn needs_allocatable(&self) -> bool {
        match self {
            Kind::DownwardApi(d) => {
                downward_api::needs_allocatable(d.items.as_deref().unwrap_or_default())
            }
            Kind::Projected(p) => projected::needs_allocatable(p),
            _ => false,
        }
    }
}

/// A volume ready for containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyVolume {
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// The volumes of one pod, owned by its worker.
pub struct PodVolumes {
    client: kube::Client,
    dir: PathBuf,
    tokens: TokenCache,
    ready: BTreeMap<String, ReadyVolume>,
    last_sync: Option<Instant>,
}

impl PodVolumes {
    pub fn new(client: kube::Client, root_dir: &Path, uid: &str) -> Self {
        PodVolumes {
            client,
            dir: pod_dir(root_dir, uid).join("volumes"),
            tokens: TokenCache::default(),
            ready: BTreeMap::new(),
            last_sync: None,
        }
    }

    /// Whether a refresh is due: contents are re-read every minute and tokens are
    /// rotated when they must be.
    pub fn refresh_due(&self) -> bool {
        self.last_sync.is_none_or(|t| t.elapsed() >= REFRESH)
            || self.tokens.refresh_due(chrono::Utc::now())
    }

    pub fn ready(&self) -> &BTreeMap<String, ReadyVolume> {
        &self.ready
    }

    /// Sets up (or refreshes) every volume of `pod`. Stops at the first volume that
    /// fails; volumes set up before it stay.
    pub async fn sync(&mut self, pod: &Pod, addr: PodAddresses<'_>) -> Result<(), MountError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        let volumes = spec.volumes.unwrap_or_default();
        let mut allocatable: Option<BTreeMap<String, Quantity>> = None;
        for v in &volumes {
            let fail = |message: String| MountError {
                volume: v.name.clone(),
                message,
            };
            let kind = Kind::of(v).map_err(fail)?;
            if kind.needs_allocatable() && allocatable.is_none() {
                let node = spec.node_name.clone().unwrap_or_default();
                allocatable = Some(
                    sources::node_allocatable(&self.client, &node)
                        .await
                        .map_err(|e| fail(format!("reading node allocatable: {e}")))?,
                );
            }
            let host_path = match kind.plugin_dir() {
                // hostPath names are user input; the pod dir must not be escaped.
                Some(plugin) => {
                    atomic_writer::validate_path(&v.name).map_err(fail)?;
                    self.dir.join(plugin).join(&v.name)
                }
                None => PathBuf::new(),
            };
            let io_fail = |e: io::Error| MountError {
                volume: v.name.clone(),
                message: format!("setting up {}: {e}", host_path.display()),
            };
            let mut payload = Payload::new();
            let medium = match &kind {
                Kind::EmptyDir(medium) => {
                    let fresh = !host_path.exists();
                    empty_dir::set_up(&host_path, *medium).map_err(io_fail)?;
                    // The group owns the new (writable) root; files containers create
                    // inherit it through setgid. Contents are never re-owned later.
                    if let (Some(gid), true) = (fs_group, fresh) {
                        ownership::apply(&host_path, gid, false).map_err(io_fail)?;
                    }
                    None
                }
                Kind::HostPath { path, kind } => {
                    host_path::check(path, *kind).map_err(fail)?;
                    self.ready.insert(
                        v.name.clone(),
                        ReadyVolume {
                            host_path: PathBuf::from(path),
                            read_only: false,
                        },
                    );
                    continue;
                }
                Kind::ConfigMap(c) => {
                    let source = KeyedSource {
                        kind: KeyedKind::ConfigMap,
                        name: &c.name,
                        items: c.items.as_deref(),
                        default_mode: c.default_mode,
                        optional: c.optional.unwrap_or(false),
                    };
                    keyed::project(&self.client, &namespace, source, &mut payload)
                        .await
                        .map_err(fail)?;
                    Some(Medium::Disk)
                }
                Kind::Secret(s) => {
                    let source = KeyedSource {
                        kind: KeyedKind::Secret,
                        name: s.secret_name.as_deref().unwrap_or_default(),
                        items: s.items.as_deref(),
                        default_mode: s.default_mode,
                        optional: s.optional.unwrap_or(false),
                    };
                    keyed::project(&self.client, &namespace, source, &mut payload)
                        .await
                        .map_err(fail)?;
                    Some(Medium::Memory { size_bytes: None })
                }
                Kind::DownwardApi(d) => {
                    downward_api::project(
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        d.default_mode,
                        addr,
                        allocatable.as_ref().unwrap_or(&BTreeMap::new()),
                        &mut payload,
                    )
                    .map_err(fail)?;
                    Some(Medium::Disk)
                }
                Kind::Projected(p) => {
                    let empty = BTreeMap::new();
                    let inputs = projected::ProjectionInputs {
                        client: &self.client,
                        pod,
                        addr,
                        allocatable: allocatable.as_ref().unwrap_or(&empty),
                        fs_group,
                    };
                    projected::payload(&inputs, p, &mut self.tokens, &mut payload)
                        .await
                        .map_err(fail)?;
                    Some(Medium::Memory { size_bytes: None })
                }
            };
            if let Some(medium) = medium {
                if fs_group.is_some() {
                    for file in payload.values_mut() {
                        file.mode = ownership::read_only_file_mode(file.mode);
                    }
                }
                // The payload is complete before anything is written: a failed read
                // never leaves a half-updated volume.
                empty_dir::set_up(&host_path, medium).map_err(io_fail)?;
                let changed = atomic_writer::write(&host_path, &payload).map_err(io_fail)?;
                if let (Some(gid), true) = (fs_group, changed) {
                    ownership::apply(&host_path, gid, true).map_err(io_fail)?;
                }
            }
            self.ready.insert(
                v.name.clone(),
                ReadyVolume {
                    host_path,
                    read_only: kind.read_only(),
                },
            );
        }
        self.last_sync = Some(Instant::now());
        Ok(())
    }
}

/// The UIDs of the pods that have a directory under `<root-dir>/pods`.
pub fn pod_uids(root_dir: &Path) -> Vec<String> {
    std::fs::read_dir(root_dir.join("pods"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Unmounts and removes every volume of the pod, then the pod's directory. Volumes
/// that cannot be unmounted are left (and reported) rather than deleted through.
pub fn tear_down(root_dir: &Path, uid: &str) -> io::Result<()> {
    let pod = pod_dir(root_dir, uid);
    let volumes = pod.join("volumes");
    if let Ok(plugins) = std::fs::read_dir(&volumes) {
        for plugin in plugins.flatten() {
            for volume in std::fs::read_dir(plugin.path())?.flatten() {
                empty_dir::tear_down(&volume.path())?;
            }
        }
    }
    match std::fs::remove_dir_all(&pod) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
