//! projected volumes: secrets, configMaps, downward API fields and service-account
//! tokens merged into one directory. The `kube-api-access-*` volume the 1.20
//! apiserver injects into every pod is one of these (token + kube-root-ca.crt +
//! namespace).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::atomic_writer::Payload;
use super::keyed::{self, KeyedSource};
use super::token::{DEFAULT_EXPIRATION_SECONDS, TokenCache};
use super::{downward_api, keys};
use crate::pods::fieldpath::PodAddresses;
use crate::pods::sources::KeyedKind;

pub struct ProjectionInputs<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub addr: PodAddresses<'a>,
    pub allocatable: &'a BTreeMap<String, Quantity>,
    /// With an fsGroup the token is 0600 before the group gets read access (0640),
    /// as upstream.
    pub fs_group: Option<i64>,
}

pub async fn payload(
    inputs: &ProjectionInputs<'_>,
    source: &ProjectedVolumeSource,
    tokens: &mut TokenCache,
    payload: &mut Payload,
) -> Result<(), String> {
    let pod = inputs.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let default_mode = source.default_mode;
    for s in source.sources.iter().flatten() {
        let keyed = s
            .config_map
            .as_ref()
            .map(|c| KeyedSource {
                kind: KeyedKind::ConfigMap,
                name: &c.name,
                items: c.items.as_deref(),
                default_mode,
                optional: c.optional.unwrap_or(false),
            })
            .into_iter()
            .chain(s.secret.as_ref().map(|c| KeyedSource {
                kind: KeyedKind::Secret,
                name: &c.name,
                items: c.items.as_deref(),
                default_mode,
                optional: c.optional.unwrap_or(false),
            }));
        for source in keyed {
            keyed::project(inputs.client, &namespace, source, payload).await?;
        }
        if let Some(d) = &s.downward_api {
            downward_api::project(
                pod,
                d.items.as_deref().unwrap_or_default(),
                default_mode,
                inputs.addr,
                inputs.allocatable,
                payload,
            )?;
        }
        if let Some(t) = &s.service_account_token {
            let service_account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            let token = tokens
                .get(
                    inputs.client,
                    pod,
                    &service_account,
                    t.audience.as_deref().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                )
                .await?;
            let mode = if inputs.fs_group.is_some() {
                0o600
            } else {
                default_mode.unwrap_or(keys::DEFAULT_MODE)
            };
            keys::insert(payload, &t.path, token.as_bytes(), mode)?;
        }
    }
    Ok(())
}

/// Whether any downwardAPI projection needs the node's allocatable resources.
pub fn needs_allocatable(source: &ProjectedVolumeSource) -> bool {
    source
        .sources
        .iter()
        .flatten()
        .filter_map(|s| s.downward_api.as_ref())
        .any(|d| downward_api::needs_allocatable(d.items.as_deref().unwrap_or_default()))
}
