//! TLS bootstrap (`--bootstrap-kubeconfig`), as upstream's kubelet does it: when
//! `--kubeconfig` is missing or its client certificate has expired, request a client
//! certificate with the bootstrap credentials (a bootstrap token, usually), keep it in
//! `--cert-dir`, and write `--kubeconfig` pointing at it. A kubeconfig that is still
//! valid is used as it is, so a restart does not bootstrap again.

pub mod csr;
pub mod rotation;
pub mod serving;
pub mod store;

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::config::{Cluster, KubeConfigOptions, Kubeconfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tracing::{info, warn};

use crate::server::x509_name;
use store::CertStore;

/// Makes sure `kubeconfig` holds usable node credentials, bootstrapping them with
/// `bootstrap` if needed.
pub async fn load_client_cert(
    kubeconfig: &Path,
    bootstrap: &Path,
    cert_dir: &Path,
    node_name: &str,
) -> Result<()> {
    if still_valid(kubeconfig) {
        info!(kubeconfig = %kubeconfig.display(), "kubeconfig exists and is valid; skipping bootstrap");
        return Ok(());
    }
    info!(bootstrap = %bootstrap.display(), "using the bootstrap kubeconfig to request a client certificate");
    let boot = Kubeconfig::read_from(bootstrap)
        .with_context(|| format!("reading --bootstrap-kubeconfig {}", bootstrap.display()))?;
    let cluster = current_cluster(&boot)
        .context("the bootstrap kubeconfig names no cluster for its current context")?;
    let config = kube::Config::from_custom_kubeconfig(boot, &KubeConfigOptions::default())
        .await
        .context("loading the bootstrap kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the bootstrap client")?;

    let store = CertStore::new(cert_dir)?;
    let key = store.pending_key()?;
    let api = kube::Api::<CertificateSigningRequest>::all(client);
    let cert = csr::request_certificate(&api, node_name, &key).await?;
    let current = store.update(&cert, &key)?;
    write_kubeconfig(kubeconfig, &cluster, &current)?;
    info!(kubeconfig = %kubeconfig.display(), cert = %current.display(), "wrote the kubeconfig for the issued client certificate");
    Ok(())
}

/// Upstream's check: the kubeconfig exists, loads, and holds a client certificate none
/// of whose chain has expired. Anything else means bootstrap (a broken file is
/// replaced, not fatal).
pub fn still_valid(kubeconfig: &Path) -> bool {
    if !kubeconfig.exists() {
        return false;
    }
    match client_certificate_expiry(kubeconfig) {
        Ok(not_after) if not_after > chrono::Utc::now().timestamp() => true,
        Ok(not_after) => {
            warn!(kubeconfig = %kubeconfig.display(), not_after, "the kubeconfig's client certificate has expired");
            false
        }
        Err(e) => {
            warn!(kubeconfig = %kubeconfig.display(), error = %format!("{e:#}"), "the existing kubeconfig is not usable");
            false
        }
    }
}

/// The earliest notAfter of the kubeconfig's client certificate chain (Unix seconds).
pub fn client_certificate_expiry(kubeconfig: &Path) -> Result<i64> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let context = config
        .current_context
        .as_deref()
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
        .and_then(|c| c.context.as_ref())
        .context("no current context")?;
    let user = context
        .user
        .as_deref()
        .context("the context names no user")?;
    let auth = config
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .with_context(|| format!("no user {user:?}"))?;
    let pem = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => STANDARD
            .decode(data.trim())
            .context("client-certificate-data is not base64")?,
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        (None, None) => anyhow::bail!("no client certificate"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .context("client certificate is not PEM")?;
    certs
        .iter()
        .map(|c| x509_name::validity(c).map(|(_, not_after)| not_after))
        .collect::<Option<Vec<i64>>>()
        .context("client certificate is not a valid X.509 certificate")?
        .into_iter()
        .min()
        .context("no certificate in the client certificate file")
}

fn current_cluster(config: &Kubeconfig) -> Option<Cluster> {
    let context = config
        .current_context
        .as_deref()
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
        .and_then(|c| c.context.as_ref())?;
    config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .clone()
}

/// The kubeconfig upstream writes after bootstrap: the bootstrap kubeconfig's cluster
/// (server, CA) and the issued pair, by path, so rotation only swaps the symlink.
fn write_kubeconfig(path: &Path, cluster: &Cluster, pem: &Path) -> Result<()> {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), json!(cluster.server));
    if let Some(file) = &cluster.certificate_authority {
        c.insert("certificate-authority".into(), json!(file));
    } else if let Some(data) = &cluster.certificate_authority_data {
        c.insert("certificate-authority-data".into(), json!(data));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        c.insert("insecure-skip-tls-verify".into(), json!(true));
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": c}],
        "users": [{"name": "default-auth", "user": {
            "client-certificate": pem,
            "client-key": pem,
        }}],
        "contexts": [{"name": "default-context", "context": {
            "cluster": "default-cluster",
            "user": "default-auth",
            "namespace": "default",
        }}],
        "current-context": "default-context",
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    store::write_private(path, serde_yaml::to_string(&doc)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem(expiry_year: i32) -> (String, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(expiry_year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap().pem(), key)
    }

    #[test]
    fn written_kubeconfig_is_valid_until_its_certificate_expires() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("sub/kubelet.kubeconfig");
        assert!(!still_valid(&kubeconfig));

        let store = CertStore::new(&dir.path().join("pki")).unwrap();
        let cluster = Cluster {
            server: Some("https://127.0.0.1:6443".into()),
            certificate_authority_data: Some("Q0E=".into()),
            ..Cluster::default()
        };
        let (pem, key) = cert_pem(2049);
        let current = store.update(&pem, &key).unwrap();
        write_kubeconfig(&kubeconfig, &cluster, &current).unwrap();
        assert!(still_valid(&kubeconfig));
        let loaded = Kubeconfig::read_from(&kubeconfig).unwrap();
        assert_eq!(
            current_cluster(&loaded).unwrap().server.as_deref(),
            Some("https://127.0.0.1:6443")
        );

        let (old, key) = cert_pem(2021);
        store.update(&old, &key).unwrap();
        assert!(!still_valid(&kubeconfig), "expired certificate");

        std::fs::write(&kubeconfig, "not: [a kubeconfig").unwrap();
        assert!(!still_valid(&kubeconfig), "garbage");
    }
}
