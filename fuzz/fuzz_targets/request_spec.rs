//! Provider creation and scheduling from fuzzed values against one small engine: every call
//! returns Ok or a typed error, and no host ever ends up over capacity.
#![no_main]

use berth_engine::model::{Inventory, ProviderSpec, RequestSpec};
use berth_engine::{Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(engine) = Engine::new(EngineConfig::default()) else { return };
    let mut chunks = data.chunks(16);
    for i in 0..4 {
        let c = chunks.next().unwrap_or(&[]);
        let num = |k: usize| u64::from_le_bytes(std::array::from_fn(|j| c.get(k * 8 + j).copied().unwrap_or(0)));
        let ratio = f64::from_bits(num(1));
        let spec = ProviderSpec::new(format!("h{i}"))
            .inventory("VCPU", Inventory::new(num(0) % (1 << 33)).ratio(ratio))
            .inventory("MEMORY_MB", Inventory::new(num(0) >> 20));
        let _ = engine.create_provider(spec);
    }
    for c in chunks {
        let text = String::from_utf8_lossy(c).to_string();
        let mut req = RequestSpec::resources(&[("VCPU", c.first().copied().unwrap_or(1) as u64)]);
        req.required_traits = vec![text.clone()];
        req.availability_zone = Some(text.clone());
        req.num_instances = c.get(1).copied().unwrap_or(1) as u32;
        let _ = engine.select_destinations(&req);
        req.required_traits.clear();
        req.availability_zone = None;
        let _ = engine.select_destinations(&req);
    }
    for p in engine.list_providers(&Default::default()).unwrap_or_default() {
        for u in p.usages {
            assert!(u.used <= u.capacity, "{} over capacity on {}", u.class, p.name);
        }
    }
});
