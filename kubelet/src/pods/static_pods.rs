//! Static pods: Pod manifests in `staticPodPath` (`--pod-manifest-path`), one Pod per
//! file in YAML or JSON, re-read every `fileCheckFrequency`. Each is named, defaulted
//! and annotated as upstream's file source does (pkg/kubelet/config/file.go,
//! common.go): the name gets `-<nodeName>`, the namespace defaults to `default`, the
//! UID is a hash of the node, the file and its content (so an edit is a new pod),
//! and the `kubernetes.io/config.*` annotations say where the pod came from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
pub const SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// upstream's maxConfigLength: a bigger manifest is refused.
const MAX_MANIFEST_BYTES: u64 = 10 << 20;

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A pod this kubelet got from a file, not from the API (upstream's IsStaticPod).
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, SOURCE_ANNOTATION).is_some_and(|s| s != "api")
}

/// The API's copy of a static pod (upstream's IsMirrorPod).
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR_ANNOTATION).is_some()
}

/// The static pod's hash (its `config.hash`), or the one a mirror pod was made from.
pub fn hash_of(pod: &Pod) -> Option<&str> {
    annotation(pod, MIRROR_ANNOTATION).or_else(|| annotation(pod, HASH_ANNOTATION))
}

/// `<namespace>/<name>`: how static and mirror pods are matched.
pub fn full_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Reads the manifests under `path` and sends the whole set after every read.
pub struct FileSource {
    path: PathBuf,
    node_name: String,
    period: Duration,
    /// When each UID was first seen: `config.seen` keeps its first value, as upstream.
    seen: HashMap<String, String>,
}

impl FileSource {
    pub fn new(path: PathBuf, node_name: &str, period: Duration) -> Self {
        FileSource {
            path,
            node_name: node_name.to_string(),
            period,
            seen: HashMap::new(),
        }
    }

    /// The static pods the path holds now; unreadable or invalid manifests are
    /// logged and left out, as upstream does.
    pub fn list(&mut self) -> Vec<Pod> {
        let mut pods = match read_path(&self.path, &self.node_name) {
            Ok(pods) => pods,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %format!("{e:#}"), "unable to read config path");
                vec![]
            }
        };
        // Two files naming the same pod: the first one (in name order) wins.
        let mut names = std::collections::HashSet::new();
        pods.retain(|p| {
            let unique = names.insert(full_name(p));
            if !unique {
                tracing::warn!(pod = %full_name(p), "duplicate static pod name; ignoring the later manifest");
            }
            unique
        });
        let now = seen_now();
        let mut seen = HashMap::new();
        for pod in &mut pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let stamp = self.seen.get(&uid).cloned().unwrap_or_else(|| now.clone());
            pod.metadata
                .annotations
                .get_or_insert_default()
                .insert(SEEN_ANNOTATION.into(), stamp.clone());
            seen.insert(uid, stamp);
        }
        self.seen = seen;
        pods
    }

    /// Re-reads the path every period, sending each set; ends when `tx` closes.
    pub async fn run(mut self, tx: mpsc::Sender<Vec<Pod>>) {
        tracing::info!(path = %self.path.display(), period = ?self.period, "watching static pod path");
        loop {
            tokio::time::sleep(self.period).await;
            if tx.send(self.list()).await.is_err() {
                return;
            }
        }
    }
}

/// upstream's RFC3339NanoFixed timestamp.
fn seen_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

/// A directory's manifests (not recursing, dot files ignored) or a single file. A
/// path that does not exist holds no pods.
fn read_path(path: &Path, node_name: &str) -> Result<Vec<Pod>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "static pod path does not exist");
            return Ok(vec![]);
        }
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if meta.is_file() {
        return Ok(vec![read_manifest(path, node_name)?]);
    }
    if !meta.is_dir() {
        bail!("path is not a directory or file");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut pods = vec![];
    for file in files {
        match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => {
                tracing::warn!(path = %file.display(), "not recursing into manifest path");
                continue;
            }
            Ok(_) => {
                tracing::warn!(path = %file.display(), "manifest path is not a directory or file");
                continue;
            }
            // Removed between the listing and now.
            Err(_) => continue,
        }
        match read_manifest(&file, node_name) {
            Ok(pod) => pods.push(pod),
            Err(e) => tracing::warn!(
                path = %file.display(),
                error = %format!("{e:#}"),
                "can't process manifest file"
            ),
        }
    }
    Ok(pods)
}

/// One manifest file as the static pod it describes (without `config.seen`).
pub fn read_manifest(path: &Path, node_name: &str) -> Result<Pod> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_MANIFEST_BYTES {
        bail!(
            "{}: manifest is {size} bytes, more than the 10 MiB allowed",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)?;
    // YAML is a superset of JSON: one parser for both encodings.
    let value: Value = serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{}: couldn't parse as pod, please check config file",
            path.display()
        )
    })?;
    static_pod(value, &path.to_string_lossy(), node_name)
        .with_context(|| format!("{}: invalid pod", path.display()))
}

/// A parsed manifest, checked, defaulted and named for `node_name`.
pub fn static_pod(mut value: Value, source: &str, node_name: &str) -> Result<Pod> {
    if value["apiVersion"] != "v1" || value["kind"] != "Pod" {
        bail!(
            "expected apiVersion \"v1\" and kind \"Pod\", got {} and {}",
            value["apiVersion"],
            value["kind"]
        );
    }
    let node = node_name.to_lowercase();
    // The UID covers the content before any defaulting, so the same file always
    // yields the same pod (a kubelet restart adopts its containers).
    let uid = match value["metadata"]["uid"].as_str() {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            let mut h = Sha256::new();
            h.update(format!("host:{node_name}file:{source}"));
            h.update(canonical(&value).to_string());
            hex(&h.finalize()[..16])
        }
    };
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        bail!("metadata.name: Required value: name or generateName is required");
    }
    let name = format!("{name}-{node}");
    validate_name(&name)?;
    let meta = &mut value["metadata"];
    meta["name"] = json!(name);
    meta["uid"] = json!(uid);
    if meta["namespace"].as_str().is_none_or(str::is_empty) {
        meta["namespace"] = json!("default");
    }
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][HASH_ANNOTATION] = json!(uid);
    meta["annotations"][SOURCE_ANNOTATION] = json!("file");
    let spec = &mut value["spec"];
    if !spec.is_object() {
        bail!("spec: Required value");
    }
    spec["nodeName"] = json!(node_name);
    apply_api_defaults(spec);
    // Static pods tolerate every NoExecute taint, so node problems never evict them.
    let tolerations = spec["tolerations"].as_array_mut();
    let all_no_execute = json!({"operator": "Exists", "effect": "NoExecute"});
    match tolerations {
        Some(list) => {
            if !list.iter().any(|t| {
                t["operator"] == "Exists" && t["effect"] == "NoExecute" && t.get("key").is_none()
            }) {
                list.push(all_no_execute);
            }
        }
        None => spec["tolerations"] = json!([all_no_execute]),
    }
    value["status"] = json!({"phase": "Pending"});
    let pod: Pod = serde_json::from_value(value).context("decoding the pod")?;
    validate_containers(&pod)?;
    Ok(pod)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `value` with every object's keys in order, so key order in the file does not
/// change the hash.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            json!(sorted)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The defaults the API server would give the fields this kubelet acts on, since a
/// static pod never passes through it before running.
fn apply_api_defaults(spec: &mut Value) {
    let default = |obj: &mut Value, key: &str, v: Value| {
        if obj.get(key).is_none_or(Value::is_null) {
            obj[key] = v;
        }
    };
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let tag = image.rsplit('/').next().unwrap_or_default();
            let policy = if image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest"))
            {
                "IfNotPresent"
            } else {
                "Always"
            };
            default(c, "imagePullPolicy", json!(policy));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                default(p, "protocol", json!("TCP"));
            }
        }
    }
    for v in spec["volumes"].as_array_mut().into_iter().flatten() {
        for kind in ["configMap", "secret"] {
            if v[kind].is_object() {
                default(&mut v[kind], "defaultMode", json!(0o644));
            }
        }
        if v["hostPath"].is_object() {
            default(&mut v["hostPath"], "type", json!(""));
        }
    }
}

/// A DNS-1123 subdomain, as upstream validates pod names.
fn validate_name(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        bail!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
    }
    Ok(())
}

fn validate_containers(pod: &Pod) -> Result<()> {
    let spec = pod.spec.as_ref().context("spec: Required value")?;
    if spec.containers.is_empty() {
        bail!("spec.containers: Required value");
    }
    let mut names = std::collections::HashSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in all {
        if c.name.is_empty() {
            bail!("spec.containers.name: Required value");
        }
        if !names.insert(c.name.as_str()) {
            bail!("spec.containers.name: Duplicate value: {:?}", c.name);
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            bail!("spec.containers{{{}}}.image: Required value", c.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.29"}]},
        })
    }

    #[test]
    fn named_defaulted_and_annotated_as_upstream() {
        let pod = static_pod(manifest(), "/etc/m/web.yaml", "Node-A").unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-node-a"));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let uid = meta.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(ann[HASH_ANNOTATION], uid);
        assert_eq!(ann[SOURCE_ANNOTATION], "file");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-A"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let t = &spec.tolerations.as_ref().unwrap()[0];
        assert_eq!(
            (t.operator.as_deref(), t.effect.as_deref()),
            (Some("Exists"), Some("NoExecute"))
        );
        assert!(is_static(&pod) && !is_mirror(&pod));
    }

    #[test]
    fn the_uid_follows_content_node_and_file_not_key_order() {
        let uid = |v: Value, file: &str, node: &str| {
            static_pod(v, file, node).unwrap().metadata.uid.unwrap()
        };
        let base = uid(manifest(), "/m/a", "n");
        assert_eq!(base, uid(manifest(), "/m/a", "n"));
        let reordered: Value = serde_json::from_str(
            r#"{"spec": {"containers": [{"image": "busybox:1.29", "name": "c"}]}, "kind": "Pod",
                "metadata": {"labels": {"a": "b"}, "name": "web"}, "apiVersion": "v1"}"#,
        )
        .unwrap();
        assert_eq!(base, uid(reordered, "/m/a", "n"));
        let mut edited = manifest();
        edited["spec"]["containers"][0]["image"] = json!("busybox:1.30");
        assert_ne!(base, uid(edited, "/m/a", "n"));
        assert_ne!(base, uid(manifest(), "/m/b", "n"));
        assert_ne!(base, uid(manifest(), "/m/a", "m"));
    }

    #[test]
    fn invalid_manifests_are_refused() {
        let mut no_name = manifest();
        no_name["metadata"]["name"] = json!("");
        assert!(static_pod(no_name, "f", "n").is_err());
        let mut bad_name = manifest();
        bad_name["metadata"]["name"] = json!("Web_1");
        assert!(static_pod(bad_name, "f", "n").is_err());
        let mut deployment = manifest();
        deployment["kind"] = json!("Deployment");
        assert!(static_pod(deployment, "f", "n").is_err());
        let mut no_image = manifest();
        no_image["spec"]["containers"][0]["image"] = json!(null);
        assert!(static_pod(no_image, "f", "n").is_err());
    }

    #[test]
    fn a_directory_of_yaml_and_json_without_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: kube-system}\nspec:\n  containers: [{name: c, image: 'x:1'}]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.json"), manifest().to_string()).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), manifest().to_string()).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "{{{").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut source = FileSource::new(dir.path().into(), "n1", Duration::from_secs(1));
        let pods = source.list();
        let names: Vec<String> = pods.iter().map(full_name).collect();
        assert_eq!(names, ["kube-system/a-n1", "default/web-n1"]);
        let seen = pods[0].metadata.annotations.as_ref().unwrap()[SEEN_ANNOTATION].clone();
        // Seen once: a re-read keeps the first time.
        std::thread::sleep(Duration::from_millis(5));
        let again = source.list();
        assert_eq!(
            again[0].metadata.annotations.as_ref().unwrap()[SEEN_ANNOTATION],
            seen
        );
        let missing = FileSource::new(dir.path().join("nope"), "n1", Duration::from_secs(1)).list();
        assert!(missing.is_empty());
    }
}
