//! Events about a pod and its containers (Pulling, Pulled, Created, Started, Killing,
//! FailedMount, BackOff, ...), as upstream's kubelet records them: source component
//! `kubelet` on this host, involving the pod (and the container's field path). A
//! repeat of an event already recorded (same object, field path, type, reason and
//! message) bumps its `count` and `lastTimestamp` instead of creating another, as
//! upstream's event correlator does, so a probe failing every second is one event.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// upstream's maxLruCacheEntries: past this many distinct events the cache starts over.
const MAX_SEEN: usize = 4096;

/// An event recorded before: its object name and count so far.
#[derive(Clone)]
struct Seen {
    name: String,
    count: i32,
}

static SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(Default::default);

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
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let key = [
        node.as_str(),
        &namespace,
        &name,
        field_path.unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
        type_,
        reason,
        message,
    ]
    .join("\u{0}");
    let seen = SEEN.lock().ok().and_then(|m| m.get(&key).cloned());
    if let Some(seen) = seen {
        let count = seen.count + 1;
        let patch = json!({"count": count, "lastTimestamp": stamp});
        match api
            .patch(&seen.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                remember(key, seen.name, count);
                return;
            }
            // Expired (events live an hour): record it anew.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(error = %e, reason, "updating event failed");
                return;
            }
        }
    }
    let event_name = format!("{name}.{:x}", now.timestamp_nanos_opt().unwrap_or_default());
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name,
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
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => remember(key, event_name, 1),
        Err(e) => tracing::warn!(error = %e, reason, "recording event failed"),
    }
}

fn remember(key: String, name: String, count: i32) {
    if let Ok(mut seen) = SEEN.lock() {
        if seen.len() >= MAX_SEEN && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(key, Seen { name, count });
    }
}
