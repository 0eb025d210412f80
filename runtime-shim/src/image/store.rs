//! The on-disk image store under `<root>/images`:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, configs and compressed layers, named by digest
//! layers/<diffid hex>/   one unpacked layer each, usable as an overlayfs lowerdir
//! records/<id hex>.json  one file per image (id = config digest): tags, digests, layers
//! tmp/                   downloads and unpacks in progress; emptied at start
//! ```
//!
//! Every file appears by rename, so a crash leaves either the old state or the new one,
//! never a half-written blob, layer or record.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::reference::{Digest, Reference};

/// What the runtime needs from an image config to build containers, kept in the record
/// so that CreateContainer does not re-read blobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest, as containerd reports image IDs.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Compressed size of config and layers, the figure `crictl images` shows.
    pub size: u64,
    /// Layer DiffIDs, bottom layer first.
    pub layers: Vec<Digest>,
    pub config: RuntimeConfig,
    pub pinned: bool,
}

impl ImageRecord {
    /// The numeric uid, or the user name, that USER sets (CRI reports one of them).
    pub fn user(&self) -> (Option<i64>, String) {
        let user = self.config.user.split(':').next().unwrap_or("");
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) if user.is_empty() => (None, String::new()),
            Err(_) => (None, user.to_string()),
        }
    }
}

pub struct ImageStore {
    root: PathBuf,
    records: RwLock<HashMap<Digest, ImageRecord>>,
}

impl ImageStore {
    pub fn open(root: &Path) -> io::Result<Self> {
        for d in ["blobs/sha256", "layers", "records"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        // Whatever is in tmp/ was interrupted mid-pull and is not referenced anywhere.
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        std::fs::create_dir_all(root.join("tmp"))?;
        let mut records = HashMap::new();
        for entry in std::fs::read_dir(root.join("records"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = std::fs::read(&path)?;
                let rec: ImageRecord = serde_json::from_slice(&data).map_err(|e| {
                    io::Error::other(format!(
                        "corrupt image record {}: {e}; delete it and pull the image again",
                        path.display()
                    ))
                })?;
                records.insert(rec.id.clone(), rec);
            }
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            records: RwLock::new(records),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// A fresh path in tmp/ for a download or an unpack.
    pub fn temp_path(&self, tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Adds or updates an image. A tag belongs to one image: it moves to this one.
    pub fn commit(&self, mut rec: ImageRecord) -> io::Result<ImageRecord> {
        let mut records = self.records.write().unwrap();
        if let Some(old) = records.get(&rec.id) {
            for t in &old.repo_tags {
                if !rec.repo_tags.contains(t) {
                    rec.repo_tags.push(t.clone());
                }
            }
            for d in &old.repo_digests {
                if !rec.repo_digests.contains(d) {
                    rec.repo_digests.push(d.clone());
                }
            }
        }
        let others: Vec<Digest> = records
            .values()
            .filter(|o| o.id != rec.id && o.repo_tags.iter().any(|t| rec.repo_tags.contains(t)))
            .map(|o| o.id.clone())
            .collect();
        for id in others {
            let mut o = records[&id].clone();
            o.repo_tags.retain(|t| !rec.repo_tags.contains(t));
            self.write_record(&o)?;
            records.insert(id, o);
        }
        self.write_record(&rec)?;
        records.insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    fn write_record(&self, rec: &ImageRecord) -> io::Result<()> {
        let tmp = self.temp_path("record");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
        std::fs::rename(
            &tmp,
            self.root
                .join("records")
                .join(format!("{}.json", rec.id.hex())),
        )
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        let mut v: Vec<_> = self.records.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Finds an image the way CRI clients name it: by ID (full, bare hex, or a unique
    /// prefix of at least 12 characters), by tag (`busybox` means
    /// `docker.io/library/busybox:latest`) or by repo digest.
    pub fn resolve(&self, name: &str) -> Option<ImageRecord> {
        let records = self.records.read().unwrap();
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = records.values().filter(|r| r.id.hex().starts_with(hex));
            if let (Some(r), None) = (hits.next(), hits.next()) {
                return Some(r.clone());
            }
        }
        let reference = Reference::parse(name).ok()?;
        if let Some(d) = &reference.digest {
            let wanted = format!("{}@{d}", reference.name());
            return records
                .values()
                .find(|r| r.repo_digests.contains(&wanted))
                .cloned();
        }
        let tagged = reference.tagged()?;
        records
            .values()
            .find(|r| r.repo_tags.contains(&tagged))
            .cloned()
    }

    /// Forgets an image and deletes its layers and blobs that no other image uses.
    pub fn remove(&self, id: &Digest) -> io::Result<bool> {
        let mut records = self.records.write().unwrap();
        let Some(rec) = records.remove(id) else {
            return Ok(false);
        };
        match std::fs::remove_file(self.root.join("records").join(format!("{}.json", id.hex()))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for layer in &rec.layers {
            if !records.values().any(|r| r.layers.contains(layer)) {
                let _ = std::fs::remove_dir_all(self.layer_dir(layer));
            }
        }
        let _ = std::fs::remove_file(self.blob_path(&rec.id));
        Ok(true)
    }

    /// Bytes and inodes used by the store, for ImageFsInfo.
    pub fn usage(&self) -> (u64, u64) {
        fn walk(p: &Path, acc: &mut (u64, u64)) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if let Ok(m) = e.metadata() {
                        acc.0 += m.len();
                        acc.1 += 1;
                        if m.is_dir() {
                            walk(&e.path(), acc);
                        }
                    }
                }
            }
        }
        let mut acc = (0, 0);
        walk(&self.root, &mut acc);
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id_seed: &[u8], tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(id_seed),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            size: 1,
            layers: vec![Digest::of(b"layer")],
            config: RuntimeConfig::default(),
            pinned: false,
        }
    }

    #[test]
    fn tags_move_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store
            .commit(rec(b"a", &["docker.io/library/busybox:latest"]))
            .unwrap();
        store
            .commit(rec(b"b", &["docker.io/library/busybox:latest"]))
            .unwrap();
        assert_eq!(store.resolve("busybox").unwrap().id, Digest::of(b"b"));
        assert!(store.resolve(a.id.as_str()).unwrap().repo_tags.is_empty());
        let reopened = ImageStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list().len(), 2);
        assert_eq!(reopened.resolve(&a.id.hex()[..12]).unwrap().id, a.id);
        assert!(reopened.resolve("nothere").is_none());
    }

    #[test]
    fn removing_keeps_shared_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store.commit(rec(b"a", &["x.io/a:1"])).unwrap();
        store.commit(rec(b"b", &["x.io/b:1"])).unwrap();
        std::fs::create_dir_all(store.layer_dir(&Digest::of(b"layer"))).unwrap();
        assert!(store.remove(&a.id).unwrap());
        assert!(store.layer_dir(&Digest::of(b"layer")).exists());
        assert!(!store.remove(&a.id).unwrap());
    }

    #[test]
    fn user_is_reported_as_uid_or_name() {
        let mut r = rec(b"u", &[]);
        r.config.user = "1002".into();
        assert_eq!(r.user(), (Some(1002), String::new()));
        r.config.user = "www-data:www-data".into();
        assert_eq!(r.user(), (None, "www-data".to_string()));
        r.config.user = "1003:users".into();
        assert_eq!(r.user(), (Some(1003), String::new()));
    }
}
