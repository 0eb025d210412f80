//! What the streaming server needs of the runtime: exec, a process started in a running
//! container through the exec reaper (see [`crate::container::exec_reaper`]) with
//! pipes or a terminal as its stdio, and attach, the monitor's socket of a running
//! container.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use super::{Result, Runtime, RuntimeError, new_id};
use crate::container::exec_reaper::{self, EXEC_ARG, ExecOutcome, ExecSpec};

/// How long runc may take to hand over a terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One exec'd process. Its files (process.json, pid, result, console socket) are
/// removed on drop.
pub struct ExecSession {
    pub child: tokio::process::Child,
    console: Option<tokio::net::UnixListener>,
    pid_file: PathBuf,
    result: PathBuf,
    files: Vec<PathBuf>,
}

impl Runtime {
    /// Connects to the attach socket of running container `id`'s monitor.
    pub async fn attach(&self, id: &str) -> Result<tokio::net::UnixStream> {
        let rec = self.running_container(id)?;
        let path = self.io_socket(&rec.id, "attach");
        tokio::net::UnixStream::connect(&path).await.map_err(|e| {
            RuntimeError::Internal(anyhow::anyhow!(
                "connecting to the monitor of {} at {}: {e}",
                rec.id,
                path.display()
            ))
        })
    }

    /// Starts `cmd` in running container `id`. Without `tty` the process's stdin,
    /// stdout and stderr are the returned child's pipes (stdin only if `stdin`); with
    /// `tty`, [`ExecSession::terminal`] yields the pty master.
    pub fn start_exec(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession> {
        let rec = self.exec_target(id, cmd)?;
        let process = self.exec_process_json(&rec, cmd, tty)?;
        let stem = process.with_extension("");
        let pid_file = stem.with_extension("pid");
        let runc_log = stem.with_extension("log");
        let result = stem.with_extension("result");
        let mut files = vec![
            process.clone(),
            pid_file.clone(),
            runc_log.clone(),
            result.clone(),
        ];
        let console = if tty {
            // In the state dir: a unix socket path must stay under 108 bytes.
            let dir = self.state.join("io");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("exec-{}", &new_id()[..16]));
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("binding the console socket {}", path.display()))?;
            files.push(path.clone());
            Some((listener, path))
        } else {
            None
        };
        let spec = ExecSpec {
            argv: self.oci.exec_detached_argv(
                &rec.id,
                &process,
                &pid_file,
                console.as_ref().map(|(_, p)| p.as_path()),
                &runc_log,
            ),
            pid_file: pid_file.clone(),
            runc_log,
            result: result.clone(),
        };
        let mut c = tokio::process::Command::new("/proc/self/exe");
        c.arg(EXEC_ARG)
            .arg(serde_json::to_string(&spec).context("encoding the exec spec")?);
        if tty {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            c.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let session = ExecSession {
            child: c.spawn().context("starting the exec reaper")?,
            console: console.map(|(l, _)| l),
            pid_file,
            result,
            files,
        };
        Ok(session)
    }

    /// The process.json for `runc exec`: the container's own env, user and cwd.
    pub(crate) fn exec_process_json(
        &self,
        rec: &super::ContainerRecord,
        cmd: &[String],
        tty: bool,
    ) -> Result<PathBuf> {
        let bundle = self.container_dir(&rec.id).join("bundle");
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .context("reading config.json")?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(cmd.to_vec()));
        process.set_terminal(Some(tty));
        if tty {
            // As upstream runtimes do: programs look at TERM to drive the terminal.
            let mut env = process.env().clone().unwrap_or_default();
            if !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
            process.set_env(Some(env));
        }
        let path = bundle.join(format!("exec-{}.json", &new_id()[..12]));
        std::fs::write(
            &path,
            serde_json::to_vec(&process).context("encoding process")?,
        )?;
        Ok(path)
    }
}

impl ExecSession {
    /// The pty master runc hands over, or why the process did not start.
    pub async fn terminal(&mut self) -> std::result::Result<OwnedFd, String> {
        let listener = self
            .console
            .take()
            .ok_or_else(|| "this exec has no terminal".to_string())?;
        let conn = tokio::select! {
            conn = tokio::time::timeout(CONSOLE_TIMEOUT, listener.accept()) => match conn {
                Ok(Ok((conn, _))) => conn,
                Ok(Err(e)) => return Err(format!("accepting runc's console connection: {e}")),
                Err(_) => return Err(format!("runc sent no terminal within {CONSOLE_TIMEOUT:?}")),
            },
            // runc failed before it made the terminal.
            _ = self.child.wait() => return Err(self.failure()),
        };
        let conn = conn.into_std().map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(CONSOLE_TIMEOUT))?;
            crate::container::console::receive_master(&conn)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("receiving the terminal from runc: {e}"))
    }

    /// Waits until the process runs (runc wrote its pid), or for runc's error. Until
    /// then the process's stderr is runc's too, where runc also prints its failure.
    pub async fn started(&mut self) -> std::result::Result<(), String> {
        loop {
            let exited = self.child.try_wait().map_err(|e| e.to_string())?.is_some();
            if self.pid_file.exists() {
                return Ok(());
            }
            if exited {
                return Err(self.failure());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the process: its exit code, or runc's error if it never started.
    pub async fn wait(&mut self) -> std::result::Result<i32, String> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| format!("waiting for the exec reaper: {e}"))?;
        match exec_reaper::read_result(&self.result) {
            Some(ExecOutcome::Exited(code)) => Ok(code),
            Some(ExecOutcome::Failed(e)) => Err(e),
            None => Err(format!("the exec reaper ended with {status} and no result")),
        }
    }

    fn failure(&self) -> String {
        match exec_reaper::read_result(&self.result) {
            Some(ExecOutcome::Failed(e)) => e,
            Some(ExecOutcome::Exited(code)) => {
                format!("the process exited with {code} before it had a terminal")
            }
            None => "the exec reaper ended without a result".into(),
        }
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}
