//! runtime-shim's RuntimeService with real runc: sandboxes with their own namespaces,
//! containers with CRI logs and exit codes, ExecSync, bad input, and a daemon crash that
//! leaves running containers untouched. Every test removes what it created and checks
//! that nothing (netns, mounts, cgroups, monitors) is left.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs, all_containers, all_sandboxes};
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

struct Pod {
    id: String,
    config: PodSandboxConfig,
    logs: std::path::PathBuf,
}

async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, dirs: &ShimDirs, name: &str) -> Pod {
    let config = dirs.pod_config(name);
    let id = node_tests::runtime_shim::run_sandbox(rt, &config)
        .await
        .unwrap();
    let logs = std::path::PathBuf::from(&config.log_directory);
    Pod { id, config, logs }
}

async fn start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &Pod,
    name: &str,
    image: &str,
    command: &[&str],
    user: Option<i64>,
) -> String {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: user.map(|value| Int64Value { value }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

async fn wait_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log records without timestamps: "stdout F text".
fn log_records(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect()
}

async fn pull(images: &mut ImageServiceClient<Channel>, image: &str) {
    node_tests::runtime_shim::pull(images, image).await.unwrap();
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod: &Pod) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .unwrap();
}

/// Nothing of `dirs` or of `pod_ids` is left in the kernel.
fn assert_no_leaks(dirs: &ShimDirs, pod_ids: &[&str], container_ids: &[&str]) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(dirs.base.to_str().unwrap()),
        "mounts left behind:\n{mounts}"
    );
    for id in pod_ids {
        assert!(
            !std::path::Path::new(&format!("/var/run/netns/runtime-shim-{}", &id[..16])).exists(),
            "netns of {id} left behind"
        );
    }
    for id in container_ids {
        assert!(
            !std::path::Path::new(&format!("/sys/fs/cgroup/memory/runtime-shim/{id}")).exists(),
            "cgroup of {id} left behind"
        );
        let monitors = std::process::Command::new("pgrep")
            .args(["-f", &format!("__monitor.*{id}")])
            .output()
            .unwrap();
        assert!(monitors.stdout.is_empty(), "monitor of {id} still running");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_run_in_their_pod_and_log_in_cri_format() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("runtime-shim", "v1")
    );
    pull(&mut images, BUSYBOX).await;
    pull(
        &mut images,
        "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
    )
    .await;

    let pod = run_pod(&mut rt, &dirs, "web-0").await;
    // A retried RunPodSandbox gets the same sandbox.
    let again = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(again, pod.id);

    let ok = start(
        &mut rt,
        &pod,
        "ok",
        BUSYBOX,
        &["sh", "-c", "hostname; echo to-stderr >&2"],
        None,
    )
    .await;
    let s = wait_exited(&mut rt, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let records = log_records(&pod.logs.join("ok/0.log"));
    assert!(
        records.contains(&"stdout F web-0".to_string()),
        "{records:?}"
    );
    assert!(
        records.contains(&"stderr F to-stderr".to_string()),
        "{records:?}"
    );

    let fail = start(
        &mut rt,
        &pod,
        "fail",
        BUSYBOX,
        &["sh", "-c", "exit 3"],
        None,
    )
    .await;
    let s = wait_exited(&mut rt, &fail).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    assert!(s.finished_at >= s.started_at && s.started_at > 0);

    // USER from the image, and runAsUser overriding it.
    let img_user = start(
        &mut rt,
        &pod,
        "img-user",
        "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
        &["id", "-u"],
        None,
    )
    .await;
    wait_exited(&mut rt, &img_user).await;
    assert_eq!(
        log_records(&pod.logs.join("img-user/0.log")),
        vec!["stdout F 1002"]
    );
    let run_as = start(&mut rt, &pod, "run-as", BUSYBOX, &["id", "-u"], Some(4242)).await;
    wait_exited(&mut rt, &run_as).await;
    assert_eq!(
        log_records(&pod.logs.join("run-as/0.log")),
        vec!["stdout F 4242"]
    );

    // Containers of one pod share its network namespace.
    let server = start(
        &mut rt,
        &pod,
        "server",
        BUSYBOX,
        &["nc", "-l", "-p", "8080", "-e", "echo", "pong"],
        None,
    )
    .await;
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: ok.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await;
    assert_eq!(
        out.unwrap_err().code(),
        tonic::Code::FailedPrecondition,
        "exec in an exited container"
    );
    let client = start(
        &mut rt,
        &pod,
        "client",
        BUSYBOX,
        &["sh", "-c", "sleep 0.3; nc 127.0.0.1 8080"],
        None,
    )
    .await;
    wait_exited(&mut rt, &client).await;
    assert_eq!(
        log_records(&pod.logs.join("client/0.log")),
        vec!["stdout F pong"]
    );
    wait_exited(&mut rt, &server).await;

    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 6);

    remove_pod(&mut rt, &pod).await;
    assert!(all_containers(&mut rt).await.is_empty());
    drop(shim);
    assert_no_leaks(
        &dirs,
        &[&pod.id],
        &[&ok, &fail, &img_user, &run_as, &server, &client],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_exit_code_and_honours_timeouts() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    pull(&mut images, BUSYBOX).await;
    let pod = run_pod(&mut rt, &dirs, "exec").await;
    let c = start(&mut rt, &pod, "sleeper", BUSYBOX, &["sleep", "3600"], None).await;
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: ["sh", "-c", "echo out; echo err >&2; exit 7"]
                .map(String::from)
                .to_vec(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let started = Instant::now();
    let err = rt
        .exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: ["sleep", "30"].map(String::from).to_vec(),
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // StopContainer on a process that ignores SIGTERM (sleep as PID 1) escalates.
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let s = status(&mut rt, &c).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    remove_pod(&mut rt, &pod).await;
    drop(shim);
    assert_no_leaks(&dirs, &[&pod.id], &[&c]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_daemon_leaves_containers_running_and_finds_them_again() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    pull(&mut images, BUSYBOX).await;
    let pod = run_pod(&mut rt, &dirs, "survivor").await;
    let c = start(
        &mut rt,
        &pod,
        "ticker",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; while true; do echo tick; sleep 0.2; done",
        ],
        None,
    )
    .await;
    let created = status(&mut rt, &c).await.created_at;
    shim.crash();

    // While the daemon is down the container keeps running and logging.
    let log = pod.logs.join("ticker/0.log");
    let before = log_records(&log).len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        log_records(&log).len() > before,
        "container stopped logging without its daemon"
    );

    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let s = status(&mut rt, &c).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
    assert_eq!(s.created_at, created);
    let pods = all_sandboxes(&mut rt).await;
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![pod.id.as_str()]
    );
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let s = status(&mut rt, &c).await;
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::ContainerExited as i32, 0)
    );
    // runc signals every process of the container: the shell's trap ran.
    assert!(
        log_records(&log).contains(&"stdout F bye".to_string()),
        "{:?}",
        log_records(&log)
    );
    remove_pod(&mut rt, &pod).await;
    drop(shim);
    assert_no_leaks(&dirs, &[&pod.id], &[&c]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_left_without_a_record_is_reclaimed_at_start() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    pull(&mut images, BUSYBOX).await;
    let pod = run_pod(&mut rt, &dirs, "orphan").await;
    let c = start(&mut rt, &pod, "sleeper", BUSYBOX, &["sleep", "3600"], None).await;
    // What a daemon killed half-way through a CreateContainer (rootfs mounted, monitor
    // and runc container made, record not yet written) or through the background
    // reclaim after a RemoveContainer leaves: a container directory without a record.
    shim.crash();
    let dir = dirs.root().join("containers").join(&c);
    std::fs::remove_file(dirs.root().join("containers").join(format!("{c}.json"))).unwrap();
    assert!(
        dir.join("rootfs/bin").exists(),
        "the rootfs was not mounted"
    );

    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    assert!(!dir.exists(), "the orphan's directory is still there");
    let listed = all_containers(&mut rt).await;
    assert!(listed.is_empty(), "{listed:?}");
    assert!(
        !dirs.state().join("runc").join(&c).exists(),
        "runc still knows the orphan"
    );
    remove_pod(&mut rt, &pod).await;
    drop(shim);
    assert_no_leaks(&dirs, &[&pod.id], &[&c]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(all_sandboxes(&mut rt).await.is_empty());
    let pod = run_pod(&mut rt, &dirs, "bad").await;
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "registry.k8s.io/never-pulled:1".into(),
                    ..Default::default()
                }),
                labels: HashMap::new(),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("pull it first"), "{err}");
    let err = rt
        .start_container(StartContainerRequest {
            container_id: "doesnotexist".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Stop and remove are idempotent, also for unknown IDs.
    rt.stop_container(StopContainerRequest {
        container_id: "doesnotexist".into(),
        timeout: 0,
    })
    .await
    .unwrap();
    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    drop(shim);
    assert_no_leaks(&dirs, &[&pod.id], &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_group_without_a_user_is_refused() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    pull(&mut images, BUSYBOX).await;
    let pod = run_pod(&mut rt, &dirs, "group").await;
    let err = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        run_as_group: Some(Int64Value { value: 1002 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        std::fs::read_dir(dirs.root().join("containers"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    remove_pod(&mut rt, &pod).await;
    drop(shim);
    assert_no_leaks(&dirs, &[&pod.id], &[]);
}

/// `ps` in container `id`: one "PID ARGS" line per process it sees.
async fn ps(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> String {
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: ["ps", "-o", "pid,args"].map(String::from).to_vec(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host PIDs of the infra processes of the sandbox `id` of `dirs`.
fn infra_pids(dirs: &ShimDirs, id: &str) -> Vec<u32> {
    let tag = dirs
        .state()
        .join("sandboxes")
        .join(id)
        .display()
        .to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("__pause\0{tag}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pid_sharing_pod_see_each_other() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    pull(&mut images, BUSYBOX).await;
    // shareProcessNamespace: the pod's and its containers' PID mode is POD.
    let mut shared = dirs.pod_config("shared");
    let ns = shared
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.pid = NamespaceMode::Pod as i32;
    let id = node_tests::runtime_shim::run_sandbox(&mut rt, &shared)
        .await
        .unwrap();
    let logs = std::path::PathBuf::from(&shared.log_directory);
    let pod = Pod {
        id,
        config: shared,
        logs,
    };
    let infra = infra_pids(&dirs, &pod.id);
    assert_eq!(infra.len(), 1, "one infra process for a PID-sharing pod");
    let a = start(&mut rt, &pod, "a", BUSYBOX, &["sleep", "3601"], None).await;
    let b = start(&mut rt, &pod, "b", BUSYBOX, &["sleep", "3602"], None).await;
    for c in [&a, &b] {
        let seen = ps(&mut rt, c).await;
        assert!(
            seen.contains("sleep 3601") && seen.contains("sleep 3602"),
            "{seen}"
        );
        let pid1 = seen.lines().find(|l| l.trim_start().starts_with("1 "));
        assert!(
            pid1.is_some_and(|l| l.contains("__pause")),
            "PID 1 is not the infra process: {seen}"
        );
    }

    // A pod with per-container namespaces (the default here) has no infra process,
    // and its containers see only themselves.
    let alone = run_pod(&mut rt, &dirs, "alone").await;
    assert!(infra_pids(&dirs, &alone.id).is_empty());
    let c = start(&mut rt, &alone, "c", BUSYBOX, &["sleep", "3603"], None).await;
    let d = start(&mut rt, &alone, "d", BUSYBOX, &["sleep", "3604"], None).await;
    let seen = ps(&mut rt, &c).await;
    assert!(
        seen.contains("sleep 3603") && !seen.contains("sleep 3604"),
        "{seen}"
    );

    // The infra process outlives the daemon, and the pod keeps sharing.
    shim.crash();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    assert_eq!(infra_pids(&dirs, &pod.id), infra);
    let e = start(&mut rt, &pod, "e", BUSYBOX, &["sleep", "3605"], None).await;
    assert!(ps(&mut rt, &e).await.contains("sleep 3601"));

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .unwrap();
    assert!(
        infra_pids(&dirs, &pod.id).is_empty(),
        "infra process left after StopPodSandbox"
    );
    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &alone).await;
    assert_no_leaks(
        &dirs,
        &[pod.id.as_str(), alone.id.as_str()],
        &[&a, &b, &c, &d, &e],
    );
}
