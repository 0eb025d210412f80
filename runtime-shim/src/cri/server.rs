//! Serves the CRI services on a unix socket.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// `unix:///path` or a bare path, as kubelets and crictl accept.
pub fn socket_path(listen: &str) -> &Path {
    Path::new(listen.strip_prefix("unix://").unwrap_or(listen))
}

/// Binds the socket (replacing a stale one from a previous run: nothing can be serving
/// on it, since we hold the state lock) and serves until `shutdown` resolves.
pub async fn serve(
    listen: &str,
    router: tonic::transport::server::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let path = socket_path(listen);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    tracing::info!(socket = %path.display(), "serving CRI");
    router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("CRI server failed")
}
