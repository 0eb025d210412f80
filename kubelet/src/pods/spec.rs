//! Translates a Pod into CRI requests, with the labels and annotations upstream's
//! kubelet puts on sandboxes and containers (so `crictl` output and a kubelet restart
//! can find which pod and container a runtime object belongs to).

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::env::{EnvVars, expand};

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl PodIdentity {
    pub fn of(pod: &Pod) -> Self {
        PodIdentity {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// `/var/log/pods/<namespace>_<name>_<uid>`, the layout log collectors expect.
    pub fn log_dir(&self) -> String {
        format!(
            "/var/log/pods/{}_{}_{}",
            self.namespace, self.name, self.uid
        )
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_POD_NAME.into(), self.name.clone()),
            (LABEL_POD_NAMESPACE.into(), self.namespace.clone()),
            (LABEL_POD_UID.into(), self.uid.clone()),
        ])
    }
}

pub fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    cluster_dns: &[String],
    cluster_domain: &str,
) -> cri::PodSandboxConfig {
    let id = PodIdentity::of(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let mut labels = id.labels();
    for (k, v) in pod.metadata.labels.clone().unwrap_or_default() {
        labels.insert(k, v);
    }
    let hostname = spec.hostname.clone().unwrap_or_else(|| id.name.clone());
    // Hostnames are DNS labels: upstream truncates to 63 characters.
    let hostname: String = hostname.chars().take(63).collect();
    let dns = dns_config(pod, cluster_dns, cluster_domain);
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.unwrap_or_default(),
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: id.name.clone(),
            uid: id.uid.clone(),
            namespace: id.namespace.clone(),
            attempt,
        }),
        hostname: if host_network {
            String::new()
        } else {
            hostname
        },
        log_directory: id.log_dir(),
        dns_config: dns,
        port_mappings,
        labels,
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// upstream's --resolv-conf default: the node's resolver, the base of `Default` pods
/// (and of `ClusterFirst` ones when no cluster DNS is configured).
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// upstream's limits (validation.MaxDNSNameservers, MaxDNSSearchPaths in 1.20).
const MAX_DNS_SERVERS: usize = 3;
const MAX_DNS_SEARCHES: usize = 6;

/// The pod's resolver as upstream's GetPodDNS builds it: ClusterFirst (the default)
/// uses the cluster's DNS with the cluster search domains before the node's and
/// `ndots:5`; Default (and ClusterFirst on the host network or without cluster DNS)
/// the node's resolv.conf; None nothing. A dnsConfig is then merged in (servers and
/// searches appended without duplicates, options by name) and the result cut to
/// upstream's limits.
/// The namespaces of the pod's sandbox, which its containers are given too (upstream's
/// namespacesForPod): the node's for hostNetwork/hostPID/hostIPC, one PID namespace for
/// the whole pod with shareProcessNamespace, else one per container.
fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |host: Option<bool>, otherwise: cri::NamespaceMode| {
        if host.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    let pid = if spec.share_process_namespace.unwrap_or(false) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

fn dns_config(pod: &Pod, cluster_dns: &[String], cluster_domain: &str) -> Option<cri::DnsConfig> {
    let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    pod_dns(pod, cluster_dns, cluster_domain, &parse_resolv_conf(&host))
}

fn pod_dns(
    pod: &Pod,
    cluster_dns: &[String],
    cluster_domain: &str,
    host: &cri::DnsConfig,
) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_network),
        _ => Some(false),
    };
    let mut cfg = match cluster {
        None => cri::DnsConfig::default(),
        Some(true) if !cluster_dns.is_empty() => {
            let mut searches = if cluster_domain.is_empty() {
                vec![]
            } else {
                vec![
                    format!("{ns}.svc.{cluster_domain}"),
                    format!("svc.{cluster_domain}"),
                    cluster_domain.to_string(),
                ]
            };
            searches.extend(host.searches.iter().cloned());
            cri::DnsConfig {
                servers: cluster_dns.to_vec(),
                searches: without_duplicates(searches),
                options: vec!["ndots:5".into()],
            }
        }
        Some(_) => host.clone(),
    };
    if let Some(extra) = &spec.dns_config {
        cfg.servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        cfg.servers = without_duplicates(std::mem::take(&mut cfg.servers));
        cfg.searches
            .extend(extra.searches.clone().unwrap_or_default());
        cfg.searches = without_duplicates(std::mem::take(&mut cfg.searches));
        for o in extra.options.clone().unwrap_or_default() {
            let name = o.name.unwrap_or_default();
            cfg.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            cfg.options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    cfg.servers.truncate(MAX_DNS_SERVERS);
    cfg.searches.truncate(MAX_DNS_SEARCHES);
    Some(cfg)
}

fn without_duplicates(list: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// upstream's parseResolvConf: nameservers, the last `search` line (trailing dots
/// dropped) and the last `options` line.
fn parse_resolv_conf(text: &str) -> cri::DnsConfig {
    let mut cfg = cri::DnsConfig::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [first, ..] if first.starts_with('#') => {}
            ["nameserver", server, ..] => cfg.servers.push(server.to_string()),
            ["search", rest @ ..] => {
                cfg.searches = rest
                    .iter()
                    .map(|s| s.trim_end_matches('.').to_string())
                    .collect()
            }
            ["options", rest @ ..] => cfg.options = rest.iter().map(|s| s.to_string()).collect(),
            _ => {}
        }
    }
    cfg
}

/// The CRI config of one attempt of `c`, with its resolved environment (see
/// [`super::env`]) and mounts (see [`crate::volumes`]). `$(VAR)` in command and
/// args expands against that environment, as upstream does.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    restart_count: u32,
    env: &EnvVars,
    mounts: Vec<cri::Mount>,
    root_dir: &Path,
) -> cri::ContainerConfig {
    let id = PodIdentity::of(pod);
    let mut labels = id.labels();
    labels.insert(LABEL_CONTAINER_NAME.into(), c.name.clone());
    let annotations = HashMap::from([(ANNOTATION_RESTART_COUNT.into(), restart_count.to_string())]);
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|s| expand(s, |name| env.get(name)))
            .collect()
    };
    let envs = env
        .pairs()
        .iter()
        .map(|(key, value)| cri::KeyValue {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let sec = c.security_context.clone().unwrap_or_default();
    let pod_sec = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let seccomp = seccomp_profile(
        sec.seccomp_profile
            .as_ref()
            .or(pod_sec.seccomp_profile.as_ref()),
        root_dir,
    );
    let run_as_user = sec.run_as_user.or(pod_sec.run_as_user);
    let run_as_group = sec.run_as_group.or(pod_sec.run_as_group);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        mounts,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        labels,
        annotations,
        log_path: format!("{}/{restart_count}.log", c.name),
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: sec.privileged.unwrap_or(false),
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sec.read_only_root_filesystem.unwrap_or(false),
                no_new_privs: sec.allow_privilege_escalation == Some(false),
                // The fsGroup owns the pod's volumes: containers join it, as upstream.
                supplemental_groups: pod_sec
                    .supplemental_groups
                    .iter()
                    .flatten()
                    .copied()
                    .chain(pod_sec.fs_group)
                    .collect(),
                capabilities: sec.capabilities.map(|caps| cri::Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                seccomp: Some(seccomp),
                namespace_options: Some(namespace_options(
                    pod.spec.as_ref().unwrap_or(&Default::default()),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CRI form of a seccompProfile (the container's, else the pod's). Unset means
/// Unconfined, as in upstream without the SeccompDefault feature; a Localhost profile
/// is a path relative to `<root-dir>/seccomp`, as upstream resolves it.
fn seccomp_profile(
    profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
    root_dir: &Path,
) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    let (profile_type, localhost_ref) = match profile.map(|p| p.type_.as_str()) {
        Some("RuntimeDefault") => (ProfileType::RuntimeDefault, String::new()),
        Some("Localhost") => (
            ProfileType::Localhost,
            root_dir
                .join("seccomp")
                .join(
                    profile
                        .and_then(|p| p.localhost_profile.as_deref())
                        .unwrap_or_default(),
                )
                .display()
                .to_string(),
        ),
        _ => (ProfileType::Unconfined, String::new()),
    };
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_host_flags_and_share_process_namespace() {
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        let (node, pod, container) = (
            cri::NamespaceMode::Node as i32,
            cri::NamespaceMode::Pod as i32,
            cri::NamespaceMode::Container as i32,
        );
        let plain = namespace_options(&spec(serde_json::json!({"containers": []})));
        assert_eq!((plain.network, plain.pid, plain.ipc), (pod, container, pod));
        let shared = namespace_options(&spec(
            serde_json::json!({"containers": [], "shareProcessNamespace": true}),
        ));
        assert_eq!(shared.pid, pod);
        let host = namespace_options(&spec(serde_json::json!({
            "containers": [], "hostNetwork": true, "hostPID": true, "hostIPC": true,
            "shareProcessNamespace": true,
        })));
        assert_eq!((host.network, host.pid, host.ipc), (node, node, node));
    }

    #[test]
    fn seccomp_profiles_resolve_as_upstream() {
        use cri::security_profile::ProfileType;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "web", "uid": "u"},
            "spec": {
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox", "securityContext": {"seccompProfile":
                        {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}},
                    {"name": "c", "image": "busybox", "stdinOnce": true, "stdin": true,
                     "securityContext": {"seccompProfile": {"type": "Unconfined"}}}
                ]
            }
        }))
        .unwrap();
        let containers = &pod.spec.as_ref().unwrap().containers;
        let config = |i: usize| {
            container_config(
                &pod,
                &containers[i],
                0,
                &EnvVars::default(),
                Vec::new(),
                Path::new("/var/lib/kubelet"),
            )
        };
        let seccomp = |i: usize| {
            config(i)
                .linux
                .unwrap()
                .security_context
                .unwrap()
                .seccomp
                .unwrap()
        };
        assert_eq!(seccomp(0).profile_type, ProfileType::RuntimeDefault as i32);
        assert_eq!(seccomp(1).profile_type, ProfileType::Localhost as i32);
        assert_eq!(
            seccomp(1).localhost_ref,
            "/var/lib/kubelet/seccomp/profiles/audit.json"
        );
        assert_eq!(seccomp(2).profile_type, ProfileType::Unconfined as i32);
        assert!(config(2).stdin_once && config(2).stdin);
        assert!(!config(0).stdin_once);
    }

    #[test]
    fn cluster_first_dns() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "web", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        let s = sandbox_config(&pod, 0, &["10.96.0.10".to_string()], "cluster.local");
        let dns = s.dns_config.unwrap();
        assert_eq!(dns.servers, vec!["10.96.0.10"]);
        assert_eq!(dns.searches[0], "web.svc.cluster.local");
        assert_eq!(dns.options, vec!["ndots:5"]);
        assert_eq!(s.log_directory, "/var/log/pods/web_p_u");
        assert_eq!(s.labels[LABEL_POD_UID], "u");
    }

    fn dns_of(spec: serde_json::Value, cluster_dns: &[&str]) -> cri::DnsConfig {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c", "image": "busybox"}]);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "web"}, "spec": spec,
        }))
        .unwrap();
        let host = parse_resolv_conf(
            "# node\nnameserver 192.168.0.2\nnameserver 192.168.0.3\nsearch corp.example. lab.example\noptions rotate timeout:1\n",
        );
        let cluster: Vec<String> = cluster_dns.iter().map(|s| s.to_string()).collect();
        pod_dns(&pod, &cluster, "cluster.local", &host).unwrap()
    }

    #[test]
    fn dns_policies_follow_upstream() {
        let first = dns_of(serde_json::json!({}), &["10.96.0.10"]);
        assert_eq!(first.servers, ["10.96.0.10"]);
        assert_eq!(
            first.searches,
            [
                "web.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ]
        );
        assert_eq!(first.options, ["ndots:5"]);
        // Default, ClusterFirst on the host network or without cluster DNS: the node's.
        for (spec, cluster) in [
            (
                serde_json::json!({"dnsPolicy": "Default"}),
                &["10.96.0.10"][..],
            ),
            (
                serde_json::json!({"hostNetwork": true}),
                &["10.96.0.10"][..],
            ),
            (serde_json::json!({}), &[][..]),
        ] {
            let d = dns_of(spec, cluster);
            assert_eq!(d.servers, ["192.168.0.2", "192.168.0.3"]);
            assert_eq!(d.searches, ["corp.example", "lab.example"]);
            assert_eq!(d.options, ["rotate", "timeout:1"]);
        }
        let with_host_net = dns_of(
            serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            &["10.96.0.10"],
        );
        assert_eq!(with_host_net.servers, ["10.96.0.10"]);
        // None: only dnsConfig, cut to upstream's limits.
        let none = dns_of(
            serde_json::json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1", "1.1.1.1", "8.8.8.8", "9.9.9.9", "4.4.4.4"],
                "searches": ["a", "b", "c", "d", "e", "f", "g"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
            &["10.96.0.10"],
        );
        assert_eq!(none.servers, ["1.1.1.1", "8.8.8.8", "9.9.9.9"]);
        assert_eq!(none.searches.len(), 6);
        assert_eq!(none.options, ["ndots:2", "edns0"]);
        // Default + dnsConfig merges into the node's resolver.
        let merged = dns_of(
            serde_json::json!({"dnsPolicy": "Default", "dnsConfig": {
                "nameservers": ["192.168.0.2", "10.0.0.53"], "options": [{"name": "timeout", "value": "3"}]}}),
            &[],
        );
        assert_eq!(merged.servers, ["192.168.0.2", "192.168.0.3", "10.0.0.53"]);
        assert_eq!(merged.options, ["rotate", "timeout:3"]);
    }
}
