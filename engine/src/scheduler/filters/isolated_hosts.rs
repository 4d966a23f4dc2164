//! `IsolatedHosts`: images in `isolated_images` run only on `isolated_hosts`; with
//! `restrict_isolated_hosts_to_isolated_images` (default on) isolated hosts run nothing
//! else. Inactive when neither list is configured.

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::{ISOLATED, Shard};

/// See the module doc.
pub struct IsolatedHosts {
    /// Whether any host or image is isolated.
    pub enabled: bool,
    /// `restrict_isolated_hosts_to_isolated_images`.
    pub restrict: bool,
}

impl Filter for IsolatedHosts {
    fn name(&self) -> &'static str {
        "IsolatedHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        self.enabled && (ctx.isolated_image || self.restrict)
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let flags = &s.flags[..s.slots()];
        let want_isolated = ctx.isolated_image;
        retain(alive, flags.len(), Reason::Filter(self.name()), rej, |i| {
            (flags[i] & ISOLATED != 0) == want_isolated
        });
    }
}
