//! Pod features of our kubelet on containerd 1.6, against the real 1.20.2 control
//! plane: volumes (emptyDir on tmpfs, configMap, secret, downwardAPI, the injected
//! projected `kube-api-access-*` token that the apiserver must accept), env
//! resolution, init containers, and volume teardown when the pod goes away.

use std::time::Duration;

use node_tests::control_plane::kubectl_stdin;
use node_tests::fixture::try_eventually;
use node_tests::kubelet::{Kubelet, PodNode as TestNode, condition, mounts_under};
use node_tests::reference_node::shared_containerd as containerd;
use serde_json::{Value, json};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn terminated(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

#[test]
fn volumes_env_and_service_account_token_reach_the_container() {
    let mut t = TestNode::start("kp-vol");
    let cp = t.cp();
    let ns = t.ns.name.clone();
    t.put(
        "ConfigMap",
        "cfg",
        json!({"data": {"greeting": "hello", "color": "blue", "9lives": "skipped"}}),
    );
    t.put(
        "Secret",
        "sec",
        json!({"stringData": {"password": "s3cret"}}),
    );
    t.put(
        "Service",
        "my-web",
        json!({"spec": {"ports": [{"name": "http", "port": 8080}], "selector": {"app": "none"}}}),
    );

    let script = "set -e
        echo \"cm=$(cat /etc/cfg/g.txt)\"
        echo \"secret=$(cat /etc/sec/password)\"
        echo \"podname=$(cat /etc/info/name)\"
        echo \"labels=$(cat /etc/info/labels | tr '\\n' ',')\"
        echo \"memlimit=$(cat /etc/info/mem)\"
        echo data > /scratch/f && echo \"scratch=$(cat /scratch/f)\"
        grep -q ' /scratch tmpfs ' /proc/mounts && echo scratch-tmpfs
        grep -q ' /etc/sec tmpfs ' /proc/mounts && echo secret-tmpfs
        touch /etc/cfg/x 2>/dev/null || echo cfg-readonly
        echo \"groups=$(id -G)\"
        echo \"ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)\"
        grep -q 'BEGIN CERTIFICATE' /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca-ok
        echo \"token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\"
        env | sort | sed 's/^/env:/'";
    let uid = t.create_pod(
        "vol",
        json!({
            "restartPolicy": "Never",
            // Non-root, reading a 0400 secret and the token through the fsGroup.
            "securityContext": {"fsGroup": 2000},
            "volumes": [
                {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "g.txt"}]}},
                {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            ],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", script],
                "securityContext": {"runAsUser": 1000},
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "sec", "mountPath": "/etc/sec"},
                    {"name": "info", "mountPath": "/etc/info"}],
                "envFrom": [
                    {"prefix": "CFG_", "configMapRef": {"name": "cfg"}},
                    {"configMapRef": {"name": "cfg"}}],
                "env": [
                    {"name": "A", "value": "alpha"},
                    {"name": "B", "value": "$(A)-beta"},
                    {"name": "C", "value": "$$(A)"},
                    {"name": "D", "value": "$(NOPE)"},
                    {"name": "E", "value": "$(CFG_color)"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k", "optional": true}}},
                ],
            }],
        }),
    );
    let pod = t.wait_pod("vol", "pod completed", terminated);
    let log = t.log(&pod, "main");
    assert_eq!(pod["status"]["phase"], "Succeeded", "{log}\n{pod}");

    // Volumes.
    for want in [
        "cm=hello",
        "secret=s3cret",
        "podname=vol",
        "labels=app=\"kpods\",tier=\"test\"",
        "memlimit=64",
        "scratch=data",
        "scratch-tmpfs",
        "secret-tmpfs",
        "cfg-readonly",
        &format!("ns={ns}"),
        "ca-ok",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "missing {want:?} in:\n{log}"
        );
    }
    let groups = log.lines().find_map(|l| l.strip_prefix("groups="));
    assert!(
        groups.is_some_and(|g| g.split(' ').any(|id| id == "2000")),
        "the fsGroup is a supplemental group: {groups:?}"
    );
    // Env.
    let env = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("env:{name}=")))
            .map(str::to_string)
    };
    let pod_ip = pod["status"]["podIP"].as_str().unwrap_or_default();
    for (name, want) in [
        ("A", "alpha"),
        ("B", "alpha-beta"),
        ("C", "$(A)"),
        ("D", "$(NOPE)"),
        ("E", "blue"),
        ("CFG_greeting", "hello"),
        ("CFG_9lives", "skipped"),
        ("greeting", "hello"),
        ("POD_NAME", "vol"),
        ("POD_NS", ns.as_str()),
        ("NODE", t.node.name.as_str()),
        ("TIER", "test"),
        ("POD_IP", pod_ip),
        ("MEM", "64"),
        ("CM", "hello"),
        ("PW", "s3cret"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("MY_WEB_SERVICE_PORT", "8080"),
        ("MY_WEB_SERVICE_PORT_HTTP", "8080"),
    ] {
        assert_eq!(env(name).as_deref(), Some(want), "env {name} in:\n{log}");
    }
    assert!(env("OPT").is_none(), "optional missing key must be unset");
    assert!(
        !log.contains("env:9lives"),
        "invalid env names from envFrom are skipped:\n{log}"
    );
    assert!(env("KUBERNETES_SERVICE_HOST").is_some(), "{log}");
    let web_ip = env("MY_WEB_SERVICE_HOST").expect("service link variables");
    assert_eq!(
        env("MY_WEB_PORT").as_deref(),
        Some(format!("tcp://{web_ip}:8080").as_str())
    );

    // The projected token is bound to this pod and the apiserver accepts it.
    let token = log
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("token printed");
    let review = kubectl_stdin(
        &cp.kubeconfig(),
        &["create", "-f", "-", "-o", "json"],
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        .to_string(),
    )
    .unwrap();
    let review: Value = serde_json::from_str(&review).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:serviceaccount:{ns}:default"),
        "{review}"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
        uid.as_str(),
        "{review}"
    );

    // Upstream's layout on the node: atomic-writer dirs under the pod's volume dirs.
    let volumes = t.node.root_dir().join("pods").join(&uid).join("volumes");
    let cm_dir = volumes.join("kubernetes.io~configmap/cfg");
    assert!(
        std::fs::read_link(cm_dir.join("..data")).is_ok(),
        "{}",
        cm_dir.display()
    );
    assert_eq!(
        std::fs::read_to_string(cm_dir.join("g.txt")).unwrap(),
        "hello"
    );
    let projected = std::fs::read_dir(volumes.join("kubernetes.io~projected"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        projected.iter().any(|n| n.starts_with("kube-api-access-")),
        "{projected:?}"
    );
    assert!(
        !mounts_under(&volumes).is_empty(),
        "secret/projected/memory volumes are tmpfs mounts"
    );

    // Deleting the pod removes its volumes and mounts.
    t.delete_pod("vol");
    let pod_dir = t.node.root_dir().join("pods").join(&uid);
    t.kubelet
        .eventually("volumes removed", Duration::from_secs(30), || {
            Ok((!pod_dir.exists() && mounts_under(&pod_dir).is_empty()).then_some(()))
        });
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let mut t = TestNode::start("kp-init");
    t.create_pod(
        "init",
        json!({
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {"name": "first", "image": BUSYBOX, "command": ["sh", "-c", "echo one >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "second", "image": BUSYBOX, "command": ["sh", "-c", "sleep 4; echo two >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            ],
            "containers": [
                {"name": "app", "image": BUSYBOX, "command": ["sh", "-c", "echo app >> /work/order; cat /work/order; sleep 3600"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            ],
        }),
    );
    // While the second init container runs: Pending, Init:1/2, app PodInitializing.
    let pod = t.wait_pod("init", "second init container running", |p| {
        p["status"]["initContainerStatuses"][1]["state"]
            .get("running")
            .is_some()
    });
    let status = &pod["status"];
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed",
        "{status}"
    );
    assert_eq!(
        status["initContainerStatuses"][0]["ready"], true,
        "{status}"
    );
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );
    let init = condition(&pod, "Initialized");
    assert_eq!(init["status"], "False", "{init}");
    assert_eq!(init["reason"], "ContainersNotInitialized", "{init}");
    // What kubectl shows (the apiserver's table printer reads our statuses).
    let shown = t
        .cp()
        .kubectl(&["get", "pod", "-n", &t.ns.name, "init", "--no-headers"])
        .unwrap();
    assert!(shown.contains("Init:1/2"), "{shown}");
    assert_eq!(
        init["message"], "containers with incomplete status: [second]",
        "{init}"
    );

    let pod = t.wait_pod("init", "app running", |p| p["status"]["phase"] == "Running");
    assert_eq!(condition(&pod, "Initialized")["status"], "True", "{pod}");
    for i in 0..2 {
        let s = &pod["status"]["initContainerStatuses"][i];
        assert_eq!(s["state"]["terminated"]["exitCode"], 0, "{s}");
        assert_eq!(s["ready"], true, "{s}");
    }
    let log = try_eventually(Duration::from_secs(20), || {
        let log = t.log(&pod, "app");
        Ok(log.contains("app").then_some(log))
    })
    .unwrap_or_else(|e| panic!("app log: {e}"));
    assert_eq!(log, "one\ntwo\napp", "init containers ran in order, once");
    t.delete_pod("init");
}

#[test]
fn failing_init_container_with_restart_never_fails_the_pod() {
    let mut t = TestNode::start("kp-initfail");
    t.create_pod(
        "initfail",
        json!({
            "restartPolicy": "Never",
            "initContainers": [
                {"name": "boom", "image": BUSYBOX, "command": ["sh", "-c", "exit 3"]},
                {"name": "never", "image": BUSYBOX, "command": ["true"]},
            ],
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"]}],
        }),
    );
    let pod = t.wait_pod("initfail", "pod Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let status = &pod["status"];
    let boom = &status["initContainerStatuses"][0];
    assert_eq!(boom["state"]["terminated"]["exitCode"], 3, "{status}");
    assert_eq!(boom["state"]["terminated"]["reason"], "Error", "{status}");
    assert_eq!(boom["ready"], false, "{status}");
    let never = &status["initContainerStatuses"][1];
    assert_eq!(
        never["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );
    assert!(
        never.get("containerID").is_none(),
        "never started: {status}"
    );
    let app = &status["containerStatuses"][0];
    assert_eq!(
        app["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );
    assert!(
        app.get("containerID").is_none(),
        "app never started: {status}"
    );
    let init = condition(&pod, "Initialized");
    assert_eq!(init["status"], "False", "{init}");
    assert_eq!(
        init["message"], "containers with incomplete status: [boom never]",
        "{init}"
    );
    let shown = t
        .cp()
        .kubectl(&["get", "pod", "-n", &t.ns.name, "initfail", "--no-headers"])
        .unwrap();
    assert!(shown.contains("Init:Error"), "{shown}");
    // Nothing is retried: the status stays put.
    std::thread::sleep(Duration::from_secs(3));
    let again = t.pod("initfail");
    assert_eq!(
        again["status"]["initContainerStatuses"][0]["restartCount"],
        0
    );
    assert_eq!(again["status"]["phase"], "Failed");
    t.delete_pod("initfail");
}

#[test]
fn a_missing_config_map_blocks_the_pod_with_failed_mount() {
    let mut t = TestNode::start("kp-mount");
    t.create_pod(
        "nomount",
        json!({
            "volumes": [{"name": "cfg", "configMap": {"name": "does-not-exist"}}],
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
        }),
    );
    let event = t.wait_event("reason=FailedMount", "FailedMount event", |_| true);
    assert_eq!(
        event["message"],
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"does-not-exist\" not found",
        "{event}"
    );
    assert_eq!(event["involvedObject"]["name"], "nomount", "{event}");
    let pod = t.pod("nomount");
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
        "{pod}"
    );
    assert!(
        pod["status"]["containerStatuses"][0]
            .get("containerID")
            .is_none(),
        "{pod}"
    );
    t.delete_pod("nomount");
}

#[test]
fn a_failed_init_container_is_restarted_after_back_off() {
    let mut t = TestNode::start("kp-initretry");
    // Fails on its first two runs (the count survives in the pod's emptyDir): the
    // first restart is immediate, the second waits out the 10 s back-off, as upstream.
    let flaky = "n=$(cat /w/n 2>/dev/null || echo 0); echo $((n + 1)) > /w/n; [ $n -ge 2 ]";
    t.create_pod(
        "retry",
        json!({
            "restartPolicy": "OnFailure",
            "volumes": [{"name": "w", "emptyDir": {}}],
            "initContainers": [{"name": "flaky", "image": BUSYBOX, "command": ["sh", "-c", flaky],
                "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"]}],
        }),
    );
    let pod = t.wait_pod("retry", "init back-off", |p| {
        p["status"]["initContainerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let status = &pod["status"];
    let flaky = &status["initContainerStatuses"][0];
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(flaky["lastState"]["terminated"]["exitCode"], 1, "{status}");
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );

    let pod = t.wait_pod("retry", "app running", |p| {
        p["status"]["phase"] == "Running"
    });
    let flaky = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(flaky["restartCount"], 2, "{flaky}");
    assert_eq!(flaky["state"]["terminated"]["exitCode"], 0, "{flaky}");
    assert_eq!(condition(&pod, "Initialized")["status"], "True", "{pod}");
    t.delete_pod("retry");
}

#[test]
fn config_map_updates_reach_a_running_container() {
    let mut t = TestNode::start("kp-update");
    t.put("ConfigMap", "live", json!({"data": {"k": "v1"}}));
    t.create_pod(
        "live",
        json!({
            "volumes": [{"name": "live", "configMap": {"name": "live"}}],
            "containers": [{"name": "app", "image": BUSYBOX,
                "command": ["sh", "-c", "while true; do echo \"k=$(cat /cfg/k)\"; sleep 1; done"],
                "volumeMounts": [{"name": "live", "mountPath": "/cfg"}]}],
        }),
    );
    let pod = t.wait_pod("live", "pod running", |p| p["status"]["phase"] == "Running");
    let saw = |t: &TestNode, want: &str| t.log(&pod, "app").lines().any(|l| l == want);
    try_eventually(
        Duration::from_secs(20),
        || Ok(saw(&t, "k=v1").then_some(())),
    )
    .unwrap_or_else(|e| panic!("first value: {e}"));
    t.put("ConfigMap", "live", json!({"data": {"k": "v2"}}));
    // Re-read every minute (upstream's sync period), swapped atomically.
    try_eventually(Duration::from_secs(100), || {
        t.kubelet.check_running()?;
        Ok(saw(&t, "k=v2").then_some(()))
    })
    .unwrap_or_else(|e| panic!("updated value: {e}\n{}", t.kubelet.log_text()));
    assert!(
        !t.log(&pod, "app").lines().any(|l| l == "k="),
        "a reader never sees the file missing"
    );
    t.delete_pod("live");
}

#[test]
fn restarted_kubelet_keeps_volumes_and_removes_pods_deleted_meanwhile() {
    let mut t = TestNode::start("kp-restart");
    let cp = t.cp();
    let ns = t.ns.name.clone();
    t.put("Secret", "sec", json!({"stringData": {"k": "v"}}));
    let sleeper = |volume: Value| {
        json!({
            "volumes": [volume],
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
        })
    };
    let kept = t.create_pod(
        "kept",
        sleeper(json!({"name": "v", "secret": {"secretName": "sec"}})),
    );
    let gone = t.create_pod(
        "gone",
        sleeper(json!({"name": "v", "emptyDir": {"medium": "Memory"}})),
    );
    let running = |p: &Value| p["status"]["phase"] == "Running";
    let before = t.wait_pod("kept", "kept running", running);
    t.wait_pod("gone", "gone running", running);
    let pods = t.node.root_dir().join("pods");
    let kept_mounts = mounts_under(&pods.join(&kept));
    assert!(!kept_mounts.is_empty(), "secret volumes are tmpfs");
    assert!(!mounts_under(&pods.join(&gone)).is_empty());

    // kill -9, delete a pod while no kubelet runs, start again.
    let pid = t.kubelet.pid().expect("kubelet running") as libc::pid_t;
    // SAFETY: plain kill(2) of the child this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    cp.kubectl(&[
        "delete",
        "pod",
        "-n",
        &ns,
        "gone",
        "--grace-period=0",
        "--force",
    ])
    .unwrap();
    t.kubelet = Kubelet::start(&t.node, containerd(), &[]).unwrap();

    let gone_dir = pods.join(&gone);
    t.kubelet.eventually(
        "volumes of the pod deleted meanwhile removed",
        Duration::from_secs(60),
        || Ok((!gone_dir.exists() && mounts_under(&gone_dir).is_empty()).then_some(())),
    );
    let after = t.wait_pod("kept", "kept running", running);
    let id = |p: &Value| p["status"]["containerStatuses"][0]["containerID"].clone();
    assert_eq!(id(&after), id(&before), "container kept across the restart");
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        mounts_under(&pods.join(&kept)),
        kept_mounts,
        "volumes adopted, not mounted again"
    );
    t.delete_pod("kept");
}

#[test]
fn missing_env_keys_and_escaping_sub_paths_are_container_config_errors() {
    let mut t = TestNode::start("kp-cfgerr");
    let cp = t.cp();
    let ns = t.ns.name.clone();
    t.put("ConfigMap", "cfg", json!({"data": {"present": "x"}}));
    // A hostPath whose subPath is a symlink pointing out of the volume.
    let host = t.node.base.join("hostpath");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink("/etc", host.join("escape")).unwrap();
    t.create_pod(
        "cfgerr",
        json!({
            "volumes": [{"name": "h", "hostPath": {"path": host, "type": "Directory"}}],
            "containers": [
                {"name": "env", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "absent"}}}]},
                {"name": "escape", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "h", "mountPath": "/h", "subPath": "escape"}]},
                {"name": "fine", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "h", "mountPath": "/h"}]},
            ],
        }),
    );
    let pod = t.wait_pod("cfgerr", "config errors reported", |p| {
        let s = &p["status"]["containerStatuses"];
        s[0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            && s[1]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            && s[2]["state"].get("running").is_some()
    });
    let s = &pod["status"]["containerStatuses"];
    assert_eq!(
        s[0]["state"]["waiting"]["message"],
        format!("couldn't find key absent in ConfigMap {ns}/cfg"),
        "{s}"
    );
    let message = s[1]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("not within volume path"), "{s}");
    let events = cp
        .kubectl(&[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=Failed",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        events.contains(&format!(
            "Error: couldn't find key absent in ConfigMap {ns}/cfg"
        )),
        "{events}"
    );
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    t.delete_pod("cfgerr");
}
