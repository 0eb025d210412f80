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

/// One Check of `service` at `addr` (`host:port`), all within `timeout`.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs();
    let connect = async {
        Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .user_agent(super::handler::user_agent())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    };
    let channel = match tokio::time::timeout(timeout, connect).await {
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
        request.set_timeout(timeout);
        grpc.unary::<_, HealthCheckResponse, _>(
            request,
            http::uri::PathAndQuery::from_static(CHECK_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Err(_) => return deadline(secs),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => return deadline(secs),
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

    /// A grpc.health.v1 server answering `serving` for "" and SERVICE_UNKNOWN for
    /// any other service.
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

    #[tokio::test]
    async fn checks_read_the_serving_status() {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Health)
                .serve_with_incoming(incoming),
        );
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
