//! Prefix delegation end to end (needs root, as CI runs) on the emulated node of
//! [`world::World`]: ipamd with ENABLE_PREFIX_DELEGATION=true gets /28 prefixes from
//! the EC2 emulator, pods get addresses inside them that the emulated VPC delivers to the
//! ENI holding the prefix, warm targets hold in prefixes, free prefixes go back, a subnet
//! without a free aligned /28 falls back to secondary IPs, and a restart keeps it all.
//! What EC2 says is checked through the SDK (DescribeNetworkInterfaces' Ipv4Prefixes).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

mod common;
#[path = "common/world.rs"]
mod world;
use cni_plugin::rpc::pb;
use common::ip_json;
use world::{IPAMD, World, eventually, ip_of};

const PD: (&str, &str) = ("ENABLE_PREFIX_DELEGATION", "true");

/// Every prefix EC2 lists on the instance's ENIs.
fn ec2_prefixes(w: &World) -> BTreeSet<Ipv4Net> {
    w.ec2_enis()
        .iter()
        .flat_map(|e| e.prefixes.clone())
        .collect()
}

/// Waits until ipamd's pool has `available` addresses an ADD could get, and both ipamd
/// and EC2 list exactly `count` prefixes (the same ones) and no secondary IP.
fn wait_prefixes(w: &World, count: usize, available: u32, timeout: Duration) -> BTreeSet<Ipv4Net> {
    eventually(
        &format!("{count} prefixes, {available} IPs available, as EC2 lists them"),
        timeout,
        || {
            let s = w.status();
            let ours = status_prefixes(&s);
            let ec2 = ec2_prefixes(w);
            let secondary = w.ec2_secondary_ips();
            if s.free - s.cooldown == available
                && ours.len() == count
                && ours == ec2
                && secondary.is_empty()
            {
                Ok(ours)
            } else {
                Err(format!(
                    "status {s:?}; EC2 lists prefixes {ec2:?}, secondary IPs {secondary:?}"
                ))
            }
        },
    )
}

fn in_any(prefixes: &BTreeSet<Ipv4Net>, ip: Ipv4Addr) -> bool {
    prefixes.iter().any(|p| p.contains(&ip))
}

/// GET `/latest/<path>` from the instance's IMDS, IMDSv2 token first.
fn imds_get(w: &World, path: &str) -> String {
    let base = &w.env["IMDS_ENDPOINT"];
    let token = common::run(
        "curl",
        &[
            "-sSf",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("{base}/latest/api/token"),
        ],
    );
    common::run(
        "curl",
        &[
            "-sSf",
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{base}/latest/{path}"),
        ],
    )
}

/// One EC2 Query API call to the emulator; the XML answer, or the error body.
fn ec2_query(w: &World, action: &str, params: &[(&str, &str)]) -> Result<String, String> {
    let mut body = format!("Action={action}&Version=2016-11-15");
    for (k, v) in params {
        body.push_str(&format!("&{k}={v}"));
    }
    // moto checks no signature, but picks the region from a SigV4-shaped header.
    let auth = format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
        w.env["AWS_REGION"]
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-H", &auth, "--data", &body])
        .arg(format!("{}/", w.env["EC2_ENDPOINT"]))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The prefixes ipamd's pool uses, as Status lists them.
fn status_prefixes(s: &pb::StatusReply) -> BTreeSet<Ipv4Net> {
    s.enis
        .iter()
        .flat_map(|e| e.prefixes.iter().map(|p| p.parse().unwrap()))
        .collect()
}

#[test]
fn prefixes_are_assigned_pods_get_ips_inside_the_warm_prefix_holds_and_free_ones_go_back() {
    let mut w = World::new(0, &[PD, ("IP_COOLDOWN_PERIOD", "2")]);
    // WARM_PREFIX_TARGET=1 (the default): one /28 on the primary ENI, and no secondary IP.
    let first = wait_prefixes(&w, 1, 16, Duration::from_secs(30));
    let prefix = *first.iter().next().unwrap();
    let primary = &w.ec2_enis()[0];
    assert_eq!(primary.prefixes, vec![prefix]);
    // An aligned /28 of the subnet, clear of the subnet's reserved addresses and of the
    // ENI's own address.
    let subnet: Ipv4Net = w.subnet_cidr.parse().unwrap();
    assert_eq!((prefix.prefix_len(), prefix.trunc()), (28, prefix));
    assert!(subnet.contains(&prefix), "{prefix} not in {subnet}");
    assert_ne!(prefix.network(), subnet.network());
    assert_ne!(prefix.broadcast(), subnet.broadcast());
    assert!(!prefix.contains(&primary.primary_ip));
    // IMDS lists it too, as on AWS.
    assert_eq!(
        imds_get(
            &w,
            &format!(
                "meta-data/network/interfaces/macs/{}/ipv4-prefix",
                primary.mac
            )
        )
        .trim(),
        prefix.to_string()
    );

    // A pod through the plugin: an IP inside the prefix, routed by the main table (the
    // primary ENI's), and the VPC delivers the answer to it.
    let (ns, pod_ip, _) = w.plugin_add("p0");
    assert!(prefix.contains(&pod_ip), "{pod_ip} not in {prefix}");
    let rules = ip_json(&["-n", &w.node_ns, "rule", "show"]);
    assert!(
        rules.iter().any(|r| r["dst"] == pod_ip.to_string().as_str()
            && r["table"] == "main"
            && r["priority"] == 512),
        "{rules:?}"
    );
    // The data plane follows EC2 every 0.5 s: a prefix assigned a moment ago may not
    // be delivered yet.
    eventually(
        &format!("pod {pod_ip} in {prefix} reaches the VPC router"),
        Duration::from_secs(10),
        || {
            common::ping(Some(ns.as_str()), &w.gateway.to_string())
                .then_some(())
                .ok_or_else(String::new)
        },
    );

    // No prefix is entirely free any more: a second one comes, and pods keep filling the
    // first. 16 pods fill it; the 17th takes the second and a third comes.
    let two = wait_prefixes(&w, 2, 31, Duration::from_secs(20));
    assert!(two.contains(&prefix));
    let mut pods = Vec::new();
    for i in 1..17 {
        let id = format!("pod-{i}");
        let r = w.add(&id).unwrap();
        assert!(in_any(&two, ip_of(&r)), "{} not in {two:?}", ip_of(&r));
        assert_eq!(r.route_table, 254);
        pods.push(id);
    }
    let three = wait_prefixes(&w, 3, 31, Duration::from_secs(20));
    assert!(three.is_superset(&two));
    // Every address is inside a prefix EC2 lists, never twice.
    let s = w.status();
    assert_eq!(s.assigned, 17);
    let assigned: BTreeSet<String> = s.enis.iter().flat_map(|e| e.assigned.clone()).collect();
    assert_eq!(assigned.len(), 17);
    for ip in &assigned {
        assert!(in_any(&three, ip.parse().unwrap()), "{ip}");
    }

    // `ipamd status` prints the prefixes.
    let out = Command::new(IPAMD)
        .args(["status", "--socket"])
        .arg(w.socket())
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let printed: BTreeSet<Ipv4Net> = status["enis"][0]["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(printed, three);
    assert_eq!(status["assigned"], 17);

    // Every pod gone: after the cooldown, the prefixes beyond the one warm one go back.
    let out = w.cni("DEL", &ns, &w.conf());
    assert!(out.status.success());
    for id in &pods {
        w.del(id);
    }
    let left = wait_prefixes(&w, 1, 16, Duration::from_secs(30));
    assert!(three.is_superset(&left));
    assert!(
        ip_json(&["-n", &w.node_ns, "rule", "show"])
            .iter()
            .all(|r| r["dst"] != pod_ip.to_string().as_str())
    );
}

#[test]
fn ip_targets_count_in_whole_prefixes_with_a_minimum_floor() {
    let w = World::new(
        1,
        &[
            PD,
            ("WARM_IP_TARGET", "4"),
            ("MINIMUM_IP_TARGET", "20"),
            ("IP_COOLDOWN_PERIOD", "1"),
        ],
    );
    // 20 IPs at least: two /28s.
    let start = wait_prefixes(&w, 2, 32, Duration::from_secs(30));
    // 28 pods + 4 warm = 32: still two.
    let pods: Vec<String> = (0..29).map(|i| format!("pod-{i}")).collect();
    for id in &pods[..28] {
        assert!(in_any(&start, ip_of(&w.add(id).unwrap())));
    }
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(ec2_prefixes(&w), start, "28 pods + 4 warm fit in 32");
    // The 29th: 33 needed, a third.
    w.add(&pods[28]).unwrap();
    let three = wait_prefixes(&w, 3, 19, Duration::from_secs(20));
    assert!(three.is_superset(&start));
    // All gone: the minimum keeps two prefixes, the third goes back.
    for id in &pods {
        w.del(id);
    }
    let left = wait_prefixes(&w, 2, 32, Duration::from_secs(30));
    assert!(three.is_superset(&left));
}

#[test]
fn a_subnet_without_a_free_aligned_28_falls_back_to_secondary_ips() {
    // A /26 has four /28s: the first holds the reserved .0-.3, the last the broadcast
    // address. An address in each of the two others leaves none free.
    let mut w = World::without_ipamd(2, &[PD, ("IP_COOLDOWN_PERIOD", "1")], 26);
    let subnet: Ipv4Net = w.subnet_cidr.parse().unwrap();
    let base = u32::from(subnet.network());
    let primary = w.ec2_enis()[0].clone();
    for block in [16, 32] {
        let ip = (block + 4..block + 16)
            .map(|o| Ipv4Addr::from(base + o))
            .find(|ip| *ip != primary.primary_ip)
            .unwrap();
        ec2_query(
            &w,
            "CreateNetworkInterface",
            &[
                ("SubnetId", w.env["SUBNET_ID"].as_str()),
                ("PrivateIpAddress", &ip.to_string()),
            ],
        )
        .unwrap();
    }
    // EC2 itself says so.
    let e = ec2_query(
        &w,
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", primary.id.as_str()),
            ("Ipv4PrefixCount", "1"),
        ],
    )
    .unwrap_err();
    assert!(e.contains("InsufficientCidrBlocks"), "{e}");

    // ipamd asks for a prefix, gets InsufficientCidrBlocks, and keeps WARM_PREFIX_TARGET's
    // worth of IPs (16) as secondary IPs: the primary's 9 and 7 on a second ENI.
    w.start_ipamd();
    let s = w.wait_pool(16, 16, Duration::from_secs(60));
    assert_eq!(s.enis.len(), 2, "{s:?}");
    assert!(s.enis.iter().all(|e| e.prefixes.is_empty()), "{s:?}");
    assert!(ec2_prefixes(&w).is_empty());
    assert!(
        w.log("ipamd.log").contains("InsufficientCidrBlocks"),
        "{}",
        w.log("ipamd.log")
    );

    // Pods get secondary IPs EC2 lists, and the VPC delivers to them.
    let (ns, ip, _) = w.plugin_add("f0");
    assert!(w.ec2_secondary_ips().contains(&ip), "{ip}");
    assert!(subnet.contains(&ip));
    assert!(
        common::ping(Some(ns.as_str()), &w.gateway.to_string()),
        "pod {ip} cannot reach the VPC router"
    );
    // The fallback keeps its 16 available as pods come.
    let s = w.wait_pool(16, 17, Duration::from_secs(30));
    assert_eq!(s.assigned, 1);
    assert!(ec2_prefixes(&w).is_empty());
    let out = w.cni("DEL", &ns, &w.conf());
    assert!(out.status.success());
}

#[test]
fn kill_9_and_restart_keep_prefixes_and_the_addresses_pods_hold_in_them() {
    let mut w = World::new(3, &[PD]);
    wait_prefixes(&w, 1, 16, Duration::from_secs(30));
    let mut held = Vec::new();
    for i in 0..5 {
        let id = format!("pod-{i}");
        let ip = ip_of(&w.add(&id).unwrap());
        held.push((id, ip));
    }
    let before = wait_prefixes(&w, 2, 27, Duration::from_secs(20));
    w.kill_ipamd();
    w.start_ipamd();

    // Served right after the restart: the same prefixes, nothing asked of or given back
    // to EC2, and every pod keeps its address.
    let s = w.status();
    assert_eq!(status_prefixes(&s), before);
    assert_eq!((s.assigned, s.free - s.cooldown), (5, 27), "{s:?}");
    for (id, ip) in &held {
        let r = w.add(id).unwrap();
        assert_eq!((ip_of(&r), r.existing), (*ip, true), "{id}");
    }
    let new = ip_of(&w.add("after-restart").unwrap());
    assert!(in_any(&before, new) && held.iter().all(|(_, ip)| *ip != new));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(ec2_prefixes(&w), before, "a restart changes nothing in EC2");
}
