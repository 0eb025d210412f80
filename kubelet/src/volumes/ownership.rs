//! The pod's `fsGroup`: volume files belong to that group and are group-readable
//! (group-writable for writable volumes), directories setgid, as upstream's
//! SetVolumeOwnership does, so non-root containers can use them.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid, chown};

const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// The mode a file written into a read-only volume gets under an fsGroup.
pub fn read_only_file_mode(mode: u32) -> u32 {
    mode | RO_MASK
}

/// Gives `path` and everything below it (symlinks excepted) to group `gid`.
pub fn apply(path: &Path, gid: i64, read_only: bool) -> io::Result<()> {
    let gid = u32::try_from(gid)
        .map(Gid::from_raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative fsGroup"))?;
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    chown(path, Some(Uid::from_raw(meta.uid())), Some(gid)).map_err(io::Error::from)?;
    let mut mask = if read_only { RO_MASK } else { RW_MASK };
    if meta.is_dir() {
        mask |= SETGID | EXEC_MASK;
    }
    fs::set_permissions(
        path,
        fs::Permissions::from_mode((meta.permissions().mode() & 0o7777) | mask),
    )?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            apply(&entry?.path(), i64::from(gid.as_raw()), read_only)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_gets_access_and_dirs_are_setgid() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(sub.join("f"), "x").unwrap();
        fs::set_permissions(sub.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", sub.join("l")).unwrap();
        apply(&sub, 1234, true).unwrap();
        let f = fs::metadata(sub.join("f")).unwrap();
        assert_eq!(f.gid(), 1234);
        assert_eq!(f.permissions().mode() & 0o7777, 0o640);
        let d = fs::metadata(&sub).unwrap();
        assert_eq!(d.permissions().mode() & 0o7777, 0o2750);
        assert_ne!(fs::metadata("/etc/passwd").unwrap().gid(), 1234);
    }
}
