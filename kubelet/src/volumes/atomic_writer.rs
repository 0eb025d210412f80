//! Upstream's atomic writer layout, so a reader never sees half an update:
//!
//! ```text
//! <dir>/..2026_11_22_10_00_00.123456789/<files>   the current payload
//! <dir>/..data -> ..2026_11_22_10_00_00.123456789  swapped by rename(2)
//! <dir>/<key> -> ..data/<key>                      what users open
//! ```
//! An update writes a new timestamped dir, renames a fresh `..data_tmp` symlink over
//! `..data`, fixes the user-visible links and only then removes the old dir.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU32, Ordering};

const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// One file of a volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// A payload path must stay inside the volume: relative, no `..` elements, and not
/// starting with `..` (reserved for the writer's own entries).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if path.starts_with("..") {
        return Err(format!("invalid path {path:?}: must not start with '..'"));
    }
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => {
                return Err(format!("invalid path {path:?}: must not contain '..'"));
            }
            _ => return Err(format!("invalid path {path:?}: must be relative")),
        }
    }
    Ok(())
}

/// Makes `dir` hold exactly `payload`; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    fs::create_dir_all(dir)?;
    let old_ts = fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(old) = &old_ts
        && matches(&dir.join(old), payload)
    {
        return Ok(false);
    }
    let ts_name = timestamped_name();
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir)?;
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let target = ts_dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&target, &file.data)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(file.mode & 0o7777))?;
    }
    let tmp = dir.join(DATA_LINK_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&ts_name, &tmp)?;
    fs::rename(&tmp, dir.join(DATA_LINK))?;

    // User-visible links: one per top-level element of the payload.
    let wanted: BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &wanted {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = fs::remove_file(dir.join(&name));
        }
    }
    if let Some(old) = old_ts {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Whether `ts_dir` already holds exactly `payload` (same bytes and modes).
fn matches(ts_dir: &Path, payload: &Payload) -> bool {
    let mut count = 0usize;
    for (path, file) in payload {
        let p = ts_dir.join(path);
        let Ok(meta) = fs::metadata(&p) else {
            return false;
        };
        if meta.permissions().mode() & 0o7777 != file.mode & 0o7777 {
            return false;
        }
        if fs::read(&p).ok().as_ref() != Some(&file.data) {
            return false;
        }
        count += 1;
    }
    count == count_files(ts_dir)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => count_files(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `..YYYY_MM_DD_HH_MM_SS.<unique>`, as upstream names its payload dirs.
fn timestamped_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let now = chrono::Utc::now();
    format!(
        "..{}.{}{}",
        now.format("%Y_%m_%d_%H_%M_%S"),
        now.timestamp_subsec_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn writes_swaps_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut p = Payload::new();
        p.insert("a".into(), file("1", 0o644));
        p.insert("sub/b".into(), file("2", 0o600));
        assert!(write(d, &p).unwrap());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert_eq!(fs::read_link(d.join("a")).unwrap(), Path::new("..data/a"));
        let first = fs::read_link(d.join(DATA_LINK)).unwrap();
        assert!(!write(d, &p).unwrap(), "same payload must not rewrite");

        p.remove("sub/b");
        p.insert("a".into(), file("3", 0o644));
        assert!(write(d, &p).unwrap());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(fs::symlink_metadata(d.join("sub")).is_err());
        assert!(!d.join(first).exists(), "old payload dir removed");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in ["../x", "/etc/passwd", "..data", "a/../../b", ""] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("../escape".into(), file("x", 0o644));
        assert!(write(dir.path(), &p).is_err());
        assert!(!dir.path().join("..data").exists());
    }
}
