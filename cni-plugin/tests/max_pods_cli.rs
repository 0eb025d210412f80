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

/// eni mode's bad input (flags, WARM_* variables, an unreachable IMDS) is refused with
/// a clear error before anything is created (the happy path is tests/eni.rs).
#[test]
fn eni_mode_refuses_bad_input_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let state = dir.path().join("state");
    let base = [
        "--mode",
        "eni",
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--ec2-endpoint",
        "http://127.0.0.1:1",
        "--imds-endpoint",
        "http://127.0.0.1:2",
    ];
    // (extra flags, environment, what stderr must say)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            &["--pod-cidr", "10.0.0.0/24"],
            &[],
            "--pod-cidr is for podcidr mode",
        ),
        (&[], &[("WARM_IP_TARGET", "many")], "WARM_IP_TARGET"),
        (
            &[],
            &[("ENABLE_PREFIX_DELEGATION", "yes")],
            "ENABLE_PREFIX_DELEGATION",
        ),
        (&[], &[], "reading the instance's metadata"),
    ];
    for (flags, env, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ipamd"))
            .args(base)
            .args(flags)
            .env_remove("WARM_IP_TARGET")
            .env_remove("ENABLE_PREFIX_DELEGATION")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{flags:?} {env:?}: {stderr}");
        assert!(!state.exists() && !socket.exists(), "{flags:?} {env:?}");
    }
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
