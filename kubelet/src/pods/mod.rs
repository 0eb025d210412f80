//! Pods bound to this node: a watch on `spec.nodeName=<node>` feeding one worker per
//! pod UID ([`worker`]), each an explicit state machine over the CRI runtime.

mod admission;
mod backoff;
pub mod env;
mod etc_hosts;
pub(crate) mod events;
pub mod fieldpath;
mod lifecycle;
pub mod mirror;
mod preemption;
mod pull_secrets;
mod qos;
pub mod sources;
mod spec;
pub mod static_pods;
mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};

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
    /// The API's mirror pods of this node's static pods.
    pub mirrors: mirror::Mirrors,
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

/// Where static pods come from: `staticPodPath` and how often it is read.
pub struct StaticPodConfig {
    pub path: std::path::PathBuf,
    pub period: std::time::Duration,
}

/// Runs until the watch ends: starts a worker for every new pod UID (bound to the node
/// in the API, or static from `static_pods`), forwards updates, and tells workers of
/// pods that disappeared. Static pods run whether or not the API server answers.
pub async fn run(ctx: PodContext, node_name: &str, static_pods: Option<StaticPodConfig>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut d = Dispatcher {
        ctx,
        node_name: node_name.to_string(),
        workers: HashMap::new(),
        rejected: HashSet::new(),
        seen_in_relist: vec![],
        mirrors_in_relist: vec![],
        static_pods: HashMap::new(),
        static_listed: false,
    };
    let (tx, mut static_sets) = mpsc::channel(1);
    if let Some(config) = static_pods {
        let mut source = static_pods::FileSource::new(config.path, node_name, config.period);
        // Read before the API's first list, so that list's clean-up never mistakes a
        // static pod's directory for a pod deleted while the kubelet was down.
        d.set_static(source.list()).await;
        tokio::spawn(source.run(tx));
    } else {
        drop(tx);
    }
    d.static_listed = true;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(e)) => d.on_api_event(e).await,
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; it restarts by itself"),
                None => return,
            },
            Some(set) = static_sets.recv() => d.set_static(set).await,
        }
    }
}

/// The pod workers and what decides their fate.
struct Dispatcher {
    ctx: PodContext,
    node_name: String,
    workers: HashMap<String, watch::Sender<Option<Pod>>>,
    /// Pods refused at admission: Failed for good, never run.
    rejected: HashSet<String>,
    seen_in_relist: Vec<String>,
    mirrors_in_relist: Vec<String>,
    /// Static pods by UID, including removed ones whose worker is still stopping them.
    static_pods: HashMap<String, Pod>,
    /// The static pod path has been read once: a mirror without a static pod is an
    /// orphan.
    static_listed: bool,
}

impl Dispatcher {
    async fn on_api_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => {
                self.seen_in_relist.clear();
                self.mirrors_in_relist.clear();
            }
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)
                if static_pods::is_mirror(&pod) =>
            {
                self.mirrors_in_relist.push(static_pods::full_name(&pod));
                self.ctx.mirrors.set(pod.clone());
                self.mirror_changed(&pod).await;
            }
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                self.on_api_pod(pod).await
            }
            watcher::Event::Delete(pod) if static_pods::is_mirror(&pod) => {
                self.ctx
                    .mirrors
                    .remove(&static_pods::full_name(&pod), pod.metadata.uid.as_deref());
                self.mirror_changed(&pod).await;
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.ctx.view.update(|v| drop(v.remove(&uid)));
                if let Some(tx) = self.workers.get(&uid) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                let statics: HashSet<String> = self.static_pods.keys().cloned().collect();
                let seen = &self.seen_in_relist;
                self.ctx
                    .view
                    .update(|v| v.retain(|uid, _| seen.contains(uid) || statics.contains(uid)));
                let mirrors = &self.mirrors_in_relist;
                self.ctx
                    .mirrors
                    .retain(|name| mirrors.iter().any(|m| m == name));
                // Pods deleted while the watch was down.
                for (uid, tx) in &self.workers {
                    if !seen.contains(uid) && !statics.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                // Pods deleted while this kubelet was down left their directories: a
                // worker without a pod removes what the runtime and the node hold.
                for uid in crate::volumes::pod_uids(&self.ctx.root_dir) {
                    if !self.seen_in_relist.contains(&uid) && !self.workers.contains_key(&uid) {
                        let tx = spawn_worker(&self.ctx, uid.clone(), None);
                        self.workers.insert(uid, tx);
                    }
                }
                self.delete_orphaned_mirrors().await;
            }
        }
    }

    async fn on_api_pod(&mut self, pod: Pod) {
        let ctx = &self.ctx;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.seen_in_relist.push(uid.clone());
        ctx.view
            .update(|v| drop(v.insert(uid.clone(), pod.clone())));
        self.workers.retain(|_, tx| !tx.is_closed());
        if let Some(tx) = self.workers.get(&uid) {
            let _ = tx.send(Some(pod));
            return;
        }
        if self.rejected.contains(&uid) || never_ran(&pod) || !self.admitted(&pod).await {
            return;
        }
        let ctx = &self.ctx;
        let tx = spawn_worker(ctx, uid.clone(), Some(pod));
        self.workers.insert(uid, tx);
    }

    /// Admission of a pod new to this kubelet, as upstream's HandlePodAdditions: checked
    /// against the pods already admitted and not terminated; a critical pod may evict
    /// others first. A refused pod is failed and remembered, and torn down if an
    /// earlier run of this kubelet ran it. Returns whether to start it.
    async fn admitted(&mut self, pod: &Pod) -> bool {
        if !needs_admission(pod) {
            return true;
        }
        let active: Vec<Pod> = self
            .ctx
            .view
            .pods()
            .into_iter()
            .filter(|p| {
                let id = p.metadata.uid.as_deref().unwrap_or_default();
                self.workers.get(id).is_some_and(|tx| !tx.is_closed()) && !terminal(p)
            })
            .collect();
        match admit(&self.ctx, &self.node_name, pod, &active).await {
            Ok(victims) => {
                for victim in victims {
                    self.preempt(&victim, pod).await;
                }
                true
            }
            Err(r) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                reject(&self.ctx, pod, r).await;
                // Refused on a re-admission after a restart: what it ran here is
                // killed and removed, as upstream kills rejected pods.
                if crate::volumes::pod_uids(&self.ctx.root_dir).contains(&uid) {
                    drop(spawn_worker(&self.ctx, uid.clone(), None));
                }
                self.rejected.insert(uid);
                false
            }
        }
    }

    /// upstream's preemption kill: the victim's containers are stopped before the
    /// critical pod starts, and it ends Failed (reason Preempting), left in the API for
    /// its controller to replace.
    async fn preempt(&mut self, victim: &Pod, critical: &Pod) {
        let uid = victim.metadata.uid.clone().unwrap_or_default();
        tracing::info!(pod = %static_pods::full_name(victim), critical = %static_pods::full_name(critical), "preempting a pod to admit a critical pod");
        events::warn(
            &self.ctx.client,
            victim,
            preemption::REASON,
            preemption::MESSAGE,
        )
        .await;
        self.rejected.insert(uid.clone());
        if let Some(tx) = self.workers.remove(&uid) {
            let _ = tx.send(None);
            // Bounded: a runtime that hangs must not stop every other pod's admission.
            if tokio::time::timeout(PREEMPTION_WAIT, tx.closed())
                .await
                .is_err()
            {
                tracing::warn!(pod = %static_pods::full_name(victim), "the preempted pod is still stopping; admitting the critical pod anyway");
            }
        }
        write_failed(&self.ctx, victim, preemption::REASON, preemption::MESSAGE).await;
    }

    /// A mirror pod was created, changed or deleted: the static pod's worker syncs at
    /// once (recreating it if needed); a deleted mirror is never a deletion of the
    /// static pod. A mirror whose static pod is gone is deleted.
    async fn mirror_changed(&mut self, mirror: &Pod) {
        let name = static_pods::full_name(mirror);
        let owner = self.static_pods.iter().find(|(_, p)| {
            static_pods::full_name(p) == name && p.metadata.deletion_timestamp.is_none()
        });
        match owner {
            Some((uid, pod)) => {
                if let Some(tx) = self.workers.get(uid) {
                    let _ = tx.send(Some(pod.clone()));
                }
            }
            None => self.delete_orphaned_mirrors().await,
        }
    }

    /// upstream's deleteOrphanedMirrorPods: mirrors whose static pod is gone (and no
    /// longer stopping).
    async fn delete_orphaned_mirrors(&mut self) {
        if !self.static_listed {
            return;
        }
        self.prune_static();
        for mirror in self.ctx.mirrors.all() {
            let name = static_pods::full_name(&mirror);
            if self
                .static_pods
                .values()
                .any(|p| static_pods::full_name(p) == name)
            {
                continue;
            }
            tracing::info!(pod = %name, "deleting orphaned mirror pod");
            if let Err(e) = self.ctx.mirrors.delete(&mirror).await {
                tracing::warn!(pod = %name, error = %format!("{e:#}"), "deleting an orphaned mirror pod");
            }
        }
    }

    /// Forgets removed static pods whose worker has finished.
    fn prune_static(&mut self) {
        let workers = &self.workers;
        self.static_pods.retain(|uid, p| {
            p.metadata.deletion_timestamp.is_none()
                || workers.get(uid).is_some_and(|tx| !tx.is_closed())
        });
    }

    /// The static pods the file source holds now: new UIDs start, missing ones are
    /// stopped gracefully (a removed file, or the old version of an edited one).
    async fn set_static(&mut self, pods: Vec<Pod>) {
        self.workers.retain(|_, tx| !tx.is_closed());
        let current: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for (uid, pod) in self.static_pods.iter_mut() {
            if current.contains(uid) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            tracing::info!(pod = %static_pods::full_name(pod), %uid, "static pod removed");
            // Stopped as upstream kills a removed static pod: with its grace period.
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
            pod.metadata.deletion_grace_period_seconds = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds);
            let uid = uid.clone();
            self.ctx.view.update(|v| drop(v.remove(&uid)));
            if let Some(tx) = self.workers.get(&uid) {
                let _ = tx.send(Some(pod.clone()));
            }
        }
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if self.static_pods.contains_key(&uid) {
                continue;
            }
            tracing::info!(pod = %static_pods::full_name(&pod), %uid, "static pod added");
            self.ctx
                .view
                .update(|v| drop(v.insert(uid.clone(), pod.clone())));
            // Admitted through the same checks as API pods (upstream's); a refused one
            // stays known, without a worker, so its mirror is not an orphan.
            if self.admitted(&pod).await {
                let tx = spawn_worker(&self.ctx, uid.clone(), Some(pod.clone()));
                self.workers.insert(uid.clone(), tx);
            }
            self.static_pods.insert(uid, pod);
        }
        self.delete_orphaned_mirrors().await;
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

/// How long admission waits for the Node before admitting without it.
const NODE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a preemption waits for the evicted pod's worker to stop it.
const PREEMPTION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks `pod` against the Node as the API has it and the `active` admitted pods;
/// `Ok` holds the pods to evict first (a critical pod's preemption). A Node that
/// cannot be read admits the pod: refusing work for a transient API error would fail
/// pods for good.
async fn admit(
    ctx: &PodContext,
    node_name: &str,
    pod: &Pod,
    active: &[Pod],
) -> Result<Vec<Pod>, admission::Rejection> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // Bounded: static pods must start while the API server is unreachable (upstream
    // reads a cache, never the network, here).
    let node = match tokio::time::timeout(NODE_READ_TIMEOUT, nodes.get(node_name)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the Node for pod admission; admitting");
            return Ok(Vec::new());
        }
        Err(_) => {
            tracing::warn!("reading the Node for pod admission timed out; admitting");
            return Ok(Vec::new());
        }
    };
    let active: Vec<&Pod> = active.iter().collect();
    let failures = admission::check(pod, &node, &active);
    preemption::resolve(pod, failures, &active).map(|v| v.into_iter().cloned().collect())
}

/// upstream's rejectPod: a Warning event with the reason, and the pod Failed with
/// that reason and "Pod <message>".
async fn reject(ctx: &PodContext, pod: &Pod, r: admission::Rejection) {
    tracing::info!(pod = ?pod.metadata.name, reason = %r.reason, message = %r.message, "pod not admitted");
    events::warn(&ctx.client, pod, &r.reason, &r.message).await;
    write_failed(ctx, pod, &r.reason, &format!("Pod {}", r.message)).await;
}

/// Writes the pod's status as Failed for `reason`. A static pod's status goes to its
/// mirror (preconditioned on the mirror's UID), if it has one: a static pod refused
/// before it ever ran has none, as upstream only creates mirrors for running pods.
async fn write_failed(ctx: &PodContext, pod: &Pod, reason: &str, message: &str) {
    let mut patch = serde_json::json!({"status": {
        "phase": "Failed",
        "reason": reason,
        "message": message,
    }});
    if static_pods::is_static(pod) {
        let Some(mirror) = ctx.mirrors.of(pod) else {
            return;
        };
        patch["metadata"] = serde_json::json!({"uid": mirror.metadata.uid});
    }
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::warn!(error = %e, "writing the status of a pod that is not to run");
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
