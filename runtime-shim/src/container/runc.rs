//! The OCI runtime behind a trait, so the rest of the daemon never builds runc command
//! lines and another runtime (crun, youki) could be slotted in.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

#[tonic::async_trait]
pub trait OciRuntime: Send + Sync {
    /// The command that creates container `id` from `bundle`; run by the container's
    /// monitor, which owns its stdio (and its terminal, sent to `console_socket`).
    fn create_command(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
    ) -> std::process::Command;
    async fn start(&self, id: &str) -> Result<()>;
    async fn kill(&self, id: &str, signal: i32) -> Result<()>;
    /// Deletes the container; succeeds if it does not exist.
    async fn delete(&self, id: &str) -> Result<()>;
    /// The command line that deletes the container once it has exited; its monitor runs
    /// it at the exit.
    fn delete_argv(&self, id: &str, bundle: &Path) -> Vec<String>;
    /// The OCI `status` (`created`, `running`, `stopped`), `None` if unknown to runc.
    async fn status(&self, id: &str) -> Result<Option<String>>;
    /// A command running `args` inside the container (for ExecSync).
    fn exec_command(&self, id: &str, process_json: &Path) -> Command;
    /// The command line that starts `process_json` in the container and returns once it
    /// runs (writing its pid to `pid_file`), handing a terminal's master to
    /// `console_socket`; run by the exec reaper, which adopts the process.
    fn exec_detached_argv(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        log: &Path,
    ) -> Vec<String>;
}

/// The last error runc logged in its `--log` file (JSON lines), or else its last line.
pub fn last_error(log: &Path) -> Option<String> {
    let log = std::fs::read_to_string(log).ok()?;
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
        .or_else(|| {
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
}

pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Runc { binary, root }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        self.cmd()
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {} {args:?}", self.binary.display()))
    }
}

#[tonic::async_trait]
impl OciRuntime for Runc {
    fn create_command(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
    ) -> std::process::Command {
        let mut c = std::process::Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(bundle.join("runc.log"))
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(socket) = console_socket {
            c.arg("--console-socket").arg(socket);
        }
        c.arg(id);
        c
    }

    async fn start(&self, id: &str) -> Result<()> {
        let out = self.run(&["start", id]).await?;
        if !out.status.success() {
            bail!(
                "runc start {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let out = self
            .run(&["kill", "--all", id, &signal.to_string()])
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        // Already gone is what the caller wanted.
        if !out.status.success() && !err.contains("not running") && !err.contains("does not exist")
        {
            bail!("runc kill {id}: {}", err.trim());
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        // The monitor has usually deleted it at its exit already: no runc to run then.
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let out = self.run(&["delete", "--force", id]).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("does not exist") {
            bail!("runc delete {id}: {}", err.trim());
        }
        Ok(())
    }

    fn delete_argv(&self, id: &str, bundle: &Path) -> Vec<String> {
        [
            self.binary.as_os_str(),
            "--root".as_ref(),
            self.root.as_os_str(),
            "--log".as_ref(),
            bundle.join("runc.log").as_os_str(),
            "delete".as_ref(),
            id.as_ref(),
        ]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
    }

    async fn status(&self, id: &str) -> Result<Option<String>> {
        let out = self.run(&["state", id]).await?;
        if !out.status.success() {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing runc state")?;
        Ok(v["status"].as_str().map(str::to_string))
    }

    fn exec_command(&self, id: &str, process_json: &Path) -> Command {
        let mut c = self.cmd();
        c.arg("exec").arg("--process").arg(process_json).arg(id);
        c
    }

    fn exec_detached_argv(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        log: &Path,
    ) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        let mut argv = vec![
            path(&self.binary),
            "--root".into(),
            path(&self.root),
            "--log".into(),
            path(log),
            "--log-format".into(),
            "json".into(),
            "exec".into(),
            "--detach".into(),
            "--process".into(),
            path(process_json),
            "--pid-file".into(),
            path(pid_file),
        ];
        if let Some(socket) = console_socket {
            argv.extend(["--console-socket".into(), path(socket)]);
        }
        argv.push(id.to_string());
        argv
    }
}
