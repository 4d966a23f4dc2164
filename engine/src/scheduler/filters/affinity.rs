//! Server-group filters. `ServerGroupAntiAffinity`: a host already running
//! `max_server_per_host` members of the request's anti-affinity group (default 1) is out.
//! `ServerGroupAffinity`: once an affinity group has a member, only that member's host is
//! in. Both read the group snapshot taken when the request was prepared; the claim
//! re-checks under the group's lock, so a concurrent claim cannot break the policy.

use super::{Filter, Reason, Rejections, drop_slots, retain_only};
use crate::model::GroupPolicy;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ServerGroupAntiAffinity;
/// See the module doc.
pub struct ServerGroupAffinity;

impl Filter for ServerGroupAntiAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinity"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::AntiAffinity && !g.hosts.is_empty())
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(g) = &ctx.group {
            let full = g
                .hosts
                .in_shard(si)
                .iter()
                .filter(|(_, n)| *n >= g.max_per_host)
                .map(|(h, _)| h.slot);
            drop_slots(alive, full, Reason::Filter(self.name()), rej);
        }
    }
}

impl Filter for ServerGroupAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAffinity"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::Affinity && !g.hosts.is_empty())
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(g) = &ctx.group {
            retain_only(
                alive,
                g.hosts.in_shard(si).iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}
