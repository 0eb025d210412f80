//! Requesting the node's certificates: a CertificateSigningRequest
//! (certificates.k8s.io/v1) for `system:node:<name>` in `system:nodes`, then waiting
//! until it is approved and signed. The client certificate goes to the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer (approved by the
//! controller-manager's csrapproving when RBAC lets the requester), the serving
//! certificate to `kubernetes.io/kubelet-serving` (approved by an admin or an
//! approver of the cluster's own: kube-controller-manager approves none).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::PublicKeyData;
use sha2::{Digest, Sha512_256};
use tracing::info;

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const ORGANIZATION: &str = "system:nodes";
/// Upstream's order, which its approver compares as a set.
pub const USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// Upstream gives up after an hour; an unapproved node is an operator's problem.
const WAIT: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_secs(1);

pub fn common_name(node_name: &str) -> String {
    format!("system:node:{node_name}")
}

/// The PEM CSR for `key`: subject O=system:nodes, CN=system:node:<name>, no SANs
/// (the approver refuses client CSRs with any).
pub fn request_pem(node_name: &str, key: &rcgen::KeyPair) -> Result<String> {
    request_pem_with_sans(node_name, key, Vec::new())
}

/// [`request_pem`] with subject alternative names (a serving certificate's).
pub fn request_pem_with_sans(
    node_name: &str,
    key: &rcgen::KeyPair,
    sans: Vec<rcgen::SanType>,
) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = sans;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, ORGANIZATION);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name(node_name));
    Ok(params
        .serialize_request(key)
        .context("signing the certificate request")?
        .pem()?)
}

/// Upstream's deterministic CSR name: a digest of the public key, subject and usages,
/// so a kubelet restarted with the same pending key finds its request again instead
/// of filing another.
pub fn digested_name(node_name: &str, key: &rcgen::KeyPair) -> String {
    let mut hash = Sha512_256::new();
    // Each field base64url-encoded and '|'-terminated: '|' is not in that alphabet,
    // so no two field lists hash the same stream.
    let mut write = |data: &[u8]| {
        hash.update(URL_SAFE_NO_PAD.encode(data));
        hash.update(b"|");
    };
    write(&key.subject_public_key_info());
    write(common_name(node_name).as_bytes());
    write(ORGANIZATION.as_bytes());
    for usage in USAGES {
        write(usage.as_bytes());
    }
    format!("node-csr-{}", URL_SAFE_NO_PAD.encode(hash.finalize()))
}

/// Files the client certificate request (or finds the one an earlier run filed) and
/// waits for the certificate; returns it as PEM.
pub async fn request_certificate(
    api: &Api<CertificateSigningRequest>,
    node_name: &str,
    key: &rcgen::KeyPair,
) -> Result<String> {
    let request = Request {
        name: Some(digested_name(node_name, key)),
        pem: request_pem(node_name, key)?,
        signer: SIGNER,
        usages: &USAGES,
        wait: WAIT,
    };
    submit_and_wait(api, &request).await
}

/// One certificate signing request as the kubelet files it.
pub struct Request<'a> {
    /// A fixed name (TLS bootstrap's digest, found again after a restart), or `None`
    /// for upstream's certificate manager's `csr-` generated names.
    pub name: Option<String>,
    pub pem: String,
    pub signer: &'a str,
    pub usages: &'a [&'a str],
    /// How long to wait for approval and signing before giving up on this request.
    pub wait: Duration,
}

/// Creates `request` (or, with a fixed name, adopts the one an earlier run created)
/// and waits until it is approved and signed; returns the certificate as PEM.
pub async fn submit_and_wait(
    api: &Api<CertificateSigningRequest>,
    request: &Request<'_>,
) -> Result<String> {
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: request.name.clone(),
            generate_name: request.name.is_none().then(|| "csr-".to_string()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.pem.clone().into_bytes()),
            signer_name: request.signer.into(),
            usages: Some(request.usages.iter().map(|u| u.to_string()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let signer = request.signer;
    let created = match api.create(&PostParams::default(), &csr).await {
        Ok(created) => {
            info!(csr = ?created.metadata.name, signer, "certificate signing request created");
            created
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() && request.name.is_some() => {
            let name = request.name.as_deref().unwrap_or_default();
            let existing = api.get(name).await.context("reading the existing CSR")?;
            // Same name means same key, subject and usages (the request bytes differ:
            // ECDSA signatures are randomised); check the signer, as upstream does.
            if existing.spec.signer_name != signer {
                bail!(
                    "CSR {name} exists for signer {:?}, not {signer}",
                    existing.spec.signer_name
                );
            }
            info!(csr = %name, "reusing the certificate signing request of an earlier run");
            existing
        }
        Err(e) => return Err(e).context("creating the certificate signing request"),
    };
    let name = created
        .metadata
        .name
        .clone()
        .context("the API server returned a CSR without a name")?;
    let uid = created.metadata.uid.clone();
    info!(csr = %name, signer, "waiting for the certificate to be issued");
    let deadline = tokio::time::Instant::now() + request.wait;
    loop {
        match api.get_opt(&name).await {
            Ok(Some(csr)) => {
                if csr.metadata.uid != uid {
                    bail!("CSR {name} was deleted and re-created by someone else");
                }
                if let Some(cert) = issued(&csr)? {
                    info!(csr = %name, signer, "certificate issued");
                    return Ok(cert);
                }
            }
            Ok(None) => bail!("CSR {name} was deleted before it was signed"),
            Err(e) => tracing::warn!(csr = %name, error = %e, "reading the CSR failed; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CSR {name} was not approved and signed within {:?}",
                request.wait
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The certificate once the CSR is approved and signed; an error once it is denied or
/// failed (it will never be signed then).
fn issued(csr: &CertificateSigningRequest) -> Result<Option<String>> {
    let Some(status) = &csr.status else {
        return Ok(None);
    };
    let conditions = status.conditions.as_deref().unwrap_or(&[]);
    for c in conditions {
        if (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False" {
            bail!(
                "certificate signing request {} was {}: {} {}",
                csr.metadata.name.as_deref().unwrap_or(""),
                c.type_.to_lowercase(),
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            );
        }
    }
    let approved = conditions
        .iter()
        .any(|c| c.type_ == "Approved" && c.status != "False");
    match &status.certificate {
        Some(cert) if approved && !cert.0.is_empty() => Ok(Some(
            String::from_utf8(cert.0.clone()).context("certificate is not PEM")?,
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_the_node_and_nothing_else() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = request_pem("n1", &key).unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{pem}"
        );
        // The subject is in the DER as plain strings.
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
            .unwrap();
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("system:node:n1"));
        assert!(text.contains("system:nodes"));
    }

    #[test]
    fn digested_name_depends_on_key_and_node() {
        let k1 = rcgen::KeyPair::generate().unwrap();
        let k2 = rcgen::KeyPair::generate().unwrap();
        let n = digested_name("n1", &k1);
        assert!(n.starts_with("node-csr-"));
        // 32 bytes of SHA-512/256, base64url without padding.
        assert_eq!(n.len(), "node-csr-".len() + 43);
        assert_eq!(n, digested_name("n1", &k1));
        assert_ne!(n, digested_name("n2", &k1));
        assert_ne!(n, digested_name("n1", &k2));
    }

    #[test]
    fn issued_only_when_approved_and_signed_and_denial_is_final() {
        use k8s_openapi::api::certificates::v1::{
            CertificateSigningRequestCondition, CertificateSigningRequestStatus,
        };
        let cond = |t: &str| CertificateSigningRequestCondition {
            type_: t.into(),
            status: "True".into(),
            reason: Some("R".into()),
            ..Default::default()
        };
        let mut csr = CertificateSigningRequest::default();
        assert_eq!(issued(&csr).unwrap(), None);
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![cond("Approved")]),
            certificate: None,
        });
        assert_eq!(issued(&csr).unwrap(), None);
        csr.status.as_mut().unwrap().certificate = Some(ByteString(b"PEM".to_vec()));
        assert_eq!(issued(&csr).unwrap().as_deref(), Some("PEM"));
        csr.status.as_mut().unwrap().conditions = Some(vec![cond("Denied")]);
        assert!(issued(&csr).unwrap_err().to_string().contains("denied"));
    }
}
