//! The Node object and its heartbeats: registration, status reporting and the Lease.

pub mod addresses;
pub mod host;
pub mod lease;
pub mod registration;
pub mod runtime_state;
pub mod status;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ContainerImage, Node, NodeAddress, NodeStatus};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::cloud::{CloudProvider, PROVIDED_NODE_IP_ANNOTATION};
use crate::config::Settings;
use crate::cri::{CriClient, RuntimeVersion};
use host::HostFacts;
use registration::{NodeTemplate, Registration};
use runtime_state::RuntimeState;
use status::{StatusInputs, build_status, changed, node_images};

/// Keeps `Node.status` current: computes it every nodeStatusUpdateFrequency and writes
/// it when it changed or nodeStatusReportFrequency has passed since the last write.
pub struct StatusReporter {
    api: Api<Node>,
    settings: Settings,
    cri: CriClient,
    /// The InternalIP found at startup (fallback if the host has none later).
    node_ip: Option<IpAddr>,
    runtime: RuntimeState,
    runtime_version: Option<RuntimeVersion>,
    /// The runtime's images as last listed (kept when a listing fails, so one failed
    /// call does not make the node look imageless to the scheduler).
    images: Vec<ContainerImage>,
    /// The status the API server has from us (or had when we adopted the Node): the
    /// base for transition times and change detection.
    reported: Option<NodeStatus>,
    /// When `reported` was written; `None` until we write once.
    last_report: Option<Instant>,
    /// The addresses last computed, as upstream's lastObservedNodeAddresses: the
    /// names and IPs the serving certificate must cover.
    addresses: tokio::sync::watch::Sender<Vec<NodeAddress>>,
}

impl StatusReporter {
    pub fn new(api: Api<Node>, settings: Settings, cri: CriClient) -> Self {
        let node_ip = node_ip(&settings);
        if node_ip.is_none() {
            warn!(
                "no --node-ip and no global IPv4 address found: reporting only the Hostname address"
            );
        }
        StatusReporter {
            api,
            settings,
            cri,
            node_ip,
            runtime: RuntimeState::default(),
            runtime_version: None,
            images: Vec::new(),
            reported: None,
            last_report: None,
            addresses: tokio::sync::watch::Sender::new(Vec::new()),
        }
    }

    /// Follows the node's addresses as they are computed (empty until the first time).
    pub fn observed_addresses(&self) -> tokio::sync::watch::Receiver<Vec<NodeAddress>> {
        self.addresses.subscribe()
    }

    /// Asks the runtime for its version, status and images. Version is asked every
    /// time, as upstream does, so a runtime upgraded under a running kubelet shows.
    pub async fn probe_runtime(&mut self) {
        match self.cri.version().await {
            Ok(v) => {
                if self.runtime_version.as_ref() != Some(&v) {
                    info!(runtime = %v.runtime_name, version = %v.runtime_version, api = %v.runtime_api_version, "container runtime answered");
                }
                self.runtime_version = Some(v);
            }
            Err(e) => {
                warn!(socket = %self.cri.socket().display(), error = %e, "container runtime version check failed")
            }
        }
        match self.cri.status().await {
            Ok(conditions) => self.runtime.observe(&conditions, Instant::now()),
            Err(e) => warn!(error = %e, "container runtime status check failed"),
        }
        match self.cri.list_images().await {
            Ok(images) => self.images = node_images(images),
            Err(e) => debug!(error = %e, "listing images failed"),
        }
    }

    /// The status as it should be now.
    pub fn compute(&self) -> Result<NodeStatus> {
        let facts = HostFacts::read(&self.settings.root_dir)?;
        let errors = self.runtime.errors(Instant::now());
        let addresses = addresses::node_addresses(&addresses::AddressInputs {
            node_ip_flag: self.settings.node_ip,
            // Without --node-ip the address follows the host's, as upstream's does.
            host_ip: node_ip(&self.settings).or(self.node_ip),
            hostname: &self.settings.hostname,
            hostname_overridden: self.settings.hostname_overridden,
            cloud: self.settings.cloud.as_ref().map(|c| c.addresses.as_slice()),
        })?;
        self.addresses.send_if_modified(|last| {
            let changed = *last != addresses;
            if changed {
                last.clone_from(&addresses);
            }
            changed
        });
        let inputs = StatusInputs {
            addresses: &addresses,
            port: self.settings.port,
            max_pods: self.settings.max_pods,
            reserved: &self.settings.reserved,
            facts: &facts,
            runtime_version: self.runtime_version.as_ref(),
            not_ready_errors: &errors,
            images: &self.images,
        };
        Ok(build_status(
            &inputs,
            self.reported.as_ref(),
            Timestamp::now(),
        ))
    }

    pub fn template(&self) -> NodeTemplate {
        let mut annotations = BTreeMap::new();
        if self.external_provider()
            && let Some(ip) = self.settings.node_ip.filter(|ip| !ip.is_unspecified())
        {
            annotations.insert(PROVIDED_NODE_IP_ANNOTATION.to_string(), ip.to_string());
        }
        NodeTemplate {
            name: self.settings.node_name.clone(),
            hostname: self.settings.hostname.clone(),
            cloud_labels: self
                .settings
                .cloud
                .as_ref()
                .map(|c| c.labels())
                .unwrap_or_default(),
            extra_labels: self.settings.node_labels.clone(),
            annotations,
            taints: self.settings.register_with_taints.clone(),
            provider_id: self.settings.provider_id.clone(),
        }
    }

    /// Registers the Node (creating it with the current status) and returns it.
    pub async fn register(&mut self) -> Result<Node> {
        self.probe_runtime().await;
        let initial = self.compute()?;
        let registration = if self.settings.register_node {
            registration::register(&self.api, &self.template(), initial).await
        } else {
            // --register-node=false: someone else creates the Node; we only report.
            registration::wait_for_existing(&self.api, &self.settings.node_name).await
        };
        let node = registration.node().clone();
        match &registration {
            // The created Node already carries our status: it counts as reported.
            Registration::Created(_) => {
                self.reported = node.status.clone();
                self.last_report = Some(Instant::now());
            }
            // Keep the existing transition times; write our status at the next tick.
            Registration::Adopted(_) => self.reported = node.status.clone(),
        }
        if self.external_provider() {
            // Only the registration carries our addresses (see `tick`).
            self.reported = self.reported.take().map(without_addresses);
        }
        Ok(node)
    }

    /// One status check: write when changed or when the report is due.
    pub async fn tick(&mut self) -> Result<()> {
        self.probe_runtime().await;
        let mut status = self.compute()?;
        if self.external_provider() {
            status = without_addresses(status);
        }
        let due = self
            .last_report
            .is_none_or(|t| t.elapsed() >= self.settings.node_status_report_frequency);
        let differs = self
            .reported
            .as_ref()
            .is_none_or(|old| changed(old, &status));
        if !due && !differs {
            debug!("node status unchanged; not reporting");
            return Ok(());
        }
        // Strategic merge: conditions and addresses merge by type, so conditions other
        // components own (NetworkUnavailable, node-problem-detector's) survive.
        let patch = json!({ "status": status });
        self.api
            .patch_status(
                &self.settings.node_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .context("patching node status")?;
        debug!(changed = differs, "node status reported");
        self.reported = Some(status);
        self.last_report = Some(Instant::now());
        Ok(())
    }

    /// Checks every nodeStatusUpdateFrequency, forever.
    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(self.settings.node_status_update_frequency);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = self.tick().await {
                warn!(error = %format!("{e:#}"), "error updating node status, will retry");
            }
        }
    }
}

impl StatusReporter {
    /// With `--cloud-provider external` the cloud-controller-manager owns the addresses
    /// once the Node exists: upstream's kubelet sets them only while there are none,
    /// i.e. at registration, and never overwrites the provider's afterwards.
    fn external_provider(&self) -> bool {
        self.settings.cloud_provider == CloudProvider::External
    }
}

fn without_addresses(status: NodeStatus) -> NodeStatus {
    NodeStatus {
        addresses: None,
        ..status
    }
}

/// `--node-ip`, or the host's default-route IPv4 address.
fn node_ip(settings: &Settings) -> Option<IpAddr> {
    settings.node_ip.or_else(host::default_ipv4)
}
