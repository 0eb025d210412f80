//! The node side of a secondary ENI, as aws-node sets it up:
//!
//! ```text
//!  ethN (found by the ENI's MAC)   up, <ENI primary IP>/<subnet prefix> noprefixroute
//!  table <device number + 1>:      <gateway>/32 dev ethN scope link
//!                                  default via <gateway> dev ethN
//! ```
//!
//! The gateway is the subnet's first address (the VPC router). No subnet route goes into
//! the main table, so everything not from a pod on this ENI keeps using the primary ENI;
//! pods are steered here by the per-pod `from <pod IP> lookup <table>` rules that
//! [`super::pod`] adds. Everything is idempotent: the reconcile loop calls it again and
//! again, and it repairs what is missing.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::route::{RouteHeader, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::veth::{find_link_by_mac, set_up};
use super::{LinkInfo, MacAddr, NetError, ipv4_routes, netlink_errno, nl};

/// What the node needs to know about one secondary ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNetwork {
    pub mac: MacAddr,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub table: u32,
}

/// The VPC router of `subnet`: its network address + 1, as AWS reserves it.
pub fn subnet_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Sets up (or repairs) the ENI's interface and route table. `Ok(None)` when no
/// interface has the ENI's MAC yet (EC2 attached it, the OS has not plugged it in).
pub async fn setup_eni_network(
    host: &Handle,
    eni: &EniNetwork,
) -> Result<Option<LinkInfo>, NetError> {
    let Some(link) = find_link_by_mac(host, eni.mac).await? else {
        return Ok(None);
    };
    if !link.up {
        set_up(host, &link).await?;
    }
    ensure_address(host, &link, eni).await?;
    let routes = ipv4_routes(host).await?;
    // A subnet route through this link in the main table (an address added without
    // noprefixroute, by hand or by an older ipamd) would pull the primary ENI's traffic
    // onto this one.
    for r in routes.iter().filter(|r| {
        r.table == u32::from(RouteHeader::RT_TABLE_MAIN)
            && r.oif == Some(link.index)
            && r.dst == (eni.subnet.network(), eni.subnet.prefix_len())
    }) {
        match host.route().del(r.message.clone()).execute().await {
            Err(e) if netlink_errno(&e) != Some(libc::ESRCH) => {
                return Err(nl(format!(
                    "delete main-table route {} dev {}",
                    eni.subnet, link.name
                ))(e));
            }
            _ => {}
        }
    }
    let gw = subnet_gateway(eni.subnet);
    let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gw, 32)
        .output_interface(link.index)
        .scope(RouteScope::Link)
        .table_id(eni.table)
        .build();
    host.route()
        .add(to_gateway)
        .replace()
        .execute()
        .await
        .map_err(nl(format!(
            "add route {gw}/32 dev {} table {}",
            link.name, eni.table
        )))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gw)
        .output_interface(link.index)
        .table_id(eni.table)
        .build();
    host.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(nl(format!(
            "add default route via {gw} dev {} table {}",
            link.name, eni.table
        )))?;
    Ok(Some(link))
}

async fn ensure_address(host: &Handle, link: &LinkInfo, eni: &EniNetwork) -> Result<(), NetError> {
    let prefix = eni.subnet.prefix_len();
    let present = host
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_filter(|a| {
            let ok = a.header.prefix_len == prefix
                && a.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Address(IpAddr::V4(x)) if *x == eni.primary_ip)
                });
            futures::future::ready(ok)
        })
        .try_next()
        .await
        .map_err(nl(format!("list addresses of {}", link.name)))?
        .is_some();
    if present {
        return Ok(());
    }
    let mut add = host
        .address()
        .add(link.index, IpAddr::V4(eni.primary_ip), prefix);
    add.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
    match add.execute().await {
        Err(e) if netlink_errno(&e) != Some(libc::EEXIST) => Err(nl(format!(
            "add {}/{prefix} to {}",
            eni.primary_ip, link.name
        ))(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_subnets_first_address() {
        assert_eq!(
            subnet_gateway("10.0.16.0/20".parse().unwrap()),
            Ipv4Addr::new(10, 0, 16, 1)
        );
    }
}
