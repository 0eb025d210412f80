//! Translates a Pod into CRI requests, with the labels and annotations upstream's
//! kubelet puts on sandboxes and containers (so `crictl` output and a kubelet restart
//! can find which pod and container a runtime object belongs to).

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

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
    let node = cri::NamespaceMode::Node as i32;
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
                namespace_options: Some(cri::NamespaceOption {
                    network: if host_network {
                        node
                    } else {
                        cri::NamespaceMode::Pod as i32
                    },
                    pid: if spec.host_pid.unwrap_or(false) {
                        node
                    } else {
                        cri::NamespaceMode::Container as i32
                    },
                    ipc: if spec.host_ipc.unwrap_or(false) {
                        node
                    } else {
                        cri::NamespaceMode::Pod as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// dnsPolicy ClusterFirst (the default) with the cluster's DNS, Default (the node's
/// resolv.conf, what the runtime does without a DNSConfig) and None + dnsConfig.
fn dns_config(pod: &Pod, cluster_dns: &[String], cluster_domain: &str) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let mut cfg = match policy {
        "ClusterFirst" | "ClusterFirstWithHostNet"
            if !cluster_dns.is_empty()
                && (!host_network || policy == "ClusterFirstWithHostNet") =>
        {
            cri::DnsConfig {
                servers: cluster_dns.to_vec(),
                searches: vec![
                    format!("{ns}.svc.{cluster_domain}"),
                    format!("svc.{cluster_domain}"),
                    cluster_domain.to_string(),
                ],
                options: vec!["ndots:5".into()],
            }
        }
        "None" => cri::DnsConfig::default(),
        _ => return None,
    };
    if let Some(extra) = &spec.dns_config {
        cfg.servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        cfg.searches
            .extend(extra.searches.clone().unwrap_or_default());
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
    Some(cfg)
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
}
