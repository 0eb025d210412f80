//! `--cloud-provider`: who knows the machine's identity. `aws` reads it from EC2
//! instance metadata as upstream's in-tree provider did (node name, providerID, zone
//! and instance-type labels, addresses); `external` leaves it to a cloud-controller-
//! manager and registers the Node tainted until that has initialised it.

pub mod aws;
pub mod imds;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{NodeAddress, Taint};

/// Upstream's taint for Nodes a cloud-controller-manager has not initialised yet.
pub const UNINITIALIZED_TAINT_KEY: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// With `external`, upstream records `--node-ip` here for the cloud-controller-manager.
pub const PROVIDED_NODE_IP_ANNOTATION: &str = "alpha.kubernetes.io/provided-node-ip";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloudProvider {
    #[default]
    None,
    Aws,
    External,
}

impl CloudProvider {
    /// The `--cloud-provider` value; upstream 1.20 also had in-tree azure, gce,
    /// openstack and vsphere providers, which this kubelet does not implement.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "" => Ok(CloudProvider::None),
            "aws" => Ok(CloudProvider::Aws),
            "external" => Ok(CloudProvider::External),
            other => bail!(
                "--cloud-provider {other:?} is not supported: use \"aws\", \"external\" or leave it empty"
            ),
        }
    }

    /// The taint upstream adds to `--register-with-taints` for an external provider.
    pub fn registration_taint(self) -> Option<Taint> {
        (self == CloudProvider::External).then(|| Taint {
            key: UNINITIALIZED_TAINT_KEY.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        })
    }
}

/// What the cloud says about this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudIdentity {
    /// The node name the provider assigns (on EC2 the private DNS name).
    pub node_name: String,
    /// `spec.providerID`, e.g. `aws:///us-east-1a/i-0123456789abcdef0`.
    pub provider_id: String,
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub zone: String,
    /// Addresses in the provider's order (see [`crate::node::addresses`]).
    pub addresses: Vec<NodeAddress>,
}

impl CloudIdentity {
    /// The labels upstream 1.20 sets at registration from the provider's instance type
    /// and zone, stable and deprecated beta spellings both (the beta ones are what
    /// older selectors and the scheduler's defaults still read).
    pub fn labels(&self) -> BTreeMap<String, String> {
        [
            ("node.kubernetes.io/instance-type", &self.instance_type),
            ("beta.kubernetes.io/instance-type", &self.instance_type),
            ("topology.kubernetes.io/zone", &self.zone),
            ("failure-domain.beta.kubernetes.io/zone", &self.zone),
            ("topology.kubernetes.io/region", &self.region),
            ("failure-domain.beta.kubernetes.io/region", &self.region),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }

    /// The pod capacity for this instance type from the EC2 ENI limits: the same rule
    /// and table as `ipamd max-pods` (secondary IPs, no prefix delegation, no custom
    /// networking, as EKS's bootstrap computes it by default).
    pub fn max_pods(&self) -> Result<i64> {
        let pods =
            ec2_limits::max_pods(&self.instance_type, ec2_limits::MaxPodsOptions::default())?;
        Ok(i64::from(pods))
    }
}

/// Looks the identity up for `provider`; `None` for no provider or `external`.
pub async fn identity(provider: CloudProvider) -> Result<Option<CloudIdentity>> {
    match provider {
        CloudProvider::None | CloudProvider::External => Ok(None),
        CloudProvider::Aws => {
            let mut imds = imds::Imds::from_env()?;
            let id = aws::identity(&mut imds).await.map_err(|e| {
                e.context(format!(
                    "--cloud-provider aws: reading instance metadata from {}",
                    imds.endpoint()
                ))
            })?;
            Ok(Some(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!(CloudProvider::parse("").unwrap(), CloudProvider::None);
        assert_eq!(CloudProvider::parse("aws").unwrap(), CloudProvider::Aws);
        assert_eq!(
            CloudProvider::parse("external").unwrap(),
            CloudProvider::External
        );
        let err = CloudProvider::parse("gce").unwrap_err().to_string();
        assert!(err.contains("gce"), "{err}");
    }

    #[test]
    fn external_registers_tainted() {
        let t = CloudProvider::External.registration_taint().unwrap();
        assert_eq!(t.key, UNINITIALIZED_TAINT_KEY);
        assert_eq!(t.value.as_deref(), Some("true"));
        assert_eq!(t.effect, "NoSchedule");
        assert!(CloudProvider::Aws.registration_taint().is_none());
    }

    #[test]
    fn labels_and_max_pods_from_the_instance() {
        let id = CloudIdentity {
            node_name: "ip-10-0-0-5.ec2.internal".into(),
            provider_id: "aws:///us-east-1a/i-1".into(),
            instance_id: "i-1".into(),
            instance_type: "t3.medium".into(),
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
            addresses: vec![],
        };
        let l = id.labels();
        assert_eq!(l["node.kubernetes.io/instance-type"], "t3.medium");
        assert_eq!(l["beta.kubernetes.io/instance-type"], "t3.medium");
        assert_eq!(l["topology.kubernetes.io/zone"], "us-east-1a");
        assert_eq!(l["failure-domain.beta.kubernetes.io/zone"], "us-east-1a");
        assert_eq!(l["topology.kubernetes.io/region"], "us-east-1");
        assert_eq!(l["failure-domain.beta.kubernetes.io/region"], "us-east-1");
        // 3 ENIs x (6 - 1) + 2, as `ipamd max-pods --instance-type t3.medium`.
        assert_eq!(id.max_pods().unwrap(), 17);
        let unknown = CloudIdentity {
            instance_type: "m99.gigantic".into(),
            ..id
        };
        assert!(unknown.max_pods().is_err());
    }
}
