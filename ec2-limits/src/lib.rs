//! Per-instance-type ENI limits and the max-pods rule derived from them.
//!
//! The table is embedded rather than fetched from `DescribeInstanceTypes` so that
//! `ipamd max-pods` works before the node has credentials (it runs while the kubelet
//! config is still being written) and gives the same answer on every node of a type.

use std::collections::HashMap;
use std::sync::LazyLock;

/// EC2 `DescribeInstanceTypes` network facts, as published by amazon-vpc-cni-k8s
/// (Apache-2.0), copied from `../shared/data/` (its README describes the columns).
const CSV: &str = include_str!("../data/ec2-instance-network-limits.csv");

/// Header the parser was written against; checked so a re-generated file with
/// reordered columns fails loudly instead of silently mixing up numbers.
const HEADER: &str = "instance_type,max_enis,ipv4_per_eni,default_network_card,network_cards(index:max_enis),hypervisor,bare_metal";

/// Each secondary IP slot holds a /28 when prefix delegation is on.
const IPS_PER_PREFIX: u32 = 16;
/// The primary address of each ENI belongs to the ENI itself, never to a pod.
const ENI_PRIMARY_IPS: u32 = 1;
/// Host-network pods (aws-node, kube-proxy) count against max-pods but need no IP.
const HOST_NETWORK_PODS: u32 = 2;

/// Upstream ceilings, chosen by AWS from kubelet scalability testing.
const MAX_PODS_CEILING_SMALL: u32 = 110;
const MAX_PODS_CEILING_LARGE: u32 = 250;
/// See [`max_pods`] for why this stands in for a vCPU count.
const SMALL_INSTANCE_ADDRESS_SLOTS: u32 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    Nitro,
    Xen,
    /// Bare-metal types report no hypervisor; EC2 calls that `unknown`.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Interfaces across all network cards.
    pub max_enis: u32,
    /// Private IPv4 addresses per interface, the interface's primary included.
    pub ipv4_per_eni: u32,
    pub default_network_card: u32,
    /// `(card index, max interfaces on that card)`.
    pub network_cards: Vec<(u32, u32)>,
    pub hypervisor: Hypervisor,
    pub bare_metal: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxPodsOptions {
    pub prefix_delegation: bool,
    pub custom_networking: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown instance type {0}: not in the EC2 limits table; pass --max-pods to the kubelet instead"
)]
pub struct UnknownInstanceType(pub String);

static TABLE: LazyLock<HashMap<&'static str, Limits>> = LazyLock::new(|| {
    parse(CSV).unwrap_or_else(|e| panic!("embedded ec2-instance-network-limits.csv: {e}"))
});

fn parse(text: &'static str) -> Result<HashMap<&'static str, Limits>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end() == HEADER => {}
        other => return Err(format!("unexpected header {:?}", other.map(|(_, h)| h))),
    }
    let mut table = HashMap::new();
    for (idx, line) in lines {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let lineno = idx + 1;
        let limits_row = parse_row(line).map_err(|e| format!("line {lineno}: {e}: {line:?}"))?;
        let (name, limits) = limits_row;
        if table.insert(name, limits).is_some() {
            return Err(format!("line {lineno}: duplicate instance type {name}"));
        }
    }
    Ok(table)
}

fn parse_row(line: &'static str) -> Result<(&'static str, Limits), String> {
    let fields: Vec<&'static str> = line.split(',').collect();
    let [
        name,
        max_enis,
        ipv4,
        default_card,
        cards,
        hypervisor,
        bare_metal,
    ] = fields[..]
    else {
        return Err(format!("expected 7 fields, got {}", fields.len()));
    };
    let num = |what: &str, s: &str| s.parse::<u32>().map_err(|e| format!("{what} {s:?}: {e}"));
    let network_cards = cards
        .split(';')
        .map(|pair| {
            let (i, n) = pair
                .split_once(':')
                .ok_or_else(|| format!("network card {pair:?} is not index:max"))?;
            Ok((num("card index", i)?, num("card max_enis", n)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let hypervisor = match hypervisor {
        "nitro" => Hypervisor::Nitro,
        "xen" => Hypervisor::Xen,
        "unknown" | "" => Hypervisor::Unknown,
        other => return Err(format!("hypervisor {other:?}")),
    };
    let bare_metal = match bare_metal {
        "true" => true,
        "false" => false,
        other => return Err(format!("bare_metal {other:?}")),
    };
    let limits = Limits {
        max_enis: num("max_enis", max_enis)?,
        ipv4_per_eni: num("ipv4_per_eni", ipv4)?,
        default_network_card: num("default_network_card", default_card)?,
        network_cards,
        hypervisor,
        bare_metal,
    };
    // A zero here would underflow the max-pods arithmetic below.
    if limits.ipv4_per_eni < 1 {
        return Err("ipv4_per_eni must be at least 1".into());
    }
    Ok((name, limits))
}

/// EC2 network limits for `instance_type` (e.g. `m5.large`), if the table knows it.
pub fn limits(instance_type: &str) -> Option<&'static Limits> {
    TABLE.get(instance_type)
}

/// The pod capacity a kubelet on `instance_type` should register, following the
/// AWS VPC CNI's `max-pods-calculator.sh`.
///
/// - Default: `max_enis * (ipv4_per_eni - 1) + 2`, uncapped, so it matches the
///   long-published `eni-max-pods.txt` values (m5.large: 29).
/// - Custom networking: pods live on secondary ENIs in other subnets, so the primary
///   ENI contributes no pod addresses: one ENI fewer in the same formula.
/// - Prefix delegation: each secondary slot carries a /28, so the per-ENI term is
///   multiplied by 16. As upstream, this only applies to Nitro instances (EC2 rejects
///   prefix assignment elsewhere, including bare metal, which reports hypervisor
///   `unknown`); others fall back to the secondary-IP formula.
///
/// With prefix delegation the result is then capped, because the address space
/// would otherwise far exceed what a kubelet can run. Upstream caps at 110 for
/// instances with at most 30 vCPUs and 250 above that. The table has no vCPU
/// count, so this is an approximation: an instance counts as small (cap 110) when
/// it is not bare metal and `max_enis * ipv4_per_eni < 60`; everything else gets 250.
/// The approximation errs high for mid-sized types: e.g. m5.xlarge (4 vCPUs,
/// 4 x 15 slots) gets 250 here where upstream gives 110. Operators who need the
/// exact upstream number should pass `--max-pods` to the kubelet.
pub fn max_pods(instance_type: &str, opts: MaxPodsOptions) -> Result<u32, UnknownInstanceType> {
    let l = limits(instance_type).ok_or_else(|| UnknownInstanceType(instance_type.to_owned()))?;
    Ok(compute(l, opts))
}

fn compute(l: &Limits, opts: MaxPodsOptions) -> u32 {
    let enis = if opts.custom_networking {
        // Saturating: a single-ENI type with custom networking has no pod ENIs left,
        // leaving only the host-network pods.
        l.max_enis.saturating_sub(1)
    } else {
        l.max_enis
    };
    let use_prefixes = opts.prefix_delegation && l.hypervisor == Hypervisor::Nitro;
    let per_slot = if use_prefixes { IPS_PER_PREFIX } else { 1 };
    let pods = enis * ((l.ipv4_per_eni - ENI_PRIMARY_IPS) * per_slot) + HOST_NETWORK_PODS;
    if !opts.prefix_delegation {
        return pods;
    }
    let small = !l.bare_metal && l.max_enis * l.ipv4_per_eni < SMALL_INSTANCE_ADDRESS_SLOTS;
    let ceiling = if small {
        MAX_PODS_CEILING_SMALL
    } else {
        MAX_PODS_CEILING_LARGE
    };
    pods.min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: MaxPodsOptions = MaxPodsOptions {
        prefix_delegation: false,
        custom_networking: false,
    };
    const CUSTOM: MaxPodsOptions = MaxPodsOptions {
        prefix_delegation: false,
        custom_networking: true,
    };
    const PREFIX: MaxPodsOptions = MaxPodsOptions {
        prefix_delegation: true,
        custom_networking: false,
    };
    const PREFIX_CUSTOM: MaxPodsOptions = MaxPodsOptions {
        prefix_delegation: true,
        custom_networking: true,
    };

    #[test]
    fn documented_examples() {
        assert_eq!(max_pods("m5.large", DEFAULT), Ok(29));
        assert_eq!(max_pods("t3.medium", DEFAULT), Ok(17));
    }

    #[test]
    fn custom_networking_drops_the_primary_eni() {
        // (3 - 1) * (10 - 1) + 2
        assert_eq!(max_pods("m5.large", CUSTOM), Ok(20));
        // (3 - 1) * (6 - 1) + 2
        assert_eq!(max_pods("t3.medium", CUSTOM), Ok(12));
    }

    #[test]
    fn prefix_delegation_is_capped() {
        // 3 * 9 * 16 + 2 = 434, small instance -> 110.
        assert_eq!(max_pods("m5.large", PREFIX), Ok(110));
        assert_eq!(max_pods("m5.large", PREFIX_CUSTOM), Ok(110));
        // 8 * 29 * 16 + 2, large -> 250.
        assert_eq!(max_pods("m5.4xlarge", PREFIX), Ok(250));
    }

    #[test]
    fn prefix_delegation_below_the_cap_is_exact() {
        // t3.micro: 2 ENIs x 2 IPs. 2 * (1 * 16) + 2 = 34; custom: 1 * 16 + 2 = 18.
        let l = limits("t3.micro").unwrap();
        assert_eq!((l.max_enis, l.ipv4_per_eni), (2, 2));
        assert_eq!(max_pods("t3.micro", PREFIX), Ok(34));
        assert_eq!(max_pods("t3.micro", PREFIX_CUSTOM), Ok(18));
    }

    #[test]
    fn prefix_delegation_needs_nitro() {
        // t2.micro is Xen: 2 * (2 - 1) + 2 regardless of the flag.
        assert_eq!(limits("t2.micro").unwrap().hypervisor, Hypervisor::Xen);
        assert_eq!(max_pods("t2.micro", PREFIX), Ok(4));
        // m5.metal reports hypervisor `unknown`: 15 * 49 + 2 = 737, capped at 250.
        assert_eq!(max_pods("m5.metal", PREFIX), Ok(250));
        assert_eq!(max_pods("m5.metal", DEFAULT), Ok(737));
    }

    #[test]
    fn single_eni_type_with_custom_networking_does_not_underflow() {
        assert_eq!(limits("hpc6id.32xlarge").unwrap().max_enis, 1);
        assert_eq!(max_pods("hpc6id.32xlarge", CUSTOM), Ok(2));
    }

    #[test]
    fn unknown_type_is_an_error_naming_it() {
        let err = max_pods("m99.gigantic", DEFAULT).unwrap_err();
        assert_eq!(err, UnknownInstanceType("m99.gigantic".into()));
        assert!(err.to_string().contains("m99.gigantic"));
        assert!(err.to_string().contains("--max-pods"));
    }

    #[test]
    fn limits_parse_every_column() {
        let l = limits("p4d.24xlarge").unwrap();
        assert_eq!(
            *l,
            Limits {
                max_enis: 15,
                ipv4_per_eni: 50,
                default_network_card: 0,
                network_cards: vec![(0, 15), (1, 15), (2, 15), (3, 15)],
                hypervisor: Hypervisor::Nitro,
                bare_metal: false,
            }
        );
    }

    /// Recomputes the default rule from the raw CSV text with none of the parser's
    /// code, so a column mix-up in `parse_row` cannot hide behind itself.
    #[test]
    fn every_row_matches_the_default_formula() {
        let mut rows = 0;
        for line in CSV.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').collect();
            let max_enis: u32 = cols[1].parse().unwrap();
            let ipv4_per_eni: u32 = cols[2].parse().unwrap();
            let expected = max_enis * (ipv4_per_eni - 1) + 2;
            assert_eq!(max_pods(cols[0], DEFAULT), Ok(expected), "{line}");
            rows += 1;
        }
        assert_eq!(rows, TABLE.len(), "every row is a distinct instance type");
        assert!(rows > 1000, "table looks truncated: {rows} rows");
    }
}
