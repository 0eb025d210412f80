//! Our `kubelet`, started as a process with a node credential from the control plane,
//! a private root dir and config file, against a given CRI socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::control_plane::ControlPlane;
use crate::fixture::{bin_path, terminate, try_eventually, unique_name};

/// A node's identity and directories; outlives one kubelet process so restarts can be
/// tested. Removed on drop.
pub struct KubeletNode {
    pub name: String,
    pub base: PathBuf,
    pub kubeconfig: PathBuf,
    pub port: u16,
}

impl KubeletNode {
    /// A fresh node name with its `system:node:<name>` kubeconfig and a config file.
    pub fn new(cp: &ControlPlane, tag: &str) -> Result<Self> {
        Self::with_config(cp, tag, "")
    }

    /// Like `new`, with `extra_config` (KubeletConfiguration YAML fields) appended to
    /// the config file.
    pub fn with_config(cp: &ControlPlane, tag: &str, extra_config: &str) -> Result<Self> {
        let name = unique_name(tag);
        let kubeconfig = cp.node_kubeconfig(&name)?;
        let base = std::env::temp_dir().join(format!("nodert-kubelet-{name}"));
        Self::create(name, base, kubeconfig, extra_config)
    }

    /// A node with no credentials yet: `kubeconfig` is a path inside its directory that
    /// does not exist (for TLS bootstrap to write, or a test to fill in).
    pub fn without_credentials(tag: &str) -> Result<Self> {
        let name = unique_name(tag);
        let base = std::env::temp_dir().join(format!("nodert-kubelet-{name}"));
        let kubeconfig = base.join("kubelet.kubeconfig");
        Self::create(name, base, kubeconfig, "")
    }

    /// A node called `name` (e.g. the name a cloud provider gives it) whose
    /// credentials are `kubeconfig`.
    pub fn named(name: &str, kubeconfig: PathBuf, extra_config: &str) -> Result<Self> {
        let base = std::env::temp_dir().join(format!("nodert-kubelet-{}", unique_name(name)));
        Self::create(name.to_string(), base, kubeconfig, extra_config)
    }

    fn create(
        name: String,
        base: PathBuf,
        kubeconfig: PathBuf,
        extra_config: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(base.join("root"))?;
        let port = free_port()?;
        std::fs::write(
            base.join("config.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 address: 127.0.0.1\nport: {port}\n{extra_config}"
            ),
        )?;
        Ok(KubeletNode {
            name,
            base,
            kubeconfig,
            port,
        })
    }

    pub fn root_dir(&self) -> PathBuf {
        self.base.join("root")
    }

    pub fn config_file(&self) -> PathBuf {
        self.base.join("config.yaml")
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.base.join("pki")
    }
}

/// How to start a kubelet, beyond [`Kubelet::start`]'s defaults.
#[derive(Default)]
pub struct Launch {
    /// Leave out `--hostname-override` (a cloud provider names the node).
    pub no_hostname_override: bool,
    /// Environment for the kubelet (e.g. `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Flags appended to the defaults.
    pub args: Vec<String>,
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A port nobody listens on right now (the kernel picks it).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running kubelet; dropping it sends SIGTERM, then SIGKILL after 10 s.
pub struct Kubelet {
    /// `None` once stopped, so drop never signals a pid that may have been reused.
    child: Option<Child>,
    log: PathBuf,
}

impl Kubelet {
    /// Starts the kubelet for `node` on the CRI runtime at `cri_socket` (a path), with
    /// `extra` flags appended.
    pub fn start(node: &KubeletNode, cri_socket: &Path, extra: &[&str]) -> Result<Self> {
        let launch = Launch {
            args: extra.iter().map(|s| s.to_string()).collect(),
            ..Launch::default()
        };
        Self::launch(node, cri_socket, &launch)
    }

    /// Starts the kubelet for `node` as `launch` says.
    pub fn launch(node: &KubeletNode, cri_socket: &Path, launch: &Launch) -> Result<Self> {
        let log = node.base.join(format!("{}.log", unique_name("kubelet")));
        let mut cmd = Command::new(bin_path("kubelet"));
        if !launch.no_hostname_override {
            cmd.arg("--hostname-override").arg(&node.name);
        }
        let child = cmd
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .arg("--kubeconfig")
            .arg(&node.kubeconfig)
            .arg("--config")
            .arg(node.config_file())
            .arg("--container-runtime-endpoint")
            .arg(format!("unix://{}", cri_socket.display()))
            .arg("--root-dir")
            .arg(node.root_dir())
            .arg("--cert-dir")
            .arg(node.cert_dir())
            .args(["--v", "4"])
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning kubelet (built by `cargo build -p kubelet`?)")?;
        Ok(Kubelet {
            child: Some(child),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the kubelet has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("kubelet already stopped")?;
        if let Some(status) = child.try_wait()? {
            // Reaped: forget the pid so drop does not signal whoever reuses it.
            self.child = None;
            bail!("kubelet exited with {status}:\n{}", self.log_text());
        }
        Ok(())
    }

    /// Polls `f` until it yields a value; panics with the last error and this
    /// kubelet's log, or at once if the kubelet exits.
    pub fn eventually<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Result<Option<T>>,
    ) -> T {
        let mut f = f;
        let result = try_eventually(timeout, || {
            if let Err(e) = self.check_running() {
                panic!("{what}: {e:#}");
            }
            f()
        });
        result.unwrap_or_else(|last| {
            panic!(
                "{what} did not happen within {timeout:?}: {last}\nkubelet log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits until `node`'s Ready condition is True.
    pub fn wait_node_ready(&mut self, cp: &ControlPlane, node: &str, timeout: Duration) {
        let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        self.eventually("node Ready", timeout, || {
            let out = cp.kubectl(&["get", "node", node, "-o", jsonpath])?;
            Ok((out == "True").then_some(()))
        });
    }

    /// SIGTERM and wait; returns whether it exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.child
            .take()
            .is_some_and(|mut child| terminate(&mut child, grace))
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// How a test authenticates to a kubelet's :10250 server.
pub enum KubeletAuth<'a> {
    Anonymous,
    Token(&'a str),
    ClientCert { cert: &'a Path, key: &'a Path },
}

/// `GET https://127.0.0.1:<port><path>` with curl, not verifying the kubelet's
/// (self-signed) serving certificate; returns the status code and body.
pub fn kubelet_get(port: u16, path: &str, auth: KubeletAuth) -> Result<(u16, String)> {
    const STATUS_MARK: &str = "\n--nodert-status:";
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "--max-time", "20", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .arg(format!("https://127.0.0.1:{port}{path}"));
    match auth {
        KubeletAuth::Anonymous => {}
        KubeletAuth::Token(token) => {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        KubeletAuth::ClientCert { cert, key } => {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    let out = crate::fixture::run_ok(&mut cmd)?;
    let (body, status) = out
        .rsplit_once(STATUS_MARK)
        .with_context(|| format!("curl printed no status: {out}"))?;
    Ok((status.trim().parse()?, body.to_string()))
}

/// The shared containerd lives with the reference node's fixtures.
pub use crate::reference_node::shared_containerd;
