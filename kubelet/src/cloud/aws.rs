//! The instance's identity as upstream's in-tree AWS provider (1.20) derives it, read
//! from instance metadata only: the provider also calls DescribeInstances, which needs
//! credentials and the SDK; every fact the kubelet uses is in IMDS as well.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::NodeAddress;

use super::CloudIdentity;
use super::imds::Imds;

const MACS: &str = "network/interfaces/macs/";

/// Reads the identity of the instance IMDS describes.
pub async fn identity(imds: &mut Imds) -> Result<CloudIdentity> {
    let instance_id = imds.require("instance-id").await?;
    let instance_type = imds.require("instance-type").await?;
    let zone = imds.require("placement/availability-zone").await?;
    // `placement/region` is newer than the zone entry; upstream derives the region from
    // the zone (drop the trailing letter), which is what older IMDS versions leave us.
    let region = match imds.get("placement/region").await? {
        Some(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => region_of_zone(&zone).with_context(|| format!("no region in zone {zone:?}"))?,
    };
    let local_hostname = imds.require("local-hostname").await?;
    let (hostname, _) = parse_local_hostname(&local_hostname);
    let addresses = addresses(imds).await?;
    Ok(CloudIdentity {
        node_name: hostname.to_lowercase(),
        provider_id: format!("aws:///{zone}/{instance_id}"),
        instance_id,
        instance_type,
        region,
        zone,
        addresses,
    })
}

/// `us-east-1a` -> `us-east-1`: upstream strips the zone's last letter.
pub fn region_of_zone(zone: &str) -> Option<String> {
    let last = zone.chars().last()?;
    last.is_ascii_alphabetic()
        .then(|| zone[..zone.len() - 1].to_string())
        .filter(|r| !r.is_empty())
}

/// `local-hostname` may list the DHCP option set's extra domains after the name; upstream
/// keeps the first as the Hostname and qualifies the short name with each domain for the
/// InternalDNS names.
pub fn parse_local_hostname(metadata: &str) -> (String, Vec<String>) {
    let mut fields = metadata.split_whitespace();
    let hostname = fields.next().unwrap_or_default().to_string();
    let short = hostname.split('.').next().unwrap_or_default().to_string();
    let mut dns = vec![hostname.clone()];
    dns.extend(fields.map(|domain| format!("{short}.{domain}")));
    (hostname, dns)
}

/// The addresses upstream's provider reports for its own instance: every private IPv4
/// of every interface, eth0's first (ordered by device-number), the public IPv4, the
/// private name as Hostname and InternalDNS, and the public name.
async fn addresses(imds: &mut Imds) -> Result<Vec<NodeAddress>> {
    let mut macs = Vec::new();
    for mac in imds.require(MACS).await?.lines() {
        let mac = mac.trim().trim_end_matches('/');
        if mac.is_empty() {
            continue;
        }
        let number = imds.require(&format!("{MACS}{mac}/device-number")).await?;
        match number.trim().parse::<u32>() {
            Ok(n) => macs.push((n, mac.to_string())),
            Err(_) => tracing::warn!(mac, number, "bad device-number in IMDS; interface skipped"),
        }
    }
    macs.sort();
    let address = |type_: &str, address: &str| NodeAddress {
        type_: type_.into(),
        address: address.into(),
    };
    let mut out = Vec::new();
    for (_, mac) in &macs {
        let ips = imds.require(&format!("{MACS}{mac}/local-ipv4s")).await?;
        out.extend(
            ips.lines()
                .map(str::trim)
                .filter(|ip| !ip.is_empty())
                .map(|ip| address("InternalIP", ip)),
        );
    }
    if let Some(ip) = imds.get("public-ipv4").await? {
        out.push(address("ExternalIP", ip.trim()));
    }
    if let Some(name) = imds.get("local-hostname").await?
        && !name.trim().is_empty()
    {
        let (hostname, internal_dns) = parse_local_hostname(&name);
        out.push(address("Hostname", &hostname));
        out.extend(internal_dns.iter().map(|d| address("InternalDNS", d)));
    }
    if let Some(name) = imds.get("public-hostname").await?
        && !name.trim().is_empty()
    {
        out.push(address("ExternalDNS", name.trim()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_the_zone_without_its_letter() {
        assert_eq!(region_of_zone("us-east-1a").as_deref(), Some("us-east-1"));
        assert_eq!(region_of_zone("eu-west-3c").as_deref(), Some("eu-west-3"));
        assert_eq!(region_of_zone("us-east-1"), None);
        assert_eq!(region_of_zone(""), None);
    }

    #[test]
    fn local_hostname_with_dhcp_domains() {
        let (h, dns) =
            parse_local_hostname("ip-192-168-111-51.us-west-2.compute.internal a.a b.b\n");
        assert_eq!(h, "ip-192-168-111-51.us-west-2.compute.internal");
        assert_eq!(
            dns,
            [
                "ip-192-168-111-51.us-west-2.compute.internal",
                "ip-192-168-111-51.a.a",
                "ip-192-168-111-51.b.b"
            ]
        );
        let (h, dns) = parse_local_hostname("ip-10-0-0-5.ec2.internal");
        assert_eq!(h, "ip-10-0-0-5.ec2.internal");
        assert_eq!(dns, ["ip-10-0-0-5.ec2.internal"]);
    }
}
