//! Our kubelet's :10250 server against the real 1.20.2 control plane and containerd:
//! authentication (client certificates against clientCAFile, TokenReview, anonymous
//! refused), authorization by SubjectAccessReview with upstream's 403 text, the
//! read endpoints, and `kubectl logs`/`exec`/`port-forward` through the API server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use node_tests::control_plane::ControlPlane;
use node_tests::kubectl::Background;
use node_tests::kubelet::{
    Kubelet, KubeletAuth, KubeletNode, Namespace, kubelet_get, shared_containerd,
};
use serde_json::Value;

/// The control plane's admin client certificate (CN kubernetes-admin, O system:masters).
fn admin_cert(cp: &ControlPlane) -> (PathBuf, PathBuf) {
    let pki = cp.dir().join("pki");
    (pki.join("admin.crt"), pki.join("admin.key"))
}

/// A node whose kubelet trusts the cluster CA for client certificates; everything
/// else is the v1beta1 defaults (TokenReview on, Webhook authorization, no anonymous).
fn start_node(cp: &ControlPlane, tag: &str) -> (KubeletNode, Kubelet) {
    start_node_with(cp, tag, None)
}

/// [`start_node`] with one more `authentication` field, e.g. `anonymous: {enabled: true}`.
fn start_node_with(cp: &ControlPlane, tag: &str, extra: Option<&str>) -> (KubeletNode, Kubelet) {
    let extra = extra.map(|e| format!(", {e}")).unwrap_or_default();
    let node = KubeletNode::with_config(
        cp,
        tag,
        &format!(
            "authentication: {{x509: {{clientCAFile: {}}}{extra}}}\n",
            cp.ca_cert().display()
        ),
    )
    .unwrap();
    // The API server reaches kubelets at their InternalIP: loopback here.
    let kubelet = Kubelet::start(&node, shared_containerd(), &["--node-ip", "127.0.0.1"]).unwrap();
    (node, kubelet)
}

/// The token of a fresh ServiceAccount that no RBAC rule grants anything.
fn service_account_token(cp: &ControlPlane, ns: &str) -> String {
    cp.kubectl(&["-n", ns, "create", "serviceaccount", "nobody"])
        .unwrap();
    let secret = node_tests::fixture::eventually(
        "the ServiceAccount's token secret",
        Duration::from_secs(30),
        || {
            let name = cp.kubectl(&[
                "-n",
                ns,
                "get",
                "serviceaccount",
                "nobody",
                "-o",
                "jsonpath={.secrets[0].name}",
            ])?;
            Ok((!name.is_empty()).then_some(name))
        },
    );
    let encoded = cp
        .kubectl(&[
            "-n",
            ns,
            "get",
            "secret",
            &secret,
            "-o",
            "jsonpath={.data.token}",
        ])
        .unwrap();
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn wait_serving(kubelet: &mut Kubelet, port: u16) {
    kubelet.eventually("kubelet serving", Duration::from_secs(30), || {
        Ok(kubelet_get(port, "/healthz", KubeletAuth::Anonymous)
            .ok()
            .map(|_| ()))
    });
}

#[test]
fn requests_are_authenticated_and_authorized_as_upstream() {
    let cp = ControlPlane::shared();
    let (node, mut kubelet) = start_node(cp, "ks-auth");
    let port = node.port;
    wait_serving(&mut kubelet, port);

    // No credentials: 401, on every path.
    for path in [
        "/healthz",
        "/pods",
        "/stats/summary",
        "/containerLogs/a/b/c",
    ] {
        let (status, body) = kubelet_get(port, path, KubeletAuth::Anonymous).unwrap();
        assert_eq!((status, body.as_str()), (401, "Unauthorized"), "{path}");
    }
    // A token the API server does not know: 401.
    let (status, _) = kubelet_get(port, "/pods", KubeletAuth::Token("not-a-token")).unwrap();
    assert_eq!(status, 401);

    // A valid ServiceAccount without RBAC: authenticated, then denied by the
    // SubjectAccessReview, with upstream's message naming the subresource.
    let ns = Namespace::create(cp, "ks-auth");
    let token = service_account_token(cp, &ns.name);
    let user = format!("system:serviceaccount:{}:nobody", ns.name);
    for (path, subresource) in [
        ("/pods", "proxy"),
        ("/stats/summary", "stats"),
        ("/metrics/resource", "metrics"),
    ] {
        let (status, body) = kubelet_get(port, path, KubeletAuth::Token(&token)).unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            body,
            format!("Forbidden (user={user}, verb=get, resource=nodes, subresource={subresource})")
        );
    }

    // Cluster admin by client certificate: allowed.
    let (cert, key) = admin_cert(cp);
    let admin = || KubeletAuth::ClientCert {
        cert: &cert,
        key: &key,
    };
    let (status, body) = kubelet_get(port, "/healthz", admin()).unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = kubelet_get(port, "/pods", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    let pods: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert!(pods["items"].is_array(), "{pods}");

    let (status, body) = kubelet_get(port, "/stats/summary", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    let n = &summary["node"];
    assert_eq!(n["nodeName"], node.name.as_str());
    assert!(
        n["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{n}"
    );
    assert!(n["cpu"]["usageNanoCores"].is_u64(), "{n}");
    assert!(n["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{n}");
    assert!(n["fs"]["capacityBytes"].as_u64().unwrap() > 0, "{n}");
    assert!(summary["pods"].is_array(), "{summary}");
    // What metrics-server asks for.
    let (status, body) =
        kubelet_get(port, "/stats/summary?only_cpu_and_memory=true", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    let lean: Value = serde_json::from_str(&body).unwrap();
    assert!(
        lean["node"]["cpu"]["usageCoreNanoSeconds"].is_u64(),
        "{lean}"
    );
    assert!(lean["node"]["memory"]["workingSetBytes"].is_u64(), "{lean}");
    assert!(
        lean["node"]["fs"].is_null() && lean["node"]["network"].is_null(),
        "{lean}"
    );

    let (status, body) = kubelet_get(port, "/metrics/resource", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\nnode_cpu_usage_seconds_total "), "{body}");
    assert!(body.contains("\nnode_memory_working_set_bytes "), "{body}");
    assert!(body.contains("\nscrape_error 0\n"), "{body}");
    let (status, body) = kubelet_get(port, "/metrics", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\nkubelet_running_pods "), "{body}");
    assert!(
        body.contains(&format!("kubelet_node_name{{node=\"{}\"}} 1", node.name)),
        "{body}"
    );
    let (status, _) = kubelet_get(port, "/no-such-path", admin()).unwrap();
    assert_eq!(status, 404);

    // Upstream's self-signed pair, kept for the next start.
    assert!(node.base.join("pki/kubelet.crt").exists());
    assert!(node.base.join("pki/kubelet.key").exists());
    kubelet.check_running().unwrap();
}

#[test]
fn anonymous_requests_when_enabled_are_still_authorized() {
    let cp = ControlPlane::shared();
    let (node, mut kubelet) = start_node_with(cp, "ks-anon", Some("anonymous: {enabled: true}"));
    wait_serving(&mut kubelet, node.port);
    let (status, body) = kubelet_get(node.port, "/pods", KubeletAuth::Anonymous).unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=proxy)"
    );
    // A presented but invalid token is refused, not downgraded to anonymous.
    let (status, _) = kubelet_get(node.port, "/pods", KubeletAuth::Token("bogus")).unwrap();
    assert_eq!(status, 401);
    kubelet.check_running().unwrap();
}

fn pod_json(cp: &ControlPlane, ns: &str, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &cp.kubectl(&["-n", ns, "get", "pod", name, "-o", "json"])?,
    )?)
}

/// The first container's status once it runs with at least `restarts` restarts.
fn wait_running(
    cp: &ControlPlane,
    kubelet: &mut Kubelet,
    ns: &str,
    pod: &str,
    restarts: u64,
) -> Value {
    kubelet.eventually("container running", Duration::from_secs(120), || {
        let p = pod_json(cp, ns, pod)?;
        let cs = &p["status"]["containerStatuses"][0];
        let ok = cs["state"]["running"].is_object()
            && cs["restartCount"].as_u64().unwrap_or(0) >= restarts;
        Ok(ok.then(|| cs.clone()))
    })
}

/// Creates a one-container pod bound to our node and waits until it runs.
fn run_pod(
    cp: &ControlPlane,
    kubelet: &mut Kubelet,
    node: &KubeletNode,
    ns: &str,
    name: &str,
    container: Value,
) {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    });
    // The namespace's default ServiceAccount appears shortly after the namespace.
    kubelet.eventually("pod created", Duration::from_secs(30), || {
        Ok(cp.apply(&manifest.to_string()).ok().map(|_| ()))
    });
    wait_running(cp, kubelet, ns, name, 0);
}

#[test]
fn kubectl_logs_and_exec_reach_our_kubelet_through_the_api_server() {
    let cp = ControlPlane::shared();
    let (node, mut kubelet) = start_node(cp, "ks-logs");
    wait_serving(&mut kubelet, node.port);
    let ns = Namespace::create(cp, "ks-logs");
    // Prints a line naming this instance and three more, then prints what is put into
    // /tmp/say, and exits once /tmp/stop exists.
    let script = "echo instance $(cat /proc/sys/kernel/random/uuid); echo one; echo two; \
                  echo three; while true; do if [ -f /tmp/say ]; then cat /tmp/say; \
                  rm /tmp/say; fi; [ -f /tmp/stop ] && exit 3; sleep 0.2; done";
    let container = serde_json::json!({
        "name": "app",
        "image": "registry.k8s.io/e2e-test-images/busybox:1.29-2",
        "command": ["sh", "-c", script],
    });
    run_pod(cp, &mut kubelet, &node, &ns.name, "talker", container);
    let kubectl = |args: &[&str]| -> Result<String> {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        cp.kubectl(&all)
    };

    let logs = kubelet.eventually("all four lines logged", Duration::from_secs(20), || {
        let out = kubectl(&["logs", "talker"])?;
        Ok((out.lines().count() == 4).then_some(out))
    });
    let first = logs.lines().next().unwrap().to_string();
    assert!(first.starts_with("instance "), "{logs}");
    assert!(logs.ends_with("one\ntwo\nthree\n"), "{logs}");
    assert_eq!(kubectl(&["logs", "talker", "--tail=1"]).unwrap(), "three\n");
    assert_eq!(
        kubectl(&["logs", "talker", "--limit-bytes=8"]).unwrap(),
        "instance"
    );
    let stamped = kubectl(&["logs", "talker", "--tail=2", "--timestamps"]).unwrap();
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    for (line, text) in lines.iter().zip(["two", "three"]) {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, text, "{stamped}");
        assert!(
            stamp.len() >= 20 && stamp.ends_with('Z') && stamp.contains('T'),
            "{stamped}"
        );
    }
    let err = kubectl(&["logs", "talker", "-c", "nope"]).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
    // A container that cannot start: upstream's message with the waiting reason.
    let stuck = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stuck", "namespace": ns.name},
        "spec": {
            "nodeName": node.name,
            "containers": [{"name": "app", "image": "registry.k8s.io/e2e-test-images/no-such-image:1"}],
        },
    });
    cp.apply(&stuck.to_string()).unwrap();
    let message = kubelet.eventually("stuck pod's pull failed", Duration::from_secs(60), || {
        let p = pod_json(cp, &ns.name, "stuck")?;
        if p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .is_none_or(|r| r == "ContainerCreating")
        {
            return Ok(None);
        }
        Ok(Some(format!(
            "{:#}",
            kubectl(&["logs", "stuck"]).unwrap_err()
        )))
    });
    assert!(
        message.contains("container \"app\" in pod \"stuck\" is waiting to start: ")
            && (message.contains("ErrImagePull") || message.contains("ImagePullBackOff")),
        "{message}"
    );

    // exec through the API server: SPDY proxied to containerd's streaming server.
    let out = kubectl(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname)",
    ])
    .unwrap();
    assert_eq!(out, "hello from talker\n");
    // stdin flows in, stdout back, and the end of stdin ends the command.
    let out = node_tests::control_plane::kubectl_stdin(
        &cp.kubeconfig(),
        &["-n", &ns.name, "exec", "-i", "talker", "--", "cat"],
        "piped\ninput\n",
    )
    .unwrap();
    assert_eq!(out, "piped\ninput\n");
    let err = kubectl(&["exec", "talker", "--", "sh", "-c", "exit 7"]).unwrap_err();
    assert!(format!("{err:#}").contains("exit code 7"), "{err:#}");

    // What metrics-server and `kubectl top` read: the pod and its container.
    let (cert, key) = admin_cert(cp);
    let admin = || KubeletAuth::ClientCert {
        cert: &cert,
        key: &key,
    };
    let (status, body) = kubelet_get(node.port, "/stats/summary", admin()).unwrap();
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    let pod = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "talker" && p["podRef"]["namespace"] == ns.name.as_str())
        .unwrap_or_else(|| panic!("no stats for talker: {summary}"))
        .clone();
    assert_eq!(pod["containers"][0]["name"], "app", "{pod}");
    assert!(
        pod["containers"][0]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{pod}"
    );
    assert!(
        pod["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{pod}"
    );
    let (_, metrics) = kubelet_get(node.port, "/metrics/resource", admin()).unwrap();
    let series = format!(
        "container_memory_working_set_bytes{{container=\"app\",namespace=\"{}\",pod=\"talker\"}} ",
        ns.name
    );
    assert!(metrics.contains(&series), "{metrics}");
    let (_, pods) = kubelet_get(node.port, "/pods", admin()).unwrap();
    assert!(pods.contains("\"talker\""), "{pods}");

    // Follow: a line written now arrives, and the stream ends when the container exits.
    let mut follow = Background::kubectl(cp, &["-n", &ns.name, "logs", "-f", "talker"]);
    kubectl(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo followed >/tmp/say.new && mv /tmp/say.new /tmp/say",
    ])
    .unwrap();
    // A restart: `logs -p` shows the previous instance, plain `logs` the new one.
    kubectl(&["exec", "talker", "--", "touch", "/tmp/stop"]).unwrap();
    kubelet.eventually("logs -f ended", Duration::from_secs(30), || {
        Ok(follow.0.try_wait()?.map(|_| ()))
    });
    let mut followed = String::new();
    std::io::Read::read_to_string(follow.0.stdout.as_mut().unwrap(), &mut followed).unwrap();
    let with_followed = format!("{logs}followed\n");
    assert_eq!(followed, with_followed);
    wait_running(cp, &mut kubelet, &ns.name, "talker", 1);
    let previous = kubectl(&["logs", "talker", "-p"]).unwrap();
    assert_eq!(previous, with_followed, "previous instance's log");
    let current = kubelet.eventually("new instance logged", Duration::from_secs(20), || {
        let out = kubectl(&["logs", "talker"])?;
        Ok((out.lines().count() == 4).then_some(out))
    });
    assert_ne!(current.lines().next().unwrap(), first, "{current}");
    kubelet.check_running().unwrap();
}

#[test]
fn kubectl_port_forward_and_attach_reach_pods_on_our_kubelet() {
    let cp = ControlPlane::shared();
    let (node, mut kubelet) = start_node(cp, "ks-pf");
    wait_serving(&mut kubelet, node.port);
    let ns = Namespace::create(cp, "ks-pf");
    let container = serde_json::json!({
        "name": "web",
        "image": "registry.k8s.io/e2e-test-images/nginx:1.14-2",
    });
    run_pod(cp, &mut kubelet, &node, &ns.name, "web", container);

    let (_forward, _, body) = node_tests::kubectl::port_forward_http(cp, &ns.name, "web", 80);
    assert!(body.contains("node-runtime test web server"), "{body}");

    // attach: the running process's output, proxied like exec.
    let ticker = serde_json::json!({
        "name": "ticker",
        "image": "registry.k8s.io/e2e-test-images/busybox:1.29-2",
        "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"],
    });
    run_pod(cp, &mut kubelet, &node, &ns.name, "ticker", ticker);
    let mut attach = Background::kubectl(cp, &["-n", &ns.name, "attach", "ticker"]);
    let mut stdout = attach.0.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    kubelet.eventually("attached output", Duration::from_secs(30), || {
        let text = seen.lock().unwrap().clone();
        Ok((text.lines().filter(|l| l.starts_with("tick ")).count() >= 3).then_some(()))
    });
    drop(attach);
    reader.join().unwrap();
    kubelet.check_running().unwrap();
}
