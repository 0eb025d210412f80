//! Our `kubelet`, started as a process with a node credential from the control plane,
//! a private root dir and config file, against a given CRI socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use crate::control_plane::{ControlPlane, kubectl_as};
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
        // Volumes of pods a test did not delete (or the kubelet had no time to tear
        // down) stay mounted under the root dir; a mount would keep the dir, and itself,
        // on the machine.
        drop(MountSweep(self.base.clone()));
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

/// Our kubelet on containerd with its node Ready, plus the guards that clean up
/// whatever a failed test leaves (dropped in reverse order: namespace, kubelet,
/// mounts, node dirs).
pub struct PodNode {
    pub ns: Namespace,
    pub kubelet: Kubelet,
    _mounts: MountSweep,
    pub node: KubeletNode,
}

impl PodNode {
    pub fn start(tag: &str) -> PodNode {
        Self::start_with_config(tag, "")
    }

    /// Like `start`, with `extra_config` (KubeletConfiguration YAML) in the config file.
    pub fn start_with_config(tag: &str, extra_config: &str) -> PodNode {
        let cp = ControlPlane::shared();
        let node = KubeletNode::with_config(cp, tag, extra_config).unwrap();
        let mounts = MountSweep(node.root_dir());
        let mut kubelet = Kubelet::start(&node, shared_containerd(), &[]).unwrap();
        kubelet.wait_node_ready(cp, &node.name, Duration::from_secs(60));
        let ns = Namespace::create(cp, tag);
        PodNode {
            ns,
            kubelet,
            _mounts: mounts,
            node,
        }
    }

    pub fn cp(&self) -> &'static ControlPlane {
        ControlPlane::shared()
    }

    /// Creates `spec` as pod `name` bound to our node; returns its uid.
    pub fn create_pod(&mut self, name: &str, spec: Value) -> String {
        let mut spec = spec;
        spec["nodeName"] = json!(self.node.name);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns.name, "labels": {"app": "kpods", "tier": "test"}},
            "spec": spec,
        });
        let cp = self.cp();
        // The namespace's default ServiceAccount appears shortly after the namespace.
        self.kubelet
            .eventually("pod creation", Duration::from_secs(30), || {
                Ok(cp.apply(&pod.to_string()).ok())
            });
        self.pod(name)["metadata"]["uid"]
            .as_str()
            .expect("pod uid")
            .to_string()
    }

    /// Applies a v1 object of `kind` named `name` in the test's namespace; `body`
    /// holds its other top-level fields (data, spec, ...).
    pub fn put(&self, kind: &str, name: &str, body: Value) {
        let mut object = body;
        object["apiVersion"] = json!("v1");
        object["kind"] = json!(kind);
        object["metadata"] = json!({"name": name, "namespace": self.ns.name});
        self.cp()
            .apply(&object.to_string())
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e:#}"));
    }

    pub fn pod(&self, name: &str) -> Value {
        let out = self
            .cp()
            .kubectl(&["get", "pod", "-n", &self.ns.name, name, "-o", "json"])
            .expect("getting the pod");
        serde_json::from_str(&out).expect("pod JSON")
    }

    /// Waits until `f` accepts the pod.
    pub fn wait_pod(&mut self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let (cp, ns) = (self.cp(), self.ns.name.clone());
        self.kubelet.eventually(what, Duration::from_secs(90), || {
            let out = cp.kubectl(&["get", "pod", "-n", &ns, name, "-o", "json"])?;
            let pod: Value = serde_json::from_str(&out)?;
            Ok(f(&pod).then_some(pod))
        })
    }

    /// What container `c` of the pod wrote to stdout (the CRI log file).
    pub fn log(&self, pod: &Value, container: &str) -> String {
        let path = format!(
            "/var/log/pods/{}_{}_{}/{container}/0.log",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
        );
        let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // CRI log lines: "<time> <stream> <P|F> <text>".
        raw.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Deletes pod `name` with a 1 s grace period and waits until it is gone.
    pub fn delete_pod(&mut self, name: &str) {
        self.delete_pod_with(name, &["--grace-period=1"]);
    }

    /// Deletes pod `name` with `flags` added to `kubectl delete` and waits until the
    /// object is gone.
    pub fn delete_pod_with(&mut self, name: &str, flags: &[&str]) {
        let mut args = vec!["delete", "pod", "-n", &self.ns.name, name, "--wait=false"];
        args.extend_from_slice(flags);
        self.cp().kubectl(&args).unwrap();
        let (cp, ns) = (self.cp(), self.ns.name.clone());
        self.kubelet
            .eventually("pod deleted", Duration::from_secs(60), || {
                let out = cp.kubectl(&["get", "pods", "-n", &ns, "-o", "name"])?;
                Ok((!out.contains(&format!("pod/{name}"))).then_some(()))
            });
    }

    /// The events of the test's namespace that match `field_selector`
    /// (`reason=FailedMount`, `involvedObject.name=web`).
    pub fn events(&self, field_selector: &str) -> Result<Vec<Value>> {
        namespace_events(self.cp(), &self.ns.name, field_selector)
    }

    /// Waits for an event matching `field_selector` that `f` accepts; returns it.
    pub fn wait_event(
        &mut self,
        field_selector: &str,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let (cp, ns) = (self.cp(), self.ns.name.clone());
        self.kubelet.eventually(what, Duration::from_secs(60), || {
            let events = namespace_events(cp, &ns, field_selector)?;
            Ok(events.into_iter().find(|e| f(e)))
        })
    }
}

fn namespace_events(cp: &ControlPlane, ns: &str, field_selector: &str) -> Result<Vec<Value>> {
    let out = cp.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        field_selector,
        "-o",
        "json",
    ])?;
    let list: Value = serde_json::from_str(&out).context("events JSON")?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A namespace of its own per test, in any control plane; deleting it (with our
/// kubelet still running, so declare it after the kubelet) takes the pods,
/// ConfigMaps, Secrets and Services with it.
pub struct Namespace {
    pub name: String,
    /// The control plane's admin kubeconfig: the namespace may outlive the borrow.
    kubeconfig: PathBuf,
}

impl Namespace {
    pub fn create(cp: &ControlPlane, tag: &str) -> Namespace {
        let name = unique_name(tag);
        cp.kubectl(&["create", "namespace", &name]).unwrap();
        Namespace {
            name,
            kubeconfig: cp.kubeconfig(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl_as(
            &self.kubeconfig,
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                &self.name,
                "--grace-period=1",
                "--timeout=60s",
            ],
        );
        let _ = kubectl_as(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

/// Unmounts anything left mounted under the kubelet's root dir (tmpfs volumes of a
/// pod a failed test did not delete), so the node's dirs can be removed.
pub struct MountSweep(pub PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        for mount in mounts_under(&self.0) {
            if let Ok(c) = std::ffi::CString::new(mount) {
                // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other inputs.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Mount points at or below `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// The pod's condition of `type_` (Null if absent).
pub fn condition<'a>(pod: &'a Value, type_: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The static pod directory of a [`PodNode`] (`staticPodPath: manifests` in its
/// config, relative to the config file). Dropping it removes every manifest, waits
/// for the kubelet to stop those pods, and force-removes what is left in the runtime,
/// so a failed test leaves nothing in the shared containerd. Drop it before the node.
pub struct StaticPodDir {
    pub dir: PathBuf,
    node: String,
    socket: PathBuf,
}

/// The KubeletConfiguration fields pointing a node at its [`StaticPodDir`].
pub const STATIC_POD_CONFIG: &str = "staticPodPath: manifests\nfileCheckFrequency: 1s\n";

impl StaticPodDir {
    pub fn new(node: &KubeletNode, socket: &Path) -> Self {
        let dir = node.base.join("manifests");
        std::fs::create_dir_all(&dir).expect("creating the manifest dir");
        StaticPodDir {
            dir,
            node: node.name.clone(),
            socket: socket.to_path_buf(),
        }
    }

    /// Writes `manifest` to `file` atomically (a dot file renamed into place, which
    /// the kubelet ignores until then).
    pub fn write(&self, file: &str, manifest: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, manifest).expect("writing a manifest");
        std::fs::rename(&tmp, self.dir.join(file)).expect("renaming a manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).expect("removing a manifest");
    }

    /// The runtime's sandboxes of this node's static pods (named `*-<node>`):
    /// (sandbox id, pod uid, ready).
    pub fn sandboxes(&self) -> Result<Vec<(String, String, bool)>> {
        let suffix = format!("-{}", self.node);
        cri_call(&self.socket, |mut rt| async move {
            let items = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await?
                .into_inner()
                .items;
            Ok(items
                .into_iter()
                .filter(|s| {
                    s.metadata
                        .as_ref()
                        .is_some_and(|m| m.name.ends_with(&suffix))
                })
                .map(|s| {
                    let uid = s.metadata.map(|m| m.uid).unwrap_or_default();
                    (
                        s.id,
                        uid,
                        s.state == cri::PodSandboxState::SandboxReady as i32,
                    )
                })
                .collect())
        })
    }

    /// The running containers of the pod with `uid`, by id.
    pub fn running_containers(&self, uid: &str) -> Result<Vec<String>> {
        let uid = uid.to_string();
        cri_call(&self.socket, |mut rt| async move {
            let filter = cri::ContainerFilter {
                label_selector: [("io.kubernetes.pod.uid".to_string(), uid)].into(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            };
            let list = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner()
                .containers;
            Ok(list.into_iter().map(|c| c.id).collect())
        })
    }
}

type RuntimeClient = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// Runs `f` with a CRI runtime client for `socket` on a private tokio runtime.
fn cri_call<T, F, Fut>(socket: &Path, f: F) -> Result<T>
where
    F: FnOnce(RuntimeClient) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = RuntimeClient::new(crate::runtime_shim::connect(socket).await?);
        f(client).await
    })
}

impl Drop for StaticPodDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let gone = try_eventually(Duration::from_secs(30), || {
            Ok(self.sandboxes()?.is_empty().then_some(()))
        });
        if gone.is_ok() {
            return;
        }
        // The kubelet did not stop them (it may have died): remove them ourselves.
        let ids: Vec<String> = self
            .sandboxes()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        let _ = cri_call(&self.socket, |mut rt| async move {
            for id in ids {
                let _ = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
                let _ = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await;
            }
            Ok(())
        });
    }
}
