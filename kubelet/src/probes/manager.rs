//! The probes of one pod: a prober task per running container and probe kind, replaced
//! when the container is (a new container ID starts from the initial verdicts), and
//! read back as each container's health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::handler::Target;
use super::prober::Prober;
use super::{Kind, Verdict};
use crate::cri::CriClient;

/// A running app container as the runtime reports it.
pub struct RunningContainer<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub started_at: SystemTime,
}

/// What the probes say about a running container (upstream's `started` and `ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerHealth {
    pub started: bool,
    pub ready: bool,
}

/// A container whose liveness or startup probe failed past its threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub name: String,
    pub container_id: String,
    pub kind: Kind,
}

struct Running {
    task: JoinHandle<()>,
    verdict: watch::Receiver<Verdict>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probers of one container attempt.
struct ContainerProbes {
    container_id: String,
    probes: HashMap<Kind, Running>,
}

impl ContainerProbes {
    fn verdict(&self, kind: Kind) -> Option<Verdict> {
        self.probes.get(&kind).map(|r| *r.verdict.borrow())
    }
}

pub struct PodProbes {
    cri: CriClient,
    client: kube::Client,
    notify: Arc<Notify>,
    containers: HashMap<String, ContainerProbes>,
}

fn probe_of(c: &Container, kind: Kind) -> Option<&Probe> {
    match kind {
        Kind::Liveness => c.liveness_probe.as_ref(),
        Kind::Readiness => c.readiness_probe.as_ref(),
        Kind::Startup => c.startup_probe.as_ref(),
    }
}

impl PodProbes {
    pub fn new(cri: CriClient, client: kube::Client) -> Self {
        PodProbes {
            cri,
            client,
            notify: Arc::new(Notify::new()),
            containers: HashMap::new(),
        }
    }

    /// Notified whenever a verdict changes (a permit is kept if nobody waits).
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Starts probers for containers that run a new attempt, and stops those of
    /// containers that no longer run.
    pub fn sync(&mut self, pod: &Pod, pod_ip: &str, running: &[RunningContainer<'_>]) {
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        self.containers.retain(|name, probes| {
            running
                .iter()
                .any(|r| r.name == name && r.id == probes.container_id)
        });
        let pod = Arc::new(pod.clone());
        for r in running {
            let Some(c) = containers.iter().find(|c| c.name == r.name) else {
                continue;
            };
            if self.containers.contains_key(r.name) {
                continue;
            }
            let target = Target {
                cri: self.cri.clone(),
                container_id: r.id.to_string(),
                pod_ip: pod_ip.to_string(),
                container: c.clone(),
            };
            let mut probes = HashMap::new();
            // Startup first: the others wait on its verdict.
            for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                let Some(probe) = probe_of(c, kind) else {
                    continue;
                };
                let (tx, rx) = watch::channel(kind.initial());
                let startup = match kind {
                    Kind::Startup => None,
                    _ => probes
                        .get(&Kind::Startup)
                        .map(|s: &Running| s.verdict.clone()),
                };
                let prober = Prober {
                    kind,
                    probe: probe.clone(),
                    target: target.clone(),
                    started_at: r.started_at,
                    startup,
                    verdict: tx,
                    notify: self.notify.clone(),
                    client: self.client.clone(),
                    pod: pod.clone(),
                };
                let task = tokio::spawn(prober.run());
                probes.insert(kind, Running { task, verdict: rx });
            }
            self.containers.insert(
                r.name.to_string(),
                ContainerProbes {
                    container_id: r.id.to_string(),
                    probes,
                },
            );
        }
    }

    /// Upstream's UpdatePodStatus for a running container: started once its startup
    /// probe succeeded (or it has none), ready once started and its readiness probe
    /// succeeded (or it has none). A probed container not synced yet is neither.
    pub fn health(&self, c: &Container, container_id: &str) -> ContainerHealth {
        let probes = self
            .containers
            .get(&c.name)
            .filter(|p| p.container_id == container_id);
        let passed = |kind: Kind| match probe_of(c, kind) {
            None => true,
            Some(_) => probes.and_then(|p| p.verdict(kind)) == Some(Verdict::Success),
        };
        let started = passed(Kind::Startup);
        ContainerHealth {
            started,
            ready: started && passed(Kind::Readiness),
        }
    }

    /// Containers that failed liveness or startup and must be killed.
    pub fn unhealthy(&self) -> Vec<Unhealthy> {
        let mut out = vec![];
        for (name, probes) in &self.containers {
            for kind in [Kind::Liveness, Kind::Startup] {
                if probes.verdict(kind) == Some(Verdict::Failure) {
                    out.push(Unhealthy {
                        name: name.clone(),
                        container_id: probes.container_id.clone(),
                        kind,
                    });
                    break;
                }
            }
        }
        out
    }

    /// Stops the probers of `name` (its container is being killed).
    pub fn forget(&mut self, name: &str) {
        self.containers.remove(name);
    }

    /// Stops every prober (the pod is terminating).
    pub fn stop_all(&mut self) {
        self.containers.clear();
    }
}
