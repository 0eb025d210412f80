//! Runs the real `ipamd` binary, as the node bootstrap will.

use std::process::{Command, Output};

fn ipamd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(args)
        .output()
        .expect("run ipamd")
}

fn max_pods(args: &[&str]) -> String {
    let out = ipamd(&[&["max-pods"], args].concat());
    assert!(
        out.status.success(),
        "ipamd max-pods {args:?}: {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn m5_large() {
    assert_eq!(max_pods(&["--instance-type", "m5.large"]), "29\n");
}

#[test]
fn t3_medium() {
    assert_eq!(max_pods(&["--instance-type", "t3.medium"]), "17\n");
}

#[test]
fn m5_large_custom_networking() {
    assert_eq!(
        max_pods(&["--instance-type", "m5.large", "--custom-networking"]),
        "20\n"
    );
}

#[test]
fn m5_large_prefix_delegation() {
    assert_eq!(
        max_pods(&["--instance-type", "m5.large", "--prefix-delegation"]),
        "110\n"
    );
}

#[test]
fn unknown_instance_type_fails_without_output() {
    let out = ipamd(&["max-pods", "--instance-type", "m99.gigantic"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("m99.gigantic"), "stderr: {stderr}");
}

#[test]
fn daemon_flags_parse_but_daemon_is_not_implemented() {
    let out = ipamd(&[
        "--mode",
        "podcidr",
        "--pod-cidr",
        "10.0.0.0/24",
        "--socket",
        "/run/ipamd.sock",
        "--state-dir",
        "/var/lib/ipamd",
        "--ec2-endpoint",
        "http://127.0.0.1:1",
        "--imds-endpoint",
        "http://127.0.0.1:2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ipamd daemon: not implemented yet"),
        "stderr: {stderr}"
    );
}
