//! One exec credential provider plugin (upstream's `pluginProvider`): run with a
//! `CredentialProviderRequest` on stdin for images its `matchImages` cover, its
//! `CredentialProviderResponse` cached per image, registry or globally as the plugin
//! says, for its `cacheDuration` or the config's `defaultCacheDuration`.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::RegistryAuth;
use super::config::ProviderConfig;
use super::glob;
use crate::config::parse_go_duration;

/// Upstream's catch-all: long enough for a plugin to retry a failed request, short
/// enough that a hung plugin cannot block pulls forever.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The cache key a `Global` response is stored under.
const GLOBAL_KEY: &str = "global";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub struct PluginProvider {
    config: ProviderConfig,
    /// Held across the exec, as upstream holds its lock: concurrent pulls of one
    /// registry then run the plugin once and share the cached answer.
    cache: Mutex<HashMap<String, (Instant, Vec<RegistryAuth>)>>,
}

impl PluginProvider {
    pub fn new(config: ProviderConfig) -> Self {
        PluginProvider {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether one of `matchImages` covers `image` (a repository without tag).
    pub fn matches(&self, image: &str) -> bool {
        self.config
            .match_images
            .iter()
            .any(|m| glob::matches(m, image))
    }

    /// The plugin's credentials for `image`, from the cache when a live entry covers
    /// it (the image itself, then its registry, then the global entry, as upstream
    /// looks), else from running the plugin.
    pub async fn provide(&self, image: &str) -> Result<Vec<RegistryAuth>> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        cache.retain(|_, (expires, _)| *expires > now);
        let registry = registry_of(image);
        for key in [image, registry, GLOBAL_KEY] {
            if let Some((_, auths)) = cache.get(key) {
                return Ok(auths.clone());
            }
        }
        let response = self.exec(image).await?;
        let key = match response.cache_key_type.as_str() {
            "Image" => image,
            "Registry" => registry,
            "Global" => GLOBAL_KEY,
            other => bail!(
                "credential provider plugin {} returned an invalid cacheKeyType {other:?}",
                self.config.name
            ),
        };
        let auths: Vec<RegistryAuth> = response
            .auth
            .into_iter()
            .map(|(pattern, a)| RegistryAuth::new(&pattern, a.username, a.password))
            .collect();
        let ttl = match &response.cache_duration {
            Some(d) => parse_go_duration(d).with_context(|| {
                format!(
                    "credential provider plugin {}: cacheDuration {d:?}",
                    self.config.name
                )
            })?,
            None => self.config.default_cache_duration,
        };
        // A zero duration, given or defaulted, means the answer is not cached at all.
        if !ttl.is_zero() {
            cache.insert(key.to_string(), (now + ttl, auths.clone()));
        }
        Ok(auths)
    }

    async fn exec(&self, image: &str) -> Result<Response> {
        let c = &self.config;
        let request = serde_json::json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": c.api_version,
            "image": image,
        });
        let what = || {
            format!(
                "credential provider plugin {} for image {image}",
                c.binary.display()
            )
        };
        // The kubelet's environment plus the config's, as kubelets since 1.25 pass it
        // (1.20 passed only the config's, which left plugins without PATH or proxies).
        let mut child = tokio::process::Command::new(&c.binary)
            .args(&c.args)
            .envs(c.env.iter().map(|e| (&e.name, &e.value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(what)?;
        let mut stdin = child.stdin.take().context("plugin stdin")?;
        let body = serde_json::to_vec(&request)?;
        let run = async {
            // A plugin that exits without reading its stdin is not an error by itself.
            let _ = stdin.write_all(&body).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(EXEC_TIMEOUT, run)
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {EXEC_TIMEOUT:?}"))
            .with_context(what)?
            .with_context(what)?;
        if !output.status.success() {
            bail!(
                "{}: {}: {}",
                what(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let response: Response = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("{}: decoding its response", what()))?;
        if response.kind != "CredentialProviderResponse" {
            bail!(
                "{}: kind was {:?}, expected CredentialProviderResponse",
                what(),
                response.kind
            );
        }
        if response.api_version != c.api_version {
            bail!(
                "{}: apiVersion from credential plugin response did not match ({:?}, want {:?})",
                what(),
                response.api_version,
                c.api_version
            );
        }
        Ok(response)
    }
}

/// The registry part of a repository (upstream's `parseRegistry`).
fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A plugin script that counts its runs in `dir/runs`, echoes its request to
    /// `dir/request` and answers `response`.
    fn plugin(dir: &std::path::Path, response: &str, cache: &str) -> PluginProvider {
        let bin = dir.join("plugin");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\ncat > {d}/request\necho \"$1 $GREETING\" > {d}/argv\necho run >> {d}/runs\ncat <<'EOF'\n{response}\nEOF\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        PluginProvider::new(ProviderConfig {
            name: "plugin".into(),
            binary: bin,
            match_images: vec!["*.example.com".into()],
            default_cache_duration: parse_go_duration(cache).unwrap(),
            api_version: "credentialprovider.kubelet.k8s.io/v1alpha1".into(),
            args: vec!["get-credentials".into()],
            env: vec![super::super::config::EnvVar {
                name: "GREETING".into(),
                value: "hello".into(),
            }],
        })
    }

    fn runs(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn response(key_type: &str, duration: Option<&str>) -> String {
        let mut r = serde_json::json!({
            "kind": "CredentialProviderResponse",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1alpha1",
            "cacheKeyType": key_type,
            "auth": {"*.example.com": {"username": "u", "password": "p"}},
        });
        if let Some(d) = duration {
            r["cacheDuration"] = d.into();
        }
        r.to_string()
    }

    #[tokio::test]
    async fn runs_the_plugin_and_caches_by_registry() {
        let dir = tempfile::tempdir().unwrap();
        let p = plugin(dir.path(), &response("Registry", None), "1h");
        assert!(p.matches("reg.example.com/app"));
        assert!(!p.matches("reg.other.com/app"));
        let auths = p.provide("reg.example.com/app").await.unwrap();
        assert_eq!(auths[0].username, "u");
        assert_eq!(auths[0].key, "*.example.com");
        let request: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("request")).unwrap())
                .unwrap();
        assert_eq!(
            request,
            serde_json::json!({"kind": "CredentialProviderRequest",
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1alpha1",
                "image": "reg.example.com/app"})
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("argv"))
                .unwrap()
                .trim(),
            "get-credentials hello"
        );
        // Same registry, another repository: from the cache.
        p.provide("reg.example.com/other").await.unwrap();
        assert_eq!(runs(dir.path()), 1);
        // Another registry: the plugin again.
        p.provide("two.example.com/app").await.unwrap();
        assert_eq!(runs(dir.path()), 2);
    }

    #[tokio::test]
    async fn image_keys_zero_durations_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let p = plugin(dir.path(), &response("Image", None), "1h");
        p.provide("reg.example.com/app").await.unwrap();
        p.provide("reg.example.com/app").await.unwrap();
        p.provide("reg.example.com/other").await.unwrap();
        assert_eq!(runs(dir.path()), 2);

        let dir = tempfile::tempdir().unwrap();
        let p = plugin(dir.path(), &response("Global", Some("0s")), "1h");
        p.provide("reg.example.com/app").await.unwrap();
        p.provide("reg.example.com/app").await.unwrap();
        assert_eq!(runs(dir.path()), 2, "cacheDuration 0 is never cached");

        let dir = tempfile::tempdir().unwrap();
        let p = plugin(dir.path(), &response("Global", Some("200ms")), "1h");
        p.provide("a.example.com/app").await.unwrap();
        p.provide("b.example.com/app").await.unwrap();
        assert_eq!(runs(dir.path()), 1, "a Global entry covers every image");
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.provide("a.example.com/app").await.unwrap();
        assert_eq!(runs(dir.path()), 2, "expired after cacheDuration");
    }

    #[tokio::test]
    async fn bad_responses_are_errors() {
        for (response, want) in [
            (response("Sometimes", None), "cacheKeyType"),
            (
                response("Image", None).replace("v1alpha1", "v1beta1"),
                "did not match",
            ),
            (
                response("Image", None).replace("CredentialProviderResponse", "X"),
                "kind",
            ),
            ("not json".to_string(), "decoding"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = plugin(dir.path(), &response, "1h");
            let err = format!("{:#}", p.provide("reg.example.com/app").await.unwrap_err());
            assert!(err.contains(want), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = plugin(dir.path(), "", "1h");
        std::fs::write(
            dir.path().join("plugin"),
            "#!/bin/sh\necho broken >&2\nexit 3\n",
        )
        .unwrap();
        let err = format!("{:#}", p.provide("reg.example.com/app").await.unwrap_err());
        assert!(
            err.contains("broken") && err.contains("exit status: 3"),
            "{err}"
        );
    }
}
