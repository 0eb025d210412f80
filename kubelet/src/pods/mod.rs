//! Pods bound to this node: a watch on `spec.nodeName=<node>` feeding one worker per
//! pod UID ([`worker`]), each an explicit state machine over the CRI runtime.

mod admission;
mod backoff;
pub mod env;
pub(crate) mod events;
pub mod fieldpath;
mod lifecycle;
mod pull_secrets;
pub mod sources;
mod spec;
mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
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
    /// The node's registry credentials (provider plugins, ECR), tried after the pod's
    /// imagePullSecrets.
    pub credentials: Arc<crate::credentials::Keyring>,
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
    // Pods refused at admission: Failed for good, never run.
    let mut rejected: HashSet<String> = HashSet::new();
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
                    None if rejected.contains(&uid) || never_ran(&pod) => {}
                    None => {
                        if needs_admission(&pod) {
                            let active: Vec<Pod> = ctx
                                .view
                                .pods()
                                .into_iter()
                                .filter(|p| {
                                    let id = p.metadata.uid.as_deref().unwrap_or_default();
                                    workers.contains_key(id) && !terminal(p)
                                })
                                .collect();
                            if let Err(r) = admit(&ctx, node_name, &pod, &active).await {
                                reject(&ctx, &pod, r).await;
                                // Refused on a re-admission after a restart: what it
                                // ran here is killed and removed, as upstream kills
                                // rejected pods.
                                if crate::volumes::pod_uids(&ctx.root_dir).contains(&uid) {
                                    drop(spawn_worker(&ctx, uid.clone(), None));
                                }
                                rejected.insert(uid);
                                continue;
                            }
                        }
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

fn terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A terminated pod that never had a container (refused at admission before this
/// kubelet restarted): nothing to run and nothing to clean up.
fn never_ran(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    terminal(pod) && statuses.is_none_or(|s| s.is_empty())
}

/// Upstream admits every pod that is not terminated; one being deleted only needs
/// tearing down.
fn needs_admission(pod: &Pod) -> bool {
    !terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Checks `pod` against the Node as the API has it and the `active` admitted pods. A
/// Node that cannot be read admits the pod: refusing work for a transient API error
/// would fail pods for good.
async fn admit(
    ctx: &PodContext,
    node_name: &str,
    pod: &Pod,
    active: &[Pod],
) -> Result<(), admission::Rejection> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = match nodes.get(node_name).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "reading the Node for pod admission; admitting");
            return Ok(());
        }
    };
    let active: Vec<&Pod> = active.iter().collect();
    admission::admit(pod, &node, &active)
}

/// upstream's rejectPod: a Warning event with the reason, and the pod Failed with
/// that reason and "Pod <message>".
async fn reject(ctx: &PodContext, pod: &Pod, r: admission::Rejection) {
    tracing::info!(pod = ?pod.metadata.name, reason = %r.reason, message = %r.message, "pod not admitted");
    events::warn(&ctx.client, pod, &r.reason, &r.message).await;
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let status = serde_json::json!({"status": {
        "phase": "Failed",
        "reason": r.reason,
        "message": format!("Pod {}", r.message),
    }});
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        tracing::warn!(error = %e, "writing the status of a rejected pod");
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
