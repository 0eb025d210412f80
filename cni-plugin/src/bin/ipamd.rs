//! `ipamd`: the node's IP address manager, and helpers the node bootstrap needs
//! before the daemon runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cni_plugin::aws::limits::{MaxPodsOptions, max_pods};

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

// Parsed now so deployment manifests can be written against the final interface.
#[allow(dead_code)]
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
    /// Override the EC2 API endpoint (tests use an emulator).
    #[arg(long)]
    ec2_endpoint: Option<String>,
    /// Override the instance metadata endpoint.
    #[arg(long)]
    imds_endpoint: Option<String>,
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
        None => {
            eprintln!("ipamd daemon: not implemented yet");
            ExitCode::FAILURE
        }
    }
}
