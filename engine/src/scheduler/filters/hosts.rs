//! Host-list filters: `IgnoreHosts` (skip hosts a retry already tried), `ForceHosts` (only
//! these hosts), and the scheduler hints `SameHost` (on a host running one of the given
//! instances) and `DifferentHost` (on none of them).

use super::{Filter, Reason, Rejections, drop_slots, retain_only};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// Drops the request's `ignore_hosts`.
pub struct IgnoreHosts;
/// Keeps only the request's `force_hosts`.
pub struct ForceHosts;
/// Keeps only hosts of the `same_host` instances.
pub struct SameHost;
/// Drops hosts of the `different_host` instances.
pub struct DifferentHost;

impl Filter for IgnoreHosts {
    fn name(&self) -> &'static str {
        "IgnoreHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.ignore_hosts.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        drop_slots(
            alive,
            ctx.ignore_hosts.in_shard(si).iter().map(|(h, _)| h.slot),
            Reason::Filter(self.name()),
            rej,
        );
    }
}

impl Filter for ForceHosts {
    fn name(&self) -> &'static str {
        "ForceHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.force_hosts.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(f) = &ctx.force_hosts {
            retain_only(
                alive,
                f.in_shard(si).iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}

impl Filter for SameHost {
    fn name(&self) -> &'static str {
        "SameHost"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.same_host.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(f) = &ctx.same_host {
            retain_only(
                alive,
                f.in_shard(si).iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}

impl Filter for DifferentHost {
    fn name(&self) -> &'static str {
        "DifferentHost"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.different_host.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        drop_slots(
            alive,
            ctx.different_host.in_shard(si).iter().map(|(h, _)| h.slot),
            Reason::Filter(self.name()),
            rej,
        );
    }
}
