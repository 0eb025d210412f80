//! Pod sandbox lifecycle: RunPodSandbox, StopPodSandbox, RemovePodSandbox.

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig};

use super::{
    PodNetwork, Result, Runtime, RuntimeError, SandboxRecord, SandboxState, new_id, now_nanos,
};
use crate::sandbox::{cni, files, infra, namespaces};

/// Where a sandbox's network namespace is pinned (`ip netns` shows it).
pub const NETNS_DIR: &str = "/var/run/netns";

fn same_pod(a: &PodSandboxConfig, b: &PodSandboxConfig) -> bool {
    match (&a.metadata, &b.metadata) {
        (Some(x), Some(y)) => {
            x.name == y.name
                && x.namespace == y.namespace
                && x.uid == y.uid
                && x.attempt == y.attempt
        }
        _ => false,
    }
}

impl Runtime {
    pub async fn run_sandbox(&self, config: PodSandboxConfig, handler: String) -> Result<String> {
        let meta = config.metadata.clone().ok_or_else(|| {
            RuntimeError::InvalidArgument("sandbox config without metadata".into())
        })?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "sandbox metadata needs name, namespace and uid".into(),
            ));
        }
        let _guard = self
            .locks
            .lock(format!(
                "pod/{}/{}/{}/{}",
                meta.namespace, meta.name, meta.uid, meta.attempt
            ))
            .await;
        let _no_gc = self.gc_lock.read().await;
        // A kubelet that timed out and retried gets the sandbox it already has.
        if let Some(existing) = self
            .sandboxes
            .list()
            .into_iter()
            .find(|s| s.state == SandboxState::Ready && same_pod(&s.config, &config))
        {
            return Ok(existing.id);
        }
        let id = new_id();
        let ns_opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_network = ns_opts.network == NamespaceMode::Node as i32;
        let host_ipc = ns_opts.ipc == NamespaceMode::Node as i32;
        let shares_pid = ns_opts.pid == NamespaceMode::Pod as i32;
        let dir = self.sandbox_dir(&id);
        // No hostname in the config means the node's, as containerd does (pod names can
        // be longer than the 64 bytes a hostname may have).
        let node_hostname = || {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let hostname = if config.hostname.is_empty() {
            node_hostname()
        } else {
            config.hostname.clone()
        };
        if hostname.len() > 64 {
            return Err(RuntimeError::InvalidArgument(format!(
                "hostname {hostname:?} is longer than 64 bytes"
            )));
        }
        let netns = (!host_network)
            .then(|| std::path::Path::new(NETNS_DIR).join(format!("runtime-shim-{}", &id[..16])));
        let ipc = (!host_ipc).then(|| dir.join("ns/ipc"));
        // hostNetwork pods see the node's hostname, as upstream.
        let uts = (!host_network).then(|| dir.join("ns/uts"));
        let planned = match &netns {
            Some(netns) => self.plan_network(&id, netns, &config)?,
            None => None,
        };
        // Recorded before anything exists, so that a daemon killed from here on finds at
        // start-up what to undo: these namespace paths and this CNI attachment.
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            runtime_handler: handler,
            created_at: now_nanos(),
            state: SandboxState::NotReady,
            namespaces: Some(namespaces::PodNamespaces {
                net: netns.clone(),
                ipc: ipc.clone(),
                uts: uts.clone(),
            }),
            host_network,
            network: planned.as_ref().map(|(_, n)| n.clone()),
            infra: None,
        };
        self.setups.put(&rec)?;
        let created = (|| -> std::io::Result<_> {
            std::fs::create_dir_all(dir.join("ns"))?;
            let ns =
                namespaces::create(netns.as_deref(), ipc.as_deref(), uts.as_deref(), &hostname)?;
            let shown_hostname = if host_network {
                node_hostname()
            } else {
                hostname.clone()
            };
            files::write_hostname(&dir, &shown_hostname)?;
            files::write_hosts(&dir, &shown_hostname, None)?;
            files::write_resolv_conf(&dir, rec.config.dns_config.as_ref())?;
            Ok(ns)
        })();
        let ns = match created {
            Ok(ns) => ns,
            Err(e) => {
                // Nothing reached CNI yet.
                rec.network = None;
                self.undo_setup(&rec).await?;
                return Err(RuntimeError::Internal(anyhow::anyhow!(
                    "creating the sandbox namespaces: {e}"
                )));
            }
        };
        if shares_pid {
            match infra::spawn(&dir) {
                // Recorded at once: a daemon killed from here on still finds it.
                Ok(p) => {
                    rec.infra = Some(p);
                    self.setups.put(&rec)?;
                }
                Err(e) => {
                    rec.network = None;
                    self.undo_setup(&rec).await?;
                    return Err(RuntimeError::Internal(anyhow::anyhow!(
                        "starting the pod's infra process: {e}"
                    )));
                }
            }
        }
        if let (Some((net, pod_net)), Some(slot)) = (&planned, rec.network.as_mut()) {
            match self.cni.add(net, &pod_net.attachment).await {
                Ok(result) => slot.ip = cni::pod_ip(&result),
                Err(e) => {
                    // `add` has run DEL already.
                    rec.network = None;
                    self.undo_setup(&rec).await?;
                    return Err(RuntimeError::Internal(
                        e.context("setting up the pod network"),
                    ));
                }
            }
        }
        if let Some(ip) = rec.network.as_ref().and_then(|n| n.ip.as_deref()) {
            files::write_hosts(&dir, &hostname, Some(ip))?;
        }
        rec.namespaces = Some(ns);
        rec.state = SandboxState::Ready;
        // The sandbox record first: a crash between the two leaves a finished sandbox
        // and a stale setup record, which start-up recognises and drops.
        self.sandboxes.put(&rec)?;
        self.setups.remove(&id)?;
        tracing::info!(sandbox = %id, pod = %format!("{}/{}", meta.namespace, meta.name), "sandbox ready");
        Ok(id)
    }

    /// Stops every container of the sandbox and releases its namespaces. Idempotent.
    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let Some(rec) = self.sandboxes.resolve(id) else {
            return Err(RuntimeError::NotFound(format!(
                "pod sandbox {id} not found"
            )));
        };
        for c in self.containers.list() {
            if c.sandbox_id == rec.id {
                self.stop_container(&c.id, 0).await?;
            }
        }
        let _guard = self.locks.lock(format!("sandbox/{}", rec.id)).await;
        if let Some(p) = &rec.infra {
            p.kill()?;
            self.sandboxes.update(&rec.id, |r| r.infra = None)?;
        }
        if let Some(net) = &rec.network {
            self.detach_network(net).await?;
            self.sandboxes.update(&rec.id, |r| r.network = None)?;
        }
        if let Some(ns) = &rec.namespaces {
            namespaces::remove(ns)?;
        }
        self.sandboxes.update(&rec.id, |r| {
            r.state = SandboxState::NotReady;
            r.namespaces = None;
        })?;
        Ok(())
    }

    /// The CNI attachment a new sandbox will get and the network it is on; `None` when
    /// no network is configured (the pod only has loopback, and Status reports
    /// NetworkReady=false).
    fn plan_network(
        &self,
        id: &str,
        netns: &std::path::Path,
        config: &PodSandboxConfig,
    ) -> Result<Option<(cni::NetworkConfig, PodNetwork)>> {
        let Some(net) = cni::load(&self.cni_conf_dir)? else {
            return Ok(None);
        };
        let meta = config.metadata.clone().unwrap_or_default();
        let mut capability_args = serde_json::Map::new();
        if !config.port_mappings.is_empty() {
            let pm: Vec<serde_json::Value> = config
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .map(|p| {
                    serde_json::json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": match p.protocol { 1 => "udp", 2 => "sctp", _ => "tcp" },
                        "hostIP": p.host_ip,
                    })
                })
                .collect();
            capability_args.insert("portMappings".into(), pm.into());
        }
        let attachment = cni::Attachment {
            container_id: id.to_string(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            pod_namespace: meta.namespace,
            pod_name: meta.name,
            pod_uid: meta.uid,
            capability_args,
        };
        let pod_net = PodNetwork {
            ip: None,
            attachment,
            config: String::from_utf8_lossy(&net.bytes).into_owned(),
        };
        Ok(Some((net, pod_net)))
    }

    pub(super) async fn detach_network(&self, net: &PodNetwork) -> Result<()> {
        let is_list = serde_json::from_str::<serde_json::Value>(&net.config)
            .map(|v| v.get("plugins").is_some())
            .unwrap_or(false);
        let config = cni::parse(net.config.as_bytes(), is_list)?;
        self.cni
            .del(&config, &net.attachment)
            .await
            .map_err(|e| RuntimeError::Internal(e.context("tearing down the pod network")))
    }

    /// CNI GC on the current network configuration, the attachments of this runtime's
    /// sandboxes being the valid ones: what a lost DEL left allocated is released. No
    /// set-up runs meanwhile, so an ADD in flight is never collected.
    pub async fn gc_network(&self) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        let Some(net) = cni::load(&self.cni_conf_dir)? else {
            return Ok(());
        };
        let valid: Vec<(String, String)> = self
            .sandboxes
            .list()
            .into_iter()
            .filter_map(|s| s.network)
            .map(|n| (n.attachment.container_id, n.attachment.ifname))
            .collect();
        self.cni
            .gc(&net, &valid)
            .await
            .map_err(|e| RuntimeError::Internal(e.context("CNI GC")))
    }

    /// Removes the sandbox and its containers. Removing an unknown sandbox succeeds.
    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let Some(rec) = self.sandboxes.resolve(id) else {
            return Ok(());
        };
        for c in self.containers.list() {
            if c.sandbox_id == rec.id {
                self.remove_container(&c.id).await?;
            }
        }
        // Nothing of a removed sandbox outlives RemovePodSandbox, its containers' rootfs
        // neither.
        self.reclaims.wait(Some(&rec.id)).await;
        let _guard = self.locks.lock(format!("sandbox/{}", rec.id)).await;
        self.release(&rec).await?;
        self.sandboxes.remove(&rec.id)?;
        Ok(())
    }

    /// Releases what a sandbox holds, in reverse order of setup: its infra process, its
    /// CNI attachment (DEL is harmless for one that never got ADD), its pinned
    /// namespaces, its files.
    pub(super) async fn release(&self, rec: &SandboxRecord) -> Result<()> {
        if let Some(p) = &rec.infra {
            p.kill()?;
        }
        if let Some(net) = &rec.network {
            self.detach_network(net).await?;
        }
        if let Some(ns) = &rec.namespaces {
            namespaces::remove(ns)?;
        }
        match std::fs::remove_dir_all(self.sandbox_dir(&rec.id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.sandboxes.resolve(id)
    }

    pub fn list_sandboxes(&self) -> Vec<SandboxRecord> {
        self.sandboxes.list()
    }
}
