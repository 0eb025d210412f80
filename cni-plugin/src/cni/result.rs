//! Success results: ADD's result (readable by 1.1, 1.0 and 0.4 runtimes) and VERSION's.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CniError, ErrorCode, SUPPORTED_VERSIONS, check_version};

/// An ADD result. Fields the spec marks optional are skipped when empty, and `to_version`
/// removes the ones an older runtime does not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Since 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the pod; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address and prefix length in CIDR notation, e.g. "10.0.1.7/32".
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Since 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Since 1.1.0: 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// Keys added to interfaces and routes by spec 1.1.0, unknown to 1.0.0 and 0.4.0 readers.
const INTERFACE_KEYS_SINCE_1_1: &[&str] = &["mtu", "socketPath", "pciID"];
const ROUTE_KEYS_SINCE_1_1: &[&str] = &["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Reads a `prevResult` of any supported version (0.4.0's `ips[].version` is ignored).
    pub fn from_value(value: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(ErrorCode::Decode, "cannot decode prevResult", e.to_string())
        })
    }

    /// The result as a runtime speaking `version` expects it; code 1 for versions we lack.
    pub fn to_version(&self, version: &str) -> Result<Value, CniError> {
        check_version(version)?;
        let mut out = serde_json::to_value(self).expect("a CNI result always serialises");
        out["cniVersion"] = Value::from(version);
        if version == "1.1.0" {
            return Ok(out);
        }
        strip_keys(&mut out, "interfaces", INTERFACE_KEYS_SINCE_1_1);
        strip_keys(&mut out, "routes", ROUTE_KEYS_SINCE_1_1);
        if version == "0.4.0" {
            // 0.x results name the address family of each IP; 1.0.0 removed the field.
            if let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut) {
                for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                    let family = if cfg.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    ip["version"] = Value::from(family);
                }
            }
        }
        Ok(out)
    }
}

fn strip_keys(out: &mut Value, list: &str, keys: &[&str]) {
    if let Some(items) = out.get_mut(list).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for k in keys {
                item.remove(*k);
            }
        }
    }
}

/// The VERSION command's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// Answers in the version the runtime asked with, as the spec requires.
    pub fn new(requested: &str) -> VersionResult {
        VersionResult {
            cni_version: requested.to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "eni0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    mtu: Some(9001),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("11:22:33:44:55:66".into()),
                    mtu: Some(9001),
                    sandbox: Some("/var/run/netns/cni-1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.1.7/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                table: None,
                scope: Some(0),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn serialises_1_1_0_with_all_fields() {
        assert_eq!(
            sample().to_version("1.1.0").unwrap(),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "eni0123456789a", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 9001},
                    {"name": "eth0", "mac": "11:22:33:44:55:66", "mtu": 9001, "sandbox": "/var/run/netns/cni-1"}
                ],
                "ips": [{"address": "10.0.1.7/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "scope": 0}]
            })
        );
    }

    #[test]
    fn serialises_1_0_0_without_1_1_fields() {
        let v = sample().to_version("1.0.0").unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["interfaces"][1],
            json!({"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/cni-1"})
        );
        assert_eq!(
            v["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn serialises_0_4_0_with_ip_versions() {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00::7/128".parse().unwrap(),
            gateway: None,
            interface: Some(1),
        });
        let v = r.to_version("0.4.0").unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["ips"],
            json!([
                {"version": "4", "address": "10.0.1.7/32", "gateway": "169.254.1.1", "interface": 1},
                {"version": "6", "address": "fd00::7/128", "interface": 1}
            ])
        );
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn unsupported_version_is_code_1() {
        assert_eq!(sample().to_version("0.3.1").unwrap_err().code, 1);
    }

    #[test]
    fn reads_back_any_version_as_prev_result() {
        let r = sample();
        for v in SUPPORTED_VERSIONS {
            let back = CniResult::from_value(&r.to_version(v).unwrap()).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces[1].sandbox, r.interfaces[1].sandbox);
        }
        let e =
            CniResult::from_value(&json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}))
                .unwrap_err();
        assert_eq!(e.code, 6);
    }

    #[test]
    fn dns_is_emitted_only_when_set() {
        let mut r = sample();
        r.dns.nameservers.push("10.100.0.10".into());
        r.dns.search.push("svc.cluster.local".into());
        let v = r.to_version("1.1.0").unwrap();
        assert_eq!(
            v["dns"],
            json!({"nameservers": ["10.100.0.10"], "search": ["svc.cluster.local"]})
        );
    }

    #[test]
    fn version_result_lists_supported_versions() {
        assert_eq!(
            serde_json::to_value(VersionResult::new("1.0.0")).unwrap(),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}
