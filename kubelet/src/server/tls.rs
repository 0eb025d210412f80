//! The server's TLS configuration: its certificate (configured, or self-signed and
//! kept in `--cert-dir` as upstream does, until serverTLSBootstrap replaces it with
//! an issued one) and optional client-certificate checking against `clientCAFile`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::ServerSettings;

/// Upstream's names for the self-signed pair in `--cert-dir`.
const SELF_SIGNED_CERT: &str = "kubelet.crt";
const SELF_SIGNED_KEY: &str = "kubelet.key";

/// The certificate the server presents, swappable while it serves: a new handshake
/// gets the certificate of the moment, open connections keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ServingCert {
    /// Serves the pair in `pem` (certificate chain and key, in any order) from now on.
    /// A pair that does not load, or whose key does not match, changes nothing.
    pub fn replace_pem(&self, pem: &[u8]) -> Result<()> {
        let key = certified_key(pem, pem, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The leaf certificate being served.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).cert[0].clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The chain in `chain_pem` and the key in `key_pem`, checked to belong together.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .context("the certificate is not PEM")?;
    if chain.is_empty() {
        bail!("no certificate in it");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("no private key in it")?;
    CertifiedKey::from_der(chain, key, provider)
        .context("the serving certificate does not match its key")
}

/// Builds the rustls configuration and the handle to swap its certificate.
/// `host_name` goes into a self-signed certificate's subject alternative names.
pub fn server_config(
    settings: &ServerSettings,
    cert_dir: &Path,
    host_name: &str,
) -> Result<(rustls::ServerConfig, Arc<ServingCert>)> {
    let (cert_file, key_file) = match (&settings.tls_cert_file, &settings.tls_private_key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => ensure_self_signed(cert_dir, host_name)?,
    };
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("reading the serving {what} {}", path.display()))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = certified_key(
        &read(&cert_file, "certificate")?,
        &read(&key_file, "key")?,
        &provider,
    )
    .with_context(|| {
        format!(
            "loading the serving certificate {} and key {}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    let serving = Arc::new(ServingCert {
        current: RwLock::new(Arc::new(key)),
        provider: provider.clone(),
    });

    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading clientCAFile {}", ca_file.display()))?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                bail!(
                    "clientCAFile {} holds no usable CA certificate",
                    ca_file.display()
                );
            }
            // Certificates are optional: requests may still authenticate with a token
            // (or anonymously); a certificate that is given must verify.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(serving.clone());
    // Upgrades (exec, attach, port-forward) are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, serving))
}

/// A server certificate handle over a self-signed pair in `cert_dir`.
#[cfg(test)]
pub(crate) fn self_signed_for_tests(cert_dir: &Path) -> Arc<ServingCert> {
    server_config(&tests::settings(), cert_dir, "node-a")
        .unwrap()
        .1
}

/// The self-signed pair in `cert_dir`, created on first start and reused afterwards
/// (clients that pinned it keep working across restarts).
fn ensure_self_signed(cert_dir: &Path, host_name: &str) -> Result<(PathBuf, PathBuf)> {
    let cert_file = cert_dir.join(SELF_SIGNED_CERT);
    let key_file = cert_dir.join(SELF_SIGNED_KEY);
    if cert_file.exists() && key_file.exists() {
        return Ok((cert_file, key_file));
    }
    std::fs::create_dir_all(cert_dir)
        .with_context(|| format!("creating --cert-dir {}", cert_dir.display()))?;
    let (cert_pem, key_pem) = self_signed_pem(host_name)?;
    write_private(&key_file, key_pem.as_bytes())?;
    std::fs::write(&cert_file, cert_pem)
        .with_context(|| format!("writing {}", cert_file.display()))?;
    tracing::info!(cert = %cert_file.display(), "generated a self-signed serving certificate");
    Ok((cert_file, key_file))
}

/// A one-year certificate for `host_name` (a DNS name or an IP), subject
/// `<host>@<unix time>` as upstream's generator names it.
fn self_signed_pem(host_name: &str) -> Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let san = match host_name.parse::<std::net::IpAddr>() {
        Ok(ip) => rcgen::SanType::IpAddress(ip),
        Err(_) => rcgen::SanType::DnsName(
            host_name
                .to_string()
                .try_into()
                .with_context(|| format!("{host_name:?} is not a valid DNS name"))?,
        ),
    };
    params.subject_alt_names = vec![san];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{host_name}@{now}"));
    // Valid from yesterday (clock skew) for a year, as upstream's generator does.
    let day = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let today = chrono::Utc::now().date_naive();
    params.not_before = day(today - chrono::Days::new(1));
    params.not_after = day(today + chrono::Days::new(365));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().context("generating the serving key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The private key must not be readable by other users from the first byte on.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthorizationMode;

    pub(super) fn settings() -> ServerSettings {
        ServerSettings {
            enabled: true,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            anonymous_enabled: false,
            token_webhook_cache_ttl: None,
            authorization: AuthorizationMode::AlwaysAllow,
        }
    }

    #[test]
    fn self_signed_pair_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        server_config(&settings(), dir.path(), "node-a").unwrap();
        let first = std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap();
        let mode = std::fs::metadata(dir.path().join(SELF_SIGNED_KEY))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        server_config(&settings(), dir.path(), "node-a").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap(),
            first
        );
    }

    #[test]
    fn the_served_certificate_is_swapped_only_for_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (_, serving) = server_config(&settings(), dir.path(), "node-a").unwrap();
        let self_signed = serving.leaf();
        let (cert, key) = self_signed_pem("10.1.2.3").unwrap();
        serving
            .replace_pem(format!("{cert}{key}").as_bytes())
            .unwrap();
        let swapped = serving.leaf();
        assert_ne!(swapped, self_signed);
        let names = crate::server::x509_name::subject_alt_names(&swapped).unwrap();
        assert_eq!(
            names.ip_addresses,
            ["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
        );

        let (_, other_key) = self_signed_pem("10.1.2.3").unwrap();
        let err = serving
            .replace_pem(format!("{cert}{other_key}").as_bytes())
            .unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        assert!(serving.replace_pem(b"garbage").is_err());
        assert_eq!(serving.leaf(), swapped, "a bad pair changes nothing");
    }

    #[test]
    fn a_client_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut s = settings();
        s.client_ca_file = Some(ca);
        assert!(server_config(&s, dir.path(), "127.0.0.1").is_err());
    }
}
