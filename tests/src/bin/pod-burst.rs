//! Creates N pods at once (or, with `--one-by-one`, each once the one before is Ready)
//! and prints, one line per pod, the milliseconds from its own create request until a
//! watch sees it Running and Ready: the pod startup SLO, with a clock per pod.
//! `hack/bench*.sh` use it for both of their startup figures. (A `kubectl apply` of a
//! List creates the pods one after another, which would charge every pod with the whole
//! apply; a `kubectl apply` per pod charges it with kubectl's own start.)
//!
//!   pod-burst --kubeconfig PATH --node NODE --image IMAGE [--count N] [--prefix P]
//!             [--one-by-one] [--phase PHASE]
//!
//! The pods are labelled bench=NODE, phase=PHASE (default conc; what the scripts delete
//! afterwards).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.iter().flatten().all(|c| c.ready)
        && status
            .container_statuses
            .as_ref()
            .is_some_and(|c| !c.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let need = |n: &str| arg(n).ok_or_else(|| anyhow::anyhow!("{n} is required"));
    let kubeconfig = need("--kubeconfig")?;
    let node = need("--node")?;
    let image = need("--image")?;
    let count: usize = arg("--count").map(|c| c.parse()).transpose()?.unwrap_or(30);
    let prefix = arg("--prefix").unwrap_or_else(|| "c".into());
    let phase = arg("--phase").unwrap_or_else(|| "conc".into());
    let one_by_one = std::env::args().any(|a| a == "--one-by-one");
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let selector = format!("bench={node},phase={phase}");

    // The watch runs before the first create, so no transition is missed.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = watcher(pods.clone(), watcher::Config::default().labels(&selector));
    tokio::spawn(async move {
        let mut events = watch.applied_objects().boxed();
        while let Ok(Some(pod)) = events.try_next().await {
            if ready(&pod) {
                let _ = seen_tx.send((pod.metadata.name.unwrap_or_default(), Instant::now()));
            }
        }
    });

    let manifest = |i: usize| -> (String, Pod) {
        let name = format!("{prefix}{i}-{node}");
        let pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": node, "phase": phase}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]},
        }))
        .expect("a valid pod");
        (name, pod)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut next_ready = async || {
        tokio::time::timeout_at(deadline, seen_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("pods not Ready 300 s after the first creation"))?
            .ok_or_else(|| anyhow::anyhow!("the pod watch ended"))
    };

    if one_by_one {
        for i in 1..=count {
            let (name, pod) = manifest(i);
            let t0 = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            loop {
                let (seen, at) = next_ready().await?;
                if seen == name {
                    println!("{}", at.duration_since(t0).as_millis());
                    break;
                }
            }
        }
        return Ok(());
    }

    let creates = (1..=count).map(|i| {
        let pods = pods.clone();
        let (name, pod) = manifest(i);
        async move {
            let t0 = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok((name, t0))
        }
    });
    let started: HashMap<String, Instant> = futures::future::try_join_all(creates)
        .await?
        .into_iter()
        .collect();

    let mut latencies = HashMap::new();
    while latencies.len() < count {
        let (name, at) = next_ready().await?;
        if let Some(t0) = started.get(&name) {
            latencies
                .entry(name)
                .or_insert_with(|| at.duration_since(*t0));
        }
    }
    for d in latencies.values() {
        println!("{}", d.as_millis());
    }
    Ok(())
}
