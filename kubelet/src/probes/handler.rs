//! One attempt of a probe's handler (exec, httpGet, tcpSocket, grpc) against one
//! container, with upstream's success rules and failure messages.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::exec::{ExecError, exec_sync};
use super::http::{self, Redirects, Scheme, Url};
use super::{Outcome, grpc};
use crate::cri::CriClient;
use crate::pods::env::expand;

/// The container a probe or hook runs against.
#[derive(Clone)]
pub struct Target {
    pub cri: CriClient,
    pub container_id: String,
    pub pod_ip: String,
    pub container: Container,
}

/// Runs the handler of `probe` once, within its timeoutSeconds.
pub async fn run(probe: &Probe, target: &Target) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        let command = static_command(e.command.as_deref().unwrap_or_default(), &target.container);
        return match exec_sync(&target.cri, &target.container_id, &command, timeout).await {
            Ok(out) if out.exit_code == 0 => Outcome::Success,
            Ok(out) => Outcome::Failure(out.combined()),
            Err(e @ ExecError::TimedOut(_)) => Outcome::Failure(e.to_string()),
            Err(ExecError::Call(e)) => Outcome::Error(e),
        };
    }
    if let Some(h) = &probe.http_get {
        return http_probe(h, target, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let port = match probe_port(&t.port, &target.container) {
            Ok(p) => p,
            Err(e) => return Outcome::Error(e),
        };
        let host = t.host.clone().filter(|h| !h.is_empty());
        let addr = http::join_host_port(host.as_deref().unwrap_or(&target.pod_ip), port);
        return tcp_probe(&addr, timeout).await;
    }
    if let Some(g) = &probe.grpc {
        let port = match u16::try_from(g.port) {
            Ok(p) if p > 0 => p,
            _ => return Outcome::Error(format!("invalid port number: {}", g.port)),
        };
        let addr = http::join_host_port(&target.pod_ip, port);
        return grpc::check(&addr, g.service.as_deref().unwrap_or_default(), timeout).await;
    }
    Outcome::Error(format!(
        "missing probe handler for container {}",
        target.container.name
    ))
}

/// upstream's ExpandContainerCommandOnlyStatic: `$(VAR)` from the container's literal
/// `env` values only (valueFrom is not resolved for probes).
fn static_command(command: &[String], c: &Container) -> Vec<String> {
    let env = c.env.as_deref().unwrap_or_default();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    };
    command.iter().map(|a| expand(a, lookup)).collect()
}

async fn http_probe(h: &HTTPGetAction, target: &Target, timeout: Duration) -> Outcome {
    let scheme = match Scheme::parse(h.scheme.as_deref()) {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(e),
    };
    let port = match probe_port(&h.port, &target.container) {
        Ok(p) => p,
        Err(e) => return Outcome::Error(e),
    };
    let host = h.host.as_deref().filter(|h| !h.is_empty());
    let url = Url::new(
        scheme,
        host.unwrap_or(&target.pod_ip),
        port,
        h.path.as_deref().unwrap_or("/"),
    );
    let headers = probe_headers(h);
    match http::get(url, &headers, Redirects::SameHost, Some(timeout)).await {
        // Upstream: 2xx succeeds; a 3xx is what is left of a redirect to another host,
        // a success with a warning.
        Ok(r) if (200..300).contains(&r.status) => Outcome::Success,
        Ok(r) if (300..400).contains(&r.status) => Outcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            r.body
        )),
        Ok(r) => Outcome::Failure(format!("HTTP probe failed with statuscode: {}", r.status)),
        Err(e) => Outcome::Failure(e),
    }
}

/// The probe's httpHeaders plus upstream's defaults: `User-Agent: kube-probe/<major>.<minor>`
/// unless given, `Accept: */*` unless given (an empty Accept removes it).
fn probe_headers(h: &HTTPGetAction) -> Vec<(String, String)> {
    let given = h.http_headers.clone().unwrap_or_default();
    let has = |name: &str| given.iter().any(|g| g.name.eq_ignore_ascii_case(name));
    let mut headers = vec![];
    if !has("User-Agent") {
        headers.push(("User-Agent".to_string(), user_agent()));
    }
    if !has("Accept") {
        headers.push(("Accept".to_string(), "*/*".to_string()));
    }
    for g in given {
        if g.name.eq_ignore_ascii_case("Accept") && g.value.is_empty() {
            continue;
        }
        headers.push((g.name, g.value));
    }
    headers
}

/// `kube-probe/1.20` for the Kubernetes version this kubelet reports.
pub(super) fn user_agent() -> String {
    let version = crate::node::status::kubelet_version();
    let mut parts = version.trim_start_matches('v').split(['.', '+', '-']);
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    format!("kube-probe/{major}.{minor}")
}

async fn tcp_probe(addr: &str, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(http::dial_error(addr, &e)),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// upstream's extractPort for probes: a number, or a named container port (or a
/// number written as a string), within 1..65535.
pub fn probe_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => match named_port(c, name) {
            Some(n) => n,
            None => name
                .parse::<i64>()
                .map_err(|_| format!("port {name} not found"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// upstream's resolvePort for hooks: a number, a number written as a string, then a
/// named container port; an empty string means 80.
pub fn hook_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) if s.is_empty() => 80,
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => named_port(c, s).ok_or_else(|| format!("couldn't find port: {s}"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

fn named_port(c: &Container, name: &str) -> Option<i64> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| i64::from(p.container_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, EnvVarSource, HTTPHeader};

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            env: Some(vec![
                EnvVar {
                    name: "FILE".into(),
                    value: Some("/tmp/ready".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "FROM".into(),
                    value_from: Some(EnvVarSource::default()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn ports_resolve_as_upstream() {
        let c = container();
        let s = |v: &str| IntOrString::String(v.into());
        assert_eq!(probe_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(probe_port(&s("http"), &c), Ok(8080));
        assert_eq!(probe_port(&s("81"), &c), Ok(81));
        assert_eq!(
            probe_port(&s("nope"), &c),
            Err("port nope not found".into())
        );
        assert_eq!(
            probe_port(&IntOrString::Int(70000), &c),
            Err("invalid port number: 70000".into())
        );
        assert_eq!(hook_port(&s(""), &c), Ok(80));
        assert_eq!(hook_port(&s("http"), &c), Ok(8080));
        assert!(hook_port(&s("nope"), &c).is_err());
    }

    #[test]
    fn exec_commands_expand_only_literal_env() {
        let cmd = vec!["cat".to_string(), "$(FILE)".into(), "$(FROM)".into()];
        assert_eq!(
            static_command(&cmd, &container()),
            vec!["cat", "/tmp/ready", "$(FROM)"]
        );
    }

    #[test]
    fn probe_headers_default_like_upstream() {
        let mut h = HTTPGetAction::default();
        let names = |h: &HTTPGetAction| {
            probe_headers(h)
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&h), vec!["User-Agent=kube-probe/1.20", "Accept=*/*"]);
        h.http_headers = Some(vec![
            HTTPHeader {
                name: "Accept".into(),
                value: String::new(),
            },
            HTTPHeader {
                name: "X-A".into(),
                value: "1".into(),
            },
        ]);
        assert_eq!(names(&h), vec!["User-Agent=kube-probe/1.20", "X-A=1"]);
    }

    #[tokio::test]
    async fn tcp_probes_succeed_on_listening_ports_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(
            tcp_probe(&addr, Duration::from_secs(1)).await,
            Outcome::Success
        );
        drop(listener);
        assert_eq!(
            tcp_probe(&addr, Duration::from_secs(1)).await,
            Outcome::Failure(format!("dial tcp {addr}: connect: connection refused"))
        );
    }
}
