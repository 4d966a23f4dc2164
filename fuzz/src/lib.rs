//! The harnesses behind the cargo-fuzz targets in `fuzz_targets/`. The targets stay thin
//! so that `cargo test` here and the corpus generator (`examples/gen_corpus.rs`) run the
//! very code the fuzzer runs:
//!
//! - [`write_rpcs`]: one write RPC per input against a persistent in-process engine, with
//!   an audit of the whole state after every call.
//! - [`sim_nodes`]: simulated compute nodes for the conductor (the Servers service).
//! - [`domain_xml`]: libvirt domain XML from arbitrary names, metadata and sizes.

pub mod domain_xml;
pub mod sim_nodes;
pub mod write_rpcs;
