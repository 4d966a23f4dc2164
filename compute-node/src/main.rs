//! `berth-node`: the compute-node daemon. Its agent, libvirt driver and fake hypervisor arrive
//! with the compute-node issue; until then the binary only says so.

fn main() {
    eprintln!(
        "berth-node: the compute-node daemon is not implemented yet (see the compute-node issue)"
    );
    std::process::exit(2);
}
