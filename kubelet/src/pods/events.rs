//! Events about a pod and its containers (Pulling, Pulled, Created, Started, Killing,
//! FailedMount, BackOff, ...), as upstream's kubelet records them: source component
//! `kubelet` on this host, involving the pod (and the container's field path).

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// Records a Warning event about the pod; failures are logged, never fatal (events are
/// best effort upstream too).
pub async fn warn(client: &kube::Client, pod: &Pod, reason: &str, message: &str) {
    record(client, pod, "Warning", reason, message, None).await
}

/// Records an event about one of the pod's containers (`Pulling`, `Created`, ...), with
/// the field path upstream gives it (`spec.containers{web}`), so that `kubectl
/// describe` shows it as `kubelet` reported it.
pub async fn container(
    client: &kube::Client,
    pod: &Pod,
    container: &str,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == container));
    let list = if init { "initContainers" } else { "containers" };
    let path = format!("spec.{list}{{{container}}}");
    record(client, pod, type_, reason, message, Some(&path)).await
}

async fn record(
    client: &kube::Client,
    pod: &Pod,
    type_: &str,
    reason: &str,
    message: &str,
    field_path: Option<&str>,
) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let now = chrono::Utc::now();
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{name}.{:x}", now.timestamp_nanos_opt().unwrap_or_default()),
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": name,
            "uid": pod.metadata.uid,
            "fieldPath": field_path,
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    });
    let event: Event = match serde_json::from_value(event) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "building event");
            return;
        }
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, reason, "recording event failed");
    }
}
