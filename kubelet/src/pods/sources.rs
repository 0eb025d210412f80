//! The API objects a pod's env and volumes draw from. The Node authorizer lets a
//! kubelet GET only the ConfigMaps, Secrets and ServiceAccounts its pods reference,
//! never list them, so each is fetched by name when needed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;

/// A ConfigMap's or Secret's keys with their bytes (`data` and `binaryData` of a
/// ConfigMap, decoded `data` of a Secret).
pub type KeyedData = BTreeMap<String, Vec<u8>>;

/// The two kinds of object whose keys pods consume (env, volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyedKind {
    ConfigMap,
    Secret,
}

impl KeyedKind {
    /// As upstream names the kind in messages and file-mode errors.
    pub fn name(self) -> &'static str {
        match self {
            KeyedKind::ConfigMap => "ConfigMap",
            KeyedKind::Secret => "Secret",
        }
    }
}

/// The keys of the ConfigMap or Secret `name`.
pub async fn keyed(
    client: &kube::Client,
    kind: KeyedKind,
    namespace: &str,
    name: &str,
) -> Result<KeyedData, SourceError> {
    match kind {
        KeyedKind::ConfigMap => config_map(client, namespace, name).await,
        KeyedKind::Secret => secret(client, namespace, name).await,
    }
}

/// Why an object could not be read, worded as upstream's errors.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("couldn't get {kind} {namespace}/{name}: {source}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl SourceError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::NotFound { .. })
    }
}

async fn get<K>(
    client: &kube::Client,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<K, SourceError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(SourceError::NotFound {
            kind,
            name: name.to_string(),
        }),
        Err(source) => Err(SourceError::Api {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

pub async fn config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<KeyedData, SourceError> {
    let cm: ConfigMap = get(client, "configmap", namespace, name).await?;
    let mut out: KeyedData = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    Ok(out)
}

pub async fn secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<KeyedData, SourceError> {
    let s: Secret = get(client, "secret", namespace, name).await?;
    let mut out: KeyedData = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // stringData is write-only in the API, but be lenient with what a fake may return.
    for (k, v) in s.string_data.unwrap_or_default() {
        out.entry(k).or_insert_with(|| v.into_bytes());
    }
    Ok(out)
}

/// The node's allocatable resources: the default of unset `limits.*` in the
/// downward API.
pub async fn node_allocatable(
    client: &kube::Client,
    node_name: &str,
) -> Result<BTreeMap<String, Quantity>, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = api.get(node_name).await?;
    Ok(node.status.and_then(|s| s.allocatable).unwrap_or_default())
}
