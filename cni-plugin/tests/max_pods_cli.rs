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
fn daemon_flags_parse_and_eni_mode_is_not_implemented_yet() {
    // eni mode refuses to start, so this parses every daemon flag without starting
    // anything (podcidr mode is exercised end to end in tests/podcidr.rs).
    let out = ipamd(&[
        "--mode",
        "eni",
        "--pod-cidr",
        "10.0.0.0/24",
        "--socket",
        "/nonexistent/ipamd.sock",
        "--state-dir",
        "/nonexistent/state",
        "--ec2-endpoint",
        "http://127.0.0.1:1",
        "--imds-endpoint",
        "http://127.0.0.1:2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("eni mode not implemented yet"),
        "stderr: {stderr}"
    );
}

#[test]
fn podcidr_mode_needs_a_valid_pod_cidr() {
    for extra in [
        &[][..],
        &["--pod-cidr", "10.0.0.0/33"],
        &["--pod-cidr", "10.0.0.0/30"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let state = dir.path().join("state");
        let mut args = vec![
            "--mode",
            "podcidr",
            "--socket",
            socket.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = ipamd(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("pod"), "{extra:?}: {stderr}");
        assert!(!socket.exists(), "{extra:?}");
    }
}
