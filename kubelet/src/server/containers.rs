//! Finding a pod's sandbox and container instances in the CRI runtime by the labels
//! every kubelet puts on them.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

use crate::cri::CriClient;

/// Upstream's label keys (the pod workers set the same ones).
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// Whether the pod's spec names `container` (regular, init or ephemeral).
pub fn has_container(pod: &Pod, container: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == container)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
}

fn attempt(c: &cri::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// Every instance of `container` in the pod, newest attempt first.
pub async fn instances(
    cri: &CriClient,
    pod_uid: &str,
    container: &str,
) -> Result<Vec<cri::Container>, tonic::Status> {
    let filter = cri::ContainerFilter {
        label_selector: HashMap::from([
            (LABEL_POD_UID.to_string(), pod_uid.to_string()),
            (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
        ]),
        ..Default::default()
    };
    let mut containers = cri
        .runtime_client()
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .containers;
    containers.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
    Ok(containers)
}

/// The newest instance, if it is running: what exec and attach act on.
pub async fn running(
    cri: &CriClient,
    pod_uid: &str,
    container: &str,
) -> Result<Option<cri::Container>, tonic::Status> {
    let newest = instances(cri, pod_uid, container).await?.into_iter().next();
    Ok(newest.filter(|c| c.state == cri::ContainerState::ContainerRunning as i32))
}

pub async fn status(cri: &CriClient, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
    cri.runtime_client()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .ok_or_else(|| tonic::Status::not_found(format!("no status for container {id}")))
}

/// The pod's newest ready sandbox: what port-forward connects into.
pub async fn ready_sandbox(
    cri: &CriClient,
    pod_uid: &str,
) -> Result<Option<String>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        label_selector: HashMap::from([(LABEL_POD_UID.to_string(), pod_uid.to_string())]),
        ..Default::default()
    };
    let sandboxes = cri
        .runtime_client()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items;
    Ok(sandboxes
        .into_iter()
        .max_by_key(|s| s.created_at)
        .map(|s| s.id))
}
