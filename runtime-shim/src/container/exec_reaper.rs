//! The exec reaper: the runtime-shim binary re-executed (`__exec SPEC`) to run one
//! streaming exec. It runs `runc exec --detach` as a child subreaper, so the exec'd
//! process becomes its child once runc exits, waits for it and records how it ended.
//! This is what containerd's shim does, and what a terminal needs: only a detached
//! `runc exec` hands the pty master to `--console-socket` instead of relaying through
//! runc's own stdio. It also tells "runc could not start it" apart from "it exited".
//!
//! Without a terminal the process inherits the reaper's stdio (the daemon's pipes).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// The hidden first argument that turns the runtime-shim binary into an exec reaper.
pub const EXEC_ARG: &str = "__exec";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// `runc ... exec --detach --pid-file PID_FILE ...`.
    pub argv: Vec<String>,
    pub pid_file: PathBuf,
    /// runc's `--log` (JSON lines): its error when the exec fails.
    pub runc_log: PathBuf,
    /// Where the [`ExecOutcome`] is written.
    pub result: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecOutcome {
    /// The process ran and exited with this code (128 + signal when killed).
    Exited(i32),
    /// runc could not start it; its error.
    Failed(String),
}

/// The reaper process's main.
pub fn run(spec_json: &str) -> ! {
    let code = match reaper(spec_json) {
        Ok(ExecOutcome::Exited(code)) => code,
        Ok(ExecOutcome::Failed(_)) => 255,
        Err(e) => {
            eprintln!("exec reaper: {e}");
            255
        }
    };
    std::process::exit(code)
}

fn reaper(spec_json: &str) -> io::Result<ExecOutcome> {
    let spec: ExecSpec = serde_json::from_str(spec_json).map_err(io::Error::other)?;
    // SAFETY: plain prctl call with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let status = std::process::Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()?;
    let outcome = if status.success() {
        let pid: i32 = std::fs::read_to_string(&spec.pid_file)?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        // Our copies of the daemon's pipes must not keep them open after the process
        // exits; nothing below writes to stdio.
        release_stdio();
        ExecOutcome::Exited(super::monitor::reap(pid))
    } else {
        ExecOutcome::Failed(
            super::runc::last_error(&spec.runc_log)
                .unwrap_or_else(|| format!("runc exec exited with {status}")),
        )
    };
    write_result(&spec.result, &outcome)?;
    Ok(outcome)
}

/// Points stdin, stdout and stderr at /dev/null (a process that outlives whoever reads
/// its output must not hold their pipes open).
pub(crate) fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto our own standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn write_result(path: &Path, outcome: &ExecOutcome) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(outcome)?)?;
    std::fs::rename(tmp, path)
}

/// The outcome a reaper recorded, if it got that far.
pub fn read_result(path: &Path) -> Option<ExecOutcome> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
