//! Configuration: flags and the KubeletConfiguration file resolved into one `Settings`,
//! with upstream's defaults and its precedence (an explicit flag beats the file).

pub mod duration;
pub mod file;
pub mod flags;
pub mod server;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Taint;

use crate::cloud::{CloudIdentity, CloudProvider};
use crate::quantity;
pub use duration::parse_go_duration;
pub use file::KubeletConfigFile;
pub use flags::Flags;
pub use server::{AuthorizationMode, ServerSettings};

/// Upstream 1.27+ default; older kubelets defaulted to dockershim, which no longer exists.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// Everything the node agent needs, with defaults applied and values validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    /// `--bootstrap-kubeconfig`: credentials to request a client certificate with when
    /// `kubeconfig` does not exist yet (TLS bootstrap).
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// rotateCertificates: renew the client certificate in `cert_dir` before it expires.
    pub rotate_certificates: bool,
    /// serverTLSBootstrap / --rotate-server-certificates: serve a certificate the
    /// cluster issues (kubernetes.io/kubelet-serving), renewed before it expires.
    pub server_tls_bootstrap: bool,
    pub node_name: String,
    /// `--hostname-override` or the machine's hostname, lowercased: the
    /// `kubernetes.io/hostname` label and the Hostname address. It differs from
    /// `node_name` only when a cloud provider names the node.
    pub hostname: String,
    pub hostname_overridden: bool,
    pub cloud_provider: CloudProvider,
    /// What `--cloud-provider aws` found in instance metadata.
    pub cloud: Option<CloudIdentity>,
    /// Filesystem path of the CRI unix socket.
    pub runtime_socket: PathBuf,
    pub node_ip: Option<IpAddr>,
    pub node_labels: BTreeMap<String, String>,
    pub register_node: bool,
    pub register_with_taints: Vec<Taint>,
    pub max_pods: i64,
    pub provider_id: Option<String>,
    pub root_dir: PathBuf,
    pub cert_dir: PathBuf,
    pub address: IpAddr,
    pub port: u16,
    pub server: ServerSettings,
    pub reserved: Reserved,
    pub node_status_update_frequency: Duration,
    pub node_status_report_frequency: Duration,
    pub node_lease_duration_seconds: i32,
    /// clusterDNS / clusterDomain from the config file (ClusterFirst pods).
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// staticPodPath / --pod-manifest-path: static pod manifests, if any.
    pub static_pod_path: Option<PathBuf>,
    /// fileCheckFrequency / --file-check-frequency: how often they are re-read.
    pub file_check_frequency: Duration,
    pub verbosity: u8,
}

/// What is withheld from allocatable: kubeReserved + systemReserved + the hard eviction
/// thresholds, exactly the sum upstream subtracts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reserved {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    /// `nodefs.available` given as a percentage of the root filesystem (upstream default
    /// 10%); applied once the filesystem size is known.
    pub nodefs_available_fraction: f64,
}

impl Settings {
    /// Resolves flags and the optional config file. `hostname` is the machine's name,
    /// used when `--hostname-override` is absent.
    pub fn resolve(flags: Flags, file: Option<KubeletConfigFile>, hostname: &str) -> Result<Self> {
        Self::resolve_with_cloud(flags, file, hostname, None)
    }

    /// [`resolve`](Self::resolve) with the identity `--cloud-provider aws` looked up
    /// (see [`crate::cloud::identity`]): it names the node unless --hostname-override
    /// does, and supplies providerID and max pods unless those are configured.
    pub fn resolve_with_cloud(
        flags: Flags,
        file: Option<KubeletConfigFile>,
        hostname: &str,
        cloud: Option<CloudIdentity>,
    ) -> Result<Self> {
        let server = ServerSettings::resolve(&flags, file.as_ref())?;
        let file = file.unwrap_or_default();
        let kubeconfig = flags
            .kubeconfig
            .context("--kubeconfig is required (standalone mode is not supported)")?;
        let cloud_provider = CloudProvider::parse(flags.cloud_provider.as_deref().unwrap_or(""))?;
        if (cloud_provider == CloudProvider::Aws) != cloud.is_some() {
            bail!("the cloud identity must be looked up exactly when --cloud-provider is aws");
        }

        // Upstream lowercases and trims the name it registers under.
        let hostname_overridden = flags
            .hostname_override
            .as_deref()
            .is_some_and(|h| !h.trim().is_empty());
        let hostname = flags
            .hostname_override
            .as_deref()
            .filter(|_| hostname_overridden)
            .unwrap_or(hostname)
            .trim()
            .to_lowercase();
        let node_name = match &cloud {
            Some(id) if !hostname_overridden => id.node_name.clone(),
            _ => hostname.clone(),
        };
        if node_name.is_empty() {
            bail!("empty node name: set --hostname-override");
        }

        let endpoint = flags
            .container_runtime_endpoint
            .or(file.container_runtime_endpoint)
            .unwrap_or_else(|| DEFAULT_RUNTIME_ENDPOINT.to_string());
        let runtime_socket = socket_path(&endpoint)?;

        let node_labels = match flags.node_labels.as_deref() {
            Some(text) => parse_labels(text)?,
            None => BTreeMap::new(),
        };
        let mut register_with_taints = match flags.register_with_taints.as_deref() {
            Some(text) => parse_taints(text)?,
            None => file.register_with_taints.unwrap_or_default(),
        };
        if let Some(taint) = cloud_provider.registration_taint()
            && !register_with_taints.iter().any(|t| t.key == taint.key)
        {
            register_with_taints.push(taint);
        }
        for taint in &register_with_taints {
            validate_effect(&taint.effect)?;
        }

        let max_pods = match (flags.max_pods.or(file.max_pods), &cloud) {
            (Some(n), _) => n,
            // As EKS nodes are configured: the ENI limits of the instance type, so the
            // scheduler never places more pods than the VPC CNI has addresses for.
            (None, Some(id)) => id.max_pods().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "using the default maxPods of 110");
                110
            }),
            (None, None) => 110,
        };
        if max_pods < 0 {
            bail!("maxPods must not be negative, got {max_pods}");
        }
        let port = flags.port.map(i64::from).or(file.port).unwrap_or(10250);
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("port {port} must be between 1 and 65535, inclusive"))?;
        let address = match (flags.address, file.address.as_deref()) {
            (Some(a), _) => a,
            (None, Some(a)) => a
                .parse()
                .with_context(|| format!("invalid address {a:?}"))?,
            (None, None) => IpAddr::from([0, 0, 0, 0]),
        };

        let duration = |value: Option<String>, default: Duration, name: &str| -> Result<Duration> {
            match value {
                Some(v) => parse_go_duration(&v).with_context(|| name.to_string()),
                None => Ok(default),
            }
        };
        // Upstream defaults the file: an unset report frequency takes the file's update
        // frequency when that is set explicitly, 5m otherwise. Flags apply afterwards,
        // so --node-status-update-frequency leaves the report frequency alone.
        let file_update_frequency = duration(
            file.node_status_update_frequency.clone(),
            Duration::from_secs(10),
            "nodeStatusUpdateFrequency",
        )?;
        let report_default = if file.node_status_update_frequency.is_some() {
            file_update_frequency
        } else {
            Duration::from_secs(300)
        };
        let node_status_report_frequency = duration(
            file.node_status_report_frequency,
            report_default,
            "nodeStatusReportFrequency",
        )?;
        let node_status_update_frequency = match flags.node_status_update_frequency {
            Some(v) => duration(
                Some(v),
                file_update_frequency,
                "--node-status-update-frequency",
            )?,
            None => file_update_frequency,
        };
        if node_status_update_frequency.is_zero() || node_status_report_frequency.is_zero() {
            bail!("nodeStatusUpdateFrequency and nodeStatusReportFrequency must be positive");
        }
        let file_check_frequency = duration(
            flags
                .file_check_frequency
                .or(file.file_check_frequency.clone()),
            Duration::from_secs(20),
            "fileCheckFrequency",
        )?;
        if file_check_frequency.is_zero() {
            bail!("fileCheckFrequency must be positive");
        }
        // An empty path means no static pods, as upstream.
        let static_pod_path = flags
            .pod_manifest_path
            .or(file.static_pod_path.clone())
            .filter(|p| !p.as_os_str().is_empty());
        let node_lease_duration_seconds = file.node_lease_duration_seconds.unwrap_or(40);
        let node_lease_duration_seconds = i32::try_from(node_lease_duration_seconds)
            .ok()
            .filter(|s| *s > 0)
            .with_context(|| {
                format!(
                    "nodeLeaseDurationSeconds must be positive, got {node_lease_duration_seconds}"
                )
            })?;

        // A map given as a flag replaces the file's map as a whole, as upstream does.
        let kube_reserved = match flags.kube_reserved.as_deref() {
            Some(text) => parse_map(text, '=', "--kube-reserved")?,
            None => file.kube_reserved.unwrap_or_default(),
        };
        let system_reserved = match flags.system_reserved.as_deref() {
            Some(text) => parse_map(text, '=', "--system-reserved")?,
            None => file.system_reserved.unwrap_or_default(),
        };
        let eviction_hard = match flags.eviction_hard.as_deref() {
            Some(text) => Some(parse_map(text, '<', "--eviction-hard")?),
            None => file.eviction_hard,
        };
        let reserved =
            Reserved::from_maps(&kube_reserved, &system_reserved, eviction_hard.as_ref())?;

        let provider_id = flags
            .provider_id
            .or(file.provider_id)
            .or_else(|| cloud.as_ref().map(|id| id.provider_id.clone()));
        Ok(Settings {
            kubeconfig,
            bootstrap_kubeconfig: flags.bootstrap_kubeconfig,
            // Upstream 1.20 defaults it to false; kubeadm and EKS turn it on.
            rotate_certificates: flags
                .rotate_certificates
                .or(file.rotate_certificates)
                .unwrap_or(false),
            // Off by default upstream too: the CSRs wait for an approver.
            server_tls_bootstrap: flags
                .rotate_server_certificates
                .or(file.server_tls_bootstrap)
                .unwrap_or(false),
            node_name,
            hostname,
            hostname_overridden,
            cloud_provider,
            cloud,
            runtime_socket,
            node_ip: flags.node_ip,
            node_labels,
            register_node: flags.register_node.or(file.register_node).unwrap_or(true),
            register_with_taints,
            max_pods,
            provider_id,
            root_dir: flags.root_dir,
            cert_dir: flags.cert_dir,
            address,
            port,
            server,
            reserved,
            node_status_update_frequency,
            node_status_report_frequency,
            node_lease_duration_seconds,
            // Flags win over the file, as upstream's.
            cluster_dns: if flags.cluster_dns.is_empty() {
                file.cluster_dns.clone().unwrap_or_default()
            } else {
                flags.cluster_dns.clone()
            },
            cluster_domain: flags
                .cluster_domain
                .clone()
                .or_else(|| file.cluster_domain.clone())
                .unwrap_or_else(|| "cluster.local".into()),
            static_pod_path,
            file_check_frequency,
            verbosity: flags.verbosity,
        })
    }
}

impl Reserved {
    /// `eviction_hard` of `None` means upstream's defaults; a given map replaces them
    /// (as in 1.20, where a partial map does not inherit the other defaults).
    pub fn from_maps(
        kube: &BTreeMap<String, String>,
        system: &BTreeMap<String, String>,
        eviction_hard: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        let mut r = Reserved::default();
        for (map, what) in [(kube, "kubeReserved"), (system, "systemReserved")] {
            for (name, value) in map {
                let bad = || format!("{what}[{name}] = {value:?}");
                match name.as_str() {
                    "cpu" => {
                        r.cpu_milli +=
                            i64::try_from(quantity::parse_milli(value).with_context(bad)?)
                                .ok()
                                .with_context(bad)?
                    }
                    "memory" => r.memory_bytes += quantity::parse_units(value).with_context(bad)?,
                    "ephemeral-storage" => {
                        r.ephemeral_storage_bytes +=
                            quantity::parse_units(value).with_context(bad)?
                    }
                    // pid reservations limit cgroups, they do not show in allocatable.
                    "pid" => {}
                    other => bail!("{what}: unsupported resource {other:?}"),
                }
            }
        }
        let defaults: BTreeMap<String, String> = [
            ("memory.available", "100Mi"),
            ("nodefs.available", "10%"),
            ("nodefs.inodesFree", "5%"),
            ("imagefs.available", "15%"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let eviction_hard = eviction_hard.unwrap_or(&defaults);
        if let Some(v) = eviction_hard.get("memory.available") {
            // A percentage of memory would need the capacity; upstream allows it but no
            // deployment we know uses it, so it is refused rather than misapplied.
            r.memory_bytes += quantity::parse_units(v)
                .with_context(|| format!("evictionHard[memory.available] = {v:?}"))?;
        }
        if let Some(v) = eviction_hard.get("nodefs.available") {
            match v.strip_suffix('%') {
                Some(pct) => {
                    let pct: f64 = pct
                        .parse()
                        .with_context(|| format!("evictionHard[nodefs.available] = {v:?}"))?;
                    r.nodefs_available_fraction = pct / 100.0;
                }
                None => {
                    r.ephemeral_storage_bytes += quantity::parse_units(v)
                        .with_context(|| format!("evictionHard[nodefs.available] = {v:?}"))?
                }
            }
        }
        Ok(r)
    }
}

/// The socket path of a CRI endpoint. Upstream also accepts a bare path (with a
/// deprecation warning); only unix sockets are supported on Linux.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return Ok(PathBuf::from(path));
    }
    if endpoint.starts_with('/') {
        tracing::warn!(
            endpoint,
            "using a path without the unix:// scheme is deprecated"
        );
        return Ok(PathBuf::from(endpoint));
    }
    bail!("unsupported container runtime endpoint {endpoint:?}: only unix:// is supported")
}

/// `--node-labels`: `k1=v1,k2=v2`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    parse_map(text, '=', "--node-labels")
}

/// A pflag map flag: `k1<sep>v1,k2<sep>v2` (`=` for most, `<` for --eviction-hard).
pub fn parse_map(text: &str, separator: char, flag: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once(separator)
            .with_context(|| format!("{flag}: {item:?} is not key{separator}value"))?;
        if k.is_empty() {
            bail!("{flag}: empty key in {item:?}");
        }
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(map)
}

/// `--register-with-taints`: `key=value:Effect` or `key:Effect`, comma separated.
pub fn parse_taints(text: &str) -> Result<Vec<Taint>> {
    let mut taints = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kv, effect) = item
            .rsplit_once(':')
            .with_context(|| format!("--register-with-taints: {item:?} has no :effect"))?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            bail!("--register-with-taints: empty key in {item:?}");
        }
        validate_effect(effect)?;
        taints.push(Taint {
            key: key.to_string(),
            value: value.filter(|v| !v.is_empty()),
            effect: effect.to_string(),
            time_added: None,
        });
    }
    Ok(taints)
}

fn validate_effect(effect: &str) -> Result<()> {
    match effect {
        "NoSchedule" | "PreferNoSchedule" | "NoExecute" => Ok(()),
        other => bail!(
            "invalid taint effect {other:?}: must be NoSchedule, PreferNoSchedule or NoExecute"
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("kubelet").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_upstream() {
        let s = Settings::resolve(flags(&["--kubeconfig", "/k"]), None, "Host-A").unwrap();
        assert_eq!(s.node_name, "host-a");
        assert_eq!(s.max_pods, 110);
        assert_eq!(s.port, 10250);
        assert_eq!(s.node_status_update_frequency, Duration::from_secs(10));
        assert_eq!(s.node_status_report_frequency, Duration::from_secs(300));
        assert_eq!(s.node_lease_duration_seconds, 40);
        assert_eq!(
            s.runtime_socket,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(s.reserved.memory_bytes, 100 << 20);
        assert_eq!(s.reserved.nodefs_available_fraction, 0.1);
        assert_eq!(s.root_dir, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(s.static_pod_path, None);
        assert_eq!(s.file_check_frequency, Duration::from_secs(20));
        assert!(!s.server_tls_bootstrap);
    }

    #[test]
    fn server_tls_bootstrap_comes_from_the_file_or_the_flag() {
        let file = |on: bool| {
            KubeletConfigFile::parse(&format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 serverTLSBootstrap: {on}\n"
            ))
            .unwrap()
        };
        let resolve = |args: &[&str], f: Option<KubeletConfigFile>| {
            let mut all = vec!["--kubeconfig", "/k"];
            all.extend_from_slice(args);
            Settings::resolve(flags(&all), f, "h")
                .unwrap()
                .server_tls_bootstrap
        };
        assert!(resolve(&[], Some(file(true))));
        assert!(resolve(&["--rotate-server-certificates"], None));
        assert!(!resolve(
            &["--rotate-server-certificates=false"],
            Some(file(true))
        ));
        assert!(resolve(
            &["--rotate-server-certificates=true"],
            Some(file(false))
        ));
    }

    #[test]
    fn cluster_dns_flags_override_the_file() {
        let file = || -> KubeletConfigFile {
            serde_yaml::from_str(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 clusterDNS: [10.96.0.10]\nclusterDomain: corp.local\n",
            )
            .unwrap()
        };
        let s = Settings::resolve(flags(&["--kubeconfig", "/k"]), Some(file()), "h").unwrap();
        assert_eq!(s.cluster_dns, vec!["10.96.0.10"]);
        assert_eq!(s.cluster_domain, "corp.local");
        let args = [
            "--kubeconfig",
            "/k",
            "--cluster-dns=10.0.0.10,10.0.0.11",
            "--cluster-domain",
            "k8s.test",
        ];
        let s = Settings::resolve(flags(&args), Some(file()), "h").unwrap();
        assert_eq!(s.cluster_dns, vec!["10.0.0.10", "10.0.0.11"]);
        assert_eq!(s.cluster_domain, "k8s.test");
    }

    #[test]
    fn static_pod_path_from_the_file_or_the_flag() {
        let file = || {
            KubeletConfigFile::parse(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 staticPodPath: /etc/kubernetes/manifests\nfileCheckFrequency: 5s\n",
            )
            .unwrap()
        };
        let s = Settings::resolve(flags(&["--kubeconfig=/k"]), Some(file()), "h").unwrap();
        assert_eq!(s.static_pod_path, Some("/etc/kubernetes/manifests".into()));
        assert_eq!(s.file_check_frequency, Duration::from_secs(5));
        let s = Settings::resolve(
            flags(&[
                "--kubeconfig=/k",
                "--pod-manifest-path=/m",
                "--file-check-frequency=1s",
            ]),
            Some(file()),
            "h",
        )
        .unwrap();
        assert_eq!(s.static_pod_path, Some("/m".into()));
        assert_eq!(s.file_check_frequency, Duration::from_secs(1));
        let empty = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: ''\n",
        )
        .unwrap();
        let s = Settings::resolve(flags(&["--kubeconfig=/k"]), Some(empty), "h").unwrap();
        assert_eq!(s.static_pod_path, None);
    }

    #[test]
    fn flags_override_the_file() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             maxPods: 20\nport: 10251\ncontainerRuntimeEndpoint: unix:///file.sock\n\
             registerWithTaints: [{key: a, effect: NoSchedule}]\n\
             kubeReserved: {cpu: 100m, memory: 100Mi}\nsystemReserved: {cpu: '1'}\n\
             evictionHard: {memory.available: 1Mi}\n",
        )
        .unwrap();
        let s = Settings::resolve(
            flags(&[
                "--kubeconfig=/k",
                "--max-pods=7",
                "--container-runtime-endpoint",
                "unix:///flag.sock",
                "--hostname-override",
                "n1",
                "--node-labels",
                "a=b,c.io/d=",
                "--register-with-taints",
                "k=v:NoExecute,x:PreferNoSchedule",
                "--v=4",
            ]),
            Some(file),
            "ignored",
        )
        .unwrap();
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.max_pods, 7);
        assert_eq!(s.port, 10251);
        assert_eq!(s.runtime_socket, PathBuf::from("/flag.sock"));
        assert_eq!(s.node_labels["a"], "b");
        assert_eq!(s.node_labels["c.io/d"], "");
        assert_eq!(s.register_with_taints.len(), 2);
        assert_eq!(s.register_with_taints[0].value.as_deref(), Some("v"));
        assert_eq!(s.register_with_taints[1].value, None);
        assert_eq!(s.reserved.cpu_milli, 1100);
        assert_eq!(s.reserved.memory_bytes, (100 << 20) + (1 << 20));
        assert_eq!(s.reserved.nodefs_available_fraction, 0.0);
        assert_eq!(s.verbosity, 4);
    }

    #[test]
    fn resource_flags_replace_the_files_maps() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             kubeReserved: {cpu: 100m}\nport: 10251\naddress: 127.0.0.1\n",
        )
        .unwrap();
        let s = Settings::resolve(
            flags(&[
                "--kubeconfig=/k",
                "--kube-reserved=memory=1Gi",
                "--system-reserved",
                "cpu=200m",
                "--eviction-hard=memory.available<10Mi,nodefs.available<5%",
                "--port=10260",
                "--address=10.0.0.1",
                "--node-status-update-frequency=20s",
                "--register-node=false",
            ]),
            Some(file),
            "h",
        )
        .unwrap();
        assert_eq!(s.reserved.cpu_milli, 200);
        assert_eq!(s.reserved.memory_bytes, (1 << 30) + (10 << 20));
        assert_eq!(s.reserved.nodefs_available_fraction, 0.05);
        assert_eq!(s.port, 10260);
        assert_eq!(s.address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.node_status_update_frequency, Duration::from_secs(20));
        assert_eq!(s.node_status_report_frequency, Duration::from_secs(300));
        assert!(!s.register_node);
    }

    #[test]
    fn report_frequency_follows_an_explicit_update_frequency_in_the_file() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             nodeStatusUpdateFrequency: 20s\n",
        )
        .unwrap();
        let s = Settings::resolve(flags(&["--kubeconfig=/k"]), Some(file), "h").unwrap();
        assert_eq!(s.node_status_update_frequency, Duration::from_secs(20));
        assert_eq!(s.node_status_report_frequency, Duration::from_secs(20));
    }

    fn ec2_identity() -> CloudIdentity {
        CloudIdentity {
            node_name: "ip-10-0-0-5.ec2.internal".into(),
            provider_id: "aws:///us-east-1a/i-0abc".into(),
            instance_id: "i-0abc".into(),
            instance_type: "m5.large".into(),
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
            addresses: vec![],
        }
    }

    #[test]
    fn aws_names_the_node_and_sets_provider_id_and_max_pods() {
        let s = Settings::resolve_with_cloud(
            flags(&["--kubeconfig=/k", "--cloud-provider=aws"]),
            None,
            "DevBox",
            Some(ec2_identity()),
        )
        .unwrap();
        assert_eq!(s.node_name, "ip-10-0-0-5.ec2.internal");
        assert_eq!(s.hostname, "devbox");
        assert!(!s.hostname_overridden);
        assert_eq!(s.provider_id.as_deref(), Some("aws:///us-east-1a/i-0abc"));
        // m5.large: 3 ENIs x (10 - 1) + 2.
        assert_eq!(s.max_pods, 29);
        assert!(s.register_with_taints.is_empty());
    }

    #[test]
    fn explicit_settings_beat_the_cloud() {
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 50\n",
        )
        .unwrap();
        let s = Settings::resolve_with_cloud(
            flags(&[
                "--kubeconfig=/k",
                "--cloud-provider",
                "aws",
                "--hostname-override=n1",
                "--provider-id=aws:///x/i-1",
            ]),
            Some(file),
            "h",
            Some(ec2_identity()),
        )
        .unwrap();
        assert_eq!(s.node_name, "n1");
        assert!(s.hostname_overridden);
        assert_eq!(s.provider_id.as_deref(), Some("aws:///x/i-1"));
        assert_eq!(s.max_pods, 50);
    }

    #[test]
    fn external_provider_registers_with_the_uninitialized_taint() {
        let s = Settings::resolve(
            flags(&[
                "--kubeconfig=/k",
                "--cloud-provider=external",
                "--register-with-taints=a=b:NoExecute",
            ]),
            None,
            "h",
        )
        .unwrap();
        assert_eq!(s.cloud_provider, CloudProvider::External);
        let keys: Vec<&str> = s
            .register_with_taints
            .iter()
            .map(|t| t.key.as_str())
            .collect();
        assert_eq!(keys, ["a", crate::cloud::UNINITIALIZED_TAINT_KEY]);
        assert_eq!(s.max_pods, 110);
        assert!(
            Settings::resolve(
                flags(&["--kubeconfig=/k", "--cloud-provider=gce"]),
                None,
                "h"
            )
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_taints("k=v").is_err());
        assert!(parse_taints("k=v:Sometimes").is_err());
        assert!(parse_labels("novalue").is_err());
        assert!(socket_path("tcp://1.2.3.4:1").is_err());
        let file = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nport: 0\n",
        )
        .unwrap();
        assert!(Settings::resolve(flags(&["--kubeconfig=/k"]), Some(file), "h").is_err());
    }
}
