//! Builds `Node.status` the way upstream's status setters do: capacity and allocatable,
//! addresses, daemon endpoints, nodeInfo and the four kubelet-owned conditions, with
//! heartbeat times refreshed on every computation and transition times kept unless the
//! condition's status flips.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::config::Reserved;
use crate::cri::RuntimeVersion;
use crate::node::host::HostFacts;
use crate::node::runtime_state::aggregate_message;
use crate::quantity::{format_bytes, format_cpu_milli, format_decimal};

/// Reported as kubeletVersion/kubeProxyVersion. It must parse as semver (kubectl and
/// controllers parse it), and version skew policy forbids a kubelet newer than the API
/// server: the clusters we join run 1.20+, so we claim the 1.20.2 API behaviour we
/// implement and mark ourselves in the build metadata.
pub fn kubelet_version() -> String {
    format!("v1.20.2+nodert-{}", env!("CARGO_PKG_VERSION"))
}

/// GOOS/GOARCH spelling of this build's platform, as upstream reports it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The inputs one status computation needs.
pub struct StatusInputs<'a> {
    /// `status.addresses`, from [`crate::node::addresses::node_addresses`].
    pub addresses: &'a [NodeAddress],
    pub port: u16,
    pub max_pods: i64,
    pub reserved: &'a Reserved,
    pub facts: &'a HostFacts,
    pub runtime_version: Option<&'a RuntimeVersion>,
    /// Why the node is not ready (empty: ready).
    pub not_ready_errors: &'a [String],
    /// `status.images`, already in upstream's order and length (see `node_images`).
    pub images: &'a [ContainerImage],
}

/// Upstream reports at most this many images (nodeStatusMaxImages default)...
pub const MAX_IMAGES: usize = 50;
/// ...with at most this many names each.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

/// `status.images` from the runtime's image list as upstream builds it: largest first
/// (ties by descending ID), digests before tags, both lists truncated. The scheduler's
/// ImageLocality scoring reads these.
pub fn node_images(mut images: Vec<k8s_cri::v1::Image>) -> Vec<ContainerImage> {
    images.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| b.id.cmp(&a.id)));
    images
        .into_iter()
        .take(MAX_IMAGES)
        .map(|image| {
            let mut names = image.repo_digests;
            names.extend(image.repo_tags);
            names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage {
                names: Some(names),
                size_bytes: i64::try_from(image.size).ok(),
            }
        })
        .collect()
}

/// The status to report now, given the previously reported one (for transition times).
pub fn build_status(
    inputs: &StatusInputs<'_>,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let (capacity, allocatable) = resources(inputs);
    let prev_conditions = previous
        .and_then(|p| p.conditions.as_deref())
        .unwrap_or(&[]);
    let (ready_status, ready_reason, ready_message) = if inputs.not_ready_errors.is_empty() {
        (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        )
    } else {
        (
            "False",
            "KubeletNotReady",
            aggregate_message(inputs.not_ready_errors),
        )
    };
    let conditions = [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available".to_string(),
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure".to_string(),
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available".to_string(),
        ),
        ("Ready", ready_status, ready_reason, ready_message),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        condition(prev_conditions, type_, status, reason, message, now)
    })
    .collect();

    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(inputs.addresses.to_vec()),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(inputs.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: inputs.facts.machine_id.clone(),
            system_uuid: inputs.facts.system_uuid.clone(),
            boot_id: inputs.facts.boot_id.clone(),
            kernel_version: inputs.facts.kernel_version.clone(),
            os_image: inputs.facts.os_image.clone(),
            // Until the runtime answers Version, keep what was reported before.
            container_runtime_version: inputs
                .runtime_version
                .and_then(RuntimeVersion::node_info_string)
                .or_else(|| {
                    previous
                        .and_then(|p| p.node_info.as_ref())
                        .map(|i| i.container_runtime_version.clone())
                })
                .unwrap_or_default(),
            kubelet_version: kubelet_version(),
            kube_proxy_version: kubelet_version(),
            operating_system: "linux".into(),
            architecture: go_arch().into(),
            swap: None,
        }),
        // Always present, even empty: the status patch must be able to clear it.
        images: Some(inputs.images.to_vec()),
        ..NodeStatus::default()
    }
}

/// One condition: heartbeat now; transition time carried over unless the status flips.
fn condition(
    previous: &[NodeCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> NodeCondition {
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    }
}

type ResourceList = BTreeMap<String, Quantity>;

/// Capacity from the host; allocatable = capacity - reserved (never below zero), with
/// hugepages also withheld from allocatable memory as upstream does.
fn resources(inputs: &StatusInputs<'_>) -> (ResourceList, ResourceList) {
    let f = inputs.facts;
    let r = inputs.reserved;
    let mut capacity = ResourceList::new();
    let mut allocatable = ResourceList::new();
    let q = |s: String| Quantity(s);

    let cpu_milli = f.cpus * 1000;
    capacity.insert("cpu".into(), q(format_cpu_milli(cpu_milli)));
    allocatable.insert(
        "cpu".into(),
        q(format_cpu_milli((cpu_milli - r.cpu_milli).max(0))),
    );

    let hugepage_bytes: i64 = f.hugepages.iter().map(|(_, total)| total).sum();
    capacity.insert("memory".into(), q(format_bytes(f.memory_bytes)));
    allocatable.insert(
        "memory".into(),
        q(format_bytes(
            (f.memory_bytes - r.memory_bytes - hugepage_bytes).max(0),
        )),
    );

    // Upstream computes the percentage threshold in floating point and truncates.
    let nodefs_threshold = (f.root_fs_bytes as f64 * r.nodefs_available_fraction) as i64;
    capacity.insert("ephemeral-storage".into(), q(format_bytes(f.root_fs_bytes)));
    allocatable.insert(
        "ephemeral-storage".into(),
        q(format_bytes(
            (f.root_fs_bytes - r.ephemeral_storage_bytes - nodefs_threshold).max(0),
        )),
    );

    for (page_size, total) in &f.hugepages {
        let name = format!("hugepages-{}", format_bytes(*page_size));
        capacity.insert(name.clone(), q(format_bytes(*total)));
        allocatable.insert(name, q(format_bytes(*total)));
    }

    capacity.insert("pods".into(), q(format_decimal(inputs.max_pods)));
    allocatable.insert("pods".into(), q(format_decimal(inputs.max_pods)));
    (capacity, allocatable)
}

/// Whether two statuses differ in anything but heartbeat times (upstream's
/// nodeStatusHasChanged): only then is a report due before the report frequency.
pub fn changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    strip_heartbeats(old) != strip_heartbeats(new)
}

fn strip_heartbeats(status: &NodeStatus) -> NodeStatus {
    let mut s = status.clone();
    if let Some(conditions) = s.conditions.as_mut() {
        for c in conditions.iter_mut() {
            c.last_heartbeat_time = None;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_bytes: 8_148_236 * 1024,
            hugepages: vec![(2 << 20, 0), (1 << 30, 0)],
            root_fs_bytes: 10_000_000_003,
            machine_id: "m".into(),
            system_uuid: "u".into(),
            boot_id: "b".into(),
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        }
    }

    static ADDRESSES: std::sync::OnceLock<Vec<NodeAddress>> = std::sync::OnceLock::new();

    fn inputs<'a>(
        facts: &'a HostFacts,
        reserved: &'a Reserved,
        errs: &'a [String],
    ) -> StatusInputs<'a> {
        StatusInputs {
            addresses: ADDRESSES.get_or_init(|| {
                crate::node::addresses::node_addresses(&crate::node::addresses::AddressInputs {
                    node_ip_flag: None,
                    host_ip: Some("10.0.0.5".parse().unwrap()),
                    hostname: "n1",
                    hostname_overridden: false,
                    cloud: None,
                })
                .unwrap()
            }),
            port: 10250,
            max_pods: 110,
            reserved,
            facts,
            runtime_version: None,
            not_ready_errors: errs,
            images: &[],
        }
    }

    fn ready(s: &NodeStatus) -> &NodeCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
    }

    #[test]
    fn capacity_and_allocatable_as_upstream_prints_them() {
        let f = facts();
        let reserved = Reserved {
            cpu_milli: 100,
            memory_bytes: 100 << 20,
            ephemeral_storage_bytes: 0,
            nodefs_available_fraction: 0.1,
        };
        let s = build_status(&inputs(&f, &reserved, &[]), None, Timestamp::now());
        let cap = s.capacity.as_ref().unwrap();
        let alloc = s.allocatable.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(alloc["cpu"].0, "1900m");
        assert_eq!(cap["memory"].0, "8148236Ki");
        assert_eq!(alloc["memory"].0, "8045836Ki");
        assert_eq!(cap["ephemeral-storage"].0, "10000000003");
        assert_eq!(alloc["ephemeral-storage"].0, "9000000003");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["hugepages-2Mi"].0, "0");
        assert_eq!(cap["hugepages-1Gi"].0, "0");
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!(
            (addrs[0].type_.as_str(), addrs[0].address.as_str()),
            ("InternalIP", "10.0.0.5")
        );
        assert_eq!(
            (addrs[1].type_.as_str(), addrs[1].address.as_str()),
            ("Hostname", "n1")
        );
        let info = s.node_info.as_ref().unwrap();
        assert!(info.kubelet_version.starts_with("v1.20.2+nodert-"));
        assert_eq!(info.operating_system, "linux");
    }

    #[test]
    fn images_are_listed_largest_first_with_digests_before_tags() {
        let image = |id: &str, size: u64, tags: &[&str], digests: &[&str]| k8s_cri::v1::Image {
            id: id.into(),
            size,
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let many_tags: Vec<String> = (0..7).map(|i| format!("x:{i}")).collect();
        let many_tags: Vec<&str> = many_tags.iter().map(String::as_str).collect();
        let images = node_images(vec![
            image("sha256:a", 10, &["small:1"], &["small@sha256:1"]),
            image("sha256:b", 30, &["big:1"], &[]),
            image("sha256:c", 10, &many_tags, &["x@sha256:2"]),
        ]);
        let names: Vec<Vec<String>> = images.iter().map(|i| i.names.clone().unwrap()).collect();
        assert_eq!(names[0], ["big:1"]);
        assert_eq!(names[1], ["x@sha256:2", "x:0", "x:1", "x:2", "x:3"]);
        assert_eq!(names[2], ["small@sha256:1", "small:1"]);
        assert_eq!(images[0].size_bytes, Some(30));
        let lots = (0..60)
            .map(|i| image(&format!("{i}"), i, &["t"], &[]))
            .collect();
        assert_eq!(node_images(lots).len(), MAX_IMAGES);
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let f = facts();
        let reserved = Reserved::default();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let t1 = Timestamp::from_second(1_000_010).unwrap();
        let t2 = Timestamp::from_second(1_000_020).unwrap();
        let errs = vec!["container runtime status check may not have completed yet".to_string()];

        let s0 = build_status(&inputs(&f, &reserved, &errs), None, t0);
        assert_eq!(ready(&s0).status, "False");
        assert_eq!(ready(&s0).reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(ready(&s0).message.as_deref(), Some(errs[0].as_str()));

        let s1 = build_status(&inputs(&f, &reserved, &errs), Some(&s0), t1);
        assert_eq!(ready(&s1).last_transition_time, Some(Time(t0)));
        assert_eq!(ready(&s1).last_heartbeat_time, Some(Time(t1)));
        assert!(!changed(&s0, &s1), "only heartbeats differ");

        let s2 = build_status(&inputs(&f, &reserved, &[]), Some(&s1), t2);
        assert_eq!(ready(&s2).status, "True");
        assert_eq!(ready(&s2).reason.as_deref(), Some("KubeletReady"));
        assert_eq!(
            ready(&s2).message.as_deref(),
            Some("kubelet is posting ready status")
        );
        assert_eq!(ready(&s2).last_transition_time, Some(Time(t2)));
        let mem = &s2.conditions.as_ref().unwrap()[0];
        assert_eq!(mem.type_, "MemoryPressure");
        assert_eq!(mem.last_transition_time, Some(Time(t0)));
        assert!(changed(&s1, &s2));
    }
}
