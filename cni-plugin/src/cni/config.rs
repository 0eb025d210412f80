//! The plugin configuration object the runtime writes to the plugin's stdin.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CniError, ErrorCode, check_version};

/// The network configuration for one plugin invocation: the spec's keys, our plugin keys,
/// and every other key kept verbatim in `extra` (chained plugins and `args` live there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Optional list of versions the configuration supports (spec 1.1 version negotiation).
    #[serde(
        rename = "cniVersions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_versions: Option<Vec<String>>,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Pod interface MTU; the caller picks the default (9001 in eni mode, 1500 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// ipamd's socket path; the caller falls back to the daemon's default path.
    #[serde(
        rename = "ipamdSocket",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipamd_socket: Option<String>,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Value>,
    /// The result of the previous plugin or ADD (CHECK, DEL, chained ADD); see `CniResult`.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Linux refuses MTUs below the IPv4 minimum (68); a veth takes at most 65535.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

impl NetConf {
    /// Parses and validates stdin. Malformed JSON is code 6 (decode); a missing or invalid
    /// key is code 7 (invalid config); a version we cannot speak is code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "network configuration on stdin is not valid JSON",
                e.to_string(),
            )
        })?;
        let Value::Object(obj) = &value else {
            return Err(invalid("network configuration must be a JSON object"));
        };
        for key in ["cniVersion", "name", "type"] {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::String(_)) | None => {
                    return Err(invalid(format!(
                        "network configuration lacks the required key {key:?}"
                    )));
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "network configuration key {key:?} must be a string, not {other}"
                    )));
                }
            }
        }
        let conf: NetConf = serde_json::from_value(value)
            .map_err(|e| invalid(format!("network configuration: {e}")))?;
        check_version(&conf.cni_version)?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> Result<(), CniError> {
        if !valid_network_name(&self.name) {
            return Err(invalid(format!(
                "network name {:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
                self.name
            )));
        }
        if self.plugin_type.contains('/') {
            return Err(invalid(format!(
                "plugin type {:?} must be a file name, not a path",
                self.plugin_type
            )));
        }
        if let Some(mtu) = self.mtu.filter(|m| !MTU_RANGE.contains(m)) {
            return Err(invalid(format!(
                "mtu {mtu} is out of range {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )));
        }
        Ok(())
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetConf, msg, "")
}

/// The spec's rule for network names: they also become file names in the runtime's cache.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_spec_and_plugin_keys_and_keeps_unknown_ones() {
        let conf = parse(json!({
            "cniVersion": "1.1.0",
            "name": "aws-cni",
            "type": "vpc-cni",
            "mtu": 9001,
            "ipamdSocket": "/run/x.sock",
            "runtimeConfig": {"portMappings": []},
            "prevResult": {"cniVersion": "1.1.0", "ips": []},
            "args": {"labels": {"a": "b"}},
            "podSGEnforcingMode": "strict"
        }))
        .unwrap();
        assert_eq!(conf.cni_version, "1.1.0");
        assert_eq!(conf.name, "aws-cni");
        assert_eq!(conf.plugin_type, "vpc-cni");
        assert_eq!(conf.mtu, Some(9001));
        assert_eq!(conf.ipamd_socket.as_deref(), Some("/run/x.sock"));
        assert_eq!(conf.runtime_config, Some(json!({"portMappings": []})));
        assert!(conf.prev_result.is_some());
        assert_eq!(conf.extra["podSGEnforcingMode"], "strict");
        assert_eq!(conf.extra["args"], json!({"labels": {"a": "b"}}));
    }

    #[test]
    fn optional_keys_default_to_none_and_round_trip() {
        let input = json!({"cniVersion": "0.4.0", "name": "n", "type": "vpc-cni", "x": 1});
        let conf = parse(input.clone()).unwrap();
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.ipamd_socket, None);
        assert_eq!(serde_json::to_value(&conf).unwrap(), input);
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        for bad in [&b"{"[..], b"", b"not json", b"{\"cniVersion\": }"] {
            let e = NetConf::parse(bad).unwrap_err();
            assert_eq!(e.code, 6, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn missing_or_mistyped_required_keys_are_invalid_config() {
        let full = json!({"cniVersion": "1.1.0", "name": "n", "type": "vpc-cni"});
        for key in ["cniVersion", "name", "type"] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(key);
            let e = parse(v).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains(key), "{e}");

            let mut v = full.clone();
            v[key] = json!(42);
            assert_eq!(parse(v).unwrap_err().code, 7);
        }
        assert_eq!(parse(json!([1, 2])).unwrap_err().code, 7);
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = parse(json!({"cniVersion": "9.9.9", "name": "n", "type": "t"})).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("9.9.9"));
    }

    #[test]
    fn bad_values_are_invalid_config() {
        for v in [
            json!({"cniVersion": "1.1.0", "name": "-bad", "type": "t"}),
            json!({"cniVersion": "1.1.0", "name": "a/b", "type": "t"}),
            json!({"cniVersion": "1.1.0", "name": "n", "type": "../t"}),
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": 10}),
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": "1500"}),
        ] {
            assert_eq!(parse(v.clone()).unwrap_err().code, 7, "{v}");
        }
    }
}
