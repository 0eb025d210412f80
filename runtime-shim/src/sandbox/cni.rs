//! Invoking CNI plugins the way libcni does, so any spec-following plugin (ours, the
//! reference plugins, Calico...) works unchanged: the first network configuration in the
//! conf dir (lexical order, `.conflist` or single-plugin `.conf`/`.json`), each plugin
//! run in order for ADD with the previous result as `prevResult` and the capabilities it
//! declares in `runtimeConfig`, in reverse order for DEL (also after a failed ADD), and
//! the result cached in libcni's format (`/var/lib/cni/results`) for DEL and CHECK; GC
//! (spec 1.1) in order with the attachments still in use.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// libcni's result cache directory.
pub const CACHE_DIR: &str = "/var/lib/cni/results";

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The conflist as read, stored in the cache as libcni does.
    pub bytes: Vec<u8>,
}

/// Who the network is for: becomes CNI_ARGS and the cache key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// `runtimeConfig` values offered to plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    fn cni_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.pod_namespace.clone()),
            ("K8S_POD_NAME".into(), self.pod_name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                self.container_id.clone(),
            ),
            ("K8S_POD_UID".into(), self.pod_uid.clone()),
        ]
    }
}

/// Loads the network configuration a pod gets: the first valid file in `dir`.
pub fn load(dir: &Path) -> Result<Option<NetworkConfig>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "conflist" | "conf" | "json") {
            continue;
        }
        let bytes = std::fs::read(&f)?;
        match parse(&bytes, ext == "conflist") {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping invalid CNI config")
            }
        }
    }
    Ok(None)
}

/// Parses a conflist (or single-plugin conf) as stored in a sandbox record.
pub fn parse(bytes: &[u8], list: bool) -> Result<NetworkConfig> {
    let v: Value = serde_json::from_slice(bytes).context("not JSON")?;
    let (name, version) = (
        v["name"]
            .as_str()
            .ok_or_else(|| anyhow!("no name"))?
            .to_string(),
        v["cniVersion"].as_str().unwrap_or("0.2.0").to_string(),
    );
    let plugins = if list {
        v["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow!("conflist without plugins"))?
            .clone()
    } else {
        vec![v.clone()]
    };
    if plugins
        .iter()
        .any(|p| p["type"].as_str().is_none_or(str::is_empty))
    {
        bail!("a plugin has no type");
    }
    Ok(NetworkConfig {
        name,
        cni_version: version,
        plugins,
        bytes: bytes.to_vec(),
    })
}

pub struct Cni {
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Cni {
    fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "CNI plugin {plugin:?} not found in {}",
                    self.bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }

    fn cache_path(&self, net: &NetworkConfig, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}-{}", net.name, att.container_id, att.ifname))
    }

    /// Runs ADD through the whole list; on failure runs DEL so nothing stays allocated.
    pub async fn add(&self, net: &NetworkConfig, att: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self
                .exec("ADD", net, plugin, Some(att), prev.as_ref())
                .await
            {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    // The spec: a runtime must DEL after a failed ADD.
                    if let Err(de) = self.del(net, att).await {
                        tracing::warn!(error = %format!("{de:#}"), "CNI DEL after failed ADD");
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(net, att, &result)?;
        Ok(result)
    }

    /// Runs DEL in reverse order with the cached result; tolerant of plugins that are
    /// gone, as a pod must always be removable.
    pub async fn del(&self, net: &NetworkConfig, att: &Attachment) -> Result<()> {
        let cache = self.cache_path(net, att);
        let cached: Option<Value> = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["result"].clone())
            .filter(|r| !r.is_null());
        let mut first_err = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self
                .exec("DEL", net, plugin, Some(att), cached.as_ref())
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match std::fs::remove_file(&cache) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// GC through the whole list, as libcni runs it: each plugin gets the attachments
    /// (container ID, interface) still in use and releases what it holds for any other.
    /// Every plugin runs even if one fails; the first error is returned.
    ///
    /// libcni skips lists older than 1.1.0 (GC came with 1.1.0). We still GC such a list's
    /// plugins that report 1.1.0 in VERSION, at 1.1.0: Debian's reference plugins stop at
    /// 1.0.0 and refuse ADD in a 1.1.0 list, so a list with portmap stays at 1.0.0, and
    /// without this its vpc-cni would never learn which attachments leaked.
    pub async fn gc(&self, net: &NetworkConfig, valid: &[(String, String)]) -> Result<()> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        let mut first_err = None;
        for plugin in &net.plugins {
            let at = if knows_gc(&net.cni_version) {
                net.clone()
            } else if self.speaks(net, plugin, GC_VERSION).await {
                NetworkConfig {
                    cni_version: GC_VERSION.to_string(),
                    ..net.clone()
                }
            } else {
                continue;
            };
            let mut plugin = plugin.clone();
            // libcni sets both: the spec's key and the one its drafts used.
            plugin["cni.dev/valid-attachments"] = json!(valid);
            plugin["cni.dev/attachments"] = json!(valid);
            if let Err(e) = self.exec("GC", &at, &plugin, None, None).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether `plugin` lists `version` in its VERSION answer.
    async fn speaks(&self, net: &NetworkConfig, plugin: &Value, version: &str) -> bool {
        match self.exec("VERSION", net, plugin, None, None).await {
            Ok(v) => v["supportedVersions"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| v == version)),
            Err(_) => false,
        }
    }

    fn write_cache(&self, net: &NetworkConfig, att: &Attachment, result: &Value) -> Result<()> {
        use base64::Engine;
        std::fs::create_dir_all(&self.cache_dir)?;
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": base64::engine::general_purpose::STANDARD.encode(&net.bytes),
            "ifName": att.ifname,
            "networkName": net.name,
            "netns": att.netns,
            "cniArgs": att.cni_args(),
            "capabilityArgs": att.capability_args,
            "result": result,
        });
        let path = self.cache_path(net, att);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&entry)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    async fn exec(
        &self,
        command: &str,
        net: &NetworkConfig,
        plugin: &Value,
        // `None` for the commands about no one attachment (GC).
        att: Option<&Attachment>,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let typ = plugin["type"].as_str().unwrap_or_default();
        let binary = self.find(typ)?;
        let mut conf = plugin.clone();
        conf["name"] = json!(net.name);
        conf["cniVersion"] = json!(net.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        // Only the capabilities the plugin asked for, as libcni does.
        let mut rc = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = att.and_then(|a| a.capability_args.get(cap))
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        let path = std::env::join_paths(&self.bin_dirs).context("CNI bin dirs")?;
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env("CNI_COMMAND", command).env("CNI_PATH", path);
        if let Some(att) = att {
            let args = att
                .cni_args()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";");
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", args);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&serde_json::to_vec(&conf)?).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = stdout["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            let details = stdout["details"].as_str().unwrap_or("");
            bail!(
                "CNI {command} of plugin {typ} in network {} failed (code {}): {msg}{}",
                net.name,
                stdout["code"],
                if details.is_empty() {
                    String::new()
                } else {
                    format!(" ({details})")
                }
            );
        }
        Ok(stdout)
    }
}

/// The first spec version with GC.
const GC_VERSION: &str = "1.1.0";

/// Whether a network of `version` may be sent GC (spec 1.1.0 and later).
fn knows_gc(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 1)
}

/// The pod's primary IPv4 (or first) address from a CNI result, without the prefix.
pub fn pod_ip(result: &Value) -> Option<String> {
    let ips = result["ips"].as_array()?;
    let addrs: Vec<&str> = ips.iter().filter_map(|i| i["address"].as_str()).collect();
    addrs
        .iter()
        .find(|a| !a.contains(':'))
        .or(addrs.first())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_valid_config_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            d.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"ptp"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-other.conf"),
            r#"{"cniVersion":"0.4.0","name":"other","type":"bridge"}"#,
        )
        .unwrap();
        let c = load(d.path()).unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.plugins.len()), ("pods", 2));
        assert!(load(&d.path().join("missing")).unwrap().is_none());
    }

    /// A plugin that records its CNI_* variables and stdin, one file per run (VERSION
    /// calls apart: they only answer `recorder`'s versions, up to 1.0.0).
    fn recording_plugin(dir: &Path) -> Cni {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, versions) in [
            ("recorder", r#"["0.4.0","1.0.0"]"#),
            ("recorder11", r#"["0.4.0","1.0.0","1.1.0"]"#),
        ] {
            let script = format!(
                "#!/bin/sh\nif [ \"$CNI_COMMAND\" = VERSION ]; then cat >/dev/null; \
                 echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":{versions}}}'; exit 0; fi\n\
                 out={}/run.$$\nenv | grep ^CNI_ | sort > $out.env\ncat > $out.stdin\n",
                dir.display()
            );
            let plugin = bin.join(name);
            std::fs::write(&plugin, script).unwrap();
            std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Cni {
            bin_dirs: vec![bin],
            cache_dir: dir.join("cache"),
        }
    }

    fn runs(dir: &Path, ext: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == ext))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn gc_gives_every_plugin_the_attachments_in_use() {
        let d = tempfile::tempdir().unwrap();
        let cni = recording_plugin(d.path());
        let net = parse(
            br#"{"cniVersion":"1.1.0","name":"pods","plugins":[{"type":"recorder"},{"type":"recorder","x":1}]}"#,
            true,
        )
        .unwrap();
        let valid = vec![("abc".to_string(), "eth0".to_string())];
        cni.gc(&net, &valid).await.unwrap();
        let envs = runs(d.path(), "env");
        assert_eq!(envs.len(), 2);
        for env in &envs {
            assert!(env.contains("CNI_COMMAND=GC\n"), "{env}");
            // GC is about no one attachment.
            assert!(!env.contains("CNI_CONTAINERID"), "{env}");
            assert!(!env.contains("CNI_NETNS"), "{env}");
        }
        for stdin in runs(d.path(), "stdin") {
            let conf: Value = serde_json::from_str(&stdin).unwrap();
            let want = json!([{"containerID": "abc", "ifname": "eth0"}]);
            assert_eq!(conf["cni.dev/valid-attachments"], want, "{conf}");
            assert_eq!(conf["cni.dev/attachments"], want, "{conf}");
            assert_eq!(
                (conf["name"].as_str(), conf["cniVersion"].as_str()),
                (Some("pods"), Some("1.1.0"))
            );
        }
    }

    #[tokio::test]
    async fn networks_before_1_1_get_gc_only_for_plugins_that_speak_1_1() {
        let d = tempfile::tempdir().unwrap();
        let cni = recording_plugin(d.path());
        for version in ["1.0.0", "0.4.0"] {
            let conf = format!(
                r#"{{"cniVersion":"{version}","name":"pods","plugins":[{{"type":"recorder"}},{{"type":"recorder11"}}]}}"#
            );
            let net = parse(conf.as_bytes(), true).unwrap();
            cni.gc(&net, &[]).await.unwrap();
        }
        // One GC per list, both to the plugin that speaks 1.1.0, at 1.1.0.
        let envs = runs(d.path(), "env");
        assert_eq!(envs.len(), 2, "{envs:?}");
        assert!(
            envs.iter().all(|e| e.contains("CNI_COMMAND=GC\n")),
            "{envs:?}"
        );
        for stdin in runs(d.path(), "stdin") {
            let conf: Value = serde_json::from_str(&stdin).unwrap();
            assert_eq!(conf["type"], "recorder11", "{conf}");
            assert_eq!(conf["cniVersion"], "1.1.0", "{conf}");
        }
        assert!(knows_gc("1.1.0") && knows_gc("2.0.0") && !knows_gc("1.0.0"));
    }

    #[test]
    fn pod_ip_prefers_ipv4() {
        let r = json!({"ips":[{"address":"fd00::5/64"},{"address":"10.1.2.3/24"}]});
        assert_eq!(pod_ip(&r).as_deref(), Some("10.1.2.3"));
        assert_eq!(pod_ip(&json!({})), None);
    }
}
