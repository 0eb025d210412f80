//! The HTTP GET of httpGet probes and lifecycle hooks: one request per connection (as
//! upstream, which disables keep-alives), TLS without verification (upstream's
//! `InsecureSkipVerify`), redirects followed as Go's client follows them, and errors
//! worded as Go prints them, since they end up in events users compare with upstream.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Upstream reads at most 10 KiB of a probe's response body.
const MAX_BODY: usize = 10 * 1024;
/// Go's client gives up after 10 redirects.
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The API's `HTTP`/`HTTPS` (upstream lower-cases whatever is written).
    pub fn parse(s: Option<&str>) -> Result<Scheme, String> {
        match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("http") => Ok(Scheme::Http),
            Some("https") => Ok(Scheme::Https),
            Some(other) => Err(format!("unsupported protocol scheme \"{other}\"")),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An absolute http(s) URL; `path` holds the path and query and starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    /// Upstream's formatURL: `path` may carry a query; a missing leading slash is added.
    pub fn new(scheme: Scheme, host: &str, port: u16, path: &str) -> Url {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Url {
            scheme,
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            path,
        }
    }

    /// `host:port`, bracketing IPv6 literals (Go's JoinHostPort).
    pub fn authority(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// Where a `Location` header points, relative to this URL.
    fn resolve(&self, location: &str) -> Option<Url> {
        let absolute = |scheme: Scheme, rest: &str| {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let (host, port) = split_host_port(authority, scheme.default_port())?;
            Some(Url::new(scheme, &host, port, path))
        };
        if let Some(rest) = location.strip_prefix("http://") {
            absolute(Scheme::Http, rest)
        } else if let Some(rest) = location.strip_prefix("https://") {
            absolute(Scheme::Https, rest)
        } else if let Some(rest) = location.strip_prefix("//") {
            absolute(self.scheme, rest)
        } else if location.starts_with('/') {
            Some(Url::new(self.scheme, &self.host, self.port, location))
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            Some(Url::new(
                self.scheme,
                &self.host,
                self.port,
                &format!("{dir}{location}"),
            ))
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let authority = authority.rsplit('@').next()?;
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// Which redirects to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Probes: only to the same host name; a redirect elsewhere is the response
    /// (upstream's `followNonLocalRedirects=false`).
    SameHost,
    /// Lifecycle hooks: Go's default client, any host.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// At most 10 KiB, lossily decoded.
    pub body: String,
}

/// GETs `url` with `headers` (upstream's defaults for User-Agent and Accept added by
/// the caller), following redirects as `redirects` says, all within `timeout` (none:
/// no limit). Errors read as Go's `Get "<url>": <cause>`.
pub async fn get(
    url: Url,
    headers: &[(String, String)],
    redirects: Redirects,
    timeout: Option<Duration>,
) -> Result<Response, String> {
    let first = url.to_string();
    let exchange = follow(url, headers, redirects);
    match timeout {
        None => exchange.await,
        Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
            Err(format!(
                "Get \"{first}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ))
        }),
    }
}

async fn follow(
    url: Url,
    headers: &[(String, String)],
    redirects: Redirects,
) -> Result<Response, String> {
    let original_host = url.host.clone();
    let mut url = url;
    let mut hops = 0;
    loop {
        let (response, location) = once(&url, headers)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let Some(next) = location.and_then(|l| url.resolve(&l)) else {
            return Ok(response);
        };
        if redirects == Redirects::SameHost && next.host != original_host {
            return Ok(response);
        }
        hops += 1;
        if hops >= MAX_REDIRECTS {
            return Err(format!("Get \"{next}\": stopped after 10 redirects"));
        }
        url = next;
    }
}

/// One request; returns the response and, for a redirect, its `Location`.
async fn once(
    url: &Url,
    headers: &[(String, String)],
) -> Result<(Response, Option<String>), String> {
    let authority = url.authority();
    let tcp = TcpStream::connect(&authority)
        .await
        .map_err(|e| dial_error(&authority, &e))?;
    match url.scheme {
        Scheme::Http => exchange(tcp, url, headers).await,
        Scheme::Https => {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            exchange(tls, url, headers).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    url: &Url,
    headers: &[(String, String)],
) -> Result<(Response, Option<String>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let mut request = hyper::Request::get(url.path.as_str());
    let mut host_set = false;
    for (name, value) in headers {
        host_set |= name.eq_ignore_ascii_case("host");
        request = request.header(name.as_str(), value.as_str());
    }
    if !host_set {
        request = request.header(http::header::HOST, url.authority());
    }
    let request = request
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let location = status
        .is_redirection()
        .then(|| response.headers().get(http::header::LOCATION))
        .flatten()
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    bytes.truncate(MAX_BODY);
    drop(conn);
    Ok((
        Response {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        },
        location,
    ))
}

/// Go's wording of a failed dial: `dial tcp 10.0.0.5:81: connect: connection refused`.
pub fn dial_error(addr: &str, e: &std::io::Error) -> String {
    let cause = match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code)
            .desc()
            .to_ascii_lowercase(),
        None => e.to_string(),
    };
    format!("dial tcp {addr}: connect: {cause}")
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes do not verify the server's certificate (upstream: InsecureSkipVerify).
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any certificate, but still checks the handshake signatures so the TLS
/// session itself is sound.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn locations_resolve_like_go() {
        let base = Url::new(Scheme::Http, "10.0.0.1", 8080, "/a/b?x=1");
        assert_eq!(base.to_string(), "http://10.0.0.1:8080/a/b?x=1");
        let r = |l: &str| base.resolve(l).unwrap().to_string();
        assert_eq!(r("/c"), "http://10.0.0.1:8080/c");
        assert_eq!(r("c?y"), "http://10.0.0.1:8080/a/c?y");
        assert_eq!(r("https://example.com/z"), "https://example.com:443/z");
        assert_eq!(r("//other:81"), "http://other:81/");
        assert_eq!(
            Url::new(Scheme::Http, "fd00::1", 80, "healthz").to_string(),
            "http://[fd00::1]:80/healthz"
        );
        assert_eq!(r("http://[fd00::2]:90/p"), "http://[fd00::2]:90/p");
    }

    /// A server answering each connection with the next canned response; returns its
    /// port and the requests it saw.
    async fn serve(responses: Vec<String>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut seen = vec![];
            for response in responses {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(response.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
            seen
        });
        (port, task)
    }

    fn reply(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn same_host_redirects_are_followed_and_others_returned() {
        let (port, server) = serve(vec![
            reply("302 Found", "location: /next\r\n", ""),
            reply(
                "301 Moved",
                "location: http://elsewhere.invalid/\r\n",
                "moved",
            ),
        ])
        .await;
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        let url = Url::new(Scheme::Http, "127.0.0.1", port, "/start");
        let r = get(
            url,
            &headers,
            Redirects::SameHost,
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.body, "moved");
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("GET /start HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].to_ascii_lowercase().contains("x-probe: yes"));
        assert!(seen[0].contains(&format!("host: 127.0.0.1:{port}")));
        assert!(seen[1].starts_with("GET /next HTTP/1.1\r\n"), "{}", seen[1]);
    }

    #[tokio::test]
    async fn refused_and_slow_servers_fail_with_gos_wording() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Url::new(Scheme::Http, "127.0.0.1", port, "/");
        let e = get(url, &[], Redirects::SameHost, Some(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            format!(
                "Get \"http://127.0.0.1:{port}/\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
        // Accepts but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = Url::new(Scheme::Http, "127.0.0.1", port, "/");
        let e = get(
            url,
            &[],
            Redirects::SameHost,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(e.contains("Client.Timeout exceeded"), "{e}");
        drop(listener);
    }
}
