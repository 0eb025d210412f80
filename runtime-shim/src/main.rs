//! `runtime-shim`: a CRI v1 container runtime (RuntimeService + ImageService) on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use runtime_shim::cri::image_service::ImageServiceImpl;
use runtime_shim::cri::server;
use runtime_shim::image::puller::Puller;
use runtime_shim::image::registry::Mirrors;
use runtime_shim::image::store::ImageStore;

#[derive(Parser, Debug)]
#[command(version, about = "A CRI v1 container runtime")]
struct Args {
    /// Where to serve CRI.
    #[arg(long, default_value = "unix:///run/runtime-shim/cri.sock")]
    listen: String,
    /// HOST=URL: pull images of HOST from URL first (repeatable; http:// only for loopback).
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// CNI network configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// CNI plugin directories, `:`-separated.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: String,
    /// Persistent state: images, container metadata.
    #[arg(long, default_value = "/var/lib/runtime-shim")]
    root: PathBuf,
    /// Runtime state that does not survive a reboot: sockets, monitors.
    #[arg(long, default_value = "/run/runtime-shim")]
    state: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mirrors = Mirrors::parse(&args.registry_mirrors).map_err(anyhow::Error::msg)?;
    let store = ImageStore::open(&args.root.join("images"))
        .with_context(|| format!("opening the image store in {}", args.root.display()))?;
    let puller = Arc::new(Puller::new(Arc::new(store), mirrors));
    let router = tonic::transport::Server::builder()
        .add_service(ImageServiceServer::new(ImageServiceImpl::new(puller)));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server::serve(&args.listen, router, shutdown).await
}
