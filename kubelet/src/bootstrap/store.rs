//! The kubelet's certificates in `--cert-dir`, laid out as upstream's FileStore lays
//! them out: each issued pair in `<prefix>-<time>.pem` (certificate then key),
//! `<prefix>-current.pem` a symlink to the newest. The prefix is `kubelet-client` for
//! the client certificate, whose pending request's key is also kept
//! (`kubelet-client.key.tmp`, so a restart mid-bootstrap reuses it), and
//! `kubelet-server` for the serving certificate.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const CURRENT: &str = "kubelet-client-current.pem";
#[cfg(test)]
const PENDING_KEY: &str = "kubelet-client.key.tmp";
const CLIENT_PREFIX: &str = "kubelet-client";
const SERVER_PREFIX: &str = "kubelet-server";

pub struct CertStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl CertStore {
    /// The client certificate's store.
    pub fn new(dir: &Path) -> Result<Self> {
        Self::with_prefix(dir, CLIENT_PREFIX)
    }

    /// The serving certificate's store (serverTLSBootstrap).
    pub fn serving(dir: &Path) -> Result<Self> {
        Self::with_prefix(dir, SERVER_PREFIX)
    }

    fn with_prefix(dir: &Path, prefix: &'static str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating --cert-dir {}", dir.display()))?;
        Ok(CertStore {
            dir: dir.to_path_buf(),
            prefix,
        })
    }

    /// The symlink to the newest pair: what the kubeconfig names as client
    /// certificate and key, or what the server serves.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(self.current_name())
    }

    fn pending_key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key.tmp", self.prefix))
    }

    fn current_name(&self) -> String {
        format!("{}-current.pem", self.prefix)
    }

    /// The key of a request still pending from an earlier run, or a new one (kept on
    /// disk before it is used, so a crash before the certificate arrives loses nothing).
    pub fn pending_key(&self) -> Result<rcgen::KeyPair> {
        let path = self.pending_key_path();
        if let Ok(pem) = std::fs::read_to_string(&path)
            && let Ok(key) = rcgen::KeyPair::from_pem(&pem)
        {
            return Ok(key);
        }
        // ECDSA P-256, as upstream's keyutil generates.
        let key = rcgen::KeyPair::generate().context("generating the client key")?;
        write_private(&path, key.serialize_pem().as_bytes())?;
        Ok(key)
    }

    /// Stores an issued certificate with its key and points `current` at it.
    pub fn update(&self, cert_pem: &str, key: &rcgen::KeyPair) -> Result<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y-%m-%d-%H-%M-%S");
        // Upstream's names have one-second resolution; a second pair within the same
        // second must not overwrite the file `current` may still point at.
        let prefix = self.prefix;
        let (name, file) = (0..)
            .map(|n| match n {
                0 => format!("{prefix}-{stamp}.pem"),
                n => format!("{prefix}-{stamp}-{n}.pem"),
            })
            .map(|name| (name.clone(), self.dir.join(name)))
            .find(|(_, file)| !file.exists())
            .expect("an unused name");
        let mut contents = cert_pem.trim_end().to_string();
        contents.push('\n');
        contents.push_str(&key.serialize_pem());
        write_private(&file, contents.as_bytes())?;
        // A relative target keeps the directory relocatable, and renaming a fresh
        // link over the old one switches atomically.
        let link = self.current_path();
        let tmp = self.dir.join(format!(".{}.tmp", self.current_name()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("updating {}", link.display()))?;
        let _ = std::fs::remove_file(self.pending_key_path());
        Ok(link)
    }
}

/// A private key must not be readable by others from the first byte on; written to a
/// temporary file and renamed, so a reader never sees half of it.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn pending_key_survives_a_restart_and_goes_with_the_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path()).unwrap();
        let key = store.pending_key().unwrap();
        let again = CertStore::new(dir.path()).unwrap().pending_key().unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(key.der_bytes(), again.der_bytes());
        let mode = std::fs::metadata(dir.path().join(PENDING_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let link = store.update("CERT\n", &key).unwrap();
        assert_eq!(link, dir.path().join(CURRENT));
        let text = std::fs::read_to_string(&link).unwrap();
        assert!(
            text.starts_with("CERT\n-----BEGIN PRIVATE KEY-----"),
            "{text}"
        );
        let target = std::fs::read_link(&link).unwrap();
        assert!(target.to_str().unwrap().starts_with("kubelet-client-20"));
        assert!(!dir.path().join(PENDING_KEY).exists());

        // A rotation within the same second gets a file of its own.
        store.update("CERT2\n", &key).unwrap();
        let second = std::fs::read_link(&link).unwrap();
        assert_ne!(second, target);
        assert!(dir.path().join(&target).exists());
        assert!(std::fs::read_to_string(&link).unwrap().starts_with("CERT2"));

        // The serving store beside it keeps its own files and leaves the client's be.
        let serving = CertStore::serving(dir.path()).unwrap();
        let served = serving.update("SERVING\n", &key).unwrap();
        assert_eq!(served, dir.path().join("kubelet-server-current.pem"));
        let target = std::fs::read_link(&served).unwrap();
        assert!(target.to_str().unwrap().starts_with("kubelet-server-20"));
        assert!(std::fs::read_to_string(&link).unwrap().starts_with("CERT2"));
    }
}
