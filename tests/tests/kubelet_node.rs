//! Our kubelet joining the real 1.20.2 control plane with a node credential (Node
//! authorizer + NodeRestriction), on containerd 1.6 as CRI runtime: registration,
//! status, Lease, and adoption of its Node across a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use node_tests::control_plane::ControlPlane;
use node_tests::kubelet::{Kubelet, KubeletNode};
use node_tests::reference_node::{ReferenceNode, shared_containerd as containerd};
use node_tests::registry::Registry;
use serde_json::Value;

fn get_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cp.kubectl(&all)?)?)
}

fn node_json(cp: &ControlPlane, name: &str) -> Result<Value> {
    get_json(cp, &["get", "node", name])
}

fn condition<'a>(node: &'a Value, type_: &str) -> Option<&'a Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// [`Kubelet::eventually`], kept as a free function for the call sites below.
fn eventually<T>(
    what: &str,
    timeout: Duration,
    kubelet: &mut Kubelet,
    f: impl FnMut() -> Result<Option<T>>,
) -> T {
    kubelet.eventually(what, timeout, f)
}

fn wait_ready(
    cp: &ControlPlane,
    node: &KubeletNode,
    kubelet: &mut Kubelet,
    timeout: Duration,
) -> Value {
    eventually("node Ready", timeout, kubelet, || {
        let n = node_json(cp, &node.name)?;
        let ready = condition(&n, "Ready").context("no Ready condition")?;
        Ok((ready["status"] == "True").then_some(n))
    })
}

#[test]
fn node_registers_with_labels_taints_capacity_and_becomes_ready() {
    let cp = ControlPlane::shared();
    let sock = containerd();
    let node = KubeletNode::new(cp, "kl-reg").unwrap();
    let started = Instant::now();
    let mut kubelet = Kubelet::start(
        &node,
        sock,
        &[
            "--node-labels",
            "nodert.test/role=worker,nodert.test/empty=",
            "--register-with-taints",
            "nodert.test/dedicated=infra:NoSchedule",
            "--max-pods",
            "42",
            "--provider-id",
            "nodert://test/kl-reg",
            // Upstream flags from existing unit files that we accept and ignore.
            "--container-runtime=remote",
            "--fail-swap-on=false",
            "--pod-infra-container-image",
            "registry.k8s.io/pause:3.10",
        ],
    )
    .unwrap();

    let n = wait_ready(cp, &node, &mut kubelet, Duration::from_secs(30));
    // Issue 5: Ready within 10 s of start (the Node is created with its status).
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "node Ready only after {took:?}"
    );
    let labels = &n["metadata"]["labels"];
    assert_eq!(
        labels["kubernetes.io/hostname"],
        node.name.as_str(),
        "{labels}"
    );
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["beta.kubernetes.io/os"], "linux");
    assert_eq!(labels["beta.kubernetes.io/arch"], "amd64");
    assert_eq!(labels["nodert.test/role"], "worker");
    assert_eq!(labels["nodert.test/empty"], "");

    let taints = n["spec"]["taints"].as_array().expect("taints");
    assert!(
        taints.iter().any(|t| t["key"] == "nodert.test/dedicated"
            && t["value"] == "infra"
            && t["effect"] == "NoSchedule"),
        "{taints:?}"
    );
    assert_eq!(n["spec"]["providerID"], "nodert://test/kl-reg");

    let status = &n["status"];
    assert_eq!(status["capacity"]["pods"], "42");
    assert_eq!(status["allocatable"]["pods"], "42");
    for r in ["cpu", "memory", "ephemeral-storage"] {
        assert!(status["capacity"][r].is_string(), "capacity {r}: {status}");
        assert!(
            status["allocatable"][r].is_string(),
            "allocatable {r}: {status}"
        );
    }
    assert_eq!(
        status["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        node.port
    );
    let info = &status["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{info}"
    );
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(info["bootID"], boot_id.trim());
    assert_eq!(info["operatingSystem"], "linux");
    assert!(
        info["kubeletVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.20.2"),
        "{info}"
    );
    let addresses = status["addresses"].as_array().unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a["type"] == "Hostname" && a["address"] == node.name.as_str()),
        "{addresses:?}"
    );

    let ready = condition(&n, "Ready").unwrap();
    assert_eq!(ready["reason"], "KubeletReady");
    assert_eq!(ready["message"], "kubelet is posting ready status");
    for (type_, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ] {
        let c = condition(&n, type_).unwrap_or_else(|| panic!("no {type_}"));
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], reason, "{c}");
    }
    assert!(
        kubelet
            .log_text()
            .contains("not supported by this kubelet; ignored"),
        "{}",
        kubelet.log_text()
    );
    kubelet.check_running().unwrap();
}

#[test]
fn lease_is_held_owned_by_the_node_and_renewed() {
    let cp = ControlPlane::shared();
    let node = KubeletNode::new(cp, "kl-lease").unwrap();
    let mut kubelet = Kubelet::start(&node, containerd(), &[]).unwrap();

    let lease = eventually(
        "lease created",
        Duration::from_secs(30),
        &mut kubelet,
        || match get_json(cp, &["-n", "kube-node-lease", "get", "lease", &node.name]) {
            Ok(l) => Ok(Some(l)),
            Err(e) if format!("{e:#}").contains("NotFound") => Ok(None),
            Err(e) => Err(e),
        },
    );
    let n = node_json(cp, &node.name).unwrap();
    let uid = n["metadata"]["uid"].clone();
    let heartbeat = condition(&n, "Ready").unwrap()["lastHeartbeatTime"].clone();
    assert_eq!(
        lease["spec"]["holderIdentity"],
        node.name.as_str(),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40, "{lease}");
    let owners = lease["metadata"]["ownerReferences"]
        .as_array()
        .expect("owners");
    assert!(
        owners.iter().any(|o| o["apiVersion"] == "v1"
            && o["kind"] == "Node"
            && o["name"] == node.name.as_str()
            && o["uid"] == uid),
        "{owners:?} (node uid {uid})"
    );

    let first = lease["spec"]["renewTime"].as_str().unwrap().to_string();
    let later = eventually(
        "lease renewed",
        Duration::from_secs(25),
        &mut kubelet,
        || {
            let l = get_json(cp, &["-n", "kube-node-lease", "get", "lease", &node.name])?;
            let t = l["spec"]["renewTime"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok((t != first).then_some(t))
        },
    );
    assert!(later > first, "renewTime went from {first} to {later}");
    // The Lease is the heartbeat: an unchanged status is not rewritten every 10 s.
    let n = node_json(cp, &node.name).unwrap();
    assert_eq!(
        condition(&n, "Ready").unwrap()["lastHeartbeatTime"],
        heartbeat,
        "node status rewritten without a change"
    );
}

#[test]
fn restarted_kubelet_adopts_its_node() {
    let cp = ControlPlane::shared();
    let sock = containerd();
    let node = KubeletNode::new(cp, "kl-restart").unwrap();
    let mut kubelet = Kubelet::start(&node, sock, &["--node-labels", "nodert.test/gen=1"]).unwrap();
    let before = wait_ready(cp, &node, &mut kubelet, Duration::from_secs(30));
    // Something another component owns, which the restart must keep.
    cp.kubectl(&["label", "node", &node.name, "admin.example/keep=yes"])
        .unwrap();
    assert!(
        kubelet.stop(Duration::from_secs(10)),
        "kubelet ignored SIGTERM"
    );

    let mut kubelet = Kubelet::start(&node, sock, &["--node-labels", "nodert.test/gen=2"]).unwrap();
    eventually(
        "restart adopted the node",
        Duration::from_secs(30),
        &mut kubelet,
        || {
            let n = node_json(cp, &node.name)?;
            Ok((n["metadata"]["labels"]["nodert.test/gen"] == "2").then_some(()))
        },
    );
    let after = wait_ready(cp, &node, &mut kubelet, Duration::from_secs(30));
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(after["metadata"]["labels"]["admin.example/keep"], "yes");
    // Ready never flipped, so its transition time survives the restart.
    assert_eq!(
        condition(&before, "Ready").unwrap()["lastTransitionTime"],
        condition(&after, "Ready").unwrap()["lastTransitionTime"]
    );
    let log = kubelet.log_text();
    assert!(log.contains("adopted existing node"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    kubelet.check_running().unwrap();
}

/// The parts of a Node that must not tell our kubelet from upstream's on the same
/// machine and runtime: label keys, annotation keys, capacity, allocatable, address
/// types and InternalIP, condition texts, and nodeInfo apart from the versions.
fn comparable(n: &Value) -> Value {
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let conditions: Vec<Value> = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::json!([c["type"], c["status"], c["reason"], c["message"]]))
        .collect();
    let addresses: Vec<Value> = n["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a["type"].as_str() {
            Some("Hostname") => serde_json::json!(["Hostname"]),
            _ => serde_json::json!([a["type"], a["address"]]),
        })
        .collect();
    let images: Vec<Value> = n["status"]["images"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut info = n["status"]["nodeInfo"].clone();
    let info = info.as_object_mut().unwrap();
    info.remove("kubeletVersion");
    info.remove("kubeProxyVersion");
    serde_json::json!({
        "labels": keys(&n["metadata"]["labels"]),
        "annotations": keys(&n["metadata"]["annotations"]),
        "capacity": n["status"]["capacity"],
        "allocatable": n["status"]["allocatable"],
        "addresses": addresses,
        "conditions": conditions,
        "nodeInfo": info,
        "images": images,
    })
}

/// Pulls `images` into the CRI runtime at `socket`.
fn pull_images(socket: &Path, images: &[&str]) -> Result<()> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::{ImageSpec, PullImageRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = ImageServiceClient::new(node_tests::runtime_shim::connect(socket).await?);
        for image in images {
            client
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .with_context(|| format!("pulling {image}"))?;
        }
        Ok(())
    })
}

#[test]
fn node_matches_upstream_kubelet_on_the_same_machine() {
    let cp = ControlPlane::shared();
    let registry = Registry::start().unwrap();
    let reference_name = node_tests::fixture::unique_name("kl-upstream");
    let reference = ReferenceNode::start(cp, &registry, &reference_name).unwrap();
    // The reference node's eviction thresholds and pod limit, so allocatable compares.
    let node = KubeletNode::with_config(
        cp,
        "kl-compare",
        "evictionHard: {memory.available: \"1Mi\", nodefs.available: \"0%\", imagefs.available: \"0%\"}\n\
         maxPods: 110\n",
    )
    .unwrap();
    // Images of different sizes in the shared runtime, so status.images compares too.
    let pulled = [
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/e2e-test-images/busybox:1.29-2",
    ];
    pull_images(Path::new(reference.cri_socket()), &pulled).unwrap();
    let mut kubelet = Kubelet::start(&node, Path::new(reference.cri_socket()), &[]).unwrap();
    wait_ready(cp, &node, &mut kubelet, Duration::from_secs(30));
    // Upstream refreshes its image list every 30 s and reports it with the next status
    // update; wait until both nodes list every pulled image.
    let lists_all = |n: &Value| {
        let images = n["status"]["images"].to_string();
        pulled.iter().all(|p| images.contains(p))
    };
    let (ours, upstream) = eventually(
        "both nodes list the images",
        Duration::from_secs(90),
        &mut kubelet,
        || {
            let ours = node_json(cp, &node.name)?;
            let upstream = node_json(cp, reference.name())?;
            Ok((lists_all(&ours) && lists_all(&upstream)).then_some((ours, upstream)))
        },
    );
    let (ours, upstream) = (comparable(&ours), comparable(&upstream));
    for field in [
        "labels",
        "annotations",
        "capacity",
        "allocatable",
        "addresses",
        "conditions",
        "nodeInfo",
    ] {
        assert_eq!(
            ours[field], upstream[field],
            "{field} differs from upstream"
        );
    }
}

#[test]
fn node_is_not_ready_until_the_runtime_answers() {
    let cp = ControlPlane::shared();
    let node = KubeletNode::new(cp, "kl-noruntime").unwrap();
    // A socket path that does not answer yet; later it becomes a link to containerd.
    let link = node.base.join("cri.sock");
    let mut kubelet = Kubelet::start(&node, &link, &[]).unwrap();

    let not_ready = eventually(
        "node registered NotReady",
        Duration::from_secs(30),
        &mut kubelet,
        || {
            let n = match node_json(cp, &node.name) {
                Ok(n) => n,
                Err(e) if format!("{e:#}").contains("NotFound") => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(condition(&n, "Ready").cloned())
        },
    );
    assert_eq!(not_ready["status"], "False", "{not_ready}");
    assert_eq!(not_ready["reason"], "KubeletNotReady", "{not_ready}");
    assert_eq!(
        not_ready["message"], "container runtime status check may not have completed yet",
        "{not_ready}"
    );

    std::os::unix::fs::symlink(containerd(), &link).unwrap();
    let n = wait_ready(cp, &node, &mut kubelet, Duration::from_secs(30));
    let ready = condition(&n, "Ready").unwrap();
    assert_eq!(ready["reason"], "KubeletReady");
    assert!(
        ready["lastTransitionTime"].as_str() >= not_ready["lastTransitionTime"].as_str(),
        "{ready} after {not_ready}"
    );
    assert!(
        n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{n}"
    );
}
