//! Tests of the test environment itself: the real control plane, the registry with the
//! offline test images, and the EC2 emulator with its IMDS view.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use node_tests::control_plane::{ControlPlane, kubectl_as, kubectl_stdin};
use node_tests::ec2::{Ec2Emulator, xml_field};
use node_tests::fixture::{eventually, process_running, run_ok, unique_name};
use node_tests::reference_node::ReferenceNode;
use node_tests::registry::Registry;
use sha2::{Digest, Sha256};

fn node_manifest(name: &str) -> String {
    format!("{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\"}}}}")
}

#[test]
fn control_plane_answers_as_kubernetes_1_20_2() {
    let cp = ControlPlane::shared();
    let out = cp.kubectl(&["version", "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.20.2", "{out}");
    assert!(
        cp.server().starts_with("https://127.0.0.1:"),
        "{}",
        cp.server()
    );
}

#[test]
fn node_credentials_cannot_touch_another_nodes_objects() {
    let cp = ControlPlane::shared();
    let (a, b) = (unique_name("node-a"), unique_name("node-b"));
    let (ka, kb) = (
        cp.node_kubeconfig(&a).unwrap(),
        cp.node_kubeconfig(&b).unwrap(),
    );
    // Each node may register itself (NodeRestriction) ...
    kubectl_stdin(&ka, &["create", "-f", "-"], &node_manifest(&a)).unwrap();
    kubectl_stdin(&kb, &["create", "-f", "-"], &node_manifest(&b)).unwrap();
    kubectl_as(&ka, &["label", "node", &a, "own=yes"]).unwrap();
    // ... but not modify another node.
    let err = kubectl_as(&ka, &["label", "node", &b, "stolen=yes"]).unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!(
            "node \"{a}\" is not allowed to modify node \"{b}\""
        )),
        "{err:#}"
    );

    // A Secret is readable only by the node running a pod that uses it (Node authorizer).
    let secret = unique_name("secret");
    cp.kubectl(&["create", "secret", "generic", &secret, "--from-literal=k=v"])
        .unwrap();
    let pod = unique_name("pod");
    cp.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"default"}},
            "spec":{{"nodeName":"{b}","containers":[{{"name":"c","image":"registry.k8s.io/pause:3.10"}}],
                     "volumes":[{{"name":"s","secret":{{"secretName":"{secret}"}}}}]}}}}"#
    ))
    .unwrap();
    eventually(
        "node b reading its pod's secret",
        Duration::from_secs(30),
        || Ok(kubectl_as(&kb, &["get", "secret", &secret, "-o", "name"]).ok()),
    );
    let err = kubectl_as(&ka, &["get", "secret", &secret]).unwrap_err();
    assert!(format!("{err:#}").contains("Forbidden"), "{err:#}");
    assert!(
        format!("{err:#}").contains(&format!("system:node:{a}")),
        "{err:#}"
    );
    cp.kubectl(&["delete", "pod", &pod, "--grace-period=0", "--force"])
        .unwrap();
}

#[test]
fn bootstrap_token_gets_a_client_certificate_approved_and_signed() {
    let cp = ControlPlane::shared();
    let bootstrap = cp.bootstrap_kubeconfig().unwrap();
    let node = unique_name("boot");
    let tmp = std::env::temp_dir().join(unique_name("csr"));
    std::fs::create_dir_all(&tmp).unwrap();
    let (key, csr) = (tmp.join("key.pem"), tmp.join("csr.pem"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                key.to_str().unwrap(),
                "-subj",
                &format!("/O=system:nodes/CN=system:node:{node}"),
                "-out",
                csr.to_str().unwrap(),
            ]),
    )
    .unwrap();
    let request = run_ok(Command::new("base64").arg("-w0").arg(&csr)).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    let manifest = format!(
        r#"{{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest",
            "metadata":{{"name":"{node}"}},
            "spec":{{"request":"{request}","signerName":"kubernetes.io/kube-apiserver-client-kubelet",
                     "usages":["digital signature","key encipherment","client auth"]}}}}"#
    );
    kubectl_stdin(&bootstrap, &["create", "-f", "-"], &manifest).unwrap();
    // The controller-manager's csrapproving and csrsigning controllers do the rest.
    let cert = eventually("CSR approval and signing", Duration::from_secs(60), || {
        let out = cp.kubectl(&["get", "csr", &node, "-o", "json"])?;
        let csr: serde_json::Value = serde_json::from_str(&out)?;
        Ok(csr["status"]["certificate"].as_str().map(str::to_string))
    });
    let out = cp.kubectl(&["get", "csr", &node, "-o", "json"]).unwrap();
    let csr: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved", "{out}");
    assert_eq!(
        csr["spec"]["username"].as_str().unwrap().split(':').next(),
        Some("system"),
        "{out}"
    );
    assert!(!cert.is_empty());
}

#[test]
fn pods_get_a_projected_service_account_token_volume() {
    let cp = ControlPlane::shared();
    let pod = unique_name("sa-pod");
    cp.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"default"}},
            "spec":{{"containers":[{{"name":"c","image":"registry.k8s.io/pause:3.10"}}]}}}}"#
    ))
    .unwrap();
    let out = cp.kubectl(&["get", "pod", &pod, "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let volume = &v["spec"]["volumes"][0];
    assert!(
        volume["name"]
            .as_str()
            .unwrap()
            .starts_with("kube-api-access-"),
        "{out}"
    );
    let sources = volume["projected"]["sources"].as_array().unwrap();
    assert!(
        sources
            .iter()
            .any(|s| s["serviceAccountToken"]["path"] == "token"),
        "{out}"
    );
    cp.kubectl(&["delete", "pod", &pod, "--grace-period=0", "--force"])
        .unwrap();
}

#[test]
fn dropping_the_control_plane_stops_its_processes_and_removes_its_dir() {
    let cp = ControlPlane::start().unwrap();
    let pids: Vec<String> = [
        "ETCD_PID",
        "APISERVER_PID",
        "CONTROLLER_MANAGER_PID",
        "SCHEDULER_PID",
    ]
    .iter()
    .map(|k| cp.get(k).unwrap().to_string())
    .collect();
    let dir = cp.dir().to_path_buf();
    for pid in &pids {
        assert!(process_running(pid), "{pid} not running");
    }
    drop(cp);
    for pid in &pids {
        assert!(!process_running(pid), "{pid} still running");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// GET through curl: (status, headers, body).
fn http_get(url: &str, headers: &[&str]) -> Result<(u16, String, Vec<u8>)> {
    let tmp = std::env::temp_dir().join(unique_name("http"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o"])
        .arg(&tmp)
        .args(["-D", "-", "-w", "%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = run_ok(cmd.arg(url));
    let body = std::fs::read(&tmp).unwrap_or_default();
    let _ = std::fs::remove_file(&tmp);
    let out = out?;
    let (head, code) = out.trim_end().rsplit_once('\n').context("no status")?;
    Ok((code.parse()?, head.to_ascii_lowercase(), body))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

const ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[test]
fn registry_serves_test_images_by_tag_and_digest() {
    let reg = Registry::start().unwrap();
    for (repo, tag) in [
        ("registry.k8s.io/pause", "3.10"),
        ("registry.k8s.io/e2e-test-images/busybox", "1.29-2"),
        ("registry.k8s.io/e2e-test-images/nginx", "1.14-2"),
        ("gcr.io/k8s-staging-cri-tools/test-image-user-uid", "latest"),
    ] {
        let base = format!("{}/v2/{repo}", reg.url());
        let (code, headers, manifest) =
            http_get(&format!("{base}/manifests/{tag}"), &[ACCEPT]).unwrap();
        assert_eq!(code, 200, "{repo}:{tag}");
        let digest = sha256(&manifest);
        assert!(
            headers.contains(&format!("docker-content-digest: {digest}")),
            "{repo}:{tag}: {headers}"
        );
        let (code, _, by_digest) =
            http_get(&format!("{base}/manifests/{digest}"), &[ACCEPT]).unwrap();
        assert_eq!((code, &by_digest), (200, &manifest), "{repo}@{digest}");
        // Every blob the manifest names is there and matches its digest.
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for blob in blobs {
            let (code, _, data) = http_get(&format!("{base}/blobs/{blob}"), &[]).unwrap();
            assert_eq!(code, 200, "{repo} blob {blob}");
            assert_eq!(sha256(&data), blob, "{repo} blob content");
        }
    }
    // The USER images carry the users the CRI conformance suite expects.
    let (_, _, manifest) = http_get(
        &format!(
            "{}/v2/gcr.io/k8s-staging-cri-tools/test-image-user-uid/manifests/latest",
            reg.url()
        ),
        &[ACCEPT],
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let (_, _, config) = http_get(
        &format!(
            "{}/v2/gcr.io/k8s-staging-cri-tools/test-image-user-uid/blobs/{}",
            reg.url(),
            m["config"]["digest"].as_str().unwrap()
        ),
        &[],
    )
    .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(c["config"]["User"], "1002");
    assert!(
        reg.mirrors()
            .contains(&format!("registry.k8s.io={}/registry.k8s.io", reg.url())),
        "{:?}",
        reg.mirrors()
    );
}

#[test]
fn registry_with_basic_auth_rejects_anonymous_pulls() {
    let reg = Registry::start_with_basic_auth("puller", "s3cret").unwrap();
    let url = format!("{}/v2/registry.k8s.io/pause/manifests/3.10", reg.url());
    let (code, headers, _) = http_get(&url, &[ACCEPT]).unwrap();
    assert_eq!(code, 401);
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    let auth = format!(
        "Authorization: Basic {}",
        run_ok(Command::new("sh").args(["-c", "printf puller:s3cret | base64 -w0"])).unwrap()
    );
    let (code, _, _) = http_get(&url, &[ACCEPT, &auth]).unwrap();
    assert_eq!(code, 200);
}

#[test]
fn imds_follows_eni_attachment_and_ip_assignment_in_ec2() -> Result<()> {
    let ec2 = Ec2Emulator::start(2)?;
    let ids = ec2.instance_ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ec2.imds_get(0, "meta-data/instance-id")?.as_deref(),
        Some(ids[0])
    );
    assert_eq!(
        ec2.imds_get(1, "meta-data/instance-id")?.as_deref(),
        Some(ids[1])
    );
    assert_eq!(
        ec2.imds_get(0, "meta-data/instance-type")?.as_deref(),
        Some("m5.large")
    );
    let az = ec2.imds_get(0, "meta-data/placement/availability-zone")?;
    assert_eq!(az.as_deref(), Some("us-west-2a"));
    let primary_mac = ec2.imds_get(0, "meta-data/mac")?.context("mac")?;
    let macs = ec2
        .imds_get(0, "meta-data/network/interfaces/macs/")?
        .context("macs")?;
    assert_eq!(macs, format!("{primary_mac}/"));
    let local_ip = ec2
        .imds_get(0, "meta-data/local-ipv4")?
        .context("local-ipv4")?;
    let mac_path =
        |mac: &str, field: &str| format!("meta-data/network/interfaces/macs/{mac}/{field}");
    assert_eq!(
        ec2.imds_get(0, &mac_path(&primary_mac, "local-ipv4s"))?,
        Some(local_ip)
    );
    assert_eq!(
        ec2.imds_get(0, &mac_path(&primary_mac, "device-number"))?
            .as_deref(),
        Some("0")
    );

    // Create and attach a second ENI with two secondary IPs, through the EC2 API.
    let created = ec2.call(
        "CreateNetworkInterface",
        &[
            ("SubnetId", ec2.subnet_id()),
            ("SecurityGroupId.1", ec2.security_group_id()),
        ],
    )?;
    let eni = xml_field(&created, "networkInterfaceId").context("eni id")?;
    let mac = xml_field(&created, "macAddress").context("mac")?;
    ec2.call(
        "AttachNetworkInterface",
        &[
            ("NetworkInterfaceId", eni),
            ("InstanceId", ids[0]),
            ("DeviceIndex", "1"),
        ],
    )?;
    ec2.call(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", eni),
            ("SecondaryPrivateIpAddressCount", "2"),
        ],
    )?;

    let macs = ec2
        .imds_get(0, "meta-data/network/interfaces/macs/")?
        .context("macs")?;
    assert_eq!(macs, format!("{primary_mac}/\n{mac}/"));
    assert_eq!(
        ec2.imds_get(0, &mac_path(mac, "interface-id"))?.as_deref(),
        Some(eni)
    );
    assert_eq!(
        ec2.imds_get(0, &mac_path(mac, "device-number"))?.as_deref(),
        Some("1")
    );
    let ips = ec2
        .imds_get(0, &mac_path(mac, "local-ipv4s"))?
        .context("ips")?;
    assert_eq!(ips.lines().count(), 3, "{ips}");
    assert_eq!(
        ec2.imds_get(0, &mac_path(mac, "subnet-ipv4-cidr-block"))?
            .as_deref(),
        Some("10.0.0.0/20")
    );
    assert_eq!(
        ec2.imds_get(0, &mac_path(mac, "vpc-ipv4-cidr-blocks"))?
            .as_deref(),
        Some("10.0.0.0/16")
    );
    assert_eq!(
        ec2.imds_get(0, &mac_path(mac, "security-group-ids"))?
            .as_deref(),
        Some(ec2.security_group_id())
    );
    // The other instance does not see it.
    let other = ec2
        .imds_get(1, "meta-data/network/interfaces/macs/")?
        .context("macs")?;
    assert_eq!(other.lines().count(), 1, "{other}");
    Ok(())
}

#[test]
fn imds_requires_a_session_token() -> Result<()> {
    let ec2 = Ec2Emulator::start(1)?;
    let base = ec2.imds_endpoints()[0];
    let code = |args: &[&str]| -> Result<String> {
        run_ok(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(args),
        )
    };
    assert_eq!(
        code(&[&format!("{base}/latest/meta-data/instance-id")])?,
        "401"
    );
    assert_eq!(
        code(&[
            "-H",
            "X-aws-ec2-metadata-token: forged",
            &format!("{base}/latest/meta-data/instance-id")
        ])?,
        "401"
    );
    // A token request without a TTL is refused, as on AWS.
    assert_eq!(
        code(&["-X", "PUT", &format!("{base}/latest/api/token")])?,
        "400"
    );
    if ec2.imds_get(0, "meta-data/instance-id")?.is_none() {
        bail!("instance-id missing with a valid token");
    }
    Ok(())
}

#[test]
fn reference_node_runs_a_pod_and_leaves_nothing_behind() {
    let cp = ControlPlane::shared();
    let reg = Registry::start().unwrap();
    let name = unique_name("ref");
    let node = ReferenceNode::start(cp, &reg, &name).unwrap();
    let pod = unique_name("ref-pod");
    cp.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"default"}},
            "spec":{{"nodeName":"{name}","restartPolicy":"Never","containers":[{{"name":"c",
              "image":"registry.k8s.io/e2e-test-images/busybox:1.29-2",
              "command":["sh","-c","echo hello from $(hostname); sleep 3600"]}}]}}}}"#
    ))
    .unwrap();
    let ip = eventually(
        "the pod running with an IP",
        Duration::from_secs(90),
        || {
            let out = cp.kubectl(&["get", "pod", &pod, "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok((v["status"]["phase"] == "Running")
                .then(|| v["status"]["podIP"].as_str().map(str::to_string))
                .flatten())
        },
    );
    assert!(ip.starts_with("10.88.0."), "{ip}");
    // kubectl logs goes apiserver -> kubelet :10250 -> containerd.
    let logs = eventually("the pod's log", Duration::from_secs(30), || {
        let l = cp.kubectl(&["logs", &pod])?;
        Ok((!l.is_empty()).then_some(l))
    });
    assert_eq!(logs.trim(), format!("hello from {pod}"));

    let pids = run_ok(Command::new("pgrep").args(["-f", node.cri_socket()])).unwrap();
    let cmdlines: Vec<String> = pids
        .split_whitespace()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
        .collect();
    drop(node);
    for (pid, cmd) in pids.split_whitespace().zip(&cmdlines) {
        assert!(!process_running(pid), "{pid} survived: {cmd}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&name), "mounts left behind: {mounts}");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/nodert-ref-{name}")).exists());
    cp.kubectl(&["delete", "pod", &pod, "--grace-period=0", "--force"])
        .unwrap();
}
