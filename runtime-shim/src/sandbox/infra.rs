//! A pod's infra process: PID 1 of a pod-wide PID namespace, for the pods whose
//! containers share one (PID namespace mode POD, `shareProcessNamespace`). A PID
//! namespace cannot be pinned like the others: once its PID 1 is gone no process can
//! enter it. Only these pods get one; the rest need no process at all.
//!
//! It is this binary again (`__pause DIR`, DIR naming the sandbox in `ps`): the
//! launcher, already in a new PID namespace, forks that namespace's PID 1, prints its
//! PID and exits, so PID 1 belongs to no daemon and outlives restarts, as monitors do.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// The hidden first argument that turns the runtime-shim binary into an infra process.
pub const PAUSE_ARG: &str = "__pause";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Infra {
    pub pid: i32,
    /// Its start time (clock ticks after boot): tells it from a later process that
    /// got the same PID.
    pub start_time: u64,
}

impl Infra {
    /// The PID namespace the pod's containers join.
    pub fn pidns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// SIGKILLs it (and so every process left in the pod's PID namespace) and waits
    /// until it is gone. Succeeds if it already is.
    pub fn kill(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "infra process {} still alive 10s after SIGKILL",
                    self.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// Starts the infra process of the sandbox whose state dir is `dir`.
pub fn spawn(dir: &Path) -> io::Result<Infra> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(PAUSE_ARG)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid and unshare are plain syscalls, async-signal-safe; nothing else
    // runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
        });
    }
    let out = cmd.output()?;
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            io::Error::other(format!(
                "the infra process did not start ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
    let start_time = start_time(pid)
        .ok_or_else(|| io::Error::other(format!("the infra process {pid} exited at once")))?;
    Ok(Infra { pid, start_time })
}

/// Field 22 of /proc/PID/stat, the start time; `None` when there is no such process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The `__pause` main: the launcher forks PID 1 of its new PID namespace, prints its
/// PID and exits.
pub fn run() -> ! {
    // SAFETY: this process is single-threaded (it has just been exec'd).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            std::process::exit(0)
        }
        Ok(ForkResult::Child) => pid1(),
        Err(e) => {
            eprintln!("fork: {e}");
            std::process::exit(1)
        }
    }
}

/// PID 1 of the pod: reaps whatever is orphaned in the namespace, forever.
fn pid1() -> ! {
    // Let go of the launcher's stdio (the daemon reads stdout to its end) and cwd.
    crate::container::exec_reaper::release_stdio();
    let _ = std::env::set_current_dir("/");
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_block();
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = chld.wait();
    }
}
