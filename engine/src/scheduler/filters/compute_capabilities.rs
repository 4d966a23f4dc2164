//! `ComputeCapabilities`: every flavor `capabilities:KEY=EXPR` extra spec must hold for the
//! host's reported capability `KEY` (Nova's extra-spec operators: `>= 4`, `s== Intel`,
//! `<in> avx`, …). A host without the key does not match.

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ComputeCapabilities;

impl Filter for ComputeCapabilities {
    fn name(&self) -> &'static str {
        "ComputeCapabilities"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.capabilities.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        retain(alive, s.slots(), Reason::Filter(self.name()), rej, |i| {
            let caps = &s.cold[i].capabilities;
            ctx.capabilities
                .iter()
                .all(|(k, op)| caps.get(k).is_some_and(|v| op.matches(v)))
        });
    }
}
