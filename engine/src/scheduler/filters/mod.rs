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
    let full_words = slots / 64;
    for (w, word) in alive.iter_mut().enumerate() {
        let bits = *word;
        if bits == 0 {
            continue;
        }
        let base = w * 64;
        let mut mask = 0u64;
        if is_dense(bits) {
            mask = if w < full_words {
                dense(base, 64, &mut keep)
            } else {
                dense(base, (slots - base).min(64), &mut keep)
            };
        } else {
            let mut b = bits;
            while b != 0 {
                let j = b.trailing_zeros() as usize;
                mask |= (keep(base + j) as u64) << j;
                b &= b - 1;
            }
        }
        dropped += settle(word, mask);
    }
    rej.add(reason, dropped);
}

/// [`retain`] for a test on one column value per host (`col[slot]`, `col.len()` = slots):
/// the dense path reads the column 64 values at a time from a sub-slice, so it has no
/// bounds checks and the compare loop vectorises completely.
#[inline]
pub fn retain_by<T: Copy>(
    alive: &mut [u64],
    col: &[T],
    reason: Reason,
    rej: &mut Rejections,
    keep: impl Fn(T) -> bool,
) {
    let mut dropped = 0u32;
    for (w, word) in alive.iter_mut().enumerate() {
        let bits = *word;
        if bits == 0 {
            continue;
        }
        let mask = word_mask(col, w, bits, is_dense(bits), &keep);
        dropped += settle(word, mask);
    }
    rej.add(reason, dropped);
}

/// One test of [`retain_at_least`]: `col[slot] >= least`, failures charged to `reason`.
#[derive(Debug, Clone, Copy)]
pub struct AtLeast<'a> {
    /// The column, one value per slot.
    pub col: &'a [i32],
    /// Per word of 64 slots, a lower bound of `col` over them (`Shard::free_floor`).
    pub floor: &'a [i32],
    /// The least value that passes.
    pub least: i32,
    /// What a failure is charged to.
    pub reason: Reason,
}

/// Tests `col[slot] >= least` in one pass over the survivors (the capacity filter's
/// standard classes): in each word the tests' masks apply in order, so a host failing
/// several is charged to the first, exactly as one [`retain_by`] per test in that order
/// would charge it — with one walk over the survivor words instead of one per test. A word
/// whose `floor` is at least `least` passes that test without looking at the hosts.
pub fn retain_at_least(alive: &mut [u64], tests: &[AtLeast<'_>], rej: &mut Rejections) {
    let mut dropped: SmallVec<[u32; 8]> = SmallVec::from_elem(0, tests.len());
    for (w, word) in alive.iter_mut().enumerate() {
        let mut bits = *word;
        if bits == 0 {
            continue;
        }
        let dense = is_dense(bits);
        for (t, test) in tests.iter().enumerate() {
            let (col, floor, least) = (test.col, test.floor, test.least);
            if floor.get(w).is_some_and(|&f| f >= least) {
                continue;
            }
            let mask = word_mask(col, w, bits, dense, &|v: i32| v >= least);
            let kept = bits & mask;
            if kept != bits {
                dropped[t] += (bits ^ kept).count_ones();
                bits = kept;
                if bits == 0 {
                    break;
                }
            }
        }
        *word = bits;
    }
    for (t, test) in tests.iter().enumerate() {
        rej.add(test.reason, dropped[t]);
    }
}

/// The keep-mask of survivor word `w` (slots `64w..64w+63`) for a test on one column value
/// per host: a dense word packs all 64 lanes without bounds checks, a sparse one walks its
/// set bits. A set bit beyond the column (never, per the Shard invariant) is dropped.
#[inline(always)]
fn word_mask<T: Copy>(
    col: &[T],
    w: usize,
    bits: u64,
    dense: bool,
    keep: &impl Fn(T) -> bool,
) -> u64 {
    let base = w * 64;
    if dense {
        let chunk = col.get(base..).unwrap_or_default();
        return match chunk.first_chunk::<64>() {
            Some(c) => pack(c, keep),
            None => pack(chunk, keep),
        };
    }
    let mut mask = 0u64;
    let mut b = bits;
    while b != 0 {
        let j = b.trailing_zeros() as usize;
        mask |= (col.get(base + j).is_some_and(|&v| keep(v)) as u64) << j;
        b &= b - 1;
    }
    mask
}

/// Keeps the hosts whose counter in `col` is below `max`, charging the rest to `reason`
/// (`NumInstances`, `IoOps`). Every value is at most the OR of all of them, so one
/// vectorised pass usually proves no host is at the limit and skips the filter.
pub fn retain_below(
    alive: &mut [u64],
    col: &[u32],
    max: u32,
    reason: Reason,
    rej: &mut Rejections,
) {
    if col.iter().fold(0, |acc, &n| acc | n) < max {
        return;
    }
    retain_by(alive, col, reason, rej, |n| n < max);
}

/// Whether a survivor word is worth evaluating lane by lane (most of it alive). Full words,
/// the common case, skip the population count (a dozen instructions without `popcnt`).
#[inline(always)]
fn is_dense(bits: u64) -> bool {
    bits == u64::MAX || bits.count_ones() >= 16
}

/// Applies `mask` to a survivor word; returns how many survivors it dropped.
#[inline(always)]
fn settle(word: &mut u64, mask: u64) -> u32 {
    let bits = *word;
    let kept = bits & mask;
    *word = kept;
    if kept == bits {
        0
    } else {
        (bits ^ kept).count_ones()
    }
}

/// `keep` over up to 64 column values, as a bit mask (see [`dense`]).
#[inline(always)]
fn pack<T: Copy>(vals: &[T], keep: &impl Fn(T) -> bool) -> u64 {
    let mut b = [0u8; 64];
    for (x, &v) in b.iter_mut().zip(vals) {
        *x = keep(v) as u8;
    }
    pack_bytes(&b)
}

/// `keep` for the `end` (≤ 64) slots from `base`, as a bit mask. The verdicts go to a byte
/// array first — a loop the compiler vectorises for simple column compares even with plain
/// SSE2 — and are packed 8 at a time with one multiply (byte `i` of 0/1 values lands in bit
/// `56 + i`), instead of a variable shift and OR per host.
#[inline(always)]
fn dense(base: usize, end: usize, keep: &mut impl FnMut(usize) -> bool) -> u64 {
    let mut b = [0u8; 64];
    for (j, x) in b[..end].iter_mut().enumerate() {
        *x = keep(base + j) as u8;
    }
    pack_bytes(&b)
}

/// 64 bytes of 0/1 to a bit mask, 8 bytes per multiply.
#[inline(always)]
fn pack_bytes(b: &[u8; 64]) -> u64 {
    let mut mask = 0u64;
    for (k, c) in b.chunks_exact(8).enumerate() {
        let mut lanes = [0u8; 8];
        lanes.copy_from_slice(c);
        let packed = u64::from_le_bytes(lanes).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= packed << (8 * k);
    }
    mask
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
        if out.iter().any(|f| f.name() == name) {
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
