//! Per-project quotas, in the style of Nova's and Keystone's "unified limits": a limit per
//! resource class and on `instances` (the project's consumers holding allocations). A
//! project's own limits override the default of `berth.toml` (`[engine] default_quota`)
//! class by class; with neither, a class is unlimited.
//!
//! Usage counts every allocation of the project's consumers, both sides of a move in
//! progress included (Placement's rule). A claim is checked and charged in one step under
//! the project's usage entry (`Engine::projects`, a leaf lock): usage + request ≤ limit,
//! then usage += request, before any host is claimed; if the claim then fails, the charge
//! is given back. So concurrent claims can never together exceed a limit. The price is
//! conservative: a request charged for a moment and then failing on capacity can make a
//! concurrent one fail its quota check, which a retry answers.
//!
//! Only increases are checked: a release, a move's confirm or revert, or a replacement that
//! shrinks a class always works, even over quota. Lowering a limit below the usage evicts
//! nothing; new claims of that class fail until usage drops under it.

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::Engine;
use super::consumers::{HostAlloc, ProjectUsage};
use crate::error::{EngineError, Result};
use crate::model::{ClassId, validate_class_name, validate_name};
use crate::store::record::{Change, QuotaLimitRec, QuotaRec};

/// The name of the limit on a project's instances (consumers holding allocations).
pub const INSTANCES: &str = "instances";

/// What a limit limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum QuotaKey {
    /// Consumers holding allocations.
    Instances,
    /// The sum of the allocations of one class.
    Class(ClassId),
}

/// One limit a project has of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnLimit {
    pub key: QuotaKey,
    /// `instances` or the class's name (kept so that logging needs no class lookup under
    /// the project's entry).
    pub name: Arc<str>,
    /// `None`: unlimited, whatever the default says.
    pub limit: Option<u64>,
}

/// The default of `berth.toml`, resolved as far as start-up can: custom classes may not
/// exist yet, so they are looked up by name when a claim is checked.
#[derive(Debug, Default)]
pub(crate) struct DefaultQuota {
    resolved: Vec<(QuotaKey, u64)>,
    custom: Vec<(String, u64)>,
}

impl DefaultQuota {
    pub(crate) fn new(config: &BTreeMap<String, u64>) -> Self {
        let mut d = Self::default();
        for (name, &limit) in config {
            if name == INSTANCES {
                d.resolved.push((QuotaKey::Instances, limit));
            } else if let Some(i) = crate::model::STANDARD_CLASSES
                .iter()
                .position(|c| *c == name.as_str())
            {
                d.resolved.push((QuotaKey::Class(ClassId(i as u32)), limit));
            } else {
                d.custom.push((name.clone(), limit));
            }
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.resolved.is_empty() && self.custom.is_empty()
    }
}

/// A project's default limits with its custom classes resolved (those that exist).
type Defaults = SmallVec<[(QuotaKey, u64); 6]>;

/// A change of one project's usage: per class what is added and what is removed, and the
/// change in its number of consumers.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageDelta {
    classes: SmallVec<[(ClassId, u64, u64); 4]>,
    consumers: i64,
}

impl UsageDelta {
    /// A delta of `consumers` consumers and no amounts yet.
    pub(crate) fn consumers(consumers: i64) -> Self {
        Self {
            classes: SmallVec::new(),
            consumers,
        }
    }

    fn slot(&mut self, c: ClassId) -> &mut (ClassId, u64, u64) {
        let i = match self.classes.iter().position(|e| e.0 == c) {
            Some(i) => i,
            None => {
                self.classes.push((c, 0, 0));
                self.classes.len() - 1
            }
        };
        &mut self.classes[i]
    }

    /// Adds `times` × `amounts`.
    pub(crate) fn add(mut self, amounts: &[(ClassId, u64)], times: u64) -> Self {
        for &(c, n) in amounts {
            let e = self.slot(c);
            e.1 = e.1.saturating_add(n.saturating_mul(times));
        }
        self
    }

    /// Adds every amount of `allocs`.
    pub(crate) fn add_allocs(mut self, allocs: &[HostAlloc]) -> Self {
        for a in allocs {
            self = self.add(&a.amounts, 1);
        }
        self
    }

    /// Removes every amount of `allocs`.
    pub(crate) fn sub_allocs(mut self, allocs: &[HostAlloc]) -> Self {
        for a in allocs {
            for &(c, n) in &a.amounts {
                let e = self.slot(c);
                e.2 = e.2.saturating_add(n);
            }
        }
        self
    }

    /// The delta that undoes this one.
    pub(crate) fn reversed(&self) -> Self {
        Self {
            classes: self.classes.iter().map(|&(c, a, s)| (c, s, a)).collect(),
            consumers: -self.consumers,
        }
    }

    fn apply(&self, p: &mut ProjectUsage) {
        for &(c, add, sub) in &self.classes {
            let e = p.amounts.entry(c).or_default();
            *e = e.saturating_add(add).saturating_sub(sub);
        }
        p.consumers = p.consumers.saturating_add_signed(self.consumers);
    }
}

/// Where a limit in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The project's own limit (`SetQuota`).
    Project,
    /// `[engine] default_quota` in `berth.toml`.
    Default,
    /// Neither: unlimited.
    None,
}

impl LimitSource {
    /// `project`, `default` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Project => "project",
            LimitSource::Default => "default",
            LimitSource::None => "none",
        }
    }
}

/// One line of a project's quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaLine {
    /// `instances` or a resource class.
    pub resource: String,
    /// The limit in force; `None`: unlimited.
    pub limit: Option<u64>,
    /// Current usage (consumers for `instances`).
    pub used: u64,
    /// Where the limit comes from.
    pub source: LimitSource,
}

/// A project's quota: `instances` first, then every class that has a limit or usage, by
/// name.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaReport {
    /// The project.
    pub project_id: String,
    /// The lines.
    pub limits: Vec<QuotaLine>,
}

/// A limit a request would exceed: (what, limit, used, requested).
type Excess = (QuotaKey, u64, u64, u64);

fn limit_of(own: &[OwnLimit], defaults: &Defaults, key: QuotaKey) -> (Option<u64>, LimitSource) {
    if let Some(l) = own.iter().find(|l| l.key == key) {
        return (l.limit, LimitSource::Project);
    }
    match defaults.iter().find(|d| d.0 == key) {
        Some(d) => (Some(d.1), LimitSource::Default),
        None => (None, LimitSource::None),
    }
}

impl Engine {
    /// The default limits with custom classes resolved. Allocates nothing unless the
    /// default names custom classes; takes the class table's lock only then.
    fn defaults(&self) -> Defaults {
        let mut d: Defaults = self.quota_default.resolved.iter().copied().collect();
        if !self.quota_default.custom.is_empty() {
            let classes = self.classes.read();
            for (name, limit) in &self.quota_default.custom {
                if let Some(id) = classes.get(name) {
                    d.push((QuotaKey::Class(ClassId(id)), *limit));
                }
            }
        }
        d
    }

    /// Checks `d` against `project`'s quota and, if it fits, applies it to the project's
    /// usage, both under the project's entry, so no concurrent charge can slip between the
    /// check and the update. Only increases are checked. `ResourceExhausted` naming every
    /// limit it would exceed, with the limit, the usage and the request; nothing changes
    /// then. With no limit for the project (its own or a default) this is one map lookup,
    /// the same as a plain usage update.
    pub(crate) fn charge(&self, project: &Arc<str>, d: &UsageDelta) -> Result<()> {
        let mut over: SmallVec<[Excess; 2]> = SmallVec::new();
        {
            let defaults = if self.quota_default.is_empty() {
                Defaults::new()
            } else {
                self.defaults()
            };
            let mut p = self.projects.entry(project.clone()).or_default();
            if !p.limits.is_empty() || !defaults.is_empty() {
                if d.consumers > 0
                    && let (Some(limit), _) = limit_of(&p.limits, &defaults, QuotaKey::Instances)
                {
                    let want = d.consumers as u64;
                    if p.consumers.saturating_add(want) > limit {
                        over.push((QuotaKey::Instances, limit, p.consumers, want));
                    }
                }
                for &(c, add, sub) in &d.classes {
                    if add <= sub {
                        continue;
                    }
                    let key = QuotaKey::Class(c);
                    if let (Some(limit), _) = limit_of(&p.limits, &defaults, key) {
                        let used = p.amounts.get(&c).copied().unwrap_or(0);
                        if used.saturating_add(add - sub) > limit {
                            over.push((key, limit, used, add - sub));
                        }
                    }
                }
            }
            if over.is_empty() {
                d.apply(&mut p);
                return Ok(());
            }
        }
        // Named after the entry is dropped: the class table is a leaf lock of its own.
        let parts: Vec<String> = over
            .iter()
            .map(|&(key, limit, used, want)| {
                format!(
                    "{} limit {limit}, used {used}, requested {want}",
                    self.quota_key_name(key)
                )
            })
            .collect();
        Err(EngineError::QuotaExceeded(format!(
            "quota exceeded for project {project}: {}",
            parts.join("; ")
        )))
    }

    /// Applies `d` to `project`'s usage without a check (a give-back or a release).
    pub(crate) fn uncharge(&self, project: &Arc<str>, d: &UsageDelta) {
        d.apply(&mut self.projects.entry(project.clone()).or_default());
    }

    fn quota_key_name(&self, key: QuotaKey) -> String {
        match key {
            QuotaKey::Instances => INSTANCES.to_string(),
            QuotaKey::Class(c) => self.class_name(c),
        }
    }

    /// Resolves `instances` or a resource class name; `InvalidArgument` naming `field` for
    /// anything else.
    fn quota_key(&self, field: &str, name: &str) -> Result<QuotaKey> {
        if name == INSTANCES {
            return Ok(QuotaKey::Instances);
        }
        validate_class_name(field, name).map_err(|_| {
            EngineError::invalid(
                field,
                format!("{name:?} is neither {INSTANCES} nor a resource class name"),
            )
        })?;
        match self.classes.read().get(name) {
            Some(id) => Ok(QuotaKey::Class(ClassId(id))),
            None => Err(EngineError::invalid(
                field,
                format!("unknown resource class {name}"),
            )),
        }
    }

    /// Changes `project`'s own limits: each of `set` (`None`: unlimited, overriding the
    /// default) and, for each of `unset`, removes the project's own limit so the default
    /// applies again. Atomic and durable; returns the quota as it now is.
    pub fn set_quota(
        &self,
        project: &str,
        set: &[(String, Option<u64>)],
        unset: &[String],
    ) -> Result<QuotaReport> {
        validate_name("project_id", project)?;
        if set.is_empty() && unset.is_empty() {
            return Err(EngineError::invalid(
                "limits",
                "give at least one limit to set or unset",
            ));
        }
        let mut changes: Vec<(QuotaKey, Arc<str>, Option<Option<u64>>)> = Vec::new();
        let named = set
            .iter()
            .enumerate()
            .map(|(i, (r, l))| (format!("limits[{i}].resource"), r, Some(*l)))
            .chain(
                unset
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("unset[{i}]"), r, None)),
            );
        for (field, name, change) in named {
            let key = self.quota_key(&field, name)?;
            if changes.iter().any(|c| c.0 == key) {
                return Err(EngineError::invalid(
                    &field,
                    format!("{name} is given twice"),
                ));
            }
            changes.push((key, Arc::from(name.as_str()), change));
        }
        self.writable()?;
        {
            let mut p = self.projects.entry(Arc::from(project)).or_default();
            for (key, name, change) in changes {
                p.limits.retain(|l| l.key != key);
                if let Some(limit) = change {
                    p.limits.push(OwnLimit { key, name, limit });
                }
            }
            p.limits.sort_by_key(|l| l.key);
            // Logged under the entry: the log's order is the order of the changes.
            self.log(|| Change::Quota(quota_rec(project, &p.limits)));
        }
        self.quota(project)
    }

    /// A project's quota: the limits in force and the usage.
    pub fn quota(&self, project: &str) -> Result<QuotaReport> {
        validate_name("project_id", project)?;
        let defaults = self.defaults();
        let (own, amounts, consumers) = match self.projects.get(project) {
            Some(p) => (p.limits.clone(), p.amounts.clone(), p.consumers),
            None => (Vec::new(), BTreeMap::new(), 0),
        };
        let mut keys: Vec<QuotaKey> = own
            .iter()
            .map(|l| l.key)
            .chain(defaults.iter().map(|d| d.0))
            .chain(
                amounts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(c, _)| QuotaKey::Class(*c)),
            )
            .chain([QuotaKey::Instances])
            .collect();
        keys.sort();
        keys.dedup();
        let mut limits: Vec<QuotaLine> = keys
            .into_iter()
            .map(|key| {
                let (limit, source) = limit_of(&own, &defaults, key);
                let used = match key {
                    QuotaKey::Instances => consumers,
                    QuotaKey::Class(c) => amounts.get(&c).copied().unwrap_or(0),
                };
                QuotaLine {
                    resource: self.quota_key_name(key),
                    limit,
                    used,
                    source,
                }
            })
            .collect();
        // Default limits of custom classes that do not exist (yet).
        for (name, limit) in &self.quota_default.custom {
            if !limits.iter().any(|l| &l.resource == name) {
                limits.push(QuotaLine {
                    resource: name.clone(),
                    limit: Some(*limit),
                    used: 0,
                    source: LimitSource::Default,
                });
            }
        }
        // `instances` first, then by name.
        limits.sort_by(|a, b| {
            (a.resource != INSTANCES, &a.resource).cmp(&(b.resource != INSTANCES, &b.resource))
        });
        Ok(QuotaReport {
            project_id: project.to_string(),
            limits,
        })
    }

    /// Every project's own limits as records (a snapshot's dump).
    pub(crate) fn quota_recs(&self) -> Vec<QuotaRec> {
        self.projects
            .iter()
            .filter(|p| !p.limits.is_empty())
            .map(|p| quota_rec(p.key(), &p.limits))
            .collect()
    }

    /// Puts back a project's own limits read from the store.
    pub(crate) fn restore_quota(&self, rec: &QuotaRec) -> Result<()> {
        validate_name("project", &rec.project)?;
        let mut limits = Vec::with_capacity(rec.limits.len());
        for (i, l) in rec.limits.iter().enumerate() {
            let key = self.quota_key(&format!("limits[{i}]"), &l.resource)?;
            if limits.iter().any(|o: &OwnLimit| o.key == key) {
                return Err(EngineError::invalid(
                    format!("limits[{i}]"),
                    format!("{} is given twice", l.resource),
                ));
            }
            limits.push(OwnLimit {
                key,
                name: Arc::from(l.resource.as_str()),
                limit: l.limit,
            });
        }
        limits.sort_by_key(|l| l.key);
        self.projects
            .entry(Arc::from(rec.project.as_str()))
            .or_default()
            .limits = limits;
        Ok(())
    }
}

fn quota_rec(project: &str, limits: &[OwnLimit]) -> QuotaRec {
    QuotaRec {
        project: project.to_string(),
        limits: limits
            .iter()
            .map(|l| QuotaLimitRec {
                resource: l.name.to_string(),
                limit: l.limit,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uuid::Uuid;

    use super::*;
    use crate::model::{Allocation, Inventory, RequestSpec};
    use crate::scheduler::filters::testkit::*;
    use crate::{AllocationRequest, EngineConfig};

    fn set(e: &Engine, project: &str, limits: &[(&str, Option<u64>)]) {
        let limits: Vec<(String, Option<u64>)> =
            limits.iter().map(|(r, l)| (r.to_string(), *l)).collect();
        e.set_quota(project, &limits, &[]).unwrap();
    }

    fn vcpus(n: u64, project: &str) -> RequestSpec {
        let mut s = RequestSpec::resources(&[("VCPU", n), ("MEMORY_MB", 256)]);
        s.project_id = project.into();
        s
    }

    fn used(e: &Engine, project: &str, class: &str) -> u64 {
        e.project_usages(project, None)
            .unwrap()
            .usages
            .iter()
            .find(|(c, _)| c == class)
            .map_or(0, |(_, n)| *n)
    }

    fn quota_err(r: crate::Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(EngineError::QuotaExceeded(m)) => m,
            other => panic!("expected a quota error, got {other:?}"),
        }
    }

    fn cloud(hosts: usize) -> TestCloud {
        let mut c = TestCloud::new();
        for i in 0..hosts {
            c.host(host(&format!("h{i}")).inventory("VCPU", Inventory::new(64)));
        }
        c
    }

    #[test]
    fn class_limit_is_enforced_and_a_release_gives_it_back() {
        let c = cloud(2);
        let e = &c.engine;
        set(e, "demo", &[("VCPU", Some(4))]);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(e.select_destinations(&vcpus(1, "demo")).unwrap()[0].consumer);
        }
        let m = quota_err(e.select_destinations(&vcpus(1, "demo")));
        assert_eq!(
            m,
            "quota exceeded for project demo: VCPU limit 4, used 4, requested 1"
        );
        assert_eq!(used(e, "demo", "VCPU"), 4);
        // Other projects are not limited.
        e.select_destinations(&vcpus(8, "other")).unwrap();
        e.release(&held[0]).unwrap();
        assert_eq!(used(e, "demo", "VCPU"), 3);
        e.select_destinations(&vcpus(1, "demo")).unwrap();
        quota_err(e.select_destinations(&vcpus(1, "demo")));
    }

    #[test]
    fn instances_are_limited_and_a_multi_instance_request_counts_each() {
        let c = cloud(2);
        let e = &c.engine;
        set(
            e,
            "demo",
            &[("instances", Some(2)), ("MEMORY_MB", Some(10_000))],
        );
        let mut three = vcpus(1, "demo");
        three.num_instances = 3;
        let m = quota_err(e.select_destinations(&three));
        assert_eq!(
            m,
            "quota exceeded for project demo: instances limit 2, used 0, requested 3"
        );
        assert_eq!(e.consumer_count(), 0, "nothing placed");
        let mut two = three.clone();
        two.num_instances = 2;
        assert_eq!(e.select_destinations(&two).unwrap().len(), 2);
        // Every limit the request would exceed is named.
        let mut big = vcpus(1, "demo");
        big.resources = vec![("VCPU".into(), 1), ("MEMORY_MB".into(), 9_600)];
        let m = quota_err(e.select_destinations(&big));
        assert!(m.contains("instances limit 2, used 2, requested 1"), "{m}");
        assert!(
            m.contains("MEMORY_MB limit 10000, used 512, requested 9600"),
            "{m}"
        );
        assert!(!m.contains("VCPU"), "{m}");
    }

    #[test]
    fn a_failed_claim_gives_its_charge_back() {
        let mut c = TestCloud::new();
        c.host(host("h0").inventory("VCPU", Inventory::new(4)));
        let e = &c.engine;
        set(e, "demo", &[("VCPU", Some(100)), ("instances", Some(100))]);
        let mut spec = vcpus(2, "demo");
        spec.num_instances = 3;
        // Two fit on the host, the third does not: all or nothing, and all given back.
        assert!(matches!(
            e.select_destinations(&spec),
            Err(EngineError::NoValidHost(_))
        ));
        let q = e.quota("demo").unwrap();
        assert!(q.limits.iter().all(|l| l.used == 0), "{q:?}");
        assert_eq!(e.project_usages("demo", None).unwrap().consumers, 0);
    }

    #[test]
    fn replacing_allocations_checks_only_the_increase() {
        let c = cloud(1);
        let e = &c.engine;
        let h = c.uuid("h0");
        let req = |project: &str, vcpu: u64, generation: Option<u64>| AllocationRequest {
            consumer_generation: generation,
            project_id: project.into(),
            user_id: "u".into(),
            allocations: vec![Allocation {
                provider: h,
                resources: vec![("VCPU".into(), vcpu)],
            }],
        };
        set(e, "demo", &[("VCPU", Some(8))]);
        let a = Uuid::new_v4();
        let g = e.replace_allocations(&a, req("demo", 6, None)).unwrap();
        let m = quota_err(e.replace_allocations(&Uuid::new_v4(), req("demo", 3, None)));
        assert!(m.contains("VCPU limit 8, used 6, requested 3"), "{m}");
        // Growing by the difference only: 6 → 8 fits, 8 → 9 does not.
        let g = e.replace_allocations(&a, req("demo", 8, Some(g))).unwrap();
        let m = quota_err(e.replace_allocations(&a, req("demo", 9, Some(g))));
        assert!(m.contains("VCPU limit 8, used 8, requested 1"), "{m}");
        // Lowered below the usage: nothing is evicted, shrinking works, growing does not.
        set(e, "demo", &[("VCPU", Some(2))]);
        let g = e.replace_allocations(&a, req("demo", 5, Some(g))).unwrap();
        assert_eq!(used(e, "demo", "VCPU"), 5);
        quota_err(e.replace_allocations(&a, req("demo", 6, Some(g))));
        // Moving the consumer to another project is a new consumer there.
        set(e, "small", &[("VCPU", Some(4))]);
        let m = quota_err(e.replace_allocations(&a, req("small", 5, Some(g))));
        assert!(
            m.contains("project small: VCPU limit 4, used 0, requested 5"),
            "{m}"
        );
        let g = e.replace_allocations(&a, req("small", 4, Some(g))).unwrap();
        assert_eq!(used(e, "demo", "VCPU"), 0);
        assert_eq!(used(e, "small", "VCPU"), 4);
        assert_eq!(e.project_usages("demo", None).unwrap().consumers, 0);
        // An empty set is a release: always allowed.
        e.replace_allocations(
            &a,
            AllocationRequest {
                allocations: vec![],
                ..req("small", 0, Some(g))
            },
        )
        .unwrap();
        assert_eq!(used(e, "small", "VCPU"), 0);
        // A failed swap (no capacity) gives the charge back.
        set(e, "demo", &[("VCPU", Some(1000))]);
        assert!(matches!(
            e.replace_allocations(&Uuid::new_v4(), req("demo", 65, None)),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert_eq!(used(e, "demo", "VCPU"), 0);
    }

    #[test]
    fn a_move_counts_both_sides_until_it_ends() {
        let c = cloud(2);
        let e = &c.engine;
        set(e, "demo", &[("VCPU", Some(3))]);
        let a = e.select_destinations(&vcpus(2, "demo")).unwrap()[0].consumer;
        let m = quota_err(e.move_claim(&a, &vcpus(2, "demo"), false));
        assert!(m.contains("VCPU limit 3, used 2, requested 2"), "{m}");
        assert!(e.get_allocations(&a).unwrap().moving.is_empty());
        set(e, "demo", &[("VCPU", Some(4))]);
        e.move_claim(&a, &vcpus(2, "demo"), false).unwrap();
        assert_eq!(used(e, "demo", "VCPU"), 4);
        quota_err(e.select_destinations(&vcpus(1, "demo")));
        e.confirm_move(&a).unwrap();
        assert_eq!(used(e, "demo", "VCPU"), 2);
        // A move that finds no host gives its charge back.
        let mut huge = vcpus(2, "demo");
        huge.resources = vec![("VCPU".into(), 2), ("MEMORY_MB".into(), 1 << 30)];
        assert!(matches!(
            e.move_claim(&a, &huge, false),
            Err(EngineError::NoValidHost(_))
        ));
        assert_eq!(used(e, "demo", "VCPU"), 2);
    }

    #[test]
    fn defaults_own_limits_unlimited_and_unset() {
        let config = EngineConfig {
            default_quota: BTreeMap::from([
                ("instances".to_string(), 2),
                ("VCPU".to_string(), 3),
                ("CUSTOM_GPU".to_string(), 1),
            ]),
            ..EngineConfig::default()
        };
        let mut c = TestCloud::with_config(config);
        c.engine.create_resource_class("CUSTOM_GPU").unwrap();
        c.host(
            host("h0")
                .inventory("VCPU", Inventory::new(64))
                .inventory("CUSTOM_GPU", Inventory::new(8)),
        );
        let e = &c.engine;
        let line = |p: &str, r: &str| {
            e.quota(p)
                .unwrap()
                .limits
                .into_iter()
                .find(|l| l.resource == r)
                .unwrap()
        };
        assert_eq!(
            line("demo", "VCPU"),
            QuotaLine {
                resource: "VCPU".into(),
                limit: Some(3),
                used: 0,
                source: LimitSource::Default
            }
        );
        let mut gpu = vcpus(1, "demo");
        gpu.resources = vec![("VCPU".into(), 1), ("CUSTOM_GPU".into(), 2)];
        let m = quota_err(e.select_destinations(&gpu));
        assert!(m.contains("CUSTOM_GPU limit 1, used 0, requested 2"), "{m}");
        quota_err(e.select_destinations(&vcpus(4, "demo")));
        // The project's own limits override the default; None is unlimited.
        set(e, "demo", &[("VCPU", None), ("CUSTOM_GPU", Some(2))]);
        assert_eq!(line("demo", "VCPU").source, LimitSource::Project);
        assert_eq!(line("demo", "VCPU").limit, None);
        e.select_destinations(&vcpus(40, "demo")).unwrap();
        e.select_destinations(&gpu).unwrap();
        // instances still has the default of 2.
        let m = quota_err(e.select_destinations(&vcpus(1, "demo")));
        assert!(m.contains("instances limit 2, used 2, requested 1"), "{m}");
        // Unset: the default applies again (and is exceeded now: nothing is evicted).
        e.set_quota("demo", &[], &["VCPU".into()]).unwrap();
        let l = line("demo", "VCPU");
        assert_eq!(
            (l.limit, l.used, l.source),
            (Some(3), 41, LimitSource::Default)
        );
        let q = e.quota("demo").unwrap();
        let names: Vec<&str> = q.limits.iter().map(|l| l.resource.as_str()).collect();
        assert_eq!(names, ["instances", "CUSTOM_GPU", "MEMORY_MB", "VCPU"]);
        // A project never seen has the defaults.
        assert_eq!(line("new", "instances").limit, Some(2));
    }

    #[test]
    fn set_quota_validates_before_changing_anything() {
        let c = cloud(1);
        let e = &c.engine;
        type Case<'a> = (&'a [(&'a str, Option<u64>)], &'a [&'a str], &'a str);
        let bad: &[Case] = &[
            (
                &[("CUSTOM_NOPE", Some(1))],
                &[],
                "unknown resource class CUSTOM_NOPE",
            ),
            (
                &[("vcpu", Some(1))],
                &[],
                "neither instances nor a resource class",
            ),
            (
                &[("VCPU", Some(1)), ("VCPU", Some(2))],
                &[],
                "limits[1].resource",
            ),
            (&[("VCPU", Some(1))], &["VCPU"], "unset[0]"),
            (&[], &[], "at least one"),
        ];
        for (limits, unset, word) in bad {
            let limits: Vec<(String, Option<u64>)> =
                limits.iter().map(|(r, l)| (r.to_string(), *l)).collect();
            let unset: Vec<String> = unset.iter().map(|s| s.to_string()).collect();
            let err = e.set_quota("demo", &limits, &unset).unwrap_err();
            assert!(
                matches!(err, EngineError::InvalidArgument { .. })
                    && err.to_string().contains(word),
                "{word}: {err}"
            );
        }
        assert!(e.set_quota("", &[("VCPU".into(), Some(1))], &[]).is_err());
        assert_eq!(e.quota("demo").unwrap().limits.len(), 1, "only instances");
    }

    /// 64 threads claim in one project with a VCPU quota: never more than the quota is
    /// held, and with ample capacity exactly quota / size claims succeed.
    #[test]
    fn concurrent_claims_never_exceed_the_quota() {
        for (limit, size, hosts) in [(40u64, 2u64, 8usize), (30, 3, 8), (64, 1, 2)] {
            let c = cloud(hosts);
            let e = &c.engine;
            set(e, "demo", &[("VCPU", Some(limit))]);
            let results: Vec<crate::Result<Vec<crate::Selection>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..64)
                    .map(|_| s.spawn(|| e.select_destinations(&vcpus(size, "demo"))))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
            for r in &results {
                assert!(
                    matches!(r, Ok(_) | Err(EngineError::QuotaExceeded(_))),
                    "{r:?}"
                );
            }
            let u = used(e, "demo", "VCPU");
            assert!(u <= limit, "usage {u} over the limit {limit}");
            assert_eq!(ok, (limit / size).min(64), "limit {limit}, size {size}");
            assert_eq!(u, ok * size);
            assert_eq!(e.consumer_count() as u64, ok);
        }
    }

    /// The same race with capacity as tight as the quota and mixed sizes, through both
    /// claim paths: at no point does the project hold more than its limit.
    #[test]
    fn racing_claims_and_direct_writes_stay_within_the_quota() {
        let mut c = TestCloud::new();
        for i in 0..3 {
            c.host(host(&format!("h{i}")).inventory("VCPU", Inventory::new(12)));
        }
        let e = &c.engine;
        let hosts: Vec<Uuid> = (0..3).map(|i| c.uuid(&format!("h{i}"))).collect();
        set(e, "demo", &[("VCPU", Some(25)), ("instances", Some(20))]);
        let over = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..64u64 {
                let (e, hosts, over) = (e, &hosts, &over);
                s.spawn(move || {
                    for k in 0..5u64 {
                        let size = 1 + (t + k) % 4;
                        let consumer = if t % 2 == 0 {
                            e.select_destinations(&vcpus(size, "demo"))
                                .ok()
                                .map(|s| s[0].consumer)
                        } else {
                            let a = Uuid::new_v4();
                            e.replace_allocations(
                                &a,
                                AllocationRequest {
                                    consumer_generation: None,
                                    project_id: "demo".into(),
                                    user_id: "u".into(),
                                    allocations: vec![Allocation {
                                        provider: hosts[(t % 3) as usize],
                                        resources: vec![("VCPU".into(), size)],
                                    }],
                                },
                            )
                            .ok()
                            .map(|_| a)
                        };
                        let q = e.quota("demo").unwrap();
                        if q.limits.iter().any(|l| l.limit.is_some_and(|m| l.used > m)) {
                            over.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if let Some(a) = consumer
                            && k % 2 == 1
                        {
                            e.release(&a).unwrap();
                        }
                    }
                });
            }
        });
        assert!(
            !over.load(std::sync::atomic::Ordering::Relaxed),
            "a limit was exceeded"
        );
        // Usage equals what the consumers hold (no charge leaked).
        let held: u64 = e
            .consumer_ids()
            .iter()
            .map(|c| {
                e.get_allocations(c).unwrap().allocations[0]
                    .resources
                    .iter()
                    .filter(|(class, _)| class == "VCPU")
                    .map(|(_, n)| *n)
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(used(e, "demo", "VCPU"), held);
        assert_eq!(
            e.project_usages("demo", None).unwrap().consumers,
            e.consumer_count() as u64
        );
        assert!(held <= 25);
    }
}
