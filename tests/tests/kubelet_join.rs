//! Our kubelet joining the real 1.20.2 control plane (Node + RBAC authorization,
//! NodeRestriction, the controller-manager's CSR approver and signer) the ways real
//! clusters join nodes: TLS bootstrap from a bootstrap token, exec credential plugins
//! (as EKS's `aws eks get-token`), and `--cloud-provider aws|external` against the
//! IMDSv2 emulator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use node_tests::control_plane::ControlPlane;
use node_tests::ec2::Ec2Emulator;
use node_tests::fixture::run_ok;
use node_tests::kubelet::{Kubelet, KubeletNode, Launch, shared_containerd as containerd};
use serde_json::Value;

fn get_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cp.kubectl(&all)?)?)
}

fn wait_ready(cp: &ControlPlane, name: &str, kubelet: &mut Kubelet) -> Value {
    kubelet.eventually("node Ready", Duration::from_secs(60), || {
        let n = match get_json(cp, &["get", "node", name]) {
            Ok(n) => n,
            Err(e) if format!("{e:#}").contains("NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        let ready = n["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True");
        Ok((ready == Some(true)).then_some(n))
    })
}

fn lease_renew_time(cp: &ControlPlane, name: &str) -> Result<String> {
    let l = get_json(cp, &["-n", "kube-node-lease", "get", "lease", name])?;
    Ok(l["spec"]["renewTime"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Waits until the node's Lease is renewed after now: only `system:node:<name>` may
/// update it (Node authorizer), so this proves which identity the kubelet runs as.
fn wait_lease_renewed(cp: &ControlPlane, name: &str, kubelet: &mut Kubelet) {
    let first = kubelet.eventually("lease created", Duration::from_secs(30), || {
        Ok(lease_renew_time(cp, name).ok().filter(|t| !t.is_empty()))
    });
    kubelet.eventually("lease renewed", Duration::from_secs(30), || {
        let t = lease_renew_time(cp, name)?;
        Ok((t > first).then_some(()))
    });
}

/// `openssl x509 -subject` of the first certificate in `pem`.
fn cert_subject(pem: &Path) -> Result<String> {
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(pem),
    )
    .map(|s| s.trim().to_string())
}

/// The bootstrap token id in a kubeconfig `control-plane.sh bootstrap-token` wrote
/// (`bootstrap-<id>.kubeconfig`).
fn token_id(bootstrap: &Path) -> String {
    let name = bootstrap.file_name().unwrap().to_str().unwrap();
    name.strip_prefix("bootstrap-")
        .and_then(|n| n.strip_suffix(".kubeconfig"))
        .expect("bootstrap-<id>.kubeconfig")
        .to_string()
}

/// The CSRs a bootstrap token's user filed.
fn csrs_of(cp: &ControlPlane, user: &str) -> Vec<Value> {
    let all = get_json(cp, &["get", "csr"]).unwrap();
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spec"]["username"] == user)
        .cloned()
        .collect()
}

#[test]
fn node_joins_with_only_a_bootstrap_token_and_restarts_without_it() {
    let cp = ControlPlane::shared();
    let sock = containerd();
    let bootstrap = cp.bootstrap_kubeconfig().unwrap();
    let node = KubeletNode::without_credentials("kl-boot").unwrap();
    assert!(!node.kubeconfig.exists());
    let boot_flag = bootstrap.to_str().unwrap().to_string();
    let mut kubelet = Kubelet::start(&node, sock, &["--bootstrap-kubeconfig", &boot_flag]).unwrap();

    let n = wait_ready(cp, &node.name, &mut kubelet);
    assert_eq!(n["metadata"]["name"], node.name.as_str());
    wait_lease_renewed(cp, &node.name, &mut kubelet);

    // One CSR, filed by the token's user, for the kubelet client signer, approved by
    // the controller-manager and signed.
    let id = token_id(&bootstrap);
    let csrs = csrs_of(cp, &format!("system:bootstrap:{id}"));
    assert_eq!(csrs.len(), 1, "{csrs:#?}");
    let csr = &csrs[0];
    assert!(
        csr["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("node-csr-"),
        "{csr}"
    );
    assert_eq!(
        csr["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(
        sorted_usages(csr),
        ["client auth", "digital signature", "key encipherment"]
    );
    let conditions = csr["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Approved" && c["reason"] == "AutoApproved"),
        "{conditions:?}"
    );
    assert!(csr["status"]["certificate"].is_string(), "{csr}");

    // Upstream's layout: the pair behind kubelet-client-current.pem, the kubeconfig
    // naming it, the pending key gone.
    let current = node.cert_dir().join("kubelet-client-current.pem");
    let target = std::fs::read_link(&current).unwrap();
    assert!(
        target.to_str().unwrap().starts_with("kubelet-client-20"),
        "{target:?}"
    );
    assert!(!node.cert_dir().join("kubelet-client.key.tmp").exists());
    let subject = cert_subject(&current).unwrap();
    assert!(
        subject.contains(&format!("CN=system:node:{}", node.name))
            && subject.contains("O=system:nodes"),
        "{subject}"
    );
    let kubeconfig = std::fs::read_to_string(&node.kubeconfig).unwrap();
    assert!(
        kubeconfig.contains(current.to_str().unwrap()),
        "{kubeconfig}"
    );
    // The written kubeconfig is a working node credential on its own.
    let own = node_tests::control_plane::kubectl_as(
        &node.kubeconfig,
        &["get", "node", &node.name, "-o", "name"],
    )
    .unwrap();
    assert_eq!(own.trim(), format!("node/{}", node.name));

    // A restart uses the written kubeconfig: with the token deleted, a second
    // bootstrap could not even authenticate.
    assert!(kubelet.stop(Duration::from_secs(10)));
    cp.kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "secret",
        &format!("bootstrap-token-{id}"),
    ])
    .unwrap();
    let mut kubelet = Kubelet::start(&node, sock, &["--bootstrap-kubeconfig", &boot_flag]).unwrap();
    kubelet.eventually("restart skips bootstrap", Duration::from_secs(20), || {
        Ok(kubelet_log_has(&node, "skipping bootstrap").then_some(()))
    });
    wait_lease_renewed(cp, &node.name, &mut kubelet);
    assert_eq!(csrs_of(cp, &format!("system:bootstrap:{id}")).len(), 1);
    assert_eq!(std::fs::read_link(&current).unwrap(), target);
}

/// A CSR's `spec.usages`, sorted (the approvers compare them as a set).
fn sorted_usages(csr: &Value) -> Vec<&str> {
    let mut usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()
        .expect("usages")
        .iter()
        .map(|u| u.as_str().expect("a usage is a string"))
        .collect();
    usages.sort();
    usages
}

/// Whether any kubelet log of `node` contains `text`.
fn kubelet_log_has(node: &KubeletNode, text: &str) -> bool {
    std::fs::read_dir(&node.base).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().ends_with(".log")
            && std::fs::read_to_string(e.path()).is_ok_and(|l| l.contains(text))
    })
}

/// Writes an exec credential plugin: a script that records the `KUBERNETES_EXEC_INFO`
/// it was given in `<dir>/exec-info.json` and prints `credential_jq` (a jq program
/// over the given `--rawfile`/`--arg` inputs) as its ExecCredential.
fn exec_plugin(dir: &Path, jq_inputs: &str, credential_jq: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("credential-plugin.sh");
    let info = dir.join("exec-info.json");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nset -e\nprintf '%s' \"$KUBERNETES_EXEC_INFO\" > {info}\n\
             exec jq -n {jq_inputs} '{credential_jq}'\n",
            info = info.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A kubeconfig for `cp` whose user is the exec plugin `command` (apiVersion
/// `api_version`), with the plugin's path relative to the kubeconfig's directory as
/// kubeconfigs written by installers often have it.
fn exec_kubeconfig(cp: &ControlPlane, path: &Path, command: &str, api_version: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
             current-context: x\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: {api_version}\n      \
             command: ./{command}\n      interactiveMode: Never\n",
            server = cp.server(),
            ca = cp.ca_cert().display(),
        ),
    )
    .unwrap();
}

fn recorded_exec_info(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("exec-info.json")).unwrap()).unwrap()
}

/// `--kubeconfig` authenticating through a client.authentication.k8s.io/v1beta1 plugin
/// that hands out the node's client certificate.
#[test]
fn node_joins_with_an_exec_plugin_kubeconfig_returning_a_certificate() {
    let cp = ControlPlane::shared();
    let name = node_tests::fixture::unique_name("kl-exec-cert");
    // Mint system:node:<name>'s certificate; the plugin serves it from the files.
    cp.node_kubeconfig(&name).unwrap();
    let pki = cp.dir().join("pki");
    let crt = pki.join(format!("node-{name}.crt"));
    let key = pki.join(format!("node-{name}.key"));
    let mut node = KubeletNode::named(&name, PathBuf::new(), "").unwrap();
    let plugin = exec_plugin(
        &node.base,
        &format!(
            "--rawfile c {} --rawfile k {}",
            crt.display(),
            key.display()
        ),
        r#"{apiVersion: "client.authentication.k8s.io/v1beta1", kind: "ExecCredential", status: {clientCertificateData: $c, clientKeyData: $k}}"#,
    );
    let kubeconfig = node.base.join("exec.kubeconfig");
    exec_kubeconfig(
        cp,
        &kubeconfig,
        plugin.file_name().unwrap().to_str().unwrap(),
        "client.authentication.k8s.io/v1beta1",
    );
    node.kubeconfig = kubeconfig;
    let mut kubelet = Kubelet::start(&node, containerd(), &[]).unwrap();
    wait_ready(cp, &node.name, &mut kubelet);
    wait_lease_renewed(cp, &node.name, &mut kubelet);
    let info = recorded_exec_info(&node.base);
    assert_eq!(info["kind"], "ExecCredential", "{info}");
    assert_eq!(info["apiVersion"], "client.authentication.k8s.io/v1beta1");
}

/// EKS's shape with a bootstrap kubeconfig whose user is a client.authentication.k8s.io/v1
/// exec plugin printing a (bootstrap) token with an expiry, as `aws eks get-token`
/// prints one: the token authenticates the CSR, the issued certificate the node.
#[test]
fn bootstrap_through_an_exec_plugin_returning_a_token() {
    let cp = ControlPlane::shared();
    let bootstrap = cp.bootstrap_kubeconfig().unwrap();
    let text = std::fs::read_to_string(&bootstrap).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("token in the bootstrap kubeconfig")
        .to_string();
    let node = KubeletNode::without_credentials("kl-exec-token").unwrap();
    let expiry = "2099-01-01T00:00:00Z";
    let plugin = exec_plugin(
        &node.base,
        &format!("--arg t {token} --arg e {expiry}"),
        r#"{apiVersion: "client.authentication.k8s.io/v1", kind: "ExecCredential", status: {token: $t, expirationTimestamp: $e}}"#,
    );
    let exec_boot = node.base.join("bootstrap-exec.kubeconfig");
    exec_kubeconfig(
        cp,
        &exec_boot,
        plugin.file_name().unwrap().to_str().unwrap(),
        "client.authentication.k8s.io/v1",
    );
    let mut kubelet = Kubelet::start(
        &node,
        containerd(),
        &["--bootstrap-kubeconfig", exec_boot.to_str().unwrap()],
    )
    .unwrap();
    wait_ready(cp, &node.name, &mut kubelet);
    let info = recorded_exec_info(&node.base);
    assert_eq!(
        info["apiVersion"], "client.authentication.k8s.io/v1",
        "{info}"
    );
    assert_eq!(info["spec"]["interactive"], false, "{info}");
    let id = token_id(&bootstrap);
    assert_eq!(csrs_of(cp, &format!("system:bootstrap:{id}")).len(), 1);
}

/// One EC2 emulator for this binary's cloud tests: t3.medium instances (max pods 17,
/// unlike both the kubelet's default 110 and the emulator's default m5.large).
fn ec2() -> &'static Ec2Emulator {
    static SHARED: OnceLock<Ec2Emulator> = OnceLock::new();
    SHARED.get_or_init(|| Ec2Emulator::start_with_type(2, "t3.medium").expect("EC2 emulator"))
}

/// Instance `index`'s metadata entry `path`.
fn imds(index: usize, path: &str) -> String {
    ec2()
        .imds_get(index, &format!("meta-data/{path}"))
        .unwrap()
        .with_context(|| format!("IMDS has no {path}"))
        .unwrap()
}

#[test]
fn aws_cloud_provider_takes_name_provider_id_labels_addresses_and_max_pods_from_imds() {
    let cp = ControlPlane::shared();
    let ec2 = ec2();
    let name = imds(0, "local-hostname");
    let zone = imds(0, "placement/availability-zone");
    let region = imds(0, "placement/region");
    let ip = imds(0, "local-ipv4");
    let instance = ec2.instance_ids()[0].to_string();
    let node = KubeletNode::named(&name, cp.node_kubeconfig(&name).unwrap(), "").unwrap();
    let launch = Launch {
        no_hostname_override: true,
        env: vec![(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            ec2.imds_endpoints()[0].to_string(),
        )],
        args: vec!["--cloud-provider".into(), "aws".into()],
    };
    let mut kubelet = Kubelet::launch(&node, containerd(), &launch).unwrap();
    let n = wait_ready(cp, &name, &mut kubelet);

    assert_eq!(n["spec"]["providerID"], format!("aws:///{zone}/{instance}"));
    let labels = &n["metadata"]["labels"];
    for (k, v) in [
        ("node.kubernetes.io/instance-type", "t3.medium"),
        ("beta.kubernetes.io/instance-type", "t3.medium"),
        ("topology.kubernetes.io/zone", zone.as_str()),
        ("failure-domain.beta.kubernetes.io/zone", zone.as_str()),
        ("topology.kubernetes.io/region", region.as_str()),
        ("failure-domain.beta.kubernetes.io/region", region.as_str()),
    ] {
        assert_eq!(labels[k], v, "{k}: {labels}");
    }
    // The hostname label is the machine's name, as upstream sets it, not the node name.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        labels["kubernetes.io/hostname"],
        hostname.trim().to_lowercase()
    );
    // ipamd's answer for t3.medium: 3 ENIs x (6 - 1) + 2.
    assert_eq!(n["status"]["capacity"]["pods"], "17");
    assert_eq!(n["status"]["allocatable"]["pods"], "17");
    let addresses: Vec<(String, String)> = n["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["type"].as_str().unwrap().to_string(),
                a["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        addresses[0],
        ("InternalIP".into(), ip.clone()),
        "{addresses:?}"
    );
    for expected in [("Hostname", &name), ("InternalDNS", &name)] {
        assert!(
            addresses.contains(&(expected.0.to_string(), expected.1.clone())),
            "{expected:?} in {addresses:?}"
        );
    }
    wait_lease_renewed(cp, &name, &mut kubelet);
}

/// The EKS shape end to end: the cloud names the node, a bootstrap token gets it its
/// certificate, for the cloud's name.
#[test]
fn aws_node_bootstraps_its_certificate_for_the_name_from_imds() {
    let cp = ControlPlane::shared();
    let ec2 = ec2();
    let name = imds(1, "local-hostname");
    let bootstrap = cp.bootstrap_kubeconfig().unwrap();
    // No credentials yet: bootstrap writes the kubeconfig into the node's directory.
    let mut node = KubeletNode::named(&name, PathBuf::new(), "").unwrap();
    node.kubeconfig = node.base.join("kubelet.kubeconfig");
    let launch = Launch {
        no_hostname_override: true,
        env: vec![(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            ec2.imds_endpoints()[1].to_string(),
        )],
        args: vec![
            "--cloud-provider".into(),
            "aws".into(),
            "--bootstrap-kubeconfig".into(),
            bootstrap.to_str().unwrap().into(),
        ],
    };
    let mut kubelet = Kubelet::launch(&node, containerd(), &launch).unwrap();
    let n = wait_ready(cp, &name, &mut kubelet);
    assert_eq!(
        n["spec"]["providerID"],
        format!(
            "aws:///{}/{}",
            imds(1, "placement/availability-zone"),
            ec2.instance_ids()[1]
        )
    );
    let subject = cert_subject(&node.cert_dir().join("kubelet-client-current.pem")).unwrap();
    assert!(
        subject.contains(&format!("CN=system:node:{name}")),
        "{subject}"
    );
    wait_lease_renewed(cp, &name, &mut kubelet);
}

#[test]
fn aws_cloud_provider_without_metadata_is_a_clear_error() {
    let cp = ControlPlane::shared();
    let node = KubeletNode::new(cp, "kl-no-imds").unwrap();
    let launch = Launch {
        // Port 9 on loopback: nothing listens.
        env: vec![(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            "http://127.0.0.1:9".into(),
        )],
        args: vec!["--cloud-provider".into(), "aws".into()],
        ..Launch::default()
    };
    let mut kubelet = Kubelet::launch(&node, containerd(), &launch).unwrap();
    let err = node_tests::fixture::try_eventually(Duration::from_secs(30), || {
        Ok(kubelet.check_running().err())
    })
    .expect("the kubelet exits");
    let err = format!("{err:#}");
    assert!(err.contains("--cloud-provider aws"), "{err}");
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert!(
        cp.kubectl(&["get", "node", &node.name]).is_err(),
        "no Node without an identity"
    );
}

#[test]
fn external_cloud_provider_registers_uninitialized_and_leaves_addresses_to_it() {
    let cp = ControlPlane::shared();
    let node = KubeletNode::with_config(cp, "kl-ext", "nodeStatusUpdateFrequency: 1s\n").unwrap();
    let mut kubelet = Kubelet::start(
        &node,
        containerd(),
        &["--cloud-provider", "external", "--node-ip", "127.0.0.1"],
    )
    .unwrap();
    let n = kubelet.eventually("node registered", Duration::from_secs(30), || {
        Ok(get_json(cp, &["get", "node", &node.name]).ok())
    });
    let taints = n["spec"]["taints"].as_array().expect("taints");
    assert!(
        taints.iter().any(
            |t| t["key"] == "node.cloudprovider.kubernetes.io/uninitialized"
                && t["value"] == "true"
                && t["effect"] == "NoSchedule"
        ),
        "{taints:?}"
    );
    assert_eq!(
        n["metadata"]["annotations"]["alpha.kubernetes.io/provided-node-ip"],
        "127.0.0.1"
    );
    let labels = n["metadata"]["labels"].as_object().unwrap();
    assert!(
        !labels
            .keys()
            .any(|k| k.contains("instance-type") || k.contains("topology")),
        "{labels:?}"
    );
    assert!(n["spec"]["providerID"].is_null());

    // The cloud-controller-manager's addresses stay: the kubelet set them only while
    // the Node had none.
    let pki = cp.dir().join("pki");
    run_ok(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "-X", "PATCH"])
            .arg("--cacert")
            .arg(cp.ca_cert())
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .args([
                // A JSON answer to this PATCH crashes this machine's apiserver build
                // (Go 1.19 with 1.20's vendored reflect2: SIGSEGV in json-iterator's
                // map encoder); protobuf answers take another encoder.
                "-H",
                "Accept: application/vnd.kubernetes.protobuf",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data",
                r#"{"status":{"addresses":[{"type":"InternalIP","address":"10.9.9.9"},{"type":"Hostname","address":"from-ccm"}]}}"#,
            ])
            .arg(format!("{}/api/v1/nodes/{}/status", cp.server(), node.name)),
    )
    .unwrap();
    // Several status updates (every second) later, and a heartbeat proves they ran.
    let before = n["status"]["conditions"][0]["lastHeartbeatTime"].clone();
    let later = kubelet.eventually("status updated", Duration::from_secs(30), || {
        let n = get_json(cp, &["get", "node", &node.name])?;
        Ok((n["status"]["conditions"][0]["lastHeartbeatTime"] != before).then_some(n))
    });
    std::thread::sleep(Duration::from_secs(3));
    let now = get_json(cp, &["get", "node", &node.name]).unwrap();
    for n in [&later, &now] {
        assert_eq!(
            n["status"]["addresses"],
            serde_json::json!([
                {"type": "InternalIP", "address": "10.9.9.9"},
                {"type": "Hostname", "address": "from-ccm"}
            ]),
        );
    }
}

/// rotateCertificates: with the controller-manager signing 7m30s certificates (backdated
/// 5 min, as its signer does), the rotation deadline (70-90 % of the lifetime) falls
/// 15-105 s after issue. The kubelet requests a new certificate as `system:node:<name>`
/// (auto-approved through selfnodeclient), switches `kubelet-client-current.pem` to it
/// and carries on under the same pid with it.
#[test]
fn client_certificate_is_rotated_before_it_expires() {
    let cp = ControlPlane::start_with(&["--cluster-signing-duration", "7m30s"]).unwrap();
    let cp = &cp;
    let bootstrap = cp.bootstrap_kubeconfig().unwrap();
    let node = KubeletNode::without_credentials("kl-rotate").unwrap();
    std::fs::write(
        node.config_file(),
        format!(
            "{}rotateCertificates: true\n",
            std::fs::read_to_string(node.config_file()).unwrap()
        ),
    )
    .unwrap();
    let mut kubelet = Kubelet::start(
        &node,
        containerd(),
        &["--bootstrap-kubeconfig", bootstrap.to_str().unwrap()],
    )
    .unwrap();
    wait_ready(cp, &node.name, &mut kubelet);
    let current = node.cert_dir().join("kubelet-client-current.pem");
    let first = std::fs::read_link(&current).unwrap();

    let second = kubelet.eventually("certificate rotated", Duration::from_secs(150), || {
        let target = std::fs::read_link(&current)?;
        Ok((target != first).then_some(target))
    });
    assert!(node.cert_dir().join(&second).exists());
    let user = format!("system:node:{}", node.name);
    let csrs = kubelet.eventually("rotation CSR listed", Duration::from_secs(10), || {
        let csrs = csrs_of(cp, &user);
        Ok((!csrs.is_empty()).then_some(csrs))
    });
    assert!(
        csrs.iter().any(|c| c["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Approved"))),
        "{csrs:#?}"
    );
    // Re-executed in place (`eventually` fails if the process exits), started again
    // with the new certificate, and the node carries on with it.
    kubelet.eventually("kubelet re-executed", Duration::from_secs(20), || {
        let both =
            kubelet_log_has(&node, "re-executing") && kubelet_log_has(&node, "skipping bootstrap");
        Ok(both.then_some(()))
    });
    wait_lease_renewed(cp, &node.name, &mut kubelet);
}

/// The kubelet-serving CSRs `user` filed, oldest first.
fn serving_csrs_of(cp: &ControlPlane, user: &str) -> Vec<Value> {
    let mut csrs: Vec<Value> = csrs_of(cp, user)
        .into_iter()
        .filter(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving")
        .collect();
    csrs.sort_by_key(|c| {
        c["metadata"]["creationTimestamp"]
            .as_str()
            .map(String::from)
    });
    csrs
}

/// The leaf certificate the kubelet on `port` presents, as PEM (not verified).
fn served_leaf(port: u16) -> Result<String> {
    let out = run_ok(Command::new("openssl").args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ]))?;
    let begin = out
        .find("-----BEGIN CERTIFICATE-----")
        .context("s_client printed no certificate")?;
    let end = out[begin..]
        .find("-----END CERTIFICATE-----")
        .context("unterminated certificate")?
        + begin
        + "-----END CERTIFICATE-----".len();
    Ok(format!("{}\n", &out[begin..end]))
}

/// `openssl x509` of the PEM `cert`, with `args` (e.g. `-serial`).
fn x509_text(dir: &Path, cert: &str, args: &[&str]) -> Result<String> {
    let file = dir.join(node_tests::fixture::unique_name("cert") + ".pem");
    std::fs::write(&file, cert)?;
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-nameopt", "RFC2253"])
            .args(args)
            .arg("-in")
            .arg(&file),
    );
    std::fs::remove_file(&file)?;
    out
}

/// Whether an HTTPS client trusting only the cluster CA accepts the kubelet on
/// `port` as 127.0.0.1 (chain and subject alternative name); any HTTP status will do.
fn trusted_by_cluster_ca(cp: &ControlPlane, port: u16) -> bool {
    Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10", "--cacert"])
        .arg(cp.ca_cert())
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Approves CSR `name` as an admin would (kube-controller-manager approves no
/// kubelet-serving CSR) and waits until the controller-manager's signer issued it.
fn approve_and_wait_signed(cp: &ControlPlane, kubelet: &mut Kubelet, name: &str) -> String {
    cp.kubectl(&["certificate", "approve", name]).unwrap();
    kubelet.eventually("serving CSR signed", Duration::from_secs(30), || {
        let csr = get_json(cp, &["get", "csr", name])?;
        Ok(csr["status"]["certificate"].as_str().map(String::from))
    })
}

/// serverTLSBootstrap against the real controller-manager signing 7m30s certificates:
/// the kubelet files a kubelet-serving CSR for its name and address, serves its
/// self-signed fallback while nobody approves it, serves the issued certificate once
/// an admin does (same process, no restart), and renews it at 70-90 % of its life
/// (15-105 s after issue, see `client_certificate_is_rotated_before_it_expires`).
#[test]
fn serving_certificate_is_requested_served_and_rotated() {
    let cp = ControlPlane::start_with(&["--cluster-signing-duration", "7m30s"]).unwrap();
    let cp = &cp;
    let node = KubeletNode::with_config(cp, "kl-serving", "serverTLSBootstrap: true\n").unwrap();
    let mut kubelet = Kubelet::start(&node, containerd(), &["--node-ip", "127.0.0.1"]).unwrap();
    let pid = kubelet.pid();
    let user = format!("system:node:{}", node.name);
    let csr = kubelet.eventually("serving CSR filed", Duration::from_secs(60), || {
        Ok(serving_csrs_of(cp, &user).into_iter().next())
    });
    let name = csr["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("csr-"), "{name}");
    assert_eq!(
        sorted_usages(&csr),
        ["digital signature", "key encipherment", "server auth"]
    );
    // The request itself: the node's subject and its addresses (Hostname is the
    // node name here, InternalIP the --node-ip).
    let request_file = node.base.join("serving.csr");
    std::fs::write(
        &request_file,
        base64_decode(csr["spec"]["request"].as_str().unwrap()),
    )
    .unwrap();
    let request = run_ok(
        Command::new("openssl")
            .args(["req", "-noout", "-text", "-nameopt", "RFC2253", "-in"])
            .arg(&request_file),
    )
    .unwrap();
    assert!(
        request.contains(&format!("Subject: CN={user},O=system:nodes")),
        "{request}"
    );
    assert!(
        request.contains(&format!("DNS:{}", node.name)) && request.contains("IP Address:127.0.0.1"),
        "{request}"
    );

    // Nobody approved it: the self-signed fallback is served, which the cluster CA
    // does not vouch for.
    std::thread::sleep(Duration::from_secs(3));
    let pending = get_json(cp, &["get", "csr", &name]).unwrap();
    assert!(pending["status"]["certificate"].is_null(), "{pending}");
    let fallback = served_leaf(node.port).unwrap();
    assert!(
        x509_text(&node.base, &fallback, &["-subject"])
            .unwrap()
            .contains("CN=127.0.0.1@"),
        "self-signed: {fallback}"
    );
    assert!(!trusted_by_cluster_ca(cp, node.port));

    let issued = approve_and_wait_signed(cp, &mut kubelet, &name);
    let issued_pem = String::from_utf8(base64_decode(&issued)).unwrap();
    kubelet.eventually("issued certificate served", Duration::from_secs(30), || {
        Ok(trusted_by_cluster_ca(cp, node.port).then_some(()))
    });
    let served = served_leaf(node.port).unwrap();
    let serial = |pem: &str| x509_text(&node.base, pem, &["-serial"]).unwrap();
    assert_eq!(serial(&served), serial(&issued_pem));
    let subject = x509_text(&node.base, &served, &["-subject", "-issuer"]).unwrap();
    assert!(
        subject.contains(&format!("subject=CN={user},O=system:nodes")),
        "{subject}"
    );
    let ca_subject = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(cp.ca_cert()),
    )
    .unwrap();
    assert!(
        subject.contains(&ca_subject.trim().replacen("subject=", "issuer=", 1)),
        "{subject} vs CA {ca_subject}"
    );
    // Upstream's layout: kubelet-server-current.pem -> kubelet-server-<date>.pem.
    let current = node.cert_dir().join("kubelet-server-current.pem");
    let first = std::fs::read_link(&current).unwrap();
    assert!(
        first.to_str().unwrap().starts_with("kubelet-server-20"),
        "{first:?}"
    );

    // Renewal: a second CSR; approved, it replaces the certificate in place.
    let second = kubelet.eventually("renewal CSR filed", Duration::from_secs(150), || {
        Ok(serving_csrs_of(cp, &user)
            .into_iter()
            .find(|c| c["metadata"]["name"] != name.as_str()))
    });
    let second_name = second["metadata"]["name"].as_str().unwrap().to_string();
    let renewed = approve_and_wait_signed(cp, &mut kubelet, &second_name);
    let renewed_serial = serial(&String::from_utf8(base64_decode(&renewed)).unwrap());
    kubelet.eventually(
        "renewed certificate served",
        Duration::from_secs(30),
        || Ok((serial(&served_leaf(node.port)?) == renewed_serial).then_some(())),
    );
    assert!(trusted_by_cluster_ca(cp, node.port));
    assert_ne!(std::fs::read_link(&current).unwrap(), first);
    assert_eq!(kubelet.pid(), pid);
    assert!(
        !kubelet_log_has(&node, "re-executing"),
        "swapped without a restart"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 in a certificates.k8s.io field")
}
