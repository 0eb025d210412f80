//! Link settings only.

fn main() {
    // Every container's monitor is this binary re-executed: linked position-dependent,
    // its relocated data (.data.rel.ro, ~450 KB) is mapped from the file and shared by
    // all monitors instead of copied into each at start.
    println!("cargo:rustc-link-arg-bin=runtime-shim=-no-pie");
}
