//! The HTTP side: `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`, upgraded to SPDY/3.1
//! after agreeing on a sub-protocol through `X-Stream-Protocol-Version`, as the
//! kubelet's streaming server does (client's order of preference, our support).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::remotecommand::{self, Target};
use super::{Request, Streaming, portforward};

/// Remote command protocols we speak, newest first (v4 reports exit codes as a Status).
const EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// Serves until the process ends; each connection in its own task.
pub async fn serve(listener: TcpListener, streaming: Streaming) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server accept failed");
                continue;
            }
        };
        let streaming = streaming.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let streaming = streaming.clone();
                async move { Ok::<_, Infallible>(handle(req, streaming)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "streaming connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r
}

fn handle(mut req: HttpRequest<Incoming>, streaming: Streaming) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some((kind, token)) = path.trim_start_matches('/').split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let supported = match kind {
        "exec" | "attach" => EXEC_PROTOCOLS,
        "portforward" => PORT_FORWARD_PROTOCOLS,
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "this endpoint needs an upgrade to SPDY/3.1",
        );
    }
    let Some(protocol) = negotiate(&req, supported) else {
        return plain(
            StatusCode::FORBIDDEN,
            &format!("unable to upgrade: no common protocol; supported: {supported:?}"),
        );
    };
    // Redeemed only now: a refused handshake does not burn the token.
    let request = match (kind, streaming.tokens.take(token)) {
        (_, None) => return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
        ("exec", Some(r @ Request::Exec(_)))
        | ("attach", Some(r @ Request::Attach(_)))
        | ("portforward", Some(r @ Request::PortForward(_))) => r,
        _ => return plain(StatusCode::NOT_FOUND, "token is for another kind of stream"),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::warn!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let (sender, streams) = super::spdy::serve(io);
        let runtime = streaming.runtime;
        match request {
            Request::Exec(r) => {
                remotecommand::run(runtime, Target::Exec(r), protocol, sender, streams).await
            }
            Request::Attach(r) => {
                remotecommand::run(runtime, Target::Attach(r), protocol, sender, streams).await
            }
            Request::PortForward(r) => portforward::run(runtime, r, sender, streams).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        "Upgrade".parse().expect("static"),
    );
    h.insert(hyper::header::UPGRADE, "SPDY/3.1".parse().expect("static"));
    h.insert(
        "X-Stream-Protocol-Version",
        protocol.parse().expect("static"),
    );
    r
}

/// The first protocol the client offers (in its order) that we support.
fn negotiate(req: &HttpRequest<Incoming>, supported: &[&'static str]) -> Option<&'static str> {
    req.headers()
        .get_all("X-Stream-Protocol-Version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| supported.iter().find(|s| **s == offered).copied())
}
