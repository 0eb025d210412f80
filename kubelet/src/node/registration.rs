//! Registering the Node: create it, or adopt the one a previous run (or an admin)
//! created. Upstream keeps retrying with backoff until the API server accepts us; so
//! do we, since a node that gives up never joins once the control plane comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::{info, warn};

use crate::node::status::go_arch;

/// Upstream sets this on every Node it registers: volumes are attached by the
/// attach/detach controller, not by the kubelet.
const CONTROLLER_MANAGED_ATTACH_DETACH: &str =
    "volumes.kubernetes.io/controller-managed-attach-detach";

/// How the Node came to be ours.
#[derive(Debug)]
pub enum Registration {
    /// We created it now.
    Created(Node),
    /// It already existed (a restart, or pre-created by an admin) and we took it over.
    Adopted(Node),
}

impl Registration {
    pub fn node(&self) -> &Node {
        match self {
            Registration::Created(n) | Registration::Adopted(n) => n,
        }
    }
}

/// What we want the Node object to say about itself at registration.
#[derive(Debug, Clone)]
pub struct NodeTemplate {
    pub name: String,
    /// The `kubernetes.io/hostname` label: the hostname, not the (cloud's) node name.
    pub hostname: String,
    /// Instance type, zone and region labels from the cloud provider.
    pub cloud_labels: BTreeMap<String, String>,
    pub extra_labels: BTreeMap<String, String>,
    /// Set at creation only (e.g. `alpha.kubernetes.io/provided-node-ip`).
    pub annotations: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub provider_id: Option<String>,
}

impl NodeTemplate {
    /// The labels we own: upstream's defaults (the stable and the beta os/arch labels
    /// it still sets in 1.20, the cloud's) overlaid with `--node-labels`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", self.hostname.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", go_arch()),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", go_arch()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.cloud_labels.clone())
        .collect();
        for (k, v) in &self.extra_labels {
            if let Some(old) = labels.insert(k.clone(), v.clone()) {
                warn!(label = %k, value = %v, default = %old, "node label overrides a default label");
            }
        }
        labels
    }

    /// The Node to create, carrying `status` so it shows up complete at once.
    pub fn to_node(&self, status: NodeStatus) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels()),
                annotations: Some(
                    self.annotations
                        .clone()
                        .into_iter()
                        .chain([(
                            CONTROLLER_MANAGED_ATTACH_DETACH.to_string(),
                            "true".to_string(),
                        )])
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                provider_id: self.provider_id.clone(),
                ..NodeSpec::default()
            }),
            status: Some(status),
        }
    }
}

/// Registers until it succeeds. `initial_status` goes into a newly created Node.
pub async fn register(
    api: &Api<Node>,
    template: &NodeTemplate,
    initial_status: NodeStatus,
) -> Registration {
    let mut backoff = Duration::from_millis(100);
    let node = template.to_node(initial_status);
    loop {
        match try_register(api, template, &node).await {
            Ok(r) => return r,
            Err(e) => {
                warn!(node = %template.name, error = %format!("{e:#}"), retry_in = ?backoff, "unable to register node with API server");
                tokio::time::sleep(backoff).await;
                // Upstream caps its registration backoff at 7 s.
                backoff = (backoff * 2).min(Duration::from_secs(7));
            }
        }
    }
}

/// Waits for a Node someone else registers (`--register-node=false`), without touching
/// its labels or taints.
pub async fn wait_for_existing(api: &Api<Node>, name: &str) -> Registration {
    let mut backoff = Duration::from_millis(100);
    loop {
        match api.get_opt(name).await {
            Ok(Some(node)) => return Registration::Adopted(node),
            Ok(None) => {
                info!(node = %name, "waiting for the Node to be registered by someone else")
            }
            Err(e) => warn!(node = %name, error = %e, "unable to read the Node"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(7));
    }
}

async fn try_register(
    api: &Api<Node>,
    template: &NodeTemplate,
    node: &Node,
) -> Result<Registration> {
    match api.create(&PostParams::default(), node).await {
        Ok(created) => {
            info!(node = %template.name, "registered node");
            return Ok(Registration::Created(created));
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(e) => return Err(e).context("creating the Node"),
    }
    let existing = api
        .get(&template.name)
        .await
        .context("reading the existing Node")?;
    let adopted = adopt(api, template, existing).await?;
    info!(node = %template.name, "adopted existing node");
    Ok(Registration::Adopted(adopted))
}

/// Brings an existing Node's labels and taints in line with ours, leaving everything
/// else (labels and taints others added, annotations, status) alone.
async fn adopt(api: &Api<Node>, template: &NodeTemplate, mut node: Node) -> Result<Node> {
    let current = node.metadata.labels.clone().unwrap_or_default();
    let wanted: BTreeMap<String, String> = template
        .labels()
        .into_iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .collect();
    if !wanted.is_empty() {
        // A merge patch of labels only touches the keys we name.
        let patch = json!({ "metadata": { "labels": wanted } });
        node = api
            .patch(
                &template.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .context("updating the existing Node's labels")?;
    }

    let existing_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let missing: Vec<Taint> = template
        .taints
        .iter()
        .filter(|t| {
            !existing_taints
                .iter()
                .any(|e| e.key == t.key && e.effect == t.effect)
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        // Taints are a plain list: the patch must carry all of them, and the
        // resourceVersion makes sure we do not drop one added concurrently.
        let mut taints = existing_taints;
        taints.extend(missing);
        let patch = json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "taints": taints },
        });
        // NodeRestriction forbids a node to change its own taints; that is the
        // admin's call then, not a reason to stay unregistered.
        match api
            .patch(
                &template.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => node = updated,
            Err(e) => {
                warn!(node = %template.name, error = %e, "could not add --register-with-taints to the existing Node")
            }
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_carries_default_and_extra_labels_taints_and_provider_id() {
        let t = NodeTemplate {
            name: "n1".into(),
            hostname: "n1".into(),
            cloud_labels: BTreeMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                "z1".to_string(),
            )]),
            annotations: BTreeMap::new(),
            extra_labels: BTreeMap::from([("role".to_string(), "worker".to_string())]),
            taints: vec![Taint {
                key: "k".into(),
                value: Some("v".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            provider_id: Some("aws:///zone/i-1".into()),
        };
        let node = t.to_node(NodeStatus::default());
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["beta.kubernetes.io/os"], "linux");
        assert_eq!(labels["role"], "worker");
        assert_eq!(labels["topology.kubernetes.io/zone"], "z1");
        let spec = node.spec.unwrap();
        assert_eq!(spec.taints.unwrap()[0].key, "k");
        assert_eq!(spec.provider_id.as_deref(), Some("aws:///zone/i-1"));
    }
}
