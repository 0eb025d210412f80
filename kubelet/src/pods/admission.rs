//! Pod admission as upstream's kubelet re-checks it (lifecycle.GeneralPredicates) before
//! running a pod bound to this node: room for one more pod, cpu, memory and
//! ephemeral-storage requests against the node's allocatable, nodeSelector and
//! required node affinity, nodeName, and free host ports. Only the first failure is
//! reported, with upstream's reason (`OutOfcpu`, `OutOfmemory`, `OutOfpods`,
//! `NodeAffinity`, `NodeName`, `NodePorts`) and message.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, NodeSelectorRequirement, Pod};

use crate::quantity::{parse_milli, parse_units};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    fn predicate(name: &str) -> Self {
        Rejection {
            reason: name.to_string(),
            message: format!("Predicate {name} failed"),
        }
    }
}

/// Requests of one pod in the units upstream compares: millicores and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Requests {
    milli_cpu: i64,
    memory: i64,
    ephemeral_storage: i64,
}

impl Requests {
    fn of_containers<'a>(containers: impl IntoIterator<Item = &'a Container>) -> Vec<Requests> {
        containers
            .into_iter()
            .map(|c| {
                let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
                let get = |name: &str, milli: bool| {
                    r.and_then(|r| r.get(name))
                        .and_then(|q| {
                            if milli {
                                parse_milli(&q.0).ok().and_then(|v| i64::try_from(v).ok())
                            } else {
                                parse_units(&q.0).ok()
                            }
                        })
                        .unwrap_or(0)
                };
                Requests {
                    milli_cpu: get("cpu", true),
                    memory: get("memory", false),
                    ephemeral_storage: get("ephemeral-storage", false),
                }
            })
            .collect()
    }

    /// upstream's computePodResourceRequest: the app containers' sum, or the largest
    /// init container if that is more, plus the pod's overhead.
    fn of_pod(pod: &Pod) -> Requests {
        let Some(spec) = pod.spec.as_ref() else {
            return Requests::default();
        };
        let mut total = Requests::default();
        for r in Requests::of_containers(&spec.containers) {
            total.milli_cpu += r.milli_cpu;
            total.memory += r.memory;
            total.ephemeral_storage += r.ephemeral_storage;
        }
        for r in Requests::of_containers(spec.init_containers.iter().flatten()) {
            total.milli_cpu = total.milli_cpu.max(r.milli_cpu);
            total.memory = total.memory.max(r.memory);
            total.ephemeral_storage = total.ephemeral_storage.max(r.ephemeral_storage);
        }
        let overhead = spec.overhead.as_ref();
        let get = |name: &str| overhead.and_then(|o| o.get(name)).map(|q| q.0.as_str());
        total.milli_cpu += get("cpu").and_then(|q| parse_milli(q).ok()).unwrap_or(0) as i64;
        total.memory += get("memory").and_then(|q| parse_units(q).ok()).unwrap_or(0);
        total
    }
}

/// Checks `pod` against `node` already running `active` (admitted, not terminated);
/// the first failure is what upstream reports for an ordinary pod.
#[cfg(test)]
pub fn admit(pod: &Pod, node: &Node, active: &[&Pod]) -> Result<(), Rejection> {
    match check(pod, node, active).into_iter().next() {
        Some(failure) => Err(failure.rejection),
        None => Ok(()),
    }
}

/// A resource admission counts: the pod count, cpu (millicores), memory and
/// ephemeral-storage (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Pods,
    Cpu,
    Memory,
    EphemeralStorage,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
        }
    }

    /// upstream's GetResourceRequest: 1 for pods, the pod's effective request else.
    pub fn request_of(self, pod: &Pod) -> i64 {
        let r = Requests::of_pod(pod);
        match self {
            Resource::Pods => 1,
            Resource::Cpu => r.milli_cpu,
            Resource::Memory => r.memory,
            Resource::EphemeralStorage => r.ephemeral_storage,
        }
    }
}

/// One failed check. `shortfall` is set for an insufficient resource: how much of it
/// is missing (what a critical pod's preemption has to free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub rejection: Rejection,
    pub shortfall: Option<(Resource, i64)>,
}

/// Every failed check, in upstream's order (GeneralPredicates: resources, node
/// selector and affinity, node name, host ports).
pub fn check(pod: &Pod, node: &Node, active: &[&Pod]) -> Vec<Failure> {
    let mut failures = Vec::new();
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let capacity = |resource: Resource| {
        let q = allocatable.and_then(|a| a.get(resource.name()));
        let value = match resource {
            Resource::Cpu => q.and_then(|q| parse_milli(&q.0).ok()).map(|v| v as i64),
            _ => q.and_then(|q| parse_units(&q.0).ok()),
        };
        value.unwrap_or(0)
    };
    let mut fits = |resource: Resource, requested: i64, used: i64| {
        let capacity = capacity(resource);
        if capacity < requested + used {
            let name = resource.name();
            failures.push(Failure {
                rejection: Rejection {
                    reason: format!("OutOf{name}"),
                    message: format!(
                        "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
                    ),
                },
                shortfall: Some((resource, requested - (capacity - used))),
            });
        }
    };
    fits(Resource::Pods, 1, active.len() as i64);
    let want = Requests::of_pod(pod);
    // Upstream checks only the pod count for a pod that requests nothing.
    if want != Requests::default() {
        let mut used = Requests::default();
        for p in active {
            let r = Requests::of_pod(p);
            used.milli_cpu += r.milli_cpu;
            used.memory += r.memory;
            used.ephemeral_storage += r.ephemeral_storage;
        }
        fits(Resource::Cpu, want.milli_cpu, used.milli_cpu);
        fits(Resource::Memory, want.memory, used.memory);
        fits(
            Resource::EphemeralStorage,
            want.ephemeral_storage,
            used.ephemeral_storage,
        );
    }
    let mut predicate = |name: &str| {
        failures.push(Failure {
            rejection: Rejection::predicate(name),
            shortfall: None,
        })
    };
    if !matches_node_selector_and_affinity(pod, node) {
        predicate("NodeAffinity");
    }
    let spec = pod.spec.as_ref();
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        predicate("NodeName");
    }
    let used_ports: Vec<HostPort> = active.iter().flat_map(|p| host_ports(p)).collect();
    if host_ports(pod)
        .iter()
        .any(|want| used_ports.iter().any(|u| u.conflicts(want)))
    {
        predicate("NodePorts");
    }
    failures
}

/// upstream's PodMatchesNodeSelectorAndAffinityTerms: every nodeSelector label, and
/// one of the required node affinity terms when there are any.
fn matches_node_selector_and_affinity(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let spec = pod.spec.as_ref();
    let selector = spec.and_then(|s| s.node_selector.as_ref());
    if selector
        .into_iter()
        .flatten()
        .any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let Some(required) = required else {
        return true;
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let fields = BTreeMap::from([("metadata.name".to_string(), name)]);
    // Terms are ORed; an empty term matches nothing.
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let field_exprs = term.match_fields.as_deref().unwrap_or_default();
        (!exprs.is_empty() || !field_exprs.is_empty())
            && exprs.iter().all(|r| requirement_matches(r, labels))
            && field_exprs.iter().all(|r| requirement_matches(r, &fields))
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(limit)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                have > limit
            } else {
                have < limit
            }
        }
        _ => false,
    }
}

/// A host port a pod asks for: protocol, host IP (0.0.0.0 when unset) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    protocol: String,
    ip: String,
    port: i32,
}

impl HostPort {
    /// upstream's HostPortInfo: the same protocol and port conflict when either side
    /// binds every address or both bind the same one.
    fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == "0.0.0.0" || other.ip == "0.0.0.0" || self.ip == other.ip)
    }
}

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    containers
        .iter()
        .chain(init)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty());
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: ip.unwrap_or_else(|| "0.0.0.0".into()),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"disk": "ssd", "cores": "8"}},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "3", "ephemeral-storage": "10Gi"}},
        }))
        .unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn cpu(q: &str) -> Pod {
        pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": q}}}]}))
    }

    #[test]
    fn every_failure_is_listed_with_what_is_missing() {
        let n = node();
        let running = cpu("1");
        let greedy = pod(json!({
            "nodeSelector": {"disk": "hdd"},
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "2Gi"}}}],
        }));
        let failures = check(&greedy, &n, &[&running, &running, &running]);
        let reasons: Vec<&str> = failures
            .iter()
            .map(|f| f.rejection.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            ["OutOfpods", "OutOfcpu", "OutOfmemory", "NodeAffinity"]
        );
        assert_eq!(failures[0].shortfall, Some((Resource::Pods, 1)));
        // 1500m wanted, 3000m used of 2000m.
        assert_eq!(failures[1].shortfall, Some((Resource::Cpu, 2500)));
        assert_eq!(failures[2].shortfall, Some((Resource::Memory, 1 << 30)));
        assert_eq!(failures[3].shortfall, None);
        assert_eq!(Resource::Cpu.request_of(&greedy), 1500);
        assert_eq!(Resource::Pods.request_of(&greedy), 1);
    }

    #[test]
    fn resources_are_checked_against_allocatable_minus_active_requests() {
        let n = node();
        assert_eq!(admit(&cpu("1500m"), &n, &[]), Ok(()));
        let running = cpu("1");
        assert_eq!(
            admit(&cpu("1500m"), &n, &[&running]),
            Err(Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into(),
            })
        );
        let big = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"memory": "2Gi"}}}]}),
        );
        assert_eq!(admit(&big, &n, &[]).unwrap_err().reason, "OutOfmemory");
        // The largest init container counts when it exceeds the app containers' sum.
        let init = pod(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}],
        }));
        assert_eq!(admit(&init, &n, &[]).unwrap_err().reason, "OutOfcpu");
        let empty = pod(json!({}));
        assert_eq!(
            admit(&empty, &n, &[&empty, &empty, &empty]),
            Err(Rejection {
                reason: "OutOfpods".into(),
                message:
                    "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
                        .into(),
            })
        );
    }

    #[test]
    fn node_selector_and_required_affinity_must_match() {
        let n = node();
        assert_eq!(
            admit(&pod(json!({"nodeSelector": {"disk": "ssd"}})), &n, &[]),
            Ok(())
        );
        assert_eq!(
            admit(&pod(json!({"nodeSelector": {"disk": "hdd"}})), &n, &[]),
            Err(Rejection {
                reason: "NodeAffinity".into(),
                message: "Predicate NodeAffinity failed".into()
            })
        );
        let affinity = |exprs: serde_json::Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
            )
        };
        let ok = affinity(json!([{"key": "cores", "operator": "Gt", "values": ["4"]},
                                  {"key": "gpu", "operator": "DoesNotExist"}]));
        assert_eq!(admit(&ok, &n, &[]), Ok(()));
        let bad = affinity(json!([{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]));
        assert_eq!(admit(&bad, &n, &[]).unwrap_err().reason, "NodeAffinity");
        let other = pod(json!({"nodeName": "n2"}));
        assert_eq!(admit(&other, &n, &[]).unwrap_err().reason, "NodeName");
    }

    #[test]
    fn host_ports_conflict_on_the_same_protocol_and_address() {
        let n = node();
        let with_port = |port: i32, ip: &str, proto: &str| {
            pod(json!({"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": port, "hostIP": ip, "protocol": proto}]}]}))
        };
        let taken = with_port(8080, "", "TCP");
        assert_eq!(
            admit(&with_port(8080, "10.0.0.1", "TCP"), &n, &[&taken]),
            Err(Rejection {
                reason: "NodePorts".into(),
                message: "Predicate NodePorts failed".into()
            })
        );
        assert_eq!(admit(&with_port(8080, "", "UDP"), &n, &[&taken]), Ok(()));
        assert_eq!(admit(&with_port(8081, "", "TCP"), &n, &[&taken]), Ok(()));
        let one_ip = with_port(9090, "10.0.0.1", "TCP");
        assert_eq!(
            admit(&with_port(9090, "10.0.0.2", "TCP"), &n, &[&one_ip]),
            Ok(())
        );
    }
}
