//! `Compute`: the host must be up (its node daemon heartbeating within `down_after`) and
//! not disabled (`COMPUTE_STATUS_DISABLED`, set by `berth host disable`).

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::{DISABLED, Shard, UP};

/// See the module doc.
pub struct Compute;

impl Filter for Compute {
    fn name(&self) -> &'static str {
        "Compute"
    }
    fn active(&self, _: &RequestContext) -> bool {
        true
    }
    fn filter(
        &self,
        _: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let flags = &s.flags[..s.slots()];
        retain(alive, flags.len(), Reason::Filter(self.name()), rej, |i| {
            flags[i] & (UP | DISABLED) == UP
        });
    }
}
