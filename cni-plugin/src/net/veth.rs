//! Link-level work: naming the host side of a pod's veth pair, creating the pair across
//! namespaces, and finding, raising and deleting links.

use std::fmt;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use sha2::{Digest, Sha256};

use super::{NetError, NetNs, netlink_errno, nl};
use crate::cni::args::validate_ifname;

/// The host-side veth name of a pod: "eni" + 11 hex digits of a hash of "namespace.name",
/// 14 bytes, within the kernel's 15. Stable per pod, so a retried ADD or a DEL without
/// state finds the same link; the "eni" prefix is what the AWS VPC CNI uses, so
/// operators' tooling that matches it keeps working. (AWS hashes with SHA-1; we use
/// SHA-256, so names differ from aws-node's for the same pod.)
pub fn host_veth_name(namespace: &str, pod_name: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}.{pod_name}").as_bytes());
    format!("{HOST_VETH_PREFIX}{}", &hex::encode(digest)[..11])
}

/// What every host veth's name starts with (see [`host_veth_name`]).
pub const HOST_VETH_PREFIX: &str = "eni";

/// The host veth of an attachment: per pod when the runtime passed the Kubernetes
/// names, else per container (a plain CNI runtime).
pub fn attachment_host_veth(pod_namespace: &str, pod_name: &str, container_id: &str) -> String {
    if pod_namespace.is_empty() && pod_name.is_empty() {
        host_veth_name("", container_id)
    } else {
        host_veth_name(pod_namespace, pod_name)
    }
}

/// Refuses names the kernel would reject, before anything is created.
pub fn check_ifname(name: &str) -> Result<(), NetError> {
    validate_ifname(name).map_err(|why| NetError::InvalidName {
        name: name.to_string(),
        why,
    })
}

/// An Ethernet address, printed as the CNI result and `ip` print it (aa:bb:cc:dd:ee:ff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    /// `aa:bb:cc:dd:ee:ff`, either case (EC2 and IMDS print lower case).
    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bytes: Vec<u8> = s
            .split(':')
            .map(|p| {
                (p.len() == 2)
                    .then(|| u8::from_str_radix(p, 16).ok())
                    .flatten()
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
        <[u8; 6]>::try_from(bytes)
            .map(MacAddr)
            .map_err(|_| format!("{s:?} is not a MAC address"))
    }
}

/// What we need to know about an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    pub up: bool,
    /// The peer's index (`IFLA_LINK`) for a veth, in the peer's namespace.
    pub peer_index: Option<u32>,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            name: String::new(),
            index: msg.header.index,
            mac: MacAddr::default(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            peer_index: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Link(i) => info.peer_index = Some(*i),
                LinkAttribute::Address(a) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(a.as_slice()) {
                        info.mac = MacAddr(mac);
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// Looks a link up by name; `None` if there is no such link in the handle's namespace.
pub async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkInfo>, NetError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(msg) => Ok(msg.as_ref().map(LinkInfo::from_message)),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

/// Looks a link up by its Ethernet address (how an ENI's interface is found, whatever
/// the OS named it); `None` if no link has it.
pub async fn find_link_by_mac(handle: &Handle, mac: MacAddr) -> Result<Option<LinkInfo>, NetError> {
    let mut links = handle.link().get().execute();
    while let Some(msg) = links
        .try_next()
        .await
        .map_err(nl(format!("list links looking for {mac}")))?
    {
        let info = LinkInfo::from_message(&msg);
        if info.mac == mac {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

/// Every link in the handle's namespace.
pub async fn list_links(handle: &Handle) -> Result<Vec<LinkInfo>, NetError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))?;
    Ok(links.iter().map(LinkInfo::from_message).collect())
}

/// Like [`find_link`], for links this setup just created and must still exist.
pub async fn expect_link(handle: &Handle, name: &str) -> Result<LinkInfo, NetError> {
    find_link(handle, name)
        .await?
        .ok_or_else(|| NetError::Vanished(format!("link {name}")))
}

/// Creates a veth pair whose peer is born inside `peer_ns` under its final name, so the
/// pod never sees a temporary name and no rename or move is needed.
pub async fn create_veth_pair(
    host: &Handle,
    host_name: &str,
    peer_name: &str,
    peer_ns: &NetNs,
    mtu: u32,
) -> Result<(), NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer_name)
        .mtu(mtu)
        .setns_by_fd(peer_ns.raw_fd())
        .build();
    let msg = LinkVeth::new(host_name, peer_name)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(msg).execute().await.map_err(nl(format!(
        "create veth pair {host_name} <-> {peer_name} in {}",
        peer_ns.path().display()
    )))
}

pub async fn set_up(handle: &Handle, link: &LinkInfo) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {} up", link.name)))
}

/// Deletes a link by name; returns whether it existed. Deleting one end of a veth pair
/// removes the other end and every route through either.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        // Raced with another deleter (or the pod's namespace going away): same outcome.
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(format!("delete link {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("default", "web-0");
        assert_eq!(a, host_veth_name("default", "web-0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("eni"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        check_ifname(&a).unwrap();
        assert_ne!(a, host_veth_name("default", "web-1"));
        assert_ne!(a, host_veth_name("kube-system", "web-0"));
        // The separator is part of the hashed text: "a.b"+"c" differs from "a"+"b.c".
        assert_ne!(host_veth_name("a.b", "c"), host_veth_name("a", "b.c.x"));
    }

    #[test]
    fn host_veth_name_is_sha256_of_namespace_dot_name() {
        // From `printf default.web-0 | sha256sum`: 14bf1fdb9f81e894...
        assert_eq!(host_veth_name("default", "web-0"), "eni14bf1fdb9f8");
    }

    #[test]
    fn mac_parses_either_case_and_refuses_garbage() {
        let mac: MacAddr = "02:00:0A:ff:10:01".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 10, 255, 16, 1]));
        for bad in [
            "",
            "02:00:0a:ff:10",
            "02:00:0a:ff:10:01:02",
            "2:00:0a:ff:10:01",
            "zz:00:0a:ff:10:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_prints_lowercase_colon_separated() {
        assert_eq!(
            MacAddr([0x0a, 0xbc, 0, 1, 0xfe, 0xff]).to_string(),
            "0a:bc:00:01:fe:ff"
        );
    }
}
