//! The built-in ECR provider (upstream 1.20's in-tree `pkg/credentialprovider/aws`):
//! for `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` images, an authorization
//! token from ECR `GetAuthorizationToken`, signed with the node's credentials, becomes
//! the registry's basic auth until shortly before the token expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use super::RegistryAuth;
use super::role;
use super::sigv4::{self, Request};

/// The SDKs' standard variables for another ECR endpoint (moto in tests, a VPC
/// endpoint in private subnets): the service-specific one wins over the global one.
const ENDPOINT_ENVS: [&str; 2] = ["AWS_ENDPOINT_URL_ECR", "AWS_ENDPOINT_URL"];
const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// Renew this long before expiresAt (upstream jitters 30 min), so a pull never
/// starts with a token about to lapse.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An ECR registry host, split as upstream's `ecrPattern` splits it.
#[derive(Debug, PartialEq)]
pub struct EcrRegistry {
    pub account: String,
    pub fips: bool,
    pub region: String,
    pub china: bool,
}

/// `Some` when `host` is an ECR registry.
pub fn parse_registry(host: &str) -> Option<EcrRegistry> {
    let (rest, china) = match host.strip_suffix(".amazonaws.com.cn") {
        Some(r) => (r, true),
        None => (host.strip_suffix(".amazonaws.com")?, false),
    };
    let (account, rest) = rest.split_once(".dkr.ecr")?;
    let (fips, region) = match rest.strip_prefix("-fips.") {
        Some(region) => (true, region),
        None => (false, rest.strip_prefix('.')?),
    };
    let region_ok = region
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && region_ok).then(|| {
        EcrRegistry {
            account: account.to_string(),
            fips,
            region: region.to_string(),
            china,
        }
    })
}

impl EcrRegistry {
    /// The ECR API endpoint of the registry's region.
    fn default_endpoint(&self) -> String {
        let service = if self.fips { "ecr-fips" } else { "api.ecr" };
        let suffix = if self.china {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!("https://{service}.{}.{suffix}", self.region)
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct EcrProvider {
    http: HttpsClient,
    /// Registry host → (renew at, credentials).
    cache: Mutex<HashMap<String, (SystemTime, RegistryAuth)>>,
}

impl Default for EcrProvider {
    fn default() -> Self {
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("the ring provider supports the default TLS versions")
            .https_or_http()
            .enable_http1()
            .build();
        EcrProvider {
            http: Client::builder(TokioExecutor::new()).build(tls),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl EcrProvider {
    /// Credentials for `image` (a repository) when it is in ECR; `Ok(None)` otherwise.
    pub async fn provide(&self, image: &str) -> Result<Option<RegistryAuth>> {
        let host = image.split('/').next().unwrap_or(image);
        let Some(registry) = parse_registry(host) else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().await;
        if let Some((renew_at, auth)) = cache.get(host)
            && SystemTime::now() < *renew_at
        {
            return Ok(Some(auth.clone()));
        }
        let (auth, expires_at) = self
            .fetch(host, &registry)
            .await
            .with_context(|| format!("ECR credentials for {host}"))?;
        let renew_at = expires_at
            .checked_sub(RENEW_BEFORE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if renew_at > SystemTime::now() {
            cache.insert(host.to_string(), (renew_at, auth.clone()));
        } else {
            // Nothing to cache (an emulator answers with a token "expired" in 2015):
            // the next pull asks again.
            tracing::debug!(
                registry = host,
                "ECR token expires within the renewal margin; not cached"
            );
        }
        Ok(Some(auth))
    }

    async fn fetch(
        &self,
        host: &str,
        registry: &EcrRegistry,
    ) -> Result<(RegistryAuth, SystemTime)> {
        let creds = role::credentials().await?;
        let endpoint = ENDPOINT_ENVS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
            .unwrap_or_else(|| registry.default_endpoint());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        let uri: http::Uri = format!("{endpoint}/")
            .parse()
            .with_context(|| format!("ECR endpoint {endpoint:?}"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("ECR endpoint {endpoint:?} has no host"))?
            .to_string();
        let body = b"{}";
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = vec![
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("host".to_string(), authority),
            ("x-amz-date".to_string(), amz_date.clone()),
            ("x-amz-target".to_string(), TARGET.to_string()),
        ];
        if let Some(token) = &creds.session_token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        let authorization = sigv4::authorization(
            &creds,
            &registry.region,
            "ecr",
            &amz_date,
            &Request {
                method: "POST",
                path: "/",
                query: "",
                headers: headers.clone(),
                body,
            },
        );
        let mut request = http::Request::post(uri.clone());
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            request = request.header(k, v);
        }
        let request = request
            .header("authorization", authorization)
            .body(Full::new(Bytes::from_static(body)))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("POST {uri}: no answer in {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("POST {uri}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "GetAuthorizationToken at {uri}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            );
        }
        parse_token(host, &bytes)
    }
}

/// The first `authorizationData` entry: base64 `AWS:<password>` and its expiry.
fn parse_token(host: &str, body: &[u8]) -> Result<(RegistryAuth, SystemTime)> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("GetAuthorizationToken answer is not JSON")?;
    let data = &v["authorizationData"][0];
    let token = data["authorizationToken"]
        .as_str()
        .context("GetAuthorizationToken answer has no authorizationToken")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .context("authorizationToken is not base64")?;
    let decoded = String::from_utf8(decoded).context("authorizationToken is not text")?;
    let (user, password) = decoded
        .split_once(':')
        .context("authorizationToken is not user:password")?;
    // JSON 1.1 timestamps are epoch seconds (with a fraction).
    let expires = data["expiresAt"]
        .as_f64()
        .context("authorization data expiresAt is missing")?;
    let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(expires.max(0.0));
    Ok((
        RegistryAuth::new(host, user.to_string(), password.to_string()),
        expires_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ecr_registries_as_upstream() {
        let r = parse_registry("123456789012.dkr.ecr.us-west-2.amazonaws.com").unwrap();
        assert_eq!(
            r,
            EcrRegistry {
                account: "123456789012".into(),
                fips: false,
                region: "us-west-2".into(),
                china: false
            }
        );
        assert_eq!(
            r.default_endpoint(),
            "https://api.ecr.us-west-2.amazonaws.com"
        );
        let cn = parse_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").unwrap();
        assert_eq!(
            cn.default_endpoint(),
            "https://api.ecr.cn-north-1.amazonaws.com.cn"
        );
        let fips = parse_registry("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            fips.default_endpoint(),
            "https://ecr-fips.us-east-1.amazonaws.com"
        );
        for not in [
            "12345678901.dkr.ecr.us-west-2.amazonaws.com",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.io",
            "123456789012.dkr.ecr..amazonaws.com",
            "registry.k8s.io",
            "public.ecr.aws",
        ] {
            assert!(parse_registry(not).is_none(), "{not}");
        }
    }

    #[test]
    fn decodes_the_token() {
        let body = br#"{"authorizationData":[{"authorizationToken":"QVdTOnNlY3JldA==","expiresAt":1.7e9,"proxyEndpoint":"https://x"}]}"#;
        let (auth, expires) = parse_token("h", body).unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("AWS", "secret")
        );
        assert_eq!(auth.key, "h");
        assert_eq!(
            expires,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert!(parse_token("h", br#"{"authorizationData":[]}"#).is_err());
        assert!(
            parse_token(
                "h",
                br#"{"authorizationData":[{"authorizationToken":"bm9jb2xvbg=="}]}"#
            )
            .is_err()
        );
    }
}
