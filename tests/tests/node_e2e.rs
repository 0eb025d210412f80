//! Our whole node against the real control plane: kubelet + runtime-shim + vpc-cni/ipamd run a
//! Deployment with plain kubectl, serve traffic on the pod IPs, survive a runtime-shim
//! crash (whose restart garbage-collects an attachment it does not know), and give
//! everything back when scaled to zero.

use std::time::Duration;

use node_tests::control_plane::ControlPlane;
use node_tests::fixture::{bin_path, eventually, ipamd_status, run_ok, terminate};
use node_tests::kubelet::{Kubelet, KubeletNode};
use node_tests::registry::Registry;
use node_tests::runtime_shim::{RuntimeShim, ShimDirs};

/// The test's ipamd, stopped however the test ends.
struct Ipamd(std::process::Child);

impl Drop for Ipamd {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(5));
    }
}

/// A network namespace of the test's own, deleted however the test ends.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn host_route_exists(ip: &str) -> bool {
    run_ok(std::process::Command::new("ip").args(["route", "show", ip]))
        .unwrap()
        .contains(ip)
}

fn pods(cp: &ControlPlane, selector: &str) -> Vec<serde_json::Value> {
    let out = cp
        .kubectl(&["get", "pods", "-n", "default", "-l", selector, "-o", "json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_deployment_runs_serves_and_scales_to_zero_on_our_node() {
    let cp = ControlPlane::shared();
    let reg = Registry::start().unwrap();
    let dirs = ShimDirs::new().unwrap();
    let subnet_third = 100 + std::process::id() % 100;
    let subnet = format!("10.225.{subnet_third}.0/24");
    // Our CNI: ipamd in podcidr mode behind vpc-cni.
    let ipamd_sock = dirs.base.join("ipamd.sock");
    let _ipamd = Ipamd(
        std::process::Command::new(bin_path("ipamd"))
            .args(["--mode", "podcidr", "--pod-cidr", &subnet, "--socket"])
            .arg(&ipamd_sock)
            .arg("--state-dir")
            .arg(dirs.base.join("ipamd"))
            .stderr(std::fs::File::create(dirs.base.join("ipamd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("ipamd socket", Duration::from_secs(10), || {
        Ok(ipamd_sock.exists().then_some(()))
    });
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-e2e.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"e2e-{pid}","plugins":[
                {{"type":"vpc-cni","ipamdSocket":"{sock}","mtu":1500}}]}}"#,
            pid = std::process::id(),
            sock = ipamd_sock.display(),
        ),
    )
    .unwrap();
    let mut shim = Some(RuntimeShim::start(&dirs, &reg).unwrap());
    let node = KubeletNode::new(cp, "e2e").unwrap();
    let mut kubelet = Kubelet::start(&node, &dirs.socket(), &[]).unwrap();
    eventually("node Ready", Duration::from_secs(60), || {
        kubelet.check_running()?;
        let out = cp.kubectl(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?;
        Ok((out == "True").then_some(()))
    });

    let app = format!("web-{}", std::process::id());
    cp.apply(&format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{app}","namespace":"default"}},
            "spec":{{"replicas":3,"selector":{{"matchLabels":{{"app":"{app}"}}}},
              "template":{{"metadata":{{"labels":{{"app":"{app}"}}}},
                "spec":{{"nodeName":"{node}","terminationGracePeriodSeconds":2,
                  "containers":[{{"name":"web","image":"registry.k8s.io/e2e-test-images/nginx:1.14-2"}}]}}}}}}}}"#,
        node = node.name
    ))
    .unwrap();
    let selector = format!("app={app}");
    let running = eventually("3 pods Running and Ready", Duration::from_secs(90), || {
        kubelet.check_running()?;
        let ps = pods(cp, &selector);
        let ready: Vec<serde_json::Value> = ps
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            .collect();
        Ok((ready.len() == 3).then_some(ready))
    });
    let prefix = format!("10.225.{subnet_third}.");
    for p in &running {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with(&prefix), "{ip}");
        let body = run_ok(std::process::Command::new("curl").args([
            "-sf",
            "-m",
            "3",
            &format!("http://{ip}/"),
        ]))
        .unwrap();
        assert!(body.contains("node-runtime test web server"), "{body}");
        let cs = &p["status"]["containerStatuses"][0];
        assert!(
            cs["containerID"]
                .as_str()
                .unwrap()
                .starts_with("runtime-shim://"),
            "{cs}"
        );
        assert_eq!(cs["restartCount"], 0);
    }

    // An attachment the runtime does not know (a sandbox it lost, whose DEL never came),
    // made by the plugin directly: the restarted runtime's CNI GC has ipamd release it,
    // and only it.
    let stale = Netns(format!("nodert-stale-{}", std::process::id()));
    run_ok(std::process::Command::new("ip").args(["netns", "add", &stale.0])).unwrap();
    let add = {
        use std::io::Write;
        let mut child = std::process::Command::new(bin_path("vpc-cni"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("stale{}", std::process::id()))
            .env("CNI_NETNS", format!("/var/run/netns/{}", stale.0))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_path("vpc-cni").parent().unwrap())
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=stale",
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"e2e-{pid}","type":"vpc-cni","ipamdSocket":"{sock}","mtu":1500}}"#,
            pid = std::process::id(),
            sock = ipamd_sock.display(),
        );
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stdout)
    );
    let result: serde_json::Value = serde_json::from_slice(&add.stdout).unwrap();
    let stale_ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    assert_eq!(ipamd_status(&ipamd_sock).unwrap()["assigned"], 4);
    assert!(host_route_exists(&stale_ip));

    // A runtime crash disrupts no pod: containers keep serving, and the restarted
    // runtime reports them as before.
    shim.take().unwrap().crash();
    let ip = running[0]["status"]["podIP"].as_str().unwrap().to_string();
    run_ok(std::process::Command::new("curl").args(["-sf", "-m", "3", &format!("http://{ip}/")]))
        .unwrap();
    shim = Some(RuntimeShim::start(&dirs, &reg).unwrap());
    eventually(
        "the stale attachment released",
        Duration::from_secs(20),
        || Ok((ipamd_status(&ipamd_sock)?["assigned"] == 3).then_some(())),
    );
    assert!(
        !host_route_exists(&stale_ip),
        "GC left the stale pod's route"
    );
    for p in &running {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(host_route_exists(ip), "GC removed live pod {ip}'s route");
    }
    std::thread::sleep(Duration::from_secs(3));
    for p in pods(cp, &selector) {
        assert_eq!(
            p["status"]["containerStatuses"][0]["restartCount"], 0,
            "{p}"
        );
        assert_eq!(p["status"]["phase"], "Running");
    }

    cp.kubectl(&["scale", "deployment", &app, "--replicas=0"])
        .unwrap();
    eventually("all pods gone", Duration::from_secs(60), || {
        kubelet.check_running()?;
        Ok(pods(cp, &selector).is_empty().then_some(()))
    });
    // Every IP is back in the pool and nothing of the pods is left.
    let status = ipamd_status(&ipamd_sock).unwrap();
    assert_eq!(status["assigned"], 0, "IPs still assigned: {status}");
    let sandboxes = std::fs::read_dir(dirs.root().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(sandboxes, 0, "sandboxes left in the runtime");
    cp.kubectl(&["delete", "deployment", &app]).unwrap();
    drop(kubelet);
    drop(shim);
    cp.kubectl(&["delete", "node", &node.name]).unwrap();
}
