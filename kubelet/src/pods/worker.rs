//! One worker per pod: an explicit state machine driven by the latest Pod object (or
//! its disappearance) and a periodic tick. Each step compares what the pod asks for
//! with what the runtime has, does one round of work, and reports status.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::backoff::{RestartBackoff, go_duration};
use super::fieldpath::PodAddresses;
use super::spec::{self, LABEL_CONTAINER_NAME, LABEL_POD_UID, PodIdentity};
use super::status::{RuntimeView, StatusInputs, pod_status};
use super::{PodContext, env, etc_hosts, events, lifecycle, now, pull_secrets, static_pods};
use crate::probes::handler::Target;
use crate::probes::{ContainerHealth, Kind, PodProbes, RunningContainer};
use crate::volumes::{self, PodVolumes};

const TICK: Duration = Duration::from_secs(1);
/// Upstream's minimumGracePeriodInSeconds: every container gets at least this long
/// between TERM and KILL, whatever is left after its preStop hook.
const MIN_GRACE_SECONDS: i64 = 2;

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

pub struct Worker {
    ctx: PodContext,
    rx: watch::Receiver<Option<Pod>>,
    phase: Phase,
    backoff: RestartBackoff,
    /// When each container's newest exited attempt finished (CRI nanoseconds).
    exits: HashMap<String, i64>,
    volumes: PodVolumes,
    /// The last FailedMount message, so an unchanged failure is not re-reported.
    mount_error: Option<String>,
    /// Waiting reasons from failed steps (image pulls), reported in status.
    waiting: HashMap<String, (String, String)>,
    /// The status last computed (transition times and last states build on it).
    last_status: Option<Value>,
    /// The status last written, with the UID of the object it went to (the pod, or a
    /// static pod's current mirror), so an unchanged status is not rewritten.
    written: Option<(String, Value)>,
    /// The last error keeping a static pod's mirror from the API.
    mirror_error: Option<String>,
    start_time: String,
    probes: PodProbes,
    /// Containers this kubelet killed for failing liveness or startup: restarted at
    /// once, without back-off, as upstream restarts them in the same sync.
    restart_now: HashSet<String>,
    /// The sandbox last used, for the final status of a deleted pod.
    last_sandbox: Option<Sandbox>,
}

impl Worker {
    pub fn new(ctx: PodContext, rx: watch::Receiver<Option<Pod>>) -> Self {
        let volumes = PodVolumes::new(ctx.client.clone(), &ctx.root_dir, &ctx.uid);
        let probes = PodProbes::new(ctx.cri.clone(), ctx.client.clone());
        Worker {
            ctx,
            rx,
            phase: Phase::MountingVolumes(MountRetry::default()),
            backoff: RestartBackoff::default(),
            exits: HashMap::new(),
            volumes,
            mount_error: None,
            waiting: HashMap::new(),
            last_status: None,
            written: None,
            mirror_error: None,
            start_time: now(),
            probes,
            restart_now: HashSet::new(),
            last_sandbox: None,
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
            let probed = self.probes.notifier();
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return },
                // A probe verdict changed: report (or kill) now, not a tick later.
                _ = probed.notified() => {}
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
        let is_static = static_pods::is_static(&pod);
        if pod.metadata.deletion_timestamp.is_some() {
            self.phase = Phase::Terminating;
            self.teardown(Some(&pod), grace_period(&pod)).await?;
            if is_static {
                // The file is gone: so goes the API's copy.
                if let Err(e) = self.ctx.mirrors.delete_of(&pod).await {
                    tracing::warn!(error = %format!("{e:#}"), "deleting the mirror pod of a removed static pod");
                }
                self.phase = Phase::Done;
                return Ok(());
            }
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
        if is_static {
            self.sync_mirror(&pod).await;
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
        if let Phase::Running(_) = self.phase {
            if self.kill_unhealthy(&pod, &sandbox, &view).await? {
                // Reported before the restart, so the killed attempt becomes the
                // new one's lastState.
                view = self.runtime_view(&sandbox.id).await?;
                self.report(&pod, &sandbox.pod_ip, &view).await?;
            }
            if self.sync_containers(&pod, &sandbox, &view).await {
                // Something started: report what it is now rather than a tick late.
                view = self.runtime_view(&sandbox.id).await?;
            }
            let running = running_containers(&view);
            self.probes.sync(&pod, &sandbox.pod_ip, &running);
        }
        self.report(&pod, &sandbox.pod_ip, &view).await
    }

    /// Keeps the static pod's mirror in the API; an API server that does not answer
    /// is logged once per distinct error and never stops the pod from running.
    async fn sync_mirror(&mut self, pod: &Pod) {
        match self.ctx.mirrors.sync(pod).await {
            Ok(()) => self.mirror_error = None,
            Err(e) => {
                let message = format!("{e:#}");
                if self.mirror_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(pod = %PodIdentity::of(pod).name, error = %message, "mirror pod not synced");
                    self.mirror_error = Some(message);
                }
            }
        }
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
        let sandbox = Sandbox {
            id: sandbox_id,
            pod_ip,
        };
        self.last_sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// Kills the containers whose liveness or startup probe failed past its threshold
    /// (preStop first, the pod's terminationGracePeriodSeconds as grace); the restart
    /// policy then restarts them at once. Returns whether anything was killed.
    async fn kill_unhealthy(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        view: &RuntimeView,
    ) -> anyhow::Result<bool> {
        let restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
        let mut killed = false;
        for u in self.probes.unhealthy() {
            let running = view.get(&u.name).is_some_and(|(s, _)| {
                s.id == u.container_id && s.state == cri::ContainerState::ContainerRunning as i32
            });
            self.probes.forget(&u.name);
            if !running {
                continue;
            }
            let probe = match u.kind {
                Kind::Startup => "startup",
                _ => "liveness",
            };
            let mut message = format!("Container {} failed {probe} probe", u.name);
            if restart {
                message.push_str(", will be restarted");
                self.restart_now.insert(u.name.clone());
            }
            // A probe's own terminationGracePeriodSeconds (newer upstream) wins.
            let probe_grace = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .find(|c| c.name == u.name)
                .and_then(|c| match u.kind {
                    Kind::Startup => c.startup_probe.as_ref(),
                    _ => c.liveness_probe.as_ref(),
                })
                .and_then(|p| p.termination_grace_period_seconds);
            let grace = probe_grace.unwrap_or_else(|| termination_grace_period(pod));
            self.kill_container(
                pod,
                &sandbox.pod_ip,
                &u.name,
                &u.container_id,
                Some(message),
                grace,
            )
            .await?;
            killed = true;
        }
        Ok(killed)
    }

    /// upstream's killContainer: a `Killing` event, the preStop hook (its time counts
    /// against `grace`), then StopContainer with what is left (at least 2 s), which
    /// sends TERM and KILLs at the deadline.
    async fn kill_container(
        &self,
        pod: &Pod,
        pod_ip: &str,
        name: &str,
        container_id: &str,
        message: Option<String>,
        grace: i64,
    ) -> anyhow::Result<()> {
        let message = message.unwrap_or_else(|| format!("Stopping container {name}"));
        events::container(&self.ctx.client, pod, name, "Normal", "Killing", &message).await;
        let spec = pod.spec.as_ref();
        let container = spec.and_then(|s| s.containers.iter().find(|c| c.name == name));
        let pre_stop = container
            .and_then(|c| c.lifecycle.as_ref())
            .and_then(|l| l.pre_stop.as_ref());
        let mut grace = grace;
        if let (Some(hook), Some(c)) = (pre_stop, container)
            && grace > 0
        {
            let target = Target {
                cri: self.ctx.cri.clone(),
                container_id: container_id.to_string(),
                pod_ip: pod_ip.to_string(),
                container: c.clone(),
            };
            let started = Instant::now();
            let limit = Duration::from_secs(grace as u64);
            match tokio::time::timeout(limit, lifecycle::run(hook, pod, &target)).await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    tracing::warn!(container = name, %message, "preStop hook failed");
                    events::container(
                        &self.ctx.client,
                        pod,
                        name,
                        "Warning",
                        "FailedPreStopHook",
                        &message,
                    )
                    .await;
                }
                Err(_) => {
                    tracing::info!(
                        container = name,
                        grace,
                        "preStop hook did not complete within the grace period"
                    )
                }
            }
            grace -= started.elapsed().as_secs() as i64;
        }
        let timeout = grace.max(MIN_GRACE_SECONDS);
        self.ctx
            .cri
            .runtime_client()
            .stop_container(cri::StopContainerRequest {
                container_id: container_id.to_string(),
                timeout,
            })
            .await?;
        Ok(())
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
                        _ if self.restart_now.contains(&c.name) => true,
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
        let exited = cri::ContainerState::ContainerExited as i32;
        let this_exit = last.filter(|s| s.state == exited).map(|s| s.finished_at);
        let previous_exit = match this_exit {
            Some(t) => self.exits.insert(c.name.clone(), t),
            None => self.exits.get(&c.name).copied(),
        };
        // upstream's doBackOff looks at the newest exited attempt as it was before the
        // restart was decided: the one that just ended, or for a container this
        // kubelet killed while it ran (liveness, startup), the one before it.
        let since = if self.restart_now.contains(&c.name) {
            previous_exit
        } else {
            this_exit
        };
        let finished =
            since.map(|t| SystemTime::UNIX_EPOCH + Duration::from_nanos(t.max(0) as u64));
        let waiting = finished
            .filter(|_| next > 0)
            .and_then(|f| self.backoff.check(&c.name, f, SystemTime::now()));
        if let Some(delay) = waiting {
            let message = format!(
                "back-off {} restarting failed container={} pod={}_{}({})",
                go_duration(delay),
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
                self.restart_now.remove(&c.name);
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
            // Reported as FailedPostStartHook already.
            "PostStartHookError" => {
                self.waiting.insert(name.to_string(), entry);
                return;
            }
            "CrashLoopBackOff" => (
                "BackOff",
                "Back-off restarting failed container".to_string(),
            ),
            _ => ("Failed", format!("Error: {}", entry.1)),
        };
        events::warn(&self.ctx.client, pod, event_reason, &event_message).await;
        self.waiting.insert(name.to_string(), entry);
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
        let mut mounts = volumes::container_mounts(self.volumes.ready(), c, privileged, &env)
            .map_err(config_error)?;
        let hosts = etc_hosts::mount(
            &self.ctx.root_dir,
            pod,
            c,
            &sandbox.pod_ip,
            &self.ctx.cluster_domain,
        )
        .map_err(|e| config_error(format!("failed to write the pod's hosts file: {e}")))?;
        mounts.extend(hosts);
        let config = spec::container_config(pod, c, attempt, &env, mounts, &self.ctx.root_dir);
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
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| ("RunContainerError".to_string(), e.message().to_string()))?;
        event("Normal", "Started", format!("Started container {}", c.name)).await;
        self.post_start(pod, c, &id, &sandbox.pod_ip).await
    }

    /// Runs the postStart hook of a just-started container; a failed one is reported
    /// (FailedPostStartHook), kills the container and leaves it to the restart policy,
    /// as upstream.
    async fn post_start(
        &self,
        pod: &Pod,
        c: &Container,
        id: &str,
        pod_ip: &str,
    ) -> Result<(), (String, String)> {
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return Ok(());
        };
        let target = Target {
            cri: self.ctx.cri.clone(),
            container_id: id.to_string(),
            pod_ip: pod_ip.to_string(),
            container: c.clone(),
        };
        let Err(message) = lifecycle::run(hook, pod, &target).await else {
            return Ok(());
        };
        let client = &self.ctx.client;
        events::container(
            client,
            pod,
            &c.name,
            "Warning",
            "FailedPostStartHook",
            &message,
        )
        .await;
        let grace = termination_grace_period(pod);
        let kill = self.kill_container(
            pod,
            pod_ip,
            &c.name,
            id,
            Some("FailedPostStartHook".into()),
            grace,
        );
        if let Err(e) = kill.await {
            tracing::warn!(container = %c.name, error = %format!("{e:#}"), "killing after a failed postStart hook");
        }
        Err(("PostStartHookError".into(), message))
    }

    /// Pulls `image` with each credential of the pod's pull secrets that matches it, most
    /// specific first, then the node's (credential providers), then anonymously, until
    /// one works (upstream's keyring order: pull secrets, then the default keyring).
    async fn pull(&self, pod: &Pod, image: &str) -> Result<(), String> {
        let creds = pull_secrets::credentials(&self.ctx.client, pod).await;
        let node_creds = self
            .ctx
            .credentials
            .lookup(&pull_secrets::image_location(image))
            .await;
        let mut auths: Vec<Option<cri::AuthConfig>> = pull_secrets::for_image(&creds, image)
            .into_iter()
            .chain(node_creds)
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

    /// Stops and removes every sandbox (and so every container) of the pod. With the
    /// pod object, running containers are killed as upstream kills them (`Killing`,
    /// preStop, TERM, KILL at the grace deadline, all containers in parallel) and the
    /// pod's final status is written before anything is removed.
    async fn teardown(&mut self, pod: Option<&Pod>, grace: i64) -> anyhow::Result<()> {
        self.probes.stop_all();
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
        let this = &*self;
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
            let pod_ip = this
                .last_sandbox
                .as_ref()
                .filter(|l| l.id == s.id)
                .map(|l| l.pod_ip.clone())
                .unwrap_or_default();
            let stops = containers.iter().map(|c| {
                let mut rt = rt.clone();
                let pod_ip = &pod_ip;
                async move {
                    let name = c
                        .metadata
                        .as_ref()
                        .map(|m| m.name.as_str())
                        .unwrap_or_default();
                    match pod {
                        Some(pod) if c.state == cri::ContainerState::ContainerRunning as i32 => {
                            this.kill_container(pod, pod_ip, name, &c.id, None, grace)
                                .await
                        }
                        _ => {
                            rt.stop_container(cri::StopContainerRequest {
                                container_id: c.id.clone(),
                                timeout: grace,
                            })
                            .await?;
                            Ok(())
                        }
                    }
                }
            });
            for r in futures::future::join_all(stops).await {
                r?;
            }
        }
        if let Some(pod) = pod {
            self.report_final(pod, &sandboxes).await?;
        }
        for s in &sandboxes {
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

    /// The status of a deleted pod whose containers have all stopped: terminated
    /// states with their exit codes and a Succeeded/Failed phase, as upstream writes
    /// it before the API object goes.
    async fn report_final(
        &mut self,
        pod: &Pod,
        sandboxes: &[cri::PodSandbox],
    ) -> anyhow::Result<()> {
        let current = self
            .last_sandbox
            .clone()
            .filter(|l| sandboxes.iter().any(|s| s.id == l.id));
        let Some(sandbox) = current.or_else(|| {
            sandboxes
                .iter()
                .max_by_key(|s| s.created_at)
                .map(|s| Sandbox {
                    id: s.id.clone(),
                    pod_ip: String::new(),
                })
        }) else {
            return Ok(());
        };
        let view = self.runtime_view(&sandbox.id).await?;
        self.write_status(pod, &sandbox.pod_ip, &view, true).await
    }

    async fn report(&mut self, pod: &Pod, pod_ip: &str, view: &RuntimeView) -> anyhow::Result<()> {
        self.write_status(pod, pod_ip, view, false).await
    }

    /// What the probes say about each running app container.
    fn health(&self, pod: &Pod, view: &RuntimeView) -> HashMap<String, ContainerHealth> {
        let running = cri::ContainerState::ContainerRunning as i32;
        let spec = pod.spec.as_ref();
        spec.map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                let (s, _) = view.get(&c.name).filter(|(s, _)| s.state == running)?;
                Some((c.name.clone(), self.probes.health(c, &s.id)))
            })
            .collect()
    }

    async fn write_status(
        &mut self,
        pod: &Pod,
        pod_ip: &str,
        view: &RuntimeView,
        terminal: bool,
    ) -> anyhow::Result<()> {
        let health = self.health(pod, view);
        let status = pod_status(&StatusInputs {
            pod,
            pod_ip,
            host_ip: &self.ctx.host_ip,
            start_time: &self.start_time,
            runtime_name: &self.ctx.runtime_name,
            containers: view,
            waiting: &self.waiting,
            previous: self.last_status.as_ref(),
            health: &health,
            terminal,
        });
        self.last_status = Some(status.clone());
        // A static pod's status goes to its mirror, preconditioned on the mirror's
        // UID (as upstream's status manager patches it); none yet, nothing to write.
        let mut patch = json!({ "status": status });
        let target = if static_pods::is_static(pod) {
            let Some(mirror) = self.ctx.mirrors.of(pod) else {
                return Ok(());
            };
            let uid = mirror.metadata.uid.unwrap_or_default();
            patch["metadata"] = json!({ "uid": uid });
            uid
        } else {
            pod.metadata.uid.clone().unwrap_or_default()
        };
        if self
            .written
            .as_ref()
            .is_some_and(|(t, s)| *t == target && *s == status)
        {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
        self.written = Some((target, status));
        Ok(())
    }
}

/// The running containers of `view`, for the probes.
fn running_containers(view: &RuntimeView) -> Vec<RunningContainer<'_>> {
    let running = cri::ContainerState::ContainerRunning as i32;
    view.iter()
        .filter(|(_, (s, _))| s.state == running)
        .map(|(name, (s, _))| RunningContainer {
            name,
            id: &s.id,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(s.started_at.max(0) as u64),
        })
        .collect()
}

/// The grace period of a deletion: the one the API recorded on the pod, else the
/// spec's, else upstream's minimum.
fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .unwrap_or_else(|| termination_grace_period(pod))
}

/// The spec's terminationGracePeriodSeconds (the API defaults it to 30), for kills
/// that are not deletions (liveness, startup, postStart).
fn termination_grace_period(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(MIN_GRACE_SECONDS)
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
