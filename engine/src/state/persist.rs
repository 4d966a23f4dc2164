//! The engine's side of durability: the records its changes write, the full dump a
//! snapshot takes, and the rebuild from what the store read at start-up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use uuid::Uuid;

use super::consumers::{Amounts, Consumer, HostAlloc};
use super::shard::Shard;
use super::{Engine, HostRef};
use crate::error::{EngineError, Result};
use crate::model::{
    ClassId, FlavorSpec, GroupPolicy, ImageSpec, Inventory, MAX_AMOUNT, ProviderSpec,
    ServerGroupSpec,
};
use crate::store::record::{
    AggregateMetadataRec, AllocationRec, Change, ConsumerGone, ConsumerRec, FlavorRec, GroupRec,
    ImageRec, InventoryRec, ProviderGeneration, ProviderRec, Record,
};
use crate::store::{State, Store};

/// What a rebuild restored, and what it could not.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Providers restored.
    pub providers: usize,
    /// Consumers restored.
    pub consumers: usize,
    /// Objects that could not be restored, and why.
    pub skipped: Vec<String>,
}

impl Engine {
    /// Logs every change from now on to `store` (call after [`Engine::restore`]).
    pub fn attach_store(&self, store: Arc<Store>) {
        let _ = self.store.set(store);
    }

    /// The store changes go to, if any.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    /// `Unavailable` while the store cannot write: checked before any change, so nothing
    /// changes in memory that could not be made durable.
    #[inline]
    pub(crate) fn writable(&self) -> Result<()> {
        match self.store.get() {
            Some(s) => s
                .writable()
                .map_err(|e| EngineError::Unavailable(e.to_string())),
            None => Ok(()),
        }
    }

    /// Logs a change (built only when there is a store).
    #[inline]
    pub(crate) fn log(&self, change: impl FnOnce() -> Change) {
        if let Some(s) = self.store.get() {
            s.append(&Record {
                change: Some(change()),
            });
        }
    }

    pub(crate) fn provider_rec(&self, s: &Shard, i: usize) -> ProviderRec {
        let info = self.info_locked(s, i);
        ProviderRec {
            uuid: info.uuid.as_bytes().to_vec(),
            name: info.name,
            generation: info.generation,
            availability_zone: info.availability_zone,
            traits: info.traits,
            aggregates: info.aggregates,
            inventories: info
                .usages
                .into_iter()
                .map(|u| InventoryRec {
                    class: u.class,
                    total: u.inventory.total,
                    reserved: u.inventory.reserved,
                    min_unit: u.inventory.min_unit,
                    max_unit: u.inventory.max_unit,
                    step_size: u.inventory.step_size,
                    allocation_ratio: u.inventory.allocation_ratio,
                })
                .collect(),
            capabilities: info.capabilities,
            arch: info.arch,
            hypervisor_type: info.hypervisor_type,
            hypervisor_version: info.hypervisor_version,
        }
    }

    /// Logs provider slot `i` of `s` (the caller holds the shard's write lock).
    pub(crate) fn log_provider(&self, s: &Shard, i: usize) {
        self.log(|| Change::Provider(self.provider_rec(s, i)));
    }

    fn alloc_recs(&self, allocs: &[HostAlloc]) -> Vec<AllocationRec> {
        let classes = self.classes.read();
        allocs
            .iter()
            .map(|a| AllocationRec {
                provider: a.provider.as_bytes().to_vec(),
                classes: a
                    .amounts
                    .iter()
                    .map(|(c, _)| classes.name(c.0).to_string())
                    .collect(),
                amounts: a.amounts.iter().map(|(_, n)| *n).collect(),
            })
            .collect()
    }

    /// Current generations of the providers `allocs` touch.
    fn generations<'a>(
        &self,
        allocs: impl Iterator<Item = &'a HostAlloc>,
    ) -> Vec<ProviderGeneration> {
        allocs
            .filter_map(|a| {
                let s = self.shards[a.host.shard as usize].read();
                let i = a.host.slot as usize;
                (s.is_present(i) && s.uuid[i] == a.provider).then(|| ProviderGeneration {
                    provider: a.provider.as_bytes().to_vec(),
                    generation: s.generation[i],
                })
            })
            .collect()
    }

    fn consumer_rec(
        &self,
        uuid: &Uuid,
        c: &Consumer,
        with_generations: bool,
        left: &[HostAlloc],
    ) -> ConsumerRec {
        ConsumerRec {
            uuid: uuid.as_bytes().to_vec(),
            project: c.project.to_string(),
            user: c.user.to_string(),
            generation: c.generation,
            allocations: self.alloc_recs(&c.allocations),
            moving: c
                .moving
                .as_deref()
                .map_or_else(Vec::new, |m| self.alloc_recs(m)),
            group: c.group.map_or_else(Vec::new, |g| g.as_bytes().to_vec()),
            provider_generations: if with_generations {
                self.generations(
                    c.allocations
                        .iter()
                        .chain(c.moving.iter().flatten())
                        .chain(left),
                )
            } else {
                Vec::new()
            },
        }
    }

    /// Logs a consumer's new state (the caller holds its entry); `left` are allocations
    /// the change dropped (their providers' generations moved too).
    pub(crate) fn log_consumer(&self, uuid: &Uuid, c: &Consumer, left: &[HostAlloc]) {
        self.log(|| Change::Consumer(self.consumer_rec(uuid, c, true, left)));
    }

    /// Logs that a consumer released `left` (the caller holds its entry).
    pub(crate) fn log_consumer_gone(&self, uuid: &Uuid, left: &[HostAlloc]) {
        self.log(|| {
            Change::ConsumerDeleted(ConsumerGone {
                uuid: uuid.as_bytes().to_vec(),
                provider_generations: self.generations(left.iter()),
            })
        });
    }

    pub(crate) fn group_rec(g: &super::groups::GroupState) -> GroupRec {
        GroupRec {
            uuid: g.id.as_bytes().to_vec(),
            name: g.name.clone(),
            policy: g.policy.as_str().to_string(),
            max_server_per_host: g.max_per_host,
            project: g.project.clone(),
        }
    }

    /// Every object of the engine as records (a snapshot's dump). Runs while changes go
    /// on; each object is read under its own lock.
    pub fn export(&self, out: &mut dyn FnMut(Record)) {
        let mut emit = |c: Change| out(Record { change: Some(c) });
        let custom: Vec<String> = self
            .classes
            .read()
            .names()
            .filter(|c| c.starts_with("CUSTOM_"))
            .map(str::to_string)
            .collect();
        for c in custom {
            emit(Change::ResourceClass(c));
        }
        let meta: Vec<(u32, std::collections::BTreeMap<String, String>)> = self
            .agg_metadata
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, metadata) in meta {
            let aggregate = self.aggregates.read().name(id).to_string();
            emit(Change::AggregateMetadata(AggregateMetadataRec {
                aggregate,
                metadata,
            }));
        }
        for q in self.quota_recs() {
            emit(Change::Quota(q));
        }
        for f in self.list_flavors() {
            emit(Change::Flavor(flavor_rec(&f)));
        }
        for i in self.list_images() {
            emit(Change::Image(image_rec(&i)));
        }
        let groups: Vec<_> = self.groups.iter().map(|g| g.value().clone()).collect();
        for g in groups {
            let rec = Self::group_rec(&g.lock());
            emit(Change::Group(rec));
        }
        for shard in self.shards.iter() {
            let recs: Vec<ProviderRec> = {
                let s = shard.read();
                (0..s.slots())
                    .filter(|&i| s.is_present(i))
                    .map(|i| self.provider_rec(&s, i))
                    .collect()
            };
            for r in recs {
                emit(Change::Provider(r));
            }
        }
        // Consumers: records without provider generations (the providers' records above
        // carry them); gathered a batch at a time so no map guard is held while writing.
        let ids = self.consumer_ids();
        for chunk in ids.chunks(4096) {
            let recs: Vec<ConsumerRec> = chunk
                .iter()
                .filter_map(|u| {
                    self.consumers
                        .get(u)
                        .map(|c| self.consumer_rec(u, &c, false, &[]))
                })
                .collect();
            for r in recs {
                emit(Change::Consumer(r));
            }
        }
    }

    /// Rebuilds the engine from what the store read. Call on a new, empty engine, before
    /// [`Engine::attach_store`] (a rebuild writes no records).
    pub fn restore(&self, state: &State) -> RestoreReport {
        let mut report = RestoreReport::default();
        for c in &state.classes {
            if let Err(e) = self.create_resource_class(c)
                && !matches!(e, EngineError::AlreadyExists { .. })
            {
                report.skipped.push(format!("resource class {c}: {e}"));
            }
        }
        for (agg, meta) in &state.aggregate_metadata {
            if let Err(e) = self.set_aggregate_metadata(agg, meta.clone()) {
                report
                    .skipped
                    .push(format!("aggregate {agg} metadata: {e}"));
            }
        }
        for q in state.quotas.values() {
            if let Err(e) = self.restore_quota(q) {
                report
                    .skipped
                    .push(format!("quota of project {}: {e}", q.project));
            }
        }
        for f in state.flavors.values() {
            if let Err(e) = self.create_flavor(flavor_spec(f)) {
                report.skipped.push(format!("flavor {}: {e}", f.id));
            }
        }
        for (id, i) in &state.images {
            let spec = ImageSpec {
                id: Some(*id),
                name: i.name.clone(),
                properties: i.properties.clone(),
            };
            if let Err(e) = self.create_image(spec) {
                report.skipped.push(format!("image {id}: {e}"));
            }
        }
        for (id, g) in &state.groups {
            let r = g.policy.parse::<GroupPolicy>().and_then(|policy| {
                self.create_group(ServerGroupSpec {
                    id: Some(*id),
                    name: g.name.clone(),
                    policy,
                    max_server_per_host: (policy == GroupPolicy::AntiAffinity)
                        .then_some(g.max_server_per_host),
                    project_id: g.project.clone(),
                })
            });
            if let Err(e) = r {
                report.skipped.push(format!("server group {id}: {e}"));
            }
        }
        for (id, p) in &state.providers {
            let spec = ProviderSpec {
                uuid: Some(*id),
                name: p.name.clone(),
                availability_zone: Some(p.availability_zone.clone()),
                traits: p.traits.clone(),
                aggregates: p.aggregates.clone(),
                inventories: p
                    .inventories
                    .iter()
                    .map(|i| {
                        (
                            i.class.clone(),
                            Inventory {
                                total: i.total,
                                reserved: i.reserved,
                                min_unit: i.min_unit,
                                max_unit: i.max_unit,
                                step_size: i.step_size,
                                allocation_ratio: i.allocation_ratio,
                            },
                        )
                    })
                    .collect(),
                capabilities: p.capabilities.clone(),
                arch: p.arch.clone(),
                hypervisor_type: p.hypervisor_type.clone(),
                hypervisor_version: p.hypervisor_version.clone(),
            };
            match self.create_provider(spec) {
                Ok(_) => {
                    report.providers += 1;
                    let generation = state
                        .provider_generations
                        .get(id)
                        .copied()
                        .unwrap_or(0)
                        .max(p.generation);
                    if let Ok(r) = self.locate(id) {
                        self.shards[r.shard as usize].write().generation[r.slot as usize] =
                            generation;
                    }
                }
                Err(e) => report.skipped.push(format!("resource provider {id}: {e}")),
            }
        }
        // Consumers in parallel. Class names resolve through a table read once; each
        // thread shares the project and user strings it meets (a million consumers hold a
        // few hundred distinct ones) and adds up project usage locally, merged at the end.
        let classes: Vec<(String, ClassId)> = {
            let t = self.classes.read();
            t.names()
                .enumerate()
                .map(|(i, n)| (n.to_string(), ClassId(i as u32)))
                .collect()
        };
        let (restored, skipped, usage) = state
            .consumers
            .par_iter()
            .fold(RestoreAcc::default, |mut acc, (id, c)| {
                match self.restore_consumer(id, c, &classes, &mut acc) {
                    Ok(()) => acc.restored += 1,
                    Err(e) => acc.skipped.push(e),
                }
                acc
            })
            .map(|acc| (acc.restored, acc.skipped, acc.usage))
            .reduce(
                || (0, Vec::new(), HashMap::new()),
                |(n1, mut s1, mut u1), (n2, s2, u2)| {
                    s1.extend(s2);
                    for (project, (amounts, consumers)) in u2 {
                        let e = u1.entry(project).or_insert_with(|| (BTreeMap::new(), 0));
                        for (c, n) in amounts {
                            *e.0.entry(c).or_default() += n;
                        }
                        e.1 += consumers;
                    }
                    (n1 + n2, s1, u1)
                },
            );
        for (project, (amounts, consumers)) in usage {
            let mut p = self.projects.entry(project).or_default();
            for (c, n) in amounts {
                *p.amounts.entry(c).or_default() += n;
            }
            p.consumers += consumers;
        }
        report.consumers = restored;
        report.skipped.extend(skipped);
        report
    }

    fn resolve_recs(
        &self,
        recs: &[AllocationRec],
        classes: &[(String, ClassId)],
    ) -> std::result::Result<Vec<HostAlloc>, String> {
        let mut out = Vec::with_capacity(recs.len());
        for a in recs {
            let provider = Uuid::from_slice(&a.provider)
                .map_err(|_| "an allocation's provider uuid is not 16 bytes".to_string())?;
            let host: HostRef = self
                .locate(&provider)
                .map_err(|_| format!("its provider {provider} does not exist"))?;
            if a.classes.len() != a.amounts.len() {
                return Err("classes and amounts differ in length".into());
            }
            let mut amounts = Amounts::new();
            for (class, n) in a.classes.iter().zip(&a.amounts) {
                let id = classes
                    .iter()
                    .find(|(name, _)| name == class)
                    .map(|(_, id)| *id)
                    .ok_or_else(|| format!("unknown resource class {class}"))?;
                if *n == 0 || *n > MAX_AMOUNT {
                    return Err(format!("{n} {class} is outside 1..={MAX_AMOUNT}"));
                }
                if amounts.iter().any(|(c, _)| *c == id) {
                    return Err(format!("{class} listed twice"));
                }
                amounts.push((id, *n));
            }
            out.push(HostAlloc {
                host,
                provider,
                amounts,
            });
        }
        Ok(out)
    }

    /// Puts back one consumer: its usage on each provider (without a capacity check: it
    /// fitted when it was claimed, and an inventory may since have shrunk under it, as
    /// Placement allows), its group membership, and (into `acc`) its project's usage.
    fn restore_consumer(
        &self,
        id: &Uuid,
        c: &ConsumerRec,
        classes: &[(String, ClassId)],
        acc: &mut RestoreAcc,
    ) -> std::result::Result<(), String> {
        let fail = |e: String| format!("consumer {id}: {e}");
        let allocations = self.resolve_recs(&c.allocations, classes).map_err(fail)?;
        if allocations.is_empty() {
            return Err(fail("it holds no allocations".into()));
        }
        let moving = self.resolve_recs(&c.moving, classes).map_err(fail)?;
        let group = if c.group.is_empty() {
            None
        } else {
            Some(
                Uuid::from_slice(&c.group)
                    .map_err(|_| fail("its group uuid is not 16 bytes".into()))?,
            )
        };
        // Each provider must still have an inventory of every class; checked and applied
        // under one write lock per provider, undone if a later one fails.
        let all: Vec<&HostAlloc> = allocations.iter().chain(&moving).collect();
        for (k, a) in all.iter().enumerate() {
            let mut s = self.shards[a.host.shard as usize].write();
            let i = a.host.slot as usize;
            if let Some((class, _)) = a
                .amounts
                .iter()
                .find(|(class, _)| s.free_of(i, *class).is_none())
            {
                drop(s);
                for done in &all[..k] {
                    let mut s = self.shards[done.host.shard as usize].write();
                    let j = done.host.slot as usize;
                    for &(class, n) in &done.amounts {
                        s.sub_usage(j, class, n);
                    }
                    s.instances[j] = s.instances[j].saturating_sub(1);
                }
                let name = classes
                    .iter()
                    .find(|(_, c)| c == class)
                    .map_or("?", |(n, _)| n.as_str());
                return Err(fail(format!(
                    "provider {} has no {name} inventory",
                    a.provider
                )));
            }
            for &(class, n) in &a.amounts {
                s.add_usage(i, class, n);
            }
            s.instances[i] += 1;
        }
        let project = acc.shared(&c.project);
        let user = acc.shared(&c.user);
        let usage = acc
            .usage
            .entry(project.clone())
            .or_insert_with(|| (BTreeMap::new(), 0));
        for a in &all {
            for &(class, n) in &a.amounts {
                *usage.0.entry(class).or_default() += n;
            }
        }
        usage.1 += 1;
        if let Some(g) = group.and_then(|g| self.groups.get(&g).map(|r| r.clone())) {
            let mut g = g.lock();
            for a in &all {
                g.add_host(*id, a.host);
            }
        }
        self.consumers.insert(
            *id,
            Consumer {
                project,
                user,
                generation: c.generation,
                allocations,
                moving: (!c.moving.is_empty()).then_some(moving),
                group,
            },
        );
        Ok(())
    }
}

/// One rebuild thread's tally (see `restore`).
#[derive(Default)]
struct RestoreAcc {
    restored: usize,
    skipped: Vec<String>,
    /// project → (amount per class, consumers).
    usage: HashMap<Arc<str>, (BTreeMap<ClassId, u64>, u64)>,
    strings: HashMap<String, Arc<str>>,
}

impl RestoreAcc {
    /// One `Arc<str>` per distinct string.
    fn shared(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(s.to_string(), a.clone());
        a
    }
}

/// A flavor as a record.
pub fn flavor_rec(f: &crate::model::Flavor) -> FlavorRec {
    FlavorRec {
        id: f.id.clone(),
        name: f.name.clone(),
        vcpus: f.vcpus,
        ram_mb: f.ram_mb,
        disk_gb: f.disk_gb,
        extra_specs: f.extra_specs.clone(),
    }
}

/// The spec that makes a flavor record's flavor again.
pub fn flavor_spec(f: &FlavorRec) -> FlavorSpec {
    FlavorSpec {
        id: Some(f.id.clone()),
        name: f.name.clone(),
        vcpus: f.vcpus,
        ram_mb: f.ram_mb,
        disk_gb: f.disk_gb,
        extra_specs: f.extra_specs.clone(),
    }
}

/// An image as a record.
pub fn image_rec(i: &crate::model::Image) -> ImageRec {
    ImageRec {
        uuid: i.id.as_bytes().to_vec(),
        name: i.name.clone(),
        properties: i.properties.clone(),
    }
}
