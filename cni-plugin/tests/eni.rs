//! eni mode end to end (needs root, as CI runs): the EC2 emulator (moto + the IMDSv2
//! view, `hack/ec2-emulator.sh`), the emulated VPC data plane (`hack/imds/vpc.py`, which
//! plugs the ENIs EC2 attaches into the node), and the built `ipamd --mode eni` running
//! inside a network namespace that is the emulated instance, with EC2 and IMDS relayed
//! into it as `hack/node.sh --eni` does. What EC2 says is checked through the SDK.
//!
//! Each test owns a VPC of its own (a /16 of 100.64.0.0/10 derived from the pid), a
//! bridge and namespaces with unique names, and a guard that stops every process and
//! removes every link and namespace it created, also when an assertion fails.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cni_plugin::aws::ec2::{Ec2, Eni, SdkEc2};
use cni_plugin::rpc::{self, pb};
use serde_json::{Value, json};

mod common;
use common::{ip_json, quiet, run};

const IPAMD: &str = env!("CARGO_BIN_EXE_ipamd");
const VPC_CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn venv_python() -> PathBuf {
    let cache = std::env::var("NODERT_CACHE").unwrap_or_else(|_| "/var/cache/node-runtime".into());
    Path::new(&cache).join("venv/bin/python")
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` and the last
/// value it saw after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} did not happen within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// An EC2 client of the emulator with the test credentials it accepts.
fn sdk(region: &str, endpoint: &str) -> SdkEc2 {
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

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Stops a child: SIGTERM first (so scripts clean up), SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
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
struct World {
    tag: String,
    dir: tempfile::TempDir,
    /// Published by ec2-emulator.sh.
    env: HashMap<String, String>,
    vpc_cidr: String,
    bridge: String,
    node_ns: String,
    gateway: Ipv4Addr,
    emulator: Option<Child>,
    vpc: Option<Child>,
    relays: Vec<Child>,
    ipamd: Option<Child>,
    ipamd_env: Vec<(String, String)>,
    pod_netns: Vec<String>,
    ec2: SdkEc2,
}

impl World {
    /// `slot` (0..4) tells the tests of this binary apart; `ipamd_env` are the
    /// WARM_*-style variables ipamd runs with.
    fn new(slot: u32, ipamd_env: &[(&str, &str)]) -> World {
        assert!(slot < 4);
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
            .args(["--subnet-cidr", &format!("100.{second}.0.0/20")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ec2-emulator.sh");
        let mut w = World {
            tag: tag.clone(),
            env: HashMap::new(),
            vpc_cidr,
            bridge: format!("vpcb{tag}"),
            node_ns: format!("vpccni-eni-{tag}"),
            gateway: Ipv4Addr::new(100, second as u8, 0, 1),
            emulator: Some(emulator),
            vpc: None,
            relays: Vec::new(),
            ipamd: None,
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
        w.start_ipamd();
        w
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn instance_id(&self) -> &str {
        &self.env["INSTANCE_IDS"]
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    /// The instance: a namespace whose eth0 (the primary ENI's MAC and IP) is a port of
    /// the VPC's bridge, whose address is the subnet's gateway.
    fn make_node(&mut self) {
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

    fn start_vpc(&mut self) {
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
    fn start_relays(&mut self) {
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

    fn start_ipamd(&mut self) {
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
            .envs(self.ipamd_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.ipamd = Some(cmd.spawn().expect("spawn ipamd"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_status().is_none() {
            if let Some(st) = self.ipamd.as_mut().unwrap().try_wait().unwrap() {
                panic!("ipamd exited with {st}: {}", self.log("ipamd.log"));
            }
            assert!(
                Instant::now() < deadline,
                "ipamd does not answer Status after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`: no shutdown, no socket cleanup.
    fn kill_ipamd(&mut self) {
        if let Some(mut c) = self.ipamd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_status(&self) -> Option<pb::StatusReply> {
        block_on(async {
            let mut c = rpc::connect(&self.socket()).await.ok()?;
            c.status(pb::StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        })
    }

    fn status(&self) -> pb::StatusReply {
        self.try_status()
            .unwrap_or_else(|| panic!("ipamd Status failed: {}", self.log("ipamd.log")))
    }

    /// The ENIs EC2 says are attached to the instance.
    fn ec2_enis(&self) -> Vec<Eni> {
        let mut enis = block_on(self.ec2.attached_enis(self.instance_id())).unwrap();
        enis.sort_by_key(|e| e.attachment.as_ref().unwrap().device_index);
        enis
    }

    /// Every secondary IP EC2 lists on the instance's ENIs.
    fn ec2_secondary_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.ec2_enis()
            .iter()
            .flat_map(|e| e.secondary_ips.clone())
            .collect()
    }

    /// Waits until ipamd's pool has `available` IPs an ADD could get, and both ipamd's
    /// pool and EC2 list exactly `total` secondary IPs (the same ones).
    fn wait_pool(&self, available: u32, total: usize, timeout: Duration) -> pb::StatusReply {
        eventually(
            &format!("a pool of {total} IPs, {available} available, as EC2 lists them"),
            timeout,
            || {
                let s = self.status();
                let ours: BTreeSet<Ipv4Addr> = s
                    .enis
                    .iter()
                    .flat_map(|e| e.ips.iter().map(|ip| ip.parse().unwrap()))
                    .collect();
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
    fn add(&self, container_id: &str) -> Result<pb::AddNetworkReply, tonic::Status> {
        add_to(&self.socket(), container_id)
    }

    fn del(&self, container_id: &str) -> String {
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
    fn cni(&self, command: &str, pod_ns: &str, stdin: &Value) -> Output {
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

    fn conf(&self) -> Value {
        json!({"cniVersion": "1.1.0", "name": "pods", "type": "vpc-cni", "ipamdSocket": self.socket(), "mtu": 1500})
    }

    fn pod_netns(&mut self, name: &str) -> String {
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

fn add_to(socket: &Path, container_id: &str) -> Result<pb::AddNetworkReply, tonic::Status> {
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

fn ip_of(reply: &pb::AddNetworkReply) -> Ipv4Addr {
    reply.ip.trim_end_matches("/32").parse().unwrap()
}

#[test]
fn warm_ip_target_holds_through_adds_and_dels_as_ec2_lists_it() {
    let w = World::new(
        0,
        &[
            ("WARM_IP_TARGET", "3"),
            ("IP_COOLDOWN_PERIOD", "2"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ],
    );
    // The pool fills up to 3 on the primary ENI, and EC2 lists exactly those.
    let s = w.wait_pool(3, 3, Duration::from_secs(30));
    assert_eq!(s.mode, "eni");
    assert_eq!(s.instance_id, w.instance_id());
    assert_eq!(s.enis.len(), 1, "{s:?}");
    let primary = &w.ec2_enis()[0];
    assert_eq!(s.enis[0].id, primary.id);
    assert_eq!((s.enis[0].device_index, s.enis[0].route_table), (0, 254));
    assert_eq!(s.enis[0].primary_ip, primary.primary_ip.to_string());

    // Every IP an ADD hands out is one EC2 lists on this instance, never an ENI's own.
    let a = w.add("pod-a").unwrap();
    let b = w.add("pod-b").unwrap();
    assert_ne!(ip_of(&a), ip_of(&b));
    assert_eq!((a.route_table, a.existing), (254, false));
    // External SNAT: pods' rules cover every destination, and the node adds no SNAT.
    assert!(a.rule_destinations.is_empty(), "{a:?}");
    assert!(!quiet(
        "ip",
        &[
            "netns",
            "exec",
            &w.node_ns,
            "iptables",
            "-t",
            "nat",
            "-S",
            "AWS-SNAT-CHAIN-0"
        ]
    ));
    let ec2 = w.ec2_secondary_ips();
    assert!(
        ec2.contains(&ip_of(&a)) && ec2.contains(&ip_of(&b)),
        "{ec2:?}"
    );
    assert!(w.ec2_enis().iter().all(|e| e.primary_ip != ip_of(&a)));
    // A repeated ADD is answered from the pool.
    let again = w.add("pod-a").unwrap();
    assert_eq!((again.ip.as_str(), again.existing), (a.ip.as_str(), true));

    // The pool refills behind the ADDs: 3 available again, 5 on the ENI.
    let s = w.wait_pool(3, 5, Duration::from_secs(20));
    assert_eq!(s.assigned, 2);

    // DEL gives both back; after the cooldown the 2 extra IPs go back to EC2.
    assert_eq!(w.del("pod-a"), ip_of(&a).to_string());
    assert_eq!(w.del("pod-b"), ip_of(&b).to_string());
    assert_eq!(w.del("pod-b"), "", "a repeated DEL releases nothing");
    let cooling = w.status();
    assert_eq!((cooling.assigned, cooling.cooldown), (0, 2), "{cooling:?}");
    let s = w.wait_pool(3, 3, Duration::from_secs(20));
    assert_eq!((s.assigned, s.cooldown), (0, 0));

    // `ipamd status` prints the same pool.
    let out = Command::new(IPAMD)
        .args(["status", "--socket"])
        .arg(w.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["mode"], "eni");
    assert_eq!(status["free"], 3);
    assert_eq!(status["enis"][0]["id"], primary.id.as_str());
    assert_eq!(status["enis"][0]["ips"].as_array().unwrap().len(), 3);
}

#[test]
fn warm_eni_target_attaches_a_second_eni_that_pods_route_through_and_frees_it() {
    let mut w = World::new(1, &[("IP_COOLDOWN_PERIOD", "2")]);
    // WARM_ENI_TARGET=1 (the default) on m5.large: the primary's 9 secondary IPs.
    let s = w.wait_pool(9, 9, Duration::from_secs(30));
    assert_eq!(s.enis.len(), 1);

    // The first pod leaves less than an ENI's worth: a second ENI is created, attached
    // at device index 1 and filled.
    w.add("pod-0").unwrap();
    let s = w.wait_pool(17, 18, Duration::from_secs(40));
    assert_eq!(s.enis.len(), 2, "{s:?}");
    let enis = w.ec2_enis();
    assert_eq!(enis.len(), 2);
    let second = &enis[1];
    assert_eq!(second.attachment.as_ref().unwrap().device_index, 1);
    assert_eq!(second.subnet_id, w.env["SUBNET_ID"]);
    assert_eq!(
        second.security_groups,
        vec![w.env["SECURITY_GROUP_ID"].clone()]
    );
    assert!(
        second.tags.contains(&(
            "node.k8s.amazonaws.com/instance_id".into(),
            w.instance_id().into()
        )),
        "{:?}",
        second.tags
    );
    assert_eq!(
        (s.enis[1].id.as_str(), s.enis[1].route_table),
        (second.id.as_str(), 2)
    );
    assert!(
        ip_json(&["-n", &w.node_ns, "link", "show", "eth1"])[0]["address"] == second.mac.as_str()
    );

    // SNAT (the default): traffic leaving the VPC appears from the node's primary IP.
    let primary_ip = enis[0].primary_ip.to_string();
    let nat = run(
        "ip",
        &["netns", "exec", &w.node_ns, "iptables", "-t", "nat", "-S"],
    );
    for want in [
        "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0".to_string(),
        format!(
            "-A AWS-SNAT-CHAIN-0 -d {} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            w.vpc_cidr
        ),
        format!("--to-source {primary_ip} --random-fully"),
    ] {
        assert!(nat.contains(&want), "{want:?} not in {nat}");
    }

    // The node side of the ENI: its primary IP on eth1, table 2 through the gateway.
    let addrs = ip_json(&["-n", &w.node_ns, "addr", "show", "dev", "eth1"]);
    let has_primary = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == second.primary_ip.to_string().as_str());
    assert!(has_primary, "{addrs:?}");
    let table = ip_json(&["-n", &w.node_ns, "route", "show", "table", "2"]);
    let gw = w.gateway.to_string();
    assert!(
        table
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == gw.as_str() && r["dev"] == "eth1"),
        "{table:?}"
    );
    let main = ip_json(&["-n", &w.node_ns, "route", "show", "table", "main"]);
    assert!(main.iter().all(|r| r["dev"] != "eth1"), "{main:?}");

    // A pod through the plugin: ADD until one lands on the second ENI (the first ones
    // may take IPs of the primary), then check its rules and ping the VPC router.
    let eni1_ips: BTreeSet<String> = s.enis[1].ips.iter().cloned().collect();
    let mut on_second = None;
    let mut plugin_pods = Vec::new();
    for i in 0..10 {
        let ns = w.pod_netns(&format!("p{i}"));
        plugin_pods.push(ns.clone());
        let out = w.cni("ADD", &ns, &w.conf());
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
            .to_string();
        assert!(w.ec2_secondary_ips().contains(&ip.parse().unwrap()));
        if eni1_ips.contains(&ip) {
            on_second = Some((ns, ip));
            break;
        }
    }
    let (ns, ip) = on_second.expect("no pod landed on the second ENI in 10 ADDs");
    let rules = ip_json(&["-n", &w.node_ns, "rule", "show"]);
    assert!(
        rules.iter().any(|r| r["src"] == ip.as_str()
            && r["table"] == "2"
            && r["priority"] == 1536
            && r["dst"] == w.vpc_cidr.split('/').next().unwrap()
            && r["dstlen"] == 16),
        "{rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["dst"] == ip.as_str() && r["table"] == "main" && r["priority"] == 512),
        "{rules:?}"
    );
    // Out through eth1 (EC2 delivers the answer only to the ENI holding the IP).
    assert!(
        common::ping(Some(ns.as_str()), &gw),
        "pod {ip} on eth1 cannot reach the VPC router"
    );
    let out = w.cni("DEL", &ns, &w.conf());
    assert!(
        out.status.success(),
        "DEL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = ip_json(&["-n", &w.node_ns, "rule", "show"]);
    assert!(rules.iter().all(|r| r["src"] != ip.as_str()), "{rules:?}");

    // Every pod gone: once the cooldown is over, the ENIs beyond one ENI's worth of free
    // IPs are detached and deleted, and the node's interface goes with them.
    for ns in &plugin_pods {
        let out = w.cni("DEL", ns, &w.conf());
        assert!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    w.del("pod-0");
    let s = w.wait_pool(9, 9, Duration::from_secs(40));
    assert_eq!((s.enis.len(), s.assigned), (1, 0), "{s:?}");
    assert_eq!(w.ec2_enis().len(), 1);
    let leftovers = block_on(
        w.ec2
            .detached_enis_tagged("node.k8s.amazonaws.com/instance_id", w.instance_id()),
    )
    .unwrap();
    assert!(
        leftovers.is_empty(),
        "detached but not deleted: {leftovers:?}"
    );
    eventually("vpc.py unplugs eth1", Duration::from_secs(10), || {
        let links = ip_json(&["-n", &w.node_ns, "link", "show"]);
        links
            .iter()
            .all(|l| l["ifname"] != "eth1")
            .then_some(())
            .ok_or_else(|| format!("{links:?}"))
    });
}

#[test]
fn kill_9_in_a_burst_of_adds_loses_no_completed_add_and_restart_follows_ec2() {
    let mut w = World::new(2, &[("WARM_IP_TARGET", "12")]);
    // 12 IPs: 9 on the primary, 3 on a second ENI.
    w.wait_pool(12, 12, Duration::from_secs(40));

    // 10 concurrent ADDs; ipamd dies as soon as 3 have completed.
    let socket = w.socket();
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..10)
        .map(|i| {
            let socket = socket.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let id = format!("burst-{i}");
                let r = add_to(&socket, &id);
                let _ = tx.send((id, r));
            })
        })
        .collect();
    drop(tx);
    let mut done: Vec<(String, Ipv4Addr)> = Vec::new();
    while done.len() < 3 {
        let (id, r) = rx.recv().expect("fewer than 3 ADDs completed");
        done.push((id, ip_of(&r.expect("ADD in the burst"))));
    }
    w.kill_ipamd();
    for h in workers {
        h.join().unwrap();
    }
    // ADDs answered before the kill landed too.
    for (id, r) in rx.try_iter() {
        if let Ok(r) = r {
            done.push((id, ip_of(&r)));
        }
    }

    w.start_ipamd();
    // Every completed ADD keeps its IP, and a repeated ADD says so.
    for (id, ip) in &done {
        let r = w.add(id).unwrap();
        assert_eq!((ip_of(&r), r.existing), (*ip, true), "{id}");
    }

    // The ADDs the kill interrupted are retried, as the runtime would: no IP twice,
    // every one listed by EC2 on this instance.
    let mut all: HashMap<Ipv4Addr, String> = HashMap::new();
    for i in 0..10 {
        let id = format!("burst-{i}");
        let r = eventually("a retried ADD succeeds", Duration::from_secs(30), || {
            w.add(&id).map_err(|s| s.message().to_string())
        });
        if let Some(other) = all.insert(ip_of(&r), id.clone()) {
            panic!("{} given to both {other} and {id}", ip_of(&r));
        }
    }
    let ec2 = w.ec2_secondary_ips();
    for ip in all.keys() {
        assert!(ec2.contains(ip), "{ip} is not listed by EC2: {ec2:?}");
    }
    assert_eq!(w.status().assigned, 10);

    // While ipamd is down, a free IP is unassigned behind its back: after the restart
    // it is not in the pool, and the assignments stay.
    let s = w.status();
    let free: Vec<Ipv4Addr> = s
        .enis
        .iter()
        .flat_map(|e| e.ips.iter().filter(|ip| !e.assigned.contains(ip)))
        .map(|ip| ip.parse().unwrap())
        .collect();
    let taken_away = free[0];
    w.kill_ipamd();
    let eni = w
        .ec2_enis()
        .into_iter()
        .find(|e| e.secondary_ips.contains(&taken_away))
        .unwrap();
    block_on(w.ec2.unassign_ips(&eni.id, &[taken_away])).unwrap();
    w.start_ipamd();
    let s = w.status();
    let pool: BTreeSet<String> = s.enis.iter().flat_map(|e| e.ips.clone()).collect();
    assert!(!pool.contains(&taken_away.to_string()), "{s:?}");
    assert_eq!(s.assigned, 10);
    for (ip, id) in &all {
        assert_eq!(ip_of(&w.add(id).unwrap()), *ip, "{id}");
    }
}

#[test]
fn a_full_node_fails_status_and_add_until_an_ip_is_free_again() {
    let w = World::new(3, &[("MAX_ENI", "1"), ("IP_COOLDOWN_PERIOD", "1")]);
    w.wait_pool(9, 9, Duration::from_secs(30));
    let status = |w: &World| w.cni("STATUS", "unused", &w.conf());
    let out = status(&w);
    assert!(
        out.status.success(),
        "STATUS: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // MAX_ENI=1: the primary's 9 IPs are all this node gets.
    let pods: Vec<String> = (0..9).map(|i| format!("full-{i}")).collect();
    for p in &pods {
        w.add(p).unwrap();
    }
    let e = w.add("one-too-many").unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let out = status(&w);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 50, "{err}");
    assert_eq!(err["msg"], "no free pod IP", "{err}");
    assert_eq!(
        w.ec2_enis().len(),
        1,
        "MAX_ENI=1 must not attach another ENI"
    );

    // A DEL frees an IP; once its cooldown is over the node is ready again.
    w.del(&pods[0]);
    eventually("STATUS succeeds again", Duration::from_secs(10), || {
        let out = status(&w);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(w.add("one-too-many").is_ok());
}
