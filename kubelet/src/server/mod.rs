//! The kubelet's HTTPS server (`--address`:`--port`, 10250 by default): the API the
//! API server, metrics-server and monitoring use to reach a node. Every request is
//! authenticated ([`authn`]) and authorized ([`authz`]) as upstream does before a
//! handler sees it.

mod authn;
mod authz;
mod cache;
mod containers;
mod cri_log;
mod host_stats;
mod logs;
mod metrics;
mod query;
mod response;
mod routes;
mod stats;
mod streaming;
mod summary;
mod tls;
mod upgrade_proxy;
pub(crate) mod x509_name;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;
use crate::cri::CriClient;
use crate::pods::PodView;
use authn::{Authenticator, UserInfo};
use authz::{Attributes, Authorizer};
use response::Body;
use routes::Route;
pub use tls::ServingCert;
#[cfg(test)]
pub(crate) use tls::self_signed_for_tests;

/// A client that does not finish the TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Nor may it take longer to send a request's headers (slow clients hold sockets).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
struct Context {
    node_name: String,
    cri: CriClient,
    pods: PodView,
    authn: Authenticator,
    authz: Authorizer,
    stats: stats::Collector,
}

/// A bound server; [`Server::run`] serves until the task is dropped.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    serving: Arc<ServingCert>,
    context: Arc<Context>,
}

impl Server {
    /// Loads (or creates) the serving certificate and binds the port, so a bad
    /// certificate or a taken port fails the kubelet's start with a clear error.
    pub async fn bind(
        settings: &Settings,
        client: kube::Client,
        cri: CriClient,
        pods: PodView,
    ) -> Result<Self> {
        let host = settings
            .node_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| settings.node_name.clone());
        let (tls, serving) = tls::server_config(&settings.server, &settings.cert_dir, &host)?;
        let addr = SocketAddr::new(settings.address, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (--address, --port)"))?;
        tracing::info!(%addr, "serving the kubelet API");
        let server = &settings.server;
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            serving,
            context: Arc::new(Context {
                node_name: settings.node_name.clone(),
                stats: stats::Collector::new(settings.root_dir.clone()),
                authn: Authenticator::new(
                    client.clone(),
                    server.anonymous_enabled,
                    server.token_webhook_cache_ttl,
                ),
                authz: Authorizer::new(client, server.authorization),
                cri,
                pods,
            }),
        })
    }

    /// The certificate being served, for serverTLSBootstrap to replace.
    pub fn serving_cert(&self) -> Arc<ServingCert> {
        self.serving.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let context = self.context.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(acceptor, tcp, context).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    context: Arc<Context>,
) -> Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    // rustls verified any certificate against clientCAFile during the handshake.
    let cert_user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| UserInfo::from_client_cert(leaf));
    let service = service_fn(move |req| {
        let context = context.clone();
        let cert_user = cert_user.clone();
        async move { Ok::<_, Infallible>(handle(&context, cert_user.as_ref(), req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
        .context("serving HTTP")
}

/// Authentication, authorization, then the handler, as upstream's filter chain.
async fn handle(
    context: &Context,
    cert_user: Option<&UserInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let user = match context.authn.authenticate(cert_user, req.headers()).await {
        Ok(user) => user,
        Err(e) => {
            tracing::debug!(error = %e, path = req.uri().path(), "unauthenticated request");
            return response::text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    };
    let attrs = Attributes::of(req.method(), req.uri().path(), &context.node_name);
    match context.authz.allowed(&user, &attrs).await {
        Ok(true) => {}
        Ok(false) => {
            let message = attrs.forbidden_message(&user);
            tracing::debug!("{message}");
            return response::text(StatusCode::FORBIDDEN, message);
        }
        Err(e) => {
            let message = attrs.error_message(&user);
            tracing::warn!(error = %e, "{message}");
            return response::text(StatusCode::INTERNAL_SERVER_ERROR, message);
        }
    }
    dispatch(context, req).await
}

async fn dispatch(context: &Context, req: Request<Incoming>) -> Response<Body> {
    match Route::of(req.method(), req.uri().path()) {
        Route::Healthz => response::text(StatusCode::OK, "ok"),
        Route::Pods => pod_list(&context.pods),
        Route::ContainerLogs {
            namespace,
            pod,
            container,
        } => logs::handle(context, &namespace, &pod, &container, req.uri().query()).await,
        Route::Exec(target) => {
            streaming::remote_command(context, streaming::Command::Exec, target, req).await
        }
        Route::Attach(target) => {
            streaming::remote_command(context, streaming::Command::Attach, target, req).await
        }
        Route::PortForward { namespace, pod, .. } => {
            streaming::port_forward(context, &namespace, &pod, req).await
        }
        Route::StatsSummary => match context.stats.summary(context).await {
            Ok(summary) if only_cpu_and_memory(req.uri().query()) => {
                response::json(&summary.only_cpu_and_memory())
            }
            Ok(summary) => response::json(&summary),
            Err(e) => response::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Internal Error: failed to get node stats: {e:#}"),
            ),
        },
        Route::MetricsResource => metrics::resource(context).await,
        Route::Metrics => metrics::kubelet(context).await,
        Route::MethodNotAllowed => {
            response::text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed")
        }
        Route::NotFound => response::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Upstream reads the flag leniently: anything but a Go boolean counts as false.
fn only_cpu_and_memory(query: Option<&str>) -> bool {
    let pairs = query::pairs(query);
    let values = query::all(&pairs, "only_cpu_and_memory");
    matches!(values.as_slice(), [v] if query::parse_bool(v) == Some(true))
}

/// `/pods`: the pods bound to this node as a v1 PodList.
fn pod_list(pods: &PodView) -> Response<Body> {
    let mut items = pods.pods();
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    response::json(&serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cpu_and_memory_is_read_as_upstream_reads_it() {
        assert!(only_cpu_and_memory(Some("only_cpu_and_memory=true")));
        assert!(only_cpu_and_memory(Some("a=b&only_cpu_and_memory=1")));
        assert!(!only_cpu_and_memory(Some("only_cpu_and_memory=yes")));
        assert!(!only_cpu_and_memory(Some(
            "only_cpu_and_memory=true&only_cpu_and_memory=true"
        )));
        assert!(!only_cpu_and_memory(None));
    }
}
