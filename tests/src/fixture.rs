//! One mechanism for every component a test needs (control plane, registry, EC2
//! emulator, reference node): a `hack/<name>.sh run --dir DIR --owner-pid PID ...` script
//! that runs in the foreground, writes `DIR/env` (KEY=VALUE lines) and then `DIR/ready`,
//! and tears down everything it started on SIGTERM or when PID exits. Developers run the
//! same scripts by hand, so tests and `local-up.sh` share one implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The repository root (the `tests/` crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the workspace's binaries were built (`hack/test.sh` sets `NODERT_BIN_DIR`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("NODERT_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("debug").join(name)
}

/// `ipamd status` of the daemon on `socket`, as JSON (free, assigned, cooldown, ENIs).
pub fn ipamd_status(socket: &Path) -> Result<serde_json::Value> {
    let out = run_ok(
        Command::new(bin_path("ipamd"))
            .args(["status", "--socket"])
            .arg(socket),
    )?;
    serde_json::from_str(&out).with_context(|| format!("parsing `ipamd status`: {out}"))
}

/// The directory everything expensive is cached in (see hack/lib.sh).
pub fn cache_dir() -> PathBuf {
    std::env::var("NODERT_CACHE")
        .unwrap_or_else(|_| "/var/cache/node-runtime".into())
        .into()
}

/// An upstream Kubernetes 1.20.2 binary built by hack/build-kubernetes.sh (kubectl,
/// kubelet, kube-proxy, ...).
pub fn kube_bin(name: &str) -> PathBuf {
    cache_dir().join("kubernetes-1.20.2/bin").join(name)
}

/// Runs a command and returns its stdout, or an error carrying its stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Whether `pid` is a live process. A zombie counts as gone: on this machine PID 1
/// reaps orphans only every so often.
pub fn process_running(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `f` every 250 ms until it yields a value or `timeout` passes; on timeout, the
/// last error (or "condition not met").
pub fn try_eventually<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> std::result::Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never checked");
    while Instant::now() < deadline {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met".into(),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last)
}

/// [`try_eventually`], panicking with `what` and the last error on timeout.
pub fn eventually<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<Option<T>>) -> T {
    try_eventually(timeout, f)
        .unwrap_or_else(|last| panic!("{what} did not happen within {timeout:?}: {last}"))
}

/// A name no other test run (or concurrent test) on this machine can use: tag, pid, counter.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `hack/<script> run` process; dropping it stops the component and waits.
pub struct ScriptFixture {
    child: Child,
    dir: PathBuf,
    env: HashMap<String, String>,
    name: String,
}

impl ScriptFixture {
    /// Starts `hack/<script> run --dir <fresh tempdir> --owner-pid <our pid> <args>` and
    /// waits up to `timeout` for `DIR/ready`.
    pub fn start(script: &str, args: &[&str], timeout: Duration) -> Result<Self> {
        let base = std::env::var("NODERT_TEST_TMP").unwrap_or_else(|_| "/tmp".into());
        let dir = Path::new(&base).join(unique_name(&format!(
            "nodert-{}",
            script.trim_end_matches(".sh")
        )));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let path = repo_root().join("hack").join(script);
        let child = Command::new("bash")
            .arg(&path)
            .arg("run")
            .arg("--dir")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", path.display()))?;
        let mut fixture = ScriptFixture {
            child,
            dir,
            env: HashMap::new(),
            name: script.to_string(),
        };
        fixture.wait_ready(timeout)?;
        Ok(fixture)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.dir.join("ready").exists() {
                break;
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(self.dir.join("env")).context("reading env file")?;
        self.env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        Ok(())
    }

    /// The last lines of the script's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A value the script published in `DIR/env`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{} did not publish {key}", self.name))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The script's own pid (its children are the component's processes).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ScriptFixture {
    fn drop(&mut self) {
        // SIGTERM lets the script run its teardown trap.
        if terminate(&mut self.child, Duration::from_secs(30)) {
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`. Returns whether it
/// exited by itself.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}
