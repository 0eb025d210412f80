//! `kubelet install --bootstrap-config FILE [--root DIR]`: turns one YAML file that
//! describes the cluster into everything a node needs to join it, at upstream's
//! locations under `--root`: the KubeletConfiguration (/var/lib/kubelet/config.yaml),
//! a bootstrap kubeconfig (bootstrap token) or kubeconfig (exec plugin), the cluster
//! CA, the CNI conflist in /etc/cni/net.d and systemd units for kubelet, runtime-shim
//! and ipamd. Paths written inside the files are the final ones (without the root),
//! so `--root` can stage an image. Everything is validated before anything is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "kubelet install",
    about = "Write a node's kubelet, CNI and systemd configuration"
)]
pub struct InstallFlags {
    /// The cluster description (YAML, see docs/joining-clusters.md).
    #[arg(long)]
    pub bootstrap_config: PathBuf,
    /// Prefix every written file with this directory.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the node's binaries (kubelet, runtime-shim, ipamd) are installed.
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapConfig {
    /// `https://host[:port]` of the API server.
    pub api_server_endpoint: String,
    /// The cluster CA, PEM or base64 of PEM (as `aws eks describe-cluster` prints it).
    pub certificate_authority: String,
    pub auth: Auth,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
    pub networking: Networking,
    /// The node's pod range in `podcidr` mode.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    pub max_pods: Option<i64>,
    /// `aws` on EC2 (node named after its private DNS name, providerID set).
    pub cloud_provider: Option<String>,
}

fn default_domain() -> String {
    "cluster.local".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// `<id>.<secret>` (TLS bootstrap).
    pub bootstrap_token: Option<String>,
    /// A client-go exec credential plugin (e.g. `aws eks get-token`).
    pub exec: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Networking {
    Eni,
    Podcidr,
}

pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
pub const KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
pub const BOOTSTRAP_KUBECONFIG: &str = "/var/lib/kubelet/bootstrap-kubeconfig";
pub const CA_FILE: &str = "/etc/kubernetes/pki/ca.crt";
pub const CNI_CONFLIST: &str = "/etc/cni/net.d/10-vpc-cni.conflist";
const RUNTIME_SOCKET: &str = "unix:///run/runtime-shim/cri.sock";
const IPAMD_SOCKET: &str = "/run/vpc-cni/ipamd.sock";
const UNIT_DIR: &str = "/etc/systemd/system";

/// `kubelet install ...`: parses `args` (after `install`) and writes the files.
pub fn main(args: impl IntoIterator<Item = String>) -> Result<()> {
    let flags =
        InstallFlags::parse_from(std::iter::once("kubelet install".to_string()).chain(args));
    let text = std::fs::read_to_string(&flags.bootstrap_config).with_context(|| {
        format!(
            "reading --bootstrap-config {}",
            flags.bootstrap_config.display()
        )
    })?;
    let config = parse(&text)
        .with_context(|| format!("--bootstrap-config {}", flags.bootstrap_config.display()))?;
    for (path, _) in write(&config, &flags.root, &flags.bin_dir)? {
        println!("{}", path.display());
    }
    Ok(())
}

pub fn parse(text: &str) -> Result<BootstrapConfig> {
    let c: BootstrapConfig = serde_yaml::from_str(text)?;
    if !c.api_server_endpoint.starts_with("https://") {
        bail!(
            "apiServerEndpoint {:?} must be an https:// URL",
            c.api_server_endpoint
        );
    }
    ca_pem(&c.certificate_authority)?;
    match (&c.auth.bootstrap_token, &c.auth.exec) {
        (Some(t), None) => {
            let ok = t.split_once('.').is_some_and(|(id, secret)| {
                id.len() == 6
                    && secret.len() == 16
                    && t.bytes()
                        .all(|b| b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit())
            });
            if !ok {
                bail!("auth.bootstrapToken must look like abcdef.0123456789abcdef");
            }
        }
        (None, Some(exec)) => {
            if exec
                .get("command")
                .and_then(|v| v.as_str())
                .is_none_or(str::is_empty)
            {
                bail!("auth.exec.command is required");
            }
        }
        _ => bail!("auth: give exactly one of bootstrapToken and exec"),
    }
    if c.cluster_dns.is_empty() {
        bail!("clusterDNS: at least one address is required");
    }
    for ip in &c.cluster_dns {
        ip.parse::<std::net::IpAddr>()
            .with_context(|| format!("clusterDNS {ip:?} is not an IP address"))?;
    }
    match (c.networking, &c.pod_cidr) {
        (Networking::Podcidr, None) => bail!("networking podcidr needs podCIDR"),
        (Networking::Podcidr, Some(cidr)) => {
            cidr.parse::<ipnet_like::Cidr>()
                .map_err(|e| anyhow::anyhow!("podCIDR {cidr:?}: {e}"))?;
        }
        (Networking::Eni, Some(_)) => {
            bail!("podCIDR is for networking podcidr; eni pods get VPC addresses")
        }
        (Networking::Eni, None) => {}
    }
    if let Some(n) = c.max_pods
        && n <= 0
    {
        bail!("maxPods must be positive");
    }
    if let Some(p) = &c.cloud_provider {
        crate::cloud::CloudProvider::parse(p)?;
    }
    Ok(c)
}

/// A minimal CIDR check, so a typo is refused here rather than by ipamd at boot.
mod ipnet_like {
    pub struct Cidr;
    impl std::str::FromStr for Cidr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (ip, len) = s.split_once('/').ok_or("not address/length")?;
            let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("{e}"))?;
            let len: u8 = len.parse().map_err(|e| format!("{e}"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(format!("prefix length {len} > {max}"));
            }
            Ok(Cidr)
        }
    }
}

/// The CA as PEM, whether given as PEM or as base64 of it.
fn ca_pem(ca: &str) -> Result<String> {
    let ca = ca.trim();
    let pem = if ca.starts_with("-----BEGIN") {
        ca.to_string()
    } else {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(ca.split_whitespace().collect::<String>())
            .context("certificateAuthority is neither PEM nor base64")?;
        String::from_utf8(bytes).context("certificateAuthority is not PEM")?
    };
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("certificateAuthority holds no PEM certificate");
    }
    Ok(format!("{}\n", pem.trim_end()))
}

/// Every file of the node: (final absolute path, content, mode).
pub fn files(c: &BootstrapConfig, bin_dir: &str) -> Result<Vec<(String, String, u32)>> {
    let ca = ca_pem(&c.certificate_authority)?;
    let ca_data = base64::engine::general_purpose::STANDARD.encode(&ca);
    let mut user = serde_json::Map::new();
    let (kubeconfig_path, bootstrap) = match (&c.auth.bootstrap_token, &c.auth.exec) {
        (Some(token), _) => {
            user.insert("token".into(), token.clone().into());
            (BOOTSTRAP_KUBECONFIG, true)
        }
        (None, Some(exec)) => {
            let mut exec = exec.clone();
            if exec.get("apiVersion").is_none() {
                exec["apiVersion"] = "client.authentication.k8s.io/v1beta1".into();
            }
            user.insert("exec".into(), exec);
            (KUBECONFIG, false)
        }
        (None, None) => bail!("auth: give exactly one of bootstrapToken and exec"),
    };
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "kubelet",
        "clusters": [{"name": "cluster", "cluster": {
            "server": c.api_server_endpoint, "certificate-authority-data": ca_data}}],
        "users": [{"name": "kubelet", "user": user}],
        "contexts": [{"name": "kubelet", "context": {"cluster": "cluster", "user": "kubelet"}}],
    });
    let mut config = json!({
        "apiVersion": crate::config::file::API_VERSION,
        "kind": crate::config::file::KIND,
        "containerRuntimeEndpoint": RUNTIME_SOCKET,
        "clusterDNS": c.cluster_dns,
        "clusterDomain": c.cluster_domain,
        "rotateCertificates": bootstrap,
        "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": true},
            "x509": {"clientCAFile": CA_FILE}},
        "authorization": {"mode": "Webhook"},
    });
    if let Some(n) = c.max_pods {
        config["maxPods"] = n.into();
    }
    let conflist = json!({"cniVersion": "1.0.0", "name": "vpc-cni", "plugins": [
        {"type": "vpc-cni", "ipamdSocket": IPAMD_SOCKET, "mtu": 9001},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]});

    let mut kubelet_args = vec![
        format!("--config={KUBELET_CONFIG}"),
        format!("--kubeconfig={KUBECONFIG}"),
    ];
    if bootstrap {
        kubelet_args.push(format!("--bootstrap-kubeconfig={BOOTSTRAP_KUBECONFIG}"));
    }
    if let Some(p) = &c.cloud_provider {
        kubelet_args.push(format!("--cloud-provider={p}"));
    }
    let ipamd_args = match c.networking {
        Networking::Eni => "--mode eni".to_string(),
        Networking::Podcidr => format!(
            "--mode podcidr --pod-cidr {}",
            c.pod_cidr.as_deref().unwrap_or_default()
        ),
    };
    let unit = |desc: &str, after: &str, exec: String| {
        format!(
            "[Unit]\nDescription={desc}\nAfter={after}\nWants={after}\n\n[Service]\nExecStart={exec}\nRestart=always\nRestartSec=5\nDelegate=yes\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
        )
    };
    Ok(vec![
        (CA_FILE.into(), ca, 0o644),
        (
            kubeconfig_path.into(),
            serde_yaml::to_string(&kubeconfig)?,
            0o600,
        ),
        (
            KUBELET_CONFIG.into(),
            serde_yaml::to_string(&config)?,
            0o644,
        ),
        (
            CNI_CONFLIST.into(),
            serde_json::to_string_pretty(&conflist)?,
            0o644,
        ),
        (
            format!("{UNIT_DIR}/ipamd.service"),
            unit(
                "vpc-cni IP address management daemon",
                "network-online.target",
                format!("{bin_dir}/ipamd {ipamd_args} --socket {IPAMD_SOCKET}"),
            ),
            0o644,
        ),
        (
            format!("{UNIT_DIR}/runtime-shim.service"),
            unit(
                "runtime-shim CRI runtime",
                "ipamd.service",
                format!(
                    "{bin_dir}/runtime-shim --listen {RUNTIME_SOCKET} --cni-conf-dir /etc/cni/net.d --cni-bin-dir /opt/cni/bin:{bin_dir}"
                ),
            ),
            0o644,
        ),
        (
            format!("{UNIT_DIR}/kubelet.service"),
            unit(
                "Kubernetes node agent",
                "runtime-shim.service",
                format!("{bin_dir}/kubelet {}", kubelet_args.join(" ")),
            ),
            0o644,
        ),
    ])
}

/// Writes [`files`] under `root` (each atomically: a temporary file renamed over).
pub fn write(c: &BootstrapConfig, root: &Path, bin_dir: &str) -> Result<Vec<(PathBuf, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let files = files(c, bin_dir)?;
    let mut out = Vec::new();
    for dir in ["/var/log/pods", "/opt/cni/bin"] {
        let d = root.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for (path, content, mode) in files {
        let target = root.join(path.trim_start_matches('/'));
        let parent = target.parent().context("file without a directory")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = target.with_extension("tmp-install");
        std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
        out.push((target, mode));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn config(extra: &str) -> String {
        format!(
            "apiServerEndpoint: https://api.example:6443\ncertificateAuthority: {}\nclusterDNS: [10.100.0.10]\n{extra}",
            base64::engine::general_purpose::STANDARD.encode(CA)
        )
    }

    #[test]
    fn writes_parseable_files_for_a_bootstrap_token_node() {
        let c = parse(&config(
            "auth: {bootstrapToken: abcdef.0123456789abcdef}\nnetworking: podcidr\npodCIDR: 10.244.1.0/24\nmaxPods: 40\n",
        ))
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        write(&c, root.path(), "/usr/local/bin").unwrap();
        let at = |p: &str| root.path().join(p.trim_start_matches('/'));
        let file = crate::config::KubeletConfigFile::load(&at(KUBELET_CONFIG)).unwrap();
        assert_eq!(file.max_pods, Some(40));
        assert_eq!(file.cluster_dns, Some(vec!["10.100.0.10".to_string()]));
        assert_eq!(file.rotate_certificates, Some(true));
        let boot = kube::config::Kubeconfig::read_from(at(BOOTSTRAP_KUBECONFIG)).unwrap();
        let user = boot.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
        assert_eq!(
            boot.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://api.example:6443")
        );
        assert_eq!(std::fs::read_to_string(at(CA_FILE)).unwrap(), CA);
        let cni: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(at(CNI_CONFLIST)).unwrap()).unwrap();
        assert_eq!(cni["plugins"][0]["type"], "vpc-cni");
        let ipamd = std::fs::read_to_string(at("/etc/systemd/system/ipamd.service")).unwrap();
        assert!(
            ipamd.contains("--mode podcidr --pod-cidr 10.244.1.0/24"),
            "{ipamd}"
        );
        let kubelet = std::fs::read_to_string(at("/etc/systemd/system/kubelet.service")).unwrap();
        assert!(kubelet.contains("--bootstrap-kubeconfig=/var/lib/kubelet/bootstrap-kubeconfig"));
        assert!(at("/var/log/pods").is_dir() && at("/opt/cni/bin").is_dir());
    }

    #[test]
    fn exec_auth_writes_the_kubeconfig_itself() {
        let c = parse(&config(
            "auth: {exec: {command: aws, args: [eks, get-token, --cluster-name, demo]}}\nnetworking: eni\ncloudProvider: aws\n",
        ))
        .unwrap();
        let files = files(&c, "/usr/bin").unwrap();
        let (_, kubeconfig, mode) = files.iter().find(|f| f.0 == KUBECONFIG).unwrap();
        assert_eq!(*mode, 0o600);
        let k: kube::config::Kubeconfig = serde_yaml::from_str(kubeconfig).unwrap();
        let exec = k.auth_infos[0]
            .auth_info
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(exec.command.as_deref(), Some("aws"));
        assert!(!files.iter().any(|f| f.0 == BOOTSTRAP_KUBECONFIG));
        let unit = &files
            .iter()
            .find(|f| f.0.ends_with("kubelet.service"))
            .unwrap()
            .1;
        assert!(unit.contains("--cloud-provider=aws") && !unit.contains("bootstrap"));
    }

    #[test]
    fn refuses_bad_descriptions() {
        let token = "auth: {bootstrapToken: abcdef.0123456789abcdef}\n";
        for (extra, want) in [
            (format!("{token}networking: podcidr\n"), "podCIDR"),
            (
                format!("{token}networking: eni\npodCIDR: 10.0.0.0/8\n"),
                "podCIDR",
            ),
            (format!("{token}networking: vxlan\n"), "networking"),
            (
                "auth: {bootstrapToken: nope}\nnetworking: eni\n".into(),
                "bootstrapToken",
            ),
            ("auth: {}\nnetworking: eni\n".into(), "exactly one"),
            (
                format!("{token}networking: podcidr\npodCIDR: 10.0.0.0/40\n"),
                "prefix",
            ),
            (format!("{token}networking: eni\nmaxPods: 0\n"), "maxPods"),
            (format!("{token}networking: eni\nbogus: 1\n"), "bogus"),
        ] {
            let err = format!("{:#}", parse(&config(&extra)).unwrap_err());
            assert!(err.contains(want), "{extra}: {err}");
        }
        assert!(parse(&config(token).replace("https://", "http://")).is_err());
        assert!(
            parse(&format!(
                "{}networking: eni\n",
                config(token).replace(
                    &base64::engine::general_purpose::STANDARD.encode(CA),
                    "bm90IGEgY2VydA=="
                )
            ))
            .is_err()
        );
    }
}
