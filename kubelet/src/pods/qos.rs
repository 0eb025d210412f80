//! A pod's quality-of-service class, as upstream's GetPodQOS computes it: the kubelet
//! reports it in the pod status and ranks victims by it when it preempts for critical pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::quantity::{parse_milli, parse_units};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    BestEffort,
    Burstable,
    Guaranteed,
}

/// upstream's GetPodQOS over cpu and memory: no requests or limits anywhere is
/// BestEffort; limits for both on every container, equal to the requests, is
/// Guaranteed; anything else Burstable.
pub fn qos(pod: &Pod) -> Qos {
    let Some(spec) = pod.spec.as_ref() else {
        return Qos::BestEffort;
    };
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut guaranteed = true;
    let value = |name: &str, q: &str| match name {
        "cpu" => parse_milli(q).ok().map(|v| v as i64),
        _ => parse_units(q).ok(),
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        let mut limited = 0;
        for name in ["cpu", "memory"] {
            let request = r
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(name));
            if let Some(v) = request.and_then(|q| value(name, &q.0)).filter(|v| *v != 0) {
                *requests.entry(name).or_default() += v;
            }
            let limit = r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(name));
            if let Some(v) = limit.and_then(|q| value(name, &q.0)).filter(|v| *v != 0) {
                *limits.entry(name).or_default() += v;
                limited += 1;
            }
        }
        guaranteed &= limited == 2;
    }
    if requests.is_empty() && limits.is_empty() {
        Qos::BestEffort
    } else if guaranteed && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

impl Qos {
    /// The name in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::BestEffort => "BestEffort",
            Qos::Burstable => "Burstable",
            Qos::Guaranteed => "Guaranteed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "resources": resources}]},
        }))
        .unwrap()
    }

    #[test]
    fn qos_classes_follow_upstream() {
        assert_eq!(qos(&pod(json!({}))), Qos::BestEffort);
        assert_eq!(qos(&pod(json!({"requests": {"cpu": "1"}}))), Qos::Burstable);
        let both = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(
            qos(&pod(json!({"requests": both, "limits": both}))),
            Qos::Guaranteed
        );
        assert_eq!(qos(&pod(json!({"limits": both}))), Qos::Guaranteed);
        assert_eq!(
            qos(&pod(json!({"requests": {"cpu": "500m"}, "limits": both}))),
            Qos::Burstable
        );
    }
}
