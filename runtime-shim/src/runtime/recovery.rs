//! Start-up recovery of sandboxes whose RunPodSandbox never finished (the daemon was
//! killed half-way). RunPodSandbox never answered for them, so no kubelet knows their
//! ID: they are torn down (CNI DEL, namespaces, files) and forgotten, as containerd
//! deletes a stored sandbox without metadata when it recovers. What cannot be torn
//! down now is kept as a NotReady sandbox that RemovePodSandbox finishes.

use super::{Result, Runtime, SandboxRecord, SandboxState};
use crate::sandbox::namespaces;

impl Runtime {
    /// Undoes the setup records left by a killed daemon. Call before serving.
    pub async fn recover(&self) {
        for rec in self.setups.list() {
            if self.sandboxes.get(&rec.id).is_some() {
                // Killed between writing the sandbox and dropping its setup record.
                if let Err(e) = self.setups.remove(&rec.id) {
                    tracing::warn!(sandbox = %rec.id, error = %e, "dropping a finished setup record");
                }
                continue;
            }
            if let Some(net) = rec.namespaces.as_ref().and_then(|n| n.net.as_deref()) {
                // Killed between creating the pin file and mounting the namespace on it:
                // plugins tolerate a missing netns on DEL, not a plain file.
                if let Err(e) = namespaces::remove_unmounted(net) {
                    tracing::warn!(sandbox = %rec.id, error = %e, "removing an unmounted netns pin");
                }
            }
            match self.undo_setup(&rec).await {
                Ok(()) => {
                    tracing::info!(sandbox = %rec.id, "removed a sandbox whose setup never finished")
                }
                Err(e) => {
                    tracing::warn!(sandbox = %rec.id, error = %format!("{e}"),
                        "could not undo an unfinished sandbox; it is listed NotReady until RemovePodSandbox succeeds");
                    let kept = SandboxRecord {
                        state: SandboxState::NotReady,
                        ..rec.clone()
                    };
                    if let Err(e) = self
                        .sandboxes
                        .put(&kept)
                        .and_then(|()| self.setups.remove(&rec.id))
                    {
                        tracing::warn!(sandbox = %rec.id, error = %e, "keeping an unfinished sandbox");
                    }
                }
            }
        }
    }

    /// Releases what a sandbox's setup may have made, then forgets the setup.
    pub(super) async fn undo_setup(&self, rec: &SandboxRecord) -> Result<()> {
        self.release(rec).await?;
        self.setups.remove(&rec.id)?;
        Ok(())
    }
}
