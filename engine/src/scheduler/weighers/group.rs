//! `SoftAffinity` and `SoftAntiAffinity`: for requests in a soft-affinity group, hosts with
//! more members weigh more; in a soft-anti-affinity group, hosts with more members weigh
//! less. Unlike the hard policies these never exclude a host.

use super::Weigher;
use crate::model::GroupPolicy;
use crate::scheduler::context::RequestContext;
use crate::state::HostRef;
use crate::state::shard::Shard;

/// Prefer hosts with members.
pub struct SoftAffinity(pub f64);
/// Prefer hosts without members.
pub struct SoftAntiAffinity(pub f64);

fn members(ctx: &RequestContext, si: u32, slots: &[u32], out: &mut [f64], sign: f64) {
    let Some(g) = &ctx.group else { return };
    out.fill(0.0);
    let here = g.hosts.in_shard(si);
    if here.is_empty() {
        return;
    }
    for (o, &slot) in out.iter_mut().zip(slots) {
        *o = sign * g.hosts.get(HostRef { shard: si, slot }) as f64;
    }
}

impl Weigher for SoftAffinity {
    fn name(&self) -> &'static str {
        "SoftAffinity"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::SoftAffinity)
    }
    fn weigh(&self, ctx: &RequestContext, _: &Shard, si: u32, slots: &[u32], out: &mut [f64]) {
        members(ctx, si, slots, out, 1.0);
    }
}

impl Weigher for SoftAntiAffinity {
    fn name(&self) -> &'static str {
        "SoftAntiAffinity"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::SoftAntiAffinity)
    }
    fn weigh(&self, ctx: &RequestContext, _: &Shard, si: u32, slots: &[u32], out: &mut [f64]) {
        members(ctx, si, slots, out, -1.0);
    }
}
