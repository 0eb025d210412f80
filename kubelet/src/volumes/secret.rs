//! secret volumes: the Secret's keys as files, on a tmpfs (never written to disk).

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource};

use super::atomic_writer::Payload;
use super::keys;
use crate::pods::sources;

pub async fn payload(
    client: &kube::Client,
    namespace: &str,
    source: &SecretVolumeSource,
    payload: &mut Payload,
) -> Result<(), String> {
    let name = source.secret_name.clone().unwrap_or_default();
    project(
        client,
        namespace,
        &name,
        source.items.as_deref(),
        source.default_mode,
        source.optional.unwrap_or(false),
        payload,
    )
    .await
}

/// Shared with projected volumes' `secret` sources.
pub async fn project(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    payload: &mut Payload,
) -> Result<(), String> {
    match sources::secret(client, namespace, name).await {
        Ok(data) => keys::project("secret", &data, items, default_mode, optional, payload),
        Err(e) if optional && e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
