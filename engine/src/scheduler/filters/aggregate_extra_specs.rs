//! `AggregateInstanceExtraSpecs`: flavor extra specs that are unscoped or scoped
//! `aggregate_instance_extra_specs:` must be satisfied by the metadata of at least one of
//! the host's aggregates. The context pre-computes, per spec, the set of aggregates that
//! satisfy it, so the per-host test is a bitset AND.

use super::{Filter, Reason, Rejections, retain};
use crate::intern::has_any;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct AggregateInstanceExtraSpecs;

impl Filter for AggregateInstanceExtraSpecs {
    fn name(&self) -> &'static str {
        "AggregateInstanceExtraSpecs"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.aggregate_specs.is_empty()
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
            let row = s.agg_row(i);
            ctx.aggregate_specs.iter().all(|set| has_any(row, set))
        });
    }
}
