//! A minimal EC2 instance metadata (IMDSv2) client: one session token from
//! `PUT /latest/api/token`, then GETs carrying it. Plain HTTP on a link-local address, so
//! a small hyper client does; the kubelet links no AWS SDK.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The variable every AWS SDK reads to find IMDS elsewhere than the link-local address.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest session IMDS grants (6 h); the kubelet reads metadata only at start.
const TOKEN_TTL_SECONDS: &str = "21600";
/// IMDS answers in milliseconds; a silent endpoint means we are not on EC2 (or the hop
/// limit drops the reply), and waiting longer would only delay the error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Transient failures (connection refused while the emulator starts, throttling 5xx)
/// are retried this many times, as the SDKs do.
const ATTEMPTS: u32 = 3;

pub struct Imds {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

impl Imds {
    /// The endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, or the link-local default.
    pub fn from_env() -> Result<Self> {
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self::new(&endpoint)
    }

    pub fn new(endpoint: &str) -> Result<Self> {
        let base = endpoint.trim().trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("IMDS endpoint {endpoint:?} must be an http:// URL");
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Imds {
            base,
            client,
            token: None,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `GET /latest/meta-data/<path>`: `Some(body)`, or `None` when IMDS has no such
    /// entry (404), as for `public-ipv4` on an instance without a public address.
    pub async fn get(&mut self, path: &str) -> Result<Option<String>> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let t = self.fetch_token().await?;
                self.token = Some(t.clone());
                t
            }
        };
        let uri = format!("{}/latest/meta-data/{path}", self.base);
        let (status, body) = self
            .send(|| {
                http::Request::get(&uri)
                    .header(TOKEN_HEADER, &token)
                    .body(Full::default())
            })
            .await
            .with_context(|| format!("IMDS GET {uri}"))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            other => bail!("IMDS GET {uri}: HTTP {other}: {}", body.trim()),
        }
    }

    /// Like [`get`](Self::get) for entries every instance has.
    pub async fn require(&mut self, path: &str) -> Result<String> {
        let value = self
            .get(path)
            .await?
            .with_context(|| format!("IMDS has no meta-data/{path}"))?;
        let value = value.trim().to_string();
        if value.is_empty() {
            bail!("IMDS meta-data/{path} is empty");
        }
        Ok(value)
    }

    async fn fetch_token(&self) -> Result<String> {
        let uri = format!("{}/latest/api/token", self.base);
        let (status, body) = self
            .send(|| {
                http::Request::put(&uri)
                    .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)
                    .body(Full::default())
            })
            .await
            .with_context(|| {
                format!("IMDSv2 session token from {uri} (not on EC2? set {ENDPOINT_ENV})")
            })?;
        if status != 200 || body.trim().is_empty() {
            bail!(
                "IMDSv2 session token from {uri}: HTTP {status}: {}",
                body.trim()
            );
        }
        Ok(body.trim().to_string())
    }

    /// Sends the request built by `build`, retrying connection errors, timeouts and
    /// 5xx answers; returns the final status and body.
    async fn send(
        &self,
        build: impl Fn() -> http::Result<http::Request<Full<Bytes>>>,
    ) -> Result<(u16, String)> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let request = build()?;
            match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request)).await {
                Err(_) => last = Some(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
                Ok(Err(e)) => last = Some(anyhow::Error::new(e)),
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await?.to_bytes();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    if status >= 500 {
                        last = Some(anyhow::anyhow!("HTTP {status}: {}", body.trim()));
                        continue;
                    }
                    return Ok((status, body));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_be_http() {
        assert!(Imds::new("https://169.254.169.254").is_err());
        assert_eq!(
            Imds::new("http://127.0.0.1:9/").unwrap().endpoint(),
            "http://127.0.0.1:9"
        );
    }

    #[tokio::test]
    async fn an_absent_endpoint_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens, connections are refused.
        let mut imds = Imds::new("http://127.0.0.1:9").unwrap();
        let err = format!("{:#}", imds.get("instance-id").await.unwrap_err());
        assert!(err.contains("session token"), "{err}");
        assert!(err.contains(ENDPOINT_ENV), "{err}");
    }
}
