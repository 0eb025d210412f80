//! Probes and lifecycle hooks of our kubelet on containerd 1.6, against the real 1.20.2
//! control plane: readiness flipping Ready/ContainersReady both ways, liveness kills
//! and restarts, httpGet/tcpSocket probes against a real web server and closed ports,
//! startup probes gating started/ready, postStart and preStop hooks, and deletion that
//! writes the final status and KILLs at the grace deadline; pods the node cannot
//! take are refused at admission with upstream's reasons.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node_tests::fixture::kube_bin;
use node_tests::kubelet::{Kubelet, PodNode, condition, shared_containerd};
use serde_json::{Value, json};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// busybox httpd serving /usr/share/nginx/html on :80.
const WEB: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
/// A container only KILL stops (the ignored TERM is inherited by sleep, too).
const IGNORES_TERM: [&str; 3] = ["sh", "-c", "trap '' TERM; sleep 3600"];

/// A host directory the test's pods mount at /data, to steer exec probes (a file
/// there or not) and to read what hooks wrote. Removed with the node's dirs.
fn host_dir(t: &PodNode) -> PathBuf {
    let dir = t.node.base.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data_volume(dir: &PathBuf) -> Value {
    json!([{"name": "data", "hostPath": {"path": dir, "type": "Directory"}}])
}

fn data_mount() -> Value {
    json!([{"name": "data", "mountPath": "/data"}])
}

/// A 1 s period exec probe of `cmd` with the given thresholds.
fn exec_probe(cmd: &[&str], success: u32, failure: u32) -> Value {
    json!({"exec": {"command": cmd}, "periodSeconds": 1, "timeoutSeconds": 1,
           "successThreshold": success, "failureThreshold": failure})
}

fn status_of<'a>(pod: &'a Value, container: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .unwrap_or(&Value::Null)
}

fn running(pod: &Value, container: &str) -> bool {
    status_of(pod, container)["state"].get("running").is_some()
}

/// An event as (reason, type, message).
fn triple(e: &Value) -> (String, String, String) {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    (s("reason"), s("type"), s("message"))
}

/// The events about pod `name`.
fn events(t: &PodNode, name: &str) -> Vec<(String, String, String)> {
    let selector = format!("involvedObject.name={name}");
    let events = t.events(&selector).expect("listing events");
    events.iter().map(triple).collect()
}

/// Waits for an event of pod `name` with `reason` whose message satisfies `f`.
fn wait_event(
    t: &mut PodNode,
    name: &str,
    reason: &str,
    f: impl Fn(&str) -> bool,
) -> (String, String, String) {
    let selector = format!("involvedObject.name={name},reason={reason}");
    let event = t.wait_event(&selector, &format!("{reason} event"), |e| {
        f(e["message"].as_str().unwrap_or_default())
    });
    triple(&event)
}

/// `kubectl get pod -w -o json` for the life of the value: every version of the pod
/// the API server showed, to see the status written just before the object went.
struct PodWatch {
    child: Child,
    out: PathBuf,
}

impl PodWatch {
    fn start(t: &PodNode, name: &str) -> PodWatch {
        let out = t.node.base.join(format!("watch-{name}.json"));
        let child = Command::new(kube_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(t.cp().kubeconfig())
            .args(["get", "pod", "-n", &t.ns.name, name, "-w", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl get -w");
        PodWatch { child, out }
    }

    /// Every version seen so far, oldest first.
    fn versions(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local HTTP server answering 200 to every request; yields each request's head.
fn record_requests() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    // Ends with the test process; it holds nothing else.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

/// Deletes pod `name` with its own grace period; returns how long until it was gone.
fn delete_and_time(t: &mut PodNode, name: &str) -> Duration {
    let started = Instant::now();
    t.delete_pod_with(name, &[]);
    started.elapsed()
}

#[test]
fn readiness_exec_probe_flips_ready_both_ways() {
    let mut t = PodNode::start("kpr-ready");
    let dir = host_dir(&t);
    t.create_pod(
        "ready",
        json!({
            "volumes": data_volume(&dir),
            "containers": [
                {"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "volumeMounts": data_mount(),
                 "readinessProbe": exec_probe(&["cat", "/data/ready"], 1, 1)},
                // No probe: ready as soon as it runs.
                {"name": "plain", "image": BUSYBOX, "command": ["sleep", "3600"]},
            ],
        }),
    );
    let pod = t.wait_pod("ready", "containers running", |p| {
        running(p, "app") && running(p, "plain")
    });
    // Not ready until the first success, however long that takes.
    std::thread::sleep(Duration::from_secs(3));
    let pod2 = t.pod("ready");
    for p in [&pod, &pod2] {
        let app = status_of(p, "app");
        assert_eq!(app["ready"], false, "{app}");
        assert_eq!(app["started"], true, "no startup probe: {app}");
        assert_eq!(status_of(p, "plain")["ready"], true, "{p}");
        for c in ["Ready", "ContainersReady"] {
            let cond = condition(p, c);
            assert_eq!(cond["status"], "False", "{cond}");
            assert_eq!(cond["reason"], "ContainersNotReady", "{cond}");
            assert_eq!(
                cond["message"], "containers with unready status: [app]",
                "{cond}"
            );
        }
    }
    let (_, type_, message) = wait_event(&mut t, "ready", "Unhealthy", |m| {
        m.starts_with("Readiness probe failed: ")
    });
    assert_eq!(type_, "Warning");
    assert!(
        message.contains("can't open '/data/ready'"),
        "the probe's output: {message}"
    );
    // Every failed attempt counts, on one event object (upstream's correlator).
    let selector = "involvedObject.name=ready,reason=Unhealthy";
    let repeated = t.wait_event(selector, "Unhealthy counted", |e| {
        e["count"].as_i64() >= Some(3)
    });
    assert_eq!(repeated["message"], message.as_str(), "{repeated}");
    assert_eq!(t.events(selector).unwrap().len(), 1, "one object");

    std::fs::write(dir.join("ready"), "yes").unwrap();
    let pod = t.wait_pod("ready", "Ready True", |p| {
        condition(p, "Ready")["status"] == "True"
    });
    assert_eq!(condition(&pod, "ContainersReady")["status"], "True");
    assert_eq!(status_of(&pod, "app")["ready"], true);
    assert_eq!(status_of(&pod, "app")["restartCount"], 0);

    std::fs::remove_file(dir.join("ready")).unwrap();
    let pod = t.wait_pod("ready", "Ready False again", |p| {
        condition(p, "Ready")["status"] == "False"
    });
    assert_eq!(condition(&pod, "ContainersReady")["status"], "False");
    assert_eq!(status_of(&pod, "app")["ready"], false);
    // Readiness never restarts anything.
    assert_eq!(status_of(&pod, "app")["restartCount"], 0);
    assert!(running(&pod, "app"), "{pod}");
    t.delete_pod("ready");
}

#[test]
fn failing_liveness_probe_restarts_the_container() {
    let mut t = PodNode::start("kpr-live");
    t.create_pod(
        "live",
        json!({
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": IGNORES_TERM,
                "livenessProbe": exec_probe(&["sh", "-c", "echo not alive; exit 1"], 1, 2),
            }],
        }),
    );
    let first = t.wait_pod("live", "app running", |p| running(p, "app"));
    let first_id = status_of(&first, "app")["containerID"].clone();
    let pod = t.wait_pod("live", "app restarted", |p| {
        status_of(p, "app")["restartCount"].as_i64() >= Some(1) && running(p, "app")
    });
    let app = status_of(&pod, "app");
    assert_ne!(app["containerID"], first_id, "a new container: {app}");
    // It ignores TERM: KILLed at the 2 s deadline.
    let last = &app["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{app}");
    assert_eq!(last["containerID"], first_id, "{app}");

    let (_, type_, _) = wait_event(&mut t, "live", "Killing", |m| {
        m == "Container app failed liveness probe, will be restarted"
    });
    assert_eq!(type_, "Normal");
    let (_, type_, message) = wait_event(&mut t, "live", "Unhealthy", |m| {
        m.starts_with("Liveness probe failed:")
    });
    assert_eq!(type_, "Warning");
    assert_eq!(message.trim_end(), "Liveness probe failed: not alive");
    // As upstream's doBackOff: the first two kills restart at once (no earlier exit,
    // then a first one), the third waits out the 10 s back-off.
    let pod = t.wait_pod("live", "second restart", |p| {
        status_of(p, "app")["restartCount"].as_i64() >= Some(2)
    });
    assert!(
        events(&t, "live").iter().all(|(r, _, _)| r != "BackOff"),
        "no back-off for the first two kills: {:?}\n{pod}",
        events(&t, "live")
    );
    let pod = t.wait_pod("live", "back-off after the third kill", |p| {
        status_of(p, "app")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let waiting = &status_of(&pod, "app")["state"]["waiting"];
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("back-off 10s restarting failed container=app pod=live_"),
        "{waiting}"
    );
    assert_eq!(status_of(&pod, "app")["restartCount"], 2, "{pod}");
    t.delete_pod("live");
}

#[test]
fn http_and_tcp_probes_pass_on_the_web_server_and_fail_on_closed_ports() {
    let mut t = PodNode::start("kpr-net");
    let probe = |handler: Value| {
        let mut p = json!({"periodSeconds": 1, "failureThreshold": 1});
        for (k, v) in handler.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    t.create_pod(
        "web",
        json!({
            "containers": [
                {"name": "web", "image": WEB, "ports": [{"name": "http", "containerPort": 80}],
                 "readinessProbe": probe(json!({"httpGet": {"port": "http", "path": "/index.html",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]}})),
                 "livenessProbe": probe(json!({"tcpSocket": {"port": 80}}))},
                // Same network namespace: these probe the web server's neighbours.
                {"name": "closed-http", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "readinessProbe": probe(json!({"httpGet": {"port": 81, "path": "/"}}))},
                {"name": "closed-tcp", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "readinessProbe": probe(json!({"tcpSocket": {"port": 82}}))},
                {"name": "not-found", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "readinessProbe": probe(json!({"httpGet": {"port": 80, "path": "/missing"}}))},
                // An exec probe past its timeoutSeconds fails.
                {"name": "slow-exec", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "readinessProbe": probe(json!({"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 1}))},
            ],
        }),
    );
    let pod = t.wait_pod("web", "web ready", |p| status_of(p, "web")["ready"] == true);
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    for c in ["closed-http", "closed-tcp", "not-found", "slow-exec"] {
        assert!(running(&pod, c), "{pod}");
        assert_eq!(status_of(&pod, c)["ready"], false, "{c}: {pod}");
    }
    assert_eq!(
        condition(&pod, "Ready")["message"],
        "containers with unready status: [closed-http closed-tcp not-found slow-exec]"
    );
    let expect = [
        format!(
            "Readiness probe failed: Get \"http://{ip}:81/\": dial tcp {ip}:81: connect: connection refused"
        ),
        format!("Readiness probe failed: dial tcp {ip}:82: connect: connection refused"),
        "Readiness probe failed: HTTP probe failed with statuscode: 404".to_string(),
        "Readiness probe failed: command \"sleep 5\" timed out".to_string(),
    ];
    for message in &expect {
        wait_event(&mut t, "web", "Unhealthy", |m| m == message);
    }
    // The passing probes stay passing: nothing restarted, web never unready.
    std::thread::sleep(Duration::from_secs(3));
    let pod = t.pod("web");
    let web = status_of(&pod, "web");
    assert_eq!(web["ready"], true, "{web}");
    assert_eq!(web["restartCount"], 0, "{web}");
    let web_failures: Vec<_> = events(&t, "web")
        .into_iter()
        .filter(|(r, _, m)| r == "Unhealthy" && !expect.contains(m))
        .collect();
    assert!(web_failures.is_empty(), "{web_failures:?}");
    t.delete_pod("web");
}

#[test]
fn startup_probe_holds_started_and_ready_until_it_passes() {
    let mut t = PodNode::start("kpr-start");
    let dir = host_dir(&t);
    t.create_pod(
        "slow",
        json!({
            "volumes": data_volume(&dir),
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": data_mount(),
                "startupProbe": exec_probe(&["cat", "/data/started"], 1, 120),
                // Would kill the container if it ran before the startup probe passed.
                "livenessProbe": exec_probe(&["false"], 1, 1),
            }, {
                "name": "never", "image": BUSYBOX, "command": IGNORES_TERM,
                "startupProbe": exec_probe(&["false"], 1, 2),
            }],
            "terminationGracePeriodSeconds": 2,
        }),
    );
    t.wait_pod("slow", "app running", |p| running(p, "app"));
    // A startup probe that never passes kills its container past the threshold.
    wait_event(&mut t, "slow", "Killing", |m| {
        m == "Container never failed startup probe, will be restarted"
    });
    wait_event(&mut t, "slow", "Unhealthy", |m| {
        m == "Startup probe failed: "
    });
    std::thread::sleep(Duration::from_secs(1));
    let pod = t.pod("slow");
    let app = status_of(&pod, "app");
    assert_eq!(app["started"], false, "{app}");
    assert_eq!(app["ready"], false, "{app}");
    assert_eq!(app["restartCount"], 0, "liveness is gated: {app}");
    assert_eq!(condition(&pod, "ContainersReady")["status"], "False");
    assert!(
        events(&t, "slow")
            .iter()
            .all(|(_, _, m)| !m.starts_with("Liveness probe")),
        "liveness did not run before start: {:?}",
        events(&t, "slow")
    );

    std::fs::write(dir.join("started"), "yes").unwrap();
    let pod = t.wait_pod("slow", "app started", |p| {
        status_of(p, "app")["started"] == true
    });
    assert_eq!(
        status_of(&pod, "app")["ready"],
        true,
        "no readiness probe: {pod}"
    );
    assert_eq!(
        condition(&pod, "Ready")["message"],
        "containers with unready status: [never]"
    );
    // Now liveness runs, fails and restarts it.
    wait_event(&mut t, "slow", "Killing", |m| {
        m == "Container app failed liveness probe, will be restarted"
    });
    t.wait_pod("slow", "app restarted", |p| {
        status_of(p, "app")["restartCount"].as_i64() >= Some(1) && running(p, "app")
    });
    t.delete_pod("slow");
}

#[test]
fn post_start_hooks_run_and_a_failed_one_restarts_the_container() {
    let mut t = PodNode::start("kpr-post");
    let dir = host_dir(&t);
    t.create_pod(
        "hooks",
        json!({
            "volumes": data_volume(&dir),
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "ok", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "volumeMounts": data_mount(),
                 "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo hello > /data/post"]}}}},
                {"name": "bad", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo oops; exit 3"]}}}},
                {"name": "http-bad", "image": BUSYBOX, "command": ["sleep", "3600"],
                 "lifecycle": {"postStart": {"httpGet": {"port": 81, "path": "/hook"}}}},
            ],
        }),
    );
    let uid = t.pod("hooks")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    t.wait_pod("hooks", "ok running", |p| running(p, "ok"));
    assert_eq!(
        std::fs::read_to_string(dir.join("post")).unwrap(),
        "hello\n"
    );
    let ns = t.ns.name.clone();
    let expected = format!(
        "Exec lifecycle hook ([sh -c echo oops; exit 3]) for Container \"bad\" in Pod \"hooks_{ns}({uid})\" failed - error: command 'sh -c echo oops; exit 3' exited with 3: , message: \"oops\\n\""
    );
    let (_, type_, _) = wait_event(&mut t, "hooks", "FailedPostStartHook", |m| m == expected);
    assert_eq!(type_, "Warning");
    wait_event(&mut t, "hooks", "Killing", |m| m == "FailedPostStartHook");
    let ip = t.pod("hooks")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let expected = format!(
        "Http lifecycle hook (/hook) for Container \"http-bad\" in Pod \"hooks_{ns}({uid})\" failed - error: Get \"http://{ip}:81/hook\": dial tcp {ip}:81: connect: connection refused, message: \"\""
    );
    wait_event(&mut t, "hooks", "FailedPostStartHook", |m| m == expected);
    let pod = t.wait_pod("hooks", "bad restarted", |p| {
        status_of(p, "bad")["restartCount"].as_i64() >= Some(1)
    });
    assert_eq!(status_of(&pod, "ok")["restartCount"], 0, "{pod}");
    t.delete_pod("hooks");
}

#[test]
fn deletion_runs_pre_stop_kills_at_the_grace_deadline_and_writes_the_final_status() {
    let mut t = PodNode::start("kpr-del");
    let dir = host_dir(&t);
    t.create_pod(
        "stubborn",
        json!({
            "volumes": data_volume(&dir),
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": IGNORES_TERM,
                "volumeMounts": data_mount(),
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /data/prestop; sleep 1"]}}},
            }],
        }),
    );
    // The kubelet runs on this host: its preStop GET can reach a server of ours.
    let (hook_port, hook_requests) = record_requests();
    t.create_pod(
        "graceful",
        json!({
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
                "lifecycle": {"preStop": {"httpGet": {"host": "127.0.0.1", "port": hook_port, "path": "/stop?pod=graceful"}}},
            }],
        }),
    );
    t.wait_pod("stubborn", "running", |p| running(p, "app"));
    t.wait_pod("graceful", "running", |p| running(p, "app"));

    let watch = PodWatch::start(&t, "stubborn");
    let took = delete_and_time(&mut t, "stubborn");
    assert_eq!(
        std::fs::read_to_string(dir.join("prestop")).unwrap(),
        "stopping\n",
        "preStop ran"
    );
    // 5 s in all, the hook's second included: not the 30 s default, not at once.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "deletion took {took:?}"
    );
    let versions = watch.versions();
    let last = versions.last().expect("the watch saw the pod");
    assert_eq!(last["status"]["phase"], "Failed", "{last}");
    let app = status_of(last, "app");
    assert_eq!(app["state"]["terminated"]["exitCode"], 137, "{app}");
    assert_eq!(app["ready"], false, "{app}");
    drop(watch);

    let watch = PodWatch::start(&t, "graceful");
    let took = delete_and_time(&mut t, "graceful");
    assert!(took < Duration::from_secs(10), "TERM was enough: {took:?}");
    let request = hook_requests
        .recv_timeout(Duration::from_secs(1))
        .expect("the preStop GET");
    assert!(
        request.starts_with("GET /stop?pod=graceful HTTP/1.1\r\n"),
        "{request}"
    );
    let versions = watch.versions();
    let last = versions.last().expect("the watch saw the pod");
    assert_eq!(last["status"]["phase"], "Succeeded", "{last}");
    let app = status_of(last, "app");
    assert_eq!(app["state"]["terminated"]["exitCode"], 0, "{app}");
    assert_eq!(app["state"]["terminated"]["reason"], "Completed", "{app}");
    let (_, type_, _) = wait_event(&mut t, "graceful", "Killing", |m| {
        m == "Stopping container app"
    });
    assert_eq!(type_, "Normal");
}

/// Waits until pod `name` is Failed by admission; returns its status.
fn wait_rejected(t: &mut PodNode, name: &str) -> Value {
    let pod = t.wait_pod(name, "pod rejected", |p| p["status"]["phase"] == "Failed");
    assert!(
        pod["status"]["containerStatuses"].is_null(),
        "nothing ran: {pod}"
    );
    pod["status"].clone()
}

#[test]
fn pods_the_node_cannot_take_fail_admission_with_upstream_reasons() {
    let mut t = PodNode::start_with_config("kpr-admit", "maxPods: 2\n");
    let sleeper = |extra: Value| {
        let mut c = json!({"name": "app", "image": BUSYBOX, "command": ["sleep", "3600"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"containers": [c]})
    };
    t.create_pod(
        "greedy",
        sleeper(json!({"resources": {"requests": {"cpu": "100"}}})),
    );
    let status = wait_rejected(&mut t, "greedy");
    assert_eq!(status["reason"], "OutOfcpu", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "Pod Node didn't have enough resource: cpu, requested: 100000, used: 0, capacity: "
        ),
        "{status}"
    );
    let (_, type_, event) = wait_event(&mut t, "greedy", "OutOfcpu", |_| true);
    assert_eq!(type_, "Warning");
    assert_eq!(format!("Pod {event}"), message);

    let mut picky = sleeper(json!({}));
    picky["nodeSelector"] = json!({"disktype": "nonexistent"});
    t.create_pod("picky", picky);
    let status = wait_rejected(&mut t, "picky");
    assert_eq!(status["reason"], "NodeAffinity", "{status}");
    assert_eq!(
        status["message"], "Pod Predicate NodeAffinity failed",
        "{status}"
    );

    let port = json!({"ports": [{"containerPort": 80, "hostPort": 31080}]});
    t.create_pod("first", sleeper(port.clone()));
    t.wait_pod("first", "first running", |p| running(p, "app"));
    t.create_pod("second", sleeper(port));
    let status = wait_rejected(&mut t, "second");
    assert_eq!(status["reason"], "NodePorts", "{status}");
    assert_eq!(
        status["message"], "Pod Predicate NodePorts failed",
        "{status}"
    );

    // Rejected pods hold nothing: "first" plus one more fit in maxPods 2, a third not.
    t.create_pod("fits", sleeper(json!({})));
    t.wait_pod("fits", "fits running", |p| running(p, "app"));
    t.create_pod("crowd", sleeper(json!({})));
    let status = wait_rejected(&mut t, "crowd");
    assert_eq!(status["reason"], "OutOfpods", "{status}");
    assert_eq!(
        status["message"],
        "Pod Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2",
        "{status}"
    );
    // Refused for good: still Failed, still nothing started.
    std::thread::sleep(Duration::from_secs(2));
    let again = t.pod("crowd");
    assert_eq!(again["status"]["phase"], "Failed");
    assert!(again["status"]["containerStatuses"].is_null(), "{again}");
    for name in ["greedy", "picky", "second", "crowd", "first", "fits"] {
        t.delete_pod(name);
    }
}

#[test]
fn a_running_pod_refused_after_a_kubelet_restart_is_killed() {
    let mut t = PodNode::start("kpr-readmit");
    let node = t.node.name.clone();
    t.cp()
        .kubectl(&["label", "node", &node, "kpr-role=a"])
        .unwrap();
    let uid = t.create_pod(
        "picky",
        json!({
            "nodeSelector": {"kpr-role": "a"},
            "containers": [{"name": "app", "image": BUSYBOX, "command": IGNORES_TERM}],
        }),
    );
    t.wait_pod("picky", "running", |p| running(p, "app"));
    let pod_dir = t.node.root_dir().join("pods").join(&uid);
    assert!(pod_dir.exists());

    // The node no longer matches; a restarted kubelet admits its pods again.
    assert!(t.kubelet.stop(Duration::from_secs(10)), "kubelet stopped");
    t.cp()
        .kubectl(&["label", "node", &node, "kpr-role=b", "--overwrite"])
        .unwrap();
    t.kubelet = Kubelet::start(&t.node, shared_containerd(), &[]).unwrap();
    let pod = t.wait_pod("picky", "refused", |p| p["status"]["phase"] == "Failed");
    assert_eq!(pod["status"]["reason"], "NodeAffinity", "{pod}");
    t.kubelet
        .eventually("the refused pod removed", Duration::from_secs(30), || {
            Ok((!pod_dir.exists()).then_some(()))
        });
    t.delete_pod("picky");
}
