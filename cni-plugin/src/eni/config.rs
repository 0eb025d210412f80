//! eni mode's settings, from the environment variables aws-node reads (same names, same
//! defaults). A value that does not parse refuses the start: silently running with a
//! default would size the node's pool differently from what the operator asked for.

use std::time::Duration;

use ipnet::Ipv4Net;

use crate::ipam::COOLDOWN_MS;
use crate::net::snat::Randomize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfig {
    /// WARM_ENI_TARGET (default 1).
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET (unset or 0: not set).
    pub warm_ip_target: Option<u32>,
    /// MINIMUM_IP_TARGET (unset or 0: not set).
    pub minimum_ip_target: Option<u32>,
    /// MAX_ENI (unset or negative: the instance type's limit).
    pub max_eni: Option<u32>,
    /// ENABLE_PREFIX_DELEGATION (default false): pods get addresses out of /28 prefixes
    /// assigned to the ENIs (Nitro instances only).
    pub prefix_delegation: bool,
    /// WARM_PREFIX_TARGET (default 1): free prefixes to keep, with prefix delegation.
    pub warm_prefix_target: u32,
    /// IP_COOLDOWN_PERIOD, in seconds (default 30).
    pub cooldown_ms: u64,
    /// CLUSTER_NAME: tags the ENIs we create with `cluster.k8s.amazonaws.com/name`.
    pub cluster_name: Option<String>,
    /// ADDITIONAL_ENI_TAGS: a JSON object of extra tags for the ENIs we create.
    pub additional_eni_tags: Vec<(String, String)>,
    /// How often the pool is checked against the targets and EC2 without an ADD asking.
    pub reconcile_interval: Duration,
    /// AWS_VPC_K8S_CNI_EXTERNALSNAT (default false): something outside the node (a NAT
    /// gateway) translates pod traffic leaving the VPC, so ipamd adds no SNAT rules.
    pub external_snat: bool,
    /// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: destinations outside the VPC that pods reach
    /// with their own address (comma-separated CIDRs).
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// AWS_VPC_K8S_CNI_RANDOMIZESNAT: none, hashrandom or prng (default).
    pub randomize_snat: Randomize,
}

/// The variables [`EniConfig::from_lookup`] reads, for the start-up log and docs.
pub const ENV_VARS: &[&str] = &[
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
    "MINIMUM_IP_TARGET",
    "MAX_ENI",
    "IP_COOLDOWN_PERIOD",
    "CLUSTER_NAME",
    "ADDITIONAL_ENI_TAGS",
    "ENABLE_PREFIX_DELEGATION",
    "WARM_PREFIX_TARGET",
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
    "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
];

/// aws-node's pool monitor runs every 5 s as well.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

impl EniConfig {
    pub fn from_env() -> Result<EniConfig, String> {
        EniConfig::from_lookup(&|k| std::env::var(k).ok())
    }

    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Result<EniConfig, String> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let int = |k: &str| -> Result<Option<i64>, String> {
            get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k}={v:?} is not an integer"))
                })
                .transpose()
        };
        let count = |k: &str| -> Result<Option<u32>, String> {
            match int(k)? {
                None => Ok(None),
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
                Some(n) => Err(format!("{k}={n} must be 0 or more")),
            }
        };
        let prefix_delegation = match get("ENABLE_PREFIX_DELEGATION").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(format!(
                    "ENABLE_PREFIX_DELEGATION={v:?} must be true or false"
                ));
            }
        };
        let max_eni = match int("MAX_ENI")? {
            // aws-node's default is -1: no limit beyond the instance type's.
            None => None,
            Some(n) if n < 0 => None,
            Some(0) => return Err("MAX_ENI=0 leaves no ENI, not even the primary".into()),
            Some(n) => Some(u32::try_from(n).map_err(|_| format!("MAX_ENI={n} is too large"))?),
        };
        let cooldown_s = count("IP_COOLDOWN_PERIOD")?;
        let additional_eni_tags = match get("ADDITIONAL_ENI_TAGS") {
            None => Vec::new(),
            Some(json) => {
                let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&json)
                    .map_err(|e| {
                    format!("ADDITIONAL_ENI_TAGS must be a JSON object of strings: {e}")
                })?;
                map.into_iter().collect()
            }
        };
        let external_snat = match get("AWS_VPC_K8S_CNI_EXTERNALSNAT").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(format!(
                    "AWS_VPC_K8S_CNI_EXTERNALSNAT={v:?} must be true or false"
                ));
            }
        };
        let exclude_snat_cidrs = get("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| {
                        c.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
                            format!("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {c:?} is not an IPv4 CIDR")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let randomize_snat = match get("AWS_VPC_K8S_CNI_RANDOMIZESNAT").as_deref() {
            None | Some("prng") => Randomize::Prng,
            Some("hashrandom") => Randomize::HashRandom,
            Some("none") => Randomize::None,
            Some(v) => {
                return Err(format!(
                    "AWS_VPC_K8S_CNI_RANDOMIZESNAT={v:?} must be none, hashrandom or prng"
                ));
            }
        };
        Ok(EniConfig {
            external_snat,
            exclude_snat_cidrs,
            randomize_snat,
            warm_eni_target: count("WARM_ENI_TARGET")?.unwrap_or(1),
            warm_ip_target: count("WARM_IP_TARGET")?.filter(|n| *n > 0),
            minimum_ip_target: count("MINIMUM_IP_TARGET")?.filter(|n| *n > 0),
            max_eni,
            prefix_delegation,
            // The value aws-node's manifests set: one /28 ready for the next pods.
            warm_prefix_target: count("WARM_PREFIX_TARGET")?.unwrap_or(1),
            cooldown_ms: cooldown_s.map_or(COOLDOWN_MS, |s| u64::from(s) * 1000),
            cluster_name: get("CLUSTER_NAME"),
            additional_eni_tags,
            reconcile_interval: RECONCILE_INTERVAL,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<EniConfig, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EniConfig::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_aws_nodes() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.warm_eni_target, 1);
        assert_eq!(
            (c.warm_ip_target, c.minimum_ip_target, c.max_eni),
            (None, None, None)
        );
        assert_eq!(c.cooldown_ms, 30_000);
        assert!(c.additional_eni_tags.is_empty());
        assert!(!c.external_snat && c.exclude_snat_cidrs.is_empty());
        assert_eq!(c.randomize_snat, Randomize::Prng);
        assert!(!c.prefix_delegation);
        assert_eq!(c.warm_prefix_target, 1);
    }

    #[test]
    fn prefix_delegation_and_its_warm_target() {
        let c = parse(&[("ENABLE_PREFIX_DELEGATION", "true")]).unwrap();
        assert!(c.prefix_delegation);
        assert_eq!(c.warm_prefix_target, 1);
        let c = parse(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "0"),
        ])
        .unwrap();
        assert_eq!(c.warm_prefix_target, 0);
        assert_eq!(
            parse(&[("WARM_PREFIX_TARGET", "3")])
                .unwrap()
                .warm_prefix_target,
            3
        );
    }

    #[test]
    fn targets_tags_and_zero_meaning_unset() {
        let c = parse(&[
            ("WARM_ENI_TARGET", "0"),
            ("WARM_IP_TARGET", "5"),
            ("MINIMUM_IP_TARGET", "0"),
            ("MAX_ENI", "-1"),
            ("IP_COOLDOWN_PERIOD", "3"),
            ("CLUSTER_NAME", "prod"),
            ("ADDITIONAL_ENI_TAGS", r#"{"team":"net","env":"test"}"#),
            ("ENABLE_PREFIX_DELEGATION", "false"),
        ])
        .unwrap();
        assert_eq!(c.warm_eni_target, 0);
        assert_eq!(
            (c.warm_ip_target, c.minimum_ip_target, c.max_eni),
            (Some(5), None, None)
        );
        assert_eq!(c.cooldown_ms, 3_000);
        assert_eq!(c.cluster_name.as_deref(), Some("prod"));
        assert_eq!(
            c.additional_eni_tags,
            vec![("env".into(), "test".into()), ("team".into(), "net".into())]
        );
        assert_eq!(parse(&[("MAX_ENI", "2")]).unwrap().max_eni, Some(2));
        let c = parse(&[
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                "192.168.0.0/16, 172.16.9.1/12",
            ),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
        ])
        .unwrap();
        assert!(c.external_snat);
        assert_eq!(
            c.exclude_snat_cidrs,
            vec![
                "192.168.0.0/16".parse().unwrap(),
                "172.16.0.0/12".parse().unwrap()
            ]
        );
        assert_eq!(c.randomize_snat, Randomize::HashRandom);
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        for (k, v) in [
            ("WARM_IP_TARGET", "lots"),
            ("WARM_ENI_TARGET", "-2"),
            ("MAX_ENI", "0"),
            ("ADDITIONAL_ENI_TAGS", "[1]"),
            ("ENABLE_PREFIX_DELEGATION", "yes"),
            ("WARM_PREFIX_TARGET", "-1"),
            ("WARM_PREFIX_TARGET", "one"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "1"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/8,nope"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "always"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }
}
