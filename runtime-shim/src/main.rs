//! `runtime-shim`: a CRI v1 container runtime (RuntimeService + ImageService) on a unix socket.
fn main() {
    eprintln!("runtime-shim: not implemented yet");
    std::process::exit(1);
}
