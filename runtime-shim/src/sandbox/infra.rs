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

    /// Running, and not a zombie: once killed it is dead to the pod even before whoever
    /// inherited it reaps it.
    pub fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(state, t)| t == self.start_time && !"ZX".contains(state))
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
    let (_, start_time) = proc_stat(pid)
        .ok_or_else(|| io::Error::other(format!("the infra process {pid} exited at once")))?;
    Ok(Infra { pid, start_time })
}

/// The state (field 3) and start time (field 22) in /proc/PID/stat; `None` when there
/// is no such process.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_alive_until_killed_and_told_from_a_later_one_with_its_pid() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let (_, start_time) = proc_stat(pid).unwrap();
        let infra = Infra { pid, start_time };
        assert!(infra.alive());
        assert!(
            !Infra {
                pid,
                start_time: start_time + 1
            }
            .alive()
        );
        // Killed but not reaped yet (a zombie): dead already.
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).is_some_and(|(s, _)| s != 'Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!infra.alive());
        infra.kill().unwrap();
        child.wait().unwrap();
        assert!(proc_stat(pid).is_none());
    }
}
