//! Image pulls as our kubelet drives them on runtime-shim: `imagePullSecrets` from the
//! pod's namespace reach the runtime as CRI credentials (matched to the image's
//! registry), a pod without them is refused by the registry, and the pod's events say
//! what happened as upstream's do (Pulling, Pulled, Created, Started, Killing).

use std::time::Duration;

use node_tests::control_plane::ControlPlane;
use node_tests::fixture::unique_name;
use node_tests::kubelet::{Kubelet, KubeletNode};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};
use serde_json::{Value, json};

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn pod(cp: &ControlPlane, ns: &str, name: &str, node: &str, secret: Option<&str>) {
    let mut spec = json!({
        "nodeName": node, "hostNetwork": true, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}],
    });
    if let Some(s) = secret {
        spec["imagePullSecrets"] = json!([{"name": s}]);
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    cp.apply(&pod.to_string()).unwrap();
}

fn get(cp: &ControlPlane, args: &[&str]) -> Value {
    serde_json::from_str(&cp.kubectl(&[args, &["-o", "json"]].concat()).unwrap()).unwrap()
}

#[test]
fn pull_secrets_reach_the_registry_and_events_tell_the_story() {
    let cp = ControlPlane::shared();
    let reg = Registry::start_with_basic_auth("puller", "s3cret").unwrap();
    let dirs = ShimDirs::new().unwrap();
    // Only hostNetwork pods here, but the node is Ready only with a network config.
    dirs.write_loopback_network().unwrap();
    let _shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let node = KubeletNode::new(cp, "kl-pull").unwrap();
    let mut kubelet = Kubelet::start(&node, &dirs.socket(), &[]).unwrap();
    kubelet.wait_node_ready(cp, &node.name, Duration::from_secs(60));
    let ns = unique_name("pull");
    cp.kubectl(&["create", "namespace", &ns]).unwrap();
    // The image is named after registry.k8s.io; runtime-shim's mirror for that host is
    // the local registry, which wants these credentials.
    cp.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server=https://registry.k8s.io",
        "--docker-username=puller",
        "--docker-password=s3cret",
    ])
    .unwrap();

    pod(cp, &ns, "without", &node.name, None);
    let waiting = kubelet.eventually(
        "the pull without credentials fails",
        Duration::from_secs(60),
        || {
            let p = get(cp, &["-n", &ns, "get", "pod", "without"]);
            let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
            Ok(["ErrImagePull", "ImagePullBackOff"]
                .contains(&reason.as_str().unwrap_or_default())
                .then_some(p))
        },
    );
    let message =
        waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
    assert!(
        message.contains("credentials") || message.contains("denied") || message.contains("401"),
        "{message}"
    );

    pod(cp, &ns, "with", &node.name, Some("regcred"));
    kubelet.eventually(
        "the pod with the pull secret runs",
        Duration::from_secs(60),
        || {
            let p = get(cp, &["-n", &ns, "get", "pod", "with"]);
            Ok((p["status"]["phase"] == "Running").then_some(()))
        },
    );

    cp.kubectl(&[
        "-n",
        &ns,
        "delete",
        "pod",
        "with",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    let reasons = |events: &Value| -> Vec<(String, String)> {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["involvedObject"]["name"] == "with")
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["involvedObject"]["fieldPath"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let seen = kubelet.eventually("the pod's events", Duration::from_secs(30), || {
        let r = reasons(&get(cp, &["-n", &ns, "get", "events"]));
        Ok((r.iter().any(|(reason, _)| reason == "Killing")).then_some(r))
    });
    for want in ["Pulling", "Pulled", "Created", "Started", "Killing"] {
        assert!(
            seen.iter()
                .any(|(r, path)| r == want && path == "spec.containers{c}"),
            "no {want} event for spec.containers{{c}}: {seen:?}"
        );
    }
    let events = get(cp, &["-n", &ns, "get", "events"]);
    let pulled = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "Pulled" && e["involvedObject"]["name"] == "with")
        .unwrap();
    assert!(
        pulled["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Successfully pulled image \"{IMAGE}\" in ")),
        "{pulled}"
    );
    assert_eq!(pulled["source"]["component"], "kubelet");

    cp.kubectl(&["delete", "namespace", &ns, "--wait=false"])
        .unwrap();
    drop(kubelet);
    cp.kubectl(&["delete", "node", &node.name]).unwrap();
}
