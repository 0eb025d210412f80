//! The eni-mode test world, shared by the eni test binaries: the EC2 emulator (moto +
//! the IMDSv2 view, `hack/ec2-emulator.sh`), the emulated VPC data plane
//! (`hack/imds/vpc.py`, which plugs the ENIs EC2 attaches into the node), and the built
//! `ipamd --mode eni` running inside a network namespace that is the emulated instance,
//! with EC2 and IMDS relayed into it as `hack/node.sh --eni` does.
//!
//! Each world owns a VPC of its own (a /16 of 100.64.0.0/10 derived from the pid), a
//! bridge and namespaces with unique names, and a guard that stops every process and
//! removes every link and namespace it created, also when an assertion fails.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cni_plugin::aws::ec2::{Ec2, Eni, SdkEc2};
use cni_plugin::rpc::{self, pb};
use serde_json::{Value, json};

pub use crate::common::eventually;
use crate::common::{quiet, run};

pub const IPAMD: &str = env!("CARGO_BIN_EXE_ipamd");
pub const VPC_CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn venv_python() -> PathBuf {
    let cache = std::env::var("NODERT_CACHE").unwrap_or_else(|_| "/var/cache/node-runtime".into());
    Path::new(&cache).join("venv/bin/python")
}

/// An EC2 client of the emulator with the test credentials it accepts.
pub fn sdk(region: &str, endpoint: &str) -> SdkEc2 {
    let config = block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load(),
    );
    SdkEc2::from_config(&config)
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Stops a child: SIGTERM first (so scripts clean up), SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One emulated instance on its own VPC, with ipamd on it.
pub struct World {
    pub tag: String,
    pub dir: tempfile::TempDir,
    /// Published by ec2-emulator.sh.
    pub env: HashMap<String, String>,
    pub vpc_cidr: String,
    pub subnet_cidr: String,
    pub bridge: String,
    pub node_ns: String,
    pub gateway: Ipv4Addr,
    pub emulator: Option<Child>,
    pub vpc: Option<Child>,
    pub relays: Vec<Child>,
    pub ipamd: Option<Child>,
    pub ipamd_env: Vec<(String, String)>,
    pub ipamd_args: Vec<String>,
    pub pod_netns: Vec<String>,
    pub ec2: SdkEc2,
}

impl World {
    /// `slot` (0..4) tells the tests of this binary apart; `ipamd_env` are the
    /// WARM_*-style variables ipamd runs with.
    pub fn new(slot: u32, ipamd_env: &[(&str, &str)]) -> World {
        World::with_ipamd_args(slot, ipamd_env, &[])
    }

    /// [`World::new`] with extra ipamd flags (`ipamd_args`).
    pub fn with_ipamd_args(slot: u32, ipamd_env: &[(&str, &str)], ipamd_args: &[&str]) -> World {
        let mut w = World::build(slot, ipamd_env, ipamd_args, 20);
        w.start_ipamd();
        w
    }

    /// The same node on a subnet of `subnet_len` bits (the VPC's first), with ipamd not
    /// started yet: the test shapes the subnet first, then calls [`World::start_ipamd`].
    pub fn without_ipamd(slot: u32, ipamd_env: &[(&str, &str)], subnet_len: u8) -> World {
        World::build(slot, ipamd_env, &[], subnet_len)
    }

    fn build(slot: u32, ipamd_env: &[(&str, &str)], ipamd_args: &[&str], subnet_len: u8) -> World {
        assert!(slot < 4);
        assert!((16..=28).contains(&subnet_len));
        let pid = std::process::id();
        let tag = format!("{}{slot}", pid % 100_000);
        let second = 64 + (pid % 16) * 4 + slot;
        let vpc_cidr = format!("100.{second}.0.0/16");
        let dir = tempfile::tempdir().unwrap();
        let emulator_dir = dir.path().join("ec2");
        std::fs::create_dir_all(&emulator_dir).unwrap();
        let log = std::fs::File::create(dir.path().join("ec2-emulator.log")).unwrap();
        let emulator = Command::new("bash")
            .arg(repo_root().join("hack/ec2-emulator.sh"))
            .args(["run", "--dir"])
            .arg(&emulator_dir)
            .args(["--owner-pid", &pid.to_string(), "--instances", "1"])
            .args(["--instance-type", "m5.large", "--vpc-cidr", &vpc_cidr])
            .args(["--subnet-cidr", &format!("100.{second}.0.0/{subnet_len}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ec2-emulator.sh");
        let mut w = World {
            tag: tag.clone(),
            env: HashMap::new(),
            vpc_cidr,
            subnet_cidr: format!("100.{second}.0.0/{subnet_len}"),
            bridge: format!("vpcb{tag}"),
            node_ns: format!("vpccni-eni-{tag}"),
            gateway: Ipv4Addr::new(100, second as u8, 0, 1),
            emulator: Some(emulator),
            vpc: None,
            relays: Vec::new(),
            ipamd: None,
            ipamd_args: ipamd_args.iter().map(|a| a.to_string()).collect(),
            ipamd_env: ipamd_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pod_netns: Vec::new(),
            // Replaced once the endpoint is known.
            ec2: sdk("us-west-2", "http://127.0.0.1:1"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !emulator_dir.join("ready").exists() {
            if let Some(st) = w.emulator.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ec2-emulator.sh exited with {st}: {}",
                    w.log("ec2-emulator.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the EC2 emulator is not ready after 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        w.env = std::fs::read_to_string(emulator_dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        w.ec2 = sdk(&w.env["AWS_REGION"], &w.env["EC2_ENDPOINT"]);
        w.make_node();
        w.start_vpc();
        w.start_relays();
        w
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn instance_id(&self) -> &str {
        &self.env["INSTANCE_IDS"]
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    /// The instance: a namespace whose eth0 (the primary ENI's MAC and IP) is a port of
    /// the VPC's bridge, whose address is the subnet's gateway.
    pub fn make_node(&mut self) {
        let out = run(
            venv_python().to_str().unwrap(),
            &[
                repo_root().join("hack/imds/vpc.py").to_str().unwrap(),
                "info",
                "--ec2-endpoint",
                &self.env["EC2_ENDPOINT"],
                "--instance",
                &self.env["INSTANCE_IDS"],
            ],
        );
        let fields: Vec<&str> = out.split_whitespace().collect();
        let (mac, addr, gw) = (fields[0], fields[1], fields[2]);
        assert_eq!(gw, self.gateway.to_string());
        let prefix = addr.split('/').nth(1).unwrap();
        run("ip", &["link", "add", &self.bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{gw}/{prefix}"),
                "dev",
                &self.bridge,
                "noprefixroute",
            ],
        );
        run("ip", &["link", "set", &self.bridge, "up"]);
        run("ip", &["netns", "add", &self.node_ns]);
        let host_if = format!("vpcn{}", self.tag);
        run(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.node_ns,
                "address",
                mac,
            ],
        );
        run(
            "ip",
            &["link", "set", &host_if, "master", &self.bridge, "up"],
        );
        let ns = self.node_ns.clone();
        let in_ns = |args: &[&str]| run("ip", &[&["-n", &ns], args].concat());
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["addr", "add", addr, "dev", "eth0"]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["route", "add", "default", "via", gw]);
        in_ns(&["addr", "add", "169.254.169.254/32", "dev", "lo"]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );
    }

    pub fn start_vpc(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("vpc.log")).unwrap();
        let child = Command::new(venv_python())
            .current_dir(repo_root().join("hack/imds"))
            .args([
                "-u",
                "vpc.py",
                "run",
                "--ec2-endpoint",
                &self.env["EC2_ENDPOINT"],
            ])
            .args(["--bridge", &self.bridge, "--vpc-cidr", &self.vpc_cidr])
            .arg("--node")
            .arg(format!("{}={}", self.instance_id(), self.node_ns))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vpc.py");
        self.vpc = Some(child);
        eventually("vpc.py is ready", Duration::from_secs(30), || {
            self.log("vpc.log")
                .lines()
                .any(|l| l == "ready")
                .then_some(())
                .ok_or_else(|| self.log("vpc.log"))
        });
    }

    /// EC2 at 127.0.0.1:<its port> and IMDS at 169.254.169.254:80 inside the node,
    /// through unix sockets, as node.sh relays them.
    pub fn start_relays(&mut self) {
        let ec2 = self.env["EC2_ENDPOINT"]
            .trim_start_matches("http://")
            .to_string();
        let imds = self.env["IMDS_ENDPOINT"]
            .trim_start_matches("http://")
            .to_string();
        let ec2_port = ec2.rsplit(':').next().unwrap().to_string();
        for (name, target, bind, port) in [
            ("ec2", ec2.clone(), "127.0.0.1", ec2_port),
            ("imds", imds, "169.254.169.254", "80".to_string()),
        ] {
            let sock = self.dir.path().join(format!("{name}-relay.sock"));
            let spawn = |cmd: &mut Command| {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            };
            self.relays.push(spawn(Command::new("socat").args([
                format!("UNIX-LISTEN:{},fork,mode=600", sock.display()),
                format!("TCP:{target}"),
            ])));
            eventually("relay socket", Duration::from_secs(10), || {
                sock.exists().then_some(()).ok_or_else(String::new)
            });
            self.relays.push(spawn(
                Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{}", self.node_ns))
                    .args(["--", "socat"])
                    .arg(format!("TCP-LISTEN:{port},bind={bind},fork,reuseaddr"))
                    .arg(format!("UNIX-CONNECT:{}", sock.display())),
            ));
            let ns = format!("--net=/var/run/netns/{}", self.node_ns);
            let probe = format!("exec 3<>/dev/tcp/{bind}/{port}");
            eventually(
                &format!("{name} relay in the node"),
                Duration::from_secs(10),
                || {
                    quiet("nsenter", &[&ns, "--", "bash", "-c", &probe])
                        .then_some(())
                        .ok_or_else(String::new)
                },
            );
        }
    }

    pub fn start_ipamd(&mut self) {
        self.ipamd = Some(self.spawn_ipamd());
    }

    /// Starts an ipamd the caller owns (and must kill) and waits until it answers.
    pub fn spawn_ipamd(&self) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ipamd.log"))
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.node_ns))
            .args(["--", IPAMD, "--mode", "eni", "--ec2-endpoint"])
            .arg(&self.env["EC2_ENDPOINT"])
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .args(&self.ipamd_args)
            .envs(self.ipamd_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn ipamd");
        // Generous: on a loaded machine the emulator answers slowly.
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.try_status().is_none() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("ipamd exited with {st}: {}", self.log("ipamd.log"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ipamd does not answer Status after 90 s: {}",
                    self.log("ipamd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    /// `kill -9`: no shutdown, no socket cleanup.
    pub fn kill_ipamd(&mut self) {
        if let Some(mut c) = self.ipamd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn try_status(&self) -> Option<pb::StatusReply> {
        block_on(async {
            let mut c = rpc::connect(&self.socket()).await.ok()?;
            c.status(pb::StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        })
    }

    pub fn status(&self) -> pb::StatusReply {
        self.try_status()
            .unwrap_or_else(|| panic!("ipamd Status failed: {}", self.log("ipamd.log")))
    }

    /// The ENIs EC2 says are attached to the instance.
    pub fn ec2_enis(&self) -> Vec<Eni> {
        let mut enis = block_on(self.ec2.attached_enis(self.instance_id())).unwrap();
        enis.sort_by_key(|e| e.attachment.as_ref().unwrap().device_index);
        enis
    }

    /// Every secondary IP EC2 lists on the instance's ENIs.
    pub fn ec2_secondary_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.ec2_enis()
            .iter()
            .flat_map(|e| e.secondary_ips.clone())
            .collect()
    }

    /// Waits until ipamd's pool has `available` IPs an ADD could get, and both ipamd's
    /// pool and EC2 list exactly `total` secondary IPs (the same ones).
    pub fn wait_pool(&self, available: u32, total: usize, timeout: Duration) -> pb::StatusReply {
        eventually(
            &format!("a pool of {total} IPs, {available} available, as EC2 lists them"),
            timeout,
            || {
                let s = self.status();
                let ours = pool_ips(&s);
                let ec2 = self.ec2_secondary_ips();
                if s.free - s.cooldown == available && ours.len() == total && ours == ec2 {
                    Ok(s)
                } else {
                    Err(format!("status {s:?}; EC2 lists {ec2:?}"))
                }
            },
        )
    }

    /// AddNetwork straight to ipamd, as the plugin sends it.
    pub fn add(&self, container_id: &str) -> Result<pb::AddNetworkReply, tonic::Status> {
        add_to(&self.socket(), container_id)
    }

    pub fn del(&self, container_id: &str) -> String {
        block_on(async {
            let mut c = rpc::connect(&self.socket()).await.unwrap();
            c.del_network(pb::DelNetworkRequest {
                container_id: container_id.into(),
                ifname: "eth0".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .ip
        })
    }

    /// Runs the plugin inside the node, as the node's runtime would.
    pub fn cni(&self, command: &str, pod_ns: &str, stdin: &Value) -> Output {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.node_ns))
            .args(["--", VPC_CNI])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("c{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_ns}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn conf(&self) -> Value {
        json!({"cniVersion": "1.1.0", "name": "pods", "type": "vpc-cni", "ipamdSocket": self.socket(), "mtu": 1500})
    }

    pub fn pod_netns(&mut self, name: &str) -> String {
        let ns = format!("vpccni-ep-{}-{name}", self.tag);
        run("ip", &["netns", "add", &ns]);
        self.pod_netns.push(ns.clone());
        ns
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_ipamd();
        for mut r in self.relays.drain(..) {
            let _ = r.kill();
            let _ = r.wait();
        }
        // vpc.py unplugs the ENIs and removes its routes on SIGTERM.
        if let Some(mut v) = self.vpc.take() {
            stop(&mut v, Duration::from_secs(10));
        }
        for ns in &self.pod_netns {
            let _ = quiet("ip", &["netns", "del", ns]);
        }
        // The node's eth0, its ENIs, pods' host veths, tables and rules go with it.
        let _ = quiet("ip", &["netns", "del", &self.node_ns]);
        let _ = quiet("ip", &["link", "del", &format!("vpcn{}", self.tag)]);
        let _ = quiet("ip", &["link", "del", &self.bridge]);
        let _ = quiet("ip", &["route", "del", "unreachable", &self.vpc_cidr]);
        if let Some(mut e) = self.emulator.take() {
            stop(&mut e, Duration::from_secs(20));
        }
        if std::thread::panicking() {
            eprintln!("--- ipamd.log ---\n{}", self.log("ipamd.log"));
            eprintln!("--- vpc.log ---\n{}", self.log("vpc.log"));
        }
    }
}

pub fn add_to(socket: &Path, container_id: &str) -> Result<pb::AddNetworkReply, tonic::Status> {
    block_on(async {
        let mut c = rpc::connect(socket)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.add_network(pb::AddNetworkRequest {
            container_id: container_id.into(),
            ifname: "eth0".into(),
            netns: format!("/var/run/netns/{container_id}"),
            pod_namespace: "default".into(),
            pod_name: container_id.into(),
        })
        .await
        .map(|r| r.into_inner())
    })
}

/// Every IP ipamd's pool uses, over all ENIs.
pub fn pool_ips(s: &pb::StatusReply) -> BTreeSet<Ipv4Addr> {
    s.enis
        .iter()
        .flat_map(|e| e.ips.iter().map(|ip| ip.parse().unwrap()))
        .collect()
}

pub fn ip_of(reply: &pb::AddNetworkReply) -> Ipv4Addr {
    reply.ip.trim_end_matches("/32").parse().unwrap()
}

impl World {
    /// ADD through the plugin in a new pod namespace; the pod's namespace, IP and the
    /// plugin's result.
    pub fn plugin_add(&mut self, name: &str) -> (String, Ipv4Addr, Value) {
        let ns = self.pod_netns(name);
        let out = self.cni("ADD", &ns, &self.conf());
        assert!(
            out.status.success(),
            "ADD: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .parse()
            .unwrap();
        (ns, ip, result)
    }
}
