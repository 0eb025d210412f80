//! serverTLSBootstrap (`--rotate-server-certificates`): the :10250 certificate issued
//! by the cluster, as upstream's kubelet server certificate manager gets it. A CSR for
//! the `kubernetes.io/kubelet-serving` signer, subject O=system:nodes,
//! CN=system:node:<name>, the node's addresses as subject alternative names; once it is
//! approved and signed the pair goes behind `kubelet-server-current.pem` in
//! `--cert-dir` and the server presents it from the next handshake on (no restart).
//! It is renewed at a jittered 70-90 % of its lifetime, and at once when it no longer
//! covers the node's addresses.
//!
//! Until one is issued the server presents its fallback (tlsCertFile, or the
//! self-signed pair). Upstream refuses every handshake instead ("no serving certificate
//! available for the kubelet"); the fallback keeps a node whose CSR waits for an admin
//! reachable by clients that do not verify it, and changes nothing for those that do.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::NodeAddress;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use tracing::{info, warn};

use super::csr::{self, Request};
use super::rotation;
use super::store::CertStore;
use crate::server::ServingCert;
use crate::server::x509_name::{self, SubjectAltNames};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Exactly these: the kubelet-serving signer refuses any other set.
pub const USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
/// Upstream's certificate manager stops waiting for one request after 15 minutes and
/// files a new one.
const WAIT: Duration = Duration::from_secs(15 * 60);
/// Upstream retries a failed request after 2 s, doubling, then every 32 s.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LAST_RETRY: Duration = Duration::from_secs(32);

/// The names a serving certificate must cover, as upstream's
/// addressesToHostnamesAndIPs: Hostname (a name, or an IP if it parses as one),
/// Internal/ExternalDNS names, Internal/ExternalIP addresses; deduplicated and sorted.
pub fn wanted_names(addresses: &[NodeAddress]) -> SubjectAltNames {
    let mut names = SubjectAltNames::default();
    for a in addresses.iter().filter(|a| !a.address.is_empty()) {
        let ip = a.address.parse::<IpAddr>().ok();
        match (a.type_.as_str(), ip) {
            ("Hostname" | "InternalIP" | "ExternalIP", Some(ip)) => names.ip_addresses.push(ip),
            ("Hostname" | "InternalDNS" | "ExternalDNS", None) => {
                names.dns_names.push(a.address.clone())
            }
            ("InternalDNS" | "ExternalDNS", Some(_)) => names.dns_names.push(a.address.clone()),
            _ => {}
        }
    }
    names.dns_names.sort();
    names.dns_names.dedup();
    // Upstream sorts the IPs by their text.
    names.ip_addresses.sort_by_key(|ip| ip.to_string());
    names.ip_addresses.dedup();
    names
}

/// Upstream's certSatisfiesTemplate: the same common name, and no wanted name,
/// address or organization missing (extra ones do not force a renewal).
fn satisfies(cert: &CertificateDer<'_>, node_name: &str, wanted: &SubjectAltNames) -> bool {
    let (Some(subject), Some(names)) =
        (x509_name::subject(cert), x509_name::subject_alt_names(cert))
    else {
        return false;
    };
    subject.common_name.as_deref() == Some(csr::common_name(node_name).as_str())
        && subject.organizations.iter().any(|o| o == csr::ORGANIZATION)
        && wanted.dns_names.iter().all(|n| names.dns_names.contains(n))
        && wanted
            .ip_addresses
            .iter()
            .all(|ip| names.ip_addresses.contains(ip))
}

/// Serves the pair behind `kubelet-server-current.pem` if there is one that has not
/// expired (a restart keeps its issued certificate); returns its leaf.
pub fn load_current(
    cert_dir: &Path,
    serving: &ServingCert,
) -> Result<Option<CertificateDer<'static>>> {
    let path = CertStore::serving(cert_dir)?.current_path();
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("no certificate in {}", path.display()))?
        .with_context(|| format!("{} is not PEM", path.display()))?;
    let (_, not_after) = x509_name::validity(&leaf)
        .with_context(|| format!("{} holds no valid X.509 certificate", path.display()))?;
    if not_after <= chrono::Utc::now().timestamp() {
        info!(cert = %path.display(), "the stored serving certificate has expired; requesting a new one");
        return Ok(None);
    }
    serving
        .replace_pem(&pem)
        .with_context(|| format!("loading {}", path.display()))?;
    info!(cert = %path.display(), "serving the stored kubelet-serving certificate");
    Ok(Some(leaf))
}

/// Keeps a cluster-issued serving certificate in `serving`, forever: waits for the
/// node's addresses, requests a certificate covering them, and renews it when due
/// or when the addresses move. `current` is what [`load_current`] found.
pub async fn run(
    client: kube::Client,
    cert_dir: &Path,
    node_name: &str,
    mut addresses: watch::Receiver<Vec<NodeAddress>>,
    serving: Arc<ServingCert>,
    mut current: Option<CertificateDer<'static>>,
) -> Result<()> {
    let store = CertStore::serving(cert_dir)?;
    let api = kube::Api::<CertificateSigningRequest>::all(client);
    let mut retry = FIRST_RETRY;
    loop {
        let wanted = wanted_names(&addresses.borrow_and_update());
        if wanted == SubjectAltNames::default() {
            // Upstream requests nothing before the node has an address to put in it.
            addresses
                .changed()
                .await
                .context("the node status reporter stopped")?;
            continue;
        }
        let now = chrono::Utc::now().timestamp();
        let due = match &current {
            Some(cert) if satisfies(cert, node_name, &wanted) => {
                let (not_before, not_after) =
                    x509_name::validity(cert).context("the served certificate is not X.509")?;
                let at = rotation::deadline(not_before, not_after, rotation::jitter());
                info!(
                    not_after,
                    rotation_deadline = at,
                    "serving certificate rotation is enabled"
                );
                at
            }
            Some(_) => {
                info!(
                    ?wanted,
                    "the serving certificate does not cover the node's addresses; renewing"
                );
                now
            }
            None => now,
        };
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs((due - now) as u64)) => {}
                changed = addresses.changed() => {
                    changed.context("the node status reporter stopped")?;
                    continue;
                }
            }
        }
        match renew(&api, &store, node_name, &wanted, &serving).await {
            Ok(leaf) => {
                current = Some(leaf);
                retry = FIRST_RETRY;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in = ?retry, "requesting the serving certificate failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

/// One renewal: request, serve, store; returns the new leaf.
async fn renew(
    api: &kube::Api<CertificateSigningRequest>,
    store: &CertStore,
    node_name: &str,
    wanted: &SubjectAltNames,
    serving: &ServingCert,
) -> Result<CertificateDer<'static>> {
    let (cert, key) = request(api, node_name, wanted).await?;
    let pair = format!("{}\n{}", cert.trim_end(), key.serialize_pem());
    serving
        .replace_pem(pair.as_bytes())
        .context("the issued serving certificate")?;
    let path = store.update(&cert, &key)?;
    info!(cert = %path.display(), "serving the issued kubelet-serving certificate");
    Ok(serving.leaf())
}

/// Files a CSR for `wanted` with a fresh key (upstream's manager makes one per
/// request) and waits for it; returns the certificate (PEM) and its key.
async fn request(
    api: &kube::Api<CertificateSigningRequest>,
    node_name: &str,
    wanted: &SubjectAltNames,
) -> Result<(String, rcgen::KeyPair)> {
    // ECDSA P-256, as upstream's keyutil generates.
    let key = rcgen::KeyPair::generate().context("generating the serving key")?;
    let request = Request {
        name: None,
        pem: csr::request_pem_with_sans(node_name, &key, sans(wanted)?)?,
        signer: SIGNER,
        usages: &USAGES,
        wait: WAIT,
    };
    let cert = csr::submit_and_wait(api, &request).await?;
    Ok((cert, key))
}

fn sans(names: &SubjectAltNames) -> Result<Vec<rcgen::SanType>> {
    let mut sans = Vec::new();
    for name in &names.dns_names {
        let dns = name
            .clone()
            .try_into()
            .with_context(|| format!("node address {name:?} is not a valid DNS name"))?;
        sans.push(rcgen::SanType::DnsName(dns));
    }
    sans.extend(
        names
            .ip_addresses
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(*ip)),
    );
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(type_: &str, address: &str) -> NodeAddress {
        NodeAddress {
            type_: type_.into(),
            address: address.into(),
        }
    }

    #[test]
    fn wanted_names_follow_upstreams_address_rules() {
        let names = wanted_names(&[
            address("InternalIP", "10.0.0.9"),
            address("ExternalIP", "203.0.113.4"),
            address("InternalIP", "not-an-ip"),
            address("Hostname", "ip-10-0-0-9.ec2.internal"),
            address("InternalDNS", "ip-10-0-0-9.ec2.internal"),
            address("ExternalDNS", "node.example.com"),
            address("Hostname", "10.0.0.10"),
            address("Hostname", ""),
        ]);
        assert_eq!(
            names.dns_names,
            ["ip-10-0-0-9.ec2.internal", "node.example.com"]
        );
        let ips: Vec<String> = names.ip_addresses.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.10", "10.0.0.9", "203.0.113.4"]);
        assert_eq!(wanted_names(&[]), SubjectAltNames::default());
    }

    fn cert_for(cn: &str, org: &str, sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_satisfies_when_it_covers_every_wanted_name() {
        let wanted = wanted_names(&[
            address("InternalIP", "10.0.0.9"),
            address("Hostname", "node-a"),
        ]);
        let sans = || sans(&wanted).unwrap();
        let good = cert_for("system:node:node-a", "system:nodes", sans());
        assert!(satisfies(&good, "node-a", &wanted));
        assert!(!satisfies(&good, "node-b", &wanted), "another node's name");
        let no_org = cert_for("system:node:node-a", "other", sans());
        assert!(!satisfies(&no_org, "node-a", &wanted));
        let mut more = sans();
        more.push(rcgen::SanType::IpAddress("10.0.0.10".parse().unwrap()));
        let extra = cert_for("system:node:node-a", "system:nodes", more);
        assert!(satisfies(&extra, "node-a", &wanted), "extra names are fine");
        let moved = wanted_names(&[address("InternalIP", "10.0.0.11")]);
        assert!(
            !satisfies(&good, "node-a", &moved),
            "a new address is missing"
        );
    }

    #[test]
    fn an_expired_or_missing_stored_certificate_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let serving = crate::server::self_signed_for_tests(dir.path());
        let before = serving.leaf();
        assert_eq!(load_current(dir.path(), &serving).unwrap(), None);

        let store = CertStore::serving(dir.path()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node-a".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        store
            .update(&params.self_signed(&key).unwrap().pem(), &key)
            .unwrap();
        assert_eq!(load_current(dir.path(), &serving).unwrap(), None);
        assert_eq!(serving.leaf(), before);

        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let fresh = params.self_signed(&key).unwrap();
        store.update(&fresh.pem(), &key).unwrap();
        let loaded = load_current(dir.path(), &serving).unwrap().unwrap();
        assert_eq!(loaded.as_ref(), fresh.der().as_ref());
        assert_eq!(serving.leaf().as_ref(), fresh.der().as_ref());
    }
}
