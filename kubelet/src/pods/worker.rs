//! One worker per pod: an explicit state machine driven by the latest Pod object (or
//! its disappearance) and a periodic tick. Each step compares what the pod asks for
//! with what the runtime has, does one round of work, and reports status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::fieldpath::PodAddresses;
use super::spec::{self, LABEL_CONTAINER_NAME, LABEL_POD_UID, PodIdentity};
use super::status::{RuntimeView, StatusInputs, pod_status};
use super::{PodContext, env, events, now, pull_secrets};
use crate::volumes::{self, PodVolumes};

/// Restart backoff: 10 s doubling to 5 min, as upstream.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_secs(1);

/// The pod's sandbox as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sandbox {
    id: String,
    pod_ip: String,
}

/// When volume set-up may be tried again: upstream's back-off for failed volume
/// operations, 0.5 s doubling to 2 min 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct MountRetry {
    not_before: Option<Instant>,
    delay: Duration,
}

const MOUNT_BACKOFF_START: Duration = Duration::from_millis(500);
const MOUNT_BACKOFF_MAX: Duration = Duration::from_secs(122);

impl MountRetry {
    fn due(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }

    fn after_failure(self) -> Self {
        let delay = if self.delay.is_zero() {
            MOUNT_BACKOFF_START
        } else {
            (self.delay * 2).min(MOUNT_BACKOFF_MAX)
        };
        MountRetry {
            not_before: Some(Instant::now() + delay),
            delay,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Volumes are not all set up yet: retried with back-off, reported as FailedMount.
    MountingVolumes(MountRetry),
    /// No sandbox: the next step creates one (or adopts the running one).
    NeedsSandbox,
    /// Init containers run one after the other, each to a zero exit.
    Initializing(Sandbox),
    /// Init containers done; app containers are reconciled every step.
    Running(Sandbox),
    /// An init container failed under restartPolicy Never: the pod is Failed and
    /// nothing more is started.
    InitFailed(Sandbox),
    /// Deletion requested: stopping everything, then removing the API object.
    Terminating,
    /// Nothing of the pod is left in the runtime; the worker exits.
    Done,
}

/// What the init containers ask for next.
enum InitStep {
    /// One was just started.
    Started,
    /// One still runs, is backing off, or could not be started.
    Wait,
    /// All exited 0.
    Complete,
    /// One failed and the restart policy is Never.
    Failed,
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
    volumes: PodVolumes,
    /// The last FailedMount message, so an unchanged failure is not re-reported.
    mount_error: Option<String>,
    /// Waiting reasons from failed steps (image pulls), reported in status.
    waiting: HashMap<String, (String, String)>,
    last_status: Option<Value>,
    start_time: String,
}

impl Worker {
    pub fn new(ctx: PodContext, rx: watch::Receiver<Option<Pod>>) -> Self {
        let volumes = PodVolumes::new(ctx.client.clone(), &ctx.root_dir, &ctx.uid);
        Worker {
            ctx,
            rx,
            phase: Phase::MountingVolumes(MountRetry::default()),
            backoff: Backoff::default(),
            volumes,
            mount_error: None,
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
            self.phase = Phase::Terminating;
            self.teardown(None, 0).await?;
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
            self.teardown(Some(&pod), grace).await?;
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
        if let Phase::MountingVolumes(retry) = self.phase {
            // Volumes come before the sandbox, as upstream: a pod whose volumes
            // cannot be set up never starts anything.
            if !retry.due() {
                return Ok(());
            }
            if !self.sync_volumes(&pod, "").await {
                self.phase = Phase::MountingVolumes(retry.after_failure());
                return self.report(&pod, "", &HashMap::new()).await;
            }
            self.phase = Phase::NeedsSandbox;
        }
        if self.phase == Phase::NeedsSandbox {
            self.phase = Phase::Initializing(self.ensure_sandbox(&pod).await?);
        }
        let sandbox = match &self.phase {
            Phase::Initializing(s) | Phase::Running(s) | Phase::InitFailed(s) => s.clone(),
            _ => return Ok(()),
        };
        if self.volumes.refresh_due() {
            self.sync_volumes(&pod, &sandbox.pod_ip).await;
        }
        let mut view = self.runtime_view(&sandbox.id).await?;
        if let Phase::Initializing(_) = self.phase {
            match self.sync_init_containers(&pod, &sandbox, &view).await {
                InitStep::Wait => {}
                InitStep::Started => view = self.runtime_view(&sandbox.id).await?,
                InitStep::Complete => self.phase = Phase::Running(sandbox.clone()),
                InitStep::Failed => {
                    // Upstream kills a Failed pod: the sandbox (and its IP) goes; the
                    // exited containers stay listed for status.
                    self.ctx
                        .cri
                        .runtime_client()
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: sandbox.id.clone(),
                        })
                        .await?;
                    self.phase = Phase::InitFailed(sandbox.clone());
                }
            }
        }
        if let Phase::Running(_) = self.phase
            && self.sync_containers(&pod, &sandbox, &view).await
        {
            // Something started: report what it is now rather than a tick late.
            view = self.runtime_view(&sandbox.id).await?;
        }
        self.report(&pod, &sandbox.pod_ip, &view).await
    }

    /// Sets up or refreshes the pod's volumes; reports a new failure as a
    /// FailedMount event. Returns whether every volume is ready.
    async fn sync_volumes(&mut self, pod: &Pod, pod_ip: &str) -> bool {
        let addr = PodAddresses {
            pod_ip,
            host_ip: &self.ctx.host_ip,
        };
        match self.volumes.sync(pod, addr).await {
            Ok(()) => {
                self.mount_error = None;
                true
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(pod = %PodIdentity::of(pod).name, error = %message, "volume set-up failed");
                if self.mount_error.as_deref() != Some(message.as_str()) {
                    events::warn(&self.ctx.client, pod, "FailedMount", &message).await;
                    self.mount_error = Some(message);
                }
                false
            }
        }
    }

    /// Adopts a ready sandbox of this pod (kubelet restart) or creates one.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> anyhow::Result<Sandbox> {
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
        Ok(Sandbox {
            id: sandbox_id,
            pod_ip,
        })
    }

    /// The CRI status of the latest attempt of every container in the sandbox.
    async fn runtime_view(&self, sandbox_id: &str) -> anyhow::Result<RuntimeView> {
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
        let mut view = RuntimeView::new();
        for (name, c) in latest {
            let attempt = c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let status = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            view.insert(name, (status, attempt));
        }
        Ok(view)
    }

    /// Runs the init containers in order: the first one that has not exited 0 is
    /// started (or restarted after back-off, unless the restart policy is Never).
    async fn sync_init_containers(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        view: &RuntimeView,
    ) -> InitStep {
        let spec = pod.spec.clone().unwrap_or_default();
        let never = spec.restart_policy.as_deref() == Some("Never");
        let exited = cri::ContainerState::ContainerExited as i32;
        for c in spec.init_containers.iter().flatten() {
            let next = match view.get(&c.name) {
                None => 0,
                Some((s, _)) if s.state != exited => return InitStep::Wait,
                Some((s, _)) if s.exit_code == 0 => continue,
                Some(_) if never => return InitStep::Failed,
                Some((_, attempt)) => attempt + 1,
            };
            let status = view.get(&c.name).map(|(s, _)| s);
            return if self.start_or_back_off(pod, c, next, sandbox, status).await {
                InitStep::Started
            } else {
                InitStep::Wait
            };
        }
        InitStep::Complete
    }

    /// Starts what is missing and restarts what the restart policy says; returns
    /// whether anything was started.
    async fn sync_containers(&mut self, pod: &Pod, sandbox: &Sandbox, view: &RuntimeView) -> bool {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut started = false;
        for c in &spec.containers {
            let current = view.get(&c.name);
            let next_attempt = match current {
                None => Some(0),
                Some((s, a)) if s.state == cri::ContainerState::ContainerExited as i32 => {
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
                started |= self
                    .start_or_back_off(pod, c, next, sandbox, current.map(|(s, _)| s))
                    .await;
            }
        }
        started
    }

    /// Starts attempt `next` of `c` unless it is still backing off; failures become
    /// the container's waiting reason. Returns whether it started.
    async fn start_or_back_off(
        &mut self,
        pod: &Pod,
        c: &Container,
        next: u32,
        sandbox: &Sandbox,
        last: Option<&cri::ContainerStatus>,
    ) -> bool {
        if next > 0 && !self.backoff_elapsed(&c.name, last) {
            let message = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                self.backoff
                    .delay
                    .get(&c.name)
                    .map(Duration::as_secs)
                    .unwrap_or(10),
                c.name,
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref().unwrap_or_default()
            );
            self.set_waiting(pod, &c.name, "CrashLoopBackOff", message)
                .await;
            return false;
        }
        match self.start_container(pod, c, next, sandbox).await {
            Ok(()) => {
                self.waiting.remove(&c.name);
                true
            }
            Err((reason, message)) => {
                self.set_waiting(pod, &c.name, &reason, message).await;
                false
            }
        }
    }

    /// Records why `name` waits; a new reason or message is also an event, as
    /// upstream's `BackOff` and `Failed` events.
    async fn set_waiting(&mut self, pod: &Pod, name: &str, reason: &str, message: String) {
        let entry = (reason.to_string(), message);
        if self.waiting.get(name) == Some(&entry) {
            return;
        }
        let (event_reason, event_message) = match reason {
            "CrashLoopBackOff" => (
                "BackOff",
                "Back-off restarting failed container".to_string(),
            ),
            _ => ("Failed", format!("Error: {}", entry.1)),
        };
        events::warn(&self.ctx.client, pod, event_reason, &event_message).await;
        self.waiting.insert(name.to_string(), entry);
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
        c: &Container,
        attempt: u32,
        sandbox: &Sandbox,
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
        let client = &self.ctx.client;
        let event = |type_: &'static str, reason: &'static str, message: String| async move {
            events::container(client, pod, &c.name, type_, reason, &message).await
        };
        if (!present && policy != "Never") || policy == "Always" {
            event("Normal", "Pulling", format!("Pulling image \"{image}\"")).await;
            let started = Instant::now();
            self.pull(pod, &image)
                .await
                .map_err(|message| ("ErrImagePull".to_string(), message))?;
            let took = started.elapsed();
            event(
                "Normal",
                "Pulled",
                format!("Successfully pulled image \"{image}\" in {took:?}"),
            )
            .await;
        } else if !present {
            return Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            ));
        } else {
            event(
                "Normal",
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            )
            .await;
        }
        let sandbox_config =
            spec::sandbox_config(pod, 0, &self.ctx.cluster_dns, &self.ctx.cluster_domain);
        let config_error = |message: String| ("CreateContainerConfigError".to_string(), message);
        let addr = PodAddresses {
            pod_ip: &sandbox.pod_ip,
            host_ip: &self.ctx.host_ip,
        };
        let env = env::container_env(&self.ctx.client, pod, c, addr)
            .await
            .map_err(config_error)?;
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        let mounts = volumes::container_mounts(self.volumes.ready(), c, privileged, &env)
            .map_err(config_error)?;
        let config = spec::container_config(pod, c, attempt, &env, mounts);
        let mut rt = self.ctx.cri.runtime_client();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.message().to_string()))?
            .into_inner()
            .container_id;
        event("Normal", "Created", format!("Created container {}", c.name)).await;
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .map_err(|e| ("RunContainerError".to_string(), e.message().to_string()))?;
        event("Normal", "Started", format!("Started container {}", c.name)).await;
        Ok(())
    }

    /// Pulls `image` with each credential of the pod's pull secrets that matches it, most
    /// specific first, then anonymously, until one works (upstream's keyring order).
    async fn pull(&self, pod: &Pod, image: &str) -> Result<(), String> {
        let creds = pull_secrets::credentials(&self.ctx.client, pod).await;
        let mut auths: Vec<Option<cri::AuthConfig>> = pull_secrets::for_image(&creds, image)
            .into_iter()
            .map(Some)
            .collect();
        auths.push(None);
        let mut images = self.ctx.cri.image_client();
        let mut last = String::new();
        for auth in auths {
            let request = cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                auth,
                ..Default::default()
            };
            match images.pull_image(request).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.message().to_string(),
            }
        }
        Err(last)
    }

    /// Stops and removes every sandbox (and so every container) of the pod; with the
    /// pod object, each running container gets a `Killing` event first.
    async fn teardown(&mut self, pod: Option<&Pod>, grace: i64) -> anyhow::Result<()> {
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
            if let Some(pod) = pod {
                let running = containers
                    .iter()
                    .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32);
                for c in running {
                    let name = c
                        .metadata
                        .as_ref()
                        .map(|m| m.name.as_str())
                        .unwrap_or_default();
                    let message = format!("Stopping container {name}");
                    events::container(&self.ctx.client, pod, name, "Normal", "Killing", &message)
                        .await;
                }
            }
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
        // Only once no container can use them any more.
        volumes::tear_down(&self.ctx.root_dir, &self.ctx.uid)
            .with_context(|| format!("removing the volumes of pod {}", self.ctx.uid))?;
        Ok(())
    }

    async fn report(&mut self, pod: &Pod, pod_ip: &str, view: &RuntimeView) -> anyhow::Result<()> {
        let status = pod_status(&StatusInputs {
            pod,
            pod_ip,
            host_ip: &self.ctx.host_ip,
            start_time: &self.start_time,
            runtime_name: &self.ctx.runtime_name,
            containers: view,
            waiting: &self.waiting,
            previous: self.last_status.as_ref(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_retries_back_off_like_upstream() {
        let fresh = MountRetry::default();
        assert!(fresh.due());
        let once = fresh.after_failure();
        assert_eq!(once.delay, MOUNT_BACKOFF_START);
        assert!(!once.due());
        assert_eq!(once.after_failure().delay, Duration::from_secs(1));
        let capped = (0..20).fold(once, |r, _| r.after_failure());
        assert_eq!(capped.delay, MOUNT_BACKOFF_MAX);
    }
}
