//! Flavor and image validation from arbitrary strings: must return Ok or a typed error,
//! never panic; an accepted flavor's extra-spec expressions must parse again.
#![no_main]

use berth_engine::model::{FlavorSpec, ImageSpec};
use berth_engine::scheduler::extra_specs_ops;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let name = parts.next().unwrap_or_default().to_string();
    let specs: std::collections::BTreeMap<String, String> =
        parts.filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    let _ = extra_specs_ops::parse(&text).map(|op| op.matches(&name));
    let _ = extra_specs_ops::parse_version(&text);
    let flavor = FlavorSpec { id: None, name: name.clone(), vcpus: 1, ram_mb: 1, disk_gb: 0, extra_specs: specs.clone() };
    if let Ok(f) = flavor.into_flavor() {
        for (_, expr) in f.capabilities.iter().chain(&f.aggregate_specs) {
            assert!(extra_specs_ops::parse(expr).is_ok(), "accepted spec {expr:?} does not parse");
        }
    }
    let _ = ImageSpec { id: None, name, properties: specs }.into_image();
});
