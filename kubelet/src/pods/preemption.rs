//! Critical pods at admission, as upstream's CriticalPodAdmissionHandler: static and
//! mirror pods, and pods of system-critical priority, are never refused for want of
//! resources alone; the kubelet evicts other pods to make room instead ("Preempting").
//! Only when no set of preemptable pods would free enough is the critical pod refused,
//! with upstream's `UnexpectedAdmissionError`. A failure other than resources (node
//! selector, host ports, ...) refuses it as any pod.

use k8s_openapi::api::core::v1::Pod;

use super::admission::{Failure, Rejection, Resource};
use super::qos::{Qos, qos};
use super::static_pods;

/// Upstream's event reason and status reason for a pod evicted to make room.
pub const REASON: &str = "Preempting";
pub const MESSAGE: &str = "Preempted in order to admit critical pod";

/// scheduling.SystemCriticalPriority: system-cluster-critical and above.
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

fn priority(pod: &Pod) -> Option<i32> {
    pod.spec.as_ref().and_then(|s| s.priority)
}

/// upstream's IsCriticalPod.
pub fn is_critical(pod: &Pod) -> bool {
    static_pods::is_static(pod)
        || static_pods::is_mirror(pod)
        || priority(pod).is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// upstream's Preemptable: a critical pod may evict any non-critical one, and a pod
/// one of lower priority.
fn preemptable(preemptor: &Pod, preemptee: &Pod) -> bool {
    if is_critical(preemptor) && !is_critical(preemptee) {
        return true;
    }
    matches!((priority(preemptor), priority(preemptee)), (Some(a), Some(b)) if a > b)
}

/// What admitting `pod` takes, given its admission `failures` against the `active`
/// pods: `Ok` with the pods to evict first (none for a pod that fits), or the
/// rejection to report.
pub fn resolve<'a>(
    pod: &Pod,
    failures: Vec<Failure>,
    active: &[&'a Pod],
) -> Result<Vec<&'a Pod>, Rejection> {
    let Some(first) = failures.first() else {
        return Ok(Vec::new());
    };
    if !is_critical(pod) {
        return Err(first.rejection.clone());
    }
    if let Some(other) = failures.iter().find(|f| f.shortfall.is_none()) {
        return Err(other.rejection.clone());
    }
    let needed: Requirements = failures.iter().filter_map(|f| f.shortfall).collect();
    pods_to_preempt(pod, active, needed).map_err(|e| Rejection {
        reason: "UnexpectedAdmissionError".into(),
        message: format!(
            "Unexpected error while attempting to recover from admission failure: preemption: error finding a set of pods to preempt: {e}"
        ),
    })
}

type Requirements = Vec<(Resource, i64)>;

/// What is still missing once `pods` are gone.
fn subtract(needed: &Requirements, pods: &[&Pod]) -> Requirements {
    needed
        .iter()
        .filter_map(|&(resource, quantity)| {
            let left = quantity - pods.iter().map(|p| resource.request_of(p)).sum::<i64>();
            (left > 0).then_some((resource, left))
        })
        .collect()
}

fn describe(needed: &Requirements) -> String {
    let items: String = needed
        .iter()
        .map(|(r, q)| format!("(res: {}, q: {q}), ", r.name()))
        .collect();
    format!("no set of running pods found to reclaim resources: [{items}]")
}

/// upstream's getPodsToPreempt: the fewest guaranteed pods, then burstable, then
/// best-effort, that free what is needed if every lower class went first.
fn pods_to_preempt<'a>(
    pod: &Pod,
    active: &[&'a Pod],
    needed: Requirements,
) -> Result<Vec<&'a Pod>, String> {
    let class = |q: Qos| -> Vec<&'a Pod> {
        active
            .iter()
            .copied()
            .filter(|p| preemptable(pod, p) && qos(p) == q)
            .collect()
    };
    let (best_effort, burstable, guaranteed) = (
        class(Qos::BestEffort),
        class(Qos::Burstable),
        class(Qos::Guaranteed),
    );
    let all: Vec<&Pod> = [&best_effort, &burstable, &guaranteed]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let unmet = subtract(&needed, &all);
    if !unmet.is_empty() {
        return Err(describe(&unmet));
    }
    let lower: Vec<&Pod> = best_effort.iter().chain(&burstable).copied().collect();
    let guaranteed_out = by_distance(guaranteed, subtract(&needed, &lower))?;
    let lower: Vec<&Pod> = best_effort.iter().chain(&guaranteed_out).copied().collect();
    let burstable_out = by_distance(burstable, subtract(&needed, &lower))?;
    let lower: Vec<&Pod> = burstable_out
        .iter()
        .chain(&guaranteed_out)
        .copied()
        .collect();
    let best_effort_out = by_distance(best_effort, subtract(&needed, &lower))?;
    Ok(best_effort_out
        .into_iter()
        .chain(burstable_out)
        .chain(guaranteed_out)
        .collect())
}

/// upstream's getPodsToPreemptByDistance: repeatedly the pod closest to covering
/// what is left (each requirement weighted by the fraction it leaves), the smaller
/// one (memory, then cpu) on a tie.
fn by_distance(mut pods: Vec<&Pod>, mut needed: Requirements) -> Result<Vec<&Pod>, String> {
    let distance = |needed: &Requirements, pod: &Pod| -> f64 {
        needed
            .iter()
            .map(|&(resource, quantity)| {
                let left = (quantity - resource.request_of(pod)) as f64;
                if left > 0.0 {
                    (left / quantity as f64).powi(2)
                } else {
                    0.0
                }
            })
            .sum()
    };
    let smaller = |a: &Pod, b: &Pod| {
        let key = |p: &Pod| (Resource::Memory.request_of(p), Resource::Cpu.request_of(p));
        key(a) <= key(b)
    };
    let mut out = Vec::new();
    while !needed.is_empty() {
        if pods.is_empty() {
            return Err(describe(&needed));
        }
        let mut best = 0;
        let mut best_distance = needed.len() as f64 + 1.0;
        for (i, p) in pods.iter().enumerate() {
            let d = distance(&needed, p);
            if d < best_distance || (d == best_distance && smaller(p, pods[best])) {
                best_distance = d;
                best = i;
            }
        }
        let chosen = pods.swap_remove(best);
        needed = subtract(&needed, &[chosen]);
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, resources: serde_json::Value, priority: Option<i32>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]},
        }))
        .unwrap()
    }

    fn static_pod(cpu: &str) -> Pod {
        let mut p = pod("s", json!({"requests": {"cpu": cpu}}), None);
        p.metadata.annotations = Some(
            [(
                "kubernetes.io/config.source".to_string(),
                "file".to_string(),
            )]
            .into(),
        );
        p
    }

    fn shortfall(resource: Resource, q: i64) -> Failure {
        Failure {
            rejection: Rejection {
                reason: format!("OutOf{}", resource.name()),
                message: "m".into(),
            },
            shortfall: Some((resource, q)),
        }
    }

    #[test]
    fn only_critical_pods_are_admitted_over_a_resource_shortage() {
        let victim = pod("v", json!({"requests": {"cpu": "1"}}), None);
        let active = [&victim];
        let ordinary = pod("o", json!({"requests": {"cpu": "1"}}), None);
        let err = resolve(&ordinary, vec![shortfall(Resource::Cpu, 500)], &active).unwrap_err();
        assert_eq!(err.reason, "OutOfcpu");

        let s = static_pod("1");
        let out = resolve(&s, vec![shortfall(Resource::Cpu, 500)], &active).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metadata.name.as_deref(), Some("v"));
        assert!(resolve(&s, vec![], &active).unwrap().is_empty());

        // A failure other than resources refuses even a critical pod.
        let ports = Failure {
            rejection: Rejection {
                reason: "NodePorts".into(),
                message: "Predicate NodePorts failed".into(),
            },
            shortfall: None,
        };
        let err = resolve(&s, vec![shortfall(Resource::Cpu, 1), ports], &active).unwrap_err();
        assert_eq!(err.reason, "NodePorts");

        // Priority makes a pod critical; critical pods are not evicted for another.
        let system = pod(
            "sys",
            json!({"requests": {"cpu": "1"}}),
            Some(2_000_001_000),
        );
        assert!(is_critical(&system));
        let err = resolve(&s, vec![shortfall(Resource::Cpu, 500)], &[&system]).unwrap_err();
        assert_eq!(err.reason, "UnexpectedAdmissionError");
        assert_eq!(
            err.message,
            "Unexpected error while attempting to recover from admission failure: preemption: \
             error finding a set of pods to preempt: no set of running pods found to reclaim \
             resources: [(res: cpu, q: 500), ]"
        );
    }

    #[test]
    fn the_fewest_pods_of_the_lowest_classes_are_evicted() {
        let be = pod("be", json!({}), None);
        let small = pod("small", json!({"requests": {"cpu": "200m"}}), None);
        let large = pod("large", json!({"requests": {"cpu": "900m"}}), None);
        let both = json!({"cpu": "2", "memory": "1Gi"});
        let guaranteed = pod("g", json!({"requests": both, "limits": both}), None);
        let active = [&be, &small, &large, &guaranteed];
        let s = static_pod("1");
        let names = |needed: Vec<Failure>| -> Vec<String> {
            resolve(&s, needed, &active)
                .unwrap()
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect()
        };
        // One burstable pod covers 800m: the one closest to it.
        assert_eq!(names(vec![shortfall(Resource::Cpu, 800)]), ["large"]);
        // 1000m: both burstable pods would do with 1100m; the guaranteed one is spared.
        assert_eq!(
            names(vec![shortfall(Resource::Cpu, 1000)]),
            ["large", "small"]
        );
        // A pod slot: the best-effort pod (it frees one as well as any).
        assert_eq!(names(vec![shortfall(Resource::Pods, 1)]), ["be"]);
        // More than the burstable pods hold: the guaranteed pod goes.
        let out = names(vec![shortfall(Resource::Cpu, 2500)]);
        assert!(out.contains(&"g".to_string()), "{out:?}");
    }
}
