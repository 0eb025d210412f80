//! podcidr mode end to end (needs root, as CI runs): the built `ipamd` daemon on a
//! private socket and state dir, the built `vpc-cni` executed as a runtime would, and
//! pods in real network namespaces. Each test owns a /27 of 198.18.0.0/15 derived from
//! the pid, and a guard that removes its namespaces, host veths, routes and rules and
//! kills its daemons on drop, so a failed assertion leaves nothing behind.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cni_plugin::net::host_veth_name;
use cni_plugin::rpc::{self, pb};
use ipnet::Ipv4Net;
use serde_json::{Value, json};

mod common;
use common::{eventually, ip_json, quiet, routes_via, run};

fn ping(target: &str) -> bool {
    common::ping(None, target)
}

const IPAMD: &str = env!("CARGO_BIN_EXE_ipamd");
const VPC_CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

/// One test's world: a pod CIDR, a scratch dir with ipamd's socket and state, the
/// namespaces it created, and the ipamd processes it started.
struct World {
    tag: String,
    cidr: Ipv4Net,
    dir: tempfile::TempDir,
    netns: Vec<String>,
    daemons: Vec<Child>,
}

impl World {
    /// `slot` (0..8) tells the tests of this binary apart.
    fn new(slot: u32) -> World {
        assert!(slot < 8);
        let pid = std::process::id();
        // 4096 /27s in 198.18.0.0/15: 8 per pid slot.
        let block = (pid % 512) * 8 + slot;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 32;
        World {
            tag: format!("{pid}-{slot}"),
            cidr: Ipv4Net::new(Ipv4Addr::from(base), 27).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            netns: Vec::new(),
            daemons: Vec::new(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The `n`th address ipamd hands out first (network + 2 + n).
    fn ip(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 2 + n)
    }

    /// Starts ipamd and waits until it answers Status.
    fn start_ipamd(&mut self) {
        self.start_ipamd_with(&[]);
    }

    /// [`World::start_ipamd`] with extra flags.
    fn start_ipamd_with(&mut self, args: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ipamd.log"))
            .unwrap();
        let child = Command::new(IPAMD)
            .args(["--mode", "podcidr", "--pod-cidr", &self.cidr.to_string()])
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ipamd");
        self.daemons.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while try_status(&self.socket()).is_none() {
            assert!(
                Instant::now() < deadline,
                "ipamd did not come up: {}",
                self.ipamd_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` every ipamd of this test: no shutdown, no socket cleanup.
    fn kill_ipamd(&mut self) {
        for mut child in self.daemons.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn ipamd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipamd.log")).unwrap_or_default()
    }

    fn status(&self) -> pb::StatusReply {
        try_status(&self.socket()).expect("ipamd Status")
    }

    /// A new named netns, deleted by the guard.
    fn netns(&mut self, name: &str) -> String {
        let ns = format!("vpccni-pc-{}-{name}", self.tag);
        run("ip", &["netns", "add", &ns]);
        self.netns.push(ns.clone());
        ns
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "pod-network",
            "type": "vpc-cni",
            "ipamdSocket": self.socket(),
        })
    }

    /// Runs the plugin like a runtime: CNI_* variables, the config on stdin.
    fn cni(&self, command: &str, pod: &Pod, stdin: &[u8]) -> Output {
        let mut cmd = Command::new(VPC_CNI);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.namespace, pod.name, pod.container_id
                ),
            );
        if let Some(ns) = &pod.netns {
            cmd.env("CNI_NETNS", format!("/var/run/netns/{ns}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vpc-cni");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// ADD that must succeed; returns the printed result.
    fn add(&self, pod: &Pod, version: &str) -> Value {
        let out = self.cni("ADD", pod, self.conf(version).to_string().as_bytes());
        success(&out, "ADD");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// DEL (optionally with the ADD result as prevResult) that must succeed silently.
    fn del(&self, pod: &Pod, prev: Option<&Value>) {
        let mut conf = self.conf("1.1.0");
        if let Some(prev) = prev {
            conf["cniVersion"] = prev["cniVersion"].clone();
            conf["prevResult"] = prev.clone();
        }
        let out = self.cni("DEL", pod, conf.to_string().as_bytes());
        success(&out, "DEL");
        assert!(out.stdout.is_empty(), "DEL printed {:?}", out.stdout);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_ipamd();
        for ns in &self.netns {
            let _ = quiet("ip", &["link", "del", &host_veth_name("default", ns)]);
            let _ = quiet("ip", &["netns", "del", ns]);
        }
        // Anything routed or ruled to this test's CIDR is ours.
        for route in ip_json(&["route", "show", "table", "main"]) {
            if let Some(dst) = route["dst"].as_str()
                && dst
                    .parse::<Ipv4Addr>()
                    .is_ok_and(|ip| self.cidr.contains(&ip))
            {
                let _ = quiet("ip", &["route", "del", &format!("{dst}/32")]);
            }
        }
        for rule in ip_json(&["rule", "show"]) {
            for (key, sel) in [("src", "from"), ("dst", "to")] {
                if let Some(ip) = rule[key].as_str()
                    && ip
                        .parse::<Ipv4Addr>()
                        .is_ok_and(|ip| self.cidr.contains(&ip))
                {
                    while quiet("ip", &["rule", "del", sel, ip]) {}
                }
            }
        }
    }
}

/// One pod as the runtime names it. The pod name is its netns name, so the guard can
/// derive the host veth.
struct Pod {
    container_id: String,
    namespace: String,
    name: String,
    netns: Option<String>,
}

impl Pod {
    fn new(world: &mut World, name: &str) -> Pod {
        let ns = world.netns(name);
        Pod {
            container_id: format!("c{}", ns.replace('-', "")),
            namespace: "default".into(),
            name: ns.clone(),
            netns: Some(ns),
        }
    }

    fn host_veth(&self) -> String {
        host_veth_name(&self.namespace, &self.name)
    }

    fn netns(&self) -> &str {
        self.netns.as_deref().unwrap()
    }

    /// The pod's IPv4 addresses on eth0, from `ip -j -n NS addr`.
    fn addresses(&self) -> Vec<String> {
        ip_json(&["-n", self.netns(), "addr", "show"])
            .iter()
            .filter(|l| l["ifname"] == "eth0")
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }
}

fn try_status(socket: &Path) -> Option<pb::StatusReply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = rpc::connect(socket).await.ok()?;
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    })
}

fn success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    ip_json(&["link", "show"])
        .iter()
        .any(|l| l["ifname"] == name)
}

/// After DEL nothing is routed through the pod's veth pair any more; the pair itself is
/// left to go with the pod's netns (see `Pair::Detach` in net/pod.rs).
fn detached(pod: &Pod) -> bool {
    let veth = pod.host_veth();
    !link_exists(&veth) || routes_via(&veth).is_empty()
}

/// Deletes the pod's netns as the runtime does after DEL; the pair dies with it.
fn delete_netns(pod: &Pod) {
    run("ip", &["netns", "del", pod.netns()]);
    eventually(
        "the veth goes with the netns",
        Duration::from_secs(10),
        || {
            (!link_exists(&pod.host_veth()))
                .then_some(())
                .ok_or_else(|| format!("{} still exists", pod.host_veth()))
        },
    );
}

fn host_route_exists(ip: Ipv4Addr) -> bool {
    ip_json(&["route", "show", "table", "main"])
        .iter()
        .any(|r| r["dst"] == ip.to_string().as_str())
}

#[test]
fn add_check_del_in_both_result_versions() {
    let mut w = World::new(0);
    w.start_ipamd();
    let initial = w.status();
    assert_eq!(initial.mode, "podcidr");
    assert_eq!(initial.pod_cidr, w.cidr.to_string());
    assert_eq!((initial.free, initial.assigned), (29, 0));

    let a = Pod::new(&mut w, "a");
    let result = w.add(&a, "1.1.0");
    let ip = w.ip(0);
    let sandbox = format!("/var/run/netns/{}", a.netns());
    assert_eq!(result["cniVersion"], "1.1.0");
    let ifs = result["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{result}");
    assert_eq!(ifs[0]["name"], a.host_veth().as_str());
    assert!(ifs[0].get("sandbox").is_none(), "{result}");
    assert_eq!(ifs[0]["mtu"], 1500);
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], sandbox.as_str());
    assert_eq!(ifs[1]["mtu"], 1500);
    assert!(ifs[1]["mac"].as_str().is_some_and(|m| m.len() == 17));
    assert_eq!(
        result["ips"],
        json!([{"address": format!("{ip}/32"), "gateway": "169.254.1.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(a.addresses(), vec![format!("{ip}/32")]);
    assert!(host_route_exists(ip));
    assert!(ping(&ip.to_string()), "host cannot ping pod {ip}");
    assert_eq!(w.status().assigned, 1);

    // A repeated ADD of the same attachment answers with the same address.
    let again = w.add(&a, "1.1.0");
    assert_eq!(again["ips"], result["ips"]);
    assert_eq!(again["interfaces"], result["interfaces"]);
    assert_eq!(a.addresses(), vec![format!("{ip}/32")]);
    assert_eq!(w.status().assigned, 1);

    // CHECK against the result, and STATUS.
    let mut check = w.conf("1.1.0");
    check["prevResult"] = result.clone();
    success(&w.cni("CHECK", &a, check.to_string().as_bytes()), "CHECK");
    success(
        &w.cni("STATUS", &a, w.conf("1.1.0").to_string().as_bytes()),
        "STATUS",
    );

    // A 0.4.0 runtime gets a 0.4.0 result.
    let b = Pod::new(&mut w, "b");
    let old = w.add(&b, "0.4.0");
    let ip_b = w.ip(1);
    assert_eq!(old["cniVersion"], "0.4.0");
    assert_eq!(
        old["ips"],
        json!([{"version": "4", "address": format!("{ip_b}/32"), "gateway": "169.254.1.1", "interface": 1}])
    );
    assert!(old["interfaces"][1].get("mtu").is_none(), "{old}");
    assert_eq!(
        old["interfaces"][1]["sandbox"],
        format!("/var/run/netns/{}", b.netns()).as_str()
    );
    assert_eq!(b.addresses(), vec![format!("{ip_b}/32")]);

    // DEL twice, with and without prevResult: both succeed and leave nothing.
    w.del(&a, Some(&result));
    w.del(&a, Some(&result));
    w.del(&a, None);
    assert!(detached(&a));
    assert!(!host_route_exists(ip));
    assert!(!ping(&ip.to_string()), "{ip} answers after DEL");
    delete_netns(&a);
    w.del(&b, Some(&old));
    w.del(&b, Some(&old));
    assert!(detached(&b));
    assert!(!host_route_exists(ip_b));

    let after = w.status();
    assert_eq!((after.free, after.assigned), (initial.free, 0));
    // Both addresses are cooling down: the next pod gets a third one.
    assert_eq!(after.cooldown, 2);
    let c = Pod::new(&mut w, "c");
    let r = w.add(&c, "1.0.0");
    assert_eq!(r["ips"][0]["address"], format!("{}/32", w.ip(2)).as_str());
    w.del(&c, Some(&r));
}

#[test]
fn allocations_survive_kill_9_and_del_works_without_ipamd() {
    let mut w = World::new(1);
    w.start_ipamd();
    let a = Pod::new(&mut w, "a");
    let ra = w.add(&a, "1.1.0");
    let ip_a = w.ip(0);
    assert_eq!(ra["ips"][0]["address"], format!("{ip_a}/32").as_str());

    w.kill_ipamd();
    w.start_ipamd();
    assert_eq!(w.status().assigned, 1, "{}", w.ipamd_log());

    // The first pod's address is still assigned: the second pod gets another one.
    let b = Pod::new(&mut w, "b");
    let rb = w.add(&b, "1.1.0");
    let ip_b = w.ip(1);
    assert_eq!(rb["ips"][0]["address"], format!("{ip_b}/32").as_str());
    assert!(
        ping(&ip_a.to_string()),
        "pod a unreachable after the restart"
    );

    // DEL of the first without prevResult: ipamd releases its address, and that
    // address is what the plumbing is torn down by.
    w.del(&a, None);
    assert!(!host_route_exists(ip_a));
    assert!(detached(&a));
    let s = w.status();
    assert_eq!((s.assigned, s.cooldown), (1, 1));

    // With ipamd down, DEL still cleans the node and succeeds...
    w.kill_ipamd();
    let out = w.cni("DEL", &b, w.conf("1.1.0").to_string().as_bytes());
    success(&out, "DEL without ipamd");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ipamd"),
        "DEL without ipamd logs nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(detached(&b));
    // ...but ADD and STATUS fail with the spec's codes.
    let c = Pod::new(&mut w, "c");
    let out = w.cni("ADD", &c, w.conf("1.1.0").to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    assert!(!link_exists(&c.host_veth()));
    let out = w.cni("STATUS", &c, w.conf("1.1.0").to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 50, "{e}");

    // The DEL left b's release next to the socket; ipamd applies it before it serves.
    let deferred = cni_plugin::ipam::deferred::dir_for(&w.socket());
    assert_eq!(std::fs::read_dir(&deferred).unwrap().count(), 1);
    w.start_ipamd();
    let s = w.status();
    assert_eq!((s.assigned, s.cooldown), (0, 2), "{}", w.ipamd_log());
    assert_eq!(std::fs::read_dir(&deferred).unwrap().count(), 0);
    assert!(!host_route_exists(ip_b));
    // A repeated DEL, now reaching ipamd, releases nothing more.
    w.del(&b, Some(&rb));
    assert_eq!(w.status().assigned, 0);
}

#[test]
fn a_deferred_del_never_releases_a_later_add() {
    let mut w = World::new(5);
    w.start_ipamd();
    let a = Pod::new(&mut w, "a");
    // The runtime's ADD fails while ipamd is down; its DEL after the failure is left
    // for ipamd...
    w.kill_ipamd();
    let out = w.cni("ADD", &a, w.conf("1.1.0").to_string().as_bytes());
    assert!(!out.status.success());
    w.del(&a, None);
    // ...and the retried ADD of the same attachment, once ipamd is back, keeps its
    // address through every later housekeeping pass.
    w.start_ipamd_with(&["--housekeeping-interval", "1"]);
    let r = w.add(&a, "1.1.0");
    w.kill_ipamd();
    let deferred = cni_plugin::ipam::deferred::dir_for(&w.socket());
    cni_plugin::ipam::deferred::record(
        &deferred,
        &cni_plugin::ipam::AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: "eth0".into(),
        },
        0,
    )
    .unwrap();
    w.start_ipamd_with(&["--housekeeping-interval", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(w.status().assigned, 1, "{}", w.ipamd_log());
    assert_eq!(std::fs::read_dir(&deferred).unwrap().count(), 0);
    let mut check = w.conf("1.1.0");
    check["prevResult"] = r.clone();
    success(&w.cni("CHECK", &a, check.to_string().as_bytes()), "CHECK");
    w.del(&a, Some(&r));
    assert_eq!(w.status().assigned, 0);
}

#[test]
fn gc_releases_what_the_runtime_no_longer_lists_and_keeps_the_rest() {
    let mut w = World::new(6);
    w.start_ipamd();
    let live = Pod::new(&mut w, "live");
    let stale = Pod::new(&mut w, "stale");
    let r_live = w.add(&live, "1.1.0");
    let _ = w.add(&stale, "1.1.0");
    let (ip_live, ip_stale) = (w.ip(0), w.ip(1));
    assert!(host_route_exists(ip_stale) && link_exists(&stale.host_veth()));
    let gc = |valid: Value| {
        let mut conf = w.conf("1.1.0");
        if !valid.is_null() {
            conf["cni.dev/valid-attachments"] = valid;
        }
        w.cni("GC", &live, conf.to_string().as_bytes())
    };

    // A GC without the runtime's list would release every pod: refused, nothing changes.
    let out = gc(Value::Null);
    assert!(!out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 7, "{e}");
    assert_eq!(w.status().assigned, 2);

    // The stale attachment (its DEL never came) is released and its plumbing removed.
    let valid = json!([{"containerID": live.container_id, "ifname": "eth0"}]);
    success(&gc(valid.clone()), "GC");
    let s = w.status();
    assert_eq!((s.assigned, s.cooldown), (1, 1));
    assert!(!host_route_exists(ip_stale));
    assert!(!link_exists(&stale.host_veth()));
    assert!(
        stale.addresses().is_empty(),
        "the stale pod's eth0 went with its veth"
    );

    // The valid one is untouched and still works.
    assert!(host_route_exists(ip_live) && link_exists(&live.host_veth()));
    assert!(
        ping(&ip_live.to_string()),
        "the valid pod is unreachable after GC"
    );
    let mut check = w.conf("1.1.0");
    check["prevResult"] = r_live.clone();
    success(
        &w.cni("CHECK", &live, check.to_string().as_bytes()),
        "CHECK",
    );

    // GC is idempotent, and a DEL of a collected attachment still succeeds.
    success(&gc(valid), "second GC");
    assert_eq!(w.status().assigned, 1);
    w.del(&stale, None);
    w.del(&live, Some(&r_live));
    assert_eq!(w.status().assigned, 0);
}

#[test]
fn malformed_stdin_is_code_6_and_changes_nothing() {
    let mut w = World::new(2);
    w.start_ipamd();
    let a = Pod::new(&mut w, "a");
    let links_before = ip_json(&["link", "show"]).len();
    for stdin in [&b"{not json"[..], b"", b"[1,2"] {
        let out = w.cni("ADD", &a, stdin);
        assert_eq!(out.status.code(), Some(1), "{stdin:?}");
        let e: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("{err}: {:?}", out.stdout));
        assert_eq!(e["code"], 6, "{e}");
        assert_eq!(e["cniVersion"], "1.1.0");
        assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    assert!(!link_exists(&a.host_veth()));
    assert_eq!(ip_json(&["link", "show"]).len(), links_before);
    assert!(a.addresses().is_empty());
    let s = w.status();
    assert_eq!((s.assigned, s.cooldown), (0, 0));

    // A CNI_NETNS that is not a namespace: code 4, nothing allocated.
    let bogus = Pod {
        netns: Some(format!("vpccni-pc-{}-missing", w.tag)),
        ..Pod::new(&mut w, "x")
    };
    let out = w.cni("ADD", &bogus, w.conf("1.1.0").to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 4, "{e}");
    assert_eq!(w.status().assigned, 0);

    // DEL of something that never existed, with or without a netns, succeeds.
    w.del(&a, None);
    let gone = Pod {
        netns: None,
        ..Pod::new(&mut w, "gone")
    };
    w.del(&gone, None);
}

#[test]
fn a_late_del_of_a_replaced_sandbox_leaves_the_new_one_alone() {
    let mut w = World::new(3);
    w.start_ipamd();
    let old = Pod::new(&mut w, "old");
    let r_old = w.add(&old, "1.1.0");
    // The pod's next sandbox: same pod (so the same host veth name), new netns and
    // container id, added before the old sandbox's DEL arrives.
    let new = Pod {
        container_id: format!("{}x", old.container_id),
        namespace: old.namespace.clone(),
        name: old.name.clone(),
        netns: Some(w.netns("new")),
    };
    let r_new = w.add(&new, "1.1.0");
    let (ip_old, ip_new) = (w.ip(0), w.ip(1));
    assert_eq!(
        r_new["interfaces"][0]["name"],
        r_old["interfaces"][0]["name"]
    );
    assert_eq!(r_new["ips"][0]["address"], format!("{ip_new}/32").as_str());

    w.del(&old, Some(&r_old));
    assert!(
        link_exists(&new.host_veth()),
        "the late DEL removed the new veth"
    );
    assert!(host_route_exists(ip_new));
    assert!(!host_route_exists(ip_old));
    assert!(
        ping(&ip_new.to_string()),
        "new sandbox unreachable after the late DEL"
    );
    assert_eq!(w.status().assigned, 1);

    w.del(&new, Some(&r_new));
    assert!(detached(&new));
    assert!(!host_route_exists(ip_new));
    assert_eq!(w.status().assigned, 0);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let mut w = World::new(4);
    w.start_ipamd();
    let pods: Vec<Pod> = (0..12)
        .map(|i| Pod::new(&mut w, &format!("p{i}")))
        .collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| w.add(p, "1.1.0"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "{ips:?}");
    for (pod, r) in pods.iter().zip(&results) {
        let ip = r["ips"][0]["address"].as_str().unwrap();
        assert_eq!(pod.addresses(), vec![ip.to_string()]);
        let addr: Ipv4Addr = ip.trim_end_matches("/32").parse().unwrap();
        assert!(w.cidr.contains(&addr) && addr >= w.ip(0), "{addr}");
    }
    assert_eq!(w.status().assigned, pods.len() as u32);

    std::thread::scope(|s| {
        for (p, r) in pods.iter().zip(&results) {
            let w = &w;
            s.spawn(move || w.del(p, Some(r)));
        }
    });
    assert_eq!(w.status().assigned, 0);
    for p in &pods {
        assert!(detached(p));
    }
}

#[test]
fn housekeeping_restores_a_live_pods_route_and_removes_stale_plumbing() {
    let mut w = World::new(7);
    w.start_ipamd_with(&["--housekeeping-interval", "1"]);
    let a = Pod::new(&mut w, "a");
    let r = w.add(&a, "1.1.0");
    let ip = w.ip(0);
    // What a teardown cut short leaves: a route and a rule for a free address of the pool.
    let free = format!("{}/32", w.ip(5));
    run(
        "ip",
        &[
            "route",
            "add",
            &free,
            "dev",
            &a.host_veth(),
            "scope",
            "link",
        ],
    );
    run(
        "ip",
        &[
            "rule", "add", "from", &free, "lookup", "100", "priority", "1536",
        ],
    );
    // And a live pod's route deleted behind ipamd's back.
    run("ip", &["route", "del", &format!("{ip}/32")]);
    assert!(!ping(&ip.to_string()));

    let has_rule = |from: &str| {
        ip_json(&["rule", "show"])
            .iter()
            .any(|r| r["src"] == from.trim_end_matches("/32") && r["priority"] == 1536)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(host_route_exists(ip) && !host_route_exists(w.ip(5)) && !has_rule(&free)) {
        assert!(
            Instant::now() < deadline,
            "housekeeping did not repair within 10 s: route to the pod {}, stale route {}, stale rule {}; {}",
            host_route_exists(ip),
            host_route_exists(w.ip(5)),
            has_rule(&free),
            w.ipamd_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ping(&ip.to_string()),
        "the pod is unreachable after the repair"
    );
    assert!(
        w.ipamd_log().contains("restored a live pod's route"),
        "{}",
        w.ipamd_log()
    );
    w.del(&a, Some(&r));
    assert!(!host_route_exists(ip));
}
