//! The typed request context: a request spec resolved once, before any host is looked at.
//! Names become ids and bitsets, the flavor and image are merged in, the group's hosts are
//! snapshotted; every fallible step happens here, so filters and weighers cannot fail.

use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;
use uuid::Uuid;

use super::extra_specs_ops::{self, Op};
use crate::error::{EngineError, Result};
use crate::intern::{Bits, set_bit};
use crate::model::{
    ClassId, GroupPolicy, MAX_AMOUNT, RequestSpec, validate_aggregate, validate_az,
    validate_class_name, validate_name, validate_trait,
};
use crate::state::groups::GroupState;
use crate::state::shard::NSTD;
use crate::state::{Engine, HostRef};

/// AZ id that matches no host (an unknown zone was asked for).
pub const NO_AZ: u16 = u16::MAX;
/// Label id that matches no host.
pub const NO_LABEL: u16 = u16::MAX;

/// Runs `validate(field, value)` naming the field only when the value fails: the checks
/// are pure, so the second run gives the error with the real field name, and a request's
/// items pass without a field name formatted for each.
fn checked(
    validate: fn(&str, &str) -> Result<()>,
    value: &str,
    field: impl FnOnce() -> String,
) -> Result<()> {
    validate("", value).or_else(|_| validate(&field(), value))
}

/// A set of hosts with a count each, sorted by (shard, slot) so a shard's part is a slice.
#[derive(Debug, Clone, Default)]
pub struct HostSet {
    items: Vec<(HostRef, u32)>,
}

impl HostSet {
    /// Builds from (host, count) pairs; counts of repeated hosts add up.
    pub fn from_pairs(mut v: Vec<(HostRef, u32)>) -> Self {
        v.sort_unstable_by_key(|(h, _)| *h);
        let mut items: Vec<(HostRef, u32)> = Vec::with_capacity(v.len());
        for (h, n) in v {
            match items.last_mut() {
                Some((last, c)) if *last == h => *c += n,
                _ => items.push((h, n)),
            }
        }
        Self { items }
    }

    /// The entries in shard `s`.
    pub fn in_shard(&self, s: u32) -> &[(HostRef, u32)] {
        let lo = self.items.partition_point(|(h, _)| h.shard < s);
        let hi = self.items.partition_point(|(h, _)| h.shard <= s);
        &self.items[lo..hi]
    }

    /// The count for `h` (0 if absent).
    pub fn get(&self, h: HostRef) -> u32 {
        self.items
            .binary_search_by_key(&h, |(x, _)| *x)
            .map_or(0, |i| self.items[i].1)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = &(HostRef, u32)> {
        self.items.iter()
    }
}

/// Members per host of `g`, not counting the memberships of `own` (the consumer a move is
/// placing: its presence on its source host must not count against it, as the claim's
/// re-check `group_allows` and Nova's group filters agree). New instances are not members
/// yet, so for them this is every member.
fn others_hosts(g: &GroupState, own: &[Uuid]) -> HostSet {
    let mut v: Vec<(HostRef, u32)> = g.hosts.iter().map(|(h, n)| (*h, *n)).collect();
    for hs in own.iter().filter_map(|u| g.members.get(u)) {
        for h in hs {
            if let Some(e) = v.iter_mut().find(|(x, _)| x == h) {
                e.1 = e.1.saturating_sub(1);
            }
        }
    }
    v.retain(|(_, n)| *n > 0);
    HostSet::from_pairs(v)
}

/// The request's server group, resolved.
#[derive(Debug, Clone)]
pub struct GroupContext {
    /// Group id.
    pub id: Uuid,
    /// Policy.
    pub policy: GroupPolicy,
    /// Most members per host (anti-affinity).
    pub max_per_host: u32,
    /// Members per host when the request was prepared (refreshed between instances; the
    /// claim re-checks under the group's lock).
    pub hosts: HostSet,
    pub(crate) state: Arc<Mutex<GroupState>>,
}

/// A request, ready for the pipeline.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Amount per standard class (0 = not requested).
    pub std: [u64; NSTD],
    /// Custom classes requested.
    pub custom: SmallVec<[(ClassId, u64); 2]>,
    /// Everything requested, for the claim.
    pub resources: SmallVec<[(ClassId, u64); 4]>,
    /// Traits the host must have.
    pub required_traits: Bits,
    /// Traits the host must not have.
    pub forbidden_traits: Bits,
    /// A required trait that no provider has: no host can pass.
    pub unknown_required_trait: bool,
    /// Each entry: the host must be in one of these aggregates.
    pub member_of: Vec<Bits>,
    /// The host must be in none of these.
    pub forbidden_aggregates: Bits,
    /// Requested zone id ([`NO_AZ`] when the zone is unknown).
    pub az: Option<u16>,
    /// Image architecture label ([`NO_LABEL`] when no host has it).
    pub arch: Option<u16>,
    /// Image hypervisor-type label.
    pub hv_type: Option<u16>,
    /// Image hypervisor version requirement: (comparison, packed version).
    pub hv_version: Option<(String, u64)>,
    /// Whether an image was given.
    pub has_image: bool,
    /// Whether the image is in `isolated_images`.
    pub isolated_image: bool,
    /// `capabilities:*` requirements.
    pub capabilities: Vec<(String, Op)>,
    /// Per aggregate extra spec: the aggregates whose metadata satisfies it.
    pub aggregate_specs: Vec<Bits>,
    /// Server group.
    pub group: Option<GroupContext>,
    /// `same_host` hint: hosts of those instances (`None` = no hint).
    pub same_host: Option<HostSet>,
    /// `different_host` hint.
    pub different_host: HostSet,
    /// Hosts to skip.
    pub ignore_hosts: HostSet,
    /// Only these hosts (`None` = any).
    pub force_hosts: Option<HostSet>,
    /// Consumer uuid per instance.
    pub instance_uuids: Vec<Uuid>,
    /// Project.
    pub project: Arc<str>,
    /// User.
    pub user: Arc<str>,
}

impl RequestContext {
    /// Resolves `spec` against `engine`. Errors name the field.
    pub fn prepare(engine: &Engine, spec: &RequestSpec) -> Result<Self> {
        validate_name("project_id", &spec.project_id)?;
        validate_name("user_id", &spec.user_id)?;
        let count = spec.count();
        let max = engine.config.scheduler.max_instances_per_request;
        if count > max {
            return Err(EngineError::invalid(
                "num_instances",
                format!("{count} exceeds the limit of {max} per request"),
            ));
        }
        if spec.instance_uuids.len() > count as usize {
            return Err(EngineError::invalid(
                "instance_uuids",
                format!(
                    "{} uuids given for {count} instance(s)",
                    spec.instance_uuids.len()
                ),
            ));
        }
        let mut instance_uuids = spec.instance_uuids.clone();
        for (i, u) in instance_uuids.iter().enumerate() {
            if u.is_nil() || instance_uuids[..i].contains(u) {
                return Err(EngineError::invalid(
                    format!("instance_uuids[{i}]"),
                    format!("{u} is nil or repeated"),
                ));
            }
        }
        while instance_uuids.len() < count as usize {
            instance_uuids.push(Uuid::new_v4());
        }

        // Resources: the flavor's, then the request's own on top.
        let flavor = spec
            .flavor
            .as_deref()
            .map(|f| engine.get_flavor(f))
            .transpose()?;
        // (class, amount, where it came from: None = the flavor, Some(i) = resources[i]).
        let mut wanted: SmallVec<[(&str, u64, Option<usize>); 4]> = SmallVec::new();
        if let Some(f) = &flavor {
            for (c, n) in &f.resources {
                wanted.push((c, *n, None));
            }
        }
        for (i, (c, n)) in spec.resources.iter().enumerate() {
            checked(validate_class_name, c, || {
                format!("resources[{i}].resource_class")
            })?;
            if *n > MAX_AMOUNT {
                return Err(EngineError::invalid(
                    format!("resources[{i}].amount"),
                    format!("{n} exceeds {MAX_AMOUNT}"),
                ));
            }
            wanted.retain(|(wc, _, _)| *wc != c);
            if *n > 0 {
                wanted.push((c, *n, Some(i)));
            }
        }
        if wanted.is_empty() {
            return Err(EngineError::invalid(
                "resources",
                "the request asks for no resources (give a flavor or resources)",
            ));
        }
        let mut std = [0u64; NSTD];
        let mut custom = SmallVec::new();
        let mut resources = SmallVec::new();
        {
            let classes = engine.classes.read();
            for &(c, n, from) in &wanted {
                let id = classes.get(c).map(ClassId).ok_or_else(|| {
                    let field = match (from, &flavor) {
                        (Some(i), _) => format!("resources[{i}]"),
                        (None, Some(f)) => format!("flavor {}", f.name),
                        (None, None) => String::new(),
                    };
                    EngineError::invalid(field, format!("no provider has resource class {c}"))
                })?;
                match id.std_index() {
                    Some(s) => std[s] = n,
                    None => custom.push((id, n)),
                }
                resources.push((id, n));
            }
        }

        // Traits: request, flavor, image.
        let image = spec
            .image
            .as_deref()
            .map(|i| engine.get_image(i))
            .transpose()?;
        let mut required_traits = Bits::new();
        let mut forbidden_traits = Bits::new();
        let mut unknown_required_trait = false;
        {
            let traits = engine.traits.read();
            let req = spec
                .required_traits
                .iter()
                .map(|t| (t, "required_traits"))
                .chain(
                    flavor
                        .iter()
                        .flat_map(|f| f.required_traits.iter().map(|t| (t, "flavor extra_specs"))),
                )
                .chain(
                    image
                        .iter()
                        .flat_map(|i| i.required_traits.iter().map(|t| (t, "image properties"))),
                );
            for (i, (t, field)) in req.enumerate() {
                checked(validate_trait, t, || format!("{field}[{i}]"))?;
                // A trait no provider has yet is not an error: no host passes, and the
                // Traits filter says so (a dry run then explains instead of failing).
                match traits.get(t) {
                    Some(id) => set_bit(&mut required_traits, id),
                    None => unknown_required_trait = true,
                }
            }
            let forb = spec
                .forbidden_traits
                .iter()
                .chain(flavor.iter().flat_map(|f| f.forbidden_traits.iter()))
                .chain(image.iter().flat_map(|i| i.forbidden_traits.iter()));
            for (i, t) in forb.enumerate() {
                checked(validate_trait, t, || format!("forbidden_traits[{i}]"))?;
                // A trait no provider has is trivially absent.
                if let Some(id) = traits.get(t) {
                    set_bit(&mut forbidden_traits, id);
                }
            }
            if required_traits
                .iter()
                .zip(forbidden_traits.iter())
                .any(|(r, f)| r & f != 0)
            {
                return Err(EngineError::invalid(
                    "forbidden_traits",
                    "a trait is both required and forbidden",
                ));
            }
        }

        // Aggregates.
        let mut member_of = Vec::with_capacity(spec.member_of.len());
        let mut forbidden_aggregates = Bits::new();
        {
            let aggs = engine.aggregates.read();
            for (i, set) in spec.member_of.iter().enumerate() {
                if set.is_empty() {
                    return Err(EngineError::invalid(
                        format!("member_of[{i}]"),
                        "must list at least one aggregate",
                    ));
                }
                let mut bits = Bits::new();
                for (j, a) in set.iter().enumerate() {
                    checked(validate_aggregate, a, || format!("member_of[{i}][{j}]"))?;
                    if let Some(id) = aggs.get(a) {
                        set_bit(&mut bits, id);
                    }
                }
                member_of.push(bits); // empty bits: nothing can match, the filter says so
            }
            for (i, a) in spec.forbidden_aggregates.iter().enumerate() {
                checked(validate_aggregate, a, || {
                    format!("forbidden_aggregates[{i}]")
                })?;
                if let Some(id) = aggs.get(a) {
                    set_bit(&mut forbidden_aggregates, id);
                }
            }
        }

        let az = match &spec.availability_zone {
            None => None,
            Some(z) if z.is_empty() => None,
            Some(z) => {
                validate_az("availability_zone", z)?;
                Some(engine.azs.read().get(z).map_or(NO_AZ, |id| id as u16))
            }
        };

        // Image properties.
        let label = |v: &Option<String>| {
            v.as_deref()
                .map(|l| engine.labels.read().get(l).map_or(NO_LABEL, |id| id as u16))
        };
        let (arch, hv_type, hv_version) = match &image {
            Some(img) => (
                label(&img.arch),
                label(&img.hypervisor_type),
                img.hypervisor_version
                    .as_ref()
                    .and_then(|(op, v)| extra_specs_ops::parse_version(v).map(|p| (op.clone(), p))),
            ),
            None => (None, None, None),
        };
        let isolated_image = image.as_ref().is_some_and(|i| {
            engine.isolated_images.contains(&i.name)
                || engine.isolated_images.contains(&i.id.to_string())
        });

        // Flavor capabilities and aggregate extra specs, parsed (validated at flavor creation).
        let mut capabilities = Vec::new();
        let mut aggregate_specs = Vec::new();
        if let Some(f) = &flavor {
            for (k, expr) in &f.capabilities {
                let op = extra_specs_ops::parse(expr)
                    .map_err(|e| EngineError::invalid(format!("flavor capabilities:{k}"), e))?;
                capabilities.push((k.clone(), op));
            }
            let meta = engine.agg_metadata.read();
            for (k, expr) in &f.aggregate_specs {
                let op = extra_specs_ops::parse(expr)
                    .map_err(|e| EngineError::invalid(format!("flavor extra spec {k}"), e))?;
                let mut bits = Bits::new();
                for (agg, md) in meta.iter() {
                    if md.get(k).is_some_and(|v| op.matches(v)) {
                        set_bit(&mut bits, *agg);
                    }
                }
                aggregate_specs.push(bits);
            }
        }

        let group = match &spec.group {
            None => None,
            Some(g) if g.is_empty() => None,
            Some(g) => {
                let state = engine.find_group(g)?;
                let (id, policy, max_per_host, hosts) = {
                    let s = state.lock();
                    (
                        s.id,
                        s.policy,
                        s.max_per_host,
                        others_hosts(&s, &instance_uuids),
                    )
                };
                Some(GroupContext {
                    id,
                    policy,
                    max_per_host,
                    hosts,
                    state,
                })
            }
        };

        let hosts_of = |field: &str, list: &[String]| -> Result<HostSet> {
            let mut v = Vec::new();
            for (i, h) in list.iter().enumerate() {
                checked(validate_name, h, || format!("{field}[{i}]"))?;
                if let Some(u) = engine.resolve_host(h)
                    && let Some(r) = engine.index.get(&u).map(|r| *r)
                {
                    v.push((r, 1));
                }
            }
            Ok(HostSet::from_pairs(v))
        };
        let ignore_hosts = hosts_of("ignore_hosts", &spec.ignore_hosts)?;
        let force_hosts = if spec.force_hosts.is_empty() {
            None
        } else {
            Some(hosts_of("force_hosts", &spec.force_hosts)?)
        };
        let instance_hosts = |list: &[Uuid]| -> HostSet {
            let mut v = Vec::new();
            for u in list {
                if let Some(c) = engine.consumers.get(u) {
                    v.extend(c.allocations.iter().map(|a| (a.host, 1)));
                }
            }
            HostSet::from_pairs(v)
        };
        let same_host = if spec.same_host.is_empty() {
            None
        } else {
            Some(instance_hosts(&spec.same_host))
        };
        let different_host = instance_hosts(&spec.different_host);

        Ok(Self {
            std,
            custom,
            resources,
            required_traits,
            forbidden_traits,
            unknown_required_trait,
            member_of,
            forbidden_aggregates,
            az,
            arch,
            hv_type,
            hv_version,
            has_image: image.is_some(),
            isolated_image,
            capabilities,
            aggregate_specs,
            group,
            same_host,
            different_host,
            ignore_hosts,
            force_hosts,
            instance_uuids,
            project: Arc::from(spec.project_id.as_str()),
            user: Arc::from(spec.user_id.as_str()),
        })
    }

    /// Re-reads the group's hosts (between the instances of one request: the ones already
    /// placed count against the next, so every member counts).
    pub fn refresh_group(&mut self) {
        if let Some(g) = &mut self.group {
            let s = g.state.lock();
            g.hosts = HostSet::from_pairs(s.hosts.iter().map(|(h, n)| (*h, *n)).collect());
        }
    }
}
