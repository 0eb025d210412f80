//! Reclaiming what a removed container leaves on the node (its runc state and cgroup,
//! its rootfs mount, its directory, its sockets) off the request path. RemoveContainer
//! forgets the record and answers; the leftovers go in the background, as containerd
//! collects a removed container's snapshot after its metadata is gone.
//!
//! RemovePodSandbox waits for the reclaims of its containers, and a daemon told to
//! stop waits for all of them.
//!
//! A directory under `containers/` without a record is always a leftover: of a removal
//! whose reclaim a killed daemon never finished, or of a CreateContainer killed between
//! mounting the rootfs and writing the record. [`Runtime::reclaim_orphans`] removes
//! those at start-up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};

use super::Runtime;
use super::containers::monitor_alive;
use crate::container::runc::OciRuntime;

/// One container's leftovers, with what removing them needs (no borrow of the runtime,
/// so it can run in a task of its own).
pub(super) struct Leftovers {
    id: String,
    dir: PathBuf,
    sockets: Vec<PathBuf>,
    oci: Arc<dyn OciRuntime>,
}

impl Leftovers {
    /// Removes everything; the first failure is returned, and the directory (with what
    /// failed in it) stays for the next start-up's [`Runtime::reclaim_orphans`].
    pub async fn remove(self) -> anyhow::Result<()> {
        let bundle = self.dir.join("bundle");
        // The monitor deletes the container from runc after the exit; wait for it to be
        // done so that two deletes never race.
        wait_monitor_gone(&bundle, Duration::from_secs(10)).await;
        self.oci.delete(&self.id).await?;
        // A rootfs the container filled can take long to remove: not on a runtime worker.
        tokio::task::spawn_blocking(move || self.remove_files()).await?
    }

    fn remove_files(&self) -> anyhow::Result<()> {
        match umount2(&self.dir.join("rootfs"), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => anyhow::bail!("unmounting the rootfs of {}: {e}", self.id),
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("removing {}: {e}", self.dir.display())
            }
            _ => {}
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        Ok(())
    }
}

/// The reclaims running in the background, by container, with the sandbox each
/// container belonged to.
#[derive(Default)]
pub(crate) struct Reclaims {
    running: Arc<Mutex<HashMap<String, Running>>>,
}

struct Running {
    sandbox_id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Reclaims {
    /// Removes `leftovers` in a task of its own, logging a failure.
    pub(super) fn start(&self, sandbox_id: &str, leftovers: Leftovers) {
        let id = leftovers.id.clone();
        let running = self.running.clone();
        // Held across the spawn, so the task's own removal cannot come before the insert.
        let mut map = self.running.lock().unwrap();
        let task = tokio::spawn({
            let id = id.clone();
            async move {
                if let Err(e) = leftovers.remove().await {
                    tracing::warn!(container = %id, error = %format!("{e:#}"),
                        "reclaiming a removed container failed; the next start-up retries");
                }
                running.lock().unwrap().remove(&id);
            }
        });
        map.insert(
            id,
            Running {
                sandbox_id: sandbox_id.to_string(),
                task,
            },
        );
    }

    /// Waits until the reclaims of the containers of `sandbox_id` (or of every sandbox)
    /// are done.
    pub(crate) async fn wait(&self, sandbox_id: Option<&str>) {
        let tasks: Vec<_> = {
            let mut map = self.running.lock().unwrap();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, r)| sandbox_id.is_none_or(|s| r.sandbox_id == s))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for r in tasks {
            let _ = r.task.await;
        }
    }
}

impl Runtime {
    pub(super) fn leftovers(&self, id: &str) -> Leftovers {
        Leftovers {
            id: id.to_string(),
            dir: self.container_dir(id),
            sockets: ["attach", "console"]
                .iter()
                .map(|kind| self.io_socket(id, kind))
                .collect(),
            oci: self.oci.clone(),
        }
    }

    /// Removes the container directories that have no record. Call before serving.
    pub async fn reclaim_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("containers")) else {
            return;
        };
        let orphans: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| self.containers.get(id).is_none())
            .collect();
        for id in orphans {
            // It may still run (a CreateContainer killed after `runc create`).
            let _ = self.oci.kill(&id, libc::SIGKILL).await;
            let leftovers = self.leftovers(&id);
            match leftovers.remove().await {
                Ok(()) => {
                    tracing::info!(container = %id, "removed a container left without a record")
                }
                Err(e) => tracing::warn!(container = %id, error = %format!("{e:#}"),
                    "could not remove a container left without a record"),
            }
        }
    }
}

async fn wait_monitor_gone(bundle: &std::path::Path, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while monitor_alive(bundle) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
