//! The pod status the kubelet reports, computed from CRI state with upstream's phases,
//! condition types and container state reasons.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp(nanos / 1_000_000_000, (nanos % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[allow(clippy::too_many_arguments)]
pub fn pod_status(
    pod: &Pod,
    pod_ip: &str,
    host_ip: &str,
    start_time: &str,
    containers: &HashMap<String, (cri::ContainerStatus, u32)>,
    waiting: &HashMap<String, (String, String)>,
    runtime_name: &str,
    previous: Option<&Value>,
) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let running = cri::ContainerState::ContainerRunning as i32;
    let exited = cri::ContainerState::ContainerExited as i32;
    let mut statuses = vec![];
    let (mut all_running, mut all_exited, mut all_succeeded) = (true, true, true);
    for c in &spec.containers {
        let image = c.image.clone().unwrap_or_default();
        let (state, ready, restart_count, container_id, image_id) = match containers.get(&c.name) {
            Some((s, attempt)) if s.state == running => (
                json!({"running": {"startedAt": rfc3339(s.started_at)}}),
                true,
                *attempt,
                Some(format!("{runtime_name}://{}", s.id)),
                s.image_ref.clone(),
            ),
            Some((s, attempt)) if s.state == exited => {
                let terminated = json!({"terminated": {
                    "exitCode": s.exit_code,
                    "reason": if s.reason.is_empty() { "Error".to_string() } else { s.reason.clone() },
                    "startedAt": rfc3339(s.started_at),
                    "finishedAt": rfc3339(s.finished_at),
                    "containerID": format!("{runtime_name}://{}", s.id),
                }});
                (
                    terminated,
                    false,
                    *attempt,
                    Some(format!("{runtime_name}://{}", s.id)),
                    s.image_ref.clone(),
                )
            }
            Some((s, attempt)) => (
                json!({"waiting": {"reason": "ContainerCreating"}}),
                false,
                *attempt,
                Some(format!("{runtime_name}://{}", s.id)),
                s.image_ref.clone(),
            ),
            None => (
                json!({"waiting": {"reason": "ContainerCreating"}}),
                false,
                0,
                None,
                String::new(),
            ),
        };
        // A failed pull or a back-off overrides what the last attempt shows.
        let state = match waiting.get(&c.name) {
            Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
            None => state,
        };
        let exit_code = state["terminated"]["exitCode"].as_i64();
        all_running &= state.get("running").is_some();
        all_exited &= exit_code.is_some();
        all_succeeded &= exit_code == Some(0);
        let mut status = json!({
            "name": c.name,
            "state": state,
            "ready": ready,
            "restartCount": restart_count,
            "image": image,
            "imageID": image_id,
            "started": ready,
        });
        if let Some(id) = container_id {
            status["containerID"] = json!(id);
        }
        statuses.push(status);
    }
    let phase = if all_exited && !spec.containers.is_empty() && policy != "Always" {
        if all_succeeded { "Succeeded" } else { "Failed" }
    } else if all_running
        || statuses
            .iter()
            .any(|s| s["state"].get("running").is_some() || s["restartCount"].as_u64() > Some(0))
    {
        "Running"
    } else {
        "Pending"
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // lastTransitionTime moves only when a condition's status changes.
    let condition = |typ: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == typ && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        let mut c = json!({"type": typ, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if !ok && (typ == "Ready" || typ == "ContainersReady") {
            let not_ready: Vec<&str> = statuses
                .iter()
                .filter(|s| s["ready"] != true)
                .filter_map(|s| s["name"].as_str())
                .collect();
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
        c
    };
    json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", true),
            condition("Initialized", true),
            condition("Ready", all_running),
            condition("ContainersReady", all_running),
            condition("PodScheduled", true),
        ],
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    })
}
