//! runtime-shim driving real CNI plugins (Debian's ptp + host-local) the way libcni does:
//! pod IPs, NetworkReady, DEL on removal and after a failed ADD, the result cache.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use node_tests::fixture::{run_ok, unique_name};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs, all_sandboxes, reserved_ips, run_sandbox};
use tonic::transport::Channel;

/// A /24 no other test run on this machine uses; `n` tells this binary's tests apart
/// (their pods would otherwise get the same IP from separate host-local dirs).
fn subnet(n: u8) -> String {
    format!("10.{}.{}.0/24", 222 + n, std::process::id() % 250)
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: unique_name("uid"),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

async fn network_ready(rt: &mut RuntimeServiceClient<Channel>) -> bool {
    let s = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    s.status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_get_an_ip_that_answers_and_give_it_back() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    assert!(
        !network_ready(&mut rt).await,
        "NetworkReady without any CNI config"
    );
    let ipam_dir = dirs.write_ptp_network(&subnet(0), &[]).unwrap();
    assert!(network_ready(&mut rt).await);

    let web = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
    shim.pull(web).await.unwrap();
    let config = pod_config("web");
    let pod = run_sandbox(&mut rt, &config).await.unwrap();
    let status = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip = status.network.unwrap().ip;
    let prefix = subnet(0).trim_end_matches("0/24").to_string();
    assert!(ip.starts_with(&prefix), "{ip} not in {}", subnet(0));
    assert_eq!(reserved_ips(&ipam_dir), vec![ip.clone()]);
    let cache: Vec<_> = std::fs::read_dir(dirs.base.join("cni-cache"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(cache.len(), 1, "one libcni cache entry");
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache[0].path()).unwrap()).unwrap();
    assert_eq!(entry["kind"], "cniCacheV1");
    assert_eq!(entry["containerId"], pod.as_str());

    let c = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: web.into(),
                    ..Default::default()
                }),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: c })
        .await
        .unwrap();
    // The host reaches the pod over the ptp link: the web server answers on the pod IP.
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(b) = run_ok(std::process::Command::new("curl").args([
            "-sf",
            "-m",
            "2",
            &format!("http://{ip}/"),
        ])) {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("node-runtime test web server"), "{body:?}");

    // PodSandboxStats: the pod's interface counted that HTTP exchange, and its one
    // container is in it with its processes.
    let stats = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1, "{stats:?}");
    let linux = stats[0].linux.clone().unwrap();
    let eth0 = linux.network.unwrap().default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(
        eth0.rx_bytes.unwrap().value > 0 && eth0.tx_bytes.unwrap().value > 0,
        "{eth0:?}"
    );
    assert_eq!(linux.containers.len(), 1);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert!(
        reserved_ips(&ipam_dir).is_empty(),
        "IP not released on stop"
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_dir(dirs.base.join("cni-cache"))
            .unwrap()
            .count(),
        0
    );
    let routes = run_ok(std::process::Command::new("ip").args(["route", "show", &ip])).unwrap();
    assert!(
        routes.trim().is_empty(),
        "host route to {ip} left: {routes}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_add_is_undone_and_reported() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let ipam_dir = dirs
        .write_ptp_network(&subnet(1), &["no-such-plugin"])
        .unwrap();
    let err = run_sandbox(&mut rt, &pod_config("doomed"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("\"no-such-plugin\" not found"),
        "{err}"
    );
    assert!(
        reserved_ips(&ipam_dir).is_empty(),
        "the IP from the first plugin leaked"
    );
    assert!(all_sandboxes(&mut rt).await.is_empty());
    let netns = run_ok(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    let leaked: Vec<&str> = netns
        .lines()
        .filter(|l| l.starts_with("runtime-shim-"))
        .filter(|l| {
            // Only ours: other tests may run pods at the same time.
            std::fs::read_dir(dirs.base.join("state/sandboxes"))
                .map(|mut d| d.any(|e| l.contains(&e.unwrap().file_name().to_string_lossy()[..16])))
                .unwrap_or(false)
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// SIGKILLs a process when dropped: the stalled test plugin, even if the test fails.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid; no memory is involved.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// A CNI plugin that logs each call to `calls` and stalls on ADD until killed, after
/// writing its pid to `pid`: it holds runtime-shim inside CNI ADD for as long as the
/// test needs.
fn write_stalling_plugin(dirs: &ShimDirs, calls: &Path, pid: &Path) -> &'static str {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        r#"#!/bin/sh
cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS" >>'{calls}'
case "$CNI_COMMAND" in
ADD) echo $$ >'{pid}.tmp' && mv '{pid}.tmp' '{pid}' && exec sleep 300 ;;
VERSION) echo '{{"cniVersion":"0.4.0","supportedVersions":["0.3.1","0.4.0"]}}' ;;
esac
"#,
        calls = calls.display(),
        pid = pid.display(),
    );
    let path = dirs.cni_bin_dir().join("stall");
    std::fs::create_dir_all(dirs.cni_bin_dir()).unwrap();
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    "stall"
}

/// Files in `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_during_cni_add_leaves_nothing_after_restart() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let (calls, pid_file) = (dirs.base.join("stall.calls"), dirs.base.join("stall.pid"));
    // ptp first, so that the attachment is really half-made when the daemon dies: a
    // veth, a host route and a host-local reservation exist, the stall plugin's ADD has
    // not returned.
    let stall = write_stalling_plugin(&dirs, &calls, &pid_file);
    let ipam_dir = dirs.write_ptp_network(&subnet(2), &[stall]).unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let run = tokio::spawn(async move { run_sandbox(&mut rt, &pod_config("interrupted")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stall plugin never got ADD: {}",
            shim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plugin = KillOnDrop(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    );
    // (The daemon's start-up GC asked the plugins for their VERSION before.)
    let log = std::fs::read_to_string(&calls).unwrap();
    let add = log
        .lines()
        .find(|l| l.starts_with("ADD "))
        .unwrap_or_else(|| panic!("no ADD: {log}"));
    let fields: Vec<&str> = add.split_whitespace().collect();
    let (sandbox, netns) = (fields[1].to_string(), std::path::PathBuf::from(fields[2]));
    assert!(netns.exists(), "ADD ran without the pinned netns {netns:?}");
    let ips = reserved_ips(&ipam_dir);
    assert_eq!(ips.len(), 1, "ptp's ADD did not reserve an IP: {ips:?}");

    shim.crash();
    drop(plugin);
    assert!(run.await.unwrap().is_err(), "RunPodSandbox answered");

    // Recovery runs before the restarted daemon serves.
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let mut rt = shim.runtime().await.unwrap();
    let pods = all_sandboxes(&mut rt).await;
    assert!(pods.is_empty(), "an unfinished sandbox is listed: {pods:?}");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("DEL {sandbox} "))),
        "no CNI DEL for {sandbox}: {log}\n{}",
        shim.log_text()
    );
    assert!(!netns.exists(), "{netns:?} left pinned");
    assert!(
        reserved_ips(&ipam_dir).is_empty(),
        "host-local still holds {ips:?}"
    );
    let routes = run_ok(std::process::Command::new("ip").args(["route", "show", &ips[0]])).unwrap();
    assert!(routes.trim().is_empty(), "host route left: {routes}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let base = dirs.base.display().to_string();
    let netns_name = netns.display().to_string();
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&base) || l.contains(&netns_name))
        .collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:?}");
    // The pod's PID mode is POD (CRI's zero value), so it had an infra process too.
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| p.file_name().to_string_lossy() != shim.pid().to_string())
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&base))
        .collect();
    assert!(processes.is_empty(), "processes left: {processes:?}");
    for dir in [
        dirs.state().join("sandboxes"),
        dirs.root().join("sandboxes"),
        dirs.root().join("sandboxes-setup"),
        dirs.cni_cache_dir(),
    ] {
        assert_eq!(entries(&dir), Vec::<String>::new(), "left in {dir:?}");
    }
}
