//! kubectl as a process of its own, for what `ControlPlane::kubectl` (run to
//! completion, stdout or an error) cannot do: wiring its stdio, reading its exit code,
//! or leaving it running (`logs -f`, `attach`, `port-forward`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::fixture::{kube_bin, run_ok, terminate, try_eventually};

/// kubectl 1.20.2 as `cp`'s admin, with `args`, not started yet.
pub fn command(cp: &ControlPlane, args: &[&str]) -> Command {
    let mut cmd = Command::new(kube_bin("kubectl"));
    cmd.arg("--kubeconfig").arg(cp.kubeconfig()).args(args);
    cmd
}

/// kubectl's exit code, stdout and stderr.
pub fn status(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = command(cp, args)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kubectl running in the background, stopped (TERM, then KILL after 5 s) however
/// the test ends.
pub struct Background(pub Child);

impl Background {
    /// `kubectl args` with stdout piped for the test to read, stdin and stderr closed.
    pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> Self {
        let child = command(cp, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl");
        Background(child)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(5));
    }
}

/// `kubectl port-forward pod/<pod> <local>:<remote>` in `ns` from a free local port,
/// and the first page served through it (`GET /`, retried for 30 s while the forward
/// comes up): the running kubectl, the URL and that page.
pub fn port_forward_http(
    cp: &ControlPlane,
    ns: &str,
    pod: &str,
    remote_port: u16,
) -> (Background, String, String) {
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port();
    let target = format!("pod/{pod}");
    let ports = format!("{local_port}:{remote_port}");
    let forward = Background::kubectl(cp, &["-n", ns, "port-forward", &target, &ports]);
    let url = format!("http://127.0.0.1:{local_port}/");
    let body = try_eventually(Duration::from_secs(30), || {
        Ok(run_ok(Command::new("curl").args(["-sf", "-m", "3", &url])).ok())
    })
    .unwrap_or_else(|last| panic!("curl through kubectl port-forward: {last}"));
    (forward, url, body)
}
