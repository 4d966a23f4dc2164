//! Filters: each decides, for a whole shard at once, which hosts cannot take the request,
//! and names its reason. They run in the configured order over a survivor bitmap (bit `i`
//! = slot `i` still in the running); the first filter to drop a host is charged with it,
//! which is what the "no valid host" answer reports.
//!
//! A filter works on bitmap words, not on one host at a time, so the per-host cost is a
//! few loads and compares in a loop the compiler can unroll — no virtual call per host.

mod affinity;
mod aggregate_extra_specs;
mod availability_zone;
mod capacity;
mod compute;
mod compute_capabilities;
mod hosts;
mod image_properties;
mod io_ops;
mod isolated_hosts;
mod member_of;
mod num_instances;
mod traits;

use smallvec::SmallVec;

use super::context::RequestContext;
use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};
use crate::model::ClassId;
use crate::state::shard::Shard;

/// Why a host was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A filter's own name.
    Filter(&'static str),
    /// Not enough of (or unit rules for) one resource class.
    Capacity(ClassId),
}

/// Hosts dropped per reason, in the order reasons first appeared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rejections(pub SmallVec<[(Reason, u32); 8]>);

impl Rejections {
    /// Charges `n` hosts to `reason`.
    #[inline]
    pub fn add(&mut self, reason: Reason, n: u32) {
        if n == 0 {
            return;
        }
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.0.push((reason, n)),
        }
    }

    /// Adds another shard's counts.
    pub fn merge(&mut self, other: &Rejections) {
        for &(r, n) in &other.0 {
            self.add(r, n);
        }
    }

    /// Total hosts dropped.
    pub fn total(&self) -> u32 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

/// A filter. Contract: `filter` only clears bits (never sets one), charges every bit it
/// clears to a reason, and has no side effects; it may read stale columns for slots whose
/// bit is already clear. `active` is false when the request gives the filter nothing to
/// check, and the pipeline then skips it.
pub trait Filter: Send + Sync {
    /// The filter's name, used in configuration and as its rejection reason.
    fn name(&self) -> &'static str;
    /// Whether this request needs the filter.
    fn active(&self, ctx: &RequestContext) -> bool;
    /// Clears the bits of hosts in `shard` (index `shard_idx`) that fail.
    fn filter(
        &self,
        ctx: &RequestContext,
        shard: &Shard,
        shard_idx: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    );
}

/// Keeps the hosts for which `keep(slot)` holds and charges the rest to `reason`.
/// Dense words are evaluated lane by lane without branches; sparse ones bit by bit.
#[inline]
pub fn retain(
    alive: &mut [u64],
    slots: usize,
    reason: Reason,
    rej: &mut Rejections,
    mut keep: impl FnMut(usize) -> bool,
) {
    let mut dropped = 0u32;
    for (w, word) in alive.iter_mut().enumerate() {
        let bits = *word;
        if bits == 0 {
            continue;
        }
        let base = w * 64;
        let mut mask = 0u64;
        if bits.count_ones() >= 16 {
            let end = (slots - base).min(64);
            for j in 0..end {
                mask |= (keep(base + j) as u64) << j;
            }
        } else {
            let mut b = bits;
            while b != 0 {
                let j = b.trailing_zeros() as usize;
                mask |= (keep(base + j) as u64) << j;
                b &= b - 1;
            }
        }
        let kept = bits & mask;
        dropped += (bits ^ kept).count_ones();
        *word = kept;
    }
    rej.add(reason, dropped);
}

/// Keeps only the listed slots (others charged to `reason`).
pub fn retain_only(
    alive: &mut [u64],
    slots: impl Iterator<Item = u32>,
    reason: Reason,
    rej: &mut Rejections,
) {
    let mut keep: SmallVec<[u64; 32]> = SmallVec::from_elem(0, alive.len());
    for s in slots {
        if let Some(w) = keep.get_mut(s as usize / 64) {
            *w |= 1 << (s % 64);
        }
    }
    let mut dropped = 0;
    for (a, k) in alive.iter_mut().zip(keep.iter()) {
        dropped += (*a & !k).count_ones();
        *a &= k;
    }
    rej.add(reason, dropped);
}

/// Drops the listed slots (charged to `reason` if they were alive).
pub fn drop_slots(
    alive: &mut [u64],
    slots: impl Iterator<Item = u32>,
    reason: Reason,
    rej: &mut Rejections,
) {
    let mut dropped = 0;
    for s in slots {
        if let Some(w) = alive.get_mut(s as usize / 64) {
            let bit = 1u64 << (s % 64);
            dropped += (*w & bit != 0) as u32;
            *w &= !bit;
        }
    }
    rej.add(reason, dropped);
}

/// Builds the enabled filters, in order, from configuration.
pub fn build(config: &SchedulerConfig) -> Result<Vec<Box<dyn Filter>>> {
    let mut out: Vec<Box<dyn Filter>> = Vec::new();
    for (i, name) in config.filters.iter().enumerate() {
        let f: Box<dyn Filter> = match name.as_str() {
            "IgnoreHosts" => Box::new(hosts::IgnoreHosts),
            "ForceHosts" => Box::new(hosts::ForceHosts),
            "AvailabilityZone" => Box::new(availability_zone::AvailabilityZone),
            "Compute" => Box::new(compute::Compute),
            "Capacity" => Box::new(capacity::Capacity),
            "Traits" => Box::new(traits::Traits),
            "MemberOf" => Box::new(member_of::MemberOf),
            "NumInstances" => Box::new(num_instances::NumInstances {
                max: config.max_instances_per_host,
            }),
            "IoOps" => Box::new(io_ops::IoOps {
                max: config.max_io_ops_per_host,
            }),
            "IsolatedHosts" => Box::new(isolated_hosts::IsolatedHosts {
                enabled: !config.isolated_hosts.is_empty() || !config.isolated_images.is_empty(),
                restrict: config.restrict_isolated_hosts_to_isolated_images,
            }),
            "ImageProperties" => Box::new(image_properties::ImageProperties),
            "ComputeCapabilities" => Box::new(compute_capabilities::ComputeCapabilities),
            "AggregateInstanceExtraSpecs" => {
                Box::new(aggregate_extra_specs::AggregateInstanceExtraSpecs)
            }
            "SameHost" => Box::new(hosts::SameHost),
            "DifferentHost" => Box::new(hosts::DifferentHost),
            "ServerGroupAntiAffinity" => Box::new(affinity::ServerGroupAntiAffinity),
            "ServerGroupAffinity" => Box::new(affinity::ServerGroupAffinity),
            other => {
                return Err(EngineError::invalid(
                    format!("scheduler.filters[{i}]"),
                    format!(
                        "unknown filter {other:?}; known: {}",
                        crate::config::DEFAULT_FILTERS.join(", ")
                    ),
                ));
            }
        };
        if out.iter().any(|f: &Box<dyn Filter>| f.name() == name) {
            return Err(EngineError::invalid(
                format!("scheduler.filters[{i}]"),
                format!("{name} listed twice"),
            ));
        }
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod testkit;
