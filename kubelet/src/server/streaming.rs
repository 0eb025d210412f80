//! `/exec`, `/attach` and `/portForward`: ask the CRI runtime for a streaming URL and
//! proxy the client's upgraded connection to it, as kubelet 1.20 does by default
//! (`--redirect-container-streaming=false`).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use k8s_cri::v1 as cri;

use super::response::{self, Body};
use super::routes::ContainerTarget;
use super::{Context, containers, query, upgrade_proxy};

/// What a remote command asks for (upstream's `remotecommand.NewOptions`).
#[derive(Debug, PartialEq, Eq)]
struct StreamOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl StreamOptions {
    fn parse(pairs: &[(String, String)]) -> Result<Self, &'static str> {
        let on = |name: &str| query::first(pairs, name) == Some("1");
        let tty = on("tty");
        let options = StreamOptions {
            stdin: on("input"),
            stdout: on("output"),
            // A TTY merges stderr into stdout.
            stderr: on("error") && !tty,
            tty,
        };
        if !options.stdin && !options.stdout && !options.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr");
        }
        Ok(options)
    }
}

/// Which remote command a request starts.
#[derive(Clone, Copy)]
pub enum Command {
    Exec,
    Attach,
}

/// `/exec` and `/attach`: the same options and target, a different CRI call.
pub async fn remote_command(
    context: &Context,
    command: Command,
    target: ContainerTarget,
    req: Request<Incoming>,
) -> Response<Body> {
    let pairs = query::pairs(req.uri().query());
    let options = match StreamOptions::parse(&pairs) {
        Ok(o) => o,
        Err(message) => return response::text(StatusCode::BAD_REQUEST, message),
    };
    let container_id = match running_container(context, &target).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let mut runtime = context.cri.runtime_client();
    let url = match command {
        Command::Exec => runtime
            .exec(cri::ExecRequest {
                container_id,
                cmd: query::all(&pairs, "command"),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map(|r| r.into_inner().url),
        Command::Attach => runtime
            .attach(cri::AttachRequest {
                container_id,
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map(|r| r.into_inner().url),
    };
    proxy_to(url, req).await
}

pub async fn port_forward(
    context: &Context,
    namespace: &str,
    pod_name: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(pod) = context.pods.find(namespace, pod_name) else {
        return response::text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    // Websocket clients name the ports in the query; SPDY clients per stream.
    let pairs = query::pairs(req.uri().query());
    let mut ports = Vec::new();
    for port in query::all(&pairs, "port") {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(i32::from(p)),
            _ => {
                return response::text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid port {port:?}: must be between 1 and 65535"),
                );
            }
        }
    }
    let sandbox = match containers::ready_sandbox(&context.cri, containers::pod_uid(&pod)).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return response::text(StatusCode::NOT_FOUND, "pod sandbox not found or not ready");
        }
        Err(e) => return cri_error(&e),
    };
    let url = context
        .cri
        .runtime_client()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox,
            port: ports,
        })
        .await
        .map(|r| r.into_inner().url);
    proxy_to(url, req).await
}

/// The running instance of the target container, or the error response.
async fn running_container(
    context: &Context,
    target: &ContainerTarget,
) -> Result<String, Response<Body>> {
    let pod = context
        .pods
        .find(&target.namespace, &target.pod)
        .filter(|p| {
            target
                .uid
                .as_deref()
                .is_none_or(|uid| containers::pod_uid(p) == uid)
        })
        .ok_or_else(|| response::text(StatusCode::NOT_FOUND, "pod does not exist"))?;
    match containers::running(&context.cri, containers::pod_uid(&pod), &target.container).await {
        Ok(Some(c)) => Ok(c.id),
        Ok(None) => Err(response::text(
            StatusCode::NOT_FOUND,
            format!("container not found ({:?})", target.container),
        )),
        Err(e) => Err(cri_error(&e)),
    }
}

async fn proxy_to(url: Result<String, tonic::Status>, req: Request<Incoming>) -> Response<Body> {
    match url {
        Ok(url) => upgrade_proxy::proxy(&url, req).await,
        Err(e) => cri_error(&e),
    }
}

/// Upstream's `streaming.WriteError`: the gRPC code decides the HTTP status.
fn cri_error(status: &tonic::Status) -> Response<Body> {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    response::text(code, status.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_as_upstream() {
        let parse = |q: &str| StreamOptions::parse(&query::pairs(Some(q)));
        assert_eq!(
            parse("command=ls&input=1&output=1&error=1&tty=1").unwrap(),
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert!(parse("command=ls&output=true").is_err());
        assert!(parse("command=ls").is_err());
    }
}
