//! gRPC probes: `grpc.health.v1.Health/Check` over plaintext HTTP/2, with upstream's
//! failure messages. The two messages are declared by hand (two fields) rather than
//! generated, so the kubelet needs no protoc step of its own.

use std::time::Duration;

use tonic::transport::Endpoint;

use super::Outcome;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The proto enum name, as Go's String() prints it.
    fn proto_name(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// One Check of `service` at `addr` (`host:port`), all within `timeout`: one budget
/// for connecting and the call, as upstream's one context for both.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs();
    let deadline_at = tokio::time::Instant::now() + timeout;
    let connect = async {
        Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .user_agent(super::handler::user_agent())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    };
    let channel = match tokio::time::timeout_at(deadline_at, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at \"{addr}\": {e}"
            ));
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service \"{addr}\" within {secs}s: context deadline exceeded"
            ));
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        request.set_timeout(deadline_at.saturating_duration_since(tokio::time::Instant::now()));
        grpc.unary::<_, HealthCheckResponse, _>(
            request,
            http::uri::PathAndQuery::from_static(CHECK_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
    };
    let response = match tokio::time::timeout_at(deadline_at, call).await {
        Err(_) => return deadline(secs),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => return deadline(secs),
        // The server gave up on the grpc-timeout we sent (tonic answers Cancelled
        // then) just as our own deadline passed: upstream's client reports its own.
        Ok(Err(_)) if tokio::time::Instant::now() >= deadline_at => return deadline(secs),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            return Outcome::Failure(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                s.message()
            ));
        }
        Ok(Err(s)) => {
            return Outcome::Failure(format!(
                "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                s.code(),
                s.message()
            ));
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        Outcome::Success
    } else {
        Outcome::Failure(format!(
            "service unhealthy (responded with \"{}\")",
            status.proto_name()
        ))
    }
}

fn deadline(secs: u64) -> Outcome {
    Outcome::Failure(format!(
        "timeout: health rpc did not complete within {secs}s"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    use futures::future::BoxFuture;
    use tonic::transport::server::TcpIncoming;

    /// A grpc.health.v1 server answering SERVING for "", NOT_SERVING for "sick",
    /// after 3 s for "slow", and SERVICE_UNKNOWN for any other service.
    #[derive(Clone)]
    struct Health;

    impl tower::Service<http::Request<tonic::body::Body>> for Health {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let check = tower::service_fn(|r: tonic::Request<HealthCheckRequest>| async move {
                    let status = match r.get_ref().service.as_str() {
                        "" => ServingStatus::Serving,
                        "sick" => ServingStatus::NotServing,
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            ServingStatus::Serving
                        }
                        _ => ServingStatus::ServiceUnknown,
                    };
                    Ok::<_, tonic::Status>(tonic::Response::new(HealthCheckResponse {
                        status: status as i32,
                    }))
                });
                let codec =
                    tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
                Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
            })
        }
    }

    impl tonic::server::NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    /// Serves `router` on a free loopback port; returns its address and task.
    fn serve(router: tonic::transport::server::Router) -> (String, tokio::task::JoinHandle<()>) {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_server_without_the_health_service_is_unimplemented() {
        // A gRPC server with no services: every method is unimplemented.
        let no_services = tonic::service::Routes::default();
        let (addr, server) = serve(tonic::transport::Server::builder().add_routes(no_services));
        match check(&addr, "", Duration::from_secs(2)).await {
            Outcome::Failure(m) => assert!(
                m.starts_with(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): "
                ),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_check_slower_than_the_timeout_times_out() {
        let (addr, server) = serve(tonic::transport::Server::builder().add_service(Health));
        let started = std::time::Instant::now();
        assert_eq!(
            check(&addr, "slow", Duration::from_secs(1)).await,
            Outcome::Failure("timeout: health rpc did not complete within 1s".into())
        );
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "{took:?}");
        // Nothing listening and nothing answering within the timeout: a TCP accept
        // that never completes the HTTP/2 handshake.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        match check(&silent_addr, "", Duration::from_secs(1)).await {
            Outcome::Failure(m) => assert!(m.starts_with("timeout: ") && m.contains("1s"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn checks_read_the_serving_status() {
        let (addr, server) = serve(tonic::transport::Server::builder().add_service(Health));
        let t = Duration::from_secs(2);
        assert_eq!(check(&addr, "", t).await, Outcome::Success);
        assert_eq!(
            check(&addr, "sick", t).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(
            check(&addr, "other", t).await,
            Outcome::Failure("service unhealthy (responded with \"SERVICE_UNKNOWN\")".into())
        );
        server.abort();
        let _ = server.await;
        match check(&addr, "", t).await {
            Outcome::Failure(m) => {
                assert!(m.starts_with("error: failed to connect service at"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
