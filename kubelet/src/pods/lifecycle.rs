//! Container lifecycle hooks (postStart, preStop) with exec or httpGet handlers, as
//! upstream's handler runner: an exec hook has no timeout of its own and fails on a
//! non-zero exit; an httpGet hook fails only when the request does (any status code
//! is fine); the failure message is upstream's, for the FailedPostStartHook and
//! FailedPreStopHook events.

use std::time::Duration;

use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};

use super::fieldpath::go_quote;
use super::spec::PodIdentity;
use crate::probes::exec::{ExecError, exec_sync};
use crate::probes::handler::{Target, hook_port};
use crate::probes::http::{self, Redirects, Scheme, Url};

/// upstream's format.Pod: `name_namespace(uid)`.
fn pod_ref(pod: &Pod) -> String {
    let id = PodIdentity::of(pod);
    format!("{}_{}({})", id.name, id.namespace, id.uid)
}

/// Runs `hook` against `target`; `Err` carries the event message.
pub async fn run(hook: &LifecycleHandler, pod: &Pod, target: &Target) -> Result<(), String> {
    let name = &target.container.name;
    if let Some(e) = &hook.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let (error, output) =
            match exec_sync(&target.cri, &target.container_id, &cmd, Duration::ZERO).await {
                Ok(out) if out.exit_code == 0 => return Ok(()),
                Ok(out) => (
                    format!(
                        "command '{}' exited with {}: {}",
                        cmd.join(" "),
                        out.exit_code,
                        out.stderr
                    ),
                    out.combined(),
                ),
                Err(e @ (ExecError::TimedOut(_) | ExecError::Call(_))) => {
                    (e.to_string(), String::new())
                }
            };
        return Err(format!(
            "Exec lifecycle hook ([{}]) for Container \"{name}\" in Pod \"{}\" failed - error: {error}, message: {}",
            cmd.join(" "),
            pod_ref(pod),
            go_quote(&output)
        ));
    }
    if let Some(h) = &hook.http_get {
        let path = h.path.clone().unwrap_or_default();
        let fail = |error: String| {
            format!(
                "Http lifecycle hook ({path}) for Container \"{name}\" in Pod \"{}\" failed - error: {error}, message: \"\"",
                pod_ref(pod)
            )
        };
        let port = hook_port(&h.port, &target.container).map_err(fail)?;
        let host = h.host.as_deref().filter(|h| !h.is_empty());
        let url = Url::new(Scheme::Http, host.unwrap_or(&target.pod_ip), port, &path);
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return http::get(url, &headers, Redirects::Any, None)
            .await
            .map(drop)
            .map_err(fail);
    }
    Err(format!(
        "Cannot run handler: invalid handler: container {name} has a hook with neither exec nor httpGet"
    ))
}
