//! Our `runtime-shim`, started as a process with private root/state dirs and the test
//! registry as mirror for every upstream registry, plus CRI clients for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::fixture::{bin_path, repo_root, terminate, unique_name};
use crate::registry::Registry;

/// Directories that outlive one runtime-shim process, so restarts can be tested.
pub struct ShimDirs {
    pub base: PathBuf,
}

impl ShimDirs {
    pub fn new() -> Result<Self> {
        let base = std::env::temp_dir().join(unique_name("nodert-shim"));
        std::fs::create_dir_all(&base)?;
        Ok(ShimDirs { base })
    }
    pub fn socket(&self) -> PathBuf {
        self.base.join("cri.sock")
    }
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.base.join("net.d")
    }
    /// A CNI plugin dir of this test's own, searched after the real plugins'.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.base.join("cni-bin")
    }
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.base.join("cni-cache")
    }
    pub fn state(&self) -> PathBuf {
        self.base.join("state")
    }

    /// A minimal pod `name` in namespace default with a fresh UID, logging below these
    /// dirs.
    pub fn pod_config(&self, name: &str) -> k8s_cri::v1::PodSandboxConfig {
        use k8s_cri::v1::{PodSandboxConfig, PodSandboxMetadata};
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: unique_name("uid"),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.base.join("pods").join(name).display().to_string(),
            linux: Some(kubelet_linux_config()),
            ..Default::default()
        }
    }

    /// A loopback-only CNI config: for tests with only hostNetwork pods, since the
    /// node is Ready only once the runtime reports a network config.
    pub fn write_loopback_network(&self) -> Result<()> {
        std::fs::create_dir_all(self.cni_conf_dir())?;
        std::fs::write(
            self.cni_conf_dir().join("10-lo.conflist"),
            r#"{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}"#,
        )?;
        Ok(())
    }
}

impl ShimDirs {
    /// A CNI network of Debian's ptp + host-local on `subnet`, followed by plugins of
    /// the types in `then`; host-local keeps its reservations in the returned dir.
    pub fn write_ptp_network(&self, subnet: &str, then: &[&str]) -> Result<PathBuf> {
        let ipam_dir = self.base.join("host-local");
        let extra: String = then
            .iter()
            .map(|t| format!(r#",{{"type":"{t}"}}"#))
            .collect();
        std::fs::create_dir_all(self.cni_conf_dir())?;
        std::fs::write(
            self.cni_conf_dir().join("10-test.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"{name}","plugins":[
                {{"type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{dir}",
                  "ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}{extra}]}}"#,
                name = unique_name("net"),
                dir = ipam_dir.display(),
            ),
        )?;
        Ok(ipam_dir)
    }
}

/// IPs host-local has handed out (one file per IP in its data dir).
pub fn reserved_ips(ipam_dir: &Path) -> Vec<String> {
    std::fs::read_dir(ipam_dir)
        .map(|rd| {
            rd.flatten()
                .flat_map(|net| {
                    std::fs::read_dir(net.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') && !n.starts_with("last_reserved"))
                .collect()
        })
        .unwrap_or_default()
}

/// A pod's Linux config as a kubelet sends it for a pod without hostPID or
/// shareProcessNamespace: per-container PID namespaces (CRI's zero value, POD, would give
/// the pod an infra process).
pub fn kubelet_linux_config() -> k8s_cri::v1::LinuxPodSandboxConfig {
    use k8s_cri::v1::{LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption};
    k8s_cri::v1::LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Drop for ShimDirs {
    /// Removes everything a runtime-shim on these dirs may have left in the kernel,
    /// so a test that fails half-way leaks nothing; the sweep is hack/lib.sh's, the one
    /// node teardown uses.
    fn drop(&mut self) {
        let script = format!(
            ". {}/hack/lib.sh && sweep_runtime_shim \"$1\" \"$2\" \"$3\"",
            repo_root().display()
        );
        let _ = Command::new("bash")
            .args(["-c", &script, "sweep"])
            .arg(self.root())
            .arg(self.base.join("state"))
            .arg(&self.base)
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

pub struct RuntimeShim {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl RuntimeShim {
    /// Starts runtime-shim on `dirs`, mirroring every test-image registry to `registry`.
    pub fn start(dirs: &ShimDirs, registry: &Registry) -> Result<Self> {
        Self::start_with_mirrors(dirs, registry, &[])
    }

    /// [`start`](Self::start) with more `HOST=URL` mirrors, e.g. an ECR registry name
    /// served by the local registry.
    pub fn start_with_mirrors(
        dirs: &ShimDirs,
        registry: &Registry,
        extra: &[String],
    ) -> Result<Self> {
        let log = dirs.base.join(format!("{}.log", unique_name("shim")));
        let child = Command::new(bin_path("runtime-shim"))
            .arg("--listen")
            .arg(format!("unix://{}", dirs.socket().display()))
            .arg("--root")
            .arg(dirs.root())
            .arg("--state")
            .arg(dirs.state())
            .arg("--cni-conf-dir")
            .arg(dirs.cni_conf_dir())
            .arg("--cni-cache-dir")
            .arg(dirs.cni_cache_dir())
            // Debian's reference plugins, ours, and the test's.
            .arg("--cni-bin-dir")
            .arg(format!(
                "/usr/lib/cni:{}:{}",
                bin_path("vpc-cni").parent().unwrap().display(),
                dirs.cni_bin_dir().display()
            ))
            .args(registry.mirror_args())
            .args(extra.iter().flat_map(|m| ["--registry-mirror", m.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning runtime-shim (built by `cargo build`?)")?;
        let mut shim = RuntimeShim {
            child,
            socket: dirs.socket(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&shim.socket).is_err() {
            if let Some(status) = shim.child.try_wait()? {
                bail!("runtime-shim exited with {status}: {}", shim.log_text());
            }
            if Instant::now() > deadline {
                bail!("runtime-shim not serving after 20s: {}", shim.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(shim)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect(&self.socket).await?))
    }

    /// Pulls `image` (anonymously, through the mirrors).
    pub async fn pull(&self, image: &str) -> Result<()> {
        pull(&mut self.images().await?, image).await
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    /// Kills the daemon without letting it clean up, as a crash would.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RuntimeShim {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// Pulls `image` anonymously through `images`.
pub async fn pull(images: &mut ImageServiceClient<Channel>, image: &str) -> Result<()> {
    images
        .pull_image(k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("pulling {image}"))?;
    Ok(())
}

/// RunPodSandbox of `config` with the default handler; the sandbox ID.
pub async fn run_sandbox(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &k8s_cri::v1::PodSandboxConfig,
) -> std::result::Result<String, tonic::Status> {
    let r = rt
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?;
    Ok(r.into_inner().pod_sandbox_id)
}

/// A tonic channel over a unix socket (the URI is a placeholder tonic requires).
pub async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connecting to the CRI socket")
}

/// Every sandbox the runtime lists.
pub async fn all_sandboxes(rt: &mut RuntimeServiceClient<Channel>) -> Vec<k8s_cri::v1::PodSandbox> {
    rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// Every container the runtime lists.
pub async fn all_containers(rt: &mut RuntimeServiceClient<Channel>) -> Vec<k8s_cri::v1::Container> {
    rt.list_containers(k8s_cri::v1::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}
