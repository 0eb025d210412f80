//! Generates the CRI v1 stubs with protox (a protobuf compiler in Rust), so that no
//! system `protoc` is needed. The api.proto comes from the `k8s-cri` package, located
//! through `cargo metadata`: it is in Cargo.lock but never built (see Cargo.toml).

use std::path::PathBuf;
use std::process::Command;

type Error = Box<dyn std::error::Error>;

/// The directory holding the `k8s-cri` package's `proto/v1.proto`, and the
/// workspace's Cargo.lock (which pins that package).
fn upstream_proto_dir() -> Result<(PathBuf, PathBuf), Error> {
    let cargo = std::env::var("CARGO")?;
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let metadata = |offline: bool| -> Result<Vec<u8>, Error> {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(format!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(out.stdout)
    };
    // `cargo build` downloads only what the target platform builds, so on a fresh
    // machine the package may not be here yet: a second, online call fetches it.
    let out = metadata(true).or_else(|_| metadata(false))?;
    let meta: serde_json::Value = serde_json::from_slice(&out)?;
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "k8s-cri")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or(
            "the k8s-cri package is not in `cargo metadata`: is it still a dependency of cri-api?",
        )?;
    let dir = PathBuf::from(manifest_path)
        .parent()
        .ok_or("k8s-cri's manifest has no parent dir")?
        .join("proto");
    let lock = PathBuf::from(meta["workspace_root"].as_str().unwrap_or(".")).join("Cargo.lock");
    Ok((dir, lock))
}

fn main() -> Result<(), Error> {
    let (dir, lock) = upstream_proto_dir()?;
    let proto = dir.join("v1.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    // Another k8s-cri version is another proto path: seen through the lock file.
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile([&proto], [&dir])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}
