//! The on-disk decoder: arbitrary bytes read as a log segment and as a snapshot (with and
//! without `--recover`) must be reported as damage or loaded, never panic; whatever loads
//! must rebuild an engine without panicking, and the rebuilt engine must be consistent
//! (each provider's usage is the sum of the consumers' allocations on it).
#![no_main]

use std::collections::HashMap;

use berth_engine::store::{decode_file, frame};
use berth_engine::{Engine, EngineConfig, ProviderFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs get a valid header, so the fuzzer spends its time on the frames.
    let (snapshot, body) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => (false, data),
    };
    let mut bytes = Vec::with_capacity(body.len() + frame::HEADER_LEN);
    if data.first().is_some_and(|b| b & 2 == 0) {
        let magic = if snapshot { frame::SNAP_MAGIC } else { frame::WAL_MAGIC };
        bytes.extend_from_slice(&frame::header(magic, 1));
    }
    bytes.extend_from_slice(body);
    for recover in [false, true] {
        let (state, _report) = decode_file(&bytes, snapshot, recover);
        let Ok(engine) = Engine::new(EngineConfig::default()) else {
            return;
        };
        let _ = engine.restore(&state);
        let mut sums: HashMap<(uuid::Uuid, String), u64> = HashMap::new();
        for c in engine.consumer_ids() {
            let Ok(a) = engine.get_allocations(&c) else { continue };
            for alloc in a.allocations.iter().chain(&a.moving) {
                for (class, n) in &alloc.resources {
                    *sums.entry((alloc.provider, class.clone())).or_default() += n;
                }
            }
        }
        let Ok(providers) = engine.list_providers(&ProviderFilter::default()) else {
            return;
        };
        for p in providers {
            for u in &p.usages {
                let want = sums.get(&(p.uuid, u.class.clone())).copied().unwrap_or(0);
                assert_eq!(u.used, want, "{} {}: usage is not the sum of allocations", p.uuid, u.class);
            }
        }
    }
});
