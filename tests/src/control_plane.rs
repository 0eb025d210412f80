//! A real Kubernetes 1.20.2 control plane (etcd, apiserver, controller-manager,
//! scheduler) from `hack/control-plane.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fixture::{ScriptFixture, kube_bin, repo_root, run_ok};

pub struct ControlPlane {
    fixture: ScriptFixture,
}

impl ControlPlane {
    /// A private control plane, torn down when dropped.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// A private control plane with extra `control-plane.sh run` flags (e.g.
    /// `--cluster-signing-duration 6m40s`).
    pub fn start_with(args: &[&str]) -> Result<Self> {
        let fixture = ScriptFixture::start("control-plane.sh", args, Duration::from_secs(180))?;
        Ok(ControlPlane { fixture })
    }

    /// One control plane shared by every test of this test binary (starting one costs
    /// ~20 s). It is torn down by its script when the test process exits.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| ControlPlane::start().expect("starting the shared control plane"))
    }

    /// The admin kubeconfig (group system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(
            self.fixture
                .get("KUBECONFIG")
                .expect("published by the script"),
        )
    }

    pub fn server(&self) -> &str {
        self.fixture
            .get("APISERVER_URL")
            .expect("published by the script")
    }

    pub fn ca_cert(&self) -> PathBuf {
        PathBuf::from(
            self.fixture
                .get("CA_CERT")
                .expect("published by the script"),
        )
    }

    /// A value the script published (e.g. `APISERVER_PID`, `SA_KEY`).
    pub fn get(&self, key: &str) -> Result<&str> {
        self.fixture.get(key)
    }

    pub fn dir(&self) -> &Path {
        self.fixture.dir()
    }

    /// A kubeconfig for `system:node:<name>` in group `system:nodes`.
    pub fn node_kubeconfig(&self, name: &str) -> Result<PathBuf> {
        self.script(&["node-credentials", "--node", name])
    }

    /// A kubeconfig holding a fresh kubeadm-style bootstrap token.
    pub fn bootstrap_kubeconfig(&self) -> Result<PathBuf> {
        self.script(&["bootstrap-token"])
    }

    fn script(&self, args: &[&str]) -> Result<PathBuf> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("hack/control-plane.sh"))
            .arg(args[0])
            .arg("--dir")
            .arg(self.dir())
            .args(&args[1..]);
        Ok(PathBuf::from(run_ok(&mut cmd)?.trim()))
    }

    /// kubectl 1.20.2 as cluster admin; stdout on success.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl_as(&self.kubeconfig(), args)
    }

    /// `kubectl apply -f -` of a manifest, as cluster admin.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        kubectl_stdin(&self.kubeconfig(), &["apply", "-f", "-"], manifest)
    }
}

/// kubectl 1.20.2 with the given kubeconfig; stdout on success, stderr in the error.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    run_ok(
        Command::new(kube_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args),
    )
}

/// kubectl with `input` on stdin.
pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], input: &str) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(kube_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning kubectl")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
