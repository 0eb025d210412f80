//! emptyDir: a directory on the node's disk, or a tmpfs for `medium: Memory` (also
//! what secret and projected volumes live on, so their contents never touch disk).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where a volume's files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Disk,
    /// tmpfs, optionally capped at this many bytes.
    Memory {
        size_bytes: Option<i64>,
    },
}

/// Creates `dir` (mode 0777 like upstream's emptyDir) and, for memory, mounts a
/// tmpfs on it unless one is already there (a kubelet restart). An existing volume
/// keeps its mode (an fsGroup may have added setgid).
pub fn set_up(dir: &Path, medium: Medium) -> io::Result<()> {
    let mut fresh = fs::symlink_metadata(dir).is_err();
    fs::create_dir_all(dir)?;
    if let Medium::Memory { size_bytes } = medium
        && !is_mount_point(dir)?
    {
        let options = size_bytes.map(|s| format!("size={s}"));
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            options.as_deref(),
        )
        .map_err(io::Error::from)?;
        fresh = true;
    }
    if fresh {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
    }
    Ok(())
}

/// Unmounts (if mounted) and removes `dir`.
pub fn tear_down(dir: &Path) -> io::Result<()> {
    if is_mount_point(dir)? {
        // Lazy: a container still holding a file open must not keep the pod's
        // volumes from going away.
        umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A mount point sits on a different device than its parent.
pub fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(meta.dev() != fs::metadata(parent)?.dev())
}
