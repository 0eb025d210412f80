//! A directory of JSON records, one file per object, each written by rename so that a
//! crash never leaves a half-written record.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    fn id(&self) -> &str;
}

pub struct RecordStore<T: Record> {
    dir: PathBuf,
    items: RwLock<HashMap<String, T>>,
}

impl<T: Record> RecordStore<T> {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut items = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = std::fs::read(&path)?;
                match serde_json::from_slice::<T>(&data) {
                    Ok(rec) => {
                        items.insert(rec.id().to_string(), rec);
                    }
                    // A record from an incompatible version: keep the daemon up, say
                    // which file it is so an operator can look at it.
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "skipping unreadable record")
                    }
                }
            }
        }
        Ok(RecordStore {
            dir: dir.to_path_buf(),
            items: RwLock::new(items),
        })
    }

    pub fn get(&self, id: &str) -> Option<T> {
        self.items.read().unwrap().get(id).cloned()
    }

    pub fn list(&self) -> Vec<T> {
        self.items.read().unwrap().values().cloned().collect()
    }

    pub fn put(&self, rec: &T) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", rec.id()));
        std::fs::write(&tmp, serde_json::to_vec(rec)?)?;
        std::fs::rename(&tmp, self.dir.join(format!("{}.json", rec.id())))?;
        self.items
            .write()
            .unwrap()
            .insert(rec.id().to_string(), rec.clone());
        Ok(())
    }

    /// Applies `f` to the record and persists it; `None` if there is no such record.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut T)) -> io::Result<Option<T>> {
        let Some(mut rec) = self.get(id) else {
            return Ok(None);
        };
        f(&mut rec);
        self.put(&rec)?;
        Ok(Some(rec))
    }

    pub fn remove(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(format!("{id}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.items.write().unwrap().remove(id);
        Ok(())
    }

    /// Resolves a full ID or a unique prefix (as crictl users type them).
    pub fn resolve(&self, id_or_prefix: &str) -> Option<T> {
        if id_or_prefix.is_empty() {
            return None;
        }
        let items = self.items.read().unwrap();
        if let Some(r) = items.get(id_or_prefix) {
            return Some(r.clone());
        }
        let mut hits = items.values().filter(|r| r.id().starts_with(id_or_prefix));
        match (hits.next(), hits.next()) {
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        id: String,
        n: u32,
    }
    impl Record for R {
        fn id(&self) -> &str {
            &self.id
        }
    }

    #[test]
    fn records_persist_and_resolve_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = RecordStore::<R>::open(dir.path()).unwrap();
        s.put(&R {
            id: "abc123".into(),
            n: 1,
        })
        .unwrap();
        s.put(&R {
            id: "abd456".into(),
            n: 2,
        })
        .unwrap();
        s.update("abc123", |r| r.n = 5).unwrap();
        let s = RecordStore::<R>::open(dir.path()).unwrap();
        assert_eq!(s.get("abc123").unwrap().n, 5);
        assert_eq!(s.resolve("abd").unwrap().n, 2);
        assert!(s.resolve("ab").is_none(), "ambiguous prefix");
        s.remove("abc123").unwrap();
        s.remove("abc123").unwrap();
        assert_eq!(s.list().len(), 1);
    }
}
