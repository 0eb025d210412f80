//! Per-pod plumbing in real network namespaces (needs root, as CI runs). Every test owns
//! a netns, a host veth, an IP from 198.18.0.0/15 (the benchmarking range, never routed)
//! and a route table derived from the pid, and a guard removes all of them on drop, so a
//! failed assertion leaves nothing behind. State is inspected with `ip -j`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use cni_plugin::net::{
    NetError, PodLinks, PodNetwork, check_pod_network, host_veth_name, setup_pod_network,
    teardown_pod_network,
};
use serde_json::Value;

mod common;
use common::{eventually, ip_json, ping, quiet, routes_via, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test pod's names and addresses, and the cleanup of everything they could leave.
struct TestPod {
    netns: String,
    net: PodNetwork,
}

impl TestPod {
    fn new() -> TestPod {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < 64, "each test process has 64 pod IPs");
        let netns = format!("vpccni-t-{pid}-{n}");
        // 2^17 addresses in 198.18.0.0/15: 64 per pid slot, 2048 slots.
        let offset = (pid % 2048) * 64 + n;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + offset);
        run("ip", &["netns", "add", &netns]);
        TestPod {
            net: PodNetwork {
                netns_path: PathBuf::from("/var/run/netns").join(&netns),
                ifname: "eth0".into(),
                host_veth: host_veth_name("vpccni-test", &netns),
                ip,
                mtu: 9001,
                table: Some(10000 + pid % 1000),
                rule_destinations: Vec::new(),
            },
            netns,
        }
    }

    fn ip(&self) -> String {
        self.net.ip.to_string()
    }

    /// `ip -j ARGS` inside the pod's namespace.
    fn pod_json(&self, args: &[&str]) -> Vec<Value> {
        ip_json(&[&["-n", &self.netns], args].concat())
    }

    fn host_routes_to_pod(&self) -> Vec<Value> {
        ip_json(&["route", "show", "table", "main"])
            .into_iter()
            .filter(|r| r["dst"] == self.ip().as_str())
            .collect()
    }

    fn rules_for_pod(&self) -> Vec<Value> {
        let ip = self.ip();
        ip_json(&["rule", "show"])
            .into_iter()
            .filter(|r| r["src"] == ip.as_str() || r["dst"] == ip.as_str())
            .collect()
    }

    fn host_veth_exists(&self) -> bool {
        !ip_json(&["link", "show"])
            .iter()
            .all(|l| l["ifname"] != self.net.host_veth.as_str())
    }

    /// The kernel destroys a deleted netns, and the veths in it, in the background.
    fn wait_host_veth_gone(&self) {
        eventually(
            "the host veth goes with the pod's netns",
            std::time::Duration::from_secs(10),
            || {
                (!self.host_veth_exists())
                    .then_some(())
                    .ok_or_else(|| format!("{} still exists", self.net.host_veth))
            },
        );
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let ip = self.ip();
        let _ = quiet("ip", &["link", "del", &self.net.host_veth]);
        for selector in ["from", "to"] {
            // `ip rule del` removes one match per call.
            while quiet("ip", &["rule", "del", selector, &ip]) {}
        }
        let _ = quiet("ip", &["route", "del", &format!("{ip}/32")]);
        let _ = quiet("ip", &["netns", "del", &self.netns]);
    }
}

fn flags(link: &Value) -> Vec<&str> {
    link["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

async fn setup(pod: &TestPod) -> PodLinks {
    setup_pod_network(&pod.net)
        .await
        .unwrap_or_else(|e| panic!("setup {}: {e}", pod.netns))
}

#[tokio::test]
async fn setup_builds_pod_and_host_side() {
    let pod = TestPod::new();
    let links = setup(&pod).await;
    let ip = pod.ip();
    let host_mac = links.host.mac.to_string();

    // Pod side: eth0 up with the /32 and the MTU, lo up.
    let eth0 = &pod.pod_json(&["addr", "show", "dev", "eth0"])[0];
    assert!(flags(eth0).contains(&"UP"), "{eth0}");
    assert_eq!(eth0["mtu"], 9001);
    assert_eq!(eth0["address"], links.pod.mac.to_string().as_str());
    let addrs: Vec<_> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(addrs.len(), 1, "{eth0}");
    assert_eq!(addrs[0]["local"], ip.as_str());
    assert_eq!(addrs[0]["prefixlen"], 32);
    let lo = &pod.pod_json(&["link", "show", "lo"])[0];
    assert!(flags(lo).contains(&"UP"), "{lo}");

    // Pod routes: the gateway on the link, the default through it.
    let routes = pod.pod_json(&["route", "show"]);
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["dev"] == "eth0" && r["scope"] == "link"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == "eth0"),
        "{routes:?}"
    );

    // Pod neighbour: the gateway resolves, permanently, to the host veth's MAC.
    let neigh = pod.pod_json(&["neigh", "show", "dev", "eth0"]);
    let gw = neigh
        .iter()
        .find(|n| n["dst"] == "169.254.1.1")
        .unwrap_or_else(|| panic!("{neigh:?}"));
    assert_eq!(gw["lladdr"], host_mac.as_str());
    assert!(
        gw["state"]
            .as_array()
            .unwrap()
            .contains(&Value::from("PERMANENT")),
        "{gw}"
    );

    // Host side: veth up with the MTU, /32 route through it, the two rules.
    let veth = &ip_json(&["link", "show", "dev", &pod.net.host_veth])[0];
    assert!(flags(veth).contains(&"UP"), "{veth}");
    assert_eq!(veth["mtu"], 9001);
    assert_eq!(veth["address"], host_mac.as_str());
    let host_routes = pod.host_routes_to_pod();
    assert_eq!(host_routes.len(), 1, "{host_routes:?}");
    assert_eq!(host_routes[0]["dev"], pod.net.host_veth.as_str());
    assert_eq!(host_routes[0]["scope"], "link");

    let table = pod.net.table.unwrap().to_string();
    let rules = pod.rules_for_pod();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 512 && r["dst"] == ip.as_str() && r["table"] == "main"),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r["priority"] == 1536
            && r["src"] == ip.as_str()
            && r["table"] == table.as_str()),
        "{rules:?}"
    );

    check_pod_network(&pod.net).await.unwrap();
}

#[tokio::test]
async fn without_a_table_no_rules_are_added() {
    let mut pod = TestPod::new();
    pod.net.table = None;
    pod.net.mtu = 1500;
    setup(&pod).await;
    assert!(pod.rules_for_pod().is_empty());
    assert_eq!(pod.host_routes_to_pod().len(), 1);
    assert_eq!(pod.pod_json(&["link", "show", "eth0"])[0]["mtu"], 1500);
    check_pod_network(&pod.net).await.unwrap();
}

#[tokio::test]
async fn teardown_detaches_the_pod_and_is_idempotent() {
    let pod = TestPod::new();
    // Before any setup: nothing to remove is success.
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();

    setup(&pod).await;
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();
    assert!(pod.host_routes_to_pod().is_empty());
    assert!(pod.rules_for_pod().is_empty());
    // The pair stays for the netns to take with it, carrying nothing.
    assert!(pod.host_veth_exists());
    assert!(
        routes_via(&pod.net.host_veth).is_empty(),
        "routes still lead through the detached veth"
    );
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();

    // An ADD into the same netns after the DEL replaces the detached pair.
    setup(&pod).await;
    check_pod_network(&pod.net).await.unwrap();
    assert_eq!(pod.host_routes_to_pod().len(), 1);
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();

    // The runtime deletes the netns after DEL: the pair goes with it.
    run("ip", &["netns", "del", &pod.netns]);
    pod.wait_host_veth_gone();
}

#[tokio::test]
async fn teardown_after_the_netns_is_gone() {
    let pod = TestPod::new();
    setup(&pod).await;
    // Deleting the namespace destroys eth0 and with it (soon) the host veth and its
    // route; only the rules remain for DEL to clean up.
    run("ip", &["netns", "del", &pod.netns]);
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();
    pod.wait_host_veth_gone();
    assert!(pod.rules_for_pod().is_empty());
    assert!(pod.host_routes_to_pod().is_empty());
}

#[tokio::test]
async fn a_late_del_leaves_a_newer_pod_with_the_same_ip_alone() {
    let old = TestPod::new();
    let mut new = TestPod::new();
    new.net.ip = old.net.ip;
    setup(&new).await;
    // The old pod's veth is long gone; its DEL arrives after the IP was reused.
    teardown_pod_network(&old.net.host_veth, old.net.ip)
        .await
        .unwrap();
    assert_eq!(new.rules_for_pod().len(), 2);
    assert_eq!(new.host_routes_to_pod().len(), 1);
    check_pod_network(&new.net).await.unwrap();
}

#[tokio::test]
async fn check_reports_what_is_missing() {
    let pod = TestPod::new();
    setup(&pod).await;
    check_pod_network(&pod.net).await.unwrap();

    let ip = pod.ip();
    run("ip", &["route", "del", &format!("{ip}/32")]);
    run("ip", &["rule", "del", "from", &ip]);
    run(
        "ip",
        &[
            "-n",
            &pod.netns,
            "neigh",
            "del",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
    );
    let err = check_pod_network(&pod.net).await.unwrap_err();
    let NetError::CheckFailed(missing) = &err else {
        panic!("{err}")
    };
    let all = missing.join("\n");
    assert!(
        all.contains(&format!("host route {ip}/32 is missing")),
        "{all}"
    );
    assert!(all.contains(&format!("rule 'from {ip} lookup")), "{all}");
    assert!(all.contains("neighbour 169.254.1.1 is missing"), "{all}");
    assert_eq!(missing.len(), 3, "{all}");
    assert!(
        err.to_string()
            .starts_with("pod network is not as set up: ")
    );

    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();
    // A detached pod fails CHECK: nothing routes to it.
    let err = check_pod_network(&pod.net).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("host route {ip}/32 is missing")),
        "{err}"
    );
}

#[tokio::test]
async fn host_and_pod_reach_each_other() {
    let pod = TestPod::new();
    setup(&pod).await;
    let ip = pod.ip();
    assert!(ping(None, &ip), "host cannot ping pod {ip}");

    // The address the host answers from is whichever it picks as source towards the pod.
    let route = &ip_json(&["route", "get", &ip])[0];
    let host_addr = route["prefsrc"]
        .as_str()
        .unwrap_or_else(|| panic!("{route}"));
    assert!(
        ping(Some(&pod.netns), host_addr),
        "pod cannot ping host {host_addr}"
    );

    // Control: the pings above prove something only if a torn-down pod is unreachable.
    teardown_pod_network(&pod.net.host_veth, pod.net.ip)
        .await
        .unwrap();
    assert!(!ping(None, &ip), "pod {ip} still answers after teardown");
}

#[tokio::test]
async fn two_pods_reach_each_other() {
    let a = TestPod::new();
    let b = TestPod::new();
    setup(&a).await;
    setup(&b).await;
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(
        forwarding.trim(),
        "1",
        "pods talk through the host: ADD must turn net.ipv4.ip_forward on, as the reference ptp plugin does"
    );
    assert!(
        ping(Some(&a.netns), &b.ip()),
        "{} cannot ping {}",
        a.ip(),
        b.ip()
    );
    assert!(
        ping(Some(&b.netns), &a.ip()),
        "{} cannot ping {}",
        b.ip(),
        a.ip()
    );
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let pod = TestPod::new();

    let mut long = pod.net.clone();
    long.ifname = "averyveryverylong0".into();
    let err = setup_pod_network(&long).await.unwrap_err();
    assert!(matches!(err, NetError::InvalidName { .. }), "{err}");

    let not_netns = tempfile::NamedTempFile::new().unwrap();
    let mut bad_ns = pod.net.clone();
    bad_ns.netns_path = not_netns.path().to_path_buf();
    let err = setup_pod_network(&bad_ns).await.unwrap_err();
    assert!(matches!(err, NetError::NotANetns { .. }), "{err}");

    let mut missing_ns = pod.net.clone();
    missing_ns.netns_path = "/var/run/netns/vpccni-t-does-not-exist".into();
    let err = setup_pod_network(&missing_ns).await.unwrap_err();
    assert!(matches!(err, NetError::OpenNetns { .. }), "{err}");

    // An interface with the requested name already in the pod: the spec says fail.
    // (A veth pair: test kernels may lack the dummy driver.)
    run(
        "ip",
        &[
            "-n", &pod.netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    let err = setup_pod_network(&pod.net).await.unwrap_err();
    assert!(matches!(err, NetError::AlreadyExists { .. }), "{err}");

    assert!(!pod.host_veth_exists());
    assert!(pod.host_routes_to_pod().is_empty());
    assert!(pod.rules_for_pod().is_empty());
}

#[tokio::test]
async fn setup_replaces_a_stale_host_veth_of_the_same_pod() {
    let pod = TestPod::new();
    // A leftover from an earlier sandbox of this pod whose DEL never came.
    run(
        "ip",
        &[
            "link",
            "add",
            &pod.net.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "stale0",
            "netns",
            &pod.netns,
        ],
    );
    setup(&pod).await;
    check_pod_network(&pod.net).await.unwrap();
    // The stale pair is gone: its pod end went with its host end.
    let names: Vec<_> = pod
        .pod_json(&["link", "show"])
        .into_iter()
        .map(|l| l["ifname"].clone())
        .collect();
    assert!(!names.contains(&Value::from("stale0")), "{names:?}");
}
