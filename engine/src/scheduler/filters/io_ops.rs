//! `IoOps`: a host with `max_io_ops_per_host` builds, resizes, migrations or snapshots in
//! flight takes no new build (Nova's IoOpsFilter).

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct IoOps {
    /// `max_io_ops_per_host`.
    pub max: u32,
}

impl Filter for IoOps {
    fn name(&self) -> &'static str {
        "IoOps"
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
        let col = &s.io_ops[..s.slots()];
        let max = self.max;
        retain(alive, col.len(), Reason::Filter(self.name()), rej, |i| {
            col[i] < max
        });
    }
}
