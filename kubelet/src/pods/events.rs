//! Events about a pod (FailedMount, ...), as upstream's kubelet records them:
//! source component `kubelet` on this host, involving the pod.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// Records a Warning event; failures are logged, never fatal (events are best effort
/// upstream too).
pub async fn warn(client: &kube::Client, pod: &Pod, reason: &str, message: &str) {
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
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
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
