//! Command-line flags, spelled as upstream spells them so existing unit files and
//! bootstrap scripts work unchanged. Flags that also exist in the config file are
//! `Option`s: upstream lets an explicitly given flag win over the file, so we must know
//! whether a flag was given at all.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "kubelet",
    version,
    about = "The node agent: registers the Node, keeps its Lease and reports its status"
)]
pub struct Flags {
    /// Path to a kubeconfig file with the node's credentials for the API server.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig with bootstrap credentials (e.g. a bootstrap token), used to request a
    /// client certificate when --kubeconfig does not exist yet.
    #[arg(long, alias = "experimental-bootstrap-kubeconfig")]
    pub bootstrap_kubeconfig: Option<PathBuf>,

    /// The cloud provider: "aws" (identity from EC2 instance metadata), "external" (a
    /// cloud-controller-manager initialises the Node), or empty for none.
    #[arg(long)]
    pub cloud_provider: Option<String>,

    /// A CredentialProviderConfig file: which exec plugins supply registry credentials
    /// for which images.
    #[arg(long)]
    pub image_credential_provider_config: Option<PathBuf>,

    /// The directory holding the plugin binaries the credential provider config names.
    #[arg(long)]
    pub image_credential_provider_bin_dir: Option<PathBuf>,

    /// Path to a KubeletConfiguration (kubelet.config.k8s.io/v1beta1) file.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// The CRI endpoint, e.g. unix:///run/containerd/containerd.sock.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,

    /// Use this name as the node name instead of the machine's hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// The IP address reported as the node's InternalIP.
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// Labels to add when registering the node, key=value pairs separated by commas.
    #[arg(long)]
    pub node_labels: Option<String>,

    /// Taints to register the node with, <key>=<value>:<effect> separated by commas.
    #[arg(long)]
    pub register_with_taints: Option<String>,

    /// Number of pods that can run on this kubelet.
    #[arg(long)]
    pub max_pods: Option<i64>,

    /// The node's identifier in the machine database of the cloud provider.
    #[arg(long = "provider-id")]
    pub provider_id: Option<String>,

    /// Directory for the kubelet's files (volume mounts, plugin state, ...).
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,

    /// Directory where TLS certificates are kept.
    #[arg(long, default_value = "/var/lib/kubelet/pki")]
    pub cert_dir: PathBuf,

    /// The IP address the kubelet serves on (0.0.0.0 for all interfaces).
    #[arg(long)]
    pub address: Option<IpAddr>,

    /// The port the kubelet serves on.
    #[arg(long)]
    pub port: Option<u16>,

    /// Resources reserved for Kubernetes system daemons, e.g. cpu=100m,memory=256Mi.
    #[arg(long)]
    pub kube_reserved: Option<String>,

    /// Resources reserved for non-Kubernetes system daemons, e.g. cpu=100m,memory=256Mi.
    #[arg(long)]
    pub system_reserved: Option<String>,

    /// Hard eviction thresholds, e.g. memory.available<100Mi,nodefs.available<10%.
    #[arg(long)]
    pub eviction_hard: Option<String>,

    /// How often the node status is computed (and posted if it changed), e.g. 10s.
    #[arg(long)]
    pub node_status_update_frequency: Option<String>,

    /// Request a new client certificate before the current one expires
    /// (--rotate-certificates[=false]); needs the TLS bootstrap's files in --cert-dir.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rotate_certificates: Option<bool>,

    /// Request the serving certificate from the cluster and renew it before it expires
    /// (serverTLSBootstrap); the CSRs need approving, kube-controller-manager does not.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rotate_server_certificates: Option<bool>,

    /// Register the node with the API server (pflag booleans: --register-node[=false]).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub register_node: Option<bool>,

    /// Serve the kubelet API on --address:--port (--enable-server[=false]).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_server: Option<bool>,

    /// Serving certificate (PEM, may include intermediates) for the kubelet's HTTPS server.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) matching --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that client certificates are verified against (user = CN, groups = O).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,

    /// Allow requests without credentials as system:anonymous (--anonymous-auth[=false]).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub anonymous_auth: Option<bool>,

    /// Check bearer tokens with the API server's TokenReview.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub authentication_token_webhook: Option<bool>,

    /// How long TokenReview answers are cached, e.g. 2m0s.
    #[arg(long)]
    pub authentication_token_webhook_cache_ttl: Option<String>,

    /// Webhook (SubjectAccessReview) or AlwaysAllow.
    #[arg(long)]
    pub authorization_mode: Option<String>,

    /// How long allowed SubjectAccessReview answers are cached, e.g. 5m0s.
    #[arg(long)]
    pub authorization_webhook_cache_authorized_ttl: Option<String>,

    /// How long denied SubjectAccessReview answers are cached, e.g. 30s.
    #[arg(long)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<String>,

    /// Directory (or single file) of static pod manifests; empty for none.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,

    /// How often --pod-manifest-path is re-read, e.g. 20s.
    #[arg(long)]
    pub file_check_frequency: Option<String>,

    /// DNS server IPs for ClusterFirst pods, comma-separated (overrides clusterDNS).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<String>,

    /// The cluster's DNS domain, e.g. cluster.local (overrides clusterDomain).
    #[arg(long)]
    pub cluster_domain: Option<String>,

    /// Log verbosity (klog levels: 0-3 info, 4-5 debug, 6+ trace).
    #[arg(long = "v", short = 'v', default_value_t = 0)]
    pub verbosity: u8,
}

/// Upstream kubelet flags this kubelet does not implement that take a value. Existing
/// unit files pass many of them; refusing to start over one would make us no drop-in
/// replacement, so they are dropped with a warning instead.
const UNSUPPORTED_VALUE_FLAGS: &[&str] = &[
    "allowed-unsafe-sysctls",
    "cgroup-driver",
    "cgroup-root",
    "chaos-chance",
    "cloud-config",
    "cni-bin-dir",
    "cni-cache-dir",
    "cni-conf-dir",
    "container-log-max-files",
    "container-log-max-size",
    "container-runtime",
    "containerd",
    "cpu-cfs-quota-period",
    "cpu-manager-policy",
    "cpu-manager-reconcile-period",
    "docker-endpoint",
    "dynamic-config-dir",
    "enforce-node-allocatable",
    "event-burst",
    "event-qps",
    "eviction-max-pod-grace-period",
    "eviction-minimum-reclaim",
    "eviction-pressure-transition-period",
    "eviction-soft",
    "eviction-soft-grace-period",
    "experimental-mounter-path",
    "feature-gates",
    "hairpin-mode",
    "healthz-bind-address",
    "healthz-port",
    "http-check-frequency",
    "image-gc-high-threshold",
    "image-gc-low-threshold",
    "image-pull-progress-deadline",
    "image-service-endpoint",
    "iptables-drop-bit",
    "iptables-masquerade-bit",
    "kube-api-burst",
    "kube-api-content-type",
    "kube-api-qps",
    "kube-reserved-cgroup",
    "kubelet-cgroups",
    "lock-file",
    "log-backtrace-at",
    "log-dir",
    "log-file",
    "log-file-max-size",
    "log-flush-frequency",
    "logging-format",
    "manifest-url",
    "manifest-url-header",
    "master-service-namespace",
    "max-open-files",
    "minimum-container-ttl-duration",
    "minimum-image-ttl-duration",
    "network-plugin",
    "network-plugin-mtu",
    "node-status-max-images",
    "non-masquerade-cidr",
    "oom-score-adj",
    "pod-cidr",
    "pod-infra-container-image",
    "pod-max-pids",
    "pods-per-core",
    "qos-reserved",
    "read-only-port",
    "registry-burst",
    "registry-qps",
    "reserved-cpus",
    "resolv-conf",
    "runtime-cgroups",
    "runtime-request-timeout",
    "seccomp-profile-root",
    "stderrthreshold",
    "streaming-connection-idle-timeout",
    "sync-frequency",
    "system-cgroups",
    "system-reserved-cgroup",
    "tls-cipher-suites",
    "tls-min-version",
    "topology-manager-policy",
    "vmodule",
    "volume-plugin-dir",
    "volume-stats-agg-period",
];

/// Upstream boolean flags we do not implement: they never consume the next argument
/// (pflag only takes `--flag=false` for a boolean).
const UNSUPPORTED_BOOL_FLAGS: &[&str] = &[
    "alsologtostderr",
    "cgroups-per-qos",
    "contention-profiling",
    "cpu-cfs-quota",
    "enable-controller-attach-detach",
    "enable-debugging-handlers",
    "exit-on-lock-contention",
    "experimental-allocatable-ignore-eviction",
    "experimental-check-node-capabilities-before-mount",
    "experimental-kernel-memcg-notification",
    "fail-swap-on",
    "keep-terminated-pod-volumes",
    "kernel-memcg-notification",
    "logtostderr",
    "make-iptables-util-chains",
    "one-output",
    "protect-kernel-defaults",
    "really-crash-for-testing",
    "redirect-container-streaming",
    "register-schedulable",
    "runonce",
    "serialize-image-pulls",
    "skip-headers",
    "skip-log-headers",
];

/// Removes the upstream flags we do not implement (and their values) from `args`,
/// returning the remaining arguments and the names removed, for a warning once logging
/// is up. Anything else unknown is still an error from clap.
pub fn strip_unsupported(args: impl IntoIterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let Some(flag) = arg.strip_prefix("--") else {
            kept.push(arg);
            continue;
        };
        let (name, has_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        if UNSUPPORTED_BOOL_FLAGS.contains(&name) {
            dropped.push(name.to_string());
        } else if UNSUPPORTED_VALUE_FLAGS.contains(&name) {
            dropped.push(name.to_string());
            if !has_value {
                args.next();
            }
        } else {
            kept.push(arg);
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unsupported_upstream_flags_are_dropped_with_their_values() {
        // The command line hack/reference-node.sh gives the upstream kubelet.
        let (kept, dropped) = strip_unsupported(strings(&[
            "kubelet",
            "--config",
            "/c.yaml",
            "--container-runtime=remote",
            "--runtime-request-timeout=2m",
            "--volume-plugin-dir",
            "/v",
            "--fail-swap-on=false",
            "--logtostderr",
            "--pod-infra-container-image=registry.k8s.io/pause:3.10",
            "-v=1",
        ]));
        assert_eq!(kept, strings(&["kubelet", "--config", "/c.yaml", "-v=1"]));
        assert_eq!(
            dropped,
            strings(&[
                "container-runtime",
                "runtime-request-timeout",
                "volume-plugin-dir",
                "fail-swap-on",
                "logtostderr",
                "pod-infra-container-image",
            ])
        );
        let flags = Flags::try_parse_from(kept).unwrap();
        assert_eq!(flags.verbosity, 1);
    }

    #[test]
    fn flags_parse_as_pflag_does() {
        let f =
            Flags::try_parse_from(["kubelet", "--register-node=false", "--port", "10255"]).unwrap();
        assert_eq!(f.register_node, Some(false));
        assert_eq!(f.port, Some(10255));
        let f = Flags::try_parse_from(["kubelet", "--register-node", "--v", "3"]).unwrap();
        assert_eq!(f.register_node, Some(true));
        assert_eq!(f.verbosity, 3);
        assert!(Flags::try_parse_from(["kubelet", "--no-such-flag"]).is_err());
    }
}
