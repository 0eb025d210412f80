//! Generates ipamd's gRPC stubs with protox (a protobuf compiler in Rust), so that no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // vpc-cni is a short-lived process per CNI call: linked as a position-dependent
    // executable, its relocations are resolved at link time instead of at every start.
    println!("cargo:rustc-link-arg-bin=vpc-cni=-no-pie");
    let fds = protox::compile(["proto/ipamd.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
