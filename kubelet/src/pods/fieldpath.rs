//! Downward API values: the pod fields (`fieldRef`) and container resources
//! (`resourceFieldRef`) that env vars and downwardAPI volume files expose, formatted
//! as upstream formats them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::parse_milli;

/// The addresses the pod has right now (status fields the kubelet itself decides).
#[derive(Debug, Clone, Copy)]
pub struct PodAddresses<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

/// The value of a `fieldRef.fieldPath`, or why it cannot be given.
pub fn pod_field(pod: &Pod, path: &str, addr: PodAddresses<'_>) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_default()
    };
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(map_entry(&meta.labels, key));
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(map_entry(&meta.annotations, key));
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => addr.host_ip.to_string(),
        "status.podIP" => addr.pod_ip.to_string(),
        // One address per family, comma-separated, as upstream's env value.
        "status.podIPs" => addr.pod_ip.to_string(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    path.strip_prefix(field)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// `key="value"` lines sorted by key, values quoted as Go's `%q` does.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", go_quote(v)))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// A string as Go's %q prints it (events and hook messages quote with it).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of a `resourceFieldRef` for `container`: limits default to the node's
/// allocatable (as upstream), the result is rounded up to whole divisors.
pub fn container_resource(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {resource}"))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
        return Err(format!("unsupported container resource : {resource}"));
    }
    let res = container.resources.as_ref();
    let value = match kind {
        "limits" => res
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .or_else(|| allocatable.get(name)),
        "requests" => res
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get(name)),
        _ => return Err(format!("unsupported container resource : {resource}")),
    };
    let value = match value {
        Some(q) => parse_milli(&q.0).map_err(|e| e.to_string())?,
        None => 0,
    };
    let divisor = match divisor.map(|d| d.0.as_str()) {
        None | Some("") | Some("0") => 1000,
        Some(d) => parse_milli(d).map_err(|e| e.to_string())?,
    };
    if divisor <= 0 {
        return Err(format!("invalid divisor for {resource}"));
    }
    // Ceiling division: a container with 250m CPU and divisor 1 sees "1".
    let quotient = value.div_euclid(divisor) + i128::from(value.rem_euclid(divisor) != 0);
    Ok(quotient.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                "labels": {"b": "2", "a": "x\"y"}, "annotations": {"k": "v"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                "containers": [{"name": "c", "resources": {
                    "limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn fields_and_maps_format_as_upstream() {
        let addr = PodAddresses {
            pod_ip: "10.0.0.2",
            host_ip: "192.168.0.1",
        };
        let p = pod();
        assert_eq!(pod_field(&p, "metadata.labels['b']", addr).unwrap(), "2");
        assert_eq!(
            pod_field(&p, "metadata.labels", addr).unwrap(),
            "a=\"x\\\"y\"\nb=\"2\""
        );
        assert_eq!(pod_field(&p, "spec.nodeName", addr).unwrap(), "n1");
        assert_eq!(pod_field(&p, "status.podIP", addr).unwrap(), "10.0.0.2");
        assert!(pod_field(&p, "spec.bogus", addr).is_err());
    }

    #[test]
    fn resources_round_up_and_limits_default_to_allocatable() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let alloc = BTreeMap::from([("cpu".to_string(), Quantity("2".into()))]);
        assert_eq!(
            container_resource(c, "requests.cpu", None, &alloc).unwrap(),
            "1"
        );
        let milli = Quantity("1m".into());
        assert_eq!(
            container_resource(c, "requests.cpu", Some(&milli), &alloc).unwrap(),
            "250"
        );
        assert_eq!(
            container_resource(c, "limits.cpu", None, &alloc).unwrap(),
            "2"
        );
        let mi = Quantity("1Mi".into());
        assert_eq!(
            container_resource(c, "limits.memory", Some(&mi), &alloc).unwrap(),
            "64"
        );
        assert!(container_resource(c, "limits.gpu", None, &alloc).is_err());
    }
}
