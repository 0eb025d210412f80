//! Mirror pods: the API's read-only copy of each static pod, so the cluster sees
//! what runs from files. As upstream's mirror client (pkg/kubelet/pod/mirror_client.go)
//! and syncPod: a mirror carries the static pod's annotations plus
//! `kubernetes.io/config.mirror: <hash>` and a controller ownerReference to the Node
//! (what NodeRestriction requires of a node creating a pod); one that is outdated or
//! being deleted is removed and created again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use serde_json::json;

use super::static_pods::{MIRROR_ANNOTATION, full_name, hash_of};

/// API calls for a static pod must not hold up running it when the API server hangs.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The mirror pods of this node as the pod watch last saw them, by full name, and
/// the client that creates and deletes them.
#[derive(Clone)]
pub struct Mirrors {
    client: kube::Client,
    node_name: String,
    pods: Arc<RwLock<HashMap<String, Pod>>>,
}

impl Mirrors {
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Mirrors {
            client,
            node_name: node_name.to_string(),
            pods: Arc::default(),
        }
    }

    pub(super) fn set(&self, mirror: Pod) {
        if let Ok(mut pods) = self.pods.write() {
            pods.insert(full_name(&mirror), mirror);
        }
    }

    /// Forgets the mirror called `full_name` if it is still the one with `uid`.
    pub(super) fn remove(&self, full_name: &str, uid: Option<&str>) {
        if let Ok(mut pods) = self.pods.write()
            && pods
                .get(full_name)
                .is_some_and(|p| p.metadata.uid.as_deref() == uid)
        {
            pods.remove(full_name);
        }
    }

    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut pods) = self.pods.write() {
            pods.retain(|name, _| keep(name));
        }
    }

    pub(super) fn all(&self) -> Vec<Pod> {
        self.pods
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn get(&self, full_name: &str) -> Option<Pod> {
        self.pods.read().ok()?.get(full_name).cloned()
    }

    /// The mirror of `static_pod` (same name and hash, upstream's IsMirrorPodOf), if
    /// the API has it and it is not being deleted: where its status goes.
    pub fn of(&self, static_pod: &Pod) -> Option<Pod> {
        self.get(&full_name(static_pod))
            .filter(|m| is_mirror_of(m, static_pod) && m.metadata.deletion_timestamp.is_none())
    }

    /// upstream's syncPod step for a static pod: a mirror that is outdated or being
    /// deleted is deleted, and a missing one created. Deleting a mirror never
    /// touches what the static pod runs.
    pub async fn sync(&self, static_pod: &Pod) -> Result<()> {
        let mut missing = true;
        if let Some(mirror) = self.get(&full_name(static_pod)) {
            missing = false;
            if mirror.metadata.deletion_timestamp.is_some() || !is_mirror_of(&mirror, static_pod) {
                tracing::info!(pod = %full_name(static_pod), uid = ?mirror.metadata.uid, "deleting outdated mirror pod");
                missing = self.delete(&mirror).await?;
            }
        }
        if missing {
            self.create(static_pod).await?;
        }
        Ok(())
    }

    /// Creates the mirror of `static_pod` unless the Node is gone or being deleted.
    async fn create(&self, static_pod: &Pod) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = timed(nodes.get_opt(&self.node_name)).await?;
        let Some(node) = node.filter(|n| n.metadata.deletion_timestamp.is_none()) else {
            tracing::debug!(node = %self.node_name, "no mirror pod: the Node is not in the API");
            return Ok(());
        };
        let node_uid = node.metadata.uid.context("the Node has no uid")?;
        let mut mirror = static_pod.clone();
        let hash = hash_of(static_pod).unwrap_or_default().to_string();
        let meta = &mut mirror.metadata;
        meta.annotations
            .get_or_insert_default()
            .insert(MIRROR_ANNOTATION.into(), hash);
        // The API server assigns its own UID; the static pod's is only ours.
        meta.uid = None;
        meta.resource_version = None;
        meta.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "name": self.node_name,
            "uid": node_uid, "controller": true,
        }))?]);
        mirror.status = None;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match timed(api.create(&PostParams::default(), &mirror)).await {
            Ok(created) => {
                tracing::info!(pod = %full_name(&created), uid = ?created.metadata.uid, "created mirror pod");
                // Known at once, so the next sync does not create it again before
                // the watch reports it.
                self.set(created);
                Ok(())
            }
            // Created meanwhile: the watch brings it, and the next sync judges it.
            Err(e) if is_code(&e, 409) => Ok(()),
            Err(e) => Err(e).context("creating the mirror pod"),
        }
    }

    /// Deletes `mirror` at once (grace 0, preconditioned on its UID); returns whether
    /// it is gone.
    pub async fn delete(&self, mirror: &Pod) -> Result<bool> {
        let uid = mirror.metadata.uid.clone();
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            mirror.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = mirror.metadata.name.clone().unwrap_or_default();
        let gone = match timed(api.delete(&name, &dp)).await {
            Ok(_) => true,
            // Gone already, or replaced by another one (precondition failed).
            Err(e) if is_code(&e, 404) || is_code(&e, 409) => true,
            Err(e) => return Err(e).context("deleting the mirror pod"),
        };
        self.remove(&full_name(mirror), uid.as_deref());
        Ok(gone)
    }

    /// Deletes the mirror of `static_pod`, if the API has one (the static pod is gone).
    pub async fn delete_of(&self, static_pod: &Pod) -> Result<()> {
        match self.get(&full_name(static_pod)) {
            Some(m) if is_mirror_of(&m, static_pod) => self.delete(&m).await.map(drop),
            _ => Ok(()),
        }
    }
}

fn is_mirror_of(mirror: &Pod, static_pod: &Pod) -> bool {
    full_name(mirror) == full_name(static_pod)
        && mirror
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .map(String::as_str)
            == hash_of(static_pod)
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

async fn timed<T>(f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, kube::Error> {
    match tokio::time::timeout(API_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer from the API server within {API_TIMEOUT:?}").into(),
        )),
    }
}
