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

/// What one shard contributed to a scan.
struct ShardScan {
    shard: u32,
    slots: Vec<u32>,
    /// Weigher-major raw values: `raw[w * slots.len() + k]`.
    raw: Vec<f64>,
}

/// A whole scan: candidates per shard plus the normalisation bounds.
struct Scan {
    shards: Vec<ShardScan>,
    /// Indices of the weighers that ran.
    weighers: SmallVec<[usize; 8]>,
    min: SmallVec<[f64; 8]>,
    max: SmallVec<[f64; 8]>,
    hosts: u32,
    rejections: Rejections,
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
        let per_shard = |si: usize| -> (ShardScan, u32, Rejections) {
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
            let slots = bits_to_slots(&alive);
            let n = slots.len();
            let mut raw = vec![0.0; n * wsel.len()];
            if n > 0 {
                for (k, &wi) in wsel.iter().enumerate() {
                    self.weighers[wi].weigh(
                        ctx,
                        &shard,
                        si as u32,
                        &slots,
                        &mut raw[k * n..(k + 1) * n],
                    );
                }
            }
            (
                ShardScan {
                    shard: si as u32,
                    slots,
                    raw,
                },
                hosts,
                rej,
            )
        };
        let parts: Vec<(ShardScan, u32, Rejections)> =
            if self.index.len() > self.config.scheduler.parallel_threshold {
                (0..self.shards.len())
                    .into_par_iter()
                    .map(per_shard)
                    .collect()
            } else {
                (0..self.shards.len()).map(per_shard).collect()
            };
        let mut scan = Scan {
            shards: Vec::with_capacity(parts.len()),
            min: SmallVec::from_elem(f64::INFINITY, wsel.len()),
            max: SmallVec::from_elem(f64::NEG_INFINITY, wsel.len()),
            weighers: wsel,
            hosts: 0,
            rejections: Rejections::default(),
        };
        for (ss, hosts, rej) in parts {
            scan.hosts += hosts;
            scan.rejections.merge(&rej);
            let n = ss.slots.len();
            if n == 0 {
                continue;
            }
            for k in 0..scan.weighers.len() {
                for &v in &ss.raw[k * n..(k + 1) * n] {
                    scan.min[k] = scan.min[k].min(v);
                    scan.max[k] = scan.max[k].max(v);
                }
            }
            scan.shards.push(ss);
        }
        scan
    }

    /// The best `k` candidates of a scan, best first (ties keep scan order).
    fn top(&self, scan: &Scan, k: usize) -> Vec<Ranked> {
        let mults: SmallVec<[f64; 8]> = scan
            .weighers
            .iter()
            .map(|&w| self.weighers[w].multiplier())
            .collect();
        let mut best: Vec<Ranked> = Vec::with_capacity(k.min(1024) + 1);
        for (si, ss) in scan.shards.iter().enumerate() {
            let n = ss.slots.len();
            for j in 0..n {
                let mut score = 0.0;
                for (w, m) in mults.iter().enumerate() {
                    score += m * normalize(ss.raw[w * n + j], scan.min[w], scan.max[w]);
                }
                if best.len() < k || best.last().is_some_and(|b| score > b.0) {
                    let pos = best.partition_point(|b| b.0 >= score);
                    best.insert(pos, (score, si as u32, j as u32));
                    best.truncate(k);
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
        let own = g.members.get(consumer).is_some_and(|hs| hs.contains(&h)) as u32;
        match g.policy {
            GroupPolicy::AntiAffinity => g.count(h) - own < g.max_per_host,
            GroupPolicy::Affinity => {
                let others = g
                    .hosts
                    .iter()
                    .filter(|(host, n)| **n > (**host == h) as u32 * own)
                    .count();
                others == 0 || g.count(h) > own
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
        if let Some(g) = group {
            if !Self::group_allows(g, h, consumer) {
                return None;
            }
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
        for _round in 0..CLAIM_ROUNDS {
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
        let detail =
            format!("every candidate changed under {CLAIM_ROUNDS} rounds of claims; retry");
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
        let mut done: Vec<Selection> = Vec::with_capacity(count);
        for (n, consumer) in uuids.iter().enumerate() {
            let result = match self.consumers.entry(*consumer) {
                Entry::Occupied(_) => Err(EngineError::exists("consumer", consumer)),
                Entry::Vacant(v) => {
                    let mut slot = Some(v);
                    self.place(&ctx, consumer, |alloc| {
                        let allocations = vec![alloc];
                        self.project_add(&ctx.project, &allocations, 1, 1);
                        if let Some(v) = slot.take() {
                            v.insert(Consumer {
                                project: ctx.project.clone(),
                                user: ctx.user.clone(),
                                generation: 1,
                                allocations,
                                moving: None,
                                group: ctx.group.as_ref().map(|g| g.id),
                            });
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
                        let _ = self.release(&s.consumer);
                    }
                    if let EngineError::NoValidHost(nvh) = &mut e {
                        if count > 1 {
                            let d = format!("instance {} of {count}; none were placed", n + 1);
                            nvh.detail = if nvh.detail.is_empty() {
                                d
                            } else {
                                format!("{d}; {}", nvh.detail)
                            };
                        }
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
                let n = ss.slots.len();
                let contributions = scan
                    .weighers
                    .iter()
                    .enumerate()
                    .map(|(w, &wi)| {
                        let weigher = &self.weighers[wi];
                        let raw = ss.raw[w * n + r.2 as usize];
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
    /// `allow_same_host`. The consumer's group applies when `spec` names none.
    pub fn move_claim(
        &self,
        consumer: &Uuid,
        spec: &RequestSpec,
        allow_same_host: bool,
    ) -> Result<Selection> {
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
        spec.instance_uuids.clear();
        if spec.group.is_none() {
            spec.group = group.map(|g| g.to_string());
        }
        if !allow_same_host {
            spec.ignore_hosts.extend(hosts.iter().map(Uuid::to_string));
        }
        let ctx = RequestContext::prepare(self, &spec)?;
        match self.consumers.entry(*consumer) {
            Entry::Vacant(_) => Err(EngineError::not_found("consumer", consumer)),
            Entry::Occupied(mut o) => {
                if o.get().moving.is_some() {
                    return Err(EngineError::FailedPrecondition(format!(
                        "consumer {consumer} is already moving"
                    )));
                }
                let c = o.get_mut();
                self.place(&ctx, consumer, |alloc| {
                    let dest = vec![alloc];
                    self.project_add(&c.project, &dest, 1, 0);
                    c.moving = Some(dest);
                    c.generation += 1;
                    if c.group.is_none() {
                        c.group = ctx.group.as_ref().map(|g| g.id);
                    }
                    Ok(())
                })
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
        let mut c = self
            .consumers
            .get_mut(consumer)
            .ok_or_else(|| EngineError::not_found("consumer", consumer))?;
        let Some(dest) = c.moving.take() else {
            return Err(EngineError::FailedPrecondition(format!(
                "consumer {consumer} has no move in progress"
            )));
        };
        let (drop_allocs, keep) = if confirm {
            (std::mem::replace(&mut c.allocations, dest), true)
        } else {
            (dest, false)
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
        let _ = keep;
        Ok(())
    }
}

/// Slot numbers of the set bits.
fn bits_to_slots(bits: &[u64]) -> Vec<u32> {
    let mut out = Vec::with_capacity(bits.iter().map(|w| w.count_ones() as usize).sum());
    for (w, &word) in bits.iter().enumerate() {
        let mut b = word;
        while b != 0 {
            out.push(w as u32 * 64 + b.trailing_zeros());
            b &= b - 1;
        }
    }
    out
}
