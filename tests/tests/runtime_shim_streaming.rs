//! runtime-shim's streaming server driven by a real client: kubectl 1.20.2 through the
//! API server and our kubelet (which proxies the upgraded connection to the runtime's
//! URL byte for byte) — exec with stdin, exit codes and a terminal, attach to output
//! and to a terminal, port-forward — and the CRI side of it (checks, single-use URLs).
//! Also seccomp: RuntimeDefault blocks what Unconfined and privileged containers may do.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;
use node_tests::control_plane::{ControlPlane, kubectl_stdin};
use node_tests::fixture::{kube_bin, run_ok};
use node_tests::kubectl::{self, Background};
use node_tests::kubelet::{Kubelet, KubeletNode, Namespace};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs, all_containers};
use serde_json::{Value, json};
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const WEB: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

/// Everything `r` yields, gathered by a thread until EOF.
fn collect(
    mut r: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(String::new()));
    let thread = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    (seen, thread)
}

/// `kubectl exec box -c app -- cmd...` in namespace `ns`.
fn exec_in_app(cp: &ControlPlane, ns: &str, cmd: &[&str]) -> (i32, String, String) {
    let mut args = vec!["-n", ns, "exec", "box", "-c", "app", "--"];
    args.extend_from_slice(cmd);
    kubectl::status(cp, &args)
}

/// kubectl on a terminal of its own (util-linux `script` gives it a pty), typing
/// `input`: its exit code and everything the terminal showed.
fn kubectl_on_a_terminal(cp: &ControlPlane, args: &[&str], input: &str) -> (i32, String) {
    let mut line = format!(
        "stty cols 101 rows 33; exec {} --kubeconfig {}",
        kube_bin("kubectl").display(),
        cp.kubeconfig().display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Typed once the remote side is there: before that the local terminal would echo it.
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(input.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn kubectl_exec_attach_and_port_forward_reach_runtime_shim() {
    let cp = ControlPlane::shared();
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    dirs.write_loopback_network().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    // The API server reaches the kubelet at its InternalIP (loopback) with the
    // cluster's client certificate.
    let node = KubeletNode::with_config(
        cp,
        "stream",
        &format!(
            "authentication: {{x509: {{clientCAFile: {}}}}}\n",
            cp.ca_cert().display()
        ),
    )
    .unwrap();
    let mut kubelet = Kubelet::start(&node, &dirs.socket(), &["--node-ip", "127.0.0.1"]).unwrap();
    kubelet.wait_node_ready(cp, &node.name, Duration::from_secs(60));
    let ns = Namespace::create(cp, "stream");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "box", "namespace": ns.name},
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "app", "image": BUSYBOX, "command": ["sh", "-c",
                    "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]},
                {"name": "web", "image": WEB},
                {"name": "console", "image": BUSYBOX, "command": ["sh"],
                 "stdin": true, "tty": true},
                {"name": "reader", "image": BUSYBOX, "stdin": true,
                 "command": ["sh", "-c", "while read l; do echo got-$l; echo err-$l >&2; done"]},
            ],
        },
    });
    kubelet.eventually("pod created", Duration::from_secs(30), || {
        Ok(cp.apply(&pod.to_string()).ok().map(|_| ()))
    });
    kubelet.eventually("all containers running", Duration::from_secs(120), || {
        let p: Value = serde_json::from_str(
            &cp.kubectl(&["-n", &ns.name, "get", "pod", "box", "-o", "json"])?,
        )?;
        let running = p["status"]["containerStatuses"].as_array().map(|cs| {
            cs.iter()
                .filter(|c| c["state"]["running"].is_object())
                .count()
        });
        Ok((running == Some(4)).then_some(()))
    });
    let n = ns.name.as_str();

    // exec: stdout and stderr apart, stdin in with its end as EOF, exit codes out.
    let (code, out, err) = exec_in_app(cp, n, &["sh", "-c", "echo out; echo err >&2; hostname"]);
    assert_eq!((code, out.as_str()), (0, "out\nbox\n"), "{err}");
    assert_eq!(err, "err\n");
    let out = kubectl_stdin(
        &cp.kubeconfig(),
        &[
            "-n",
            n,
            "exec",
            "-i",
            "box",
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "cat; echo done",
        ],
        "piped\ninput\n",
    )
    .unwrap();
    assert_eq!(out, "piped\ninput\ndone\n");
    let (code, _, err) = exec_in_app(cp, n, &["sh", "-c", "exit 3"]);
    eprintln!("kubectl exec -- sh -c 'exit 3' (exit {code}): {err}");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let (code, _, err) = exec_in_app(cp, n, &["/no/such/program"]);
    eprintln!("kubectl exec -- /no/such/program (exit {code}): {err}");
    assert_ne!(code, 0);
    assert!(
        err.contains("/no/such/program") && err.contains("no such file"),
        "{err}"
    );
    // Said once, by the status: runc's own copy of its error never reaches the client.
    assert_eq!(err.matches("no such file").count(), 1, "{err}");
    assert!(
        err.starts_with("error: Internal error occurred: error executing command in container: "),
        "{err}"
    );

    // exec -it: a real terminal (runc's pty, handed over by console socket), with the
    // size of kubectl's own terminal and the keystrokes typed into it.
    let (code, screen) = kubectl_on_a_terminal(
        cp,
        &["-n", n, "exec", "-it", "box", "-c", "app", "--", "sh"],
        "tty; stty size; echo typed-$((6*7))\nexit 5\n",
    );
    eprintln!("kubectl exec -it (exit {code}):\n{screen}");
    assert_eq!(code, 5, "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("33 101"), "{screen}");
    assert!(screen.contains("typed-42"), "{screen}");

    // attach to output: what the running process prints from now on.
    let mut attach = Background::kubectl(cp, &["-n", n, "attach", "box", "-c", "app"]);
    let (seen, reader) = collect(attach.0.stdout.take().unwrap());
    kubelet.eventually("attached output", Duration::from_secs(30), || {
        let text = seen.lock().unwrap().clone();
        Ok((text.lines().filter(|l| l.starts_with("tick ")).count() >= 3).then_some(()))
    });
    drop(attach);
    reader.join().unwrap();

    // attach -i without a terminal: input into the container's stdin pipe (kept open by
    // its monitor), its stdout and stderr back apart.
    let mut attach = Background(
        kubectl::command(cp, &["-n", n, "attach", "-i", "box", "-c", "reader"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = attach.0.stdin.take().unwrap();
    let (out, err) = (
        attach.0.stdout.take().unwrap(),
        attach.0.stderr.take().unwrap(),
    );
    let (out, err) = (collect(out), collect(err));
    kubelet.eventually("attached input echoed", Duration::from_secs(30), || {
        // Repeated: what is sent before the session is up goes nowhere, as upstream.
        input.write_all(b"line\n")?;
        let (o, e) = (out.0.lock().unwrap().clone(), err.0.lock().unwrap().clone());
        Ok((o.contains("got-line") && e.contains("err-line")).then_some(()))
    });
    assert!(!out.0.lock().unwrap().contains("err-"), "stderr kept apart");
    drop(input);
    drop(attach);
    let _ = (out.1.join(), err.1.join());

    // attach -it: the container's own terminal (the monitor's pty): keystrokes reach
    // its shell, and the session ends when that shell exits.
    let (_, screen) = kubectl_on_a_terminal(
        cp,
        &["-n", n, "attach", "-it", "box", "-c", "console"],
        "echo attached-$((2+3)); stty size\nexit 4\n",
    );
    eprintln!("kubectl attach -it:\n{screen}");
    assert!(screen.contains("attached-5"), "{screen}");
    assert!(screen.contains("33 101"), "{screen}");

    // port-forward: a local port to 127.0.0.1:80 inside the pod's network namespace.
    let (_forward, url, body) = kubectl::port_forward_http(cp, n, "box", 80);
    assert!(body.contains("node-runtime test web server"), "{body}");
    // Several connections over the one forward, one after the other.
    for _ in 0..3 {
        let again = run_ok(Command::new("curl").args(["-sf", "-m", "3", &url])).unwrap();
        assert_eq!(again, body);
    }
    // A port nobody listens on: the connection fails and kubectl is told why.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forward = format!("{closed_port}:81");
    let mut closed = Background(
        kubectl::command(cp, &["-n", n, "port-forward", "pod/box", &forward])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (told, told_thread) = collect(closed.0.stderr.take().unwrap());
    let closed_url = format!("http://127.0.0.1:{closed_port}/");
    let message = kubelet.eventually("the failure reported", Duration::from_secs(30), || {
        let _ = run_ok(Command::new("curl").args(["-sf", "-m", "3", &closed_url]));
        let text = told.lock().unwrap().clone();
        Ok(text.contains("error forwarding port 81").then_some(text))
    });
    eprintln!("kubectl port-forward to a closed port: {message}");
    assert!(
        message.contains("connection refused") || message.contains("Connection refused"),
        "{message}"
    );
    drop(closed);
    let _ = told_thread.join();
    kubelet.check_running().unwrap();
    // Every exec has ended: no reaper is left, nor any of its console sockets.
    let reapers = Command::new("pgrep")
        .args(["-f", &format!("__exec .*{}", dirs.base.display())])
        .output()
        .unwrap();
    assert!(reapers.stdout.is_empty(), "exec reapers left running");
    let io = std::fs::read_dir(dirs.base.join("state/io"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-"))
        .collect::<Vec<_>>();
    assert!(io.is_empty(), "console sockets left: {io:?}");
    drop(ns);
    drop(kubelet);
    drop(shim);
    let _ = cp.kubectl(&["delete", "node", &node.name]);
}

// ---- CRI level ----

/// Creates and starts a container of `pod`; the CreateContainer error if refused.
async fn start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    name: &str,
    command: &[&str],
    security: LinuxContainerSecurityContext,
) -> Result<String, tonic::Status> {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(security),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

fn seccomp(typ: ProfileType, localhost_ref: &str) -> LinuxContainerSecurityContext {
    LinuxContainerSecurityContext {
        seccomp: Some(SecurityProfile {
            profile_type: typ as i32,
            localhost_ref: localhost_ref.into(),
        }),
        ..Default::default()
    }
}

/// A container sleeping for an hour with `security`.
async fn sleeper(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    name: &str,
    security: LinuxContainerSecurityContext,
) -> Result<String, tonic::Status> {
    start(rt, pod_id, pod, name, &["sleep", "3600"], security).await
}

/// The container's seccomp mode as its init sees it (`Seccomp:` in
/// /proc/self/status): "0" none, "2" a filter.
async fn seccomp_mode(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> String {
    let (_, status) = sh(rt, id, "grep Seccomp: /proc/self/status").await;
    status
        .split_whitespace()
        .nth(1)
        .unwrap_or(&status)
        .to_string()
}

async fn container_count(rt: &mut RuntimeServiceClient<Channel>) -> usize {
    all_containers(rt).await.len()
}

/// Runs `sh -c script` in a running container: exit code and stdout+stderr.
async fn sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> (i32, String) {
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), format!("{script} 2>&1")],
            timeout: 20,
        })
        .await
        .unwrap()
        .into_inner();
    // stderr is runc's own (the script's goes to stdout).
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr),
    )
}

async fn pod(
    shim: &RuntimeShim,
    dirs: &ShimDirs,
    name: &str,
) -> (RuntimeServiceClient<Channel>, String, PodSandboxConfig) {
    let mut images = shim.images().await.unwrap();
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let config = dirs.pod_config(name);
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    (rt, id, config)
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_default_seccomp_blocks_what_unconfined_and_privileged_may_do() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut rt, pod_id, pod) = pod(&shim, &dirs, "seccomp").await;
    let confined = sleeper(
        &mut rt,
        &pod_id,
        &pod,
        "confined",
        seccomp(ProfileType::RuntimeDefault, ""),
    )
    .await
    .unwrap();
    assert_eq!(seccomp_mode(&mut rt, &confined).await, "2", "filter mode");
    // A new user namespace needs no capability, only the filter's permission.
    let (code, out) = sh(&mut rt, &confined, "unshare -U true").await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let (code, out) = sh(
        &mut rt,
        &confined,
        "echo ordinary work; ls / >/dev/null; date >/dev/null",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ordinary work\n"));

    let unconfined = sleeper(
        &mut rt,
        &pod_id,
        &pod,
        "unconfined",
        seccomp(ProfileType::Unconfined, ""),
    )
    .await
    .unwrap();
    assert_eq!(seccomp_mode(&mut rt, &unconfined).await, "0");
    let (code, out) = sh(&mut rt, &unconfined, "unshare -U true").await;
    assert_eq!(code, 0, "{out}");

    // Privileged containers get no filter even when RuntimeDefault is asked for.
    let mut privileged = seccomp(ProfileType::RuntimeDefault, "");
    privileged.privileged = true;
    let privileged = sleeper(&mut rt, &pod_id, &pod, "privileged", privileged)
        .await
        .unwrap();
    let (code, out) = sh(
        &mut rt,
        &privileged,
        "mkdir /tmp/m && mount -t tmpfs none /tmp/m && unshare -m true && echo ok",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));

    // Localhost: an OCI profile from a file on the node.
    let profile = dirs.base.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let local = sleeper(
        &mut rt,
        &pod_id,
        &pod,
        "local",
        seccomp(ProfileType::Localhost, profile.to_str().unwrap()),
    )
    .await
    .unwrap();
    let (code, out) = sh(&mut rt, &local, "mkdir /tmp/d").await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    // A profile that is not there is a clear error and creates nothing.
    let before = container_count(&mut rt).await;
    let err = sleeper(
        &mut rt,
        &pod_id,
        &pod,
        "missing",
        seccomp(ProfileType::Localhost, "/no/such/profile.json"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/no/such/profile.json"), "{err:?}");
    let after = container_count(&mut rt).await;
    assert_eq!(before, after);
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_requests_are_checked_and_urls_work_once() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut rt, pod_id, pod) = pod(&shim, &dirs, "urls").await;
    let id = start(
        &mut rt,
        &pod_id,
        &pod,
        "c",
        &["sleep", "3600"],
        Default::default(),
    )
    .await
    .unwrap();
    let exec = |tty: bool, stderr: bool, cmd: &[&str]| ExecRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    let err = rt.exec(exec(true, true, &["sh"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "tty and stderr cannot both be true");
    let err = rt.exec(exec(false, true, &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = rt
        .attach(AttachRequest {
            container_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "one of stdin, stdout, or stderr must be set");

    let url = rt
        .exec(exec(false, true, &["true"]))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/exec/"),
        "{url}"
    );
    let upgrade = |url: &str, protocol: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-si",
                "-m",
                "2",
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: SPDY/3.1",
            ])
            .args(["-H", &format!("X-Stream-Protocol-Version: {protocol}"), url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // No protocol in common: refused, and the URL still works after.
    let refused = upgrade(&url, "v9.channel.k8s.io");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let first = upgrade(&url, "v4.channel.k8s.io");
    assert!(first.starts_with("HTTP/1.1 101"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{first}"
    );
    let second = upgrade(&url, "v4.channel.k8s.io");
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");

    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![80],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");
    let pf = upgrade(&url, "portforward.k8s.io");
    assert!(pf.starts_with("HTTP/1.1 101"), "{pf}");
    let err = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    remove_pod(&mut rt, &pod_id).await;
    // Stopped: no more streams into its containers.
    let err = rt.exec(exec(false, true, &["true"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}
