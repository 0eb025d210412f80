//! Registry credentials that come from the node rather than from the pod: exec
//! credential provider plugins (`--image-credential-provider-config`) and the built-in
//! ECR provider. Together they are upstream's default keyring, which the puller tries
//! after the pod's imagePullSecrets.

pub mod config;
pub mod ecr;
pub mod glob;
pub mod plugin;
pub mod role;
pub mod sigv4;

use std::path::Path;

use anyhow::{Result, bail};
use k8s_cri::v1 as cri;

use plugin::PluginProvider;

/// One credential a provider returned, with the image pattern it applies to (the key
/// of the provider's auth map, normalised as upstream's keyring `Add` does).
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub key: String,
    pub username: String,
    pub password: String,
}

impl RegistryAuth {
    pub fn new(pattern: &str, username: String, password: String) -> Self {
        RegistryAuth {
            key: normalise_key(pattern),
            username,
            password,
        }
    }
}

/// `https://host/v2/path` → `host/path`, as upstream keys its keyring.
fn normalise_key(pattern: &str) -> String {
    let s = pattern
        .strip_prefix("https://")
        .or_else(|| pattern.strip_prefix("http://"))
        .unwrap_or(pattern);
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let path = path
        .strip_prefix("/v2")
        .or_else(|| path.strip_prefix("/v1"))
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

#[derive(Default)]
pub struct Keyring {
    plugins: Vec<PluginProvider>,
    ecr: ecr::EcrProvider,
}

impl Keyring {
    /// From `--image-credential-provider-config` and `--image-credential-provider-bin-dir`
    /// (both or neither); the ECR provider is always there, as upstream 1.20's in-tree
    /// one is.
    pub fn from_flags(config: Option<&Path>, bin_dir: Option<&Path>) -> Result<Self> {
        let plugins = match (config, bin_dir) {
            (None, None) => Vec::new(),
            (Some(c), Some(d)) => config::load(c, d)?
                .into_iter()
                .map(PluginProvider::new)
                .collect(),
            (Some(_), None) => bail!(
                "--image-credential-provider-config needs --image-credential-provider-bin-dir"
            ),
            (None, Some(_)) => bail!(
                "--image-credential-provider-bin-dir needs --image-credential-provider-config"
            ),
        };
        for p in &plugins {
            tracing::info!(
                provider = p.name(),
                "image credential provider plugin registered"
            );
        }
        Ok(Keyring {
            plugins,
            ecr: ecr::EcrProvider::default(),
        })
    }

    /// The node's credentials for `repository` (`host/path`, no tag), in upstream's
    /// keyring order: every provider's answer gathered, then the entries whose key
    /// matches the repository, keys in reverse lexical order (the more specific
    /// first). A provider that fails is logged and skipped: the pull may still work
    /// with the pod's secrets or anonymously.
    pub async fn lookup(&self, repository: &str) -> Vec<cri::AuthConfig> {
        let mut auths: Vec<RegistryAuth> = Vec::new();
        for p in self.plugins.iter().filter(|p| p.matches(repository)) {
            match p.provide(repository).await {
                Ok(a) => auths.extend(a),
                Err(e) => {
                    tracing::warn!(provider = p.name(), image = repository, error = %format!("{e:#}"), "image credential provider failed")
                }
            }
        }
        match self.ecr.provide(repository).await {
            Ok(a) => auths.extend(a),
            Err(e) => {
                tracing::warn!(image = repository, error = %format!("{e:#}"), "ECR credential provider failed")
            }
        }
        select(auths, repository)
    }
}

fn select(mut auths: Vec<RegistryAuth>, repository: &str) -> Vec<cri::AuthConfig> {
    auths.sort_by(|a, b| b.key.cmp(&a.key));
    auths
        .into_iter()
        .filter(|a| glob::matches(&a.key, repository))
        .map(|a| cri::AuthConfig {
            username: a.username,
            password: a.password,
            server_address: a.key,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_and_more_specific_ones_come_first() {
        assert_eq!(normalise_key("https://reg.io/v2/"), "reg.io");
        assert_eq!(normalise_key("http://reg.io/v1/team"), "reg.io/team");
        assert_eq!(normalise_key("*.reg.io"), "*.reg.io");
        let a = |k: &str, u: &str| RegistryAuth::new(k, u.into(), "p".into());
        let picked = select(
            vec![
                a("reg.io", "host"),
                a("other.io", "other"),
                a("reg.io/team", "team"),
                a("*.io", "star"),
            ],
            "reg.io/team/app",
        );
        let users: Vec<&str> = picked.iter().map(|c| c.username.as_str()).collect();
        assert_eq!(users, ["team", "host", "star"]);
        assert_eq!(picked[0].server_address, "reg.io/team");
    }

    #[test]
    fn both_flags_or_neither() {
        assert!(Keyring::from_flags(None, None).is_ok());
        assert!(Keyring::from_flags(Some(Path::new("/c")), None).is_err());
        assert!(Keyring::from_flags(None, Some(Path::new("/d"))).is_err());
    }
}
