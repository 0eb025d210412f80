//! Commands run in a container through CRI ExecSync, for exec probes and hooks.

use std::time::Duration;

use k8s_cri::v1 as cri;

use crate::cri::CriClient;

/// What upstream adds to an exec's own timeout for the runtime to clean up (its
/// default runtime request timeout).
const RUNTIME_SLACK: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// stdout then stderr, as upstream's RunInContainer joins them.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The runtime gave up at the exec's timeout (gRPC DeadlineExceeded), worded as
    /// upstream's TimeoutError.
    #[error("command {0:?} timed out")]
    TimedOut(String),
    #[error("{0}")]
    Call(String),
}

/// Runs `cmd` in `container_id`; `timeout` zero waits as long as it takes (hooks).
pub async fn exec_sync(
    cri: &CriClient,
    container_id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    let mut request = tonic::Request::new(cri::ExecSyncRequest {
        container_id: container_id.to_string(),
        cmd: cmd.to_vec(),
        timeout: timeout.as_secs() as i64,
    });
    if !timeout.is_zero() {
        request.set_timeout(timeout + RUNTIME_SLACK);
    }
    match cri.runtime_client().exec_sync(request).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok(ExecOutput {
                exit_code: r.exit_code,
                stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            })
        }
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
            Err(ExecError::TimedOut(cmd.join(" ")))
        }
        Err(s) => Err(ExecError::Call(s.message().to_string())),
    }
}
