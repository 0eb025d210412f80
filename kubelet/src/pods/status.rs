//! The pod status the kubelet reports, computed from CRI state with upstream's phases,
//! condition types and container state reasons.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::probes::ContainerHealth;

fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp(nanos / 1_000_000_000, (nanos % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The latest attempt of each container (init and app) as CRI reports it.
pub type RuntimeView = HashMap<String, (cri::ContainerStatus, u32)>;

/// Everything a status is computed from.
pub struct StatusInputs<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub start_time: &'a str,
    pub runtime_name: &'a str,
    pub containers: &'a RuntimeView,
    /// Waiting reasons from failed steps (pulls, config errors, back-off).
    pub waiting: &'a HashMap<String, (String, String)>,
    /// The status last reported (transition times, last states).
    pub previous: Option<&'a Value>,
    /// What the probes say about running app containers; a container missing here
    /// has no probes (started and ready while it runs).
    pub health: &'a HashMap<String, ContainerHealth>,
    /// The pod is being deleted and every container has been stopped: the status
    /// is final (upstream's podIsTerminal).
    pub terminal: bool,
}

impl StatusInputs<'_> {
    /// One entry of `containerStatuses`/`initContainerStatuses`.
    fn container_status(&self, c: &Container, init: bool, default_waiting: &str) -> Value {
        let running = cri::ContainerState::ContainerRunning as i32;
        let exited = cri::ContainerState::ContainerExited as i32;
        let runtime = self.containers.get(&c.name);
        let (state, restart_count) = match runtime {
            Some((s, attempt)) if s.state == running => (
                json!({"running": {"startedAt": rfc3339(s.started_at)}}),
                *attempt,
            ),
            Some((s, attempt)) if s.state == exited => {
                let reason = if !s.reason.is_empty() {
                    s.reason.clone()
                } else if s.exit_code == 0 {
                    "Completed".to_string()
                } else {
                    "Error".to_string()
                };
                let mut terminated = json!({
                    "exitCode": s.exit_code,
                    "reason": reason,
                    "startedAt": rfc3339(s.started_at),
                    "finishedAt": rfc3339(s.finished_at),
                    "containerID": format!("{}://{}", self.runtime_name, s.id),
                });
                if !s.message.is_empty() {
                    terminated["message"] = json!(s.message);
                }
                (json!({ "terminated": terminated }), *attempt)
            }
            // A terminal pod has no waiting containers: upstream reports one that
            // never ran as terminated, with this reason and message.
            Some((_, attempt)) if self.terminal => (never_ran(), *attempt),
            None if self.terminal => (never_ran(), 0),
            Some((_, attempt)) => (
                json!({"waiting": {"reason": "ContainerCreating"}}),
                *attempt,
            ),
            None => (json!({"waiting": {"reason": default_waiting}}), 0),
        };
        let previous = self
            .previous
            .and_then(|p| {
                p[if init {
                    "initContainerStatuses"
                } else {
                    "containerStatuses"
                }]
                .as_array()
            })
            .and_then(|l| l.iter().find(|s| s["name"] == c.name.as_str()));
        // A failed pull or a back-off overrides what the last attempt shows; the
        // attempt that ended becomes lastState, as upstream shows it.
        let waiting = self.waiting.get(&c.name).filter(|_| !self.terminal);
        let (state, last_state) = match waiting {
            Some((reason, message)) => (
                json!({"waiting": {"reason": reason, "message": message}}),
                state.get("terminated").map(|t| json!({"terminated": t})),
            ),
            None if restart_count > 0 && state.get("terminated").is_none() => {
                let last = previous.and_then(|p| {
                    p["state"]
                        .get("terminated")
                        .map(|t| json!({"terminated": t}))
                        .or_else(|| {
                            p.get("lastState")
                                .filter(|l| l.get("terminated").is_some())
                                .cloned()
                        })
                });
                (state, last)
            }
            None => (state, None),
        };
        let health = match runtime {
            Some(_) if state.get("running").is_some() => self
                .health
                .get(&c.name)
                .copied()
                .unwrap_or(ContainerHealth {
                    started: true,
                    ready: true,
                }),
            _ => ContainerHealth {
                started: false,
                ready: false,
            },
        };
        let ready = if init {
            state["terminated"]["exitCode"] == 0
        } else {
            health.ready
        };
        let mut status = json!({
            "name": c.name,
            "state": state,
            "lastState": last_state.unwrap_or_else(|| json!({})),
            "ready": ready,
            "restartCount": restart_count,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": runtime.map(|(s, _)| s.image_ref.clone()).unwrap_or_default(),
        });
        if !init {
            status["started"] = json!(health.started);
        }
        if let Some((s, _)) = runtime {
            status["containerID"] = json!(format!("{}://{}", self.runtime_name, s.id));
        }
        status
    }
}

fn never_ran() -> Value {
    json!({"terminated": {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
    }})
}

/// Upstream's getPhase over the computed container statuses; a terminal pod (deleted,
/// all containers stopped) ends Succeeded or Failed whatever its restart policy.
fn phase(policy: &str, init: &[Value], app: &[Value], terminal: bool) -> &'static str {
    let last_exit = |s: &Value| s["lastState"]["terminated"]["exitCode"].as_i64();
    let (mut pending_init, mut failed_init) = (0, 0);
    for s in init {
        let state = &s["state"];
        if state.get("running").is_some() {
            pending_init += 1;
        } else if let Some(code) = state["terminated"]["exitCode"].as_i64() {
            failed_init += usize::from(code != 0);
        } else if let Some(code) = last_exit(s) {
            failed_init += usize::from(code != 0);
        } else {
            pending_init += 1;
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in app {
        let state = &s["state"];
        if state.get("running").is_some() {
            running += 1;
        } else if let Some(code) = state["terminated"]["exitCode"].as_i64() {
            stopped += 1;
            succeeded += usize::from(code == 0);
        } else if last_exit(s).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match policy {
            _ if terminal && stopped == succeeded => "Succeeded",
            _ if terminal => "Failed",
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

pub fn pod_status(inputs: &StatusInputs<'_>) -> Value {
    let pod = inputs.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let default_waiting = if init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let init_statuses: Vec<Value> = init_containers
        .iter()
        .map(|c| inputs.container_status(c, true, default_waiting))
        .collect();
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| inputs.container_status(c, false, default_waiting))
        .collect();
    let phase = phase(&policy, &init_statuses, &statuses, inputs.terminal);
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
    let names = |list: &[Value], ok: &dyn Fn(&Value) -> bool| {
        list.iter()
            .filter(|s| !ok(s))
            .filter_map(|s| s["name"].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let uninitialized = names(&init_statuses, &|s| s["ready"] == true);
    let unready = names(&statuses, &|s| s["ready"] == true);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // lastTransitionTime moves only when a condition's status changes.
    let condition = |typ: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = inputs
            .previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == typ && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        let mut c = json!({"type": typ, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if !reason.is_empty() {
            c["reason"] = json!(reason);
        }
        if !message.is_empty() {
            c["message"] = json!(message);
        }
        c
    };
    let initialized = if phase == "Succeeded" {
        condition("Initialized", true, "PodCompleted", String::new())
    } else if uninitialized.is_empty() {
        condition("Initialized", true, "", String::new())
    } else {
        condition(
            "Initialized",
            false,
            "ContainersNotInitialized",
            format!("containers with incomplete status: [{uninitialized}]"),
        )
    };
    let readiness = |typ: &str| {
        if phase == "Succeeded" {
            condition(typ, false, "PodCompleted", String::new())
        } else if all_ready {
            condition(typ, true, "", String::new())
        } else {
            condition(
                typ,
                false,
                "ContainersNotReady",
                format!("containers with unready status: [{unready}]"),
            )
        }
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", true, "", String::new()),
            initialized,
            readiness("Ready"),
            readiness("ContainersReady"),
            condition("PodScheduled", true, "", String::new()),
        ],
        "hostIP": inputs.host_ip,
        "startTime": inputs.start_time,
        "containerStatuses": statuses,
        "qosClass": super::qos::qos(inputs.pod).as_str(),
    });
    // No address before the sandbox exists (volumes still being set up).
    if !inputs.pod_ip.is_empty() {
        status["podIP"] = json!(inputs.pod_ip);
        status["podIPs"] = json!([{"ip": inputs.pod_ip}]);
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(state: Value, last: Value) -> Value {
        json!({"state": state, "lastState": last})
    }

    #[test]
    fn phase_follows_upstream() {
        let running = || s(json!({"running": {}}), json!({}));
        let waiting = || s(json!({"waiting": {}}), json!({}));
        let failed = || s(json!({"terminated": {"exitCode": 1}}), json!({}));
        let done = || s(json!({"terminated": {"exitCode": 0}}), json!({}));
        let backoff = || {
            s(
                json!({"waiting": {}}),
                json!({"terminated": {"exitCode": 1}}),
            )
        };
        assert_eq!(phase("Never", &[failed()], &[waiting()], false), "Failed");
        assert_eq!(
            phase("Always", &[backoff()], &[waiting()], false),
            "Pending"
        );
        assert_eq!(
            phase("Always", &[running()], &[waiting()], false),
            "Pending"
        );
        assert_eq!(phase("Always", &[done()], &[running()], false), "Running");
        assert_eq!(phase("Never", &[], &[done()], false), "Succeeded");
        assert_eq!(phase("Never", &[], &[failed(), done()], false), "Failed");
        assert_eq!(phase("OnFailure", &[], &[failed()], false), "Running");
        assert_eq!(phase("Always", &[], &[backoff()], false), "Running");
        assert_eq!(phase("Always", &[], &[done()], true), "Succeeded");
        assert_eq!(phase("Always", &[], &[done(), failed()], true), "Failed");
        assert_eq!(phase("OnFailure", &[], &[backoff()], true), "Failed");
    }

    fn inputs_for<'a>(
        pod: &'a Pod,
        view: &'a RuntimeView,
        health: &'a HashMap<String, ContainerHealth>,
        waiting: &'a HashMap<String, (String, String)>,
        terminal: bool,
    ) -> StatusInputs<'a> {
        StatusInputs {
            pod,
            pod_ip: "10.0.0.2",
            host_ip: "10.0.0.1",
            start_time: "2020-01-01T00:00:00Z",
            runtime_name: "containerd",
            containers: view,
            waiting,
            previous: None,
            health,
            terminal,
        }
    }

    fn two_containers() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
        }))
        .unwrap()
    }

    fn in_state(state: cri::ContainerState) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: "1".into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn probe_health_feeds_ready_started_and_conditions() {
        let pod = two_containers();
        let running = in_state(cri::ContainerState::ContainerRunning);
        let view: RuntimeView = HashMap::from([
            ("a".to_string(), (running.clone(), 0)),
            ("b".to_string(), (running, 0)),
        ]);
        let waiting = HashMap::new();
        let unready = HashMap::from([(
            "a".to_string(),
            ContainerHealth {
                started: true,
                ready: false,
            },
        )]);
        let status = pod_status(&inputs_for(&pod, &view, &unready, &waiting, false));
        let cs = &status["containerStatuses"];
        assert_eq!(
            (&cs[0]["ready"], &cs[0]["started"]),
            (&json!(false), &json!(true))
        );
        assert_eq!(
            (&cs[1]["ready"], &cs[1]["started"]),
            (&json!(true), &json!(true))
        );
        let cond = |s: &Value, t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .unwrap()
        };
        for t in ["Ready", "ContainersReady"] {
            let c = cond(&status, t);
            assert_eq!(c["status"], "False");
            assert_eq!(c["message"], "containers with unready status: [a]");
        }
        let none = HashMap::new();
        let status = pod_status(&inputs_for(&pod, &view, &none, &waiting, false));
        assert_eq!(cond(&status, "Ready")["status"], "True");
    }

    #[test]
    fn qos_class_is_the_pods_own() {
        let (health, waiting) = (HashMap::new(), HashMap::new());
        let view = RuntimeView::new();
        let best_effort = two_containers();
        let status = pod_status(&inputs_for(&best_effort, &view, &health, &waiting, false));
        assert_eq!(status["qosClass"], "BestEffort");
        let burstable: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"memory": "64Mi"}}}]},
        }))
        .unwrap();
        let status = pod_status(&inputs_for(&burstable, &view, &health, &waiting, false));
        assert_eq!(status["qosClass"], "Burstable");
    }

    #[test]
    fn a_terminal_pod_reports_never_started_containers_as_terminated() {
        let pod = two_containers();
        let exited = in_state(cri::ContainerState::ContainerExited);
        let view: RuntimeView = HashMap::from([("a".to_string(), (exited, 0))]);
        let waiting = HashMap::from([("b".to_string(), ("ErrImagePull".into(), "x".into()))]);
        let none = HashMap::new();
        let status = pod_status(&inputs_for(&pod, &view, &none, &waiting, true));
        assert_eq!(status["phase"], "Failed");
        let b = &status["containerStatuses"][1]["state"]["terminated"];
        assert_eq!(b["reason"], "ContainerStatusUnknown");
        assert_eq!(b["exitCode"], 137);
    }
}
