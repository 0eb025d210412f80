//! One pod's plumbing, the same in eni and podcidr mode:
//!
//! ```text
//!  pod netns                               host
//!  eth0  IP/32                 <-veth->    eniXXXXXXXXXXX (no address)
//!        169.254.1.1/32 scope link         IP/32 dev eniXXX scope link   (main table)
//!        default via 169.254.1.1           rule  512: to IP lookup main  (eni mode)
//!        neigh 169.254.1.1 lladdr <host veth MAC> PERMANENT
//!                                          rule 1536: from IP [to VPC CIDR] lookup <ENI table>
//! ```
//!
//! The pod's gateway is a link-local address nobody owns: the permanent neighbour entry
//! makes every packet the pod sends land on the host veth, so the host needs neither an
//! address on the veth nor proxy ARP.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::veth::{check_ifname, create_veth_pair, delete_link, expect_link, find_link, set_up};
use super::{LinkInfo, NetError, NetNs, host_netlink, netlink_errno, nl};

/// The pod's default gateway; see the module comment.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// `to <pod IP> lookup main`: replies to the pod use the host route, ahead of ENI tables.
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// `from <pod IP> lookup <table>`: the pod's traffic leaves through the ENI holding its IP.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;

pub(crate) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Everything that describes one pod's attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns_path: PathBuf,
    /// The pod-side interface name (CNI_IFNAME, usually "eth0").
    pub ifname: String,
    /// The host-side veth name, from [`super::host_veth_name`].
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    /// The route table of the ENI holding `ip` (eni mode); `None` adds no policy rules.
    pub table: Option<u32>,
    /// What the from-pod rule covers: one rule per CIDR (eni mode with SNAT on the node:
    /// the VPC's CIDRs, so traffic leaving the VPC takes the main table and the primary
    /// ENI, where it is SNATed), or every destination when empty.
    pub rule_destinations: Vec<Ipv4Net>,
}

/// Both ends of the pair as they ended up, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinks {
    pub host: LinkInfo,
    pub pod: LinkInfo,
}

/// Creates the pod's attachment. Input is checked before anything changes; if a later
/// step fails, what was created is removed again, so a failed ADD leaves nothing behind.
/// Must be called from within a tokio runtime.
pub async fn setup_pod_network(pod: &PodNetwork) -> Result<PodLinks, NetError> {
    check_ifname(&pod.ifname)?;
    check_ifname(&pod.host_veth)?;
    let ns = NetNs::open(&pod.netns_path)?;
    let host = host_netlink()?;
    let inside = ns.netlink()?;
    if let Some(existing) = find_link(&inside, &pod.ifname).await?
        && !is_detached_pair(&host, &existing, &pod.host_veth).await?
    {
        return Err(NetError::AlreadyExists {
            name: pod.ifname.clone(),
            netns: pod.netns_path.clone(),
        });
    }

    match build(pod, &ns, &host, &inside).await {
        Ok(links) => Ok(links),
        Err(e) => {
            // Best effort: the setup error is what the caller needs to see.
            let _ = teardown_with(&host, &pod.host_veth, pod.ip, true, Pair::Delete).await;
            Err(e)
        }
    }
}

/// Whether `pod_link` is the pod end of a pair a DEL of this pod detached (see
/// [`teardown_pod_network`]): its peer is our host veth, and nothing is routed through
/// that any more. Such a pair is replaced; any other interface of that name is not ours.
async fn is_detached_pair(
    host: &Handle,
    pod_link: &LinkInfo,
    host_veth: &str,
) -> Result<bool, NetError> {
    let Some(veth) = find_link(host, host_veth).await? else {
        return Ok(false);
    };
    if pod_link.peer_index != Some(veth.index) {
        return Ok(false);
    }
    let routed = ipv4_routes(host)
        .await?
        .iter()
        .any(|r| r.oif == Some(veth.index));
    Ok(!routed)
}

async fn build(
    pod: &PodNetwork,
    ns: &NetNs,
    host: &Handle,
    inside: &Handle,
) -> Result<PodLinks, NetError> {
    // A host veth with this name is left over from an earlier sandbox of the same pod
    // (names are per pod) whose DEL never came; it is dead, replace it.
    delete_link(host, &pod.host_veth).await?;
    // Rules for this IP can only be leftovers too: ipamd has just handed the IP to us.
    delete_rules_for(host, pod.ip).await?;

    // Pods reach each other and the world only through the host, as with the reference
    // ptp plugin, which turns forwarding on in every ADD: a fresh machine has it off.
    enable_ipv4_forwarding()?;
    create_veth_pair(host, &pod.host_veth, &pod.ifname, ns, pod.mtu).await?;
    let host_link = expect_link(host, &pod.host_veth).await?;
    let pod_link = expect_link(inside, &pod.ifname).await?;

    configure_pod_side(inside, &pod_link, pod.ip, host_link.mac.0).await?;
    configure_host_side(host, &host_link, pod).await?;

    Ok(PodLinks {
        host: expect_link(host, &pod.host_veth).await?,
        pod: expect_link(inside, &pod.ifname).await?,
    })
}

/// `net.ipv4.ip_forward=1` in the caller's (the host's) network namespace; written only
/// when it is off, so an ADD does not contend on the sysctl.
fn enable_ipv4_forwarding() -> Result<(), NetError> {
    const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
    let io = |source| NetError::Sysctl {
        op: format!("enable IPv4 forwarding through {SYSCTL}"),
        source,
    };
    if std::fs::read_to_string(SYSCTL).map_err(io)?.trim() != "1" {
        std::fs::write(SYSCTL, "1").map_err(io)?;
    }
    Ok(())
}

async fn configure_pod_side(
    inside: &Handle,
    eth: &LinkInfo,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(), NetError> {
    inside
        .address()
        .add(eth.index, IpAddr::V4(ip), 32)
        .execute()
        .await
        .map_err(nl(format!("add {ip}/32 to {} in the pod", eth.name)))?;
    // Routes need the link up (the kernel refuses them on a down device).
    set_up(inside, eth).await?;
    if let Some(lo) = find_link(inside, "lo").await? {
        set_up(inside, &lo).await?;
    }
    let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(eth.index)
        .scope(RouteScope::Link)
        .build();
    inside
        .route()
        .add(gateway_route)
        .execute()
        .await
        .map_err(nl(format!(
            "add route {POD_GATEWAY}/32 dev {} in the pod",
            eth.name
        )))?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(eth.index)
        .build();
    inside
        .route()
        .add(default_route)
        .execute()
        .await
        .map_err(nl(format!(
            "add default route via {POD_GATEWAY} in the pod"
        )))?;
    inside
        .neighbours()
        .add(eth.index, IpAddr::V4(POD_GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("add neighbour {POD_GATEWAY} in the pod")))
}

async fn configure_host_side(
    host: &Handle,
    veth: &LinkInfo,
    pod: &PodNetwork,
) -> Result<(), NetError> {
    set_up(host, veth).await?;
    add_host_route(host, veth, pod.ip).await?;
    if let Some(table) = pod.table {
        add_to_pod_rule(host, pod.ip).await?;
        for dst in from_pod_destinations(&pod.rule_destinations) {
            add_from_pod_rule(host, pod.ip, table, dst).await?;
        }
    }
    Ok(())
}

/// `ip/32 dev veth scope link` in the main table.
pub(crate) async fn add_host_route(
    host: &Handle,
    veth: &LinkInfo,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(veth.index)
        .scope(RouteScope::Link)
        .build();
    // Replace: a stale route to this IP through a dead veth must not block the new pod.
    host.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("add host route {ip}/32 dev {}", veth.name)))
}

/// `to ip lookup main`, at [`TO_POD_RULE_PRIORITY`].
pub(crate) async fn add_to_pod_rule(host: &Handle, ip: Ipv4Addr) -> Result<(), NetError> {
    host.rule()
        .add()
        .v4()
        .destination_prefix(ip, 32)
        .table_id(MAIN_TABLE)
        .priority(TO_POD_RULE_PRIORITY)
        .action(RuleAction::ToTable)
        .execute()
        .await
        .map_err(nl(format!(
            "add rule 'to {ip} lookup main' priority {TO_POD_RULE_PRIORITY}"
        )))
}

/// `from ip [to dst] lookup table`, at [`FROM_POD_RULE_PRIORITY`].
pub(crate) async fn add_from_pod_rule(
    host: &Handle,
    ip: Ipv4Addr,
    table: u32,
    dst: Ipv4Net,
) -> Result<(), NetError> {
    let mut from_pod = host
        .rule()
        .add()
        .v4()
        .source_prefix(ip, 32)
        .table_id(table)
        .priority(FROM_POD_RULE_PRIORITY)
        .action(RuleAction::ToTable);
    if dst.prefix_len() > 0 {
        from_pod = from_pod.destination_prefix(dst.network(), dst.prefix_len());
    }
    from_pod.execute().await.map_err(nl(format!(
        "add rule 'from {ip} to {dst} lookup {table}' priority {FROM_POD_RULE_PRIORITY}"
    )))
}

/// One from-pod rule per destination; none listed means one rule for everything.
pub(crate) fn from_pod_destinations(listed: &[Ipv4Net]) -> Vec<Ipv4Net> {
    if listed.is_empty() {
        vec![Ipv4Net::default()]
    } else {
        listed.to_vec()
    }
}

/// Whether `rules` hold `to ip lookup main` at [`TO_POD_RULE_PRIORITY`].
pub(crate) fn has_to_pod_rule(rules: &[Rule4], ip: Ipv4Addr) -> bool {
    rules.iter().any(|r| {
        r.priority == TO_POD_RULE_PRIORITY
            && r.table == MAIN_TABLE
            && r.dst == Some((ip, 32))
            && r.src.is_none()
    })
}

/// Whether `rules` hold `from ip [to dst] lookup table` at [`FROM_POD_RULE_PRIORITY`].
pub(crate) fn has_from_pod_rule(rules: &[Rule4], ip: Ipv4Addr, table: u32, dst: Ipv4Net) -> bool {
    let want_dst = (dst.prefix_len() > 0).then(|| (dst.network(), dst.prefix_len()));
    rules.iter().any(|r| {
        r.priority == FROM_POD_RULE_PRIORITY
            && r.table == table
            && r.src == Some((ip, 32))
            && r.dst == want_dst
    })
}

/// What a teardown does with the veth pair once the pod's routes and rules are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    /// Leave it to die with the pod's netns, which the runtime deletes right after DEL
    /// (as the AWS VPC CNI does): deleting a veth costs an RCU grace period, most of a
    /// DEL's time, while a netns is destroyed in the background. Without its route and
    /// rules the pair carries nothing; an ADD into the same netns replaces it.
    Detach,
    /// Delete it now: nobody else will (a failed ADD, GC of a netns already gone).
    Delete,
}

/// Detaches the pod: removes its policy rules and its host route, and leaves the veth
/// pair to go with the pod's netns ([`Pair::Detach`]). Idempotent: anything already
/// gone counts as removed, and it needs neither the pod's namespace nor its route
/// table. Must be called from within a tokio runtime.
pub async fn teardown_pod_network(host_veth: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    check_ifname(host_veth)?;
    let host = host_netlink()?;
    teardown_with(&host, host_veth, ip, false, Pair::Detach).await
}

/// [`teardown_pod_network`] of an address ipamd has just released from this very
/// attachment: nobody else can hold it, so its rules and route go even when they lead
/// to a link that is not `host_veth` (the pod's netns was deleted and its veth is still
/// being destroyed by the kernel, or the veth is unknown).
pub async fn teardown_released(host_veth: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    check_ifname(host_veth)?;
    let host = host_netlink()?;
    teardown_with(&host, host_veth, ip, true, Pair::Detach).await
}

async fn teardown_with(
    host: &Handle,
    host_veth: &str,
    ip: Ipv4Addr,
    released: bool,
    pair: Pair,
) -> Result<(), NetError> {
    let veth = find_link(host, host_veth).await?;
    let route = ipv4_routes(host)
        .await?
        .into_iter()
        .find(|r| r.table == MAIN_TABLE && r.dst == (ip, 32));
    // If the IP's host route leads to another link, the IP already belongs to a newer
    // pod (a late or repeated DEL): its rules and route are not ours to remove.
    let taken_over = !released
        && match (&route, &veth) {
            (Some(r), Some(v)) => r.oif != Some(v.index),
            (Some(_), None) => true,
            (None, _) => false,
        };
    if !taken_over {
        delete_rules_for(host, ip).await?;
        if let Some(r) = route {
            delete_route(host, r).await?;
        }
    }
    if pair == Pair::Delete {
        delete_link(host, host_veth).await?;
    }
    Ok(())
}

/// GC's teardown of an attachment ipamd has released: the rules of `ip`, its host route,
/// and `host_veth` only if that route goes through it. Host veth names are per pod, so a
/// veth the route does not name may be a newer sandbox's, and stays.
/// Must be called from within a tokio runtime.
pub async fn teardown_stale(host_veth: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    check_ifname(host_veth)?;
    let host = host_netlink()?;
    let veth = find_link(&host, host_veth).await?;
    let route = ipv4_routes(&host)
        .await?
        .into_iter()
        .find(|r| r.table == MAIN_TABLE && r.dst == (ip, 32));
    let through_veth = matches!((&route, &veth), (Some(r), Some(v)) if r.oif == Some(v.index));
    if through_veth {
        return teardown_with(&host, host_veth, ip, true, Pair::Delete).await;
    }
    // Nobody holds `ip` now: whatever still routes it is stale.
    delete_rules_for(&host, ip).await?;
    if let Some(r) = route {
        delete_route(&host, r).await?;
    }
    Ok(())
}

/// Reports every piece of the attachment that is missing or wrong (for CNI CHECK).
/// Must be called from within a tokio runtime.
pub async fn check_pod_network(pod: &PodNetwork) -> Result<(), NetError> {
    let host = host_netlink()?;
    let mut missing = Vec::new();

    let veth = find_link(&host, &pod.host_veth).await?;
    match &veth {
        None => missing.push(format!("host veth {} does not exist", pod.host_veth)),
        Some(v) if !v.up => missing.push(format!("host veth {} is down", v.name)),
        Some(_) => {}
    }
    let ip = pod.ip;
    let routes = ipv4_routes(&host).await?;
    let host_route = routes
        .iter()
        .find(|r| r.table == MAIN_TABLE && r.dst == (ip, 32));
    match (host_route, &veth) {
        (None, _) => missing.push(format!("host route {ip}/32 is missing")),
        (Some(r), Some(v)) if r.oif != Some(v.index) => {
            missing.push(format!("host route {ip}/32 does not go through {}", v.name))
        }
        _ => {}
    }
    if let Some(table) = pod.table {
        let rules = ipv4_rules(&host).await?;
        if !has_to_pod_rule(&rules, ip) {
            missing.push(format!(
                "rule 'to {ip} lookup main' priority {TO_POD_RULE_PRIORITY} is missing"
            ));
        }
        for dst in from_pod_destinations(&pod.rule_destinations) {
            if !has_from_pod_rule(&rules, ip, table, dst) {
                let to = if dst.prefix_len() > 0 {
                    format!(" to {dst}")
                } else {
                    String::new()
                };
                missing.push(format!(
                    "rule 'from {ip}{to} lookup {table}' priority {FROM_POD_RULE_PRIORITY} is missing"
                ));
            }
        }
    }

    match NetNs::open(&pod.netns_path) {
        Err(e) => missing.push(e.to_string()),
        Ok(ns) => {
            let inside = ns.netlink()?;
            let host_mac = veth.as_ref().map(|v| v.mac.0);
            check_pod_side(&inside, pod, host_mac, &mut missing).await?;
        }
    }

    if missing.is_empty() {
        Ok(())
    } else {
        Err(NetError::CheckFailed(missing))
    }
}

async fn check_pod_side(
    inside: &Handle,
    pod: &PodNetwork,
    host_mac: Option<[u8; 6]>,
    missing: &mut Vec<String>,
) -> Result<(), NetError> {
    let name = &pod.ifname;
    let Some(eth) = find_link(inside, name).await? else {
        missing.push(format!("{name} does not exist in the pod"));
        return Ok(());
    };
    if !eth.up {
        missing.push(format!("{name} is down in the pod"));
    }
    let has_ip = inside
        .address()
        .get()
        .set_link_index_filter(eth.index)
        .execute()
        .try_filter(|a| {
            let ok = a.header.prefix_len == 32
                && a.attributes.iter().any(
                    |attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(x)) if *x == pod.ip),
                );
            futures::future::ready(ok)
        })
        .try_next()
        .await
        .map_err(nl("list addresses in the pod"))?
        .is_some();
    if !has_ip {
        missing.push(format!("{name} lacks address {}/32 in the pod", pod.ip));
    }
    let routes = ipv4_routes(inside).await?;
    let via_eth = |r: &&Route4| r.table == MAIN_TABLE && r.oif == Some(eth.index);
    if !routes
        .iter()
        .filter(via_eth)
        .any(|r| r.dst == (POD_GATEWAY, 32))
    {
        missing.push(format!(
            "route {POD_GATEWAY}/32 dev {name} is missing in the pod"
        ));
    }
    if !routes
        .iter()
        .filter(via_eth)
        .any(|r| r.dst == (Ipv4Addr::UNSPECIFIED, 0) && r.gateway == Some(POD_GATEWAY))
    {
        missing.push(format!(
            "default route via {POD_GATEWAY} is missing in the pod"
        ));
    }
    let neighbours: Vec<_> = inside
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list neighbours in the pod"))?;
    let gateway_neighbour = neighbours.iter().find(|n| {
        n.header.ifindex == eth.index
            && n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) if *x == POD_GATEWAY)
            })
    });
    let lladdr = |n: &NeighbourMessage| {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
            _ => None,
        })
    };
    let problem = match gateway_neighbour {
        None => Some("is missing"),
        Some(n) if n.header.state != NeighbourState::Permanent => Some("is not permanent"),
        // Without the host veth there is no MAC to compare; that is reported above.
        Some(n) if host_mac.is_some_and(|m| lladdr(n).as_deref() != Some(&m[..])) => {
            Some("does not point at the host veth's MAC")
        }
        Some(_) => None,
    };
    if let Some(problem) = problem {
        missing.push(format!("neighbour {POD_GATEWAY} {problem} in the pod"));
    }
    Ok(())
}

/// An IPv4 route, reduced to what we match on, plus the message to delete it with.
pub(crate) struct Route4 {
    pub dst: (Ipv4Addr, u8),
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub message: netlink_packet_route::route::RouteMessage,
}

pub(crate) async fn ipv4_routes(handle: &Handle) -> Result<Vec<Route4>, NetError> {
    let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let messages: Vec<_> = handle
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list IPv4 routes"))?;
    Ok(messages
        .into_iter()
        .map(|m| {
            let mut r = Route4 {
                dst: (Ipv4Addr::UNSPECIFIED, m.header.destination_prefix_length),
                gateway: None,
                oif: None,
                table: u32::from(m.header.table),
                message: m.clone(),
            };
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => r.dst.0 = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => r.gateway = Some(*a),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Table(t) => r.table = *t,
                    _ => {}
                }
            }
            r
        })
        .collect())
}

/// An IPv4 policy rule, reduced to what we match on, plus the message to delete it with.
pub(crate) struct Rule4 {
    pub priority: u32,
    pub src: Option<(Ipv4Addr, u8)>,
    pub dst: Option<(Ipv4Addr, u8)>,
    pub table: u32,
    pub message: RuleMessage,
}

impl Rule4 {
    /// The pod IP of one of our per-pod rules, if this is one.
    pub fn pod_ip(&self) -> Option<Ipv4Addr> {
        match (self.priority, self.src, self.dst) {
            (FROM_POD_RULE_PRIORITY, Some((ip, 32)), _) => Some(ip),
            (TO_POD_RULE_PRIORITY, _, Some((ip, 32))) => Some(ip),
            _ => None,
        }
    }
}

pub(crate) async fn ipv4_rules(handle: &Handle) -> Result<Vec<Rule4>, NetError> {
    let messages: Vec<_> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list IPv4 policy rules"))?;
    Ok(messages
        .into_iter()
        .map(|m| {
            let mut r = Rule4 {
                priority: 0,
                src: None,
                dst: None,
                table: u32::from(m.header.table),
                message: m.clone(),
            };
            for attr in &m.attributes {
                match attr {
                    RuleAttribute::Priority(p) => r.priority = *p,
                    RuleAttribute::Table(t) => r.table = *t,
                    RuleAttribute::Source(IpAddr::V4(a)) => r.src = Some((*a, m.header.src_len)),
                    RuleAttribute::Destination(IpAddr::V4(a)) => {
                        r.dst = Some((*a, m.header.dst_len))
                    }
                    _ => {}
                }
            }
            r
        })
        .collect())
}

/// Deletes our two rules for `ip`, whatever table the from-pod rule names: a DEL may not
/// know the table any more (ipamd down, state lost), and the IP is what identifies them.
async fn delete_rules_for(host: &Handle, ip: Ipv4Addr) -> Result<(), NetError> {
    for rule in ipv4_rules(host).await? {
        if rule.pod_ip() == Some(ip) {
            delete_rule(host, rule).await?;
        }
    }
    Ok(())
}

/// Deletes one of our per-pod rules; already gone counts as deleted.
pub(crate) async fn delete_rule(host: &Handle, rule: Rule4) -> Result<(), NetError> {
    let what = format!(
        "delete policy rule for {:?} priority {}",
        rule.pod_ip(),
        rule.priority
    );
    match host.rule().del(rule.message).execute().await {
        Err(e) if netlink_errno(&e) != Some(libc::ENOENT) => Err(nl(what)(e)),
        _ => Ok(()),
    }
}

/// Deletes a route; already gone counts as deleted.
pub(crate) async fn delete_route(host: &Handle, route: Route4) -> Result<(), NetError> {
    let (ip, len) = route.dst;
    match host.route().del(route.message).execute().await {
        Err(e) if netlink_errno(&e) != Some(libc::ESRCH) => {
            Err(nl(format!("delete host route {ip}/{len}"))(e))
        }
        _ => Ok(()),
    }
}
