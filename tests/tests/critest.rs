//! The CRI validation suite (cri-tools' critest v1.32) against runtime-shim, through
//! `hack/critest.sh` (which installs critest, starts a private runtime-shim with a local
//! registry and CNI, and tears it all down). Every spec runs except the ones listed in
//! `SKIPPED`, each with the reason it cannot pass here; any other failure fails the test.

use std::process::{Command, Stdio};

use node_tests::fixture::{bin_path, repo_root};

/// Ginkgo regexes over spec names that are not run, and why.
const SKIPPED: &[(&str, &str)] = &[
    // The digest is of an image built and pushed by cri-tools' maintainers: no image built
    // offline can have it, so the local registry cannot serve it.
    (
        r"public image with digest should be pulled and removed",
        "needs upstream's exact image bytes (offline)",
    ),
    // AppArmor and SELinux are absent from this kernel (critest also skips these itself
    // when the host lacks them; listed so the intent is explicit).
    (r"AppArmor|SELinux", "not enabled on this machine"),
];

/// How many specs must at least have run, so that a suite that silently selects nothing
/// (a renamed describe, a broken focus) cannot pass.
const MIN_SPECS_RUN: usize = 60;

// critest is built from cri-tools' Go module, and this machine's kind reaches no Go
// module proxy, so a fresh machine cannot install it (hack/critest.sh says so and
// where a binary built elsewhere goes). Run it with `cargo test --test critest --
// --ignored` where `hack/critest.sh install` works.
#[test]
#[ignore = "needs critest, which hack/critest.sh cannot install without a Go module proxy"]
fn critest_passes_except_listed_specs() {
    let shim = bin_path("runtime-shim");
    assert!(
        shim.exists(),
        "{} not built: run `cargo build -p runtime-shim --bins` first",
        shim.display()
    );
    let bin_dir = shim.parent().expect("binary has a directory");
    let mut cmd = Command::new(repo_root().join("hack/critest.sh"));
    // Two cores: specs mostly wait on containers, so four nodes keep both busy while
    // finishing in about a minute and a half; more make the 30 s exec timeouts flaky.
    cmd.args(["--parallel", "4"]);
    for (regex, _why) in SKIPPED {
        cmd.args(["--skip", regex]);
    }
    let out = cmd
        .env("NODERT_BIN_DIR", bin_dir)
        .stdin(Stdio::null())
        .output()
        .expect("running hack/critest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("[FAIL]"))
        .collect();
    assert!(
        out.status.success(),
        "critest failed ({}); failing specs:\n{}\n--- output tail ---\n{}\n--- stderr tail ---\n{}",
        out.status,
        failed.join("\n"),
        tail(&stdout, 80),
        tail(&stderr, 20)
    );
    let ran = specs_run(&stdout).unwrap_or_else(|| {
        panic!(
            "no `Ran N of M Specs` line in critest's output:\n{}",
            tail(&stdout, 40)
        )
    });
    assert!(
        ran >= MIN_SPECS_RUN,
        "only {ran} specs ran (expected at least {MIN_SPECS_RUN}):\n{}",
        tail(&stdout, 40)
    );
}

/// N from ginkgo's `Ran N of M Specs in S seconds`.
fn specs_run(output: &str) -> Option<usize> {
    output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Ran ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn spec_count_is_read_from_ginkgo_summary() {
    let out = "noise\nRan 75 of 113 Specs in 67.766 seconds\nFAIL! -- 64 Passed";
    assert_eq!(specs_run(out), Some(75));
    assert_eq!(specs_run("no summary"), None);
}
