//! `ipamd`: the node's IP address manager, and helpers the node bootstrap needs
//! before the daemon runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use cni_plugin::aws::ec2::SdkEc2;
use cni_plugin::aws::imds::{self, Imds};
use cni_plugin::aws::limits::{MaxPodsOptions, limits, max_pods};
use cni_plugin::eni::{EniConfig, Reconciler};
use cni_plugin::ipam::eni::EniIpam;
use cni_plugin::ipam::{PodCidrIpam, deferred, now_ms};
use cni_plugin::rpc::{
    self, Allocator, DEFAULT_SOCKET, DEFAULT_STATE_DIR, IpamService, PodCidrService,
};
use ipnet::Ipv4Net;

#[derive(Debug, Parser)]
#[command(name = "ipamd", version, about)]
// Without a subcommand `ipamd` is the daemon, so its flags must not be mistaken for
// a subcommand's and vice versa.
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the pod capacity the kubelet should register on an EC2 instance type.
    MaxPods(MaxPodsArgs),
    /// Ask a running daemon for its pool counters (JSON on stdout).
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The daemon's unix socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Debug, clap::Args)]
struct MaxPodsArgs {
    /// EC2 instance type, e.g. m5.large.
    #[arg(long)]
    instance_type: String,
    /// Pods get addresses from /28 prefixes assigned to each ENI slot.
    #[arg(long)]
    prefix_delegation: bool,
    /// Pods live on secondary ENIs only (ENIConfig subnets).
    #[arg(long)]
    custom_networking: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Pod addresses are secondary IPs (or prefixes) on EC2 ENIs.
    Eni,
    /// Pod addresses come from the node's spec.podCIDR.
    Podcidr,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    #[arg(long, value_enum, default_value_t = Mode::Eni)]
    mode: Mode,
    /// Pod CIDR to allocate from in podcidr mode.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Unix socket the CNI plugin talks to.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where allocations are persisted across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override the EC2 API endpoint (tests use an emulator); eni mode only.
    #[arg(long)]
    ec2_endpoint: Option<String>,
    /// Override the instance metadata endpoint; eni mode only.
    #[arg(long, default_value = imds::DEFAULT_ENDPOINT)]
    imds_endpoint: String,
    /// Seconds between housekeeping passes: DELs the plugin could not deliver are applied,
    /// pods' host routes and rules repaired.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    housekeeping_interval: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::MaxPods(args)) => {
            let opts = MaxPodsOptions {
                prefix_delegation: args.prefix_delegation,
                custom_networking: args.custom_networking,
            };
            match max_pods(&args.instance_type, opts) {
                Ok(n) => {
                    println!("{n}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ipamd max-pods: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Status(args)) => match status(&args.socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ipamd status: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => match daemon(cli.daemon) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ipamd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn daemon(args: DaemonArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let socket = rpc::socket_path(
        args.socket
            .as_deref()
            .unwrap_or_else(|| std::path::Path::new(DEFAULT_SOCKET)),
    );
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    match args.mode {
        Mode::Eni => eni_daemon(&args, &socket, &state_dir),
        Mode::Podcidr => podcidr_daemon(&args, &socket, &state_dir),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn eni_daemon(
    args: &DaemonArgs,
    socket: &std::path::Path,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if args.pod_cidr.is_some() {
        bail!("--pod-cidr is for podcidr mode; eni mode takes pod IPs from the instance's ENIs");
    }
    let config = EniConfig::from_env().map_err(anyhow::Error::msg)?;
    let imds = Imds::new(&args.imds_endpoint)?;
    runtime()?.block_on(async {
        let instance = imds
            .instance()
            .await
            .context("reading the instance's metadata")?;
        let limits = limits(&instance.instance_type).with_context(|| {
            format!(
                "instance type {} is not in the EC2 limits table",
                instance.instance_type
            )
        })?;
        // Only now that the node is known does ipamd touch its state directory.
        let (ipam, replay) = EniIpam::open(state_dir, config.cooldown_ms, now_ms())?;
        let ec2 = SdkEc2::new(&instance.region, args.ec2_endpoint.as_deref()).await;
        tracing::info!(
            instance_id = %instance.instance_id,
            instance_type = %instance.instance_type,
            region = %instance.region,
            state_dir = %state_dir.display(),
            replayed = replay.records,
            torn_tail = replay.torn_tail,
            ?config,
            "eni mode"
        );
        let mut reconciler = Reconciler::new(ec2, imds, instance, config, limits, ipam).await?;
        // Before serving: the pool holds exactly what EC2 lists, so the first ADD after a
        // restart cannot get an IP EC2 took away.
        if let Err(e) = reconciler.sync_once().await {
            tracing::warn!("first sync with EC2 failed, serving replayed assignments only: {e:#}");
        }
        tracing::info!(targets = ?reconciler.targets(), "eni pool loaded");
        let service = IpamService::shared(reconciler.state());
        tokio::spawn(reconciler.run());
        serve(args, socket, service).await
    })
}

fn podcidr_daemon(
    args: &DaemonArgs,
    socket: &std::path::Path,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let cidr: Ipv4Net = args
        .pod_cidr
        .as_deref()
        .context("--pod-cidr is required in podcidr mode")?
        .parse()
        .context("--pod-cidr must be an IPv4 CIDR such as 10.244.1.0/24")?;
    let (ipam, replay) = PodCidrIpam::open(cidr, state_dir, now_ms())?;
    let stats = ipam.stats(now_ms());
    tracing::info!(
        pod_cidr = %ipam.cidr(),
        state_dir = %state_dir.display(),
        replayed = replay.records,
        torn_tail = replay.torn_tail,
        assigned = stats.assigned,
        free = stats.free,
        cooldown = stats.cooldown,
        "podcidr pool loaded"
    );

    runtime()?.block_on(serve(args, socket, PodCidrService::new(ipam)))
}

/// Applies the DELs that could not reach the previous daemon, then serves, with the
/// housekeeping loop beside.
async fn serve<A: Allocator>(
    args: &DaemonArgs,
    socket: &std::path::Path,
    service: IpamService<A>,
) -> anyhow::Result<()> {
    let deferred_dir = deferred::dir_for(socket);
    let interval = std::time::Duration::from_secs(args.housekeeping_interval);
    service.housekeep_once(&deferred_dir, interval).await;
    tokio::spawn(service.clone().housekeeping(deferred_dir, interval));
    rpc::serve(socket, service, shutdown_signal()).await
}

fn status(socket: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let reply = runtime.block_on(async {
        let mut client = rpc::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        anyhow::Ok(
            client
                .status(rpc::pb::StatusRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("Status: {}", s.message()))?
                .into_inner(),
        )
    })?;
    let mut out = serde_json::json!({
        "mode": reply.mode,
        "free": reply.free,
        "assigned": reply.assigned,
        "cooldown": reply.cooldown,
    });
    if reply.mode == "eni" {
        out["instanceID"] = reply.instance_id.clone().into();
        out["enis"] = reply
            .enis
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id,
                    "deviceIndex": e.device_index,
                    "primaryIP": e.primary_ip,
                    "routeTable": e.route_table,
                    "ips": e.ips,
                    "prefixes": e.prefixes,
                    "assigned": e.assigned,
                })
            })
            .collect();
    } else {
        out["podCIDR"] = reply.pod_cidr.clone().into();
    }
    println!("{out}");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
