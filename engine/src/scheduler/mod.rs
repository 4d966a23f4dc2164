//! The decision pipeline: prepare → filter → weigh → select → claim.
//!
//! 1. **Prepare** ([`context::RequestContext::prepare`]): resolve names, validate, snapshot
//!    the server group. All fallible work is here.
//! 2. **Filter** every shard (in parallel with rayon above `parallel_threshold` hosts; one
//!    thread is faster below it) under the shard's read lock, over a survivor bitmap,
//!    counting each filter's eliminations.
//! 3. **Weigh** the survivors of each shard while its lock is still held: raw values per
//!    weigher, normalised over all candidates afterwards.
//! 4. **Select** the best host, or a random one of the best `host_subset_size`; the next
//!    `max_attempts − 1` are the alternates.
//! 5. **Claim** under the chosen host's shard write lock (and the group's lock), re-checking
//!    capacity, liveness and the group policy; on a lost race fall to the next candidate, and
//!    after a full round of losses scan again (3 rounds at most).

pub mod context;
#[cfg(test)]
mod equivalence_tests;
pub mod extra_specs_ops;
pub mod filters;
pub mod weighers;

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use rayon::prelude::*;
use smallvec::SmallVec;
use uuid::Uuid;

use crate::error::{EngineError, NoValidHost, Result};
use crate::model::{GroupPolicy, RequestSpec};
use crate::state::consumers::{Amounts, Consumer, HostAlloc};
use crate::state::groups::GroupState;
use crate::state::quotas::UsageDelta;
use crate::state::shard::{DISABLED, Shard, UP};
use crate::state::{Engine, HostRef};
use context::RequestContext;
use filters::{Reason, Rejections};
use weighers::normalize;

/// How many full scan-and-claim rounds a placement gets before giving up on races.
const CLAIM_ROUNDS: usize = 3;

/// A host, by uuid and name.
#[derive(Debug, Clone, PartialEq)]
pub struct HostChoice {
    /// Provider uuid.
    pub uuid: Uuid,
    /// Provider name.
    pub name: String,
}

/// Where one instance went.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The consumer (instance) uuid.
    pub consumer: Uuid,
    /// The host its resources were claimed on.
    pub host: HostChoice,
    /// What was claimed: `(class, amount)`.
    pub allocations: Vec<(String, u64)>,
    /// Next-best hosts to retry on if the build fails there (not claimed).
    pub alternates: Vec<HostChoice>,
    /// The chosen host's total weight.
    pub weight: f64,
}

/// One weigher's part in a host's weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeigherContribution {
    /// Weigher name.
    pub weigher: &'static str,
    /// Raw value.
    pub raw: f64,
    /// Normalised to [0, 1] over the candidates.
    pub normalized: f64,
    /// `normalized × multiplier`.
    pub weighted: f64,
}

/// A host in `Explain`'s ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedHost {
    /// The host.
    pub host: HostChoice,
    /// Total weight.
    pub weight: f64,
    /// Per weigher, in configured order (inactive weighers left out).
    pub contributions: Vec<WeigherContribution>,
}

/// A dry run's answer: who was eliminated by what, and how the rest rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Hosts considered.
    pub hosts: u32,
    /// Hosts that passed every filter.
    pub passed: u32,
    /// `(reason, hosts eliminated)` in filter order.
    pub rejections: Vec<(String, u32)>,
    /// The best hosts, best first.
    pub ranked: Vec<RankedHost>,
}

impl Explanation {
    /// One line: "10000 hosts, 2790 passed: AvailabilityZone 7000, Capacity(MEMORY_MB) 210".
    pub fn summary(&self) -> String {
        let mut s = format!("{} hosts, {} passed", self.hosts, self.passed);
        let mut sep = ": ";
        for (r, n) in &self.rejections {
            s.push_str(&format!("{sep}{r} {n}"));
            sep = ", ";
        }
        s
    }
}

/// What one shard contributed to a scan. The buffers are reused from scan to scan (see
/// [`SCAN_BUFFERS`]), so a scan neither allocates nor zero-fills per request.
#[derive(Default)]
struct ShardScan {
    shard: u32,
    /// Survivors' slots (exactly the survivors).
    slots: Vec<u32>,
    /// Weigher-major raw values: `raw[w * slots.len() + k]` (the buffer may be longer).
    /// Stale for a weigher with a `uniform` value: read through [`ShardScan::raw_at`].
    raw: Vec<f64>,
    /// Per weigher: the value of every candidate, when [`Weigher::uniform`] knew it.
    uniform: SmallVec<[Option<f64>; 8]>,
    /// Per weigher: smallest and largest raw value in this shard.
    min: SmallVec<[f64; 8]>,
    max: SmallVec<[f64; 8]>,
    /// Per weigher and block of [`BLOCK`] candidates, weigher-major
    /// (`[w * blocks + b]`): smallest and largest raw value, for [`Engine::top`]'s bounds.
    block_min: Vec<f64>,
    block_max: Vec<f64>,
}

/// Candidates per block in [`Engine::top`]'s pruning.
const BLOCK: usize = 64;

impl ShardScan {
    /// Weigher `w`'s raw value for candidate `j`.
    fn raw_at(&self, w: usize, j: usize) -> f64 {
        match self.uniform[w] {
            Some(v) => v,
            None => self.raw[w * self.slots.len() + j],
        }
    }
}

/// A whole scan: candidates per shard plus the normalisation bounds.
struct Scan {
    /// Every shard, in index order (empty ones included).
    shards: Vec<ShardScan>,
    /// Indices of the weighers that ran.
    weighers: SmallVec<[usize; 8]>,
    min: SmallVec<[f64; 8]>,
    max: SmallVec<[f64; 8]>,
    hosts: u32,
    rejections: Rejections,
}

thread_local! {
    /// The last scan's per-shard buffers on this thread, kept for the next scan: raw weigher
    /// values are the bulk of a scan's memory (8 bytes × weighers × survivors), and
    /// allocating them zero-filled per request cost more than weighing.
    static SCAN_BUFFERS: std::cell::RefCell<Vec<ShardScan>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Scan {
    fn drop(&mut self) {
        let shards = std::mem::take(&mut self.shards);
        // Fails only while the thread is exiting; the buffers are then just freed.
        let _ = SCAN_BUFFERS.try_with(|b| {
            if let Ok(mut b) = b.try_borrow_mut()
                && b.is_empty()
            {
                *b = shards;
            }
        });
    }
}

impl Scan {
    fn passed(&self) -> u32 {
        self.shards.iter().map(|s| s.slots.len() as u32).sum()
    }
}

/// A candidate's place in a scan: (score, shard-scan index, index within it).
type Ranked = (f64, u32, u32);

impl Engine {
    /// Filters and weighs every host for `ctx`.
    fn scan(&self, ctx: &RequestContext) -> Scan {
        let filters: SmallVec<[&dyn filters::Filter; 24]> = self
            .filters
            .iter()
            .map(|f| &**f)
            .filter(|f| f.active(ctx))
            .collect();
        let wsel: SmallVec<[usize; 8]> = self
            .weighers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.multiplier() != 0.0 && w.active(ctx))
            .map(|(i, _)| i)
            .collect();
        let nw = wsel.len();
        let per_shard = |si: usize, out: &mut ShardScan| -> (u32, Rejections) {
            let shard = self.shards[si].read();
            let mut alive: SmallVec<[u64; 32]> = SmallVec::from_slice(&shard.present);
            let hosts: u32 = alive.iter().map(|w| w.count_ones()).sum();
            let mut rej = Rejections::default();
            for f in &filters {
                if alive.iter().all(|w| *w == 0) {
                    break;
                }
                f.filter(ctx, &shard, si as u32, &mut alive, &mut rej);
            }
            out.shard = si as u32;
            bits_to_slots(&alive, &mut out.slots);
            let n = out.slots.len();
            if out.raw.len() < n * nw {
                out.raw.resize(n * nw, 0.0);
            }
            out.min.clear();
            out.max.clear();
            out.block_min.clear();
            out.block_max.clear();
            out.uniform.clear();
            if n > 0 {
                let nb = n.div_ceil(BLOCK);
                for (k, &wi) in wsel.iter().enumerate() {
                    let w = &self.weighers[wi];
                    if let Some(v) = w.uniform(ctx, &shard) {
                        out.uniform.push(Some(v));
                        out.block_min.extend(std::iter::repeat_n(v, nb));
                        out.block_max.extend(std::iter::repeat_n(v, nb));
                        out.min.push(v);
                        out.max.push(v);
                        continue;
                    }
                    out.uniform.push(None);
                    let raw = &mut out.raw[k * n..(k + 1) * n];
                    w.weigh(ctx, &shard, si as u32, &out.slots, raw);
                    // Bounds while the values are still in L1.
                    let (lo, hi) = block_bounds(raw, &mut out.block_min, &mut out.block_max);
                    out.min.push(lo);
                    out.max.push(hi);
                }
            }
            (hosts, rej)
        };
        let mut shards = SCAN_BUFFERS
            .try_with(|b| b.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        shards.resize_with(self.shards.len(), ShardScan::default);
        let parts: SmallVec<[(u32, Rejections); 16]> =
            if self.index.len() > self.config.scheduler.parallel_threshold {
                let v: Vec<(u32, Rejections)> = shards
                    .par_iter_mut()
                    .enumerate()
                    .map(|(si, out)| per_shard(si, out))
                    .collect();
                v.into_iter().collect()
            } else {
                shards
                    .iter_mut()
                    .enumerate()
                    .map(|(si, out)| per_shard(si, out))
                    .collect()
            };
        let mut scan = Scan {
            shards,
            min: SmallVec::from_elem(f64::INFINITY, nw),
            max: SmallVec::from_elem(f64::NEG_INFINITY, nw),
            weighers: wsel,
            hosts: 0,
            rejections: Rejections::default(),
        };
        for (hosts, rej) in &parts {
            scan.hosts += hosts;
            scan.rejections.merge(rej);
        }
        for ss in &scan.shards {
            if ss.slots.is_empty() {
                continue;
            }
            for k in 0..nw {
                scan.min[k] = scan.min[k].min(ss.min[k]);
                scan.max[k] = scan.max[k].max(ss.max[k]);
            }
        }
        scan
    }

    /// The best `k` candidates of a scan, best first (ties keep scan order).
    ///
    /// A host's score is `Σ multiplier × normalize(raw)` over the weighers in order, as in
    /// Nova. A weigher whose values are all equal normalises to 0 for every host, and adding
    /// `m × 0` leaves every score bit-for-bit as it was, so such weighers (the build-failure
    /// and io-ops weighers, usually) are skipped.
    ///
    /// Candidates are scored a block of [`BLOCK`] at a time, best bound first: a block's
    /// bound is the same sum over its per-weigher best raw values (largest for a positive
    /// multiplier, smallest for a negative one). Floating-point subtraction, division,
    /// multiplication and addition are monotone, so no score in the block exceeds it, and
    /// once `k` candidates are held a block whose bound is below the `k`-th best is skipped
    /// unread. The order candidates are met in no longer follows the scan, so the ranking
    /// compares (score descending, then scan position) explicitly: the same total order
    /// the scan-order insertion produced.
    fn top(&self, scan: &Scan, k: usize) -> Vec<Ranked> {
        let terms: SmallVec<[(usize, f64, f64, f64); 8]> = scan
            .weighers
            .iter()
            .enumerate()
            .filter_map(|(w, &wi)| {
                let (min, range) = (scan.min[w], scan.max[w] - scan.min[w]);
                (range > 0.0).then(|| (w, min, range, self.weighers[wi].multiplier()))
            })
            .collect();
        let mut best: Vec<Ranked> = Vec::with_capacity(k.min(1024) + 1);
        if k == 0 {
            return best;
        }
        // (bound, shard-scan index, block index)
        let mut blocks: Vec<(f64, u32, u32)> = Vec::new();
        for (si, ss) in scan.shards.iter().enumerate() {
            let nb = ss.slots.len().div_ceil(BLOCK);
            for b in 0..nb {
                let mut bound = 0.0;
                for &(w, min, range, m) in &terms {
                    let x = if m > 0.0 {
                        ss.block_max[w * nb + b]
                    } else {
                        ss.block_min[w * nb + b]
                    };
                    bound += m * ((x - min) / range);
                }
                blocks.push((bound, si as u32, b as u32));
            }
        }
        blocks.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        // Whether (score, position) ranks before `e`.
        let before = |score: f64, si: u32, j: u32, e: &Ranked| {
            score > e.0 || (score == e.0 && (si, j) < (e.1, e.2))
        };
        let mut scores = [0.0f64; BLOCK];
        for &(bound, si, b) in &blocks {
            if best.len() == k {
                let worst = &best[k - 1];
                if bound < worst.0 {
                    break; // every later block's bound is lower still
                }
                if !before(bound, si, b * BLOCK as u32, worst) {
                    continue;
                }
            }
            let ss = &scan.shards[si as usize];
            let n = ss.slots.len();
            let lo = b as usize * BLOCK;
            let len = (n - lo).min(BLOCK);
            let scores = &mut scores[..len];
            // Σ from 0.0, term by term; m × ((x − min) / range) = m × normalize(x, min,
            // max), as range > 0.
            scores.fill(0.0);
            for &(w, min, range, m) in &terms {
                match ss.uniform[w] {
                    Some(x) => {
                        let t = m * ((x - min) / range);
                        scores.iter_mut().for_each(|s| *s += t);
                    }
                    None => {
                        let raw = &ss.raw[w * n + lo..w * n + lo + len];
                        for (s, &x) in scores.iter_mut().zip(raw) {
                            *s += m * ((x - min) / range);
                        }
                    }
                }
            }
            let insert = |best: &mut Vec<Ranked>, score: f64, j: u32| {
                let pos = best.partition_point(|e| !before(score, si, j, e));
                best.insert(pos, (score, si, j));
                best.truncate(k);
            };
            let mut jj = 0;
            while best.len() < k && jj < len {
                insert(&mut best, scores[jj], (lo + jj) as u32);
                jj += 1;
            }
            if jj < len {
                // The k-th best in a local: most candidates fail one comparison with it.
                let mut worst = best[k - 1];
                for (jj, &score) in scores.iter().enumerate().skip(jj) {
                    if score < worst.0 {
                        continue;
                    }
                    let j = (lo + jj) as u32;
                    if before(score, si, j, &worst) {
                        insert(&mut best, score, j);
                        worst = best[k - 1];
                    }
                }
            }
        }
        best
    }

    fn host_of(scan: &Scan, r: &Ranked) -> HostRef {
        let ss = &scan.shards[r.1 as usize];
        HostRef {
            shard: ss.shard,
            slot: ss.slots[r.2 as usize],
        }
    }

    /// Rejection counts with names, in filter order.
    pub(crate) fn named_rejections(&self, rej: &Rejections) -> Vec<(String, u32)> {
        let rank = |r: &Reason| -> (usize, u32) {
            let name = match r {
                Reason::Filter(n) => *n,
                Reason::Capacity(_) => "Capacity",
            };
            let pos = self
                .filters
                .iter()
                .position(|f| f.name() == name)
                .unwrap_or(usize::MAX);
            (pos, if let Reason::Capacity(c) = r { c.0 } else { 0 })
        };
        let mut v: Vec<(Reason, u32)> = rej.0.to_vec();
        v.sort_by_key(|(r, _)| rank(r));
        v.into_iter()
            .map(|(r, n)| match r {
                Reason::Filter(f) => (f.to_string(), n),
                Reason::Capacity(c) => (format!("Capacity({})", self.class_name(c)), n),
            })
            .collect()
    }

    fn no_valid_host(&self, scan: &Scan, detail: String) -> EngineError {
        Engine::bump(&self.stats.no_valid_host);
        EngineError::NoValidHost(NoValidHost {
            hosts: scan.hosts,
            rejections: self.named_rejections(&scan.rejections),
            detail,
        })
    }

    fn choice(&self, h: HostRef) -> HostChoice {
        let s = self.shards[h.shard as usize].read();
        HostChoice {
            uuid: s.uuid[h.slot as usize],
            name: s.name[h.slot as usize].to_string(),
        }
    }

    /// Whether `h` satisfies the hard group policy for `consumer` right now.
    fn group_allows(g: &GroupState, h: HostRef, consumer: &Uuid) -> bool {
        // The consumer's own membership (a move's source) never counts against it.
        let mine = g.members.get(consumer);
        let own_on = |host: &HostRef| mine.is_some_and(|hs| hs.contains(host)) as u32;
        let own = own_on(&h);
        match g.policy {
            GroupPolicy::AntiAffinity => g.count(h) - own < g.max_per_host,
            GroupPolicy::Affinity => {
                // Hosts holding members other than this consumer.
                let others = g
                    .hosts
                    .iter()
                    .filter(|(host, n)| **n > own_on(host))
                    .count();
                // Two such hosts: a sole member is migrating and holds its source and its
                // destination. Until that move is confirmed or reverted neither is sure to
                // be the group's host, so nobody may join (either choice could split it).
                others == 0 || (others == 1 && g.count(h) > own)
            }
            GroupPolicy::SoftAffinity | GroupPolicy::SoftAntiAffinity => true,
        }
    }

    /// Claims `ctx.resources` on `h` if it still fits: the shard write lock makes the
    /// re-check and the update one step. The caller holds the group's lock, if any.
    fn try_claim(
        &self,
        ctx: &RequestContext,
        h: HostRef,
        group: Option<&GroupState>,
        consumer: &Uuid,
    ) -> Option<(HostAlloc, HostChoice)> {
        if let Some(g) = group
            && !Self::group_allows(g, h, consumer)
        {
            return None;
        }
        let mut s = self.shards[h.shard as usize].write();
        let i = h.slot as usize;
        if !s.is_present(i) || s.flags[i] & (UP | DISABLED) != UP {
            return None;
        }
        if !ctx.resources.iter().all(|&(c, n)| s.fits(i, c, n)) {
            return None;
        }
        Self::apply_claim(&mut s, i, &ctx.resources);
        let amounts: Amounts = ctx.resources.iter().copied().collect();
        Some((
            HostAlloc {
                host: h,
                provider: s.uuid[i],
                amounts,
            },
            HostChoice {
                uuid: s.uuid[i],
                name: s.name[i].to_string(),
            },
        ))
    }

    fn apply_claim(s: &mut Shard, i: usize, resources: &[(crate::model::ClassId, u64)]) {
        for &(c, n) in resources {
            s.add_usage(i, c, n);
        }
        s.instances[i] += 1;
        s.generation[i] += 1;
    }

    /// Scans, ranks and claims for one consumer; `commit` runs while the claimed host is
    /// known and the group lock is still held. Returns the selection.
    fn place(
        &self,
        ctx: &RequestContext,
        consumer: &Uuid,
        mut commit: impl FnMut(HostAlloc) -> Result<()>,
    ) -> Result<Selection> {
        let sched = &self.config.scheduler;
        let alternates = sched.max_attempts as usize - 1;
        let k = sched.host_subset_size + alternates + 2;
        let mut last: Option<Scan> = None;
        let mut refreshed: Option<RequestContext> = None;
        for round in 0..CLAIM_ROUNDS {
            // A lost round may mean the group moved on (an affinity group's first member
            // landed elsewhere): scan again with the group as it is now.
            if round > 0 && ctx.group.is_some() {
                let mut fresh = ctx.clone();
                fresh.refresh_group();
                refreshed = Some(fresh);
            }
            let ctx = refreshed.as_ref().unwrap_or(ctx);
            let scan = self.scan(ctx);
            let top = self.top(&scan, k);
            if top.is_empty() {
                return Err(self.no_valid_host(&scan, String::new()));
            }
            let pick = if sched.host_subset_size > 1 {
                fastrand::usize(..sched.host_subset_size.min(top.len()))
            } else {
                0
            };
            let mut order: SmallVec<[usize; 16]> = SmallVec::new();
            order.push(pick);
            order.extend((0..top.len()).filter(|&i| i != pick));
            let group = ctx.group.as_ref().map(|g| g.state.clone());
            let guard = group.as_ref().map(|g| g.lock());
            for &oi in &order {
                let h = Self::host_of(&scan, &top[oi]);
                if let Some((alloc, host)) = self.try_claim(ctx, h, guard.as_deref(), consumer) {
                    let mut guard = guard;
                    if let Some(g) = guard.as_mut() {
                        g.add_host(*consumer, h);
                    }
                    drop(guard);
                    let allocations = {
                        let classes = self.classes.read();
                        alloc
                            .amounts
                            .iter()
                            .map(|(c, n)| (classes.name(c.0).to_string(), *n))
                            .collect()
                    };
                    commit(alloc)?;
                    Engine::bump(&self.stats.claims);
                    let alternates = order
                        .iter()
                        .filter(|&&x| x != oi)
                        .take(alternates)
                        .map(|&x| self.choice(Self::host_of(&scan, &top[x])))
                        .collect();
                    return Ok(Selection {
                        consumer: *consumer,
                        host,
                        allocations,
                        alternates,
                        weight: top[oi].0,
                    });
                }
                Engine::bump(&self.stats.conflicts);
            }
            last = Some(scan);
        }
        let detail = format!(
            "concurrent requests took every candidate in {CLAIM_ROUNDS} rounds of claims; retry"
        );
        Err(match last {
            Some(scan) => self.no_valid_host(&scan, detail),
            None => EngineError::NoValidHost(NoValidHost {
                detail,
                ..Default::default()
            }),
        })
    }

    /// Places and claims every instance of `spec`, all or nothing.
    pub fn select_destinations(&self, spec: &RequestSpec) -> Result<Vec<Selection>> {
        self.writable()?;
        let mut ctx = RequestContext::prepare(self, spec)?;
        for (i, u) in ctx.instance_uuids.iter().enumerate() {
            if self.consumers.contains_key(u) {
                return Err(EngineError::AlreadyExists {
                    kind: "consumer",
                    id: format!(
                        "{u} (instance_uuids[{i}]) already holds allocations; release it or use MoveClaim"
                    ),
                });
            }
        }
        let count = ctx.instance_uuids.len();
        let uuids = ctx.instance_uuids.clone();
        // The whole request is charged to the project's usage (and checked against its
        // quota) before any host is claimed; what is not placed is given back below.
        let all = UsageDelta::consumers(count as i64).add(&ctx.resources, count as u64);
        self.charge(&ctx.project, &all)?;
        let mut done: Vec<Selection> = Vec::with_capacity(count);
        for (n, consumer) in uuids.iter().enumerate() {
            let result = match self.consumers.entry(*consumer) {
                Entry::Occupied(_) => Err(EngineError::exists("consumer", consumer)),
                Entry::Vacant(v) => {
                    let mut slot = Some(v);
                    self.place(&ctx, consumer, |alloc| {
                        let allocations = vec![alloc];
                        if let Some(v) = slot.take() {
                            let c = v.insert(Consumer {
                                project: ctx.project.clone(),
                                user: ctx.user.clone(),
                                generation: 1,
                                allocations,
                                moving: None,
                                group: ctx.group.as_ref().map(|g| g.id),
                            });
                            self.log_consumer(consumer, &c, &[]);
                        }
                        Ok(())
                    })
                }
            };
            match result {
                Ok(sel) => done.push(sel),
                Err(mut e) => {
                    for s in &done {
                        // Cannot fail: we hold these consumers and nobody else knows them yet.
                        // Each release takes its own share off the project's usage.
                        let _ = self.release_unchecked(&s.consumer);
                    }
                    let rest = (count - done.len()) as u64;
                    let unplaced = UsageDelta::consumers(rest as i64).add(&ctx.resources, rest);
                    self.uncharge(&ctx.project, &unplaced.reversed());
                    if let EngineError::NoValidHost(nvh) = &mut e
                        && count > 1
                    {
                        let d = format!("instance {} of {count}; none were placed", n + 1);
                        nvh.detail = if nvh.detail.is_empty() {
                            d
                        } else {
                            format!("{d}; {}", nvh.detail)
                        };
                    }
                    return Err(e);
                }
            }
            if count > 1 {
                ctx.refresh_group();
            }
        }
        Ok(done)
    }

    /// A dry run: the filters' eliminations and the best `limit` hosts with each weigher's
    /// part in their weight. Claims nothing.
    pub fn explain(&self, spec: &RequestSpec, limit: usize) -> Result<Explanation> {
        let ctx = RequestContext::prepare(self, spec)?;
        let scan = self.scan(&ctx);
        let top = self.top(&scan, limit);
        let ranked = top
            .iter()
            .map(|r| {
                let ss = &scan.shards[r.1 as usize];
                let contributions = scan
                    .weighers
                    .iter()
                    .enumerate()
                    .map(|(w, &wi)| {
                        let weigher = &self.weighers[wi];
                        let raw = ss.raw_at(w, r.2 as usize);
                        let normalized = normalize(raw, scan.min[w], scan.max[w]);
                        WeigherContribution {
                            weigher: weigher.name(),
                            raw,
                            normalized,
                            weighted: normalized * weigher.multiplier(),
                        }
                    })
                    .collect();
                RankedHost {
                    host: self.choice(Self::host_of(&scan, r)),
                    weight: r.0,
                    contributions,
                }
            })
            .collect();
        Ok(Explanation {
            hosts: scan.hosts,
            passed: scan.passed(),
            rejections: self.named_rejections(&scan.rejections),
            ranked,
        })
    }

    /// Claims a destination for an existing consumer (resize, cold or live migration,
    /// evacuation) while it keeps its current allocations; `confirm_move` drops the source,
    /// `revert_move` the destination. The current hosts are excluded unless
    /// `allow_same_host`. The consumer's server group always applies: a move cannot change
    /// membership (the group records the member's source and destination hosts), so a
    /// `spec.group` naming another group, or any group for a consumer in none, is
    /// `InvalidArgument`.
    pub fn move_claim(
        &self,
        consumer: &Uuid,
        spec: &RequestSpec,
        allow_same_host: bool,
    ) -> Result<Selection> {
        self.writable()?;
        let (hosts, group) = {
            let c = self
                .consumers
                .get(consumer)
                .ok_or_else(|| EngineError::not_found("consumer", consumer))?;
            if c.moving.is_some() {
                return Err(EngineError::FailedPrecondition(format!(
                    "consumer {consumer} is already moving; confirm or revert that move first"
                )));
            }
            (
                c.allocations.iter().map(|a| a.provider).collect::<Vec<_>>(),
                c.group,
            )
        };
        let mut spec = spec.clone();
        spec.num_instances = 1;
        // The consumer itself: the group snapshot then leaves out its own membership.
        spec.instance_uuids = vec![*consumer];
        if spec.group.is_none() {
            spec.group = group.map(|g| g.to_string());
        }
        if !allow_same_host {
            spec.ignore_hosts.extend(hosts.iter().map(Uuid::to_string));
        }
        let ctx = RequestContext::prepare(self, &spec)?;
        let named_group = ctx.group.as_ref().map(|g| g.id);
        match self.consumers.entry(*consumer) {
            Entry::Vacant(_) => Err(EngineError::not_found("consumer", consumer)),
            Entry::Occupied(mut o) => {
                if o.get().moving.is_some() {
                    return Err(EngineError::FailedPrecondition(format!(
                        "consumer {consumer} is already moving"
                    )));
                }
                // Checked under the entry: membership is fixed while we hold it. Joining a
                // group here would record only the destination host in it (and a second
                // group would never forget the consumer).
                if o.get().group != named_group {
                    let current = o
                        .get()
                        .group
                        .map_or("no group".into(), |g| format!("group {g}"));
                    return Err(EngineError::invalid(
                        "group",
                        format!(
                            "consumer {consumer} is in {current}; a move keeps the consumer's server group"
                        ),
                    ));
                }
                // Both sides count while the move lasts (Placement's rule): the
                // destination is charged to the project's quota before it is claimed.
                let project = o.get().project.clone();
                let dest_usage = UsageDelta::consumers(0).add(&ctx.resources, 1);
                self.charge(&project, &dest_usage)?;
                let c = o.get_mut();
                let placed = self.place(&ctx, consumer, |alloc| {
                    let dest = vec![alloc];
                    c.moving = Some(dest);
                    c.generation += 1;
                    self.log_consumer(consumer, c, &[]);
                    Ok(())
                });
                if placed.is_err() {
                    self.uncharge(&project, &dest_usage.reversed());
                }
                placed
            }
        }
    }

    /// Finishes a move: the source allocations are released, the destination's become the
    /// consumer's.
    pub fn confirm_move(&self, consumer: &Uuid) -> Result<()> {
        self.finish_move(consumer, true)
    }

    /// Abandons a move: the destination allocations are released.
    pub fn revert_move(&self, consumer: &Uuid) -> Result<()> {
        self.finish_move(consumer, false)
    }

    fn finish_move(&self, consumer: &Uuid, confirm: bool) -> Result<()> {
        self.writable()?;
        let mut c = self
            .consumers
            .get_mut(consumer)
            .ok_or_else(|| EngineError::not_found("consumer", consumer))?;
        let Some(dest) = c.moving.take() else {
            return Err(EngineError::FailedPrecondition(format!(
                "consumer {consumer} has no move in progress"
            )));
        };
        // Confirm drops the source (the destination becomes the allocations); revert drops
        // the destination.
        let drop_allocs = if confirm {
            std::mem::replace(&mut c.allocations, dest)
        } else {
            dest
        };
        let group = c.group.and_then(|g| self.groups.get(&g).map(|r| r.clone()));
        let mut guard = group.as_ref().map(|g| g.lock());
        // Cannot fail: releasing needs no capacity.
        self.swap_allocations(&drop_allocs, &[])?;
        if let Some(g) = guard.as_mut() {
            for a in &drop_allocs {
                if !c.allocations.iter().any(|k| k.host == a.host) {
                    g.remove_host(consumer, a.host);
                }
            }
        }
        drop(guard);
        let project: Arc<str> = c.project.clone();
        self.project_add(&project, &drop_allocs, -1, 0);
        c.generation += 1;
        self.log_consumer(consumer, &c, &drop_allocs);
        Ok(())
    }
}

/// Per block of [`BLOCK`] values of `v`, the smallest and largest (appended to `mins` and
/// `maxs`); returns those of all of `v`.
fn block_bounds(v: &[f64], mins: &mut Vec<f64>, maxs: &mut Vec<f64>) -> (f64, f64) {
    let (blocks, rest) = v.as_chunks::<BLOCK>();
    mins.reserve(blocks.len() + 1);
    maxs.reserve(blocks.len() + 1);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for b in blocks
        .iter()
        .map(|b| bounds(b))
        .chain((!rest.is_empty()).then(|| bounds(rest)))
    {
        mins.push(b.0);
        maxs.push(b.1);
        lo = lo.min(b.0);
        hi = hi.max(b.1);
    }
    (lo, hi)
}

/// Smallest and largest of `v` (`±∞` when empty; NaNs are ignored, as by `f64::min`).
/// Four independent lanes of `<`-selects, which compile to packed `minpd`/`maxpd`, where a
/// single `f64::min` chain stays scalar.
#[inline(always)]
fn bounds(v: &[f64]) -> (f64, f64) {
    let mut lo = [f64::INFINITY; 4];
    let mut hi = [f64::NEG_INFINITY; 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    for &x in rest {
        lo[0] = if x < lo[0] { x } else { lo[0] };
        hi[0] = if x > hi[0] { x } else { hi[0] };
    }
    (
        lo[0].min(lo[1]).min(lo[2].min(lo[3])),
        hi[0].max(hi[1]).max(hi[2].max(hi[3])),
    )
}

/// Slot numbers of the set bits, into `out` (cleared first).
fn bits_to_slots(bits: &[u64], out: &mut Vec<u32>) {
    out.clear();
    out.reserve(bits.len() * 64);
    for (w, &word) in bits.iter().enumerate() {
        let base = w as u32 * 64;
        if word == u64::MAX {
            out.extend(base..base + 64);
            continue;
        }
        let mut b = word;
        while b != 0 {
            out.push(w as u32 * 64 + b.trailing_zeros());
            b &= b - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use uuid::Uuid;

    use super::filters::testkit::*;
    use crate::model::{Allocation, GroupPolicy, Inventory, RequestSpec};
    use crate::{AllocationRequest, EngineError, ProjectUsageReport};

    fn ram(mb: u64) -> RequestSpec {
        RequestSpec::resources(&[("VCPU", 1), ("MEMORY_MB", mb)])
    }

    /// `n` hosts `h0..` with 16 VCPU and `ram_mb` of memory.
    fn cloud(n: usize, ram_mb: u64) -> TestCloud {
        let mut cloud = TestCloud::new();
        for i in 0..n {
            cloud.host(host(&format!("h{i}")).inventory("MEMORY_MB", Inventory::new(ram_mb)));
        }
        cloud
    }

    fn all_usage_zero(cloud: &TestCloud) {
        for p in cloud
            .engine
            .list_providers(&crate::ProviderFilter::default())
            .unwrap()
        {
            assert_eq!(p.instances, 0, "{}", p.name);
            assert!(p.usages.iter().all(|u| u.used == 0), "{p:?}");
        }
        assert_eq!(cloud.engine.consumer_count(), 0);
        assert_eq!(
            cloud.engine.project_usages("demo", None).unwrap(),
            ProjectUsageReport::default()
        );
    }

    #[test]
    fn one_instance_claims_and_usage_is_visible() {
        let cloud = cloud(1, 4096);
        let h = cloud.uuid("h0");
        let gen0 = cloud.engine.get_provider(&h).unwrap().generation;
        let sel = cloud.place(&ram(1024));
        assert_eq!(sel.len(), 1);
        let s = &sel[0];
        assert_eq!(s.host.uuid, h);
        assert_eq!(s.host.name, "h0");
        let mut allocs = s.allocations.clone();
        allocs.sort();
        assert_eq!(allocs, vec![("MEMORY_MB".into(), 1024), ("VCPU".into(), 1)]);
        let info = cloud.engine.get_provider(&h).unwrap();
        assert_eq!(cloud.used(h, "VCPU"), 1);
        assert_eq!(cloud.used(h, "MEMORY_MB"), 1024);
        assert_eq!(cloud.used(h, "DISK_GB"), 0);
        assert_eq!(info.instances, 1);
        assert!(info.generation > gen0, "a claim bumps the generation");
        let a = cloud.engine.get_allocations(&s.consumer).unwrap();
        assert_eq!(a.generation, 1);
        assert_eq!(a.project_id, "demo");
        assert_eq!(a.allocations.len(), 1);
        assert_eq!(a.allocations[0].provider, h);
        let usage = cloud.engine.project_usages("demo", None).unwrap();
        assert_eq!(usage.consumers, 1);
        let mut u = usage.usages.clone();
        u.sort();
        assert_eq!(u, vec![("MEMORY_MB".into(), 1024), ("VCPU".into(), 1)]);
        // Explicit instance uuids are used as the consumers.
        let mine = Uuid::new_v4();
        let mut spec = ram(1024);
        spec.instance_uuids = vec![mine];
        assert_eq!(cloud.place(&spec)[0].consumer, mine);
        assert_eq!(cloud.used(h, "MEMORY_MB"), 2048);
        // Until it is full.
        cloud.place(&ram(2048));
        assert!(matches!(
            cloud.engine.select_destinations(&ram(1)),
            Err(EngineError::NoValidHost(_))
        ));
        assert_eq!(cloud.used(h, "MEMORY_MB"), 4096);
    }

    #[test]
    fn anti_affinity_multi_instance_lands_on_distinct_hosts() {
        // (hosts, max_server_per_host, instances, placed, distinct hosts used)
        let cases: &[(usize, Option<u32>, u32, bool, usize)] = &[
            (4, None, 3, true, 3),
            (3, None, 3, true, 3),
            (2, None, 3, false, 0),
            (2, Some(2), 3, true, 2),
            (2, Some(2), 5, false, 0),
        ];
        for &(hosts, max, n, ok, distinct) in cases {
            let cloud = cloud(hosts, 32768);
            cloud.group("g", GroupPolicy::AntiAffinity, max);
            let mut s = ram(1024);
            s.num_instances = n;
            s.group = Some("g".into());
            let what = format!("{hosts} hosts, max {max:?}, {n} instances");
            match cloud.engine.select_destinations(&s) {
                Ok(sel) => {
                    assert!(ok, "{what}: {sel:?}");
                    assert_eq!(sel.len(), n as usize);
                    let used: HashSet<_> = sel.iter().map(|x| x.host.uuid).collect();
                    assert_eq!(used.len(), distinct, "{what}");
                    let g = cloud.engine.get_group("g").unwrap();
                    assert_eq!(g.members.len(), n as usize);
                    assert!(g.hosts.iter().all(|(_, k)| *k <= max.unwrap_or(1)));
                }
                Err(EngineError::NoValidHost(nvh)) => {
                    assert!(!ok, "{what}: {nvh}");
                    assert!(nvh.to_string().contains("none were placed"), "{nvh}");
                    assert!(cloud.engine.get_group("g").unwrap().members.is_empty());
                    all_usage_zero(&cloud);
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    #[test]
    fn multi_instance_is_all_or_nothing() {
        let cloud = cloud(2, 4096);
        let mut s = ram(3000);
        s.num_instances = 3;
        let err = cloud.engine.select_destinations(&s).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no valid host among 2: Capacity(MEMORY_MB) 2 (instance 3 of 3; none were placed)"
        );
        all_usage_zero(&cloud);
        // The same request with room for all three succeeds, and nothing leaked before.
        s.num_instances = 2;
        let sel = cloud.place(&s);
        assert_eq!(sel.len(), 2);
        assert_ne!(sel[0].host.uuid, sel[1].host.uuid);
        assert_eq!(cloud.engine.consumer_count(), 2);
        assert_eq!(
            cloud.engine.project_usages("demo", None).unwrap().consumers,
            2
        );
    }

    #[test]
    fn no_valid_host_lists_counts_in_filter_order() {
        let mut cloud = TestCloud::new();
        cloud.host(host("far1").az("far"));
        cloud.host(host("far2").az("far"));
        cloud.host(host("small1").inventory("MEMORY_MB", Inventory::new(1024)));
        cloud.host(host("small2").inventory("MEMORY_MB", Inventory::new(1024)));
        let mut s = ram(2048);
        s.availability_zone = Some("nova".into());
        assert_eq!(
            cloud
                .engine
                .select_destinations(&s)
                .unwrap_err()
                .to_string(),
            "no valid host among 4: AvailabilityZone 2, Capacity(MEMORY_MB) 2"
        );
        // Order is the pipeline's (filters, then classes in id order), not by count, and a
        // host is charged to the first filter that drops it.
        cloud.host(host("tiny-cpu").inventory("VCPU", Inventory::new(1)));
        cloud.host(host("down"));
        cloud
            .engine
            .set_host_up(&cloud.uuid("down"), false)
            .unwrap();
        let mut s = RequestSpec::resources(&[("VCPU", 2), ("MEMORY_MB", 2048)]);
        s.availability_zone = Some("nova".into());
        s.ignore_hosts = vec!["small1".into()];
        match cloud.engine.select_destinations(&s).unwrap_err() {
            EngineError::NoValidHost(n) => {
                assert_eq!(n.hosts, 6);
                assert_eq!(
                    n.to_string(),
                    "no valid host among 6: IgnoreHosts 1, AvailabilityZone 2, Compute 1, \
                     Capacity(VCPU) 1, Capacity(MEMORY_MB) 1"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cloud.engine.consumer_count(), 0);
    }

    #[test]
    fn alternates_are_the_next_best_hosts() {
        // (hosts, max_attempts, alternates)
        for (hosts, attempts, want) in [(5, 3, 2), (5, 1, 0), (2, 3, 1), (1, 3, 0), (8, 5, 4)] {
            let mut cloud = TestCloud::with_scheduler(|s| {
                s.max_attempts = attempts;
                s.multipliers = multipliers(&[("ram", 1.0)]);
            });
            for i in 0..hosts {
                // h0 has the most RAM, so the ranking is h0, h1, …
                let mb = 32768 - i as u64 * 1024;
                cloud.host(host(&format!("h{i}")).inventory("MEMORY_MB", Inventory::new(mb)));
            }
            let sel = cloud.place(&ram(512));
            let s = &sel[0];
            assert_eq!(s.host.name, "h0");
            let alts: Vec<&str> = s.alternates.iter().map(|a| a.name.as_str()).collect();
            let expect: Vec<String> = (1..=want).map(|i| format!("h{i}")).collect();
            assert_eq!(alts, expect, "{hosts} hosts, max_attempts {attempts}");
            // Alternates are not claimed.
            for a in &s.alternates {
                assert_eq!(cloud.used(a.uuid, "MEMORY_MB"), 0);
            }
        }
    }

    #[test]
    fn host_subset_size_picks_only_among_the_top_n() {
        let mut cloud = TestCloud::with_scheduler(|s| {
            s.host_subset_size = 2;
            s.multipliers = multipliers(&[("ram", 1.0)]);
        });
        for i in 0..5u64 {
            cloud.host(
                host(&format!("h{i}")).inventory("MEMORY_MB", Inventory::new(8192 * (i + 1))),
            );
        }
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let sel = cloud.place(&ram(512));
            let s = &sel[0];
            assert!(
                s.host.name == "h4" || s.host.name == "h3",
                "picked {} outside the top 2",
                s.host.name
            );
            assert_eq!(s.alternates.len(), 2);
            assert!(!s.alternates.contains(&s.host));
            seen.insert(s.host.name.clone());
            cloud.engine.release(&s.consumer).unwrap();
        }
        assert_eq!(seen.len(), 2, "both of the top 2 get picked: {seen:?}");
    }

    #[test]
    fn existing_consumer_is_already_exists() {
        let cloud = cloud(2, 32768);
        let placed = cloud.place(&ram(1024))[0].consumer;
        let external = cloud.use_resources(cloud.uuid("h1"), &[("VCPU", 1)]);
        for existing in [placed, external] {
            let mut s = ram(1024);
            s.num_instances = 2;
            s.instance_uuids = vec![Uuid::new_v4(), existing];
            match cloud.engine.select_destinations(&s) {
                Err(EngineError::AlreadyExists {
                    kind: "consumer",
                    id,
                }) => {
                    assert!(id.contains(&existing.to_string()), "{id}");
                    assert!(id.contains("instance_uuids[1]"), "{id}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(cloud.engine.consumer_count(), 2, "nothing new was claimed");
        assert_eq!(
            cloud.used(cloud.uuid("h0"), "VCPU") + cloud.used(cloud.uuid("h1"), "VCPU"),
            2
        );
        let dup = Uuid::new_v4();
        let mut s = ram(1024);
        s.num_instances = 2;
        s.instance_uuids = vec![dup, dup];
        assert!(matches!(
            cloud.engine.select_destinations(&s),
            Err(EngineError::InvalidArgument { field, .. }) if field == "instance_uuids[1]"
        ));
    }

    #[test]
    fn move_claim_confirm_and_revert_restore_usage_exactly() {
        let cloud = cloud(2, 8192);
        cloud.group("g", GroupPolicy::AntiAffinity, None);
        let (a, b) = (cloud.uuid("h0"), cloud.uuid("h1"));
        let mut s = ram(2048);
        s.group = Some("g".into());
        let c = cloud.place_on("h0", &s);
        let snapshot = |cloud: &TestCloud| {
            let p = |u| {
                let i = cloud.engine.get_provider(&u).unwrap();
                (i.usages, i.instances)
            };
            let mut proj = cloud.engine.project_usages("demo", None).unwrap();
            proj.usages.sort();
            (p(a), p(b), proj, cloud.engine.get_group("g").unwrap().hosts)
        };
        let before = snapshot(&cloud);
        assert_eq!(before.3, vec![("h0".to_string(), 1)]);

        // Revert: the destination is dropped, everything is as before.
        let sel = cloud.engine.move_claim(&c, &ram(2048), false).unwrap();
        assert_eq!(sel.host.uuid, b, "the source is excluded");
        assert_eq!(cloud.used(a, "MEMORY_MB"), 2048);
        assert_eq!(cloud.used(b, "MEMORY_MB"), 2048);
        let during = cloud.engine.get_allocations(&c).unwrap();
        assert_eq!(during.allocations[0].provider, a);
        assert_eq!(during.moving[0].provider, b);
        assert_eq!(
            cloud.engine.project_usages("demo", None).unwrap().consumers,
            1,
            "a move is still one consumer"
        );
        assert!(matches!(
            cloud.engine.move_claim(&c, &ram(2048), false),
            Err(EngineError::FailedPrecondition(_))
        ));
        cloud.engine.revert_move(&c).unwrap();
        assert_eq!(snapshot(&cloud), before);
        assert!(cloud.engine.get_allocations(&c).unwrap().moving.is_empty());

        // Confirm: the source is dropped; the consumer now holds exactly the destination.
        cloud.engine.move_claim(&c, &ram(4096), false).unwrap();
        cloud.engine.confirm_move(&c).unwrap();
        let after = snapshot(&cloud);
        assert_eq!(cloud.used(a, "MEMORY_MB"), 0);
        assert_eq!(cloud.used(a, "VCPU"), 0);
        assert_eq!(cloud.used(b, "MEMORY_MB"), 4096);
        assert_eq!(after.0.1, 0);
        assert_eq!(after.1.1, 1);
        assert_eq!(after.3, vec![("h1".to_string(), 1)]);
        let mut proj = after.2.usages.clone();
        proj.sort();
        assert_eq!(proj, vec![("MEMORY_MB".into(), 4096), ("VCPU".into(), 1)]);
        assert_eq!(after.2.consumers, 1);

        // No move in progress; unknown consumer.
        assert!(matches!(
            cloud.engine.confirm_move(&c),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert!(matches!(
            cloud.engine.revert_move(&c),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert!(matches!(
            cloud.engine.move_claim(&Uuid::new_v4(), &ram(1), false),
            Err(EngineError::NotFound {
                kind: "consumer",
                ..
            })
        ));
        cloud.engine.release(&c).unwrap();
        all_usage_zero(&cloud);
    }

    #[test]
    fn move_claim_to_the_same_host_in_an_anti_affinity_group() {
        // A resize in place: the member's own presence on the source must not count against
        // it (Nova's ServerGroupAntiAffinityFilter passes the instance's own host).
        let mut cloud = TestCloud::new();
        cloud.host(host("a"));
        cloud.host(host("tiny").inventory("MEMORY_MB", Inventory::new(512)));
        cloud.group("g", GroupPolicy::AntiAffinity, None);
        let mut s = ram(1024);
        s.group = Some("g".into());
        let c = cloud.place_on("a", &s);
        let a = cloud.uuid("a");
        let sel = cloud.engine.move_claim(&c, &ram(2048), true).unwrap();
        assert_eq!(sel.host.uuid, a);
        assert_eq!(cloud.used(a, "MEMORY_MB"), 3072);
        assert_eq!(cloud.engine.get_provider(&a).unwrap().instances, 2);
        cloud.engine.confirm_move(&c).unwrap();
        assert_eq!(cloud.used(a, "MEMORY_MB"), 2048);
        assert_eq!(cloud.engine.get_provider(&a).unwrap().instances, 1);
        assert_eq!(
            cloud.engine.get_group("g").unwrap().hosts,
            vec![("a".to_string(), 1)]
        );
        // Another member still cannot join it there.
        let mut s = ram(1024);
        s.group = Some("g".into());
        s.force_hosts = vec!["a".into()];
        assert!(cloud.engine.select_destinations(&s).is_err());
    }

    #[test]
    fn move_claim_in_an_affinity_group() {
        let cloud = cloud(3, 32768);
        cloud.group("g", GroupPolicy::Affinity, None);
        let mut s = ram(1024);
        s.group = Some("g".into());
        let first = cloud.place_on("h0", &s);
        // The only member may move: its own presence does not pin it.
        let sel = cloud.engine.move_claim(&first, &ram(1024), false).unwrap();
        assert_ne!(sel.host.name, "h0");
        let dest = sel.host.name.clone();
        cloud.engine.confirm_move(&first).unwrap();
        assert_eq!(
            cloud.engine.get_group("g").unwrap().hosts,
            vec![(dest.clone(), 1)]
        );
        // With another member beside it, it cannot leave that host.
        let second = cloud.place(&s)[0].clone();
        assert_eq!(second.host.name, dest);
        assert!(matches!(
            cloud.engine.move_claim(&first, &ram(1024), false),
            Err(EngineError::NoValidHost(_))
        ));
        assert!(
            cloud
                .engine
                .get_allocations(&first)
                .unwrap()
                .moving
                .is_empty()
        );
        let sel = cloud.engine.move_claim(&first, &ram(2048), true).unwrap();
        assert_eq!(sel.host.name, dest, "resizing in place is fine");
        cloud.engine.revert_move(&first).unwrap();
        assert_eq!(cloud.engine.get_group("g").unwrap().hosts, vec![(dest, 2)]);
    }

    #[test]
    fn replace_allocations_generation_conflicts() {
        let cloud = cloud(1, 8192);
        let h = cloud.uuid("h0");
        let req = |generation: Option<u64>, mb: u64| AllocationRequest {
            consumer_generation: generation,
            project_id: "demo".into(),
            user_id: "u".into(),
            allocations: vec![Allocation {
                provider: h,
                resources: vec![("MEMORY_MB".into(), mb)],
            }],
        };
        let c = Uuid::new_v4();
        // A new consumer given a generation.
        match cloud.engine.replace_allocations(&c, req(Some(1), 1024)) {
            Err(EngineError::GenerationConflict {
                kind: "consumer",
                given,
                current,
                ..
            }) => {
                assert_eq!(given, "1");
                assert!(current.starts_with("none"), "{current}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cloud.engine.consumer_count(), 0);
        assert_eq!(
            cloud
                .engine
                .replace_allocations(&c, req(None, 1024))
                .unwrap(),
            1
        );
        assert_eq!(
            cloud
                .engine
                .replace_allocations(&c, req(Some(1), 2048))
                .unwrap(),
            2
        );
        assert_eq!(cloud.used(h, "MEMORY_MB"), 2048);
        // (given generation, expected `given` text)
        for (g, text) in [(Some(1), "1"), (Some(3), "3"), (None, "none")] {
            match cloud.engine.replace_allocations(&c, req(g, 4096)) {
                Err(EngineError::GenerationConflict { given, current, .. }) => {
                    assert_eq!(given, text);
                    assert_eq!(current, "2");
                }
                other => panic!("{g:?}: {other:?}"),
            }
        }
        assert_eq!(cloud.used(h, "MEMORY_MB"), 2048, "conflicts change nothing");
        assert_eq!(cloud.engine.get_allocations(&c).unwrap().generation, 2);
        // Deleting with the current generation.
        let mut empty = req(Some(2), 1);
        empty.allocations.clear();
        cloud.engine.replace_allocations(&c, empty).unwrap();
        all_usage_zero(&cloud);
        // Provider generations too.
        let g = cloud.engine.get_provider(&h).unwrap().generation;
        let invs = [("MEMORY_MB".to_string(), Inventory::new(4096))];
        match cloud.engine.set_inventories(&h, Some(g + 7), &invs) {
            Err(EngineError::GenerationConflict {
                kind: "resource provider",
                given,
                current,
                ..
            }) => {
                assert_eq!(given, (g + 7).to_string());
                assert_eq!(current, g.to_string());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cloud.engine.set_inventories(&h, Some(g), &invs).unwrap(),
            g + 1
        );
    }

    #[test]
    fn release_delete_and_inventory_preconditions() {
        let cloud = cloud(1, 8192);
        let h = cloud.uuid("h0");
        assert!(matches!(
            cloud.engine.release(&Uuid::new_v4()),
            Err(EngineError::NotFound {
                kind: "consumer",
                ..
            })
        ));
        let c = cloud.use_resources(h, &[("MEMORY_MB", 1024), ("DISK_GB", 10)]);
        assert!(matches!(
            cloud.engine.delete_provider(&h),
            Err(EngineError::FailedPrecondition(_))
        ));
        let keep_mem = [("MEMORY_MB".to_string(), Inventory::new(8192))];
        match cloud.engine.set_inventories(&h, None, &keep_mem) {
            Err(EngineError::FailedPrecondition(m)) => assert!(m.contains("DISK_GB"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Removing an unallocated class and lowering capacity under usage are allowed.
        let lower = [
            ("MEMORY_MB".to_string(), Inventory::new(512)),
            ("DISK_GB".to_string(), Inventory::new(10)),
        ];
        cloud.engine.set_inventories(&h, None, &lower).unwrap();
        assert_eq!(cloud.used(h, "MEMORY_MB"), 1024);
        assert!(
            cloud
                .engine
                .select_destinations(&RequestSpec::resources(&[("MEMORY_MB", 1)]))
                .is_err()
        );
        cloud.engine.release(&c).unwrap();
        assert!(matches!(
            cloud.engine.release(&c),
            Err(EngineError::NotFound { .. })
        ));
        cloud.engine.delete_provider(&h).unwrap();
        assert_eq!(cloud.engine.provider_count(), 0);
        assert!(matches!(
            cloud.engine.get_provider(&h),
            Err(EngineError::NotFound { .. })
        ));
    }

    #[test]
    fn removing_an_allocated_custom_class_is_refused() {
        let mut cloud = TestCloud::new();
        let h = cloud.host(host("gpu").inventory("CUSTOM_GPU", Inventory::new(2)));
        let c = cloud.place(&RequestSpec::resources(&[("CUSTOM_GPU", 1)]))[0].consumer;
        let std_only: Vec<(String, Inventory)> = ["VCPU", "MEMORY_MB", "DISK_GB"]
            .iter()
            .map(|c| (c.to_string(), Inventory::new(8)))
            .collect();
        match cloud.engine.set_inventories(&h, None, &std_only) {
            Err(EngineError::FailedPrecondition(m)) => assert!(m.contains("CUSTOM_GPU"), "{m}"),
            other => panic!("{other:?}"),
        }
        cloud.engine.release(&c).unwrap();
        cloud.engine.set_inventories(&h, None, &std_only).unwrap();
    }
}
