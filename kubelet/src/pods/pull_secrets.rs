//! `imagePullSecrets`: the docker config Secrets a pod names, turned into the CRI
//! `AuthConfig`s to try for one image, as upstream's keyring matches them: by registry
//! host and optional path prefix, `docker.io` spelled any of its ways, longest match
//! first.

use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use super::sources::{self, KeyedKind};

#[derive(Debug, Default, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// base64 of `user:password`.
    #[serde(default)]
    auth: String,
}

/// One registry credential from a Secret: where it applies and what it says.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `host[/path]`, normalised (no scheme, no `/v1/`, docker.io for Docker Hub).
    prefix: String,
    auth: DockerAuth,
}

/// Reads the pod's pull secrets. A missing or malformed secret is skipped with a
/// warning, as upstream does: the pull may still work anonymously.
pub async fn credentials(client: &kube::Client, pod: &Pod) -> Vec<Credential> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for r in names {
        let name = r.name;
        let data = match sources::keyed(client, KeyedKind::Secret, &namespace, &name).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "image pull secret unavailable; pulling without it");
                continue;
            }
        };
        match parse_secret(&data) {
            Ok(creds) => out.extend(creds),
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "image pull secret is not a docker config")
            }
        }
    }
    out
}

/// `.dockerconfigjson` (`{"auths": {...}}`) or the older `.dockercfg` (the map alone).
fn parse_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<Credential>, String> {
    let auths = if let Some(json) = data.get(".dockerconfigjson") {
        serde_json::from_slice::<DockerConfigJson>(json)
            .map_err(|e| e.to_string())?
            .auths
    } else if let Some(json) = data.get(".dockercfg") {
        serde_json::from_slice::<BTreeMap<String, DockerAuth>>(json).map_err(|e| e.to_string())?
    } else {
        return Err("neither .dockerconfigjson nor .dockercfg".into());
    };
    Ok(auths
        .into_iter()
        .map(|(key, auth)| Credential {
            prefix: normalise(&key),
            auth,
        })
        .collect())
}

fn normalise(registry: &str) -> String {
    let s = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s
        .strip_suffix("/v1/")
        .or_else(|| s.strip_suffix("/v2/"))
        .unwrap_or(s);
    let s = s.trim_end_matches('/');
    let (host, path) = s.split_once('/').unwrap_or((s, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        h => h,
    };
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

/// `host/repository` of an image reference (`busybox` is `docker.io/library/busybox`):
/// what upstream's keyring, and so every credential provider, is asked about.
pub fn image_location(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    // A tag is after the last colon that comes after the last slash.
    let name = match (name.rfind(':'), name.rfind('/')) {
        (Some(c), Some(s)) if c > s => &name[..c],
        (Some(c), None) => &name[..c],
        _ => name,
    };
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            format!("{}/{rest}", normalise(first))
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

/// The credentials that apply to `image`, most specific first, as CRI AuthConfigs.
pub fn for_image(creds: &[Credential], image: &str) -> Vec<cri::AuthConfig> {
    let location = image_location(image);
    let mut matching: Vec<&Credential> = creds
        .iter()
        .filter(|c| location == c.prefix || location.starts_with(&format!("{}/", c.prefix)))
        .collect();
    matching.sort_by_key(|c| std::cmp::Reverse(c.prefix.len()));
    matching
        .into_iter()
        .map(|c| cri::AuthConfig {
            username: c.auth.username.clone(),
            password: c.auth.password.clone(),
            auth: c.auth.auth.clone(),
            server_address: c.prefix.split('/').next().unwrap_or_default().to_string(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(json: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(".dockerconfigjson".to_string(), json.as_bytes().to_vec())])
    }

    #[test]
    fn matches_by_host_and_path_most_specific_first() {
        let creds = parse_secret(&secret(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"username":"hub","password":"h"},
                "registry.example.com":{"auth":"dTpw"},
                "registry.example.com/team":{"username":"team","password":"t"}}}"#,
        ))
        .unwrap();
        let users = |image: &str| -> Vec<String> {
            for_image(&creds, image)
                .into_iter()
                .map(|a| {
                    if a.username.is_empty() {
                        a.auth
                    } else {
                        a.username
                    }
                })
                .collect()
        };
        assert_eq!(users("busybox"), vec!["hub"]);
        assert_eq!(users("docker.io/library/nginx:1.25"), vec!["hub"]);
        assert_eq!(
            users("registry.example.com/team/app:v1"),
            vec!["team", "dTpw"]
        );
        assert_eq!(users("registry.example.com/other@sha256:00"), vec!["dTpw"]);
        assert!(users("registry.example.com.evil.io/x").is_empty());
        assert!(users("quay.io/x/y").is_empty());
    }

    #[test]
    fn reads_the_old_dockercfg_and_refuses_other_secrets() {
        let old = BTreeMap::from([(
            ".dockercfg".to_string(),
            br#"{"localhost:5000":{"username":"u","password":"p"}}"#.to_vec(),
        )]);
        let creds = parse_secret(&old).unwrap();
        assert_eq!(for_image(&creds, "localhost:5000/img:1")[0].username, "u");
        assert!(parse_secret(&BTreeMap::new()).is_err());
        assert!(parse_secret(&secret("not json")).is_err());
    }
}
