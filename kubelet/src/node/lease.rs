//! The node's heartbeat: a coordination.k8s.io/v1 Lease named after the node in
//! kube-node-lease, renewed every quarter of its duration (10 s for the default 40 s),
//! as upstream's node lease controller does. The node lifecycle controller marks the
//! node unknown when renewTime falls more than the duration behind.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tracing::{debug, warn};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

pub struct LeaseKeeper {
    api: Api<Lease>,
    node_name: String,
    node_uid: String,
    duration_seconds: i32,
    /// The Lease as last written; `None` forces a GET (first run, or after a failed
    /// update, when our copy may be stale).
    cached: Option<Lease>,
}

impl LeaseKeeper {
    pub fn new(
        client: kube::Client,
        node_name: &str,
        node_uid: &str,
        duration_seconds: i32,
    ) -> Self {
        LeaseKeeper {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            node_name: node_name.into(),
            node_uid: node_uid.into(),
            duration_seconds,
            cached: None,
        }
    }

    /// Upstream renews at a quarter of the lease duration.
    pub fn renew_interval(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.duration_seconds) * 0.25)
    }

    /// Renews the Lease forever; failures are retried with backoff up to the interval.
    pub async fn run(mut self) {
        let interval = self.renew_interval();
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.renew().await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), retry_in = ?backoff, "failed to renew node lease");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(interval);
                }
            }
        }
    }

    /// One renewal: create the Lease if it does not exist, otherwise update it.
    pub async fn renew(&mut self) -> Result<()> {
        let lease = match self.cached.take() {
            Some(lease) => lease,
            None => match self
                .api
                .get_opt(&self.node_name)
                .await
                .context("reading the node lease")?
            {
                Some(lease) => lease,
                None => {
                    let lease = self.desired(Lease {
                        metadata: ObjectMeta {
                            name: Some(self.node_name.clone()),
                            namespace: Some(LEASE_NAMESPACE.into()),
                            ..ObjectMeta::default()
                        },
                        spec: None,
                    });
                    let created = self
                        .api
                        .create(&PostParams::default(), &lease)
                        .await
                        .context("creating the node lease")?;
                    debug!("created node lease");
                    self.cached = Some(created);
                    return Ok(());
                }
            },
        };
        let updated = self
            .api
            .replace(
                &self.node_name,
                &PostParams::default(),
                &self.desired(lease),
            )
            .await
            .context("updating the node lease")?;
        debug!("renewed node lease");
        self.cached = Some(updated);
        Ok(())
    }

    /// `lease` with our holder, duration and a fresh renewTime, owned by the Node so
    /// it is garbage-collected with it.
    fn desired(&self, mut lease: Lease) -> Lease {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.node_name.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let owners = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        let ours = |o: &OwnerReference| o.kind == "Node" && o.name == self.node_name;
        match owners.iter_mut().find(|o| ours(o)) {
            // A Node recreated under the same name has a new uid: point at the live one.
            Some(o) => o.uid = self.node_uid.clone(),
            None => owners.push(OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node_name.clone(),
                uid: self.node_uid.clone(),
                ..OwnerReference::default()
            }),
        }
        lease
    }
}
