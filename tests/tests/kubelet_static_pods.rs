//! Static pods of our kubelet on containerd 1.6, against the real 1.20.2 control plane
//! with NodeRestriction: manifests in staticPodPath run as pods, each mirrored in the
//! API with upstream's name, annotations, owner and status; a deleted mirror comes
//! back without touching the container, an edit replaces the pod, a removed file
//! stops it and deletes its mirror, and static pods run with no API server at all.
//! Static pods pass the same admission as API pods, as critical pods: they preempt
//! other pods for resources, and are refused for anything else.

use std::time::Duration;

use node_tests::control_plane::{ControlPlane, kubectl_stdin};
use node_tests::fixture::unique_name;
use node_tests::kubelet::{Kubelet, KubeletNode, PodNode, STATIC_POD_CONFIG, StaticPodDir};
use node_tests::reference_node::shared_containerd as containerd;
use serde_json::{Value, json};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn manifest(namespace: &str, message: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "static-web", "namespace": namespace, "labels": {"app": "static"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", format!("echo {message}; exec sleep 3600")]}],
        },
    })
    .to_string()
}

/// The mirror pod as the API has it, if any.
fn mirror((cp, ns): (&ControlPlane, &str), name: &str) -> Option<Value> {
    let out = cp.kubectl(&["get", "pods", "-n", ns, "-o", "json"]).ok()?;
    let list: Value = serde_json::from_str(&out).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .cloned()
}

fn running_container_id(pod: &Value) -> Option<String> {
    let s = &pod["status"]["containerStatuses"][0];
    s["state"]["running"].is_object().then_some(())?;
    Some(
        s["containerID"]
            .as_str()?
            .strip_prefix("containerd://")?
            .to_string(),
    )
}

#[test]
fn static_pods_run_with_mirror_pods_as_upstream() {
    let mut t = PodNode::start_with_config("ks-static", STATIC_POD_CONFIG);
    let statics = StaticPodDir::new(&t.node, containerd());
    let node = t.node.name.clone();
    let name = format!("static-web-{node}");
    let ns = t.ns.name.clone();
    let api = (t.cp(), ns.as_str());
    let started = std::time::Instant::now();
    statics.write("web.yaml", &manifest(&t.ns.name, "v1"));

    // A running container, and a Running mirror with upstream's metadata.
    let first = t
        .kubelet
        .eventually("a Running mirror pod", Duration::from_secs(60), || {
            Ok(mirror(api, &name)
                .filter(|m| m["status"]["phase"] == "Running" && running_container_id(m).is_some()))
        });
    eprintln!(
        "static pod Running on its mirror after {:?}",
        started.elapsed()
    );
    let ann = &first["metadata"]["annotations"];
    let hash = ann["kubernetes.io/config.hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(hash.len(), 32, "{first}");
    assert_eq!(ann["kubernetes.io/config.mirror"], hash.as_str());
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    assert!(
        ann["kubernetes.io/config.seen"]
            .as_str()
            .is_some_and(|s| s.contains('T'))
    );
    let owner = &first["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["controller"]),
        (&json!("Node"), &json!(node), &json!(true))
    );
    assert_eq!(first["spec"]["nodeName"], node.as_str());
    assert!(
        first["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t["effect"] == "NoExecute"
                && t.get("key").is_none()),
        "{first}"
    );
    assert!(first["status"]["podIP"].is_string(), "{first}");
    assert_eq!(first["status"]["containerStatuses"][0]["ready"], true);
    let container = running_container_id(&first).unwrap();
    // The pod runs under the hash, not the mirror's API UID.
    let mirror_uid = first["metadata"]["uid"].as_str().unwrap().to_string();
    assert_ne!(mirror_uid, hash);
    assert_eq!(
        statics.running_containers(&hash).unwrap(),
        std::slice::from_ref(&container)
    );

    // Deleting the mirror is not deleting the static pod: it comes back, same container.
    t.cp()
        .kubectl(&["delete", "pod", "-n", &t.ns.name, &name, "--wait=false"])
        .unwrap();
    let recreated =
        t.kubelet
            .eventually("the mirror pod recreated", Duration::from_secs(60), || {
                Ok(mirror(api, &name).filter(|m| {
                    m["metadata"]["uid"] != mirror_uid.as_str()
                        && m["metadata"]["deletionTimestamp"].is_null()
                        && running_container_id(m).is_some()
                }))
            });
    assert_eq!(running_container_id(&recreated), Some(container.clone()));
    assert_eq!(
        statics.running_containers(&hash).unwrap(),
        std::slice::from_ref(&container)
    );

    // An edit is a new pod: new hash, new container, the old one stopped.
    statics.write("web.yaml", &manifest(&t.ns.name, "v2"));
    let edited = t
        .kubelet
        .eventually("the edited pod's mirror", Duration::from_secs(60), || {
            Ok(mirror(api, &name).filter(|m| {
                m["metadata"]["annotations"]["kubernetes.io/config.mirror"] != hash.as_str()
                    && m["status"]["phase"] == "Running"
                    && running_container_id(m).is_some()
            }))
        });
    let new_hash = edited["metadata"]["annotations"]["kubernetes.io/config.hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(running_container_id(&edited), Some(container.clone()));
    t.kubelet
        .eventually("the old version stopped", Duration::from_secs(30), || {
            Ok(statics.running_containers(&hash)?.is_empty().then_some(()))
        });
    // Logs live under the static pod's own UID (its hash), as upstream keeps them.
    let log = format!("/var/log/pods/{ns}_{name}_{new_hash}/main/0.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(text.contains(" v2"), "{text}");

    // A removed file stops the pod and deletes its mirror.
    statics.remove("web.yaml");
    t.kubelet
        .eventually("the static pod stopped", Duration::from_secs(30), || {
            let gone = statics.running_containers(&new_hash)?.is_empty()
                && statics.sandboxes()?.is_empty();
            Ok(gone.then_some(()))
        });
    t.kubelet
        .eventually("the mirror pod deleted", Duration::from_secs(30), || {
            Ok(mirror(api, &name).is_none().then_some(()))
        });

    // NodeRestriction let every write through.
    let log = t.kubelet.log_text().to_lowercase();
    assert!(!log.contains("forbidden"), "{}", t.kubelet.log_text());
}

/// A static pod `name` running busybox with `spec` merged into its spec.
fn static_manifest(namespace: &str, name: &str, spec: Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"]}],
        },
    });
    for (k, v) in spec.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod.to_string()
}

fn cpu_request(cpu: &str) -> Value {
    json!({"requests": {"cpu": cpu}})
}

/// upstream's HandlePodAdditions for static pods, on a node with 500m allocatable
/// cpu: a node selector that does not match and a taken host port refuse a static
/// pod (Warning event, nothing runs, no mirror); a resource shortage does not, the
/// kubelet evicts an API pod to make room ("Preempting", the pod Failed); and a
/// shortage no eviction can cover refuses it with UnexpectedAdmissionError.
#[test]
fn static_pods_are_admitted_as_critical_pods() {
    let config = format!("{STATIC_POD_CONFIG}kubeReserved: {{cpu: 1500m}}\n");
    let mut t = PodNode::start_with_config("ks-admit", &config);
    let statics = StaticPodDir::new(&t.node, containerd());
    let node = t.node.name.clone();
    let ns = t.ns.name.clone();
    let allocatable = t
        .cp()
        .kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.allocatable.cpu}",
        ])
        .unwrap();
    assert_eq!(allocatable, "500m");

    t.create_pod(
        "victim",
        json!({"containers": [{"name": "main", "image": BUSYBOX,
            "command": ["sleep", "3600"], "resources": cpu_request("400m")}],
            "terminationGracePeriodSeconds": 1}),
    );
    t.wait_pod("victim", "the API pod Running", |p| {
        p["status"]["phase"] == "Running"
    });

    let refused = |t: &mut PodNode, name: &str, reason: &str, what: &str| -> Value {
        let full = format!("{name}-{node}");
        let event = t.wait_event(
            &format!("involvedObject.name={full},reason={reason}"),
            what,
            |e| e["type"] == "Warning",
        );
        assert_eq!(event["source"]["component"], "kubelet", "{event}");
        // Refused before it ran: no sandbox, and no mirror (upstream makes mirrors
        // only for pods it runs).
        let uid = event["involvedObject"]["uid"].as_str().unwrap().to_string();
        assert!(
            statics
                .sandboxes()
                .unwrap()
                .iter()
                .all(|(_, u, _)| *u != uid),
            "{name} must not run"
        );
        assert!(
            mirror((t.cp(), &ns), &full).is_none(),
            "no mirror for {full}"
        );
        event
    };

    statics.write(
        "affinity.yaml",
        &static_manifest(
            &ns,
            "affinity",
            json!({"nodeSelector": {"nodert-test": "absent"}}),
        ),
    );
    let event = refused(
        &mut t,
        "affinity",
        "NodeAffinity",
        "the node selector refusal",
    );
    assert_eq!(event["message"], "Predicate NodeAffinity failed");

    // 300m more than the 100m left: the API pod is evicted for the static pod.
    let port = 31000 + (std::process::id() % 1000) as i32;
    let with_port = |cpu: &str| {
        json!({"containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
            "resources": cpu_request(cpu), "ports": [{"containerPort": 8080, "hostPort": port}]}]})
    };
    statics.write(
        "critical.yaml",
        &static_manifest(&ns, "critical", with_port("300m")),
    );
    let preempted = t.wait_pod("victim", "the API pod preempted", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(preempted["status"]["reason"], "Preempting", "{preempted}");
    assert_eq!(
        preempted["status"]["message"],
        "Preempted in order to admit critical pod"
    );
    t.wait_event(
        "involvedObject.name=victim,reason=Preempting",
        "the Preempting event",
        |e| e["type"] == "Warning" && e["message"] == "Preempted in order to admit critical pod",
    );
    let victim_uid = preempted["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(statics.running_containers(&victim_uid).unwrap().is_empty());
    let critical = format!("critical-{node}");
    let cp = t.cp();
    t.kubelet.eventually(
        "the critical static pod Running",
        Duration::from_secs(60),
        || {
            Ok(mirror((cp, &ns), &critical)
                .filter(|m| m["status"]["phase"] == "Running" && running_container_id(m).is_some()))
        },
    );

    // The same host port is taken: refused although critical.
    statics.write("ports.yaml", &static_manifest(&ns, "ports", with_port("0")));
    let event = refused(&mut t, "ports", "NodePorts", "the host port refusal");
    assert_eq!(event["message"], "Predicate NodePorts failed");

    // A whole cpu: nothing left to evict covers it.
    statics.write(
        "huge.yaml",
        &static_manifest(
            &ns,
            "huge",
            json!({"containers": [{"name": "main", "image": BUSYBOX,
            "command": ["sleep", "3600"], "resources": cpu_request("1")}]}),
        ),
    );
    let event = refused(
        &mut t,
        "huge",
        "UnexpectedAdmissionError",
        "the unmet shortage",
    );
    let message = event["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Unexpected error while attempting to recover from admission failure: preemption: \
             error finding a set of pods to preempt: no set of running pods found to reclaim resources: [(res: cpu, q: 800), ]"
        ),
        "{message}"
    );
    // The admitted static pod is untouched by its neighbours' refusals.
    assert!(mirror((t.cp(), &ns), &critical).is_some_and(|m| m["status"]["phase"] == "Running"));
    drop(statics);
}

#[test]
fn static_pods_run_without_an_api_server() {
    let cp = ControlPlane::shared();
    let name = unique_name("ks-offline");
    // The node's credentials, aimed at a port where nothing listens.
    let kubeconfig = std::fs::read_to_string(cp.node_kubeconfig(&name).unwrap()).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let offline = kubeconfig.replace(cp.server(), &format!("https://{dead}"));
    assert_ne!(offline, kubeconfig, "the kubeconfig names {}", cp.server());
    let dir = std::env::temp_dir().join(format!("nodert-{name}.kubeconfig"));
    std::fs::write(&dir, offline).unwrap();
    let _kubeconfig = RemovedOnDrop(dir.clone());
    let node = KubeletNode::named(&name, dir.clone(), STATIC_POD_CONFIG).unwrap();
    let statics = StaticPodDir::new(&node, containerd());
    statics.write("web.json", &manifest("default", "offline"));
    let mut kubelet = Kubelet::start(&node, containerd(), &[]).unwrap();
    let uid = kubelet.eventually("a running static pod", Duration::from_secs(60), || {
        let ready: Vec<String> = statics
            .sandboxes()?
            .into_iter()
            .filter(|(_, _, ready)| *ready)
            .map(|(_, uid, _)| uid)
            .collect();
        let Some(uid) = ready.first() else {
            return Ok(None);
        };
        Ok((!statics.running_containers(uid)?.is_empty()).then(|| uid.clone()))
    });
    statics.remove("web.json");
    kubelet.eventually("the static pod stopped", Duration::from_secs(30), || {
        Ok(
            (statics.running_containers(&uid)?.is_empty() && statics.sandboxes()?.is_empty())
                .then_some(()),
        )
    });
    drop(statics);
    drop(kubelet);
    let _ = std::fs::remove_file(dir);
}

/// Hostile input never crashes the kubelet: manifests that are garbage or past
/// upstream's 10 MiB limit are skipped while a valid one next to them runs; an API
/// pod with a 1 MiB env value and one with a volume type this kubelet lacks get
/// errors on the pod, and the kubelet keeps serving.
#[test]
fn hostile_input_gets_errors_not_a_crash() {
    let mut t = PodNode::start_with_config("ks-hostile", STATIC_POD_CONFIG);
    let statics = StaticPodDir::new(&t.node, containerd());
    let ns = t.ns.name.clone();
    let api = (t.cp(), ns.as_str());
    statics.write("garbage.yaml", "{{{ not: [yaml");
    statics.write("huge.yaml", &"#".repeat(11 << 20));
    statics.write(
        "no-containers.json",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{}}"#,
    );
    statics.write("web.yaml", &manifest(&ns, "ok"));
    let name = format!("static-web-{}", t.node.name);
    t.kubelet.eventually(
        "the valid static pod Running",
        Duration::from_secs(60),
        || Ok(mirror(api, &name).filter(|m| m["status"]["phase"] == "Running")),
    );

    // Created, not applied: apply's last-applied annotation could not hold 1 MiB.
    let big = "x".repeat(1 << 20);
    let huge_env = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "huge-env", "namespace": ns},
        "spec": {"nodeName": t.node.name, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["true"],
                "env": [{"name": "BIG", "value": big}]}]},
    });
    let kubeconfig = t.cp().kubeconfig();
    t.kubelet
        .eventually("huge-env pod creation", Duration::from_secs(30), || {
            Ok(kubectl_stdin(&kubeconfig, &["create", "-f", "-"], &huge_env.to_string()).ok())
        });
    t.create_pod(
        "nfs",
        json!({"volumes": [{"name": "v", "nfs": {"server": "127.0.0.1", "path": "/x"}}],
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}),
    );
    let huge = t.wait_pod("huge-env", "an error on the huge-env pod", |p| {
        let s = &p["status"]["containerStatuses"][0]["state"];
        s["waiting"]["message"].is_string()
            || s["terminated"]["exitCode"].as_i64().is_some_and(|c| c != 0)
    });
    eprintln!(
        "1 MiB env: {}",
        huge["status"]["containerStatuses"][0]["state"]
    );
    let event = t.wait_event(
        "involvedObject.name=nfs,reason=FailedMount",
        "FailedMount for nfs",
        |_| true,
    );
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("not supported")),
        "{event}"
    );
    assert_eq!(t.pod("nfs")["status"]["phase"], "Pending");
    t.kubelet.check_running().unwrap();
    let (cp, node) = (t.cp(), t.node.name.clone());
    t.kubelet
        .eventually("node still Ready", Duration::from_secs(10), || {
            let out = cp.kubectl(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok((out == "True").then_some(()))
        });
}

/// The kubelet writes each pod's /etc/hosts as upstream does (the runtime's own copy
/// of the node's file knows neither the pod's IP nor its hostAliases).
#[test]
fn pods_get_a_kubelet_managed_etc_hosts() {
    let mut t = PodNode::start("ks-hosts");
    t.create_pod(
        "hosts",
        json!({"restartPolicy": "Never", "hostname": "web-0", "subdomain": "web",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}],
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["cat", "/etc/hosts"]}]}),
    );
    let pod = t.wait_pod("hosts", "the pod completed", |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let log = t.log(&pod, "main");
    assert_eq!(pod["status"]["phase"], "Succeeded", "{log}");
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let ns = &t.ns.name;
    for want in [
        "# Kubernetes-managed hosts file.".to_string(),
        "127.0.0.1\tlocalhost".to_string(),
        format!("{ip}\tweb-0.web.{ns}.svc.cluster.local\tweb-0"),
        "# Entries added by HostAliases.".to_string(),
        "10.1.2.3\tfoo.local\tbar.local".to_string(),
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "missing {want:?} in:\n{log}"
        );
    }
}

/// A file of the test's, removed when the test ends, passed or not.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
