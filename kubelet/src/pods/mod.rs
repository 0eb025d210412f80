//! Pods bound to this node: a watch on `spec.nodeName=<node>` feeding one worker per
//! pod UID ([`worker`]), each an explicit state machine over the CRI runtime.

pub mod env;
pub(crate) mod events;
pub mod fieldpath;
mod lifecycle;
mod pull_secrets;
pub mod sources;
mod spec;
mod status;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::cri::CriClient;

/// What every pod worker shares.
#[derive(Clone)]
pub struct PodContext {
    pub client: kube::Client,
    pub cri: CriClient,
    pub host_ip: String,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The scheme of containerIDs (`containerd://...`), from CRI Version.
    pub runtime_name: String,
    /// `--root-dir`: pod directories (volumes) live under `<root-dir>/pods/<uid>`.
    pub root_dir: PathBuf,
    /// Set per worker.
    pub uid: String,
    /// Filled by [`run`] for readers such as the :10250 server.
    pub view: PodView,
}

/// A read-only view of the pods bound to this node as the watch last saw them, keyed
/// by UID (upstream's pod manager, as far as the :10250 server needs it).
#[derive(Clone, Default)]
pub struct PodView(Arc<RwLock<HashMap<String, Pod>>>);

impl PodView {
    pub fn pods(&self) -> Vec<Pod> {
        self.0
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn find(&self, namespace: &str, name: &str) -> Option<Pod> {
        let pods = self.0.read().ok()?;
        pods.values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<String, Pod>)) {
        if let Ok(mut pods) = self.0.write() {
            f(&mut pods);
        }
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs until the watch ends: starts a worker for every new pod UID, forwards updates,
/// and tells workers of pods that disappeared.
pub async fn run(ctx: PodContext, node_name: &str) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher(api, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut seen_in_relist: Vec<String> = vec![];
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; it restarts by itself");
                continue;
            }
        };
        match event {
            watcher::Event::Init => seen_in_relist.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                seen_in_relist.push(uid.clone());
                ctx.view
                    .update(|v| drop(v.insert(uid.clone(), pod.clone())));
                workers.retain(|_, tx| !tx.is_closed());
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(pod));
                    }
                    None => {
                        workers.insert(uid.clone(), spawn_worker(&ctx, uid, Some(pod)));
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                ctx.view
                    .update(|v| drop(v.remove(pod.metadata.uid.as_deref().unwrap_or_default())));
                if let Some(tx) = workers.get(pod.metadata.uid.as_deref().unwrap_or_default()) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                ctx.view
                    .update(|v| v.retain(|uid, _| seen_in_relist.contains(uid)));
                // Pods deleted while the watch was down.
                for (uid, tx) in &workers {
                    if !seen_in_relist.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                // Pods deleted while this kubelet was down left their directories: a
                // worker without a pod removes what the runtime and the node hold.
                for uid in crate::volumes::pod_uids(&ctx.root_dir) {
                    if !seen_in_relist.contains(&uid) && !workers.contains_key(&uid) {
                        workers.insert(uid.clone(), spawn_worker(&ctx, uid, None));
                    }
                }
            }
        }
    }
}

/// Starts the worker of pod `uid` with its first view of the pod (`None`: gone).
fn spawn_worker(ctx: &PodContext, uid: String, pod: Option<Pod>) -> watch::Sender<Option<Pod>> {
    let (tx, rx) = watch::channel(pod);
    let mut ctx = ctx.clone();
    ctx.uid = uid;
    tokio::spawn(worker::Worker::new(ctx, rx).run());
    tx
}
