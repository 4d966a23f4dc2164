//! `ImageProperties`: an image's `hw_architecture`, `img_hv_type` and
//! `img_hv_requested_version` must match what the host reports. A host that reports
//! nothing for a property the image asks about does not match (as in Nova).

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::scheduler::extra_specs_ops::version_matches;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ImageProperties;

impl Filter for ImageProperties {
    fn name(&self) -> &'static str {
        "ImageProperties"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.arch.is_some() || ctx.hv_type.is_some() || ctx.hv_version.is_some()
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
            ctx.arch.is_none_or(|a| s.arch[i] == a)
                && ctx.hv_type.is_none_or(|t| s.hv_type[i] == t)
                && ctx.hv_version.as_ref().is_none_or(|(op, v)| {
                    s.hv_version[i] != 0 && version_matches(s.hv_version[i], op, *v)
                })
        });
    }
}
