//! configMap and secret volumes (and the same sources of projected volumes): the
//! object's keys as files, in the atomic writer layout. Secrets land on a tmpfs (the
//! caller picks the medium), never on disk.

use k8s_openapi::api::core::v1::KeyToPath;

use super::atomic_writer::Payload;
use super::keys;
use crate::pods::sources::{self, KeyedKind};

/// Where a volume's keys come from.
pub struct KeyedSource<'a> {
    pub kind: KeyedKind,
    pub name: &'a str,
    pub items: Option<&'a [KeyToPath]>,
    pub default_mode: Option<i32>,
    pub optional: bool,
}

pub async fn project(
    client: &kube::Client,
    namespace: &str,
    source: KeyedSource<'_>,
    payload: &mut Payload,
) -> Result<(), String> {
    // keys::project words its errors with the lower-case kind, as upstream's plugins.
    let plugin = match source.kind {
        KeyedKind::ConfigMap => "configmap",
        KeyedKind::Secret => "secret",
    };
    match sources::keyed(client, source.kind, namespace, source.name).await {
        Ok(data) => keys::project(
            plugin,
            &data,
            source.items,
            source.default_mode,
            source.optional,
            payload,
        ),
        Err(e) if source.optional && e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
