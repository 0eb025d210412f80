//! `runtime-shim`: a CRI v1 container runtime (RuntimeService + ImageService) on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use runtime_shim::container::runc::Runc;
use runtime_shim::container::{exec_reaper, monitor};
use runtime_shim::cri::image_service::ImageServiceImpl;
use runtime_shim::cri::runtime_service::RuntimeServiceImpl;
use runtime_shim::cri::server;
use runtime_shim::image::puller::Puller;
use runtime_shim::image::registry::Mirrors;
use runtime_shim::image::store::ImageStore;
use runtime_shim::runtime::Runtime;
use runtime_shim::sandbox::cni::Cni;
use runtime_shim::streaming::{Streaming, Tokens};

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
    /// Where CNI results are cached (libcni's location and format).
    #[arg(long, default_value = runtime_shim::sandbox::cni::CACHE_DIR)]
    cni_cache_dir: PathBuf,
    /// Runtime state that does not survive a reboot: sockets, monitors.
    #[arg(long, default_value = "/run/runtime-shim")]
    state: PathBuf,
    /// Where the exec/attach/port-forward streaming server listens (port 0: any free
    /// port); the URLs Exec and PortForward return point here. Loopback by default, as
    /// containerd's: the kubelet on this node proxies to it.
    #[arg(long, default_value = "127.0.0.1:0")]
    stream_address: std::net::SocketAddr,
}

fn main() -> Result<()> {
    // The same binary is each container's monitor (container::monitor), each streaming
    // exec's reaper (container::exec_reaper) and PID-sharing pods' infra process
    // (sandbox::infra): dispatch before any runtime or thread exists, since they fork
    // and reap.
    let mut argv = std::env::args();
    match argv.nth(1).as_deref() {
        Some(monitor::MONITOR_ARG) => monitor::run(&argv.next().unwrap_or_default()),
        Some(exec_reaper::EXEC_ARG) => exec_reaper::run(&argv.next().unwrap_or_default()),
        Some(runtime_shim::sandbox::infra::PAUSE_ARG) => runtime_shim::sandbox::infra::run(),
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(daemon())
}

/// How often the pod network is garbage-collected: cheap (one plugin run per plugin of
/// the list), and a DEL lost in a crash is rare.
const CNI_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// CNI GC at start-up (what a crash left behind) and then every [`CNI_GC_INTERVAL`].
async fn cni_gc(runtime: Arc<Runtime>) {
    let mut tick = tokio::time::interval(CNI_GC_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = runtime.gc_network().await {
            tracing::warn!("{e}");
        }
    }
}

async fn daemon() -> Result<()> {
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
    let store = Arc::new(store);
    let puller = Arc::new(Puller::new(store.clone(), mirrors));
    let runc = Runc::new("runc".into(), args.state.join("runc"));
    let cni = Cni {
        bin_dirs: args
            .cni_bin_dir
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect(),
        cache_dir: args.cni_cache_dir.clone(),
    };
    let runtime = Runtime::open(
        &args.root,
        &args.state,
        store,
        Arc::new(runc),
        &args.cni_conf_dir,
        cni,
    )
    .with_context(|| format!("opening runtime state in {}", args.root.display()))?;
    runtime.recover().await;
    runtime.reclaim_orphans().await;
    let runtime = Arc::new(runtime);
    tokio::spawn(cni_gc(runtime.clone()));
    let listener = tokio::net::TcpListener::bind(args.stream_address)
        .await
        .with_context(|| format!("binding the streaming server to {}", args.stream_address))?;
    let streaming = Streaming {
        tokens: Arc::new(Tokens::default()),
        runtime: runtime.clone(),
        addr: listener.local_addr()?,
    };
    tracing::info!(addr = %streaming.addr, "serving exec and port-forward streams");
    tokio::spawn(runtime_shim::streaming::serve(listener, streaming.clone()));
    let router = tonic::transport::Server::builder()
        .add_service(ImageServiceServer::new(ImageServiceImpl::new(puller)))
        .add_service(RuntimeServiceServer::new(RuntimeServiceImpl::new(
            runtime.clone(),
            streaming,
        )));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server::serve(&args.listen, router, shutdown).await?;
    runtime.drain().await;
    Ok(())
}
