//! `status.addresses`, following upstream's NodeAddress setter (1.20): without a cloud
//! provider the InternalIP (`--node-ip` or the host's) and the Hostname; with one, the
//! provider's addresses, narrowed by `--node-ip` and completed with the Hostname.

use std::net::IpAddr;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::NodeAddress;

pub struct AddressInputs<'a> {
    /// `--node-ip` as given (`None` without the flag; 0.0.0.0/:: choose a family only).
    pub node_ip_flag: Option<IpAddr>,
    /// The address to use without a cloud provider: the flag's or the host's.
    pub host_ip: Option<IpAddr>,
    /// `--hostname-override`, or the machine's hostname.
    pub hostname: &'a str,
    pub hostname_overridden: bool,
    /// The cloud provider's addresses (`None`: no in-tree provider).
    pub cloud: Option<&'a [NodeAddress]>,
}

fn address(type_: &str, address: &str) -> NodeAddress {
    NodeAddress {
        type_: type_.into(),
        address: address.into(),
    }
}

pub fn node_addresses(inputs: &AddressInputs<'_>) -> Result<Vec<NodeAddress>> {
    let Some(cloud) = inputs.cloud else {
        let mut out = Vec::new();
        if let Some(ip) = inputs.host_ip {
            out.push(address("InternalIP", &ip.to_string()));
        }
        out.push(address("Hostname", inputs.hostname));
        return Ok(out);
    };
    let specified = inputs.node_ip_flag.filter(|ip| !ip.is_unspecified());
    let mut out: Vec<NodeAddress> = match (specified, inputs.node_ip_flag) {
        // The flag's address is enforced for its types (InternalIP, usually): the
        // provider's other addresses of those types (ENI secondary IPs on EC2) go.
        (Some(ip), _) => {
            let ip = ip.to_string();
            let enforced: Vec<&NodeAddress> = cloud.iter().filter(|a| a.address == ip).collect();
            if enforced.is_empty() {
                bail!("failed to get node address from cloud provider that matches ip: {ip}");
            }
            let mut out: Vec<NodeAddress> = enforced.iter().map(|a| (*a).clone()).collect();
            out.extend(
                cloud
                    .iter()
                    .filter(|a| !enforced.iter().any(|e| e.type_ == a.type_))
                    .cloned(),
            );
            out
        }
        // 0.0.0.0 or ::: the provider's addresses, the flag's family first.
        (None, Some(family)) => {
            let preferred = |a: &NodeAddress| {
                a.address
                    .parse::<IpAddr>()
                    .map_or(true, |ip| ip.is_ipv4() == family.is_ipv4())
            };
            let mut out: Vec<NodeAddress> =
                cloud.iter().filter(|a| preferred(a)).cloned().collect();
            out.extend(cloud.iter().filter(|a| !preferred(a)).cloned());
            out
        }
        (None, None) => cloud.to_vec(),
    };
    let has_hostname_type = cloud.iter().any(|a| a.type_ == "Hostname");
    if cloud.is_empty()
        || (!has_hostname_type && cloud.iter().any(|a| a.address == inputs.hostname))
    {
        out.push(address("Hostname", inputs.hostname));
    } else if inputs.hostname_overridden {
        // An overridden name cannot be verified against the provider, but it is the
        // deployer's explicit choice: it replaces the provider's Hostname.
        match out.iter_mut().find(|a| a.type_ == "Hostname") {
            Some(existing) => existing.address = inputs.hostname.to_string(),
            None => out.push(address("Hostname", inputs.hostname)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec2() -> Vec<NodeAddress> {
        vec![
            address("InternalIP", "10.0.0.5"),
            address("InternalIP", "10.0.0.6"),
            address("Hostname", "ip-10-0-0-5.ec2.internal"),
            address("InternalDNS", "ip-10-0-0-5.ec2.internal"),
        ]
    }

    fn inputs<'a>(cloud: Option<&'a [NodeAddress]>, hostname: &'a str) -> AddressInputs<'a> {
        AddressInputs {
            node_ip_flag: None,
            host_ip: Some("192.168.1.2".parse().unwrap()),
            hostname,
            hostname_overridden: false,
            cloud,
        }
    }

    #[test]
    fn without_a_provider_host_ip_and_hostname() {
        let a = node_addresses(&inputs(None, "h1")).unwrap();
        assert_eq!(
            a,
            [
                address("InternalIP", "192.168.1.2"),
                address("Hostname", "h1")
            ]
        );
    }

    #[test]
    fn provider_addresses_as_given() {
        let cloud = ec2();
        let a = node_addresses(&inputs(Some(&cloud), "devbox")).unwrap();
        assert_eq!(a, cloud);
    }

    #[test]
    fn node_ip_keeps_only_the_matching_internal_ip() {
        let cloud = ec2();
        let mut i = inputs(Some(&cloud), "devbox");
        i.node_ip_flag = Some("10.0.0.6".parse().unwrap());
        let a = node_addresses(&i).unwrap();
        assert_eq!(a[0], address("InternalIP", "10.0.0.6"));
        assert_eq!(a.iter().filter(|a| a.type_ == "InternalIP").count(), 1);
        assert!(a.iter().any(|a| a.type_ == "InternalDNS"));
        i.node_ip_flag = Some("10.9.9.9".parse().unwrap());
        assert!(node_addresses(&i).is_err());
    }

    #[test]
    fn an_overridden_hostname_replaces_the_providers() {
        let cloud = ec2();
        let mut i = inputs(Some(&cloud), "my-node");
        i.hostname_overridden = true;
        let a = node_addresses(&i).unwrap();
        assert_eq!(
            a.iter()
                .filter(|a| a.type_ == "Hostname")
                .map(|a| a.address.as_str())
                .collect::<Vec<_>>(),
            ["my-node"]
        );
    }
}
