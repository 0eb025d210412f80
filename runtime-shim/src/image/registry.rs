//! A client for the OCI distribution API (`/v2/`): manifests and blobs, with the
//! registry auth flow (anonymous, HTTP basic, and bearer tokens fetched from the realm a
//! `WWW-Authenticate: Bearer` challenge names), redirects for blobs served from
//! elsewhere, and registry mirrors. Everything fetched is checked against its digest by
//! the caller ([`super::puller`]); this module only moves bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use super::reference::{DOCKER_HUB, Digest, Reference};

/// Manifests larger than this are refused: real ones are a few KiB.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const MAX_REDIRECTS: usize = 5;

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{url}: {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url}: unauthorized: the registry wants credentials{}", if *had_credentials { " and rejected the ones given" } else { "; pass them in PullImageRequest.auth" })]
    Unauthorized { url: String, had_credentials: bool },
    #[error("{url}: {source}")]
    Transport {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: reading body: {source}")]
    Body { url: String, source: hyper::Error },
    #[error("{0}")]
    Protocol(String),
    #[error("writing blob: {0}")]
    Io(#[from] std::io::Error),
}

/// Credentials for one pull, as the CRI `AuthConfig` carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identity_token`), exchanged at the token realm.
    IdentityToken(String),
    /// A bearer token to send as is (`registry_token`).
    RegistryToken(String),
}

/// Where requests for one upstream registry go: `--registry-mirror HOST=URL`. The URL's
/// path, if any, prefixes repository names (`http://127.0.0.1:5000/registry.k8s.io`
/// serves `registry.k8s.io/pause` as `/v2/registry.k8s.io/pause/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://authority`
    pub base: String,
    /// `""` or `path/` to put in front of repository names.
    pub prefix: String,
}

#[derive(Debug, Clone, Default)]
pub struct Mirrors(HashMap<String, Vec<Endpoint>>);

impl Mirrors {
    /// Parses `HOST=URL` flags. Plain `http://` is accepted only for loopback mirrors:
    /// anything else would let the network rewrite images before digests are known.
    pub fn parse(flags: &[String]) -> Result<Self, String> {
        let mut m: HashMap<String, Vec<Endpoint>> = HashMap::new();
        for flag in flags {
            let (host, url) = flag
                .split_once('=')
                .ok_or_else(|| format!("--registry-mirror {flag:?}: expected HOST=URL"))?;
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("--registry-mirror {flag:?}: {e}"))?;
            let scheme = uri.scheme_str().unwrap_or("");
            let authority = uri
                .authority()
                .ok_or_else(|| format!("--registry-mirror {flag:?}: URL has no host"))?;
            let loopback = matches!(authority.host(), "localhost" | "::1" | "[::1]")
                || authority.host().starts_with("127.");
            match scheme {
                "https" => {}
                "http" if loopback => {}
                "http" => {
                    return Err(format!(
                        "--registry-mirror {flag:?}: http:// is only allowed for loopback mirrors; use https://"
                    ));
                }
                _ => {
                    return Err(format!(
                        "--registry-mirror {flag:?}: URL must be http(s)://"
                    ));
                }
            }
            let path = uri.path().trim_matches('/');
            m.entry(host.to_string()).or_default().push(Endpoint {
                base: format!("{scheme}://{authority}"),
                prefix: if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}/")
                },
            });
        }
        Ok(Mirrors(m))
    }

    /// Mirrors first, in flag order, then the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut v = self.0.get(registry).cloned().unwrap_or_default();
        let host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        v.push(Endpoint {
            base: format!("https://{host}"),
            prefix: String::new(),
        });
        v
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Shared by all pulls: one connection pool, and bearer tokens cached per
/// (endpoint, repository) so that the layers of one image reuse the manifest's token.
#[derive(Clone)]
pub struct RegistryClient {
    http: HttpClient,
    tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl Default for RegistryClient {
    fn default() -> Self {
        Self::new()
    }
}

/// A manifest (or index) as the registry sent it.
pub struct Fetched {
    pub media_type: String,
    pub body: Bytes,
    /// What the registry claims; the caller checks it against the body.
    pub claimed_digest: Option<String>,
}

impl RegistryClient {
    pub fn new() -> Self {
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("the ring provider supports the default TLS versions")
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        RegistryClient {
            http: Client::builder(TokioExecutor::new()).build(tls),
            tokens: Arc::default(),
        }
    }

    /// GET a manifest by tag or digest.
    pub async fn manifest(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        selector: &str,
        creds: &Credentials,
    ) -> Result<Fetched, RegistryError> {
        let repo = format!("{}{}", ep.prefix, reference.repository);
        let url = format!("{}/v2/{repo}/manifests/{selector}", ep.base);
        let resp = self
            .get(ep, &repo, &url, Some(MANIFEST_ACCEPT), creds)
            .await?;
        let headers = resp.headers().clone();
        let body = collect(&url, resp.into_body(), MAX_MANIFEST_BYTES).await?;
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        Ok(Fetched {
            media_type,
            body,
            claimed_digest: headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }

    /// Streams a blob into `dest`, returning the sha256 of what was written. The
    /// caller compares it with the digest it asked for before using the file.
    pub async fn blob_to_file(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        creds: &Credentials,
        dest: &Path,
    ) -> Result<Digest, RegistryError> {
        let repo = format!("{}{}", ep.prefix, reference.repository);
        let url = format!("{}/v2/{repo}/blobs/{digest}", ep.base);
        let resp = self.get(ep, &repo, &url, None, creds).await?;
        let mut body = resp.into_body();
        let mut file = tokio::fs::File::create(dest).await?;
        let mut hasher = Sha256::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| RegistryError::Body {
                url: url.clone(),
                source,
            })?;
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                file.write_all(data).await?;
            }
        }
        file.sync_all().await?;
        Ok(Digest::from_sha256_hex(&hex::encode(hasher.finalize())))
    }

    /// GET with auth and redirects: answers 2xx or an error.
    async fn get(
        &self,
        ep: &Endpoint,
        repo: &str,
        url: &str,
        accept: Option<&str>,
        creds: &Credentials,
    ) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
        let token_key = format!("{}/{repo}", ep.base);
        let mut auth = self.tokens.lock().unwrap().get(&token_key).cloned();
        if auth.is_none()
            && let Credentials::RegistryToken(t) = creds
        {
            auth = Some(format!("Bearer {t}"));
        }
        let mut challenged = false;
        let mut url = url.to_string();
        let mut redirects = 0;
        loop {
            let resp = self.send(&url, accept, auth.as_deref()).await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status.is_redirection() {
                redirects += 1;
                let next = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        RegistryError::Protocol(format!("{url}: redirect without Location"))
                    })?;
                let next = resolve(&url, next);
                // Blob stores (S3, CDNs) get signed URLs, never our registry credentials.
                if host_of(&next) != host_of(&url) {
                    auth = None;
                }
                if redirects > MAX_REDIRECTS {
                    return Err(RegistryError::Protocol(format!(
                        "{url}: too many redirects"
                    )));
                }
                url = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = parse_challenge(resp.headers());
                auth = match challenge {
                    Some(Challenge::Basic) => basic_header(creds),
                    Some(Challenge::Bearer(params)) => {
                        let token = self.fetch_token(&url, &params, repo, creds).await?;
                        let value = format!("Bearer {token}");
                        self.tokens
                            .lock()
                            .unwrap()
                            .insert(token_key.clone(), value.clone());
                        Some(value)
                    }
                    None => None,
                };
                if auth.is_some() {
                    continue;
                }
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Unauthorized {
                    url,
                    had_credentials: *creds != Credentials::Anonymous,
                });
            }
            let body = collect(&url, resp.into_body(), 4096)
                .await
                .unwrap_or_default();
            return Err(RegistryError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
        let mut req = Request::builder().method(Method::GET).uri(url).header(
            header::USER_AGENT,
            concat!("runtime-shim/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| RegistryError::Protocol(format!("{url}: {e}")))?;
        self.http
            .request(req)
            .await
            .map_err(|source| RegistryError::Transport {
                url: url.to_string(),
                source,
            })
    }

    /// The token endpoint of the Docker/OCI token auth spec.
    async fn fetch_token(
        &self,
        url: &str,
        params: &HashMap<String, String>,
        repo: &str,
        creds: &Credentials,
    ) -> Result<String, RegistryError> {
        let realm = params.get("realm").ok_or_else(|| {
            RegistryError::Protocol(format!("{url}: Bearer challenge without realm"))
        })?;
        let mut query = vec![];
        if let Some(s) = params.get("service") {
            query.push(format!("service={}", encode(s)));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{repo}:pull"));
        query.push(format!("scope={}", encode(&scope)));
        let token_url = format!("{realm}?{}", query.join("&"));
        let auth = match creds {
            // Exchanging an identity token needs the POST form flow; registries that
            // hand out identity tokens also accept them as the basic-auth password.
            Credentials::IdentityToken(t) => basic_value("<token>", t),
            other => basic_header(other),
        };
        let resp = self.send(&token_url, None, auth.as_deref()).await?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized {
                url: token_url,
                had_credentials: *creds != Credentials::Anonymous,
            });
        }
        let body = collect(&token_url, resp.into_body(), 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!("{token_url}: bad token response: {e}"))
        })?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| RegistryError::Protocol(format!("{token_url}: no token in response")))
    }
}

async fn collect(
    url: &str,
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| RegistryError::Body {
            url: url.to_string(),
            source,
        })?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > limit {
                return Err(RegistryError::Protocol(format!(
                    "{url}: response larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(d);
        }
    }
    Ok(Bytes::from(out))
}

enum Challenge {
    Basic,
    Bearer(HashMap<String, String>),
}

fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let v = headers.get(header::WWW_AUTHENTICATE)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer(parse_params(rest))),
        _ => None,
    }
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"` (commas may
/// appear inside quoted values, e.g. `scope="repository:x:pull,push"`).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    out
}

fn basic_header(creds: &Credentials) -> Option<String> {
    match creds {
        Credentials::Basic { username, password } => basic_value(username, password),
        Credentials::RegistryToken(t) => Some(format!("Bearer {t}")),
        _ => None,
    }
}

fn basic_value(user: &str, pass: &str) -> Option<String> {
    use base64::Engine;
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    ))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn host_of(url: &str) -> Option<String> {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
}

/// A Location header may be relative to the request URL.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let uri: Uri = base.parse().expect("we only request valid URLs");
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    );
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let path = uri.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{origin}{dir}{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_path_prefixes_and_refuse_remote_http() {
        let m = Mirrors::parse(&["registry.k8s.io=http://127.0.0.1:5000/registry.k8s.io".into()])
            .unwrap();
        let eps = m.endpoints("registry.k8s.io");
        assert_eq!(
            eps[0],
            Endpoint {
                base: "http://127.0.0.1:5000".into(),
                prefix: "registry.k8s.io/".into()
            }
        );
        assert_eq!(eps[1].base, "https://registry.k8s.io");
        assert_eq!(
            m.endpoints("docker.io")[0].base,
            "https://registry-1.docker.io"
        );
        assert!(Mirrors::parse(&["docker.io=http://10.0.0.1:5000".into()]).is_err());
        assert!(Mirrors::parse(&["docker.io".into()]).is_err());
        assert!(Mirrors::parse(&["docker.io=https://mirror.example".into()]).is_ok());
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = parse_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn relative_redirects_resolve_against_the_request() {
        assert_eq!(
            resolve("http://h:1/v2/a/blobs/x", "/other/y"),
            "http://h:1/other/y"
        );
        assert_eq!(
            resolve("http://h:1/v2/a/blobs/x", "https://cdn/z"),
            "https://cdn/z"
        );
    }
}
