//! One worker per pod: an explicit state machine driven by the latest Pod object (or
//! its disappearance) and a periodic tick. Each step compares what the pod asks for
//! with what the runtime has, does one round of work, and reports status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::spec::{self, LABEL_CONTAINER_NAME, LABEL_POD_UID, PodIdentity};
use super::{PodContext, now};

/// Restart backoff: 10 s doubling to 5 min, as upstream.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No sandbox: the next step creates one.
    NeedsSandbox,
    /// Sandbox up; containers are reconciled every step.
    Running { sandbox_id: String, pod_ip: String },
    /// Deletion requested: stopping everything, then removing the API object.
    Terminating,
    /// Nothing of the pod is left in the runtime; the worker exits.
    Done,
}

#[derive(Default)]
struct Backoff {
    delay: HashMap<String, Duration>,
    until: HashMap<String, Instant>,
}

pub struct Worker {
    ctx: PodContext,
    rx: watch::Receiver<Option<Pod>>,
    phase: Phase,
    backoff: Backoff,
    /// Waiting reasons from failed steps (image pulls), reported in status.
    waiting: HashMap<String, (String, String)>,
    last_status: Option<Value>,
    start_time: String,
}

impl Worker {
    pub fn new(ctx: PodContext, rx: watch::Receiver<Option<Pod>>) -> Self {
        Worker {
            ctx,
            rx,
            phase: Phase::NeedsSandbox,
            backoff: Backoff::default(),
            waiting: HashMap::new(),
            last_status: None,
            start_time: now(),
        }
    }

    pub async fn run(mut self) {
        loop {
            let pod = self.rx.borrow_and_update().clone();
            if let Err(e) = self.step(pod).await {
                tracing::warn!(error = %format!("{e:#}"), "pod sync failed; retrying");
            }
            if self.phase == Phase::Done {
                return;
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn step(&mut self, pod: Option<Pod>) -> anyhow::Result<()> {
        let Some(pod) = pod else {
            // Gone from the API (force-deleted): remove whatever the runtime still has.
            self.teardown(0).await?;
            self.phase = Phase::Done;
            return Ok(());
        };
        if let Some(grace) = pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|_| pod.metadata.deletion_grace_period_seconds.unwrap_or(30))
        {
            self.phase = Phase::Terminating;
            self.teardown(grace).await?;
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api
                .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.phase = Phase::Done;
            return Ok(());
        }
        if self.phase == Phase::NeedsSandbox {
            self.phase = self.ensure_sandbox(&pod).await?;
        }
        let Phase::Running { sandbox_id, pod_ip } = self.phase.clone() else {
            return Ok(());
        };
        let containers = self.sync_containers(&pod, &sandbox_id, &pod_ip).await?;
        self.report(&pod, &pod_ip, &containers).await
    }

    /// Adopts a ready sandbox of this pod (kubelet restart) or creates one.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> anyhow::Result<Phase> {
        let uid = PodIdentity::of(pod).uid;
        let mut rt = self.ctx.cri.runtime_client();
        let existing = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: HashMap::from([(LABEL_POD_UID.into(), uid)]),
                    state: Some(cri::PodSandboxStateValue {
                        state: cri::PodSandboxState::SandboxReady as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        let sandbox_id = match existing.first() {
            Some(s) => s.id.clone(),
            None => {
                let config =
                    spec::sandbox_config(pod, 0, &self.ctx.cluster_dns, &self.ctx.cluster_domain);
                rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id
            }
        };
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        let pod_ip = status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| self.ctx.host_ip.clone());
        Ok(Phase::Running { sandbox_id, pod_ip })
    }

    /// Starts what is missing, restarts what the restart policy says, and returns the
    /// current CRI status of the latest attempt of each container.
    async fn sync_containers(
        &mut self,
        pod: &Pod,
        sandbox_id: &str,
        pod_ip: &str,
    ) -> anyhow::Result<HashMap<String, (cri::ContainerStatus, u32)>> {
        let mut rt = self.ctx.cri.runtime_client();
        let listed = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox_id.to_string(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        let mut latest: HashMap<String, cri::Container> = HashMap::new();
        for c in listed {
            let name = c
                .labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            let attempt = c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            if latest
                .get(&name)
                .is_none_or(|l| l.metadata.as_ref().map(|m| m.attempt).unwrap_or(0) < attempt)
            {
                latest.insert(name, c);
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut out = HashMap::new();
        for c in &spec.containers {
            let current = latest.get(&c.name);
            let attempt = current.and_then(|x| x.metadata.as_ref()).map(|m| m.attempt);
            let status = match current {
                Some(x) => Some(
                    rt.container_status(cri::ContainerStatusRequest {
                        container_id: x.id.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status
                    .unwrap_or_default(),
                ),
                None => None,
            };
            let next_attempt = match (&status, attempt) {
                (None, _) => Some(0),
                (Some(s), Some(a)) if s.state == cri::ContainerState::ContainerExited as i32 => {
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => s.exit_code != 0,
                        _ => true,
                    };
                    restart.then_some(a + 1)
                }
                _ => None,
            };
            if let Some(next) = next_attempt {
                if next > 0 && !self.backoff_elapsed(&c.name, status.as_ref()) {
                    self.waiting.insert(
                        c.name.clone(),
                        (
                            "CrashLoopBackOff".into(),
                            format!("back-off restarting failed container {}", c.name),
                        ),
                    );
                } else {
                    match self.start_container(pod, c, next, sandbox_id, pod_ip).await {
                        Ok(()) => {
                            self.waiting.remove(&c.name);
                        }
                        Err((reason, message)) => {
                            self.waiting.insert(c.name.clone(), (reason, message));
                        }
                    }
                }
            }
            if let (Some(s), Some(a)) = (status, attempt) {
                out.insert(c.name.clone(), (s, a));
            }
        }
        Ok(out)
    }

    /// Restart backoff after a container exited: 10 s doubling to 5 min, reset when the
    /// container had run for 10 minutes.
    fn backoff_elapsed(&mut self, name: &str, status: Option<&cri::ContainerStatus>) -> bool {
        let now = Instant::now();
        if let Some(until) = self.backoff.until.get(name) {
            if now < *until {
                return false;
            }
            self.backoff.until.remove(name);
            return true;
        }
        let ran = status
            .map(|s| Duration::from_nanos((s.finished_at - s.started_at).max(0) as u64))
            .unwrap_or_default();
        let delay = if ran > Duration::from_secs(600) {
            BACKOFF_START
        } else {
            self.backoff
                .delay
                .get(name)
                .map(|d| (*d * 2).min(BACKOFF_MAX))
                .unwrap_or(BACKOFF_START)
        };
        self.backoff.delay.insert(name.to_string(), delay);
        self.backoff.until.insert(name.to_string(), now + delay);
        false
    }

    async fn start_container(
        &self,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        attempt: u32,
        sandbox_id: &str,
        pod_ip: &str,
    ) -> Result<(), (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let mut images = self.ctx.cri.image_client();
        let present = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().image.is_some())
            .unwrap_or(false);
        let policy = c.image_pull_policy.as_deref().unwrap_or(
            if image.ends_with(":latest") || !image.contains(':') {
                "Always"
            } else {
                "IfNotPresent"
            },
        );
        if (!present && policy != "Never") || policy == "Always" {
            if let Err(e) = images
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            {
                return Err(("ErrImagePull".into(), e.message().to_string()));
            }
        } else if !present {
            return Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            ));
        }
        let sandbox_config =
            spec::sandbox_config(pod, 0, &self.ctx.cluster_dns, &self.ctx.cluster_domain);
        let config = spec::container_config(pod, c, attempt, pod_ip, &self.ctx.host_ip);
        let mut rt = self.ctx.cri.runtime_client();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.message().to_string()))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .map_err(|e| ("RunContainerError".to_string(), e.message().to_string()))?;
        Ok(())
    }

    /// Stops and removes every sandbox (and so every container) of the pod.
    async fn teardown(&mut self, grace: i64) -> anyhow::Result<()> {
        let uid = self.ctx.uid.clone();
        let mut rt = self.ctx.cri.runtime_client();
        let sandboxes = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: HashMap::from([(LABEL_POD_UID.into(), uid)]),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        for s in &sandboxes {
            let containers = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: s.id.clone(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .containers;
            // Containers get the grace period in parallel, as upstream.
            let stops = containers.iter().map(|c| {
                let mut rt = rt.clone();
                let id = c.id.clone();
                async move {
                    rt.stop_container(cri::StopContainerRequest {
                        container_id: id,
                        timeout: grace,
                    })
                    .await
                }
            });
            for r in futures::future::join_all(stops).await {
                r?;
            }
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await?;
        }
        Ok(())
    }

    async fn report(
        &mut self,
        pod: &Pod,
        pod_ip: &str,
        containers: &HashMap<String, (cri::ContainerStatus, u32)>,
    ) -> anyhow::Result<()> {
        let status = super::status::pod_status(
            pod,
            pod_ip,
            &self.ctx.host_ip,
            &self.start_time,
            containers,
            &self.waiting,
            self.ctx.runtime_name.as_str(),
            self.last_status.as_ref(),
        );
        if self.last_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        self.last_status = Some(status);
        Ok(())
    }
}
