//! `NumInstances`: a host already running `max_instances_per_host` consumers takes no more.

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct NumInstances {
    /// `max_instances_per_host`.
    pub max: u32,
}

impl Filter for NumInstances {
    fn name(&self) -> &'static str {
        "NumInstances"
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
        let col = &s.instances[..s.slots()];
        let max = self.max;
        retain(alive, col.len(), Reason::Filter(self.name()), rej, |i| {
            col[i] < max
        });
    }
}
