//! Consumers (instances) and their allocations: Placement's `/allocations` semantics with
//! consumer generations, usage per provider and per project, and the shard-level apply /
//! undo that claims and releases share.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use smallvec::SmallVec;
use uuid::Uuid;

use super::quotas::UsageDelta;
use super::{Engine, HostRef};
use crate::error::{EngineError, Result};
use crate::model::{Allocation, ClassId, MAX_AMOUNT, validate_class_name, validate_name};

/// Amounts per class on one provider.
pub(crate) type Amounts = SmallVec<[(ClassId, u64); 4]>;

/// One consumer's allocation on one provider, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostAlloc {
    pub host: HostRef,
    pub provider: Uuid,
    pub amounts: Amounts,
}

/// A consumer and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub project: Arc<str>,
    pub user: Arc<str>,
    /// Bumped by every change to the allocations.
    pub generation: u64,
    pub allocations: Vec<HostAlloc>,
    /// Destination allocations of a move in progress (held with the source until
    /// confirm or revert).
    pub moving: Option<Vec<HostAlloc>>,
    /// Server group the consumer is a member of.
    pub group: Option<Uuid>,
}

/// Usage of one project, and its own quota limits (see `quotas`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProjectUsage {
    pub amounts: BTreeMap<ClassId, u64>,
    pub consumers: u64,
    /// The project's own limits, sorted by key; empty: the default applies to every class.
    pub limits: Vec<super::quotas::OwnLimit>,
}

/// A consumer's allocations as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerAllocations {
    /// The consumer.
    pub consumer: Uuid,
    /// Its generation (pass it back to `replace_allocations`).
    pub generation: u64,
    /// Project.
    pub project_id: String,
    /// User.
    pub user_id: String,
    /// Allocations, by provider.
    pub allocations: Vec<Allocation>,
    /// Destination allocations of a move in progress.
    pub moving: Vec<Allocation>,
    /// Server group, if a member.
    pub group: Option<Uuid>,
}

/// What `replace_allocations` writes.
#[derive(Debug, Clone, Default)]
pub struct AllocationRequest {
    /// `None` for a new consumer; the current generation otherwise.
    pub consumer_generation: Option<u64>,
    /// Project.
    pub project_id: String,
    /// User.
    pub user_id: String,
    /// The complete new set; empty deletes the consumer's allocations.
    pub allocations: Vec<Allocation>,
}

/// A project's usage as reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectUsageReport {
    /// Amount per class name.
    pub usages: Vec<(String, u64)>,
    /// Consumers with allocations.
    pub consumers: u64,
}

impl Engine {
    pub(crate) fn alloc_view(&self, allocs: &[HostAlloc]) -> Vec<Allocation> {
        let classes = self.classes.read();
        let mut v: Vec<Allocation> = allocs
            .iter()
            .map(|a| Allocation {
                provider: a.provider,
                resources: a
                    .amounts
                    .iter()
                    .map(|(c, n)| (classes.name(c.0).to_string(), *n))
                    .collect(),
            })
            .collect();
        v.sort();
        v
    }

    /// A consumer's allocations.
    pub fn get_allocations(&self, consumer: &Uuid) -> Result<ConsumerAllocations> {
        let c = self
            .consumers
            .get(consumer)
            .ok_or_else(|| EngineError::not_found("consumer", consumer))?;
        Ok(ConsumerAllocations {
            consumer: *consumer,
            generation: c.generation,
            project_id: c.project.to_string(),
            user_id: c.user.to_string(),
            allocations: self.alloc_view(&c.allocations),
            moving: c
                .moving
                .as_deref()
                .map(|m| self.alloc_view(m))
                .unwrap_or_default(),
            group: c.group,
        })
    }

    /// Validates and resolves caller-given allocations.
    pub(crate) fn resolve_allocations(
        &self,
        field: &str,
        allocs: &[Allocation],
    ) -> Result<Vec<HostAlloc>> {
        let mut out: Vec<HostAlloc> = Vec::with_capacity(allocs.len());
        for (i, a) in allocs.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if out.iter().any(|h| h.provider == a.provider) {
                return Err(EngineError::invalid(
                    format!("{f}.provider"),
                    format!("provider {} listed twice", a.provider),
                ));
            }
            let host = self.locate(&a.provider)?;
            if a.resources.is_empty() {
                return Err(EngineError::invalid(
                    format!("{f}.resources"),
                    "must not be empty",
                ));
            }
            let mut amounts = Amounts::new();
            for (j, (class, n)) in a.resources.iter().enumerate() {
                let cf = format!("{f}.resources[{j}]");
                validate_class_name(&cf, class)?;
                let id = self.classes.read().get(class).ok_or_else(|| {
                    EngineError::invalid(&cf, format!("unknown resource class {class}"))
                })?;
                if *n == 0 || *n > MAX_AMOUNT {
                    return Err(EngineError::invalid(
                        &cf,
                        format!("amount {n} must be in 1..={MAX_AMOUNT}"),
                    ));
                }
                if amounts.iter().any(|(c, _)| c.0 == id) {
                    return Err(EngineError::invalid(&cf, format!("{class} listed twice")));
                }
                amounts.push((ClassId(id), *n));
            }
            out.push(HostAlloc {
                host,
                provider: a.provider,
                amounts,
            });
        }
        Ok(out)
    }

    /// Atomically swaps `old` for `new` across every shard involved: checks that each new
    /// amount fits (counting what `old` frees on the same provider) and respects the unit
    /// rules, then applies; on any misfit nothing changes. Locks shards in ascending order.
    pub(crate) fn swap_allocations(&self, old: &[HostAlloc], new: &[HostAlloc]) -> Result<()> {
        let mut shard_ids: SmallVec<[u32; 8]> =
            old.iter().chain(new).map(|a| a.host.shard).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: SmallVec<[_; 8]> = shard_ids
            .iter()
            .map(|&s| (s, self.shards[s as usize].write()))
            .collect();
        let idx = |s: u32| shard_ids.iter().position(|&x| x == s).unwrap_or(0);
        // Check.
        for a in new {
            let shard = &guards[idx(a.host.shard)].1;
            let i = a.host.slot as usize;
            if !shard.is_present(i) || shard.uuid[i] != a.provider {
                return Err(EngineError::not_found("resource provider", a.provider));
            }
            for &(class, n) in &a.amounts {
                let freed: u64 = old
                    .iter()
                    .filter(|o| o.provider == a.provider)
                    .flat_map(|o| o.amounts.iter())
                    .filter(|(c, _)| *c == class)
                    .map(|(_, n)| *n)
                    .sum();
                let Some((free, inv)) = shard.free_of(i, class) else {
                    return Err(EngineError::FailedPrecondition(format!(
                        "resource provider {} has no inventory of {}",
                        a.provider,
                        self.class_name(class)
                    )));
                };
                inv.check_amount(n).map_err(|e| {
                    EngineError::invalid(
                        "allocations",
                        format!("{} on {}: {e}", self.class_name(class), a.provider),
                    )
                })?;
                if free + (freed as i64) < n as i64 {
                    return Err(EngineError::FailedPrecondition(format!(
                        "resource provider {} lacks capacity for {n} {}: {} free",
                        a.provider,
                        self.class_name(class),
                        free + freed as i64
                    )));
                }
            }
        }
        // Apply.
        for a in old {
            let shard = &mut guards[idx(a.host.shard)].1;
            let i = a.host.slot as usize;
            for &(class, n) in &a.amounts {
                shard.sub_usage(i, class, n);
            }
            shard.instances[i] = shard.instances[i].saturating_sub(1);
            shard.generation[i] += 1;
        }
        for a in new {
            let shard = &mut guards[idx(a.host.shard)].1;
            let i = a.host.slot as usize;
            for &(class, n) in &a.amounts {
                shard.add_usage(i, class, n);
            }
            shard.instances[i] += 1;
            shard.generation[i] += 1;
        }
        Ok(())
    }

    pub(crate) fn project_add(
        &self,
        project: &Arc<str>,
        allocs: &[HostAlloc],
        sign: i8,
        consumer_delta: i8,
    ) {
        let mut p = self.projects.entry(project.clone()).or_default();
        for a in allocs {
            for &(c, n) in &a.amounts {
                let e = p.amounts.entry(c).or_default();
                *e = if sign > 0 {
                    *e + n
                } else {
                    e.saturating_sub(n)
                };
            }
        }
        p.consumers = match consumer_delta {
            d if d > 0 => p.consumers + 1,
            d if d < 0 => p.consumers.saturating_sub(1),
            _ => p.consumers,
        };
    }

    /// Replaces a consumer's allocations (Placement's `PUT /allocations/{consumer}`):
    /// all-or-nothing across providers, with the consumer-generation check. An empty set
    /// deletes the consumer.
    pub fn replace_allocations(&self, consumer: &Uuid, req: AllocationRequest) -> Result<u64> {
        self.writable()?;
        validate_name("project_id", &req.project_id)?;
        validate_name("user_id", &req.user_id)?;
        let new = self.resolve_allocations("allocations", &req.allocations)?;
        match self.consumers.entry(*consumer) {
            Entry::Vacant(v) => {
                if let Some(g) = req.consumer_generation {
                    return Err(EngineError::GenerationConflict {
                        kind: "consumer",
                        id: consumer.to_string(),
                        given: g.to_string(),
                        current: "none (new consumer)".into(),
                    });
                }
                if new.is_empty() {
                    return Ok(0);
                }
                let project: Arc<str> = Arc::from(req.project_id.as_str());
                let usage = UsageDelta::consumers(1).add_allocs(&new);
                self.charge(&project, &usage)?;
                if let Err(e) = self.swap_allocations(&[], &new) {
                    self.uncharge(&project, &usage.reversed());
                    return Err(e);
                }
                let c = v.insert(Consumer {
                    project,
                    user: Arc::from(req.user_id.as_str()),
                    generation: 1,
                    allocations: new,
                    moving: None,
                    group: None,
                });
                self.log_consumer(consumer, &c, &[]);
                Engine::bump(&self.stats.claims);
                Ok(1)
            }
            Entry::Occupied(mut o) => {
                let c = o.get_mut();
                if req.consumer_generation != Some(c.generation) {
                    return Err(EngineError::GenerationConflict {
                        kind: "consumer",
                        id: consumer.to_string(),
                        given: req
                            .consumer_generation
                            .map_or("none".into(), |g| g.to_string()),
                        current: c.generation.to_string(),
                    });
                }
                if c.moving.is_some() {
                    return Err(EngineError::FailedPrecondition(format!(
                        "consumer {consumer} is in the middle of a move; confirm or revert it first"
                    )));
                }
                // The quota: only what grows is checked, and charged before the swap. In
                // the same project that is the difference; a consumer moving to another
                // project is a new consumer there; an empty set is a release (no check).
                let same_project = *c.project == *req.project_id;
                let charged: Option<(Arc<str>, UsageDelta)> = if new.is_empty() {
                    None
                } else if same_project {
                    Some((
                        c.project.clone(),
                        UsageDelta::consumers(0)
                            .add_allocs(&new)
                            .sub_allocs(&c.allocations),
                    ))
                } else {
                    Some((
                        Arc::from(req.project_id.as_str()),
                        UsageDelta::consumers(1).add_allocs(&new),
                    ))
                };
                if let Some((p, usage)) = &charged {
                    self.charge(p, usage)?;
                }
                // Hold the group's lock across the swap so no anti-affine claim sees the
                // member half-moved.
                let group = c.group.and_then(|g| self.groups.get(&g).map(|r| r.clone()));
                let mut group = group.as_ref().map(|g| g.lock());
                if let Err(e) = self.swap_allocations(&c.allocations, &new) {
                    drop(group);
                    if let Some((p, usage)) = &charged {
                        self.uncharge(p, &usage.reversed());
                    }
                    return Err(e);
                }
                if let Some(g) = group.as_mut() {
                    g.forget(consumer);
                    for a in &new {
                        g.add_host(*consumer, a.host);
                    }
                }
                drop(group);
                if new.is_empty() {
                    let old_project = c.project.clone();
                    self.project_add(&old_project, &c.allocations, -1, -1);
                    self.log_consumer_gone(consumer, &c.allocations);
                    let c = o.remove();
                    Engine::bump(&self.stats.releases);
                    return Ok(c.generation + 1);
                }
                if let Some((p, _)) = charged
                    && !same_project
                {
                    let old_project = std::mem::replace(&mut c.project, p);
                    self.project_add(&old_project, &c.allocations, -1, -1);
                }
                c.user = Arc::from(req.user_id.as_str());
                let old = std::mem::replace(&mut c.allocations, new);
                c.generation += 1;
                self.log_consumer(consumer, c, &old);
                Ok(c.generation)
            }
        }
    }

    /// Releases everything a consumer holds (both sides of a move, group membership).
    /// `NotFound` if it holds nothing.
    pub fn release(&self, consumer: &Uuid) -> Result<()> {
        self.writable()?;
        self.release_unchecked(consumer)
    }

    /// `release` without the store check: undoing a claim of the same request must work
    /// even if the disk failed in between (the undo's record waits with the claim's).
    pub(crate) fn release_unchecked(&self, consumer: &Uuid) -> Result<()> {
        match self.consumers.entry(*consumer) {
            Entry::Vacant(_) => Err(EngineError::not_found("consumer", consumer)),
            Entry::Occupied(o) => {
                let c = o.get();
                let mut all = c.allocations.clone();
                all.extend(c.moving.iter().flatten().cloned());
                let group = c.group.and_then(|g| self.groups.get(&g).map(|r| r.clone()));
                let mut group = group.as_ref().map(|g| g.lock());
                // Cannot fail: removing usage needs no capacity.
                self.swap_allocations(&all, &[])?;
                if let Some(g) = group.as_mut() {
                    g.forget(consumer);
                }
                drop(group);
                let project = c.project.clone();
                self.project_add(&project, &all, -1, -1);
                self.log_consumer_gone(consumer, &all);
                o.remove();
                Engine::bump(&self.stats.releases);
                Ok(())
            }
        }
    }

    /// Usage of a provider: `(generation, usages)`.
    pub fn provider_usages(
        &self,
        provider: &Uuid,
    ) -> Result<(u64, Vec<crate::model::ProviderUsage>)> {
        let info = self.get_provider(provider)?;
        Ok((info.generation, info.usages))
    }

    /// Usage of a project (optionally one user within it, computed from the consumers).
    pub fn project_usages(&self, project: &str, user: Option<&str>) -> Result<ProjectUsageReport> {
        validate_name("project_id", project)?;
        // Gather first, name afterwards: the class table is a leaf lock (see `state`) and
        // must not be held while visiting consumers, whose entries claims hold while they
        // read that table (with a class writer queued, the three would deadlock).
        let (amounts, consumers): (Vec<(ClassId, u64)>, u64) = if let Some(user) = user {
            validate_name("user_id", user)?;
            let mut amounts: BTreeMap<ClassId, u64> = BTreeMap::new();
            let mut consumers = 0;
            for c in self.consumers.iter() {
                if &*c.project == project && &*c.user == user {
                    consumers += 1;
                    for a in c.allocations.iter().chain(c.moving.iter().flatten()) {
                        for &(cl, n) in &a.amounts {
                            *amounts.entry(cl).or_default() += n;
                        }
                    }
                }
            }
            (amounts.into_iter().collect(), consumers)
        } else {
            match self.projects.get(project) {
                Some(p) => (
                    p.amounts
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(c, n)| (*c, *n))
                        .collect(),
                    p.consumers,
                ),
                None => return Ok(ProjectUsageReport::default()),
            }
        };
        let classes = self.classes.read();
        Ok(ProjectUsageReport {
            usages: amounts
                .into_iter()
                .map(|(c, n)| (classes.name(c.0).to_string(), n))
                .collect(),
            consumers,
        })
    }

    /// Every consumer's uuid (for audits and reconciliation).
    pub fn consumer_ids(&self) -> Vec<Uuid> {
        self.consumers.iter().map(|c| *c.key()).collect()
    }
}
