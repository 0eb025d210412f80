//! runtime-shim driving real CNI plugins (Debian's ptp + host-local) the way libcni does:
//! pod IPs, NetworkReady, DEL on removal and after a failed ADD, the result cache.

use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use node_tests::fixture::{run_ok, unique_name};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};
use tonic::transport::Channel;

/// A /24 no other test run on this machine uses.
fn subnet() -> String {
    format!("10.222.{}.0/24", std::process::id() % 250)
}

fn write_conflist(dirs: &ShimDirs, extra_plugin: Option<&str>) -> std::path::PathBuf {
    let ipam_dir = dirs.base.join("host-local");
    let extra = extra_plugin
        .map(|t| format!(r#",{{"type":"{t}"}}"#))
        .unwrap_or_default();
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-test.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"{name}","plugins":[
                {{"type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{dir}",
                  "ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}{extra}]}}"#,
            name = unique_name("net"),
            dir = ipam_dir.display(),
            subnet = subnet(),
        ),
    )
    .unwrap();
    ipam_dir
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

/// IPs host-local has handed out (one file per IP in its data dir).
fn reserved_ips(ipam_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(ipam_dir)
        .map(|rd| {
            rd.flatten()
                .flat_map(|net| {
                    std::fs::read_dir(net.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') && !n.starts_with("last_reserved"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_get_an_ip_that_answers_and_give_it_back() {
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let shim = RuntimeShim::start(&dirs, &reg).unwrap();
    let (mut images, mut rt) = (shim.images().await.unwrap(), shim.runtime().await.unwrap());
    assert!(
        !network_ready(&mut rt).await,
        "NetworkReady without any CNI config"
    );
    let ipam_dir = write_conflist(&dirs, None);
    assert!(network_ready(&mut rt).await);

    let web = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: web.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = pod_config("web");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
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
    let prefix = subnet().trim_end_matches("0/24").to_string();
    assert!(ip.starts_with(&prefix), "{ip} not in {}", subnet());
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
    let ipam_dir = write_conflist(&dirs, Some("no-such-plugin"));
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("doomed")),
            runtime_handler: String::new(),
        })
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
    assert!(
        rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
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
