//! Churn: many sandbox + container lifecycles on a real CNI network (ptp + host-local)
//! leave nothing behind. What runtime-shim holds is counted before and after: pinned
//! netns, mounts, cgroups, monitor processes, container snapshots, host-local
//! reservations, runc state, and the daemon's own records and sockets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs, all_sandboxes, reserved_ips, run_sandbox};
use tonic::transport::Channel;

const CYCLES: usize = 500;
/// Clients running cycles at the same time.
const WORKERS: usize = 4;
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Entries of `dir` (0 if it does not exist).
fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Lines of `text` that name one of `needles`.
fn lines_naming(text: &str, needles: &[String]) -> usize {
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
        .count()
}

/// What the daemon on `dirs` holds, by kind. Counted only for this daemon (its dirs,
/// the IDs it handed out), since other tests may run pods on this machine meanwhile.
fn footprint(
    dirs: &ShimDirs,
    ipam_dir: &Path,
    daemon: u32,
    pods: &[String],
    containers: &[String],
) -> BTreeMap<&'static str, usize> {
    let netns_names: Vec<String> = pods
        .iter()
        .map(|id| format!("runtime-shim-{}", &id[..16]))
        .collect();
    let netns = std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter(|e| netns_names.contains(&e.file_name().to_string_lossy().into_owned()))
                .count()
        })
        .unwrap_or(0);
    let mut ours = netns_names.clone();
    ours.push(dirs.base.display().to_string());
    let mounts = lines_naming(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        &ours,
    );
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|controller| {
            containers
                .iter()
                .filter(|id| controller.path().join("runtime-shim").join(id).exists())
                .count()
        })
        .sum();
    // Every process but the daemon whose command line names our dirs: monitors (their
    // spec names the bundle), exec reapers, runc.
    let base = dirs.base.display().to_string();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != daemon)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&base))
        })
        .count();
    let routes = std::process::Command::new("ip")
        .args(["route", "show"])
        .output()
        .unwrap();
    let ips = reserved_ips(ipam_dir);
    let host_routes = String::from_utf8_lossy(&routes.stdout)
        .lines()
        .filter(|l| ips.iter().any(|ip| l.starts_with(&format!("{ip} "))))
        .count();
    BTreeMap::from([
        ("netns", netns),
        ("mounts", mounts),
        ("cgroups", cgroups),
        ("processes", processes),
        // Each container's record and its dir (overlay upper, work, rootfs, bundle).
        ("snapshots", count(&dirs.root().join("containers"))),
        ("sandbox records", count(&dirs.root().join("sandboxes"))),
        ("setup records", count(&dirs.root().join("sandboxes-setup"))),
        ("sandbox dirs", count(&dirs.state().join("sandboxes"))),
        ("io sockets", count(&dirs.state().join("io"))),
        ("runc state", count(&dirs.state().join("runc"))),
        ("cni allocations", ips.len()),
        ("cni cache", count(&dirs.cni_cache_dir())),
        ("host routes", host_routes),
    ])
}

/// Time spent in each CRI call, summed over the cycles.
type Timings = BTreeMap<&'static str, Duration>;

async fn timed<T>(t: &mut Timings, call: &'static str, f: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    *t.entry(call).or_default() += start.elapsed();
    out
}

async fn cycle(
    rt: &mut RuntimeServiceClient<Channel>,
    dirs: &ShimDirs,
    n: usize,
    t: &mut Timings,
) -> (String, String) {
    let config = dirs.pod_config(&format!("churn-{n}"));
    let pod = timed(t, "RunPodSandbox", run_sandbox(rt, &config))
        .await
        .unwrap();
    let c = timed(
        t,
        "CreateContainer",
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "sleeper/0.log".into(),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .container_id;
    timed(
        t,
        "StartContainer",
        rt.start_container(StartContainerRequest {
            container_id: c.clone(),
        }),
    )
    .await
    .unwrap();
    timed(
        t,
        "StopContainer",
        rt.stop_container(StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        }),
    )
    .await
    .unwrap();
    timed(
        t,
        "RemoveContainer",
        rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        }),
    )
    .await
    .unwrap();
    timed(
        t,
        "StopPodSandbox",
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await
    .unwrap();
    timed(
        t,
        "RemovePodSandbox",
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await
    .unwrap();
    (pod, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_pod_lifecycles_leave_nothing_behind() {
    let reg = Registry::start().unwrap();
    let dirs = std::sync::Arc::new(ShimDirs::new().unwrap());
    let subnet = format!("10.226.{}.0/24", std::process::id() % 250);
    let ipam_dir = dirs.write_ptp_network(&subnet, &[]).unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    shim.pull(BUSYBOX).await.unwrap();
    let layers = count(&dirs.root().join("images"));

    // One cycle first: what is created lazily once (dirs, the cache dir) is there
    // before counting.
    let mut timings = Timings::new();
    let first = cycle(&mut rt, &dirs, 0, &mut timings).await;
    let before = footprint(
        &dirs,
        &ipam_dir,
        shim.pid(),
        std::slice::from_ref(&first.0),
        std::slice::from_ref(&first.1),
    );
    // Several clients at once, as a kubelet's pod workers are: faster on a busy machine
    // (the daemon waits on runc and plugins), and interleaved calls of different pods.
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (mut rt, dirs) = (rt.clone(), dirs.clone());
        workers.spawn(async move {
            let mut t = Timings::new();
            let mut made = vec![];
            for n in (1 + w..CYCLES).step_by(WORKERS) {
                made.push(cycle(&mut rt, &dirs, n, &mut t).await);
            }
            (made, t)
        });
    }
    let mut made = vec![first];
    while let Some(done) = workers.join_next().await {
        let (m, t) = done.unwrap();
        made.extend(m);
        for (call, d) in t {
            *timings.entry(call).or_default() += d;
        }
    }
    let took = started.elapsed();
    assert_eq!(made.len(), CYCLES);
    let (pods, containers): (Vec<String>, Vec<String>) = made.into_iter().unzip();
    // A removed container's rootfs and directory are reclaimed in the background, just
    // after RemoveContainer answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let after = footprint(&dirs, &ipam_dir, shim.pid(), &pods, &containers);
        if after == before || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "{} cycles by {WORKERS} clients in {took:.1?}; before {before:?}; after {after:?}",
        CYCLES - 1
    );
    for (call, total) in &timings {
        println!("{call}: {:.1?} on average", *total / CYCLES as u32);
    }
    assert_eq!(before, after, "what {} cycles left behind", CYCLES - 1);
    assert!(
        after.values().all(|n| *n == 0),
        "a removed pod still holds something: {after:?}"
    );
    assert_eq!(
        count(&dirs.root().join("images")),
        layers,
        "the image store changed"
    );
    let listed = all_sandboxes(&mut rt).await;
    assert!(listed.is_empty(), "{listed:?}");
}
