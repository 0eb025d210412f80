//! Client certificate rotation (`rotateCertificates`): at a jittered 70-90 % of the
//! current certificate's lifetime, as upstream's certificate manager, request a new one
//! with the node's own credentials (the `selfnodeclient` approval) and store it behind
//! `kubelet-client-current.pem`.
//!
//! Upstream swaps the certificate inside its TLS transport; the kube crate's client
//! reads the kubeconfig's files once. So once the new pair is stored, [`run`] returns
//! and the kubelet re-executes itself (see `main.rs`): same pid, same flags, the new
//! certificate, and a restarted kubelet adopts its Node and pods as after any restart.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tracing::{info, warn};

use super::csr;
use super::store::CertStore;
use crate::server::x509_name;

/// Upstream's rule: `notBefore + lifetime * (0.7 + 0.2 * jitter)`, `jitter` in [0, 1),
/// so nodes joined together do not all rotate at the same moment.
pub fn deadline(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
}

/// A fraction in [0, 1) that differs between processes (std's hasher keys are random
/// per process), enough to spread rotations without a random-number crate.
pub(crate) fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `(notBefore, notAfter)` of the certificate in `kubelet-client-current.pem`.
fn current_validity(store: &CertStore) -> Result<(i64, i64)> {
    let path = store.current_path();
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .context("no certificate")?
        .context("not PEM")?;
    x509_name::validity(&cert).context("not an X.509 certificate")
}

/// Waits for the rotation deadline of the certificate in `cert_dir`, then renews it
/// through `client`; returns once a new certificate is stored. Failed requests are
/// retried with backoff (up to 5 min apart) for as long as it takes.
pub async fn run(client: kube::Client, cert_dir: &Path, node_name: &str) -> Result<()> {
    let store = CertStore::new(cert_dir)?;
    let (not_before, not_after) = current_validity(&store)?;
    let at = deadline(not_before, not_after, jitter());
    let now = chrono::Utc::now().timestamp();
    info!(
        not_after,
        rotation_deadline = at,
        "client certificate rotation is enabled"
    );
    if at > now {
        tokio::time::sleep(Duration::from_secs((at - now) as u64)).await;
    }
    let api = kube::Api::<CertificateSigningRequest>::all(client);
    let mut backoff = Duration::from_secs(1);
    loop {
        let key = store.pending_key()?;
        match csr::request_certificate(&api, node_name, &key).await {
            Ok(cert) => {
                let current = store.update(&cert, &key)?;
                info!(cert = %current.display(), "rotated the client certificate");
                return Ok(());
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in = ?backoff, "client certificate rotation failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Whether `kubeconfig` uses the rotated pair (what TLS bootstrap writes): rotation
/// replacing a file the kubeconfig does not read would change nothing.
pub fn kubeconfig_uses_store(kubeconfig: &Path, cert_dir: &Path) -> bool {
    let current = cert_dir.join(super::store::CURRENT);
    kube::config::Kubeconfig::read_from(kubeconfig).is_ok_and(|k| {
        k.auth_infos.iter().any(|a| {
            a.auth_info
                .as_ref()
                .and_then(|i| i.client_certificate.as_deref())
                .is_some_and(|c| Path::new(c) == current)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(deadline(1000, 2000, 0.0), 1700);
        assert_eq!(deadline(1000, 2000, 0.5), 1800);
        assert_eq!(deadline(1000, 2000, 1.0), 1900);
        assert_eq!(deadline(1000, 900, 0.5), 1000);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
