//! podcidr mode across nodes: every other node's pod CIDR is routed via that node's
//! InternalIP, as the Node objects say (what kindnet does in kind clusters). ipamd owns
//! these routes: they carry [`ROUTE_PROTOCOL`], so a stale one (a node deleted, or
//! re-addressed) is found and removed, and nothing else in the main table is touched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use netlink_packet_route::route::RouteProtocol;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::net::{NetError, Route4, ipv4_routes, nl};

/// The rtnetlink protocol number of the routes this module owns (`ip route show proto 78`).
pub const ROUTE_PROTOCOL: u8 = 78;

/// Pod CIDR -> the node address it is reached through.
pub type PeerRoutes = BTreeMap<Ipv4Net, Ipv4Addr>;

/// The routes this node should have: one per other node that has an IPv4 pod CIDR and
/// an IPv4 InternalIP.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> PeerRoutes {
    nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let spec = n.spec.as_ref()?;
            let cidr = spec
                .pod_cidrs
                .iter()
                .flatten()
                .chain(spec.pod_cidr.iter())
                .find_map(|c| c.parse::<Ipv4Net>().ok())?;
            let via = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<Ipv4Addr>().ok())?;
            Some((cidr, via))
        })
        .collect()
}

/// This node's own pod CIDR, once the controller-manager has allocated it.
pub fn own_pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse().ok())
}

/// The routes of ours in the main table now.
pub async fn current(handle: &Handle) -> Result<PeerRoutes, NetError> {
    Ok(ipv4_routes(handle)
        .await?
        .into_iter()
        .filter(|r| r.message.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL))
        .filter_map(|r: Route4| Some((Ipv4Net::new(r.dst.0, r.dst.1).ok()?, r.gateway?)))
        .collect())
}

fn message(cidr: Ipv4Net, via: Ipv4Addr) -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.network(), cidr.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build()
}

/// Makes the routes of ours exactly `want`.
pub async fn sync(handle: &Handle, want: &PeerRoutes) -> Result<(), NetError> {
    let have = current(handle).await?;
    for (cidr, via) in want {
        if have.get(cidr) != Some(via) {
            handle
                .route()
                .add(message(*cidr, *via))
                .replace()
                .execute()
                .await
                .map_err(nl(format!("route {cidr} via {via}")))?;
        }
    }
    for (cidr, via) in have.iter().filter(|(c, _)| !want.contains_key(c)) {
        handle
            .route()
            .del(message(*cidr, *via))
            .execute()
            .await
            .map_err(nl(format!("delete route {cidr} via {via}")))?;
    }
    Ok(())
}

/// Watches the Nodes and keeps the routes in step until the watch ends. Errors of one
/// sync are logged and retried on the next change or relist.
pub async fn run(client: kube::Client, me: String, handle: Handle) {
    let (store, writer) = reflector::store::<Node>();
    let stream = watcher(kube::Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "node watch failed; it retries by itself");
            continue;
        }
        let nodes = store.state();
        let want = desired(nodes.iter().map(|n| n.as_ref()), &me);
        if let Err(e) = sync(&handle, &want).await {
            tracing::warn!(error = %e, "programming routes to other nodes' pod CIDRs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: name.into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn routes_every_other_node_with_a_cidr_and_an_address() {
        let nodes = [
            node("me", Some("10.244.1.0/24"), Some("172.30.0.11")),
            node("b", Some("10.244.2.0/24"), Some("172.30.0.12")),
            node("no-cidr-yet", None, Some("172.30.0.13")),
            node("no-address-yet", Some("10.244.4.0/24"), None),
            node("v6", Some("fd00::/64"), Some("fd00::1")),
        ];
        let want = desired(&nodes, "me");
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![(
                "10.244.2.0/24".parse().unwrap(),
                "172.30.0.12".parse().unwrap()
            )]
        );
        assert_eq!(
            own_pod_cidr(&nodes[0]),
            Some("10.244.1.0/24".parse().unwrap())
        );
        assert_eq!(own_pod_cidr(&nodes[2]), None);
    }
}
