//! `BuildFailure`: hosts where builds recently failed weigh less, strongly (Nova's default
//! multiplier 1,000,000 outweighs every other weigher), so a broken host stops attracting
//! builds until one succeeds there.

use super::Weigher;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct BuildFailure(pub f64);

impl Weigher for BuildFailure {
    fn name(&self) -> &'static str {
        "BuildFailure"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        for (o, &i) in out.iter_mut().zip(slots) {
            *o = -(s.failures[i as usize] as f64);
        }
    }
}
