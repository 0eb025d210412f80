//! Node-level registry credentials, end to end: a pod with no imagePullSecrets pulls
//! from a registry that demands basic auth, because the kubelet got the credentials
//! from an exec credential provider plugin (`--image-credential-provider-config`),
//! or, for an image named after an ECR registry, from its built-in ECR provider
//! (instance-role credentials from IMDS, GetAuthorizationToken from moto).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node_tests::control_plane::ControlPlane;
use node_tests::ec2::Ec2Emulator;
use node_tests::fixture::unique_name;
use node_tests::kubelet::{Kubelet, KubeletNode, Launch};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};
use serde_json::{Value, json};

const REPO: &str = "e2e-test-images/busybox";
const TAG: &str = "1.29-2";

/// A scratch directory removed on drop, even when the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique_name("creds"));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates pod `p` running `image` with no imagePullSecrets and waits until it runs;
/// a failed pull fails at once with the runtime's message.
fn run_pod(cp: &ControlPlane, kubelet: &mut Kubelet, ns: &str, node: &str, image: &str) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": ns},
        "spec": {"nodeName": node, "hostNetwork": true, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}});
    cp.apply(&pod.to_string()).unwrap();
    kubelet.eventually(
        "the pod runs without imagePullSecrets",
        Duration::from_secs(90),
        || {
            let p: Value =
                serde_json::from_str(&cp.kubectl(&["-n", ns, "get", "pod", "p", "-o", "json"])?)?;
            let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
            if waiting["reason"] == "ErrImagePull" || waiting["reason"] == "ImagePullBackOff" {
                anyhow::bail!("pull failed: {}", waiting["message"]);
            }
            Ok((p["status"]["phase"] == "Running").then_some(()))
        },
    );
}

fn cleanup(cp: &ControlPlane, ns: &str, kubelet: Kubelet, node: &str) {
    cp.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .unwrap();
    drop(kubelet);
    cp.kubectl(&["delete", "node", node]).unwrap();
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const PLUGIN_RESPONSE: &str = r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","cacheKeyType":"Registry","auth":{"registry.k8s.io":{"username":"plugin-user","password":"plugin-pass"}}}"#;

#[test]
fn exec_plugin_credentials_reach_the_registry() {
    let cp = ControlPlane::shared();
    let reg = Registry::start_with_basic_auth("plugin-user", "plugin-pass").unwrap();
    let scratch = Scratch::new();
    let bin_dir = scratch.0.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    // The plugin records each run (argv, env, request) and answers credentials for
    // registry.k8s.io, cached per registry.
    let log = scratch.0.join("requests");
    executable(
        &bin_dir.join("test-provider"),
        &format!(
            "#!/bin/sh\nprintf '%s %s ' \"$1\" \"$PROVIDER_MODE\" >> {log}\ncat >> {log}\necho >> {log}\necho '{PLUGIN_RESPONSE}'\n",
            log = log.display()
        ),
    );
    let config = scratch.0.join("credential-provider.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1alpha1
kind: CredentialProviderConfig
providers:
  - name: test-provider
    matchImages: [\"registry.k8s.io\", \"*.example.com\"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1alpha1
    args: [get-credentials]
    env: [{name: PROVIDER_MODE, value: test}]
",
    )
    .unwrap();

    let dirs = ShimDirs::new().unwrap();
    dirs.write_loopback_network().unwrap();
    let _shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let node = KubeletNode::new(cp, "kl-cred").unwrap();
    let args = [
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        bin_dir.to_str().unwrap(),
    ];
    let mut kubelet = Kubelet::start(&node, &dirs.socket(), &args).unwrap();
    kubelet.wait_node_ready(cp, &node.name, Duration::from_secs(60));
    let ns = unique_name("cred");
    cp.kubectl(&["create", "namespace", &ns]).unwrap();
    let image = format!("registry.k8s.io/{REPO}:{TAG}");

    run_pod(cp, &mut kubelet, &ns, &node.name, &image);
    let requests = std::fs::read_to_string(&log).unwrap();
    let first = requests.lines().next().unwrap();
    let (argv, request) = first.split_at(first.find('{').unwrap());
    assert_eq!(argv.trim(), "get-credentials test");
    let request: Value = serde_json::from_str(request).unwrap();
    assert_eq!(
        request,
        json!({"kind": "CredentialProviderRequest",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1alpha1",
            "image": format!("registry.k8s.io/{REPO}")})
    );
    // A second pod of the same registry is served from the Registry-keyed cache.
    let runs = requests.lines().count();
    cp.kubectl(&[
        "-n",
        &ns,
        "delete",
        "pod",
        "p",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    run_pod(cp, &mut kubelet, &ns, &node.name, &image);
    let again = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(
        again, runs,
        "the plugin ran again despite its cached answer"
    );
    cleanup(cp, &ns, kubelet, &node.name);
}

#[test]
fn a_bad_provider_config_stops_the_kubelet() {
    let cp = ControlPlane::shared();
    let scratch = Scratch::new();
    let config = scratch.0.join("credential-provider.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: missing\n    matchImages: [\"*.io\"]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
    )
    .unwrap();
    let node = KubeletNode::new(cp, "kl-badcred").unwrap();
    let args = [
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        scratch.0.to_str().unwrap(),
    ];
    let mut kubelet = Kubelet::start(&node, Path::new("/nonexistent.sock"), &args).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Err(e) = kubelet.check_running() {
            break format!("{e:#}");
        }
        assert!(
            Instant::now() < deadline,
            "the kubelet kept running: {}",
            kubelet.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exited.contains("plugin binary") && exited.contains("does not exist"),
        "{exited}"
    );
    let nodes = cp.kubectl(&["get", "nodes", "-o", "name"]).unwrap();
    assert!(
        !nodes.contains(&node.name),
        "registered despite the bad config: {nodes}"
    );
}

#[test]
fn ecr_images_pull_with_the_instance_role() {
    let cp = ControlPlane::shared();
    let ec2 = Ec2Emulator::start(1).unwrap();
    // moto's GetAuthorizationToken hands out AWS:<account>-auth-token; the registry
    // accepts exactly that, so the pull works only with a token the kubelet got from
    // ECR with the role credentials from IMDS.
    let reg = Registry::start_with_basic_auth("AWS", "123456789012-auth-token").unwrap();
    let ecr_host = format!("123456789012.dkr.ecr.{}.amazonaws.com", ec2.region());
    let mirror = format!("{ecr_host}={}/registry.k8s.io", reg.url());

    let dirs = ShimDirs::new().unwrap();
    dirs.write_loopback_network().unwrap();
    let _shim = RuntimeShim::start_with_mirrors(&dirs, &reg, &[mirror]).unwrap();
    let node = KubeletNode::new(cp, "kl-ecr").unwrap();
    let launch = Launch {
        env: vec![
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                ec2.imds_endpoints()[0].into(),
            ),
            ("AWS_ENDPOINT_URL_ECR".into(), ec2.endpoint().into()),
            // Only the instance role may be used.
            ("AWS_ACCESS_KEY_ID".into(), String::new()),
            ("AWS_SECRET_ACCESS_KEY".into(), String::new()),
        ],
        ..Launch::default()
    };
    let mut kubelet = Kubelet::launch(&node, &dirs.socket(), &launch).unwrap();
    kubelet.wait_node_ready(cp, &node.name, Duration::from_secs(60));
    let ns = unique_name("ecr");
    cp.kubectl(&["create", "namespace", &ns]).unwrap();
    run_pod(
        cp,
        &mut kubelet,
        &ns,
        &node.name,
        &format!("{ecr_host}/{REPO}:{TAG}"),
    );
    cleanup(cp, &ns, kubelet, &node.name);
}
