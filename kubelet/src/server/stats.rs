//! `/stats/summary`: node usage from the kernel ([`host_stats`]) and pod/container
//! usage from CRI stats, gathered into upstream's `statsapi.Summary` ([`super::summary`],
//! what metrics-server and `kubectl top` read).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_cri::v1 as cri;

use super::containers::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
use super::summary::{
    ContainerStats, CpuStats, FsStats, InterfaceStats, MemoryStats, NetworkStats, NodeStats,
    PodReference, PodStats, RuntimeStats, Summary,
};
use super::{Context, host_stats};

/// A rate needs two samples; a first request waits this long for its second one.
const FIRST_SAMPLE_GAP: Duration = Duration::from_millis(200);
/// Samples older than this do not make a meaningful rate.
const MAX_SAMPLE_AGE: Duration = Duration::from_secs(120);

/// Keeps the previous node CPU sample, so `usageNanoCores` is a rate over the time
/// between scrapes, as cAdvisor's is over its housekeeping interval.
pub struct Collector {
    root_dir: PathBuf,
    last_cpu: Mutex<Option<(Instant, u64)>>,
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn from_nanos(nanos: i64) -> String {
    rfc3339(DateTime::from_timestamp_nanos(nanos))
}

impl Collector {
    pub fn new(root_dir: PathBuf) -> Self {
        Collector {
            root_dir,
            last_cpu: Mutex::new(None),
        }
    }

    pub async fn summary(&self, context: &Context) -> Result<Summary> {
        let node = self.node(context).await?;
        let pods = pod_stats(&context.cri).await?;
        Ok(Summary { node, pods })
    }

    async fn node_cpu(&self) -> Option<(u64, Option<u64>)> {
        let previous = self
            .last_cpu
            .lock()
            .ok()
            .and_then(|l| *l)
            .filter(|(at, _)| at.elapsed() < MAX_SAMPLE_AGE);
        let previous = match previous {
            Some(p) if p.0.elapsed() >= FIRST_SAMPLE_GAP => Some(p),
            _ => {
                let first = (Instant::now(), host_stats::cpu_usage_nanos()?);
                tokio::time::sleep(FIRST_SAMPLE_GAP).await;
                Some(first)
            }
        };
        let now = (Instant::now(), host_stats::cpu_usage_nanos()?);
        if let Ok(mut last) = self.last_cpu.lock() {
            *last = Some(now);
        }
        let rate = previous.and_then(|(at, usage)| {
            let elapsed = now.0.duration_since(at).as_nanos();
            (elapsed > 0)
                .then(|| (u128::from(now.1.saturating_sub(usage)) * 1_000_000_000 / elapsed) as u64)
        });
        Some((now.1, rate))
    }

    async fn node(&self, context: &Context) -> Result<NodeStats> {
        let time = rfc3339(Utc::now());
        let (usage, rate) = self.node_cpu().await.context("reading /proc/stat")?;
        let memory = host_stats::memory().context("reading memory usage")?;
        let interfaces: Vec<InterfaceStats> = host_stats::interfaces()
            .into_iter()
            .map(|i| InterfaceStats {
                name: i.name,
                rx_bytes: Some(i.rx_bytes),
                rx_errors: Some(i.rx_errors),
                tx_bytes: Some(i.tx_bytes),
                tx_errors: Some(i.tx_errors),
            })
            .collect();
        let network = interfaces.first().cloned().map(|default| NetworkStats {
            time: time.clone(),
            default,
            interfaces: interfaces.clone(),
        });
        let fs = host_stats::filesystem(&self.root_dir).map(|f| fs_stats(&time, &f));
        let image_fs = image_fs(&context.cri, &time).await;
        Ok(NodeStats {
            node_name: context.node_name.clone(),
            start_time: host_stats::boot_time()
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .map(rfc3339)
                .unwrap_or_else(|| time.clone()),
            cpu: CpuStats {
                time: time.clone(),
                usage_nano_cores: rate,
                usage_core_nano_seconds: Some(usage),
            },
            memory: MemoryStats {
                time: time.clone(),
                available_bytes: Some(memory.capacity.saturating_sub(memory.working_set)),
                usage_bytes: Some(memory.usage),
                working_set_bytes: Some(memory.working_set),
                rss_bytes: memory.rss,
                page_faults: memory.page_faults,
                major_page_faults: memory.major_page_faults,
            },
            network,
            fs,
            runtime: image_fs.map(|image_fs| RuntimeStats { image_fs }),
        })
    }
}

fn fs_stats(time: &str, f: &host_stats::Filesystem) -> FsStats {
    FsStats {
        time: time.to_string(),
        available_bytes: Some(f.available),
        capacity_bytes: Some(f.capacity),
        used_bytes: Some(f.used),
        inodes_free: Some(f.inodes_free),
        inodes: Some(f.inodes),
        inodes_used: Some(f.inodes.saturating_sub(f.inodes_free)),
    }
}

/// The runtime's image filesystem: capacity from statvfs of its mountpoint, usage
/// from CRI ImageFsInfo.
async fn image_fs(cri_client: &crate::cri::CriClient, time: &str) -> Option<FsStats> {
    let info = cri_client
        .image_client()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .ok()?
        .into_inner();
    let usage = info.image_filesystems.into_iter().next()?;
    let mountpoint = usage
        .fs_id
        .as_ref()
        .map(|f| f.mountpoint.clone())
        .unwrap_or_default();
    let mut stats = host_stats::filesystem(std::path::Path::new(&mountpoint))
        .map(|f| fs_stats(time, &f))
        .unwrap_or_else(|| FsStats {
            time: time.to_string(),
            ..Default::default()
        });
    stats.used_bytes = usage.used_bytes.map(|v| v.value);
    stats.inodes_used = usage.inodes_used.map(|v| v.value);
    Some(stats)
}

fn cpu(usage: Option<&cri::CpuUsage>) -> CpuStats {
    CpuStats {
        time: from_nanos(usage.map_or(0, |u| u.timestamp)),
        usage_nano_cores: usage
            .and_then(|u| u.usage_nano_cores.as_ref())
            .map(|v| v.value),
        usage_core_nano_seconds: usage
            .and_then(|u| u.usage_core_nano_seconds.as_ref())
            .map(|v| v.value),
    }
}

fn memory(usage: Option<&cri::MemoryUsage>) -> MemoryStats {
    let value =
        |f: fn(&cri::MemoryUsage) -> Option<&cri::UInt64Value>| usage.and_then(f).map(|v| v.value);
    MemoryStats {
        time: from_nanos(usage.map_or(0, |u| u.timestamp)),
        // Runtimes report 0 for a container without a memory limit, where cAdvisor
        // (and so upstream) leaves the field out.
        available_bytes: value(|u| u.available_bytes.as_ref()).filter(|v| *v > 0),
        usage_bytes: value(|u| u.usage_bytes.as_ref()),
        working_set_bytes: value(|u| u.working_set_bytes.as_ref()),
        rss_bytes: value(|u| u.rss_bytes.as_ref()),
        page_faults: value(|u| u.page_faults.as_ref()),
        major_page_faults: value(|u| u.major_page_faults.as_ref()),
    }
}

fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.fold(None, |acc, v| match (acc, v) {
        (None, v) => v,
        (acc, None) => acc,
        (Some(a), Some(b)) => Some(a + b),
    })
}

/// Pods with a ready sandbox and their running containers' CRI stats. Pod totals are
/// the sums of their containers (the runtime's own pod stats are not required).
async fn pod_stats(cri_client: &crate::cri::CriClient) -> Result<Vec<PodStats>> {
    let mut runtime = cri_client.runtime_client();
    let sandboxes = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("CRI ListPodSandbox")?
        .into_inner()
        .items;
    let containers = runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("CRI ListContainers")?
        .into_inner()
        .containers;
    let stats = runtime
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .context("CRI ListContainerStats")?
        .into_inner()
        .stats;
    let stats: BTreeMap<&str, &cri::ContainerStats> = stats
        .iter()
        .filter_map(|s| Some((s.attributes.as_ref()?.id.as_str(), s)))
        .collect();

    let mut pods = Vec::new();
    for sandbox in &sandboxes {
        let label = |k: &str| sandbox.labels.get(k).cloned().unwrap_or_default();
        let mut container_stats: Vec<ContainerStats> = containers
            .iter()
            .filter(|c| c.pod_sandbox_id == sandbox.id)
            .map(|c| {
                let s = stats.get(c.id.as_str());
                ContainerStats {
                    name: c
                        .labels
                        .get(LABEL_CONTAINER_NAME)
                        .cloned()
                        .unwrap_or_default(),
                    start_time: from_nanos(c.created_at),
                    cpu: cpu(s.and_then(|s| s.cpu.as_ref())),
                    memory: memory(s.and_then(|s| s.memory.as_ref())),
                    rootfs: s.and_then(|s| s.writable_layer.as_ref()).map(|w| FsStats {
                        // Some runtimes leave the layer's timestamp unset.
                        time: from_nanos(if w.timestamp > 0 {
                            w.timestamp
                        } else {
                            Utc::now().timestamp_nanos_opt().unwrap_or_default()
                        }),
                        used_bytes: w.used_bytes.as_ref().map(|v| v.value),
                        inodes_used: w.inodes_used.as_ref().map(|v| v.value),
                        ..Default::default()
                    }),
                }
            })
            .collect();
        container_stats.sort_by(|a, b| a.name.cmp(&b.name));
        let time = container_stats
            .first()
            .map(|c| c.cpu.time.clone())
            .unwrap_or_else(|| rfc3339(Utc::now()));
        let pod_cpu = CpuStats {
            time: time.clone(),
            usage_nano_cores: sum(container_stats.iter().map(|c| c.cpu.usage_nano_cores)),
            usage_core_nano_seconds: sum(container_stats
                .iter()
                .map(|c| c.cpu.usage_core_nano_seconds)),
        };
        let pod_memory = MemoryStats {
            time: time.clone(),
            usage_bytes: sum(container_stats.iter().map(|c| c.memory.usage_bytes)),
            working_set_bytes: sum(container_stats.iter().map(|c| c.memory.working_set_bytes)),
            rss_bytes: sum(container_stats.iter().map(|c| c.memory.rss_bytes)),
            ..Default::default()
        };
        let ephemeral_used = sum(container_stats
            .iter()
            .map(|c| c.rootfs.as_ref().and_then(|r| r.used_bytes)));
        pods.push(PodStats {
            pod_ref: PodReference {
                name: label(LABEL_POD_NAME),
                namespace: label(LABEL_POD_NAMESPACE),
                uid: label(LABEL_POD_UID),
            },
            start_time: from_nanos(sandbox.created_at),
            containers: container_stats,
            cpu: pod_cpu,
            memory: pod_memory,
            network: None,
            ephemeral_storage: ephemeral_used.map(|used| FsStats {
                time,
                used_bytes: Some(used),
                ..Default::default()
            }),
        });
    }
    pods.sort_by(|a, b| {
        (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
    });
    Ok(pods)
}
