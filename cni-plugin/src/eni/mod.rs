//! ipamd's eni mode: the allocator the gRPC service uses ([`EniAllocator`], no EC2 calls
//! on the ADD path) and the reconcile loop ([`Reconciler`]) that keeps the instance's
//! ENIs and secondary IPs (or /28 prefixes, with prefix delegation) at the warm targets
//! through EC2 and sets up each ENI's interface and route table on the node.
//!
//! EC2 is the source of truth: every pass starts with one DescribeNetworkInterfaces of
//! the instance, and the pool uses exactly the secondary IPs and prefixes EC2 lists on
//! ENIs whose interface is set up. Changes go one way each: new IPs or prefixes are
//! asked from EC2 and join the pool when the next describe lists them; those to release
//! leave the pool first (under the lock, so no ADD can pick them) and are then
//! unassigned.
//!
//! With prefix delegation, an InsufficientCidrBlocks answer (no free aligned /28 left in
//! the subnet) switches the loop to secondary IPs for [`PREFIX_RETRY`] (see
//! [`WarmTargets::fallback`]), then it asks for prefixes again.

pub mod config;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::Notify;

use crate::aws::ec2::{Ec2, Ec2Error, Eni, NewEni};
use crate::aws::imds::{Imds, InstanceMetadata};
use crate::aws::limits::{Hypervisor, Limits};
use crate::ipam::eni::{EniIpam, MAIN_TABLE, SyncReport, route_table};
use crate::ipam::warm::{Action, Counts, Source, WarmTargets};
use crate::ipam::{Added, AttachmentKey, AttachmentMeta, IpamError, Pool, now_ms};
use crate::net::snat::Snat;
use crate::net::{EniNetwork, MacAddr, host_netlink, setup_eni_network};
use crate::rpc::{Allocator, pb};
pub use config::EniConfig;

/// aws-node's tags on the ENIs it creates.
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CLUSTER_NAME: &str = "cluster.k8s.amazonaws.com/name";

/// How long a newly attached ENI may take to appear as an interface before the pass
/// moves on (the next pass looks again).
const PLUG_WAIT: Duration = Duration::from_secs(15);
/// A pass stops after this many EC2 changes, so one bad answer cannot spin it.
const MAX_STEPS_PER_PASS: usize = 8;
/// How long pods get secondary IPs after EC2 said the subnet has no free /28, before
/// prefixes are asked for again (one failing call a minute at most).
pub const PREFIX_RETRY: Duration = Duration::from_secs(60);

/// The pool the gRPC service and the reconcile loop share.
pub struct EniAllocator {
    pub ipam: EniIpam,
    pub targets: WarmTargets,
    pub instance_id: String,
    /// What pods' from-rules cover (see [`crate::net::PodNetwork::rule_destinations`]).
    pub rule_destinations: Vec<Ipv4Net>,
    wake: Arc<Notify>,
}

impl EniAllocator {
    fn counts(&self, now_ms: u64) -> Counts {
        Counts::of(&self.ipam.usage(now_ms))
    }
}

impl Allocator for EniAllocator {
    fn add(
        &mut self,
        key: AttachmentKey,
        meta: AttachmentMeta,
        now_ms: u64,
    ) -> Result<Added, IpamError> {
        let result = self.ipam.add(key, meta, now_ms).map(|mut a| {
            a.rule_destinations = self.rule_destinations.clone();
            a
        });
        // Below target (or out of IPs): the loop refills now rather than at its next tick.
        if result
            .as_ref()
            .is_err_and(|e| matches!(e, IpamError::Exhausted { .. }))
            || self.targets.short(self.counts(now_ms)) > 0
        {
            self.wake.notify_one();
        }
        result
    }

    fn del(&mut self, key: &AttachmentKey, now_ms: u64) -> Result<Option<Ipv4Addr>, IpamError> {
        self.ipam.del(key, now_ms)
    }

    fn pool(&self) -> &Pool {
        self.ipam.pool()
    }

    fn lookup(&self, key: &AttachmentKey) -> Option<Added> {
        let ip = self.ipam.pool().get(key)?.ip;
        // As the ADD chose it: the table of the ENI listing the IP, else the main one.
        let route_table = self
            .ipam
            .enis()
            .find(|e| e.ips.contains(&ip))
            .map_or(MAIN_TABLE, |e| route_table(e.device_index));
        Some(Added {
            ip,
            route_table,
            existing: true,
            rule_destinations: self.rule_destinations.clone(),
        })
    }

    fn status(&self, now_ms: u64) -> pb::StatusReply {
        let stats = self.ipam.stats(now_ms);
        let pool = self.ipam.pool();
        let mut enis: Vec<pb::EniStatus> = self
            .ipam
            .enis()
            .map(|e| pb::EniStatus {
                id: e.id.clone(),
                device_index: e.device_index,
                primary_ip: e.primary_ip.to_string(),
                ips: e.ips.iter().map(Ipv4Addr::to_string).collect(),
                prefixes: e.prefixes.iter().map(Ipv4Net::to_string).collect(),
                route_table: route_table(e.device_index),
                assigned: e
                    .addresses
                    .iter()
                    .filter(|ip| pool.holder(**ip).is_some())
                    .map(Ipv4Addr::to_string)
                    .collect(),
            })
            .collect();
        enis.sort_by_key(|e| e.device_index);
        pb::StatusReply {
            free: stats.free,
            assigned: stats.assigned,
            cooldown: stats.cooldown,
            mode: "eni".into(),
            pod_cidr: String::new(),
            enis,
            instance_id: self.instance_id.clone(),
        }
    }
}

/// The node as ipamd found it at start.
#[derive(Debug, Clone)]
pub struct Node {
    pub instance: InstanceMetadata,
    /// The primary ENI's subnet and security groups: new ENIs go there, as aws-node's
    /// do without custom networking.
    pub subnet_id: String,
    pub security_groups: Vec<String>,
}

pub struct Reconciler<E> {
    ec2: E,
    imds: Imds,
    node: Node,
    config: EniConfig,
    targets: WarmTargets,
    state: Arc<Mutex<EniAllocator>>,
    wake: Arc<Notify>,
    /// ENI MAC -> its subnet, from IMDS (it never changes for an ENI).
    subnets: HashMap<String, Ipv4Net>,
    /// Something stopped the last pass from reaching the targets: said once, not per tick.
    stuck: Option<String>,
    /// `None` with AWS_VPC_K8S_CNI_EXTERNALSNAT=true.
    snat: Option<Snat>,
    /// Prefix delegation found no free /28: secondary IPs until then.
    prefix_fallback_until: Option<Instant>,
}

/// The targets for this instance type and configuration.
pub fn warm_targets(config: &EniConfig, limits: &Limits) -> WarmTargets {
    let max_enis = config
        .max_eni
        .map_or(limits.max_enis, |m| m.min(limits.max_enis));
    // EC2 delegates prefixes on Nitro instances only; elsewhere aws-node (and
    // `ipamd max-pods --prefix-delegation`) fall back to secondary IPs.
    let source = if prefix_delegation_supported(config, limits) {
        Source::Prefixes {
            warm_prefix: config.warm_prefix_target,
        }
    } else {
        Source::SecondaryIps
    };
    WarmTargets {
        warm_eni: config.warm_eni_target,
        warm_ip: config.warm_ip_target,
        minimum_ip: config.minimum_ip_target,
        max_enis,
        ips_per_eni: limits.ipv4_per_eni.saturating_sub(1),
        source,
    }
}

fn prefix_delegation_supported(config: &EniConfig, limits: &Limits) -> bool {
    config.prefix_delegation && limits.hypervisor == Hypervisor::Nitro
}

/// AWS keeps the network address, the next three and the broadcast address of every
/// subnet for itself; an IP among them is never a pod's.
fn aws_reserved(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    let n = u32::from(subnet.network());
    let ip = u32::from(ip);
    (n..=n + 3).contains(&ip) || ip == u32::from(subnet.broadcast())
}

fn attached(e: &Eni) -> bool {
    e.attachment
        .as_ref()
        .is_some_and(|a| a.status != "detaching" && a.status != "detached")
}

impl<E: Ec2> Reconciler<E> {
    /// Finds the primary ENI through EC2 and wraps `ipam` for sharing with the gRPC
    /// service ([`Reconciler::state`]).
    pub async fn new(
        ec2: E,
        imds: Imds,
        instance: InstanceMetadata,
        config: EniConfig,
        limits: &Limits,
        ipam: EniIpam,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let enis = ec2.attached_enis(&instance.instance_id).await?;
        let primary = enis
            .iter()
            .find(|e| e.mac == instance.mac)
            .or_else(|| {
                enis.iter()
                    .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
            })
            .with_context(|| {
                format!(
                    "EC2 lists no primary ENI (MAC {}) attached to {}",
                    instance.mac, instance.instance_id
                )
            })?;
        let primary_if = imds
            .interface(&instance.mac)
            .await?
            .with_context(|| format!("IMDS does not list the primary ENI {}", instance.mac))?;
        // Pods reach the VPC through their ENI with their own address; everything else
        // leaves through the primary ENI as the node's primary IP, unless SNAT is external.
        let (snat, rule_destinations) = if config.external_snat {
            (None, Vec::new())
        } else {
            let mut excluded = primary_if.vpc_cidrs.clone();
            excluded.extend(config.exclude_snat_cidrs.iter().copied());
            let snat = Snat {
                primary_ip: primary.primary_ip,
                excluded: excluded.clone(),
                randomize: config.randomize_snat,
            };
            (Some(snat), excluded)
        };
        let node = Node {
            subnet_id: primary.subnet_id.clone(),
            security_groups: primary.security_groups.clone(),
            instance,
        };
        let targets = warm_targets(&config, limits);
        if config.prefix_delegation && !prefix_delegation_supported(&config, limits) {
            tracing::warn!(
                instance_type = %node.instance.instance_type,
                "ENABLE_PREFIX_DELEGATION=true, but EC2 delegates prefixes on Nitro instances only: pods get secondary IPs (max-pods --prefix-delegation gives the secondary-IP number for this type too)"
            );
        }
        let wake = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(EniAllocator {
            ipam,
            targets,
            instance_id: node.instance.instance_id.clone(),
            rule_destinations,
            wake: wake.clone(),
        }));
        Ok(Reconciler {
            ec2,
            imds,
            node,
            config,
            targets,
            state,
            wake,
            subnets: HashMap::new(),
            stuck: None,
            snat,
            prefix_fallback_until: None,
        })
    }

    pub fn state(&self) -> Arc<Mutex<EniAllocator>> {
        self.state.clone()
    }

    pub fn targets(&self) -> WarmTargets {
        self.targets
    }

    /// The targets this pass works towards: the configured ones, or their secondary-IP
    /// fallback while the subnet has no free /28. The allocator gets them too, so that
    /// an ADD wakes the loop only for a shortfall the loop can act on.
    fn current_targets(&mut self) -> WarmTargets {
        if self
            .prefix_fallback_until
            .is_some_and(|t| Instant::now() >= t)
        {
            tracing::info!("asking EC2 for /28 prefixes again");
            self.prefix_fallback_until = None;
        }
        let targets = match self.prefix_fallback_until {
            Some(_) => self.targets.fallback(),
            None => self.targets,
        };
        self.lock().targets = targets;
        targets
    }

    /// EC2 found no free /28 in the subnet: secondary IPs for the next [`PREFIX_RETRY`].
    fn fall_back_to_ips(&mut self, e: &Ec2Error) {
        tracing::warn!(
            subnet = %self.node.subnet_id,
            "EC2 answered InsufficientCidrBlocks: the subnet has no free /28 for a prefix; pods get secondary IPs, and prefixes are asked for again in {PREFIX_RETRY:?} ({e})"
        );
        self.prefix_fallback_until = Some(Instant::now() + PREFIX_RETRY);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EniAllocator> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the pool in line with what EC2 lists, without changing anything in EC2:
    /// what a restart does before it serves. Also deletes ENIs a crash left detached.
    pub async fn sync_once(&mut self) -> anyhow::Result<()> {
        self.ensure_snat().await;
        let enis = self
            .ec2
            .attached_enis(&self.node.instance.instance_id)
            .await?;
        self.sync(&enis).await;
        self.delete_leaked_enis().await;
        Ok(())
    }

    /// Creates or repairs the SNAT rules (unless SNAT is external). Best effort: pods
    /// still reach the VPC without them.
    async fn ensure_snat(&self) {
        let Some(snat) = self.snat.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || snat.ensure()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("SNAT rules: {e}"),
            Err(e) => tracing::warn!("SNAT rules: {e}"),
        }
    }

    /// Runs passes forever: every reconcile interval, and at once when an ADD leaves the
    /// pool short.
    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!("eni reconcile: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.reconcile_interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Describe, sync, and take steps towards the targets until none is needed.
    pub async fn pass(&mut self) -> anyhow::Result<()> {
        self.ensure_snat().await;
        for _ in 0..MAX_STEPS_PER_PASS {
            let enis = self
                .ec2
                .attached_enis(&self.node.instance.instance_id)
                .await?;
            let pending = self.sync(&enis).await;
            let targets = self.current_targets();
            let action = {
                let state = self.lock();
                targets.decide(&state.ipam.usage(now_ms()), pending)
            };
            if action == Action::None {
                self.note_stuck(&enis, pending, targets);
                return Ok(());
            }
            tracing::info!(?action, "eni reconcile");
            self.act(action, &enis).await?;
        }
        Ok(())
    }

    /// Says once why the pool stays short, if it does.
    fn note_stuck(&mut self, enis: &[Eni], pending: bool, targets: WarmTargets) {
        let counts = self.lock().counts(now_ms());
        let why = (targets.short(counts) > 0).then(|| {
            if pending {
                "an attached ENI has no interface on this node yet".to_string()
            } else {
                format!(
                    "{} ENIs attached, the most this instance may have ({})",
                    enis.iter().filter(|e| attached(e)).count(),
                    self.targets.max_enis
                )
            }
        });
        if why != self.stuck {
            if let Some(why) = &why {
                tracing::warn!(
                    available = counts.available(),
                    assigned = counts.assigned,
                    "the pool is below its target: {why}"
                );
            }
            self.stuck = why;
        }
    }

    /// Sets up every attached secondary ENI's interface and makes the pool use the IPs
    /// EC2 lists on the ENIs that are ready. Returns whether an attached ENI is not
    /// ready yet.
    async fn sync(&mut self, enis: &[Eni]) -> bool {
        // (ENI, its subnet, device index, interface set up)
        let mut seen: Vec<(&Eni, Ipv4Net, u32, bool)> = Vec::new();
        let mut pending = false;
        let host = match host_netlink() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("eni reconcile: {e}");
                None
            }
        };
        for eni in enis.iter().filter(|e| attached(e)) {
            let device_index = eni.attachment.as_ref().expect("attached").device_index;
            let Some(subnet) = self.subnet_of(eni).await else {
                pending = true;
                continue;
            };
            let ready =
                device_index == 0 || self.set_up(host.as_ref(), eni, subnet, device_index).await;
            pending |= !ready;
            seen.push((eni, subnet, device_index, ready));
        }
        let mut state = self.lock();
        for (eni, subnet, device_index, ready) in &seen {
            // An ENI joins the pool once its interface is set up; one already in it stays
            // while a repair fails (its pods still use it), following EC2's list of IPs.
            if !ready && !state.ipam.has_eni(&eni.id) {
                continue;
            }
            let ips: BTreeSet<Ipv4Addr> = eni
                .secondary_ips
                .iter()
                .copied()
                .filter(|ip| subnet.contains(ip) && !aws_reserved(*subnet, *ip))
                .collect();
            let prefixes: BTreeSet<Ipv4Net> = eni
                .prefixes
                .iter()
                .copied()
                .filter(|p| subnet.contains(p))
                .collect();
            let report =
                state
                    .ipam
                    .sync_eni(&eni.id, *device_index, eni.primary_ip, &ips, &prefixes);
            log_report(&eni.id, &report);
        }
        let ids: HashSet<&str> = enis
            .iter()
            .filter(|e| attached(e))
            .map(|e| e.id.as_str())
            .collect();
        for (id, report) in state.ipam.retain_enis(&ids) {
            tracing::info!(eni = %id, "ENI no longer attached: its IPs left the pool");
            log_report(&id, &report);
        }
        pending
    }

    /// Sets up a secondary ENI's interface and route table; whether it is ready.
    async fn set_up(
        &self,
        host: Option<&rtnetlink::Handle>,
        eni: &Eni,
        subnet: Ipv4Net,
        device_index: u32,
    ) -> bool {
        let Some(host) = host else {
            return false;
        };
        let Ok(mac) = eni.mac.parse::<MacAddr>() else {
            tracing::warn!(eni = %eni.id, mac = %eni.mac, "EC2 gave the ENI an invalid MAC");
            return false;
        };
        let net = EniNetwork {
            mac,
            primary_ip: eni.primary_ip,
            subnet,
            table: route_table(device_index),
        };
        match setup_eni_network(host, &net).await {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(eni = %eni.id, "setting up the ENI's interface: {e}");
                false
            }
        }
    }

    /// The ENI's subnet, from IMDS as aws-node reads it (cached: it never changes).
    async fn subnet_of(&mut self, eni: &Eni) -> Option<Ipv4Net> {
        if let Some(s) = self.subnets.get(&eni.mac) {
            return Some(*s);
        }
        match self.imds.interface(&eni.mac).await {
            Ok(Some(i)) => {
                self.subnets.insert(eni.mac.clone(), i.subnet_cidr);
                Some(i.subnet_cidr)
            }
            // IMDS catches up with EC2 a moment after an attach.
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(eni = %eni.id, "{e}");
                None
            }
        }
    }

    async fn act(&mut self, action: Action, enis: &[Eni]) -> anyhow::Result<()> {
        match action {
            Action::None => Ok(()),
            Action::Assign { eni, count } => {
                self.ec2.assign_ips(&eni, count).await?;
                Ok(())
            }
            Action::AssignPrefixes { eni, count } => {
                match self.ec2.assign_prefixes(&eni, count).await {
                    Err(e) if e.is_insufficient_cidr_blocks() => self.fall_back_to_ips(&e),
                    r => r?,
                }
                Ok(())
            }
            Action::CreateEni { ips, prefixes } => {
                match self.create_eni(ips, prefixes, enis).await {
                    Err(e) if e.is_insufficient_cidr_blocks() => self.fall_back_to_ips(&e),
                    r => r?,
                }
                Ok(())
            }
            Action::Unassign { eni, count } => {
                let ips = self.lock().ipam.take_free(&eni, count, now_ms());
                if !ips.is_empty() {
                    tracing::info!(eni = %eni, ?ips, "releasing IPs to EC2");
                    // On failure EC2 still lists them, and the next sync puts them back.
                    self.ec2.unassign_ips(&eni, &ips).await?;
                }
                Ok(())
            }
            Action::UnassignPrefixes { eni, count } => {
                let prefixes = self.lock().ipam.take_prefixes(&eni, count, now_ms());
                if !prefixes.is_empty() {
                    tracing::info!(eni = %eni, ?prefixes, "releasing prefixes to EC2");
                    // As with IPs: on failure the next sync puts them back.
                    self.ec2.unassign_prefixes(&eni, &prefixes).await?;
                }
                Ok(())
            }
            Action::FreeEni { eni } => self.free_eni(&eni, enis).await,
        }
    }

    async fn create_eni(&mut self, ips: u32, prefixes: u32, enis: &[Eni]) -> Result<(), Ec2Error> {
        let used: HashSet<u32> = enis
            .iter()
            .filter_map(|e| e.attachment.as_ref().map(|a| a.device_index))
            .collect();
        let Some(device_index) = (1..self.targets.max_enis).find(|i| !used.contains(i)) else {
            return Ok(());
        };
        let instance_id = self.node.instance.instance_id.clone();
        let mut tags = vec![(TAG_INSTANCE_ID.to_string(), instance_id.clone())];
        if let Some(cluster) = &self.config.cluster_name {
            tags.push((TAG_CLUSTER_NAME.to_string(), cluster.clone()));
        }
        tags.extend(self.config.additional_eni_tags.iter().cloned());
        let new = NewEni {
            subnet_id: self.node.subnet_id.clone(),
            security_groups: self.node.security_groups.clone(),
            description: format!("aws-K8S-{instance_id}"),
            tags,
            secondary_ips: ips,
            prefixes,
        };
        let eni = self.ec2.create_eni(&new).await?;
        tracing::info!(eni = %eni.id, device_index, ips, prefixes, "created an ENI");
        if let Err(e) = self
            .ec2
            .attach_eni(&eni.id, &instance_id, device_index)
            .await
        {
            // An ENI we cannot attach is only a cost: give it back.
            if let Err(d) = self.ec2.delete_eni(&eni.id).await {
                tracing::warn!(eni = %eni.id, "deleting the ENI that failed to attach: {d}");
            }
            return Err(e);
        }
        tracing::info!(eni = %eni.id, device_index, "attached the ENI; waiting for its interface");
        let Ok(mac) = eni.mac.parse::<MacAddr>() else {
            return Ok(());
        };
        let deadline = Instant::now() + PLUG_WAIT;
        while Instant::now() < deadline {
            let found = match host_netlink() {
                Ok(h) => matches!(
                    crate::net::veth::find_link_by_mac(&h, mac).await,
                    Ok(Some(_))
                ),
                Err(_) => false,
            };
            if found {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(eni = %eni.id, mac = %eni.mac, "no interface with the ENI's MAC appeared within {PLUG_WAIT:?}");
        Ok(())
    }

    async fn free_eni(&mut self, id: &str, enis: &[Eni]) -> anyhow::Result<()> {
        let Some(attachment) = enis
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| e.attachment.clone())
        else {
            return Ok(());
        };
        if !self.lock().ipam.take_eni(id, now_ms()) {
            return Ok(());
        }
        tracing::info!(eni = %id, device_index = attachment.device_index, "detaching an unused ENI");
        self.ec2.detach_eni(&attachment.id).await?;
        // EC2 refuses to delete an ENI until the detach is complete.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let still = self
                .ec2
                .attached_enis(&self.node.instance.instance_id)
                .await?
                .iter()
                .any(|e| e.id == id);
            if !still {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("{id} is still attached 30 s after DetachNetworkInterface");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.ec2.delete_eni(id).await?;
        tracing::info!(eni = %id, "deleted the ENI");
        Ok(())
    }

    /// ENIs tagged as this instance's but attached nowhere: a crash between detach and
    /// delete left them. Best effort.
    async fn delete_leaked_enis(&self) {
        let leaked = match self
            .ec2
            .detached_enis_tagged(TAG_INSTANCE_ID, &self.node.instance.instance_id)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("looking for leaked ENIs: {e}");
                return;
            }
        };
        for eni in leaked {
            match self.ec2.delete_eni(&eni.id).await {
                Ok(()) => tracing::info!(eni = %eni.id, "deleted a leaked ENI"),
                Err(e) => tracing::warn!(eni = %eni.id, "deleting a leaked ENI: {e}"),
            }
        }
    }
}

fn log_report(eni: &str, r: &SyncReport) {
    if !r.added.is_empty() {
        tracing::info!(eni, ips = ?r.added, "IPs joined the pool");
    }
    if !r.added_prefixes.is_empty() {
        tracing::info!(eni, prefixes = ?r.added_prefixes, "prefixes joined the pool");
    }
    if !r.dropped.is_empty() {
        tracing::info!(eni, ips = ?r.dropped, "IPs EC2 no longer lists left the pool");
    }
    if !r.dropped_prefixes.is_empty() {
        tracing::info!(eni, prefixes = ?r.dropped_prefixes, "prefixes EC2 no longer lists left the pool");
    }
    for (key, ip) in &r.orphaned {
        tracing::error!(
            eni, %ip, container = %key.container_id, ifname = %key.ifname,
            "EC2 no longer lists an assigned IP on this instance: the pod keeps it, but its traffic will not flow; recreate the pod"
        );
    }
    if !r.duplicates.is_empty() {
        tracing::warn!(eni, ips = ?r.duplicates, "EC2 lists IPs that another ENI already holds; not used twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_reserves_five_addresses_per_subnet() {
        let s: Ipv4Net = "10.0.0.0/20".parse().unwrap();
        for ip in [
            "10.0.0.0",
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.3",
            "10.0.15.255",
        ] {
            assert!(aws_reserved(s, ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.4", "10.0.15.254", "10.0.7.0"] {
            assert!(!aws_reserved(s, ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn max_eni_caps_the_instance_limit() {
        let limits = crate::aws::limits::limits("m5.large").unwrap();
        let mut c = EniConfig::from_lookup(&|_| None).unwrap();
        let t = warm_targets(&c, limits);
        assert_eq!((t.max_enis, t.ips_per_eni), (3, 9));
        c.max_eni = Some(2);
        assert_eq!(warm_targets(&c, limits).max_enis, 2);
        c.max_eni = Some(8);
        assert_eq!(warm_targets(&c, limits).max_enis, 3);
    }

    /// The pool's capacity with every slot of every ENI full, plus the host-network
    /// pods: what `ipamd max-pods` tells the kubelet, before its ceiling.
    fn capacity_pods(t: &WarmTargets) -> u32 {
        let per_slot = match t.source {
            Source::Prefixes { .. } => crate::ipam::warm::IPS_PER_PREFIX,
            _ => 1,
        };
        t.max_enis * t.ips_per_eni * per_slot + 2
    }

    #[test]
    fn prefix_delegation_on_nitro_only_and_max_pods_agrees() {
        use crate::aws::limits::{MaxPodsOptions, max_pods};
        let on = EniConfig::from_lookup(&|k| {
            (k == "ENABLE_PREFIX_DELEGATION").then(|| "true".to_string())
        })
        .unwrap();
        let pd = MaxPodsOptions {
            prefix_delegation: true,
            custom_networking: false,
        };
        // With prefixes the pool may hold more than max-pods' ceiling lets the kubelet
        // run (t3.small: 3 ENIs x 3 slots x 16 + 2 = 146, max-pods 110), never less.
        for (ty, nitro) in [("t3.small", true), ("m5.large", true), ("m4.large", false)] {
            let limits = crate::aws::limits::limits(ty).unwrap();
            let t = warm_targets(&on, limits);
            assert_eq!(
                matches!(t.source, Source::Prefixes { warm_prefix: 1 }),
                nitro,
                "{ty}"
            );
            let kubelet = max_pods(ty, pd).unwrap();
            assert_eq!(kubelet, capacity_pods(&t).min(kubelet), "{ty}");
            if !nitro {
                assert_eq!(
                    kubelet,
                    capacity_pods(&t),
                    "{ty}: the same secondary-IP number"
                );
            }
        }
    }
}
