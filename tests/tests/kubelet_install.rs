//! `kubelet install`: one cluster description in, a node's files out under `--root`,
//! and the kubelet joins the test control plane with exactly the config and bootstrap
//! kubeconfig it wrote (TLS bootstrap from the token, then Ready on runtime-shim).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use node_tests::control_plane::ControlPlane;
use node_tests::fixture::{bin_path, run_ok, try_eventually, unique_name};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};
use serde_json::Value;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the kubelet (and reaps it) however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The token of a bootstrap kubeconfig control-plane.sh wrote (`    token: ...`).
fn token_of(kubeconfig: &Path) -> String {
    std::fs::read_to_string(kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the bootstrap kubeconfig")
        .trim()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn installed_config_joins_the_cluster() {
    let cp = ControlPlane::shared();
    let scratch = Scratch(std::env::temp_dir().join(unique_name("install")));
    let root = scratch.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let token = token_of(&cp.bootstrap_kubeconfig().unwrap());
    let ca = std::fs::read_to_string(cp.ca_cert()).unwrap();
    let description = scratch.0.join("cluster.yaml");
    std::fs::write(
        &description,
        format!(
            "apiServerEndpoint: {}\ncertificateAuthority: |\n{}\nauth:\n  bootstrapToken: {token}\nclusterDNS: [10.96.0.10]\nnetworking: podcidr\npodCIDR: 10.244.7.0/24\nmaxPods: 33\n",
            cp.server(),
            ca.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        ),
    )
    .unwrap();

    // Bad input: a clear error, and nothing written.
    let bad = scratch.0.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&description)
            .unwrap()
            .replace("podcidr", "vxlan"),
    )
    .unwrap();
    let out = Command::new(bin_path("kubelet"))
        .args([
            "install",
            "--bootstrap-config",
            bad.to_str().unwrap(),
            "--root",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("networking"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "files written despite the error"
    );

    let written = run_ok(
        Command::new(bin_path("kubelet"))
            .args([
                "install",
                "--bootstrap-config",
                description.to_str().unwrap(),
                "--root",
            ])
            .arg(&root),
    )
    .unwrap();
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for f in [
        "/var/lib/kubelet/config.yaml",
        "/var/lib/kubelet/bootstrap-kubeconfig",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/cni/net.d/10-vpc-cni.conflist",
        "/etc/systemd/system/kubelet.service",
        "/etc/systemd/system/runtime-shim.service",
        "/etc/systemd/system/ipamd.service",
    ] {
        assert!(
            written.contains(at(f).to_str().unwrap()),
            "{f} not written: {written}"
        );
    }
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(at("/etc/cni/net.d/10-vpc-cni.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "vpc-cni");

    // The kubelet runs on the written config and bootstrap kubeconfig. Only what
    // points at this machine's real paths is redirected into the root (the CA file the
    // config names, the runtime socket, the state dirs) plus a free port, since other
    // tests run kubelets here too.
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    dirs.write_loopback_network().unwrap();
    let _shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let name = unique_name("kl-install");
    let log = scratch.0.join("kubelet.log");
    let kubelet = Command::new(bin_path("kubelet"))
        .arg("--config")
        .arg(at("/var/lib/kubelet/config.yaml"))
        .arg("--bootstrap-kubeconfig")
        .arg(at("/var/lib/kubelet/bootstrap-kubeconfig"))
        .arg("--kubeconfig")
        .arg(at("/var/lib/kubelet/kubeconfig"))
        .arg("--client-ca-file")
        .arg(at("/etc/kubernetes/pki/ca.crt"))
        .arg("--container-runtime-endpoint")
        .arg(format!("unix://{}", dirs.socket().display()))
        .arg("--root-dir")
        .arg(at("/var/lib/kubelet"))
        .arg("--cert-dir")
        .arg(at("/var/lib/kubelet/pki"))
        .args(["--address", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--hostname-override", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut kubelet = Running(kubelet);
    let node = try_eventually(Duration::from_secs(60), || {
        if let Some(status) = kubelet.0.try_wait()? {
            anyhow::bail!("kubelet exited with {status}");
        }
        let out = cp.kubectl(&["get", "node", &name, "-o", "json"]);
        let Ok(out) = out else { return Ok(None) };
        let node: Value = serde_json::from_str(&out)?;
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        Ok(ready.then_some(node))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    // maxPods from the description reached the Node; the client certificate from TLS
    // bootstrap landed in the kubeconfig the unit names.
    assert_eq!(node["status"]["capacity"]["pods"], "33");
    assert!(at("/var/lib/kubelet/kubeconfig").is_file());
    drop(kubelet);
    cp.kubectl(&["delete", "node", &name]).unwrap();
}
