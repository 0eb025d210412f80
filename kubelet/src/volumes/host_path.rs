//! hostPath: a path on the node, checked against the volume's `type` as upstream
//! does before any container may mount it.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

/// Validates (and for the `*OrCreate` types creates) `path`; errors are upstream's
/// messages.
pub fn check(path: &str, kind: Option<&str>) -> Result<(), String> {
    if Path::new(path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!("invalid HostPath `{path}`: must not contain '..'"));
    }
    let meta = fs::metadata(path);
    let exists = meta.is_ok();
    let file_type = meta.as_ref().ok().map(fs::Metadata::file_type);
    let is = |f: fn(&fs::FileType) -> bool| file_type.as_ref().is_some_and(f);
    let fail = |what: &str| Err(format!("hostPath type check failed: {path} is not {what}"));
    match kind.unwrap_or("") {
        "" => Ok(()),
        "DirectoryOrCreate" if !exists => create_dir(path),
        "DirectoryOrCreate" | "Directory" if !is(fs::FileType::is_dir) => fail("a directory"),
        "DirectoryOrCreate" | "Directory" => Ok(()),
        "FileOrCreate" if !exists => create_file(path),
        "FileOrCreate" | "File" if !is(fs::FileType::is_file) => fail("a file"),
        "FileOrCreate" | "File" => Ok(()),
        "Socket" if !is(FileTypeExt::is_socket) => fail("a socket file"),
        "CharDevice" if !is(FileTypeExt::is_char_device) => fail("a character device"),
        "BlockDevice" if !is(FileTypeExt::is_block_device) => fail("a block device"),
        "Socket" | "CharDevice" | "BlockDevice" => Ok(()),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

fn create_dir(path: &str) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("creating hostPath directory {path}: {e}"))
}

fn create_file(path: &str) -> Result<(), String> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating hostPath file {path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("new/dir");
        let d = d.to_str().unwrap();
        assert!(check(d, Some("Directory")).is_err());
        check(d, Some("DirectoryOrCreate")).unwrap();
        check(d, Some("Directory")).unwrap();
        assert_eq!(
            check(d, Some("File")).unwrap_err(),
            format!("hostPath type check failed: {d} is not a file")
        );
        let f = dir.path().join("f");
        let f = f.to_str().unwrap();
        check(f, Some("FileOrCreate")).unwrap();
        check(f, Some("File")).unwrap();
        assert!(check(f, Some("Socket")).is_err());
        assert!(check(f, Some("Bogus")).is_err());
        assert!(check("/tmp/../etc", None).is_err());
    }
}
