//! configMap volumes: the ConfigMap's keys as files (atomic writer layout).

use k8s_openapi::api::core::v1::ConfigMapVolumeSource;

use super::atomic_writer::Payload;
use super::keys;
use crate::pods::sources;

pub async fn payload(
    client: &kube::Client,
    namespace: &str,
    source: &ConfigMapVolumeSource,
    payload: &mut Payload,
) -> Result<(), String> {
    project(
        client,
        namespace,
        &source.name,
        source.items.as_deref(),
        source.default_mode,
        source.optional.unwrap_or(false),
        payload,
    )
    .await
}

/// Shared with projected volumes' `configMap` sources.
pub async fn project(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    payload: &mut Payload,
) -> Result<(), String> {
    match sources::config_map(client, namespace, name).await {
        Ok(data) => keys::project("configmap", &data, items, default_mode, optional, payload),
        Err(e) if optional && e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
