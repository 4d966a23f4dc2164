//! Compiles the `berth.v1` protos into Rust with tonic + prost, without `protoc`.
//!
//! `protox` (a pure-Rust protobuf compiler) parses the `.proto` files into a
//! `FileDescriptorSet`; `tonic-prost-build` generates messages, clients and servers from
//! it. The encoded descriptor set is also written to `OUT_DIR/berth_descriptor.bin` so the
//! server can offer gRPC reflection.

use std::{env, error::Error, fs, path::PathBuf};

use protox::prost::Message as _;

/// Every `.proto` file of the contract, relative to the include root (this crate's dir).
const PROTOS: &[&str] = &[
    "berth/v1/common.proto",
    "berth/v1/placement.proto",
    "berth/v1/scheduler.proto",
    "berth/v1/catalog.proto",
    "berth/v1/nodes.proto",
    "berth/v1/servers.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    // A directory: cargo reruns when any file under it changes.
    println!("cargo:rerun-if-changed=berth");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Keeps source info, so proto comments become rustdoc on the generated items.
    let fds = protox::compile(PROTOS, [&manifest_dir])?;
    fs::write(out_dir.join("berth_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `XClient::connect(url)` constructors: `Nodes` has an RPC named `Connect`, whose
        // client method would clash with it. Callers build a `Channel` and use `XClient::new`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
