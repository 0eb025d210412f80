//! `--image-credential-provider-config`: the `CredentialProviderConfig` file, read and
//! validated as upstream's `pkg/credentialprovider/plugin/config.go` does. The file
//! kinds of every kubelet release that has one are accepted (v1alpha1 from 1.20,
//! v1beta1 from 1.24, v1 from 1.26): their fields are the same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::glob;
use crate::config::parse_go_duration;

const CONFIG_API_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1alpha1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1",
];

/// The `CredentialProviderRequest`/`Response` versions a plugin may speak.
pub const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1alpha1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// One validated provider, its binary resolved in the bin dir.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub binary: PathBuf,
    pub match_images: Vec<String>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
}

/// Reads `file` and checks every provider's binary exists in `bin_dir`; any problem is
/// an error naming the field, so a typo stops the kubelet instead of silently pulling
/// without credentials (upstream fails the start the same way).
pub fn load(file: &Path, bin_dir: &Path) -> Result<Vec<ProviderConfig>> {
    if !bin_dir.is_dir() {
        bail!(
            "--image-credential-provider-bin-dir {}: not a directory",
            bin_dir.display()
        );
    }
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading --image-credential-provider-config {}",
            file.display()
        )
    })?;
    let providers =
        parse(&text).with_context(|| format!("credential provider config {}", file.display()))?;
    for p in &providers {
        if !p.binary_in(bin_dir).is_file() {
            bail!(
                "credential provider {:?}: plugin binary {} does not exist",
                p.name,
                p.binary_in(bin_dir).display()
            );
        }
    }
    Ok(providers
        .into_iter()
        .map(|p| ProviderConfig {
            binary: p.binary_in(bin_dir),
            ..p
        })
        .collect())
}

impl ProviderConfig {
    fn binary_in(&self, dir: &Path) -> PathBuf {
        dir.join(&self.name)
    }
}

/// Parses and validates the file's text (YAML or JSON).
pub fn parse(text: &str) -> Result<Vec<ProviderConfig>> {
    let file: File = serde_yaml::from_str(text).context("not a CredentialProviderConfig")?;
    if file.kind != "CredentialProviderConfig" {
        bail!("kind is {:?}, want CredentialProviderConfig", file.kind);
    }
    if !CONFIG_API_VERSIONS.contains(&file.api_version.as_str()) {
        bail!(
            "apiVersion {:?} is not supported: use one of {CONFIG_API_VERSIONS:?}",
            file.api_version
        );
    }
    if file.providers.is_empty() {
        bail!("providers: at least 1 item in plugins is required");
    }
    let mut out = Vec::new();
    for (i, p) in file.providers.into_iter().enumerate() {
        let field = format!("providers[{i}]");
        if p.name.is_empty() || p.name.contains('/') || p.name.contains(' ') {
            bail!(
                "{field}.name {:?}: must be a file name without '/' or spaces",
                p.name
            );
        }
        if p.name == "." || p.name == ".." {
            bail!("{field}.name cannot be {:?}", p.name);
        }
        if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
            bail!(
                "{field}.apiVersion {:?}: supported values are {PLUGIN_API_VERSIONS:?}",
                p.api_version
            );
        }
        if p.match_images.is_empty() {
            bail!("{field}.matchImages: at least 1 item in matchImages is required");
        }
        for m in &p.match_images {
            glob::validate(m).map_err(|e| {
                anyhow::anyhow!("{field}.matchImages {m:?}: match image is invalid: {e}")
            })?;
        }
        let duration = p
            .default_cache_duration
            .with_context(|| format!("{field}.defaultCacheDuration is required"))?;
        let default_cache_duration = parse_go_duration(&duration)
            .with_context(|| format!("{field}.defaultCacheDuration {duration:?}"))?;
        out.push(ProviderConfig {
            name: p.name,
            binary: PathBuf::new(),
            match_images: p.match_images,
            default_cache_duration,
            api_version: p.api_version,
            args: p.args,
            env: p.env,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1ALPHA1: &str = r#"
kind: CredentialProviderConfig
apiVersion: kubelet.config.k8s.io/v1alpha1
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1alpha1
    args: [get-credentials]
    env: [{name: AWS_PROFILE, value: node}]
"#;

    #[test]
    fn reads_every_file_version() {
        let p = parse(V1ALPHA1).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "ecr-credential-provider");
        assert_eq!(p[0].default_cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(p[0].args, ["get-credentials"]);
        assert_eq!(p[0].env[0].name, "AWS_PROFILE");
        for v in ["v1beta1", "v1"] {
            let text = V1ALPHA1
                .replace("config.k8s.io/v1alpha1", &format!("config.k8s.io/{v}"))
                .replace(
                    "provider.kubelet.k8s.io/v1alpha1",
                    &format!("provider.kubelet.k8s.io/{v}"),
                );
            assert_eq!(
                parse(&text).unwrap()[0].api_version,
                format!("credentialprovider.kubelet.k8s.io/{v}")
            );
        }
    }

    #[test]
    fn refuses_what_upstream_refuses() {
        let bad = |from: &str, to: &str| {
            let err = parse(&V1ALPHA1.replace(from, to)).unwrap_err();
            format!("{err:#}")
        };
        assert!(bad("CredentialProviderConfig", "Other").contains("kind"));
        assert!(
            bad("kubelet.config.k8s.io/v1alpha1", "kubelet.config.k8s.io/v2")
                .contains("apiVersion")
        );
        assert!(bad("name: ecr-credential-provider", "name: ../ecr").contains("name"));
        assert!(
            bad("    defaultCacheDuration: \"12h\"\n", "")
                .contains("defaultCacheDuration is required")
        );
        assert!(bad("\"12h\"", "\"soon\"").contains("defaultCacheDuration"));
        assert!(
            bad(
                "provider.kubelet.k8s.io/v1alpha1",
                "provider.kubelet.k8s.io/v9"
            )
            .contains("apiVersion")
        );
        assert!(
            bad(
                "[\"*.dkr.ecr.*.amazonaws.com\", \"*.dkr.ecr.*.amazonaws.com.cn\"]",
                "[]"
            )
            .contains("matchImages")
        );
        assert!(bad("\"*.dkr.ecr.*.amazonaws.com\",", "\"https://x.io\",").contains("matchImages"));
    }

    #[test]
    fn load_wants_the_binary_in_the_bin_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, V1ALPHA1).unwrap();
        let err = load(&file, dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
        std::fs::write(dir.path().join("ecr-credential-provider"), "#!/bin/sh\n").unwrap();
        let p = load(&file, dir.path()).unwrap();
        assert_eq!(p[0].binary, dir.path().join("ecr-credential-provider"));
        assert!(load(&file, &dir.path().join("nope")).is_err());
    }
}
