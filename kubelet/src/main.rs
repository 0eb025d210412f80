//! `kubelet`: the node agent. Registers the Node, keeps its Lease, and runs the pods
//! bound to this node through a CRI v1 runtime.
fn main() {
    eprintln!("kubelet: not implemented yet");
    std::process::exit(1);
}
