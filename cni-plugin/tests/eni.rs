//! eni mode end to end (needs root, as CI runs), in the world of `common/world.rs`:
//! the EC2 emulator, the emulated VPC and `ipamd --mode eni` in a namespace that is the
//! instance. What EC2 says is checked through the SDK.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use cni_plugin::aws::ec2::Ec2;
use serde_json::Value;

mod common;
#[path = "common/world.rs"]
mod world;
use common::{ip_json, quiet, run};
use world::{IPAMD, World, add_to, block_on, eventually, ip_of};

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

    // No EC2 call on the ADD path: with the EC2 API frozen, ADDs from the warm pool are
    // answered (the refill behind them waits for EC2 in the background).
    let frozen = Frozen::stop(w.env["MOTO_PID"].parse().unwrap());
    let socket = w.socket();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ips: Vec<_> = (0..3)
            .map(|i| add_to(&socket, &format!("frozen-{i}")).map(|r| ip_of(&r)))
            .collect();
        let _ = tx.send(ips);
    });
    let ips = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ADDs wait for the frozen EC2 API");
    drop(frozen);
    let ips: BTreeSet<Ipv4Addr> = ips.into_iter().map(Result::unwrap).collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    let ec2 = w.ec2_secondary_ips();
    assert!(ips.is_subset(&ec2), "{ips:?} not all in {ec2:?}");
    for i in 0..3 {
        w.del(&format!("frozen-{i}"));
    }
}

/// A process stopped with SIGSTOP until the guard goes (also when a test fails).
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Frozen {
        run("kill", &["-STOP", &pid.to_string()]);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = quiet("kill", &["-CONT", &self.0.to_string()]);
    }
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
        let (ns, ip, result) = w.plugin_add(&format!("p{i}"));
        plugin_pods.push(ns.clone());
        assert!(w.ec2_secondary_ips().contains(&ip));
        let ip = ip.to_string();
        if eni1_ips.contains(&ip) {
            on_second = Some((ns, ip, result));
            break;
        }
    }
    let (ns, ip, result) = on_second.expect("no pod landed on the second ENI in 10 ADDs");
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

    // CHECK verifies the rules and the host route too: each missing one fails it, named.
    let check = |w: &World| {
        let mut conf = w.conf();
        conf["prevResult"] = result.clone();
        w.cni("CHECK", &ns, &conf)
    };
    let check_error = |w: &World| {
        let out = check(w);
        assert!(!out.status.success(), "CHECK passed");
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e["code"], 101, "{e}");
        e["msg"].as_str().unwrap().to_string()
    };
    let out = check(&w);
    assert!(
        out.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let from_rule: [&str; 12] = [
        "-n",
        &w.node_ns,
        "rule",
        "del",
        "priority",
        "1536",
        "from",
        &ip,
        "to",
        &w.vpc_cidr,
        "table",
        "2",
    ];
    run("ip", &from_rule);
    let msg = check_error(&w);
    assert!(
        msg.contains(&format!(
            "rule 'from {ip} to {} lookup 2' priority 1536 is missing",
            w.vpc_cidr
        )),
        "{msg}"
    );
    run("ip", &[&from_rule[..3], &["add"], &from_rule[4..]].concat());
    let to_rule: [&str; 10] = [
        "-n", &w.node_ns, "rule", "del", "priority", "512", "to", &ip, "table", "main",
    ];
    run("ip", &to_rule);
    let msg = check_error(&w);
    assert!(
        msg.contains(&format!(
            "rule 'to {ip} lookup main' priority 512 is missing"
        )),
        "{msg}"
    );
    run("ip", &[&to_rule[..3], &["add"], &to_rule[4..]].concat());
    assert!(check(&w).status.success(), "CHECK after the rules are back");
    run(
        "ip",
        &["-n", &w.node_ns, "route", "del", &format!("{ip}/32")],
    );
    let msg = check_error(&w);
    assert!(
        msg.contains(&format!("host route {ip}/32 is missing")),
        "{msg}"
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
