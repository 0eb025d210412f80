//! Container lifecycle. A container's live state is never cached: it is read from its
//! monitor's files (`created`, `exit`) and its record, so a restarted daemon reports
//! exactly what happened while it was away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_cri::v1::ContainerConfig;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{ContainerRecord, Result, Runtime, RuntimeError, SandboxState, new_id, now_nanos};
use crate::container::monitor::{self, ExitRecord, MonitorSpec};
use crate::container::spec::{self, SandboxContext};

/// How long `runc create` may take before CreateContainer gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Exited(ExitRecord),
    /// The monitor is gone without recording an exit (killed from outside).
    Unknown,
}

impl Runtime {
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> Result<String> {
        let sandbox = self
            .sandboxes
            .resolve(sandbox_id)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {sandbox_id} not found")))?;
        if sandbox.state != SandboxState::Ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let meta = config.metadata.clone().ok_or_else(|| {
            RuntimeError::InvalidArgument("container config without metadata".into())
        })?;
        if meta.name.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "container name is empty".into(),
            ));
        }
        let sec = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        if sec.is_some_and(|s| {
            s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty()
        }) {
            return Err(RuntimeError::InvalidArgument(
                "runAsGroup is set without runAsUser or runAsUsername".into(),
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self.images.resolve(&image_name).ok_or_else(|| {
            RuntimeError::NotFound(format!(
                "image {image_name:?} is not present: pull it first"
            ))
        })?;
        let _guard = self.locks.lock(format!("sandbox/{}", sandbox.id)).await;
        if let Some(dup) = self.containers.list().into_iter().find(|c| {
            c.sandbox_id == sandbox.id
                && c.config
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name == meta.name && m.attempt == meta.attempt)
        }) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} attempt {} already exists in this sandbox as {}",
                meta.name, meta.attempt, dup.id
            )));
        }

        let id = new_id();
        let dir = self.container_dir(&id);
        let bundle = dir.join("bundle");
        let rootfs = dir.join("rootfs");
        let result =
            async {
                for d in [&bundle, &rootfs, &dir.join("upper"), &dir.join("work")] {
                    std::fs::create_dir_all(d)?;
                }
                let lower: Vec<String> = image
                    .layers
                    .iter()
                    .rev()
                    .map(|l| self.images.layer_dir(l).display().to_string())
                    .collect();
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.join(":"),
                    dir.join("upper").display(),
                    dir.join("work").display()
                );
                mount(
                    Some("overlay"),
                    &rootfs,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .context("mounting the container's overlay rootfs")?;

                let sdir = self.sandbox_dir(&sandbox.id);
                let ns = sandbox.namespaces.clone().unwrap_or(
                    crate::sandbox::namespaces::PodNamespaces {
                        net: None,
                        ipc: None,
                        uts: None,
                    },
                );
                let pidns = match &sandbox.infra {
                    Some(p) if !p.alive() => {
                        return Err(RuntimeError::FailedPrecondition(format!(
                            "the infra process holding the PID namespace of pod sandbox {} is gone: recreate the sandbox",
                            sandbox.id
                        )));
                    }
                    p => p.as_ref().map(|p| p.pidns()),
                };
                let ctx = SandboxContext {
                    netns: ns.net.as_deref(),
                    ipcns: ns.ipc.as_deref(),
                    utsns: ns.uts.as_deref(),
                    pidns: pidns.as_deref(),
                    hostname: sandbox.config.hostname.as_str(),
                    etc_files: vec![
                        ("/etc/hosts", sdir.join("hosts")),
                        ("/etc/resolv.conf", sdir.join("resolv.conf")),
                        ("/etc/hostname", sdir.join("hostname")),
                    ],
                    cgroup_parent: sandbox
                        .config
                        .linux
                        .as_ref()
                        .map(|l| l.cgroup_parent.as_str())
                        .unwrap_or(""),
                    shm: None,
                    sysctls: sandbox
                        .config
                        .linux
                        .as_ref()
                        .map(|l| l.sysctls.clone())
                        .unwrap_or_default(),
                };
                let built = spec::build(&id, &config, &image, &rootfs, &ctx)
                    .map_err(|e| RuntimeError::InvalidArgument(format!("{e:#}")))?;
                built
                    .spec
                    .save(bundle.join("config.json"))
                    .context("writing config.json")?;
                let log_path = if config.log_path.is_empty() {
                    String::new()
                } else {
                    Path::new(&sandbox.config.log_directory)
                        .join(&config.log_path)
                        .display()
                        .to_string()
                };
                std::fs::create_dir_all(self.state.join("io"))?;
                let console_socket = config.tty.then(|| self.io_socket(&id, "console"));
                let mspec = MonitorSpec {
                    id: id.clone(),
                    bundle: bundle.clone(),
                    log_path: if log_path.is_empty() {
                        dir.join("discarded.log")
                    } else {
                        PathBuf::from(&log_path)
                    },
                    create_argv: {
                        let c = self.oci.create_command(
                            &id,
                            &bundle,
                            &bundle.join("init.pid"),
                            console_socket.as_deref(),
                        );
                        std::iter::once(c.get_program().to_string_lossy().into_owned())
                            .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
                            .collect()
                    },
                    delete_argv: self.oci.delete_argv(&id, &bundle),
                    memory_cgroup: Some(
                        Path::new("/sys/fs/cgroup/memory")
                            .join(built.cgroups_path.trim_start_matches('/')),
                    ),
                    attach_socket: self.io_socket(&id, "attach"),
                    console_socket,
                    stdin: config.stdin,
                    stdin_once: config.stdin_once,
                };
                monitor::spawn(&mspec).context("starting the container monitor")?;
                wait_created(&bundle).await?;
                Ok::<_, RuntimeError>(ContainerRecord {
                    id: id.clone(),
                    sandbox_id: sandbox.id.clone(),
                    config,
                    image_id: image.id.to_string(),
                    image_name: image_name.clone(),
                    created_at: now_nanos(),
                    started_at: None,
                    log_path,
                    cgroups_path: built.cgroups_path,
                })
            }
            .await;
        match result {
            Ok(rec) => {
                self.containers.put(&rec)?;
                Ok(id)
            }
            Err(e) => {
                let _ = self.oci.delete(&id).await;
                let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir_all(&dir);
                for kind in ["attach", "console"] {
                    let _ = std::fs::remove_file(self.io_socket(&id, kind));
                }
                Err(e)
            }
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        match self.container_status(&rec) {
            ContainerStatus::Created => {}
            other => {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "container {} is {other:?}, not created",
                    rec.id
                )));
            }
        }
        // Taken before `runc start`: a short-lived container can exit (and its monitor
        // record the finish time) before runc returns.
        let started_at = now_nanos();
        self.oci.start(&rec.id).await?;
        self.containers
            .update(&rec.id, |r| r.started_at = Some(started_at))?;
        Ok(())
    }

    /// SIGTERM (or the image's STOPSIGNAL), SIGKILL after `timeout` seconds. Stopping a
    /// stopped container succeeds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let rec = self.container(id)?;
        if matches!(self.container_status(&rec), ContainerStatus::Exited(_)) {
            return Ok(());
        }
        let bundle = self.container_dir(&rec.id).join("bundle");
        if timeout > 0 {
            let sig = self
                .images
                .resolve(&rec.image_id)
                .map(|i| stop_signal(&i.config.stop_signal))
                .unwrap_or(libc::SIGTERM);
            self.oci.kill(&rec.id, sig).await?;
            if wait_exit(&bundle, Duration::from_secs(timeout as u64)).await {
                return Ok(());
            }
        }
        self.oci.kill(&rec.id, libc::SIGKILL).await?;
        if !wait_exit(&bundle, Duration::from_secs(10)).await
            && !matches!(self.container_status(&rec), ContainerStatus::Unknown)
        {
            return Err(RuntimeError::Internal(anyhow::anyhow!(
                "container {} did not exit 10s after SIGKILL",
                rec.id
            )));
        }
        Ok(())
    }

    /// Removes the container (killing it if needed). Removing an unknown one succeeds.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(rec) = self.containers.resolve(id) else {
            return Ok(());
        };
        if !matches!(self.container_status(&rec), ContainerStatus::Exited(_)) {
            self.oci.kill(&rec.id, libc::SIGKILL).await?;
            wait_exit(
                &self.container_dir(&rec.id).join("bundle"),
                Duration::from_secs(10),
            )
            .await;
        }
        // Forgotten first, so that nothing lists it; what it leaves on the node goes in
        // the background (see reclaim.rs).
        self.containers.remove(&rec.id)?;
        self.reclaims
            .start(&rec.sandbox_id, self.leftovers(&rec.id));
        Ok(())
    }

    pub fn container_usage(&self, rec: &ContainerRecord) -> crate::container::stats::Usage {
        crate::container::stats::collect(
            &rec.cgroups_path,
            &self.container_dir(&rec.id).join("upper"),
        )
    }

    /// Asks the monitor to reopen the log file (after the kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.running_container(id)?;
        let bundle = self.container_dir(&rec.id).join("bundle");
        let pid: i32 = std::fs::read_to_string(monitor::monitor_pid_file(&bundle))?
            .trim()
            .parse()
            .map_err(|e| RuntimeError::Internal(anyhow::anyhow!("monitor pid: {e}")))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| RuntimeError::Internal(anyhow::anyhow!("signalling the monitor: {e}")))?;
        // The monitor reopens at once, so the file exists when we answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !Path::new(&rec.log_path).exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The record of `id` if it is running (what exec, attach and log reopening need).
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        let rec = self.container(id)?;
        if !matches!(self.container_status(&rec), ContainerStatus::Running) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec)
    }

    /// The running container `cmd` may be exec'd in.
    pub(crate) fn exec_target(&self, id: &str, cmd: &[String]) -> Result<ContainerRecord> {
        let rec = self.running_container(id)?;
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument("exec needs a command".into()));
        }
        Ok(rec)
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.containers
            .resolve(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id} not found")))
    }

    pub fn list_container_records(&self) -> Vec<ContainerRecord> {
        self.containers.list()
    }

    pub fn container_status(&self, rec: &ContainerRecord) -> ContainerStatus {
        let bundle = self.container_dir(&rec.id).join("bundle");
        if let Ok(data) = std::fs::read(monitor::exit_file(&bundle))
            && let Ok(exit) = serde_json::from_slice::<ExitRecord>(&data)
        {
            return ContainerStatus::Exited(exit);
        }
        if !monitor_alive(&bundle) {
            return ContainerStatus::Unknown;
        }
        if rec.started_at.is_some() {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }

    /// Runs a command in the container and collects its output (ExecSync).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let (mut c, process) = self.exec_command(id, cmd)?;
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = c.spawn().context("starting runc exec")?;
        let runc_pid = child.id();
        let out = child.wait_with_output();
        tokio::pin!(out);
        let out = match timeout {
            Some(t) => match tokio::time::timeout(t, &mut out).await {
                Ok(r) => r,
                Err(_) => {
                    // The command must not outlive its timeout (containerd kills it too).
                    // Killing runc alone would leave it running in the container: runc
                    // exec is the command's parent and subreaper, so kill what runs below
                    // runc first, then let runc exit on its own.
                    if let Some(pid) = runc_pid {
                        kill_descendants(pid);
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut out).await;
                    let _ = std::fs::remove_file(&process);
                    return Err(RuntimeError::FailedPrecondition(format!(
                        "command timed out after {t:?}"
                    )));
                }
            },
            None => out.await,
        };
        let _ = std::fs::remove_file(&process);
        let out = out.context("waiting for runc exec")?;
        let code = out.status.code().unwrap_or(255);
        Ok((cap(out.stdout), cap(out.stderr), code))
    }

    /// `runc exec` of `cmd` in running container `id` with the container's env, user and
    /// cwd, and the process.json it reads (the caller removes it when the process has
    /// ended). Stdio is the caller's to wire.
    fn exec_command(&self, id: &str, cmd: &[String]) -> Result<(tokio::process::Command, PathBuf)> {
        let rec = self.exec_target(id, cmd)?;
        let process = self.exec_process_json(&rec, cmd, false)?;
        Ok((self.oci.exec_command(&rec.id, &process), process))
    }
}

/// ExecSync output is capped: a runaway command must not exhaust the daemon.
/// SIGKILLs every descendant of `pid` (not `pid` itself), children before their parents
/// could reparent them: from /proc/PID/task/*/children, recursively.
fn kill_descendants(pid: u32) {
    let mut pending = children_of(pid);
    while let Some(child) = pending.pop() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGSTOP,
        );
        pending.extend(children_of(child));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The children of every thread of `pid` (a Go program like runc forks from any thread).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn cap(mut v: Vec<u8>) -> Vec<u8> {
    const MAX: usize = 16 << 20;
    v.truncate(MAX);
    v
}

fn stop_signal(name: &str) -> i32 {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    if let Ok(num) = n.parse::<i32>() {
        return num;
    }
    match n {
        "KILL" => libc::SIGKILL,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => libc::SIGTERM,
    }
}

async fn wait_created(bundle: &Path) -> Result<()> {
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    loop {
        if monitor::created_file(bundle).exists() {
            return Ok(());
        }
        if let Ok(msg) = std::fs::read_to_string(monitor::create_failed_file(bundle)) {
            return Err(RuntimeError::Internal(anyhow::anyhow!(
                "runc create failed: {msg}"
            )));
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(bundle.join("monitor.log")).unwrap_or_default();
            return Err(RuntimeError::Internal(anyhow::anyhow!(
                "container not created after {CREATE_TIMEOUT:?}; monitor log: {log}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the container's monitor process still runs.
pub(super) fn monitor_alive(bundle: &Path) -> bool {
    std::fs::read_to_string(monitor::monitor_pid_file(bundle))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

async fn wait_exit(bundle: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if monitor::exit_file(bundle).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    monitor::exit_file(bundle).exists()
}
