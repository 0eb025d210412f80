//! Drives a CRI runtime through N pod lifecycles (RunPodSandbox, CreateContainer,
//! StartContainer, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox)
//! one after another and prints per-call latency percentiles as JSON. Used by
//! `hack/bench-cri.sh` to measure runtime-shim and containerd the same way.
//!
//!   cri-bench --socket PATH --image IMAGE [--count N] [--log-dir DIR]
//!   cri-bench --socket PATH --image IMAGE --hold N --ready-file F [--log-dir DIR]
//!   cri-bench --socket PATH --remove-all
//!
//! `--hold` instead starts N pods (sandbox + one `sleep` container each), creates F once
//! all run, waits until F is removed (the caller measures memory meanwhile), then stops
//! and removes them. `--remove-all` stops and removes every sandbox the runtime has: the
//! benchmark's teardown, so that pods a failed run left behind do not outlive it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use node_tests::runtime_shim::connect;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let socket = arg("--socket").ok_or_else(|| anyhow::anyhow!("--socket PATH is required"))?;
    if std::env::args().any(|a| a == "--remove-all") {
        let channel = connect(std::path::Path::new(&socket)).await?;
        return remove_all(&mut runtime_service_client::RuntimeServiceClient::new(
            channel,
        ))
        .await;
    }
    let image = arg("--image").ok_or_else(|| anyhow::anyhow!("--image IMAGE is required"))?;
    let count: usize = arg("--count").map(|c| c.parse()).transpose()?.unwrap_or(20);
    let log_dir = arg("--log-dir").unwrap_or_else(|| "/tmp/cri-bench-logs".into());
    let channel = connect(std::path::Path::new(&socket)).await?;
    let mut rt = runtime_service_client::RuntimeServiceClient::new(channel.clone());
    let mut images = image_service_client::ImageServiceClient::new(channel);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let mut timings: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    macro_rules! timed {
        ($name:expr, $call:expr) => {{
            let t = Instant::now();
            let r = $call.await?;
            timings.entry($name).or_default().push(t.elapsed());
            r.into_inner()
        }};
    }
    if let Some(n) = arg("--hold") {
        let ready =
            arg("--ready-file").ok_or_else(|| anyhow::anyhow!("--hold needs --ready-file F"))?;
        return hold(
            &mut rt,
            &image,
            &log_dir,
            n.parse()?,
            std::path::Path::new(&ready),
        )
        .await;
    }
    for i in 0..count {
        let pod = pod_config(i, &log_dir);
        let sandbox = timed!(
            "RunPodSandbox",
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
        )
        .pod_sandbox_id;
        let container = timed!(
            "CreateContainer",
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(container_config(&image)),
                sandbox_config: Some(pod.clone()),
            })
        )
        .container_id;
        timed!(
            "StartContainer",
            rt.start_container(StartContainerRequest {
                container_id: container.clone()
            })
        );
        timed!(
            "StopContainer",
            rt.stop_container(StopContainerRequest {
                container_id: container.clone(),
                timeout: 0,
            })
        );
        timed!(
            "RemoveContainer",
            rt.remove_container(RemoveContainerRequest {
                container_id: container
            })
        );
        timed!(
            "StopPodSandbox",
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone()
            })
        );
        timed!(
            "RemovePodSandbox",
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox
            })
        );
    }
    let mut out = serde_json::Map::new();
    for (name, mut v) in timings {
        v.sort();
        let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        out.insert(
            name.to_string(),
            serde_json::json!({"p50_ms": p(0.5), "p90_ms": p(0.9), "p95_ms": p(0.95), "n": v.len()}),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

fn pod_config(i: usize, log_dir: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{i}"),
            namespace: "bench".into(),
            uid: format!("bench-{}-{i}", std::process::id()),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        log_directory: format!("{log_dir}/{i}"),
        // What a kubelet sends (containerd runs its pause container either way).
        linux: Some(node_tests::runtime_shim::kubelet_linux_config()),
        ..Default::default()
    }
}

fn container_config(image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "c.log".into(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

type Runtime = runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

async fn remove_all(rt: &mut Runtime) -> anyhow::Result<()> {
    let sandboxes = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    for sandbox in sandboxes {
        remove_sandbox(rt, sandbox.id).await?;
    }
    Ok(())
}

/// Stopping a sandbox stops its containers; removing it removes them.
async fn remove_sandbox(rt: &mut Runtime, id: String) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await?;
    Ok(())
}

/// `n` running pods until `ready` is removed; then none.
async fn hold(
    rt: &mut Runtime,
    image: &str,
    log_dir: &str,
    n: usize,
    ready: &std::path::Path,
) -> anyhow::Result<()> {
    let mut sandboxes = Vec::new();
    for i in 0..n {
        let pod = pod_config(i, log_dir);
        let sandbox = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        sandboxes.push(sandbox.clone());
        let container = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox,
                config: Some(container_config(image)),
                sandbox_config: Some(pod),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: container,
        })
        .await?;
    }
    std::fs::write(ready, "")?;
    while ready.exists() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in sandboxes {
        remove_sandbox(rt, id).await?;
    }
    Ok(())
}
