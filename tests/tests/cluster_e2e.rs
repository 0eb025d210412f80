//! The main job as a test: a two-node cluster of our nodes (each a network namespace with
//! kubelet, runtime-shim, ipamd and the upstream kube-proxy) runs a Deployment with plain
//! kubectl. Pods reach each other across nodes and through a ClusterIP Service, survive
//! any node daemon being killed, move to the other node on drain, give their IPs back,
//! and the cluster leaves nothing behind.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use node_tests::cluster::Cluster;
use node_tests::ec2;
use node_tests::fixture::{eventually, ipamd_status, process_running, run_ok};
use serde_json::Value;

const APP: &str = "web";
const REPLICAS: usize = 6;

fn manifest() -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
  {{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{APP}","namespace":"default"}},
    "spec":{{"replicas":{REPLICAS},"selector":{{"matchLabels":{{"app":"{APP}"}}}},
      "template":{{"metadata":{{"labels":{{"app":"{APP}"}}}},
        "spec":{{"terminationGracePeriodSeconds":2,
          "containers":[{{"name":"web","image":"registry.k8s.io/e2e-test-images/nginx:1.14-2",
            "ports":[{{"containerPort":80}}]}}]}}}}}}}},
  {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{APP}","namespace":"default"}},
    "spec":{{"selector":{{"app":"{APP}"}},"ports":[{{"port":80,"targetPort":80}}]}}}}]}}"#
    )
}

fn pods(c: &Cluster) -> Vec<Value> {
    let out = c
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "default",
            "-l",
            &format!("app={APP}"),
            "-o",
            "json",
        ])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn ready_pods(c: &Cluster) -> Vec<Value> {
    pods(c)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
        .collect()
}

fn wait_ready(c: &Cluster, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(what, Duration::from_secs(120), || {
        let ps = ready_pods(c);
        Ok((ps.len() == REPLICAS && ok(&ps)).then_some(ps))
    })
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

/// The network namespace runtime-shim made for the pod with this IP.
fn pod_netns(ip: &str) -> String {
    let list = run_ok(Command::new("ip").args(["netns", "list"])).unwrap();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with("runtime-shim-"))
        .find(|ns| {
            run_ok(Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show", "eth0"]))
                .is_ok_and(|out| out.contains(&format!(" {ip}/")))
        })
        .unwrap_or_else(|| panic!("no pod network namespace holds {ip}"))
        .to_string()
}

fn http_in(ns: &str, url: &str) -> anyhow::Result<String> {
    run_ok(Command::new("ip").args(["netns", "exec", ns, "curl", "-sf", "-m", "3", url]))
}

fn ipamd_assigned(c: &Cluster, node: usize) -> u64 {
    let v = ipamd_status(&c.node_dir(node).join("ipamd.sock")).unwrap();
    v["assigned"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

fn on_node(p: &Value, node: &str) -> bool {
    s(p, &["spec", "nodeName"]) == node
}

#[test]
fn podcidr_mode_two_nodes_run_connect_survive_drain_and_clean_up() {
    scenario("podcidr");
}

/// The same on emulated EC2 instances: pod IPs are secondary IPs of the nodes' ENIs
/// (checked against EC2), and the VPC delivers only to the ENI that holds an address.
#[test]
fn eni_mode_two_nodes_run_connect_survive_drain_and_clean_up() {
    scenario("eni");
}

/// Every pod's IP is its node's: in its pod CIDR (podcidr mode), or held by one of its
/// instance's ENIs according to EC2 (eni mode).
fn check_pod_ips(c: &Cluster, running: &[Value]) {
    let nodes = c.nodes();
    for p in running {
        let i = nodes.iter().position(|n| on_node(p, n)).unwrap();
        let ip = s(p, &["status", "podIP"]);
        if c.mode() == "eni" {
            let ids = c.ec2("INSTANCE_IDS").unwrap();
            let instance = ids.split_whitespace().nth(i).unwrap();
            let xml = ec2::query(
                &c.ec2("EC2_ENDPOINT").unwrap(),
                &c.ec2("AWS_REGION").unwrap(),
                "DescribeNetworkInterfaces",
                &[
                    ("Filter.1.Name", "attachment.instance-id"),
                    ("Filter.1.Value.1", instance),
                ],
            )
            .unwrap();
            assert!(
                xml.contains(&format!("<privateIpAddress>{ip}</privateIpAddress>")),
                "EC2 does not say {ip} belongs to {instance} ({}):\n{xml}",
                nodes[i]
            );
        } else {
            let net: ipnet::Ipv4Net = c.pod_cidrs()[i].parse().unwrap();
            let addr: std::net::Ipv4Addr = ip.parse().unwrap();
            assert!(
                net.contains(&addr),
                "{ip} is not in {}'s pod CIDR {net}",
                nodes[i]
            );
        }
    }
}

fn scenario(mode: &str) {
    let c = Cluster::start(2, mode).unwrap();
    let nodes = c.nodes();
    c.apply(&manifest()).unwrap();

    // Spread over both nodes, each pod with an IP of its node.
    let running = wait_ready(&c, "6 pods Ready on both nodes", |ps| {
        nodes.iter().all(|n| ps.iter().any(|p| on_node(p, n)))
    });
    check_pod_ips(&c, &running);
    let on =
        |n: usize| -> Vec<&Value> { running.iter().filter(|p| on_node(p, &nodes[n])).collect() };
    let (a, b) = (on(0)[0], on(1)[0]);
    let (a_ip, b_ip) = (s(a, &["status", "podIP"]), s(b, &["status", "podIP"]));
    let a_ns = pod_netns(a_ip);
    let netns_seen: Vec<String> = running
        .iter()
        .map(|p| pod_netns(s(p, &["status", "podIP"])))
        .collect();

    // Pod to pod across nodes: ICMP and HTTP.
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &a_ns, "busybox", "ping", "-c", "1", "-W", "2", b_ip,
        ])
        .status()
        .unwrap();
    assert!(ping.success(), "{a_ip} cannot ping {b_ip}");
    let body = http_in(&a_ns, &format!("http://{b_ip}/")).unwrap();
    assert!(body.contains("node-runtime test web server"), "{body}");

    // The ClusterIP Service, through kube-proxy's rules on the client's node, answers from
    // pods of both nodes (the DNAT targets are in that node's conntrack table).
    let cluster_ip = c
        .kubectl(&["get", "service", APP, "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let service = format!("http://{cluster_ip}/");
    eventually(
        "kube-proxy serves the Service",
        Duration::from_secs(30),
        || Ok(http_in(&a_ns, &service).ok()),
    );
    // kube-proxy may serve the Service before it has every endpoint (endpoints of pods
    // that just became Ready arrive a sync later), so requests go in rounds of 20 until
    // pods of every node have answered, or the deadline says one never does.
    let answered_by_every_node = || -> anyhow::Result<Option<()>> {
        for _ in 0..20 {
            http_in(&a_ns, &service)?;
        }
        let table = c.on_node(
            0,
            &["conntrack", "-L", "-p", "tcp", "--orig-dst", &cluster_ip],
        )?;
        // Each entry: original src, dst, ..., then the reply's src, which is the backend pod.
        let backends: HashSet<&str> = table
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .filter_map(|f| f.strip_prefix("src="))
                    .nth(1)
            })
            .collect();
        for (n, node) in nodes.iter().enumerate() {
            if !on(n)
                .iter()
                .any(|p| backends.contains(s(p, &["status", "podIP"])))
            {
                anyhow::bail!(
                    "no answer from a pod on {node} through {cluster_ip}; backends seen: {backends:?}"
                );
            }
        }
        Ok(Some(()))
    };
    eventually(
        "pods of every node answer through the Service",
        Duration::from_secs(30),
        answered_by_every_node,
    );

    // Killing any node daemon disrupts no pod: the node restarts it, containers keep
    // serving, keep their IDs and restart counts, and ipamd keeps its allocations.
    let ids = |ps: &[Value]| -> HashMap<String, String> {
        ps.iter()
            .map(|p| {
                let cs = &p["status"]["containerStatuses"][0];
                (
                    s(p, &["metadata", "name"]).to_string(),
                    format!("{}/{}", cs["containerID"], cs["restartCount"]),
                )
            })
            .collect()
    };
    let before = ids(&running);
    for daemon in ["runtime-shim", "kubelet", "ipamd"] {
        let old = c.daemon_pid(0, daemon).unwrap();
        // SAFETY: kill(2) on a pid the node published for this daemon.
        unsafe { libc::kill(old, libc::SIGKILL) };
        eventually(
            &format!("{daemon} restarted"),
            Duration::from_secs(30),
            || {
                let now = c.daemon_pid(0, daemon)?;
                Ok((now != old && process_running(&now.to_string())).then_some(()))
            },
        );
        for p in on(0) {
            let url = format!("http://{}/", s(p, &["status", "podIP"]));
            c.on_node(0, &["curl", "-sf", "-m", "3", &url])
                .unwrap_or_else(|e| panic!("{url} after killing {daemon}: {e:#}"));
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        ids(&ready_pods(&c)),
        before,
        "containers changed after daemon restarts"
    );
    assert_eq!(
        ipamd_assigned(&c, 0),
        on(0).len() as u64,
        "ipamd lost allocations"
    );

    // Drain: the pods are evicted and come back on the other node.
    c.kubectl(&["drain", &nodes[0], "--ignore-daemonsets", "--timeout=90s"])
        .unwrap();
    wait_ready(&c, "all pods back on the second node", |ps| {
        ps.iter().all(|p| on_node(p, &nodes[1]))
    });
    eventually(
        "the drained node's IPs back in its pool",
        Duration::from_secs(30),
        || Ok((ipamd_assigned(&c, 0) == 0).then_some(())),
    );

    // Scale to zero: every IP back in the pool.
    c.kubectl(&["scale", "deployment", APP, "--replicas=0"])
        .unwrap();
    eventually("all pods gone", Duration::from_secs(60), || {
        Ok(pods(&c).is_empty().then_some(()))
    });
    eventually(
        "the second node's IPs back in its pool",
        Duration::from_secs(30),
        || Ok((ipamd_assigned(&c, 1) == 0).then_some(())),
    );

    // Tear down and check that nothing of the cluster is left on the machine.
    let dir = c.dir();
    let bridge = format!("br{}", c.name);
    drop(c);
    let dir = dir.to_string_lossy().to_string();
    let netns = run_ok(Command::new("ip").args(["netns", "list"])).unwrap();
    for n in &nodes {
        assert!(
            !netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n.as_str())),
            "netns {n} left"
        );
    }
    for ns in &netns_seen {
        assert!(!netns.contains(ns.as_str()), "pod netns {ns} left");
    }
    assert!(
        !Command::new("ip")
            .args(["link", "show", &bridge])
            .status()
            .unwrap()
            .success(),
        "bridge {bridge} left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir), "mounts left under {dir}:\n{mounts}");
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
}
