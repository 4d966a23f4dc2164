//! One Placement, Scheduler, Catalog or Servers RPC per input against a persistent
//! in-process engine; the whole state is audited after every call (see
//! `berth_fuzz::write_rpcs`).
#![no_main]

use std::sync::Mutex;

use berth_fuzz::write_rpcs::World;
use libfuzzer_sys::fuzz_target;

/// The engine lives across inputs. A `std` mutex because `fuzz_target!` takes a `Fn`;
/// libFuzzer runs inputs one at a time, so it is never contended.
static WORLD: Mutex<Option<World>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    let _ = world.get_or_insert_with(World::new).run(data);
});
