//! A whole local cluster from `hack/cluster.sh`: the control plane, the registry and our
//! nodes, each node a network namespace on a private bridge running kubelet,
//! runtime-shim, ipamd and kube-proxy. Networks and names are derived from the test
//! process, so it runs beside a developer's `local-up.sh` cluster and other tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control_plane::{kubectl_as, kubectl_stdin};
use crate::fixture::{ScriptFixture, run_ok, unique_name};

pub struct Cluster {
    fixture: ScriptFixture,
    /// Also the prefix of its node names and network namespaces.
    pub name: String,
}

impl Cluster {
    /// A cluster of `nodes` nodes on networks no other cluster of this machine uses;
    /// `mode` is `podcidr` or `eni` (nodes as emulated EC2 instances).
    pub fn start(nodes: u32, mode: &str) -> Result<Self> {
        // Node and netns names must stay short: interface and netns tools cut at 15 bytes.
        let name = unique_name("c").replace('-', "");
        // Networks from the pid: clusters of different test processes never share one.
        // (One cluster per mode per process: the two modes use disjoint ranges.)
        let n = std::process::id() % 200;
        let fixture = ScriptFixture::start(
            "cluster.sh",
            &[
                "--name",
                &name,
                "--nodes",
                &nodes.to_string(),
                "--mode",
                mode,
                // VPC 10.150-189/16 and pods 10.100-149/16: clear of the service CIDR
                // (10.96/16), the local cluster's 10.244/16 and the other tests' ranges.
                "--vpc-net",
                &format!("10.{}", 150 + n % 40),
                "--bridge",
                &format!("br{name}"),
                "--node-net",
                &format!("172.31.{}", 20 + n),
                "--pod-net",
                &format!("10.{}", 100 + n % 50),
            ],
            Duration::from_secs(300),
        )?;
        Ok(Cluster { fixture, name })
    }

    pub fn mode(&self) -> &str {
        self.published("MODE")
    }

    /// In eni mode, a value the cluster's EC2 emulator published (`EC2_ENDPOINT`,
    /// `AWS_REGION`, `INSTANCE_IDS` in node order, ...).
    pub fn ec2(&self, key: &str) -> Result<String> {
        let dir = self.fixture.get("EC2_DIR")?;
        let env = std::fs::read_to_string(Path::new(dir).join("env"))?;
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .with_context(|| format!("the EC2 emulator did not publish {key}"))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.published("KUBECONFIG"))
    }

    pub fn nodes(&self) -> Vec<String> {
        self.list("NODES")
    }

    pub fn pod_cidrs(&self) -> Vec<String> {
        self.list("POD_CIDRS")
    }

    /// The state dir of node `i` (0-based): `ipamd.sock`, `<daemon>.pid`, logs.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(&self.list("NODE_DIRS")[i])
    }

    /// The pid of a node daemon (`kubelet`, `runtime-shim`, `ipamd`) right now; the node
    /// restarts daemons that exit.
    pub fn daemon_pid(&self, node: usize, daemon: &str) -> Result<i32> {
        let path = self.node_dir(node).join(format!("{daemon}.pid"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The cluster's dir: every process, mount and file of the cluster lives under it.
    pub fn dir(&self) -> PathBuf {
        self.fixture.dir().to_path_buf()
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl_as(&self.kubeconfig(), args)
    }

    pub fn apply(&self, manifest: &str) -> Result<String> {
        kubectl_stdin(&self.kubeconfig(), &["apply", "-f", "-"], manifest)
    }

    /// Runs a command in node `node`'s network namespace; its stdout.
    pub fn on_node(&self, node: usize, argv: &[&str]) -> Result<String> {
        let ns = &self.nodes()[node];
        run_ok(Command::new("ip").args(["netns", "exec", ns]).args(argv))
    }

    fn published(&self, key: &str) -> &str {
        self.fixture.get(key).expect("published by cluster.sh")
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.published(key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}
