//! Resource-provider writes and reads: create, update, delete, inventories, traits,
//! aggregates, liveness and the per-host counters the scheduler reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use uuid::Uuid;

use super::shard::{ColdHost, DISABLED, ISOLATED, NewHost, Shard, UP};
use super::{Engine, HostRef};
use crate::error::{EngineError, Result};
use crate::model::{
    ClassId, Inventory, ProviderInfo, ProviderSpec, ProviderUpdate, ProviderUsage,
    STANDARD_CLASSES, validate_aggregate, validate_az, validate_class_name, validate_name,
    validate_trait,
};
use crate::store::record::{AggregateMetadataRec, Change};

/// The trait that takes a host out of scheduling (Nova's `COMPUTE_STATUS_DISABLED`).
pub const DISABLED_TRAIT: &str = "COMPUTE_STATUS_DISABLED";

/// Filters for `list_providers`.
#[derive(Debug, Clone, Default)]
pub struct ProviderFilter {
    /// Substring of the name.
    pub name_contains: Option<String>,
    /// Exact availability zone.
    pub availability_zone: Option<String>,
    /// Traits all required.
    pub required_traits: Vec<String>,
    /// Member of any of these aggregates.
    pub member_of: Vec<String>,
    /// At least this much free of each class.
    pub resources: Vec<(String, u64)>,
}

impl Engine {
    /// Finds a provider by uuid.
    pub(crate) fn locate(&self, uuid: &Uuid) -> Result<HostRef> {
        self.index
            .get(uuid)
            .map(|r| *r)
            .ok_or_else(|| EngineError::not_found("resource provider", uuid))
    }

    /// Finds a provider by uuid or name.
    pub fn resolve_host(&self, name_or_uuid: &str) -> Option<Uuid> {
        if let Ok(u) = Uuid::parse_str(name_or_uuid)
            && self.index.contains_key(&u)
        {
            return Some(u);
        }
        self.names.get(name_or_uuid).map(|u| *u)
    }

    fn validated_inventories(
        &self,
        invs: &[(String, Inventory)],
    ) -> Result<Vec<(ClassId, Inventory)>> {
        let mut out: Vec<(ClassId, Inventory)> = Vec::with_capacity(invs.len());
        for (i, (class, inv)) in invs.iter().enumerate() {
            validate_class_name(&format!("inventories[{i}].resource_class"), class)?;
            inv.validate(&format!("inventories[{class}]"))?;
            let known = self.classes.read().get(class);
            let id = match known {
                Some(id) => ClassId(id),
                None if class.starts_with("CUSTOM_") => {
                    let mut table = self.classes.write();
                    let known = table.get(class);
                    let id = table.intern(class);
                    if known.is_none() {
                        self.log(|| Change::ResourceClass(class.clone()));
                    }
                    ClassId(id)
                }
                None => unreachable_class(class)?,
            };
            if out.iter().any(|(c, _)| *c == id) {
                return Err(EngineError::invalid(
                    format!("inventories[{class}]"),
                    "resource class listed twice",
                ));
            }
            out.push((id, *inv));
        }
        Ok(out)
    }

    fn validated_traits(&self, traits: &[String]) -> Result<Vec<u32>> {
        for (i, t) in traits.iter().enumerate() {
            validate_trait(&format!("traits[{i}]"), t)?;
        }
        let mut table = self.traits.write();
        let mut ids: Vec<u32> = traits.iter().map(|t| table.intern(t)).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn validated_aggregates(&self, aggs: &[String]) -> Result<Vec<u32>> {
        for (i, a) in aggs.iter().enumerate() {
            validate_aggregate(&format!("aggregates[{i}]"), a)?;
        }
        let mut table = self.aggregates.write();
        let mut ids: Vec<u32> = aggs.iter().map(|a| table.intern(a)).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn az_id(&self, az: Option<&str>) -> Result<u16> {
        let az = az.unwrap_or(&self.config.default_availability_zone);
        validate_az("availability_zone", az)?;
        let mut t = self.azs.write();
        let id = t.intern(az);
        if id >= u16::MAX as u32 {
            return Err(EngineError::FailedPrecondition(
                "too many availability zones (65534 at most)".into(),
            ));
        }
        Ok(id as u16)
    }

    fn label_id(&self, label: Option<&str>, field: &str) -> Result<u16> {
        match label {
            None => Ok(0),
            Some(l) => {
                validate_name(field, l)?;
                let id = self.labels.write().intern(l);
                u16::try_from(id)
                    .map_err(|_| EngineError::FailedPrecondition("too many distinct labels".into()))
            }
        }
    }

    fn validate_capabilities(caps: &BTreeMap<String, String>) -> Result<()> {
        for (k, v) in caps {
            if k.is_empty() || k.len() > 255 || v.len() > 255 {
                return Err(EngineError::invalid(
                    format!("capabilities[{k}]"),
                    "keys are 1 to 255 bytes, values at most 255",
                ));
            }
        }
        Ok(())
    }

    /// Registers a provider. Errors: `InvalidArgument` (names the field), `AlreadyExists`
    /// (uuid or name taken).
    pub fn create_provider(&self, spec: ProviderSpec) -> Result<ProviderInfo> {
        self.writable()?;
        validate_name("name", &spec.name)?;
        Self::validate_capabilities(&spec.capabilities)?;
        let inventories = self.validated_inventories(&spec.inventories)?;
        let traits = self.validated_traits(&spec.traits)?;
        let aggs = self.validated_aggregates(&spec.aggregates)?;
        let az = self.az_id(spec.availability_zone.as_deref())?;
        let arch = self.label_id(spec.arch.as_deref(), "arch")?;
        let hv_type = self.label_id(spec.hypervisor_type.as_deref(), "hypervisor_type")?;
        let hv_version = match &spec.hypervisor_version {
            None => 0,
            Some(v) => crate::scheduler::extra_specs_ops::parse_version(v).ok_or_else(|| {
                EngineError::invalid(
                    "hypervisor_version",
                    format!("{v:?} is not a version like 8.2.0"),
                )
            })?,
        };
        let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
        if uuid.is_nil() {
            return Err(EngineError::invalid(
                "uuid",
                "the nil uuid is not a provider id",
            ));
        }
        let name: Arc<str> = Arc::from(spec.name.as_str());
        match self.names.entry(name.clone()) {
            Entry::Occupied(_) => {
                return Err(EngineError::exists("resource provider named", &spec.name));
            }
            Entry::Vacant(v) => {
                v.insert(uuid);
            }
        }
        let disabled_id = self.traits.read().get(DISABLED_TRAIT);
        let mut flags = UP;
        if disabled_id.is_some_and(|d| traits.contains(&d)) {
            flags |= DISABLED;
        }
        if self.isolated_hosts.contains(&spec.name)
            || self.isolated_hosts.contains(&uuid.to_string())
        {
            flags |= ISOLATED;
        }
        let s = self.shard_of(&uuid);
        let mut shard = self.shards[s].write();
        match self.index.entry(uuid) {
            Entry::Occupied(_) => {
                drop(shard);
                self.names.remove(&name);
                Err(EngineError::exists("resource provider", uuid))
            }
            Entry::Vacant(v) => {
                let slot = shard.insert(NewHost {
                    uuid,
                    name,
                    az,
                    flags,
                    inventories,
                    traits,
                    aggs,
                    arch,
                    hv_type,
                    hv_version,
                    cold: ColdHost {
                        capabilities: spec.capabilities,
                        arch: spec.arch,
                        hypervisor_type: spec.hypervisor_type,
                        hypervisor_version: spec.hypervisor_version,
                    },
                });
                v.insert(HostRef {
                    shard: s as u32,
                    slot,
                });
                self.log_provider(&shard, slot as usize);
                tracing::debug!(%uuid, name = %spec.name, "resource provider created");
                Ok(self.info_locked(&shard, slot as usize))
            }
        }
    }

    /// Runs `f` on the provider's shard under the write lock, after checking the uuid still
    /// lives at its slot and, when given, that `generation` is current; bumps the
    /// generation when `f` succeeds.
    pub(crate) fn write_provider<T>(
        &self,
        uuid: &Uuid,
        generation: Option<u64>,
        f: impl FnOnce(&mut Shard, usize) -> Result<T>,
    ) -> Result<T> {
        self.writable()?;
        let r = self.locate(uuid)?;
        let mut shard = self.shards[r.shard as usize].write();
        let i = r.slot as usize;
        if !shard.is_present(i) || shard.uuid[i] != *uuid {
            return Err(EngineError::not_found("resource provider", uuid));
        }
        if let Some(g) = generation
            && shard.generation[i] != g
        {
            return Err(EngineError::GenerationConflict {
                kind: "resource provider",
                id: uuid.to_string(),
                given: g.to_string(),
                current: shard.generation[i].to_string(),
            });
        }
        let out = f(&mut shard, i)?;
        shard.generation[i] += 1;
        self.log_provider(&shard, i);
        Ok(out)
    }

    /// Reads a provider under its shard's read lock.
    pub(crate) fn read_provider<T>(
        &self,
        uuid: &Uuid,
        f: impl FnOnce(&Shard, usize) -> T,
    ) -> Result<T> {
        let r = self.locate(uuid)?;
        let shard = self.shards[r.shard as usize].read();
        let i = r.slot as usize;
        if !shard.is_present(i) || shard.uuid[i] != *uuid {
            return Err(EngineError::not_found("resource provider", uuid));
        }
        Ok(f(&shard, i))
    }

    /// A provider's full view.
    pub fn get_provider(&self, uuid: &Uuid) -> Result<ProviderInfo> {
        self.read_provider(uuid, |s, i| self.info_locked(s, i))
    }

    pub(crate) fn info_locked(&self, s: &Shard, i: usize) -> ProviderInfo {
        let classes = self.classes.read();
        let mut usages = Vec::new();
        for (c, class) in STANDARD_CLASSES.iter().enumerate() {
            if let Some(inv) = s.inv[c][i] {
                usages.push(ProviderUsage {
                    class: class.to_string(),
                    used: s.used[c][i],
                    capacity: inv.capacity(),
                    inventory: inv,
                });
            }
        }
        for ci in &s.custom[i] {
            usages.push(ProviderUsage {
                class: classes.name(ci.class.0).to_string(),
                used: ci.used,
                capacity: ci.inv.capacity(),
                inventory: ci.inv,
            });
        }
        let traits = self.traits.read();
        let mut trait_names: Vec<String> = Shard::row_ids(s.trait_row(i))
            .into_iter()
            .map(|t| traits.name(t).to_string())
            .collect();
        trait_names.sort();
        let aggs = self.aggregates.read();
        let mut agg_names: Vec<String> = Shard::row_ids(s.agg_row(i))
            .into_iter()
            .map(|a| aggs.name(a).to_string())
            .collect();
        agg_names.sort();
        let cold = &s.cold[i];
        ProviderInfo {
            uuid: s.uuid[i],
            name: s.name[i].to_string(),
            generation: s.generation[i],
            availability_zone: self.azs.read().name(s.az[i] as u32).to_string(),
            traits: trait_names,
            aggregates: agg_names,
            usages,
            up: s.flags[i] & UP != 0,
            disabled: s.flags[i] & DISABLED != 0,
            instances: s.instances[i],
            io_ops: s.io_ops[i],
            failed_builds: s.failures[i],
            capabilities: cold.capabilities.clone(),
            arch: cold.arch.clone(),
            hypervisor_type: cold.hypervisor_type.clone(),
            hypervisor_version: cold.hypervisor_version.clone(),
        }
    }

    /// Every provider matching `filter`, sorted by name.
    pub fn list_providers(&self, filter: &ProviderFilter) -> Result<Vec<ProviderInfo>> {
        let az = match &filter.availability_zone {
            Some(a) => match self.azs.read().get(a) {
                Some(id) => Some(id as u16),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let mut req_traits = crate::intern::Bits::new();
        for (i, t) in filter.required_traits.iter().enumerate() {
            validate_trait(&format!("required_traits[{i}]"), t)?;
            match self.traits.read().get(t) {
                Some(id) => crate::intern::set_bit(&mut req_traits, id),
                None => return Ok(Vec::new()),
            }
        }
        let mut member = crate::intern::Bits::new();
        for (i, a) in filter.member_of.iter().enumerate() {
            validate_aggregate(&format!("member_of[{i}]"), a)?;
            if let Some(id) = self.aggregates.read().get(a) {
                crate::intern::set_bit(&mut member, id);
            }
        }
        if !filter.member_of.is_empty() && member.is_empty() {
            return Ok(Vec::new());
        }
        let mut res = Vec::new();
        for (i, (c, n)) in filter.resources.iter().enumerate() {
            validate_class_name(&format!("resources[{i}].resource_class"), c)?;
            match self.classes.read().get(c) {
                Some(id) => res.push((ClassId(id), *n)),
                None => return Ok(Vec::new()),
            }
        }
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = shard.read();
            for i in 0..s.slots() {
                if !s.is_present(i) {
                    continue;
                }
                if filter
                    .name_contains
                    .as_ref()
                    .is_some_and(|n| !s.name[i].contains(n.as_str()))
                    || az.is_some_and(|a| s.az[i] != a)
                    || !crate::intern::has_all(s.trait_row(i), &req_traits)
                    || (!member.is_empty() && !crate::intern::has_any(s.agg_row(i), &member))
                    || res
                        .iter()
                        .any(|&(c, n)| s.free_of(i, c).is_none_or(|(free, _)| free < n as i64))
                {
                    continue;
                }
                out.push(self.info_locked(&s, i));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Changes a provider's name, zone, capabilities or hypervisor attributes.
    pub fn update_provider(
        &self,
        uuid: &Uuid,
        generation: Option<u64>,
        update: ProviderUpdate,
    ) -> Result<ProviderInfo> {
        if let Some(n) = &update.name {
            validate_name("name", n)?;
        }
        if let Some(c) = &update.capabilities {
            Self::validate_capabilities(c)?;
        }
        let az = match &update.availability_zone {
            Some(a) => Some(self.az_id(Some(a))?),
            None => None,
        };
        fn nonempty(v: &Option<String>) -> Option<Option<&str>> {
            v.as_deref().map(|v| (!v.is_empty()).then_some(v))
        }
        let arch = nonempty(&update.arch)
            .map(|a| self.label_id(a, "arch"))
            .transpose()?;
        let hv_type = nonempty(&update.hypervisor_type)
            .map(|t| self.label_id(t, "hypervisor_type"))
            .transpose()?;
        let hv_version = nonempty(&update.hypervisor_version)
            .map(|v| match v {
                None => Ok(0),
                Some(v) => crate::scheduler::extra_specs_ops::parse_version(v).ok_or_else(|| {
                    EngineError::invalid(
                        "hypervisor_version",
                        format!("{v:?} is not a version like 8.2.0"),
                    )
                }),
            })
            .transpose()?;
        let label = |v: Option<String>| v.filter(|v| !v.is_empty());
        // Reserve the new name first so two renames cannot take the same name.
        let new_name: Option<Arc<str>> = match &update.name {
            Some(n) => {
                let n: Arc<str> = Arc::from(n.as_str());
                match self.names.entry(n.clone()) {
                    Entry::Occupied(o) if *o.get() != *uuid => {
                        return Err(EngineError::exists("resource provider named", &n));
                    }
                    Entry::Occupied(_) => None,
                    Entry::Vacant(v) => {
                        v.insert(*uuid);
                        Some(n)
                    }
                }
            }
            None => None,
        };
        let res = self.write_provider(uuid, generation, |s, i| {
            let old = new_name
                .as_ref()
                .map(|n| std::mem::replace(&mut s.name[i], n.clone()));
            if let Some(a) = az {
                s.az[i] = a;
            }
            if let Some(c) = update.capabilities {
                s.cold[i].capabilities = c;
            }
            if let Some(a) = arch {
                s.arch[i] = a;
                s.cold[i].arch = label(update.arch);
            }
            if let Some(t) = hv_type {
                s.hv_type[i] = t;
                s.cold[i].hypervisor_type = label(update.hypervisor_type);
            }
            if let Some(v) = hv_version {
                s.hv_version[i] = v;
                s.cold[i].hypervisor_version = label(update.hypervisor_version);
            }
            Ok(old)
        });
        match res {
            Ok(Some(old)) => {
                self.names.remove(&old);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(n) = new_name {
                    self.names.remove(&n);
                }
                return Err(e);
            }
        }
        self.get_provider(uuid)
    }

    /// Deletes a provider. `FailedPrecondition` while it has allocations.
    pub fn delete_provider(&self, uuid: &Uuid) -> Result<()> {
        self.writable()?;
        let r = self.locate(uuid)?;
        let mut shard = self.shards[r.shard as usize].write();
        let i = r.slot as usize;
        if !shard.is_present(i) || shard.uuid[i] != *uuid {
            return Err(EngineError::not_found("resource provider", uuid));
        }
        if shard.has_usage(i) {
            return Err(EngineError::FailedPrecondition(format!(
                "resource provider {uuid} has allocations from {} consumer(s); release or move them first",
                shard.instances[i]
            )));
        }
        let name = shard.name[i].clone();
        shard.remove(i);
        self.index.remove(uuid);
        self.log(|| Change::ProviderDeleted(uuid.as_bytes().to_vec()));
        drop(shard);
        self.names.remove(&name);
        tracing::debug!(%uuid, name = %name, "resource provider deleted");
        Ok(())
    }

    /// Replaces all inventories. Removing a class that has allocations is refused
    /// (`FailedPrecondition`); lowering capacity below usage is allowed (existing
    /// allocations stay, new ones will not fit), as in Placement.
    pub fn set_inventories(
        &self,
        uuid: &Uuid,
        generation: Option<u64>,
        invs: &[(String, Inventory)],
    ) -> Result<u64> {
        let invs = self.validated_inventories(invs)?;
        let classes = self
            .classes
            .read()
            .names()
            .map(str::to_string)
            .collect::<Vec<_>>();
        self.write_provider(uuid, generation, |s, i| {
            for (c, class) in STANDARD_CLASSES.iter().enumerate() {
                if s.used[c][i] > 0 && !invs.iter().any(|(id, _)| id.std_index() == Some(c)) {
                    return Err(in_use(uuid, class));
                }
            }
            for ci in &s.custom[i] {
                if ci.used > 0 && !invs.iter().any(|(id, _)| *id == ci.class) {
                    return Err(in_use(
                        uuid,
                        classes.get(ci.class.0 as usize).map_or("?", |s| s),
                    ));
                }
            }
            s.set_inventories(i, &invs);
            Ok(s.generation[i] + 1)
        })
    }

    /// Replaces all traits (`COMPUTE_STATUS_DISABLED` among them disables the host).
    pub fn set_traits(
        &self,
        uuid: &Uuid,
        generation: Option<u64>,
        traits: &[String],
    ) -> Result<u64> {
        let ids = self.validated_traits(traits)?;
        let disabled = traits.iter().any(|t| t == DISABLED_TRAIT);
        self.write_provider(uuid, generation, |s, i| {
            s.set_traits(i, &ids);
            s.flags[i] = if disabled {
                s.flags[i] | DISABLED
            } else {
                s.flags[i] & !DISABLED
            };
            Ok(s.generation[i] + 1)
        })
    }

    /// Replaces all aggregate memberships.
    pub fn set_aggregates(
        &self,
        uuid: &Uuid,
        generation: Option<u64>,
        aggs: &[String],
    ) -> Result<u64> {
        let ids = self.validated_aggregates(aggs)?;
        self.write_provider(uuid, generation, |s, i| {
            s.set_aggs(i, &ids);
            Ok(s.generation[i] + 1)
        })
    }

    /// Sets an aggregate's metadata (read by `AggregateInstanceExtraSpecs`).
    pub fn set_aggregate_metadata(
        &self,
        aggregate: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<()> {
        validate_aggregate("aggregate", aggregate)?;
        for (k, v) in &metadata {
            if k.is_empty() || k.len() > 255 || v.len() > 255 {
                return Err(EngineError::invalid(
                    format!("metadata[{k}]"),
                    "keys are 1 to 255 bytes, values at most 255",
                ));
            }
        }
        self.writable()?;
        let id = self.aggregates.write().intern(aggregate);
        let mut table = self.agg_metadata.write();
        self.log(|| {
            Change::AggregateMetadata(AggregateMetadataRec {
                aggregate: aggregate.to_string(),
                metadata: metadata.clone(),
            })
        });
        table.insert(id, metadata);
        Ok(())
    }

    /// An aggregate's metadata (empty when none was set).
    pub fn aggregate_metadata(&self, aggregate: &str) -> BTreeMap<String, String> {
        let Some(id) = self.aggregates.read().get(aggregate) else {
            return BTreeMap::new();
        };
        self.agg_metadata
            .read()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every known trait name, sorted.
    pub fn list_traits(&self) -> Vec<String> {
        let mut v: Vec<String> = self.traits.read().names().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Standard and custom resource classes.
    pub fn list_resource_classes(&self) -> Vec<String> {
        self.classes.read().names().map(str::to_string).collect()
    }

    /// Registers a custom resource class (`CUSTOM_*`); `AlreadyExists` if known.
    pub fn create_resource_class(&self, name: &str) -> Result<()> {
        validate_class_name("name", name)?;
        if !name.starts_with("CUSTOM_") {
            return Err(EngineError::invalid(
                "name",
                "only CUSTOM_* classes can be created",
            ));
        }
        self.writable()?;
        let mut t = self.classes.write();
        if t.get(name).is_some() {
            return Err(EngineError::exists("resource class", name));
        }
        t.intern(name);
        self.log(|| Change::ResourceClass(name.to_string()));
        Ok(())
    }

    /// Marks a host up or down (the node-liveness monitor calls this). Does not bump the
    /// generation: liveness is not a write to the provider's data.
    pub fn set_host_up(&self, uuid: &Uuid, up: bool) -> Result<()> {
        self.with_host_mut(uuid, |s, i| {
            s.flags[i] = if up {
                s.flags[i] | UP
            } else {
                s.flags[i] & !UP
            };
        })
    }

    /// Records a failed build on a host (the `BuildFailure` weigher penalises it).
    pub fn record_build_failure(&self, uuid: &Uuid) -> Result<()> {
        self.with_host_mut(uuid, |s, i| s.failures[i] = s.failures[i].saturating_add(1))
    }

    /// Clears a host's build failures (after a successful build, as Nova does).
    pub fn clear_build_failures(&self, uuid: &Uuid) -> Result<()> {
        self.with_host_mut(uuid, |s, i| s.failures[i] = 0)
    }

    /// Starts (`true`) or finishes (`false`) an I/O-heavy operation on a host (build,
    /// resize, migration, snapshot), counted by the `IoOps` filter and weigher.
    pub fn track_io_op(&self, uuid: &Uuid, start: bool) -> Result<()> {
        self.with_host_mut(uuid, |s, i| {
            s.io_ops[i] = if start {
                s.io_ops[i].saturating_add(1)
            } else {
                s.io_ops[i].saturating_sub(1)
            };
        })
    }

    fn with_host_mut(&self, uuid: &Uuid, f: impl FnOnce(&mut Shard, usize)) -> Result<()> {
        let r = self.locate(uuid)?;
        let mut shard = self.shards[r.shard as usize].write();
        let i = r.slot as usize;
        if !shard.is_present(i) || shard.uuid[i] != *uuid {
            return Err(EngineError::not_found("resource provider", uuid));
        }
        f(&mut shard, i);
        Ok(())
    }
}

fn in_use(uuid: &Uuid, class: &str) -> EngineError {
    EngineError::FailedPrecondition(format!(
        "resource provider {uuid} has allocations of {class}; its inventory cannot be removed"
    ))
}

fn unreachable_class(class: &str) -> Result<ClassId> {
    // validate_class_name accepted it, so it is standard (always interned) or CUSTOM_*.
    Err(EngineError::invalid(
        "resource_class",
        format!("unknown resource class {class}"),
    ))
}
