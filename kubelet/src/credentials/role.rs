//! The node's AWS credentials, looked for where the SDKs look first on a node: the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
//! then the instance profile role in IMDS (`iam/security-credentials/<role>`).

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::sigv4::AwsCredentials;
use crate::cloud::imds::Imds;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    #[serde(default)]
    code: String,
    access_key_id: String,
    secret_access_key: String,
    token: String,
}

pub async fn credentials() -> Result<AwsCredentials> {
    if let Some(creds) = from_env() {
        return Ok(creds);
    }
    let mut imds = Imds::from_env()?;
    from_imds(&mut imds).await
}

fn from_env() -> Option<AwsCredentials> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Some(AwsCredentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        session_token: var("AWS_SESSION_TOKEN"),
    })
}

/// The first role of the instance profile (an instance has at most one) and its
/// temporary credentials. IMDS rotates them well before they expire, so they are
/// read again for every token request rather than cached here.
pub async fn from_imds(imds: &mut Imds) -> Result<AwsCredentials> {
    let roles = imds
        .get("iam/security-credentials/")
        .await?
        .context("no IAM role attached to this instance (IMDS has no iam/security-credentials/)")?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .context("IMDS lists no IAM role")?
        .to_string();
    let json = imds
        .require(&format!("iam/security-credentials/{role}"))
        .await?;
    let c: RoleCredentials =
        serde_json::from_str(&json).with_context(|| format!("IMDS credentials of role {role}"))?;
    if !c.code.is_empty() && c.code != "Success" {
        bail!("IMDS credentials of role {role}: Code {}", c.code);
    }
    Ok(AwsCredentials {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: Some(c.token).filter(|t| !t.is_empty()),
    })
}
