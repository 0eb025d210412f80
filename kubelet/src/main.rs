//! `kubelet`: the node agent. Registers the Node, keeps its Lease, runs the node's
//! pods and reports status from a CRI v1 runtime, and serves the kubelet API
//! (:10250) until SIGTERM.

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use kubelet::cloud::CloudProvider;
use kubelet::config::{Flags, KubeletConfigFile, Settings};
use kubelet::cri::CriClient;
use kubelet::node::StatusReporter;
use kubelet::node::lease::LeaseKeeper;
use kubelet::pods::PodView;
use kubelet::server::Server;

fn main() {
    // `kubelet install ...` writes a node's configuration and exits; everything else is
    // upstream's flag set.
    if std::env::args().nth(1).as_deref() == Some("install") {
        if let Err(e) = kubelet::install::main(std::env::args().skip(2)) {
            eprintln!("kubelet install: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let (args, unsupported) = kubelet::config::flags::strip_unsupported(std::env::args());
    let flags = Flags::parse_from(args);
    init_logging(flags.verbosity);
    for flag in unsupported {
        tracing::warn!(flag = %format!("--{flag}"), "upstream kubelet flag not supported by this kubelet; ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The node agent is mostly idle waiting on the network; two workers are plenty
        // and keep its footprint small.
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    if let Err(e) = runtime.block_on(run(flags)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr; `--v` maps klog verbosity onto levels, RUST_LOG overrides it.
fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},hyper=info,h2=info,tower=info,rustls=info,kube_client=info"
        ))
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .init();
}

async fn run(flags: Flags) -> Result<()> {
    let file = flags
        .config
        .as_deref()
        .map(KubeletConfigFile::load)
        .transpose()?;
    let hostname = nix::unistd::gethostname()
        .context("reading the hostname")?
        .to_string_lossy()
        .into_owned();
    let provider = CloudProvider::parse(flags.cloud_provider.as_deref().unwrap_or(""))?;
    let cloud = kubelet::cloud::identity(provider).await?;
    if let Some(id) = &cloud {
        info!(instance = %id.instance_id, r#type = %id.instance_type, zone = %id.zone, "running on EC2");
    }
    // Before anything starts: a bad provider config must stop the kubelet, as upstream's.
    let credentials = std::sync::Arc::new(kubelet::credentials::Keyring::from_flags(
        flags.image_credential_provider_config.as_deref(),
        flags.image_credential_provider_bin_dir.as_deref(),
    )?);
    let settings = Settings::resolve_with_cloud(flags, file, &hostname, cloud)?;
    info!(node = %settings.node_name, runtime = %settings.runtime_socket.display(), "starting kubelet");
    std::fs::create_dir_all(&settings.root_dir)
        .with_context(|| format!("creating --root-dir {}", settings.root_dir.display()))?;
    if let Some(bootstrap) = &settings.bootstrap_kubeconfig {
        kubelet::bootstrap::load_client_cert(
            &settings.kubeconfig,
            bootstrap,
            &settings.cert_dir,
            &settings.node_name,
        )
        .await?;
    }

    let kubeconfig = Kubeconfig::read_from(&settings.kubeconfig)
        .with_context(|| format!("reading --kubeconfig {}", settings.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the API client")?;
    let cri = CriClient::new(&settings.runtime_socket)?;
    // Bound before registering, so a taken port or a bad certificate stops the start
    // instead of leaving a node that cannot serve logs or exec.
    let pods = PodView::default();
    let (server_task, serving) = if settings.server.enabled {
        let server = Server::bind(&settings, client.clone(), cri.clone(), pods.clone()).await?;
        // A stored issued certificate is served from the first connection on, even
        // while the API server is unreachable.
        let serving = server.serving_cert();
        let stored = settings
            .server_tls_bootstrap
            .then(|| kubelet::bootstrap::serving::load_current(&settings.cert_dir, &serving))
            .and_then(|loaded| {
                loaded.unwrap_or_else(|e| {
                    tracing::warn!("{e:#}; requesting a new serving certificate");
                    None
                })
            });
        (Some(tokio::spawn(server.run())), Some((serving, stored)))
    } else {
        info!("enableServer is false: not serving the kubelet API");
        (None, None)
    };

    // Pods start before the node registers: static pods must run while the API
    // server is unreachable (they may be the API server).
    let pods_task = {
        let host_ip = settings
            .node_ip
            .or_else(kubelet::node::host::default_ipv4)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let runtime_name = cri
            .version()
            .await
            .map(|v| v.runtime_name)
            .unwrap_or_else(|_| "cri".into());
        let ctx = kubelet::pods::PodContext {
            client: client.clone(),
            cri: cri.clone(),
            host_ip,
            cluster_dns: settings.cluster_dns.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            runtime_name,
            root_dir: settings.root_dir.clone(),
            uid: String::new(),
            view: pods,
            mirrors: kubelet::pods::mirror::Mirrors::new(client.clone(), &settings.node_name),
            credentials,
        };
        let node_name = settings.node_name.clone();
        let static_pods =
            settings
                .static_pod_path
                .clone()
                .map(|path| kubelet::pods::StaticPodConfig {
                    path,
                    period: settings.file_check_frequency,
                });
        tokio::spawn(async move { kubelet::pods::run(ctx, &node_name, static_pods).await })
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut reporter = StatusReporter::new(
        kube::Api::<Node>::all(client.clone()),
        settings.clone(),
        cri.clone(),
    );
    let node = tokio::select! {
        node = reporter.register() => node?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    let uid = node
        .metadata
        .uid
        .clone()
        .context("the API server returned a Node without uid")?;

    let lease = LeaseKeeper::new(
        client.clone(),
        &settings.node_name,
        &uid,
        settings.node_lease_duration_seconds,
    );
    let lease_task = tokio::spawn(lease.run());
    let serving_task = serving
        .and_then(|(serving, stored)| serving_task(&settings, &client, &reporter, serving, stored));
    let status_task = tokio::spawn(reporter.run());
    let mut rotation = rotation_task(&settings, &client);
    let rotated = loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break false }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break false }
            result = async { rotation.as_mut().expect("guarded").await }, if rotation.is_some() => {
                rotation = None;
                match result {
                    Ok(Ok(())) => break true,
                    Ok(Err(e)) => tracing::error!("client certificate rotation stopped: {e:#}"),
                    Err(e) => tracing::error!("client certificate rotation task failed: {e}"),
                }
            }
        }
    };
    // Nothing to flush: the Lease simply expires and the Node keeps its last status,
    // as when upstream's kubelet stops.
    lease_task.abort();
    // Containers keep running: a restarted kubelet adopts them.
    pods_task.abort();
    status_task.abort();
    for task in [server_task, serving_task].into_iter().flatten() {
        task.abort();
    }
    if rotated {
        info!("re-executing to use the rotated client certificate");
        return Err(reexec());
    }
    Ok(())
}

/// serverTLSBootstrap: the renewal (or first request) of the serving certificate,
/// starting from the `stored` one being served.
fn serving_task(
    settings: &Settings,
    client: &kube::Client,
    reporter: &StatusReporter,
    serving: std::sync::Arc<kubelet::server::ServingCert>,
    stored: Option<rustls::pki_types::CertificateDer<'static>>,
) -> Option<tokio::task::JoinHandle<()>> {
    use kubelet::bootstrap::serving;
    if !settings.server_tls_bootstrap {
        return None;
    }
    let (client, cert_dir, node) = (
        client.clone(),
        settings.cert_dir.clone(),
        settings.node_name.clone(),
    );
    let addresses = reporter.observed_addresses();
    Some(tokio::spawn(async move {
        if let Err(e) = serving::run(client, &cert_dir, &node, addresses, serving, stored).await {
            tracing::error!("serving certificate rotation stopped: {e:#}");
        }
    }))
}

/// The rotation of the bootstrapped client certificate, when rotateCertificates is on.
fn rotation_task(
    settings: &Settings,
    client: &kube::Client,
) -> Option<tokio::task::JoinHandle<Result<()>>> {
    use kubelet::bootstrap::rotation;
    if !settings.rotate_certificates {
        return None;
    }
    if !rotation::kubeconfig_uses_store(&settings.kubeconfig, &settings.cert_dir) {
        tracing::warn!(
            kubeconfig = %settings.kubeconfig.display(),
            "rotateCertificates: the kubeconfig does not use the client certificate in --cert-dir (written by TLS bootstrap); not rotating"
        );
        return None;
    }
    let (client, cert_dir, node) = (
        client.clone(),
        settings.cert_dir.clone(),
        settings.node_name.clone(),
    );
    Some(tokio::spawn(async move {
        rotation::run(client, &cert_dir, &node).await
    }))
}

/// Replaces this process with a fresh start of the same binary and arguments (same
/// pid, so a supervisor sees no exit); returns only if exec failed. Every descriptor
/// Rust and tokio open is close-on-exec, so the new image rebinds :10250 cleanly.
fn reexec() -> anyhow::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStringExt;
    let args: Result<Vec<CString>, _> = std::env::args_os()
        .map(|a| CString::new(a.into_vec()))
        .collect();
    let args = match args {
        Ok(args) => args,
        Err(e) => return anyhow::anyhow!("re-executing: {e}"),
    };
    match nix::unistd::execv(c"/proc/self/exe", &args) {
        Err(e) => anyhow::anyhow!("re-executing /proc/self/exe: {e}"),
        Ok(never) => match never {},
    }
}
