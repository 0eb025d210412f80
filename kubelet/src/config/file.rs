//! The `--config` file: a KubeletConfiguration (kubelet.config.k8s.io/v1beta1) in YAML
//! or JSON. Only the fields this kubelet acts on are read; upstream 1.20 decodes
//! leniently too, so unknown fields are ignored rather than rejected.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Taint;
use serde::Deserialize;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfigFile {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub address: Option<String>,
    pub port: Option<i64>,
    pub max_pods: Option<i64>,
    pub register_node: Option<bool>,
    pub rotate_certificates: Option<bool>,
    /// Request the serving certificate from the cluster (kubernetes.io/kubelet-serving).
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: Option<bool>,
    pub register_with_taints: Option<Vec<Taint>>,
    pub kube_reserved: Option<BTreeMap<String, String>>,
    pub system_reserved: Option<BTreeMap<String, String>>,
    pub eviction_hard: Option<BTreeMap<String, String>>,
    pub node_status_update_frequency: Option<String>,
    pub node_status_report_frequency: Option<String>,
    pub node_lease_duration_seconds: Option<i64>,
    /// Moved from a flag into the file in 1.27; both are honoured.
    pub container_runtime_endpoint: Option<String>,
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    /// DNS servers for dnsPolicy ClusterFirst pods.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    pub enable_server: Option<bool>,
    /// Static pod manifests (--pod-manifest-path).
    pub static_pod_path: Option<std::path::PathBuf>,
    pub file_check_frequency: Option<String>,
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_private_key_file: Option<std::path::PathBuf>,
    pub authentication: Option<super::server::AuthenticationFile>,
    pub authorization: Option<super::server::AuthorizationFile>,
}

impl KubeletConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubelet config file {}", path.display()))?;
        let mut file = Self::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        file.resolve_relative_paths(path.parent().unwrap_or(Path::new("")));
        Ok(file)
    }

    /// Upstream reads relative paths in the file as relative to the file's directory.
    fn resolve_relative_paths(&mut self, base: &Path) {
        let resolve = |p: &mut Option<std::path::PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.tls_cert_file);
        resolve(&mut self.tls_private_key_file);
        resolve(&mut self.static_pod_path);
        if let Some(authn) = self.authentication.as_mut() {
            resolve(&mut authn.x509.client_ca_file);
        }
    }

    /// YAML is a superset of JSON, so one parser takes both encodings upstream accepts.
    pub fn parse(text: &str) -> Result<Self> {
        let file: KubeletConfigFile = serde_yaml::from_str(text)?;
        // Upstream refuses a file whose type it cannot identify; so do we, so a file
        // meant for another component is not silently half-applied.
        match (file.api_version.as_deref(), file.kind.as_deref()) {
            (Some(API_VERSION), Some(KIND)) => Ok(file),
            (api_version, kind) => bail!(
                "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got {:?} and {:?}",
                api_version.unwrap_or(""),
                kind.unwrap_or("")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cluster_dns() {
        let f = KubeletConfigFile::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\n",
        )
        .unwrap();
        assert_eq!(f.cluster_dns, Some(vec!["10.96.0.10".to_string()]));
        assert_eq!(f.cluster_domain.as_deref(), Some("cluster.local"));
    }

    #[test]
    fn reads_the_fields_we_act_on() {
        let f = KubeletConfigFile::parse(
            r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: 10250
maxPods: 42
registerWithTaints:
- key: dedicated
  value: infra
  effect: NoSchedule
kubeReserved: {cpu: 100m, memory: 256Mi}
systemReserved:
  memory: 128Mi
nodeStatusUpdateFrequency: 10s
nodeStatusReportFrequency: 5m0s
nodeLeaseDurationSeconds: 40
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
providerID: aws:///us-east-1a/i-0123
authentication: {anonymous: {enabled: false}}
serverTLSBootstrap: true
"#,
        )
        .unwrap();
        assert_eq!(f.max_pods, Some(42));
        assert_eq!(f.server_tls_bootstrap, Some(true));
        assert_eq!(f.port, Some(10250));
        assert_eq!(f.register_with_taints.unwrap()[0].key, "dedicated");
        assert_eq!(f.kube_reserved.unwrap()["memory"], "256Mi");
        assert_eq!(f.node_status_report_frequency.as_deref(), Some("5m0s"));
        assert_eq!(f.provider_id.as_deref(), Some("aws:///us-east-1a/i-0123"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             tlsCertFile: pki/serving.crt\ntlsPrivateKeyFile: /abs/serving.key\n\
             authentication: {x509: {clientCAFile: ca.crt}}\n",
        )
        .unwrap();
        let f = KubeletConfigFile::load(&path).unwrap();
        assert_eq!(f.tls_cert_file, Some(dir.path().join("pki/serving.crt")));
        assert_eq!(f.tls_private_key_file, Some("/abs/serving.key".into()));
        assert_eq!(
            f.authentication.unwrap().x509.client_ca_file,
            Some(dir.path().join("ca.crt"))
        );
    }

    #[test]
    fn refuses_other_kinds() {
        assert!(KubeletConfigFile::parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
        assert!(KubeletConfigFile::parse("port: 1\n").is_err());
    }
}
