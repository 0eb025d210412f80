//! Helpers the privileged cni-plugin tests share: running `ip` and friends, reading
//! `ip -j` output, and pinging.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command whose failure is an answer (cleanup, probes): whether it succeeded.
pub fn quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `ip -j ARGS` as JSON values (empty output is an empty list).
pub fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = run("ip", &[&["-j"], args].concat());
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
}

/// The IPv4 routes through `dev`, in any table.
pub fn routes_via(dev: &str) -> Vec<Value> {
    ip_json(&["-4", "route", "show", "table", "all", "dev", dev])
}

/// `ping` where installed, busybox's otherwise; `ns` runs it inside that namespace.
pub fn ping(ns: Option<&str>, target: &str) -> bool {
    let ping: &[&str] = if quiet("sh", &["-c", "command -v ping"]) {
        &["ping"]
    } else {
        &["busybox", "ping"]
    };
    let mut argv: Vec<&str> = match ns {
        Some(ns) => vec!["ip", "netns", "exec", ns],
        None => vec![],
    };
    argv.extend_from_slice(ping);
    argv.extend_from_slice(&["-c", "1", "-W", "2", target]);
    quiet(argv[0], &argv[1..])
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` and the last
/// value it saw after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} did not happen within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
