//! `InstanceCount` (consumers on the host; Nova's default multiplier 0 leaves it off, a
//! positive one packs by count) and `IoOps` (operations in flight; the default −1 steers
//! builds away from busy hosts).

use super::Weigher;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// Consumers on the host.
pub struct InstanceCount(pub f64);
/// Builds and moves in flight on the host.
pub struct IoOps(pub f64);

impl Weigher for InstanceCount {
    fn name(&self) -> &'static str {
        "InstanceCount"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        for (o, &i) in out.iter_mut().zip(slots) {
            *o = s.instances[i as usize] as f64;
        }
    }
}

impl Weigher for IoOps {
    fn name(&self) -> &'static str {
        "IoOps"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        for (o, &i) in out.iter_mut().zip(slots) {
            *o = s.io_ops[i as usize] as f64;
        }
    }
}
