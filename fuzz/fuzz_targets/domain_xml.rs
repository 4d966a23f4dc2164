//! Libvirt domain XML from arbitrary instance names, metadata and sizes: never a panic,
//! and every accepted spec comes out as well-formed XML that parses back to the spec (see
//! `berth_fuzz::domain_xml`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_fuzz::domain_xml::check(data);
});
