//! The seed corpora run clean through the same harnesses the fuzz targets use: every
//! audit passes on valid requests, so a fuzzing run starts from a state where a failure
//! means a bug, not a broken harness.

use berth_fuzz::write_rpcs::{Rpc, World};

#[test]
fn write_rpcs_seeds_pass_the_audit() {
    let mut world = World::new();
    let corpus = berth_fuzz::write_rpcs::corpus();
    // Every RPC has at least one seed.
    for rpc in Rpc::ALL {
        assert!(
            corpus.iter().any(|(_, v, _)| v[0] == rpc.selector()),
            "no seed for {rpc:?}"
        );
    }
    // In order against a fresh world, each entry does what its name says.
    for (name, input, ok) in &corpus {
        match world.run(input) {
            Some(Ok(())) => assert!(*ok, "{name} succeeded; it should fail"),
            Some(Err(s)) => assert!(!*ok, "{name} failed: {s:?}"),
            None => panic!("{name} does not decode"),
        }
    }
}

#[test]
fn domain_xml_seeds_pass_the_checks() {
    for (name, input) in berth_fuzz::domain_xml::corpus() {
        let decoded = berth_fuzz::domain_xml::decode(&input);
        assert!(!decoded.spec.name.is_empty(), "{name}");
        berth_fuzz::domain_xml::check(&input);
    }
}
