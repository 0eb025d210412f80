//! CRI RuntimeService over [`crate::runtime::Runtime`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::runtime::{
    ContainerRecord, ContainerStatus as Live, Runtime, RuntimeError, SandboxState,
};
use crate::streaming::{Request as StreamRequest, Streaming};

pub struct RuntimeServiceImpl {
    rt: Arc<Runtime>,
    streaming: Streaming,
}

impl RuntimeServiceImpl {
    pub fn new(rt: Arc<Runtime>, streaming: Streaming) -> Self {
        RuntimeServiceImpl { rt, streaming }
    }
}

fn status(e: RuntimeError) -> Status {
    match e {
        RuntimeError::NotFound(m) => Status::not_found(m),
        RuntimeError::InvalidArgument(m) => Status::invalid_argument(m),
        RuntimeError::FailedPrecondition(m) => Status::failed_precondition(m),
        RuntimeError::Internal(e) => Status::internal(format!("{e:#}")),
    }
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented by runtime-shim yet"
    )))
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl RuntimeServiceImpl {
    /// What Exec and Attach both require: a sensible set of streams on a running
    /// container (containerd's checks and messages).
    fn check_streams(
        &self,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> Result<(), Status> {
        if !(stdin || stdout || stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        if tty && stderr {
            return Err(Status::invalid_argument(
                "tty and stderr cannot both be true",
            ));
        }
        self.rt.running_container(id).map_err(status)?;
        Ok(())
    }

    fn container_state(&self, rec: &ContainerRecord) -> (ContainerState, Live) {
        let live = self.rt.container_status(rec);
        let state = match &live {
            Live::Created => ContainerState::ContainerCreated,
            Live::Running => ContainerState::ContainerRunning,
            Live::Exited(_) => ContainerState::ContainerExited,
            Live::Unknown => ContainerState::ContainerUnknown,
        };
        (state, live)
    }

    /// Containers matching a CRI filter's ID prefix, sandbox ID prefix and labels (the
    /// fields ContainerFilter and ContainerStatsFilter share).
    fn matching_containers(
        &self,
        id: &str,
        sandbox_id: &str,
        labels: &HashMap<String, String>,
    ) -> Vec<ContainerRecord> {
        self.rt
            .list_container_records()
            .into_iter()
            .filter(|c| c.id.starts_with(id) && c.sandbox_id.starts_with(sandbox_id))
            .filter(|c| labels_match(&c.config.labels, labels))
            .collect()
    }

    /// A pod's usage: the sum of its containers' (there is no pod-level cgroup of ours to
    /// read), and the counters of its network namespace's interfaces.
    fn sandbox_stats(&self, sb: &crate::runtime::SandboxRecord) -> PodSandboxStats {
        let now = crate::runtime::now_nanos();
        let v = |value| Some(UInt64Value { value });
        let containers = self.matching_containers("", &sb.id, &HashMap::new());
        let mut total = crate::container::stats::Usage::default();
        for c in &containers {
            let u = self.rt.container_usage(c);
            total.cpu_nanos += u.cpu_nanos;
            total.memory_usage += u.memory_usage;
            total.working_set += u.working_set;
            total.rss += u.rss;
            total.processes += u.processes;
        }
        let netns = sb.namespaces.as_ref().and_then(|ns| ns.net.as_deref());
        let interfaces: Vec<NetworkInterfaceUsage> = netns
            .and_then(|p| crate::sandbox::netstats::read(p).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|c| NetworkInterfaceUsage {
                name: c.name,
                rx_bytes: v(c.rx_bytes),
                rx_errors: v(c.rx_errors),
                tx_bytes: v(c.tx_bytes),
                tx_errors: v(c.tx_errors),
            })
            .collect();
        PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: Some(CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: v(total.cpu_nanos),
                    usage_nano_cores: None,
                }),
                memory: Some(MemoryUsage {
                    timestamp: now,
                    working_set_bytes: v(total.working_set),
                    usage_bytes: v(total.memory_usage),
                    rss_bytes: v(total.rss),
                    ..Default::default()
                }),
                // CNI names the pod's interface eth0 (CNI_IFNAME), the kubelet's default.
                network: (netns.is_some()).then(|| NetworkUsage {
                    timestamp: now,
                    default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
                    interfaces,
                }),
                process: Some(ProcessUsage {
                    timestamp: now,
                    process_count: v(total.processes),
                }),
                containers: containers.iter().map(|c| self.stats(c)).collect(),
            }),
            windows: None,
        }
    }

    fn stats(&self, rec: &ContainerRecord) -> ContainerStats {
        let u = self.rt.container_usage(rec);
        let now = crate::runtime::now_nanos();
        let v = |value| Some(UInt64Value { value });
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            cpu: Some(CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: v(u.cpu_nanos),
                usage_nano_cores: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: now,
                working_set_bytes: v(u.working_set),
                usage_bytes: v(u.memory_usage),
                rss_bytes: v(u.rss),
                ..Default::default()
            }),
            writable_layer: Some(FilesystemUsage {
                timestamp: now,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.rt.images().root().display().to_string(),
                }),
                used_bytes: v(u.writable_bytes),
                inodes_used: v(u.writable_inodes),
            }),
            swap: None,
        }
    }

    fn to_container(&self, rec: &ContainerRecord) -> Container {
        let (state, _) = self.container_state(rec);
        Container {
            id: rec.id.clone(),
            pod_sandbox_id: rec.sandbox_id.clone(),
            metadata: rec.config.metadata.clone(),
            image: rec.config.image.clone(),
            image_ref: rec.image_id.clone(),
            state: state as i32,
            created_at: rec.created_at,
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            image_id: rec.image_id.clone(),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServiceImpl {
    async fn version(
        &self,
        _r: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "runtime-shim".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let net = self.rt.network_configured();
        let conditions = vec![
            RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net,
                reason: if net {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: if net {
                    String::new()
                } else {
                    "Network plugin returns error: cni plugin not initialized".into()
                },
            },
        ];
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let r = r.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox without a config"))?;
        let id = self
            .rt
            .run_sandbox(config, r.runtime_handler)
            .await
            .map_err(status)?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        match self.rt.stop_sandbox(&r.into_inner().pod_sandbox_id).await {
            // Stopping something already gone is what the caller wanted.
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(Response::new(StopPodSandboxResponse {})),
            Err(e) => Err(status(e)),
        }
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        self.rt
            .remove_sandbox(&r.into_inner().pod_sandbox_id)
            .await
            .map_err(status)?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        let s = self
            .rt
            .sandbox(&id)
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id} not found")))?;
        let state = match s.state {
            SandboxState::Ready => PodSandboxState::SandboxReady,
            SandboxState::NotReady => PodSandboxState::SandboxNotready,
        };
        let ns_opts = s
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|c| c.namespace_options.clone());
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(PodSandboxStatus {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: state as i32,
                created_at: s.created_at,
                network: Some(PodSandboxNetworkStatus {
                    ip: s
                        .network
                        .as_ref()
                        .and_then(|n| n.ip.clone())
                        .unwrap_or_default(),
                    additional_ips: vec![],
                }),
                linux: Some(LinuxPodSandboxStatus {
                    namespaces: Some(Namespace { options: ns_opts }),
                }),
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            }),
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let items = self
            .rt
            .list_sandboxes()
            .into_iter()
            .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
            .filter(|s| {
                filter.state.as_ref().is_none_or(|st| {
                    let want = if st.state == PodSandboxState::SandboxReady as i32 {
                        SandboxState::Ready
                    } else {
                        SandboxState::NotReady
                    };
                    s.state == want
                })
            })
            .filter(|s| labels_match(&s.config.labels, &filter.label_selector))
            .map(|s| PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: match s.state {
                    SandboxState::Ready => PodSandboxState::SandboxReady as i32,
                    SandboxState::NotReady => PodSandboxState::SandboxNotready as i32,
                },
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let r = r.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer without a config"))?;
        let id = self
            .rt
            .create_container(&r.pod_sandbox_id, config)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.rt
            .start_container(&r.into_inner().container_id)
            .await
            .map_err(status)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let r = r.into_inner();
        match self.rt.stop_container(&r.container_id, r.timeout).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(Response::new(StopContainerResponse {})),
            Err(e) => Err(status(e)),
        }
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.rt
            .remove_container(&r.into_inner().container_id)
            .await
            .map_err(status)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let containers = self
            .matching_containers(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)
            .iter()
            .map(|c| self.to_container(c))
            .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state))
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let rec = self
            .rt
            .container(&r.into_inner().container_id)
            .map_err(status)?;
        let (state, live) = self.container_state(&rec);
        let (finished_at, exit_code, reason) = match &live {
            Live::Exited(e) => (
                e.finished_at,
                e.exit_code,
                if e.oom_killed {
                    "OOMKilled"
                } else if e.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                },
            ),
            _ => (0, 0, ""),
        };
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ContainerStatus {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                state: state as i32,
                created_at: rec.created_at,
                started_at: rec.started_at.unwrap_or(0),
                finished_at,
                exit_code,
                image: rec.config.image.clone(),
                image_ref: rec.image_id.clone(),
                reason: reason.into(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
                mounts: rec.config.mounts.clone(),
                log_path: rec.log_path.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn exec_sync(
        &self,
        r: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let r = r.into_inner();
        let timeout = (r.timeout > 0).then(|| Duration::from_secs(r.timeout as u64));
        let (stdout, stderr, exit_code) = self
            .rt
            .exec_sync(&r.container_id, &r.cmd, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }

    async fn update_container_resources(
        &self,
        _r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        unimplemented("UpdateContainerResources")
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        self.rt
            .reopen_log(&r.into_inner().container_id)
            .await
            .map_err(status)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let req = r.into_inner();
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        self.check_streams(
            &req.container_id,
            req.stdin,
            req.stdout,
            req.stderr,
            req.tty,
        )?;
        let url = self.streaming.url(StreamRequest::Exec(req));
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let req = r.into_inner();
        // The streams are the client's choice; input reaches a container only if it was
        // created with stdin (its monitor drops it otherwise).
        self.check_streams(
            &req.container_id,
            req.stdin,
            req.stdout,
            req.stderr,
            req.tty,
        )?;
        let url = self.streaming.url(StreamRequest::Attach(req));
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        r: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let req = r.into_inner();
        let sb = self
            .rt
            .sandbox(&req.pod_sandbox_id)
            .ok_or_else(|| Status::not_found(format!("no pod sandbox {}", req.pod_sandbox_id)))?;
        if !matches!(sb.state, SandboxState::Ready) {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let url = self.streaming.url(StreamRequest::PortForward(req));
        Ok(Response::new(PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let rec = self
            .rt
            .container(&r.into_inner().container_id)
            .map_err(status)?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(self.stats(&rec)),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .matching_containers(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)
            .iter()
            .map(|c| self.stats(c))
            .collect();
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        let sb = self
            .rt
            .sandbox(&id)
            .ok_or_else(|| Status::not_found(format!("no pod sandbox {id}")))?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(self.sandbox_stats(&sb)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = r.into_inner().filter.unwrap_or_default();
        // As containerd: stats of the pods that are running, not of stopped sandboxes.
        let stats = self
            .rt
            .list_sandboxes()
            .iter()
            .filter(|sb| matches!(sb.state, SandboxState::Ready))
            .filter(|sb| sb.id.starts_with(&filter.id))
            .filter(|sb| labels_match(&sb.config.labels, &filter.label_selector))
            .map(|sb| self.sandbox_stats(sb))
            .collect();
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        _r: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR is the CNI plugin's business; nothing to update here.
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _r: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        unimplemented("GetContainerEvents")
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        unimplemented("ListMetricDescriptors")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        unimplemented("ListPodSandboxMetrics")
    }
}
