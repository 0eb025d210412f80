//! DELs that could not reach ipamd. The spec wants DEL to succeed even then, so the
//! plugin tears the pod's plumbing down and leaves the release here, in a directory next
//! to ipamd's socket (the one path both sides already share); ipamd applies these before
//! it serves and on every housekeeping tick. Without this, every DEL during an ipamd
//! restart would leak its address until the runtime's next GC.
//!
//! One small JSON file per attachment, written atomically (temporary file + rename). A
//! request only releases an assignment made before it: an ADD that came after the DEL
//! (the runtime retrying the same sandbox) keeps its address.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AttachmentKey;

/// The directory for the daemon listening on `socket`.
pub fn dir_for(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".deferred-del");
    PathBuf::from(s)
}

/// One DEL ipamd has not seen yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredDel {
    pub container_id: String,
    pub ifname: String,
    /// Wall-clock milliseconds since the epoch, when the plugin ran the DEL.
    pub requested_at_ms: u64,
}

impl DeferredDel {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The file name of an attachment's request: a hash, as container ids and interface
/// names are the runtime's to choose.
fn file_name(key: &AttachmentKey) -> String {
    let digest = Sha256::digest(format!("{}\0{}", key.container_id, key.ifname).as_bytes());
    format!("{}.json", &hex::encode(digest)[..32])
}

/// Leaves `key`'s release for ipamd (a later request for the same attachment replaces
/// an earlier one).
pub fn record(dir: &Path, key: &AttachmentKey, now_ms: u64) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let req = DeferredDel {
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
        requested_at_ms: now_ms,
    };
    let path = dir.join(file_name(key));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&req).expect("always serialises"))?;
    std::fs::rename(&tmp, &path)
}

/// Every request in `dir`, with the file to remove once it is applied. Unreadable
/// files are returned as errors with their path, so the caller can say which.
pub fn pending(dir: &Path) -> io::Result<Vec<(PathBuf, Result<DeferredDel, String>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<DeferredDel>(&b).map_err(|e| e.to_string()));
        out.push((path, parsed));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_del_reads_back_and_replaces_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ipamd.sock.deferred-del");
        assert!(pending(&d).unwrap().is_empty(), "no directory yet");
        let key = AttachmentKey::eth0("c/../1");
        record(&d, &key, 5).unwrap();
        record(&d, &key, 7).unwrap();
        record(&d, &AttachmentKey::eth0("other"), 9).unwrap();
        let mut got: Vec<DeferredDel> = pending(&d)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        got.sort_by_key(|r| r.requested_at_ms);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].key(), got[0].requested_at_ms), (key, 7));
        assert_eq!(
            dir_for(Path::new("/run/x/ipamd.sock")),
            Path::new("/run/x/ipamd.sock.deferred-del")
        );
    }

    #[test]
    fn a_garbled_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.json"), b"{nope").unwrap();
        std::fs::write(dir.path().join("x.tmp"), b"half").unwrap();
        let got = pending(dir.path()).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.is_err());
    }
}
