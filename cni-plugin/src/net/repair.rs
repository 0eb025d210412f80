//! ipamd's periodic repair of pods' host plumbing against its store: a live pod whose
//! /32 route or policy rules were deleted (by an operator, a flush, another agent) gets
//! them back, and routes and rules of addresses nobody holds (a teardown that was cut
//! short) go. Only addresses the daemon itself hands out are touched, so plumbing of
//! other networks on the node is left alone.
//!
//! The caller holds the allocator's lock for the whole pass: no address can be assigned
//! between the snapshot and the removals, so a new pod's plumbing is never taken for a
//! stale one.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rtnetlink::Handle;

use super::pod::{
    MAIN_TABLE, add_from_pod_rule, add_host_route, add_to_pod_rule, delete_route, delete_rule,
    from_pod_destinations, has_from_pod_rule, has_to_pod_rule, ipv4_rules,
};
use super::veth::{HOST_VETH_PREFIX, list_links};
use super::{NetError, ipv4_routes, netlink_errno};

/// One held address as the host must route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub ip: Ipv4Addr,
    pub host_veth: String,
    /// eni mode: the table of the ENI holding `ip`; `None`: no policy rules.
    pub table: Option<u32>,
    pub rule_destinations: Vec<Ipv4Net>,
}

/// What a pass changed, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repairs {
    pub restored: Vec<String>,
    pub removed: Vec<String>,
}

/// `wanted`: held addresses whose ADD is surely over (younger ones may still be being
/// plumbed); `held`: every held address; `ours`: whether an address is one this daemon
/// hands out.
pub async fn repair_host(
    host: &Handle,
    wanted: &[Wanted],
    held: &HashSet<Ipv4Addr>,
    ours: &dyn Fn(Ipv4Addr) -> bool,
) -> Result<Repairs, NetError> {
    let mut out = Repairs::default();
    let links: HashMap<String, _> = list_links(host)
        .await?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let pod_veths: HashSet<u32> = links
        .values()
        .filter(|l| l.name.starts_with(HOST_VETH_PREFIX))
        .map(|l| l.index)
        .collect();
    let routes: Vec<_> = ipv4_routes(host)
        .await?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.dst.1 == 32)
        .collect();
    let rules = ipv4_rules(host).await?;

    for w in wanted {
        // A pod whose veth is gone is gone: nothing to restore.
        let Some(veth) = links.get(&w.host_veth) else {
            continue;
        };
        match routes.iter().find(|r| r.dst.0 == w.ip) {
            // Routed elsewhere: this veth is not the address's pod.
            Some(r) if r.oif != Some(veth.index) => continue,
            Some(_) => {}
            None => {
                // Names are per pod, so the veth may be a newer sandbox's: it is ours
                // only if it routes no other held address.
                let routes_another = routes
                    .iter()
                    .any(|r| r.oif == Some(veth.index) && held.contains(&r.dst.0));
                if routes_another {
                    continue;
                }
                add_host_route(host, veth, w.ip).await?;
                out.restored
                    .push(format!("route {}/32 dev {}", w.ip, veth.name));
            }
        }
        let Some(table) = w.table else {
            continue;
        };
        if !has_to_pod_rule(&rules, w.ip) {
            tolerate_exists(add_to_pod_rule(host, w.ip).await)?;
            out.restored.push(format!("rule 'to {} lookup main'", w.ip));
        }
        for dst in from_pod_destinations(&w.rule_destinations) {
            if !has_from_pod_rule(&rules, w.ip, table, dst) {
                tolerate_exists(add_from_pod_rule(host, w.ip, table, dst).await)?;
                out.restored
                    .push(format!("rule 'from {} to {dst} lookup {table}'", w.ip));
            }
        }
    }

    let stale = |ip: Ipv4Addr| ours(ip) && !held.contains(&ip);
    for r in routes {
        let through_pod_veth = r.oif.is_some_and(|i| pod_veths.contains(&i));
        if through_pod_veth && stale(r.dst.0) {
            out.removed.push(format!("route {}/32", r.dst.0));
            delete_route(host, r).await?;
        }
    }
    for rule in rules {
        if let Some(ip) = rule.pod_ip().filter(|ip| stale(*ip)) {
            out.removed
                .push(format!("rule priority {} for {ip}", rule.priority));
            delete_rule(host, rule).await?;
        }
    }
    Ok(out)
}

/// A rule that appeared since the dump (a concurrent ADD) is as good as one we added.
fn tolerate_exists(r: Result<(), NetError>) -> Result<(), NetError> {
    match r {
        Err(NetError::Netlink { source, .. }) if netlink_errno(&source) == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}
