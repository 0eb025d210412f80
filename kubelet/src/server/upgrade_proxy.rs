//! Proxies an upgrade request (SPDY or websocket) to the runtime's streaming server:
//! the request line and headers go to the backend, its `101 Switching Protocols`
//! answer comes back to the client, then bytes are copied both ways untouched.
//! Nothing of the streaming protocol itself is parsed.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::response::{self, Body};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A backend must answer the upgrade within this time.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Response heads larger than this are not from a streaming server we know.
const MAX_HEAD: usize = 64 * 1024;
/// A non-upgrade answer (an error) is relayed up to this size.
const MAX_ERROR_BODY: usize = 1024 * 1024;

pub async fn proxy(url: &str, mut req: Request<Incoming>) -> Response<Body> {
    let location: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return bad_gateway(format!("the runtime returned an invalid URL {url:?}: {e}")),
    };
    if location.scheme_str() != Some("http") {
        return bad_gateway(format!(
            "streaming URL {url:?}: only http:// streaming servers are supported"
        ));
    }
    let Some(authority) = location.authority().cloned() else {
        return bad_gateway(format!("streaming URL {url:?} has no host"));
    };
    let target = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let mut backend = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return bad_gateway(format!("connecting to the streaming server {target}: {e}"));
        }
        Err(_) => {
            return bad_gateway(format!(
                "connecting to the streaming server {target}: timed out"
            ));
        }
    };

    let path = location.path();
    let query = location.query().or(req.uri().query());
    let mut head = format!(
        "{} {}{} HTTP/1.1\r\nHost: {authority}\r\n",
        req.method(),
        path,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in req.headers() {
        if name == http::header::HOST {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if let Err(e) = backend.write_all(&head).await {
        return bad_gateway(format!("writing to the streaming server: {e}"));
    }

    let (status, headers, leftover) =
        match tokio::time::timeout(RESPONSE_TIMEOUT, read_head(&mut backend)).await {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(e)) => {
                return bad_gateway(format!("reading the streaming server's answer: {e}"));
            }
            Err(_) => return bad_gateway("the streaming server did not answer".into()),
        };

    if status != StatusCode::SWITCHING_PROTOCOLS {
        // An error from the streaming server: relay it as it is.
        let body = read_rest(&mut backend, leftover, &headers).await;
        let mut resp = Response::new(response::full(body));
        *resp.status_mut() = status;
        if let Some((_, ct)) = headers
            .iter()
            .find(|(n, _)| n == http::header::CONTENT_TYPE)
        {
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, ct.clone());
        }
        return resp;
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
            return;
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "stream proxy ended");
        }
    });
    let mut resp = Response::new(response::full(Vec::new()));
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut().append(name, value);
    }
    resp
}

type Head = (StatusCode, Vec<(HeaderName, HeaderValue)>, Vec<u8>);

/// Reads the backend's status line and headers; returns them and any bytes that
/// arrived after the head (already part of the stream).
async fn read_head(backend: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = backend.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let leftover = buf.split_off(end + 4);
    let text =
        std::str::from_utf8(&buf[..end]).map_err(|_| invalid("response head is not text"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("malformed header"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid("bad header name"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid("bad header value"))?;
        headers.push((name, value));
    }
    Ok((code, headers, leftover))
}

/// The rest of a non-upgrade answer: by Content-Length, or until the backend closes.
async fn read_rest(
    backend: &mut TcpStream,
    mut body: Vec<u8>,
    headers: &[(HeaderName, HeaderValue)],
) -> Vec<u8> {
    let length = headers
        .iter()
        .find(|(n, _)| n == http::header::CONTENT_LENGTH)
        .and_then(|(_, v)| v.to_str().ok()?.parse::<usize>().ok())
        .map(|l| l.min(MAX_ERROR_BODY));
    let read = async {
        let mut chunk = [0u8; 4096];
        while length.is_none_or(|l| body.len() < l) && body.len() < MAX_ERROR_BODY {
            match backend.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    if let Some(l) = length {
        body.truncate(l);
    }
    body
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

fn bad_gateway(message: String) -> Response<Body> {
    tracing::warn!("{message}");
    response::text(StatusCode::INTERNAL_SERVER_ERROR, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that writes `answer` to the first client and closes.
    async fn backend(answer: &'static [u8]) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(answer).await.unwrap();
        });
        TcpStream::connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn the_head_is_split_from_stream_bytes_that_follow_it() {
        let mut conn = backend(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\x80\x03\x00\x01",
        )
        .await;
        let (status, headers, leftover) = read_head(&mut conn).await.unwrap();
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[1].0, http::header::UPGRADE);
        assert_eq!(headers[2].1, "v4.channel.k8s.io");
        assert_eq!(leftover, b"\x80\x03\x00\x01");
    }

    #[tokio::test]
    async fn error_answers_are_read_by_their_length() {
        let mut conn = backend(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nno su").await;
        let (status, headers, leftover) = read_head(&mut conn).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(read_rest(&mut conn, leftover, &headers).await, b"no su");
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let mut conn = backend(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(read_head(&mut conn).await.is_err());
        let mut conn = backend(b"HTTP/1.1 200 OK\r\n").await;
        assert!(read_head(&mut conn).await.is_err());
    }
}
