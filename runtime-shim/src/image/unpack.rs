//! Unpacks one image layer (a tar stream, gzip or not) into a directory that overlayfs
//! can use as a lower layer: OCI whiteouts (`.wh.NAME`) become overlay whiteouts (a 0:0
//! character device) and opaque markers (`.wh..wh..opq`) the `trusted.overlay.opaque`
//! xattr. Layers come from the network, so every entry is checked first: absolute paths,
//! `..`, paths through symlinks, hard links leaving the layer and device nodes are refused
//! with an error naming the entry, and the caller discards the partial directory.
//! The uncompressed stream is hashed on the way and must match the image config's DiffID.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::reference::Digest;

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} rejected: {why}")]
    Rejected { path: String, why: &'static str },
    #[error("layer content does not match its DiffID: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("unsupported layer media type {0} (supported: tar, tar+gzip)")]
    UnsupportedMediaType(String),
    #[error("reading layer: {0}")]
    Io(#[from] io::Error),
}

/// How the layer blob is compressed, from its manifest media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    pub fn from_media_type(mt: &str) -> Result<Self, UnpackError> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            other => Err(UnpackError::UnsupportedMediaType(other.to_string())),
        }
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks `blob` into `dest` (which must exist and be empty) and checks the DiffID.
/// Returns the number of bytes the layer occupies uncompressed.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    diff_id: &Digest,
) -> Result<u64, UnpackError> {
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(GzDecoder::new(blob)),
    };
    let mut hashing = Hashing {
        inner: reader,
        hasher: Sha256::new(),
    };
    let mut size = 0u64;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            size += entry.header().size().unwrap_or(0);
            unpack_entry(&mut entry, dest)?;
        }
    }
    // The tar end marker may be followed by padding that is part of the DiffID.
    io::copy(&mut hashing, &mut io::sink())?;
    let actual = Digest::from_sha256_hex(&hex::encode(hashing.hasher.finalize()));
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(size)
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<R>, dest: &Path) -> Result<(), UnpackError> {
    let raw = entry.path()?.into_owned();
    let shown = raw.to_string_lossy().into_owned();
    let reject = |why| UnpackError::Rejected {
        path: shown.clone(),
        why,
    };
    let rel = checked_relative(&raw).map_err(reject)?;
    if rel.as_os_str().is_empty() {
        return Ok(()); // "./" itself
    }
    let kind = entry.header().entry_type();
    if kind.is_character_special() || kind.is_block_special() {
        return Err(reject("device nodes are not allowed in image layers"));
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    ensure_real_dirs(dest, parent).map_err(reject)?;

    let name = rel.file_name().expect("non-empty relative path").as_bytes();
    if name == b".wh..wh..opq" {
        set_xattr(&dest.join(parent), "trusted.overlay.opaque", b"y")?;
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(b".wh.") {
        let target = dest.join(parent).join(std::ffi::OsStr::from_bytes(hidden));
        remove_any(&target)?;
        nix::sys::stat::mknod(
            &target,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(io::Error::from)?;
        return Ok(());
    }
    if kind.is_hard_link() {
        let target = entry
            .link_name()?
            .ok_or_else(|| reject("hard link without a target"))?;
        let target = checked_relative(&target).map_err(reject)?;
        ensure_real_dirs(dest, target.parent().unwrap_or(Path::new(""))).map_err(reject)?;
        match fs::symlink_metadata(dest.join(&target)) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(reject(
                    "hard link target is not a regular file of this layer",
                ));
            }
        }
    }
    // A later entry may replace a file or a symlink from an earlier one.
    if let Ok(m) = fs::symlink_metadata(dest.join(&rel))
        && !(m.is_dir() && kind.is_dir())
    {
        remove_any(&dest.join(&rel))?;
    }
    let unpacked = entry.unpack_in(dest)?;
    if !unpacked {
        return Err(reject("path escapes the layer"));
    }
    Ok(())
}

/// A path inside the layer: no root, no `..`; `.` components dropped. The root
/// directory entry itself (`/`, which umoci and others write) names the layer root.
fn checked_relative(p: &Path) -> Result<PathBuf, &'static str> {
    if p == Path::new("/") {
        return Ok(PathBuf::new());
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed");
            }
            Component::ParentDir => return Err("'..' is not allowed in layer paths"),
        }
    }
    Ok(out)
}

/// Every component of `rel` under `dest` is a real directory (created if missing), never
/// a symlink an earlier entry planted to redirect writes outside the layer.
fn ensure_real_dirs(dest: &Path, rel: &Path) -> Result<(), &'static str> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err("path goes through a symlink"),
            Ok(_) => return Err("a parent of the path is not a directory"),
            Err(_) => fs::create_dir(&cur).map_err(|_| "cannot create parent directory")?,
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and `value` outlives the call.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// A tar built entry by entry; `raw_path` writes names the tar crate's builder
    /// would refuse, as a hostile registry could.
    struct TarBuilder(tar::Builder<Vec<u8>>);

    impl TarBuilder {
        fn new() -> Self {
            TarBuilder(tar::Builder::new(Vec::new()))
        }
        fn entry(
            mut self,
            path: &str,
            kind: tar::EntryType,
            data: &[u8],
            link: Option<&str>,
        ) -> Self {
            let mut h = tar::Header::new_gnu();
            {
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn file(self, path: &str, data: &[u8]) -> Self {
            self.entry(path, tar::EntryType::Regular, data, None)
        }
        fn dir(self, path: &str) -> Self {
            self.entry(path, tar::EntryType::Directory, b"", None)
        }
        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<u64, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_layer(tar, Compression::None, dir.path(), &Digest::of(tar));
        (dir, r)
    }

    fn rejected(tar: &[u8]) -> String {
        let (_d, r) = unpack(tar);
        match r {
            Err(e @ UnpackError::Rejected { .. }) => e.to_string(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn unpacks_files_dirs_and_links() {
        let tar = TarBuilder::new()
            .dir("etc/")
            .file("etc/hostname", b"x\n")
            .entry("bin/sh", tar::EntryType::Symlink, b"", Some("/bin/busybox"))
            .entry("etc/hn2", tar::EntryType::Link, b"", Some("etc/hostname"))
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("etc/hostname")).unwrap(), b"x\n");
        assert_eq!(fs::read(dir.path().join("etc/hn2")).unwrap(), b"x\n");
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn hostile_entries_are_rejected() {
        let e = rejected(&TarBuilder::new().file("../escape", b"x").finish());
        assert!(e.contains("'..'"), "{e}");
        let e = rejected(&TarBuilder::new().file("/etc/passwd", b"x").finish());
        assert!(e.contains("absolute"), "{e}");
        let e = rejected(
            &TarBuilder::new()
                .entry("dev/sda", tar::EntryType::Block, b"", None)
                .finish(),
        );
        assert!(e.contains("device nodes"), "{e}");
        let e = rejected(
            &TarBuilder::new()
                .entry("dev/mem", tar::EntryType::Char, b"", None)
                .finish(),
        );
        assert!(e.contains("device nodes"), "{e}");
        // A symlink to the host, then a write through it.
        let outside = tempfile::tempdir().unwrap();
        let link_target = outside.path().to_str().unwrap().to_string();
        let e = rejected(
            &TarBuilder::new()
                .entry("evil", tar::EntryType::Symlink, b"", Some(&link_target))
                .file("evil/planted", b"x")
                .finish(),
        );
        assert!(e.contains("symlink"), "{e}");
        assert!(!outside.path().join("planted").exists());
        let e = rejected(
            &TarBuilder::new()
                .entry("hl", tar::EntryType::Link, b"", Some("../../etc/shadow"))
                .finish(),
        );
        assert!(e.contains("'..'"), "{e}");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = TarBuilder::new()
            .dir("etc/")
            .file("etc/.wh.removed", b"")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        let m = fs::symlink_metadata(dir.path().join("etc/removed")).unwrap();
        assert!(m.file_type().is_char_device());
        assert!(!dir.path().join("etc/.wh.removed").exists());
        let p = CString::new(dir.path().join("var/cache").as_os_str().as_bytes()).unwrap();
        let n = CString::new("trusted.overlay.opaque").unwrap();
        let mut buf = [0u8; 4];
        // SAFETY: valid C strings and a buffer of the given length.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 4) };
        assert_eq!(&buf[..len as usize], b"y");
    }

    #[test]
    fn wrong_diff_id_is_an_error() {
        let tar = TarBuilder::new().file("a", b"1").finish();
        let dir = tempfile::tempdir().unwrap();
        let wrong = Digest::of(b"something else");
        let err = unpack_layer(&tar[..], Compression::None, dir.path(), &wrong).unwrap_err();
        assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    }

    #[test]
    fn gzip_layers_are_hashed_uncompressed() {
        use std::io::Write;
        let tar = TarBuilder::new().file("a", b"1").finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&blob[..], Compression::Gzip, dir.path(), &Digest::of(&tar)).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"1");
        assert!(matches!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Err(UnpackError::UnsupportedMediaType(_))
        ));
    }
}
