//! `AvailabilityZone`: the host must be in the requested zone. Hosts registered without a
//! zone are in `default_availability_zone` ("nova"). An unknown zone matches no host.

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct AvailabilityZone;

impl Filter for AvailabilityZone {
    fn name(&self) -> &'static str {
        "AvailabilityZone"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.az.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let Some(az) = ctx.az else { return };
        let col = &s.az[..s.slots()];
        retain(alive, col.len(), Reason::Filter(self.name()), rej, |i| {
            col[i] == az
        });
    }
}
