//! Engine invariants under random operation sequences (proptest).
//!
//! One `Engine` per case: a small cloud (3–8 providers with varied inventories, traits,
//! aggregates and zones) and 1–3 server groups, then 30–60 random operations: provider
//! creation and deletion, inventory and trait writes (valid, stale and invalid), placements
//! (with groups, zones, traits, 1–3 instances), releases, allocation replacements (valid,
//! stale, over capacity, malformed) and moves (claim, confirm, revert).
//!
//! A shadow model tracks what every consumer should hold; after every operation the whole
//! engine state is snapshotted and checked against it and against these invariants:
//!
//! - (a) capacity: a class may only be above its capacity if it already was before the
//!   operation (capacity lowered by `set_inventories`) and its usage did not grow; every
//!   class a successful claim, replacement or move touched is within capacity;
//! - (b) usage recomputed from every consumer's allocations (moving ones included) equals
//!   each provider's `used` per class, and its `instances` count;
//! - (c) server groups: members and per-host counts recomputed from the consumers equal the
//!   group's own view; hard anti-affinity never exceeds `max_server_per_host`; an affinity
//!   group's members not in the middle of a move are all on one host;
//! - (d) a release gives back exactly what the consumer held (usage before a claim equals
//!   usage after its release);
//! - (e) provider generations never decrease, and every change to a provider bumps it;
//! - (f) an operation that fails changes nothing (usages, generations, allocations, groups)
//!   and an `InvalidArgument` names its field.
//!
//! Single-instance placements are also checked against a brute-force oracle: "no valid
//! host" only when no host passes every filter, and a chosen host always passes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_engine::model::{
    Allocation, GroupPolicy, Inventory, MAX_AMOUNT, ProviderInfo, ProviderSpec, ProviderUsage,
    RequestSpec, ServerGroup, ServerGroupSpec,
};
use berth_engine::{
    AllocationRequest, ConsumerAllocations, DISABLED_TRAIT, Engine, EngineConfig, EngineError,
    ProviderFilter,
};
use proptest::prelude::*;
use proptest::sample::select;
use uuid::Uuid;

const CLASSES: [&str; 5] = ["VCPU", "PCPU", "MEMORY_MB", "DISK_GB", "CUSTOM_GPU"];
const TRAITS: [&str; 3] = ["HW_CPU_X86_AVX2", "CUSTOM_SSD", DISABLED_TRAIT];
const AGGREGATES: [&str; 2] = ["agg-fast", "agg-big"];
/// Zones hosts may be in ("nova" is the default zone); requests may also ask for "az9".
const ZONES: [&str; 4] = ["az1", "az2", "nova", "az9"];
const PROJECTS: [&str; 2] = ["p1", "p2"];

// ---------------------------------------------------------------------------------------
// Generated inputs
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct HostGen {
    invs: Vec<(usize, Inventory)>,
    traits: Vec<usize>,
    aggs: Vec<usize>,
    zone: Option<usize>,
}

#[derive(Debug, Clone)]
struct GroupGen {
    policy: GroupPolicy,
    max: Option<u32>,
}

/// A provider-generation choice for writes that carry one.
#[derive(Debug, Clone, Copy)]
enum GenMode {
    Current,
    Unchecked,
    Stale,
}

/// A way to break an inventory; each names the field the error must name.
#[derive(Debug, Clone, Copy)]
enum BadInv {
    NanRatio,
    InfRatio,
    ZeroRatio,
    NegativeRatio,
    HugeRatio,
    ReservedOverTotal,
    MinOverMax,
    MinZero,
    StepZero,
    TotalZero,
    TotalOverMax,
    UnknownClass(&'static str),
    Duplicate,
}

#[derive(Debug, Clone)]
enum InvChange {
    /// Keep the classes, scale every total by `pct` percent (lowering is allowed even under
    /// usage).
    Scale(u64),
    /// A fresh set (may drop classes in use: refused).
    Fresh(Vec<(usize, Inventory)>),
    /// The current set with entry `pos` broken.
    Invalid(BadInv, usize),
}

#[derive(Debug, Clone, Copy)]
enum BadAlloc {
    UnknownClass,
    BadClassName,
    ZeroAmount,
    TooLarge,
    DuplicateProvider,
    EmptyResources,
    UnknownProvider,
}

#[derive(Debug, Clone, Copy)]
enum ReplaceMode {
    Valid,
    OverCapacity,
    Empty,
    Invalid(BadAlloc),
}

/// Resources of a request: (class index, amount).
type Req = Vec<(usize, u64)>;

#[derive(Debug, Clone)]
enum Op {
    CreateProvider {
        host: HostGen,
        dup_name: bool,
    },
    SetInventories {
        p: usize,
        change: InvChange,
        gen_mode: GenMode,
    },
    SetTraits {
        p: usize,
        traits: Vec<usize>,
        bad: bool,
        gen_mode: GenMode,
    },
    Select {
        req: Req,
        group: Option<usize>,
        n: u32,
        zone: Option<usize>,
        required: Option<usize>,
        forbidden: Option<usize>,
        project: usize,
        release_after: bool,
    },
    Release {
        c: usize,
        unknown: bool,
    },
    Replace {
        /// `None`: a new consumer.
        target: Option<usize>,
        /// (provider index, [(class choice, amount choice)]).
        entries: Vec<(usize, Vec<(usize, usize)>)>,
        gen_mode: GenMode,
        mode: ReplaceMode,
    },
    MoveClaim {
        c: usize,
        req: Req,
        allow_same_host: bool,
        group_override: Option<usize>,
    },
    ConfirmMove {
        c: usize,
    },
    RevertMove {
        c: usize,
    },
    DeleteProvider {
        p: usize,
        unknown: bool,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    shards: usize,
    hosts: Vec<HostGen>,
    groups: Vec<GroupGen>,
    ops: Vec<Op>,
}

fn inv(
    total: u64,
    reserved: u64,
    ratio: f64,
    min_unit: u64,
    max_unit: u64,
    step: u64,
) -> Inventory {
    Inventory {
        total,
        reserved: reserved.min(total),
        min_unit,
        max_unit: max_unit.max(min_unit),
        step_size: step,
        allocation_ratio: ratio,
    }
}

/// A valid inventory for class `c` (indices into [`CLASSES`]), small enough that requests
/// contend for it.
fn inv_for(c: usize) -> BoxedStrategy<Inventory> {
    match c {
        0 => (
            1u64..=16,
            0u64..=2,
            select(vec![1.0, 1.5, 2.0, 4.0]),
            1u64..=2,
            0u64..=8,
            select(vec![1u64, 1, 2]),
        )
            .prop_map(|(t, r, ratio, min, extra, step)| inv(t, r, ratio, min, min + extra, step))
            .boxed(),
        1 => (1u64..=8, 0u64..=1, 1u64..=8)
            .prop_map(|(t, r, max)| inv(t, r, 1.0, 1, max, 1))
            .boxed(),
        2 => (
            select(vec![1024u64, 2048, 4096, 8192]),
            select(vec![0u64, 512]),
            select(vec![1.0, 1.5]),
            select(vec![1u64, 256]),
            select(vec![2048u64, 4096, MAX_AMOUNT]),
            select(vec![1u64, 256, 512]),
        )
            .prop_map(|(t, r, ratio, min, max, step)| inv(t, r, ratio, min, max, step))
            .boxed(),
        3 => (
            10u64..=200,
            0u64..=10,
            select(vec![1.0, 2.0]),
            select(vec![50u64, MAX_AMOUNT]),
            select(vec![1u64, 5]),
        )
            .prop_map(|(t, r, ratio, max, step)| inv(t, r, ratio, 1, max, step))
            .boxed(),
        _ => (1u64..=4, 1u64..=2)
            .prop_map(|(t, max)| inv(t, 0, 1.0, 1, max, 1))
            .boxed(),
    }
}

fn invs_gen() -> impl Strategy<Value = Vec<(usize, Inventory)>> {
    (
        proptest::option::weighted(0.9, inv_for(0)),
        proptest::option::weighted(0.3, inv_for(1)),
        proptest::option::weighted(0.9, inv_for(2)),
        proptest::option::weighted(0.7, inv_for(3)),
        proptest::option::weighted(0.25, inv_for(4)),
    )
        .prop_map(|(a, b, c, d, e)| {
            [a, b, c, d, e]
                .into_iter()
                .enumerate()
                .filter_map(|(i, x)| x.map(|x| (i, x)))
                .collect()
        })
}

fn trait_gen() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..2, 1 => Just(2usize)]
}

fn host_gen() -> impl Strategy<Value = HostGen> {
    (
        invs_gen(),
        proptest::collection::vec(trait_gen(), 0..=2),
        proptest::collection::vec(0usize..AGGREGATES.len(), 0..=2),
        proptest::option::of(0usize..3),
    )
        .prop_map(|(invs, traits, aggs, zone)| HostGen {
            invs,
            traits,
            aggs,
            zone,
        })
}

fn group_gen() -> impl Strategy<Value = GroupGen> {
    prop_oneof![
        3 => (1u32..=2).prop_map(|m| GroupGen { policy: GroupPolicy::AntiAffinity, max: Some(m) }),
        1 => Just(GroupGen { policy: GroupPolicy::AntiAffinity, max: None }),
        2 => Just(GroupGen { policy: GroupPolicy::Affinity, max: None }),
        1 => Just(GroupGen { policy: GroupPolicy::SoftAffinity, max: None }),
        1 => Just(GroupGen { policy: GroupPolicy::SoftAntiAffinity, max: None }),
    ]
}

fn req_gen() -> impl Strategy<Value = Req> {
    (
        proptest::option::weighted(0.85, 1u64..=4),
        proptest::option::weighted(0.1, 1u64..=2),
        proptest::option::weighted(0.8, select(vec![256u64, 512, 1024, 2048])),
        proptest::option::weighted(0.5, select(vec![5u64, 10, 20])),
        proptest::option::weighted(0.15, Just(1u64)),
    )
        .prop_map(|(a, b, c, d, e)| {
            let mut v: Req = [a, b, c, d, e]
                .into_iter()
                .enumerate()
                .filter_map(|(i, x)| x.map(|x| (i, x)))
                .collect();
            if v.is_empty() {
                v.push((0, 1));
            }
            v
        })
}

fn gen_mode() -> impl Strategy<Value = GenMode> {
    prop_oneof![6 => Just(GenMode::Current), 2 => Just(GenMode::Unchecked), 2 => Just(GenMode::Stale)]
}

fn bad_inv() -> impl Strategy<Value = BadInv> {
    select(vec![
        BadInv::NanRatio,
        BadInv::InfRatio,
        BadInv::ZeroRatio,
        BadInv::NegativeRatio,
        BadInv::HugeRatio,
        BadInv::ReservedOverTotal,
        BadInv::MinOverMax,
        BadInv::MinZero,
        BadInv::StepZero,
        BadInv::TotalZero,
        BadInv::TotalOverMax,
        BadInv::UnknownClass("GPU"),
        BadInv::UnknownClass("vcpu"),
        BadInv::UnknownClass("CUSTOM_"),
        BadInv::Duplicate,
    ])
}

fn bad_alloc() -> impl Strategy<Value = BadAlloc> {
    select(vec![
        BadAlloc::UnknownClass,
        BadAlloc::BadClassName,
        BadAlloc::ZeroAmount,
        BadAlloc::TooLarge,
        BadAlloc::DuplicateProvider,
        BadAlloc::EmptyResources,
        BadAlloc::UnknownProvider,
    ])
}

fn op_gen() -> impl Strategy<Value = Op> {
    let idx = || 0usize..64;
    prop_oneof![
        3 => (host_gen(), proptest::bool::weighted(0.1))
            .prop_map(|(host, dup_name)| Op::CreateProvider { host, dup_name }),
        6 => (
            idx(),
            prop_oneof![
                4 => select(vec![25u64, 50, 75, 100, 150, 200]).prop_map(InvChange::Scale),
                2 => invs_gen().prop_map(InvChange::Fresh),
                3 => (bad_inv(), idx()).prop_map(|(b, p)| InvChange::Invalid(b, p)),
            ],
            gen_mode(),
        )
            .prop_map(|(p, change, gen_mode)| Op::SetInventories { p, change, gen_mode }),
        3 => (
            idx(),
            proptest::collection::vec(trait_gen(), 0..=2),
            proptest::bool::weighted(0.15),
            gen_mode(),
        )
            .prop_map(|(p, traits, bad, gen_mode)| Op::SetTraits { p, traits, bad, gen_mode }),
        16 => (
            req_gen(),
            proptest::option::weighted(0.6, idx()),
            prop_oneof![6 => Just(1u32), 2 => Just(2u32), 1 => Just(3u32)],
            proptest::option::weighted(0.2, 0usize..ZONES.len()),
            proptest::option::weighted(0.1, 0usize..2),
            proptest::option::weighted(0.1, 0usize..3),
            0usize..PROJECTS.len(),
            proptest::bool::weighted(0.15),
        )
            .prop_map(
                |(req, group, n, zone, required, forbidden, project, release_after)| Op::Select {
                    req,
                    group,
                    n,
                    zone,
                    required,
                    forbidden,
                    project,
                    release_after,
                },
            ),
        6 => (idx(), proptest::bool::weighted(0.1))
            .prop_map(|(c, unknown)| Op::Release { c, unknown }),
        8 => (
            proptest::option::weighted(0.6, idx()),
            proptest::collection::vec(
                (idx(), proptest::collection::vec((idx(), idx()), 1..=3)),
                1..=2,
            ),
            gen_mode(),
            prop_oneof![
                6 => Just(ReplaceMode::Valid),
                2 => Just(ReplaceMode::OverCapacity),
                1 => Just(ReplaceMode::Empty),
                2 => bad_alloc().prop_map(ReplaceMode::Invalid),
            ],
        )
            .prop_map(|(target, entries, gen_mode, mode)| Op::Replace {
                target,
                entries,
                gen_mode,
                mode,
            }),
        6 => (
            idx(),
            req_gen(),
            proptest::bool::weighted(0.3),
            proptest::option::weighted(0.15, idx()),
        )
            .prop_map(|(c, req, allow_same_host, group_override)| Op::MoveClaim {
                c,
                req,
                allow_same_host,
                group_override,
            }),
        3 => idx().prop_map(|c| Op::ConfirmMove { c }),
        3 => idx().prop_map(|c| Op::RevertMove { c }),
        3 => (idx(), proptest::bool::weighted(0.1))
            .prop_map(|(p, unknown)| Op::DeleteProvider { p, unknown }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        select(vec![1usize, 2, 4, 8]),
        proptest::collection::vec(host_gen(), 3..=8),
        proptest::collection::vec(group_gen(), 1..=3),
        proptest::collection::vec(op_gen(), 30..=60),
    )
        .prop_map(|(shards, hosts, groups, ops)| Scenario {
            shards,
            hosts,
            groups,
            ops,
        })
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct ProvSnap {
    name: String,
    generation: u64,
    zone: String,
    traits: Vec<String>,
    disabled: bool,
    up: bool,
    instances: u32,
    usages: BTreeMap<String, ProviderUsage>,
}

impl ProvSnap {
    fn used(&self, class: &str) -> u64 {
        self.usages.get(class).map_or(0, |u| u.used)
    }

    /// Whether one allocation of `amount` of `class` fits, counting `freed` as given back.
    fn fits(&self, class: &str, amount: u64, freed: u64) -> Result<(), FitError> {
        let Some(u) = self.usages.get(class) else {
            return Err(FitError::NoInventory);
        };
        if u.inventory.check_amount(amount).is_err() {
            return Err(FitError::Units);
        }
        if (u.capacity as i64 - u.used as i64 + freed as i64) < amount as i64 {
            return Err(FitError::Capacity);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FitError {
    NoInventory,
    Units,
    Capacity,
}

#[derive(Debug, Clone, PartialEq)]
struct Snap {
    providers: BTreeMap<Uuid, ProvSnap>,
    consumers: BTreeMap<Uuid, ConsumerAllocations>,
    groups: BTreeMap<Uuid, ServerGroup>,
}

fn norm(mut v: Vec<Allocation>) -> Vec<Allocation> {
    for a in &mut v {
        a.resources.sort();
    }
    v.sort();
    v
}

fn prov_snap(p: ProviderInfo) -> ProvSnap {
    ProvSnap {
        name: p.name,
        generation: p.generation,
        zone: p.availability_zone,
        traits: p.traits,
        disabled: p.disabled,
        up: p.up,
        instances: p.instances,
        usages: p.usages.into_iter().map(|u| (u.class.clone(), u)).collect(),
    }
}

fn snapshot(e: &Engine, groups: &[GroupMeta]) -> Snap {
    let providers = e
        .list_providers(&ProviderFilter::default())
        .expect("list providers")
        .into_iter()
        .map(|p| (p.uuid, prov_snap(p)))
        .collect();
    let consumers = e
        .consumer_ids()
        .into_iter()
        .map(|c| {
            let mut a = e
                .get_allocations(&c)
                .expect("listed consumer has allocations");
            a.allocations = norm(a.allocations);
            a.moving = norm(a.moving);
            (c, a)
        })
        .collect();
    let groups = groups
        .iter()
        .map(|g| (g.id, e.get_group(&g.name).expect("group exists")))
        .collect();
    Snap {
        providers,
        consumers,
        groups,
    }
}

/// Every provider a consumer holds, source and destination of a move.
fn hosts_of(c: &ConsumerAllocations) -> BTreeSet<Uuid> {
    c.allocations
        .iter()
        .chain(&c.moving)
        .map(|a| a.provider)
        .collect()
}

/// Invariants of one state: (b) and (c).
fn check_state(s: &Snap, groups: &[GroupMeta]) {
    // (b) usage and instance counts recomputed from the consumers.
    let mut used: BTreeMap<(Uuid, String), u64> = BTreeMap::new();
    let mut instances: BTreeMap<Uuid, u32> = BTreeMap::new();
    for (cu, c) in &s.consumers {
        assert!(
            !c.allocations.is_empty(),
            "consumer {cu} is listed with no allocations: {c:?}"
        );
        for a in c.allocations.iter().chain(&c.moving) {
            let p = s.providers.get(&a.provider).unwrap_or_else(|| {
                panic!(
                    "consumer {cu} holds allocations on missing provider {}",
                    a.provider
                )
            });
            *instances.entry(a.provider).or_default() += 1;
            for (class, n) in &a.resources {
                assert!(
                    p.usages.contains_key(class),
                    "consumer {cu} holds {class} on {} which has no such inventory",
                    p.name
                );
                *used.entry((a.provider, class.clone())).or_default() += n;
            }
        }
    }
    for (pu, p) in &s.providers {
        for (class, u) in &p.usages {
            let want = used.get(&(*pu, class.clone())).copied().unwrap_or(0);
            assert_eq!(
                u.used, want,
                "provider {} {class}: used {} but consumers' allocations sum to {want}",
                p.name, u.used
            );
        }
        let want = instances.get(pu).copied().unwrap_or(0);
        assert_eq!(
            p.instances, want,
            "provider {}: instances {} but {want} allocations reference it",
            p.name, p.instances
        );
    }

    // (c) groups: the group's view equals what the consumers say, and the policy holds.
    let names: HashMap<Uuid, &str> = s
        .providers
        .iter()
        .map(|(u, p)| (*u, p.name.as_str()))
        .collect();
    for g in groups {
        let view = &s.groups[&g.id];
        let members: Vec<Uuid> = s
            .consumers
            .iter()
            .filter(|(_, c)| c.group == Some(g.id))
            .map(|(u, _)| *u)
            .collect();
        assert_eq!(view.members, members, "group {} members", g.name);
        let mut per_host: BTreeMap<String, u32> = BTreeMap::new();
        for m in &members {
            for h in hosts_of(&s.consumers[m]) {
                *per_host.entry(names[&h].to_string()).or_default() += 1;
            }
        }
        let per_host: Vec<(String, u32)> = per_host.into_iter().collect();
        assert_eq!(
            view.hosts, per_host,
            "group {} ({}) host counts disagree with its members' allocations",
            g.name, g.policy
        );
        match g.policy {
            GroupPolicy::AntiAffinity => {
                for (h, n) in &per_host {
                    assert!(
                        *n <= g.max,
                        "anti-affinity group {} has {n} members on {h} (max {})",
                        g.name,
                        g.max
                    );
                }
            }
            GroupPolicy::Affinity => {
                // Settled members (not mid-move) share one host; a member mid-move may hold
                // its source and a destination (a sole member may migrate).
                let settled: BTreeSet<&str> = members
                    .iter()
                    .map(|m| &s.consumers[m])
                    .filter(|c| c.moving.is_empty())
                    .flat_map(|c| c.allocations.iter().map(|a| names[&a.provider]))
                    .collect();
                assert!(
                    settled.len() <= 1,
                    "affinity group {} has settled members on {settled:?} ({per_host:?})",
                    g.name
                );
            }
            GroupPolicy::SoftAffinity | GroupPolicy::SoftAntiAffinity => {}
        }
    }
}

/// Whether `p` passes the static filters of a request (zone, liveness, traits).
fn static_ok(
    p: &ProvSnap,
    zone: Option<&str>,
    required: Option<&str>,
    forbidden: Option<&str>,
) -> bool {
    p.up && !p.disabled
        && zone.is_none_or(|z| p.zone == z)
        && required.is_none_or(|t| p.traits.iter().any(|x| x == t))
        && forbidden.is_none_or(|t| !p.traits.iter().any(|x| x == t))
}

/// Transition invariants: (a), (e), and (f) when the operation failed.
fn check_transition(before: &Snap, after: &Snap, failed: bool, generations_may_move: bool) {
    for (pu, a) in &after.providers {
        let b = before.providers.get(pu);
        // (a) over capacity only if it already was and usage did not grow.
        for (class, u) in &a.usages {
            if u.used > u.capacity {
                let prev = b.map_or(0, |b| b.used(class));
                assert!(
                    b.is_some() && u.used <= prev,
                    "provider {} {class}: used {} > capacity {} and usage grew from {prev}",
                    a.name,
                    u.used,
                    u.capacity
                );
            }
        }
        // (e) generations never decrease; every change bumps them.
        if let Some(b) = b {
            assert!(
                a.generation >= b.generation,
                "provider {} generation went back from {} to {}",
                a.name,
                b.generation,
                a.generation
            );
            let changed = a.usages != b.usages || a.traits != b.traits || a.name != b.name;
            if changed {
                assert!(
                    a.generation > b.generation,
                    "provider {} changed without a generation bump: {b:?} -> {a:?}",
                    a.name
                );
            }
        }
    }
    if failed {
        // (f) nothing changed.
        if generations_may_move {
            let strip = |s: &Snap| -> Snap {
                let mut s = s.clone();
                for p in s.providers.values_mut() {
                    p.generation = 0;
                }
                s
            };
            assert_eq!(
                strip(before),
                strip(after),
                "failed operation changed state"
            );
        } else {
            assert_eq!(before, after, "failed operation changed state");
        }
    }
}

fn assert_named(e: &EngineError) {
    if let EngineError::InvalidArgument { field, reason } = e {
        assert!(
            !field.is_empty(),
            "InvalidArgument without a field: {reason}"
        );
        assert!(
            !reason.is_empty(),
            "InvalidArgument on {field} without a reason"
        );
    }
}

fn invalid_field(r: &Result<impl std::fmt::Debug, EngineError>) -> Option<&str> {
    match r {
        Err(EngineError::InvalidArgument { field, .. }) => Some(field),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The shadow model and the driver
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GroupMeta {
    id: Uuid,
    name: String,
    policy: GroupPolicy,
    max: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct MConsumer {
    generation: u64,
    allocations: Vec<Allocation>,
    moving: Vec<Allocation>,
    group: Option<Uuid>,
}

struct Harness {
    engine: Engine,
    groups: Vec<GroupMeta>,
    /// Live providers in creation order.
    providers: Vec<Uuid>,
    /// Live consumers in creation order.
    consumers: Vec<Uuid>,
    model: HashMap<Uuid, MConsumer>,
    next_host: u128,
    next_consumer: u128,
}

fn provider_uuid(n: u128) -> Uuid {
    Uuid::from_u128(
        0x5eed_0000_0000_0000_0000_0000_0000_0000 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

fn amounts_for(class: usize) -> &'static [u64] {
    match class {
        0 => &[1, 2, 3, 4],
        1 => &[1, 2],
        2 => &[256, 512, 1024, 2048],
        3 => &[5, 10, 20],
        _ => &[1, 2],
    }
}

fn class_index(name: &str) -> usize {
    CLASSES.iter().position(|c| *c == name).unwrap_or(0)
}

fn req_resources(req: &Req) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = req
        .iter()
        .map(|(c, n)| (CLASSES[*c].to_string(), *n))
        .collect();
    v.sort();
    v
}

impl Harness {
    fn new(sc: &Scenario) -> Self {
        let config = EngineConfig {
            shards: sc.shards,
            ..EngineConfig::default()
        };
        let engine = Engine::new(config).expect("engine");
        let mut groups = Vec::new();
        for (i, g) in sc.groups.iter().enumerate() {
            let sg = engine
                .create_group(ServerGroupSpec {
                    id: Some(Uuid::from_u128(0x6000 + i as u128)),
                    name: format!("g{i}-{}", g.policy),
                    policy: g.policy,
                    max_server_per_host: g.max,
                    project_id: "p1".into(),
                })
                .expect("group");
            groups.push(GroupMeta {
                id: sg.id,
                name: sg.name,
                policy: sg.policy,
                max: sg.max_server_per_host,
            });
        }
        let mut h = Self {
            engine,
            groups,
            providers: Vec::new(),
            consumers: Vec::new(),
            model: HashMap::new(),
            next_host: 0,
            next_consumer: 0,
        };
        for host in &sc.hosts {
            h.create_provider(host, false).expect("initial provider");
        }
        h
    }

    fn spec_of(&self, host: &HostGen, name: String, uuid: Uuid) -> ProviderSpec {
        let mut spec = ProviderSpec::new(name).uuid(uuid);
        for (c, i) in &host.invs {
            spec = spec.inventory(CLASSES[*c], *i);
        }
        for t in &host.traits {
            spec = spec.with_trait(TRAITS[*t]);
        }
        for a in &host.aggs {
            spec = spec.aggregate(AGGREGATES[*a]);
        }
        if let Some(z) = host.zone {
            spec = spec.az(ZONES[z]);
        }
        spec
    }

    fn create_provider(&mut self, host: &HostGen, dup_name: bool) -> Result<(), EngineError> {
        let n = self.next_host;
        self.next_host += 1;
        let name = if dup_name && n > 0 {
            format!("host{}", n - 1)
        } else {
            format!("host{n}")
        };
        let uuid = provider_uuid(n);
        let spec = self.spec_of(host, name.clone(), uuid);
        let r = self.engine.create_provider(spec);
        let name_taken = self
            .providers
            .iter()
            .any(|p| self.engine.get_provider(p).is_ok_and(|i| i.name == name));
        match r {
            Ok(info) => {
                assert!(!name_taken, "duplicate name {name} accepted");
                assert_eq!(info.generation, 0);
                assert_eq!(info.uuid, uuid);
                let mut want: Vec<&str> = host.invs.iter().map(|(c, _)| CLASSES[*c]).collect();
                want.sort();
                let mut got: Vec<&str> = info.usages.iter().map(|u| u.class.as_str()).collect();
                got.sort();
                assert_eq!(got, want, "created provider's classes");
                self.providers.push(uuid);
                Ok(())
            }
            Err(e) => {
                assert!(
                    name_taken && matches!(e, EngineError::AlreadyExists { .. }),
                    "create_provider {name}: unexpected {e:?}"
                );
                Err(e)
            }
        }
    }

    fn fresh_consumer(&mut self) -> Uuid {
        self.next_consumer += 1;
        Uuid::from_u128(0xc0c0_0000_0000_0000_0000_0000_0000_0000 | self.next_consumer)
    }

    fn provider(&self, p: usize) -> Option<Uuid> {
        (!self.providers.is_empty()).then(|| self.providers[p % self.providers.len()])
    }

    fn consumer(&self, c: usize) -> Option<Uuid> {
        (!self.consumers.is_empty()).then(|| self.consumers[c % self.consumers.len()])
    }

    fn group(&self, g: usize) -> &GroupMeta {
        &self.groups[g % self.groups.len()]
    }

    fn remove_consumer(&mut self, c: &Uuid) {
        self.model.remove(c);
        self.consumers.retain(|x| x != c);
    }

    /// The model equals the engine's consumers.
    fn check_model(&self, s: &Snap) {
        let engine_ids: BTreeSet<Uuid> = s.consumers.keys().copied().collect();
        let model_ids: BTreeSet<Uuid> = self.model.keys().copied().collect();
        assert_eq!(engine_ids, model_ids, "consumer sets differ from the model");
        assert_eq!(self.consumers.len(), self.model.len());
        for (u, m) in &self.model {
            let c = &s.consumers[u];
            let got = MConsumer {
                generation: c.generation,
                allocations: c.allocations.clone(),
                moving: c.moving.clone(),
                group: c.group,
            };
            let mut want = m.clone();
            want.allocations = norm(want.allocations);
            want.moving = norm(want.moving);
            assert_eq!(got, want, "consumer {u} differs from the model");
        }
        let live: BTreeSet<Uuid> = s.providers.keys().copied().collect();
        let model_live: BTreeSet<Uuid> = self.providers.iter().copied().collect();
        assert_eq!(live, model_live, "provider sets differ from the model");
    }

    /// Runs one operation; returns whether it failed and whether a failure may still have
    /// moved provider generations (a multi-instance placement rolled back).
    fn run(&mut self, op: &Op, before: &Snap) -> (bool, bool) {
        match op {
            Op::CreateProvider { host, dup_name } => {
                (self.create_provider(host, *dup_name).is_err(), false)
            }
            Op::SetInventories {
                p,
                change,
                gen_mode,
            } => (self.set_inventories(*p, change, *gen_mode, before), false),
            Op::SetTraits {
                p,
                traits,
                bad,
                gen_mode,
            } => (self.set_traits(*p, traits, *bad, *gen_mode, before), false),
            Op::Select {
                req,
                group,
                n,
                zone,
                required,
                forbidden,
                project,
                release_after,
            } => {
                let failed = self.select(
                    req,
                    *group,
                    *n,
                    *zone,
                    *required,
                    *forbidden,
                    *project,
                    *release_after,
                    before,
                );
                (failed, failed && *n > 1)
            }
            Op::Release { c, unknown } => (self.release(*c, *unknown, before), false),
            Op::Replace {
                target,
                entries,
                gen_mode,
                mode,
            } => (
                self.replace(*target, entries, *gen_mode, *mode, before),
                false,
            ),
            Op::MoveClaim {
                c,
                req,
                allow_same_host,
                group_override,
            } => (
                self.move_claim(*c, req, *allow_same_host, *group_override, before),
                false,
            ),
            Op::ConfirmMove { c } => (self.finish_move(*c, true), false),
            Op::RevertMove { c } => (self.finish_move(*c, false), false),
            Op::DeleteProvider { p, unknown } => {
                (self.delete_provider(*p, *unknown, before), false)
            }
        }
    }

    fn generation_arg(&self, mode: GenMode, current: u64) -> Option<u64> {
        match mode {
            GenMode::Current => Some(current),
            GenMode::Unchecked => None,
            GenMode::Stale if current > 0 && current.is_multiple_of(2) => Some(current - 1),
            GenMode::Stale => Some(current + 1),
        }
    }

    fn set_inventories(
        &mut self,
        p: usize,
        change: &InvChange,
        gen_mode: GenMode,
        before: &Snap,
    ) -> bool {
        let Some(pu) = self.provider(p) else {
            return false;
        };
        let ps = &before.providers[&pu];
        let current: Vec<(String, Inventory)> = ps
            .usages
            .iter()
            .map(|(c, u)| (c.clone(), u.inventory))
            .collect();
        let mut expect_field: Option<String> = None;
        let invs: Vec<(String, Inventory)> = match change {
            InvChange::Scale(pct) => current
                .iter()
                .map(|(c, i)| {
                    let total = (i.total * pct / 100).clamp(1, MAX_AMOUNT);
                    (
                        c.clone(),
                        Inventory {
                            total,
                            reserved: i.reserved.min(total),
                            ..*i
                        },
                    )
                })
                .collect(),
            InvChange::Fresh(v) => v
                .iter()
                .map(|(c, i)| (CLASSES[*c].to_string(), *i))
                .collect(),
            InvChange::Invalid(bad, pos) => {
                let mut v = if current.is_empty() {
                    vec![("VCPU".to_string(), Inventory::new(4))]
                } else {
                    current.clone()
                };
                let k = pos % v.len();
                let class = v[k].0.clone();
                let i = &mut v[k].1;
                let sub = |s: &str| Some(format!("inventories[{class}].{s}"));
                expect_field = match bad {
                    BadInv::NanRatio => {
                        i.allocation_ratio = f64::NAN;
                        sub("allocation_ratio")
                    }
                    BadInv::InfRatio => {
                        i.allocation_ratio = f64::INFINITY;
                        sub("allocation_ratio")
                    }
                    BadInv::ZeroRatio => {
                        i.allocation_ratio = 0.0;
                        sub("allocation_ratio")
                    }
                    BadInv::NegativeRatio => {
                        i.allocation_ratio = -1.5;
                        sub("allocation_ratio")
                    }
                    BadInv::HugeRatio => {
                        i.allocation_ratio = 2.0e6;
                        sub("allocation_ratio")
                    }
                    BadInv::ReservedOverTotal => {
                        i.reserved = i.total + 1;
                        sub("reserved")
                    }
                    BadInv::MinOverMax => {
                        i.min_unit = 3;
                        i.max_unit = 2;
                        sub("max_unit")
                    }
                    BadInv::MinZero => {
                        i.min_unit = 0;
                        sub("min_unit")
                    }
                    BadInv::StepZero => {
                        i.step_size = 0;
                        sub("step_size")
                    }
                    BadInv::TotalZero => {
                        i.total = 0;
                        i.reserved = 0;
                        sub("total")
                    }
                    BadInv::TotalOverMax => {
                        i.total = MAX_AMOUNT + 1;
                        sub("total")
                    }
                    BadInv::UnknownClass(name) => {
                        v[k].0 = name.to_string();
                        Some(format!("inventories[{k}].resource_class"))
                    }
                    BadInv::Duplicate => {
                        let dup = v[k].clone();
                        v.push(dup);
                        Some(format!("inventories[{class}]"))
                    }
                };
                v
            }
        };
        let generation = self.generation_arg(gen_mode, ps.generation);
        let r = self.engine.set_inventories(&pu, generation, &invs);
        let dropped_in_use = ps
            .usages
            .iter()
            .any(|(c, u)| u.used > 0 && !invs.iter().any(|(x, _)| x == c));
        if let Some(field) = expect_field {
            assert_eq!(
                invalid_field(&r),
                Some(field.as_str()),
                "set_inventories {invs:?}: {r:?}"
            );
        } else if generation.is_some_and(|g| g != ps.generation) {
            assert!(
                matches!(r, Err(EngineError::GenerationConflict { .. })),
                "stale generation accepted: {r:?}"
            );
        } else if dropped_in_use {
            assert!(
                matches!(r, Err(EngineError::FailedPrecondition(_))),
                "removing a class in use: {r:?}"
            );
        } else {
            let g = r.unwrap_or_else(|e| panic!("set_inventories {invs:?}: {e:?}"));
            let info = self.engine.get_provider(&pu).expect("provider");
            assert_eq!(
                g, info.generation,
                "set_inventories returns the new generation"
            );
            let mut want = invs.clone();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            let mut got: Vec<(String, Inventory)> = info
                .usages
                .iter()
                .map(|u| (u.class.clone(), u.inventory))
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "inventories as set");
            for u in &info.usages {
                assert_eq!(u.used, ps.used(&u.class), "set_inventories kept usage");
            }
            return false;
        }
        true
    }

    fn set_traits(
        &mut self,
        p: usize,
        traits: &[usize],
        bad: bool,
        gen_mode: GenMode,
        before: &Snap,
    ) -> bool {
        let Some(pu) = self.provider(p) else {
            return false;
        };
        let ps = &before.providers[&pu];
        let mut names: Vec<String> = traits.iter().map(|t| TRAITS[*t].to_string()).collect();
        if bad {
            names.push("not-a-trait".into());
        }
        let generation = self.generation_arg(gen_mode, ps.generation);
        let r = self.engine.set_traits(&pu, generation, &names);
        if bad {
            let field = format!("traits[{}]", names.len() - 1);
            assert_eq!(invalid_field(&r), Some(field.as_str()), "{r:?}");
            return true;
        }
        if generation.is_some_and(|g| g != ps.generation) {
            assert!(
                matches!(r, Err(EngineError::GenerationConflict { .. })),
                "{r:?}"
            );
            return true;
        }
        r.expect("set_traits");
        let info = self.engine.get_provider(&pu).expect("provider");
        let mut want = names.clone();
        want.sort();
        want.dedup();
        assert_eq!(info.traits, want);
        assert_eq!(info.disabled, want.iter().any(|t| t == DISABLED_TRAIT));
        false
    }

    /// Hosts a single-instance request may go to, per the filters (the oracle).
    #[allow(clippy::too_many_arguments)]
    fn feasible(
        &self,
        before: &Snap,
        req: &[(String, u64)],
        group: Option<&GroupMeta>,
        zone: Option<&str>,
        required: Option<&str>,
        forbidden: Option<&str>,
    ) -> BTreeSet<Uuid> {
        let max_instances = self.engine.config().scheduler.max_instances_per_host;
        before
            .providers
            .iter()
            .filter(|(_, p)| {
                static_ok(p, zone, required, forbidden)
                    && p.instances < max_instances
                    && req.iter().all(|(c, n)| p.fits(c, *n, 0).is_ok())
                    && group.is_none_or(|g| {
                        let view = &before.groups[&g.id];
                        let here = view
                            .hosts
                            .iter()
                            .find(|(h, _)| *h == p.name)
                            .map_or(0, |(_, n)| *n);
                        match g.policy {
                            GroupPolicy::AntiAffinity => here < g.max,
                            // Members on two hosts (a sole member mid-migration): no
                            // host is certain to be the group's until the move finishes.
                            GroupPolicy::Affinity => {
                                view.hosts.is_empty() || (view.hosts.len() == 1 && here > 0)
                            }
                            _ => true,
                        }
                    })
            })
            .map(|(u, _)| *u)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        req: &Req,
        group: Option<usize>,
        n: u32,
        zone: Option<usize>,
        required: Option<usize>,
        forbidden: Option<usize>,
        project: usize,
        release_after: bool,
        before: &Snap,
    ) -> bool {
        let resources = req_resources(req);
        let group = group.map(|g| self.group(g).clone());
        let zone = zone.map(|z| ZONES[z]);
        let required = required.map(|t| TRAITS[t]);
        let forbidden = forbidden.map(|t| TRAITS[t]);
        let uuids: Vec<Uuid> = (0..n).map(|_| self.fresh_consumer()).collect();
        let spec = RequestSpec {
            resources: resources.clone(),
            num_instances: n,
            instance_uuids: uuids.clone(),
            group: group.as_ref().map(|g| g.name.clone()),
            availability_zone: zone.map(str::to_string),
            required_traits: required.iter().map(|t| t.to_string()).collect(),
            forbidden_traits: forbidden
                .iter()
                .filter(|f| Some(**f) != required)
                .map(|t| t.to_string())
                .collect(),
            project_id: PROJECTS[project].into(),
            user_id: "u1".into(),
            ..RequestSpec::default()
        };
        let forbidden = forbidden.filter(|f| Some(*f) != required);
        let r = self.engine.select_destinations(&spec);
        let feasible = (n == 1).then(|| {
            self.feasible(
                before,
                &resources,
                group.as_ref(),
                zone,
                required,
                forbidden,
            )
        });
        match r {
            Ok(sels) => {
                assert_eq!(sels.len(), n as usize);
                for (sel, u) in sels.iter().zip(&uuids) {
                    assert_eq!(sel.consumer, *u);
                    let mut got = sel.allocations.clone();
                    got.sort();
                    assert_eq!(got, resources, "claimed what was asked");
                    let p = before
                        .providers
                        .get(&sel.host.uuid)
                        .expect("chosen host existed");
                    assert_eq!(p.name, sel.host.name);
                    assert!(
                        static_ok(p, zone, required, forbidden),
                        "host {} fails zone/traits/liveness for {spec:?}",
                        p.name
                    );
                    if let Some(f) = &feasible {
                        assert!(
                            f.contains(&sel.host.uuid),
                            "host {} chosen but the oracle rejects it",
                            p.name
                        );
                    }
                    self.consumers.push(*u);
                    self.model.insert(
                        *u,
                        MConsumer {
                            generation: 1,
                            allocations: vec![Allocation {
                                provider: sel.host.uuid,
                                resources: resources.clone(),
                            }],
                            moving: Vec::new(),
                            group: group.as_ref().map(|g| g.id),
                        },
                    );
                }
                // (a) strictly: the claimed classes are within capacity.
                for sel in &sels {
                    let info = self.engine.get_provider(&sel.host.uuid).expect("host");
                    for u in &info.usages {
                        if resources.iter().any(|(c, _)| *c == u.class) {
                            assert!(
                                u.used <= u.capacity,
                                "claim over-committed {} {}: {} > {}",
                                info.name,
                                u.class,
                                u.used,
                                u.capacity
                            );
                        }
                    }
                }
                if release_after {
                    // (d) claim then release: usage is exactly what it was.
                    for u in &uuids {
                        self.engine
                            .release(u)
                            .expect("release what was just placed");
                        self.remove_consumer(u);
                    }
                    let after = snapshot(&self.engine, &self.groups);
                    for (pu, p) in &before.providers {
                        let a = &after.providers[pu];
                        let used = |s: &ProvSnap| -> Vec<(String, u64)> {
                            s.usages.iter().map(|(c, u)| (c.clone(), u.used)).collect()
                        };
                        assert_eq!(used(a), used(p), "release did not restore {}", p.name);
                        assert_eq!(a.instances, p.instances);
                    }
                    assert_eq!(after.consumers, before.consumers);
                    assert_eq!(after.groups, before.groups);
                }
                false
            }
            Err(e) => {
                assert_named(&e);
                match &e {
                    EngineError::NoValidHost(_) => {
                        if let Some(f) = &feasible {
                            let names: Vec<&str> = f
                                .iter()
                                .map(|u| before.providers[u].name.as_str())
                                .collect();
                            assert!(
                                f.is_empty(),
                                "no valid host ({e}) but the oracle accepts {names:?} for {spec:?}"
                            );
                        }
                    }
                    EngineError::InvalidArgument { .. } => {}
                    other => panic!("select_destinations: unexpected {other:?}"),
                }
                true
            }
        }
    }

    fn release(&mut self, c: usize, unknown: bool, before: &Snap) -> bool {
        let target = match self.consumer(c) {
            Some(u) if !unknown => u,
            _ => Uuid::from_u128(0xdead_beef),
        };
        let r = self.engine.release(&target);
        let Some(held) = before.consumers.get(&target) else {
            assert!(
                matches!(r, Err(EngineError::NotFound { .. })),
                "release of unknown consumer: {r:?}"
            );
            return true;
        };
        r.expect("release");
        // (d) exactly what the consumer held comes back.
        let after = snapshot(&self.engine, &self.groups);
        let mut freed: BTreeMap<(Uuid, &str), u64> = BTreeMap::new();
        for a in held.allocations.iter().chain(&held.moving) {
            for (cl, n) in &a.resources {
                *freed.entry((a.provider, cl.as_str())).or_default() += n;
            }
        }
        for (pu, b) in &before.providers {
            let a = &after.providers[pu];
            for (cl, u) in &b.usages {
                let f = freed.get(&(*pu, cl.as_str())).copied().unwrap_or(0);
                assert_eq!(
                    a.usages[cl].used,
                    u.used - f,
                    "release of {target} on {} {cl}",
                    b.name
                );
            }
        }
        self.remove_consumer(&target);
        false
    }

    fn replace(
        &mut self,
        target: Option<usize>,
        entries: &[(usize, Vec<(usize, usize)>)],
        gen_mode: GenMode,
        mode: ReplaceMode,
        before: &Snap,
    ) -> bool {
        if self.providers.is_empty() {
            return false;
        }
        let consumer = match target.and_then(|t| self.consumer(t)) {
            Some(u) => u,
            None => self.fresh_consumer(),
        };
        let existing = before.consumers.get(&consumer);
        // Group members keep their hosts (a replacement is not group-aware by design:
        // Placement's PUT /allocations knows no server groups); they may change amounts.
        let member_hosts: Option<Vec<Uuid>> = existing
            .filter(|c| c.group.is_some())
            .map(|c| c.allocations.iter().map(|a| a.provider).collect());
        let mut allocations: Vec<Allocation> = Vec::new();
        for (k, (p, res)) in entries.iter().enumerate() {
            let pu = match &member_hosts {
                Some(h) if k < h.len() => h[k],
                Some(_) => break,
                None => self.providers[p % self.providers.len()],
            };
            if allocations.iter().any(|a| a.provider == pu) {
                continue;
            }
            let ps = &before.providers[&pu];
            let classes: Vec<&String> = ps.usages.keys().collect();
            let mut resources: Vec<(String, u64)> = Vec::new();
            for (ci, ai) in res {
                let class = if classes.is_empty() {
                    "VCPU".to_string()
                } else {
                    classes[ci % classes.len()].clone()
                };
                if resources.iter().any(|(c, _)| *c == class) {
                    continue;
                }
                let amounts = amounts_for(class_index(&class));
                resources.push((class, amounts[ai % amounts.len()]));
            }
            allocations.push(Allocation {
                provider: pu,
                resources,
            });
        }
        let freed = |pu: &Uuid, class: &str| -> u64 {
            existing.map_or(0, |c| {
                c.allocations
                    .iter()
                    .filter(|a| a.provider == *pu)
                    .flat_map(|a| &a.resources)
                    .filter(|(cl, _)| cl == class)
                    .map(|(_, n)| *n)
                    .sum()
            })
        };
        let mut expect_invalid: Option<String> = None;
        let mut expect_not_found = false;
        match mode {
            ReplaceMode::Valid => {}
            ReplaceMode::Empty => allocations.clear(),
            ReplaceMode::OverCapacity => {
                let a = &mut allocations[0];
                let ps = &before.providers[&a.provider];
                let (class, amount) = &mut a.resources[0];
                if let Some(u) = ps.usages.get(class.as_str()) {
                    let room = u.capacity as i64 - u.used as i64 + freed(&a.provider, class) as i64;
                    let step = u.inventory.step_size.max(1);
                    let want = (room.max(0) as u64 + 1).div_ceil(step) * step;
                    *amount = want.max(u.inventory.min_unit).min(MAX_AMOUNT);
                }
            }
            ReplaceMode::Invalid(bad) => {
                let k = allocations.len() - 1;
                let j = allocations[k].resources.len();
                let field = format!("allocations[{k}].resources[{j}]");
                match bad {
                    BadAlloc::UnknownClass => {
                        allocations[k].resources.push(("CUSTOM_NOPE".into(), 1));
                        expect_invalid = Some(field);
                    }
                    BadAlloc::BadClassName => {
                        allocations[k].resources.push(("vcpu".into(), 1));
                        expect_invalid = Some(field);
                    }
                    BadAlloc::ZeroAmount => {
                        allocations[k].resources.push(("DISK_GB".into(), 0));
                        expect_invalid = Some(field);
                    }
                    BadAlloc::TooLarge => {
                        allocations[k]
                            .resources
                            .push(("DISK_GB".into(), MAX_AMOUNT + 1));
                        expect_invalid = Some(field);
                    }
                    BadAlloc::DuplicateProvider => {
                        let dup = allocations[k].clone();
                        allocations.push(dup);
                        expect_invalid = Some(format!("allocations[{}].provider", k + 1));
                    }
                    BadAlloc::EmptyResources => {
                        allocations[k].resources.clear();
                        expect_invalid = Some(format!("allocations[{k}].resources"));
                    }
                    BadAlloc::UnknownProvider => {
                        allocations.push(Allocation {
                            provider: Uuid::from_u128(0xbad),
                            resources: vec![("VCPU".into(), 1)],
                        });
                        expect_not_found = true;
                    }
                }
            }
        }
        let current = existing.map(|c| c.generation);
        let generation = match (gen_mode, current) {
            (GenMode::Current, g) => g,
            (GenMode::Unchecked, Some(_)) => None,
            (GenMode::Unchecked, None) => None,
            (GenMode::Stale, Some(g)) => Some(g + 1),
            (GenMode::Stale, None) => Some(1),
        };
        let req = AllocationRequest {
            consumer_generation: generation,
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: allocations.clone(),
        };
        let r = self.engine.replace_allocations(&consumer, req);
        if let Err(e) = &r {
            assert_named(e);
        }
        // What the engine must answer, in its order of checks.
        if let Some(field) = expect_invalid {
            assert_eq!(invalid_field(&r), Some(field.as_str()), "{allocations:?}");
            return true;
        }
        if expect_not_found {
            assert!(matches!(r, Err(EngineError::NotFound { .. })), "{r:?}");
            return true;
        }
        if generation != current {
            assert!(
                matches!(r, Err(EngineError::GenerationConflict { .. })),
                "replace with generation {generation:?} (current {current:?}): {r:?}"
            );
            return true;
        }
        if existing.is_some_and(|c| !c.moving.is_empty()) {
            assert!(
                matches!(r, Err(EngineError::FailedPrecondition(_))),
                "replace during a move: {r:?}"
            );
            return true;
        }
        let mut first_misfit: Option<FitError> = None;
        'check: for a in &allocations {
            let ps = &before.providers[&a.provider];
            for (class, n) in &a.resources {
                if let Err(f) = ps.fits(class, *n, freed(&a.provider, class)) {
                    first_misfit = Some(f);
                    break 'check;
                }
            }
        }
        match first_misfit {
            Some(FitError::Units) => {
                assert_eq!(invalid_field(&r), Some("allocations"), "{r:?}");
                return true;
            }
            Some(FitError::NoInventory | FitError::Capacity) => {
                assert!(
                    matches!(r, Err(EngineError::FailedPrecondition(_))),
                    "replace {allocations:?} should not fit: {r:?}"
                );
                return true;
            }
            None => {}
        }
        assert!(
            !matches!(mode, ReplaceMode::OverCapacity) || allocations.is_empty(),
            "over-capacity request fits?"
        );
        let g = r.unwrap_or_else(|e| panic!("replace {allocations:?}: {e:?}"));
        if allocations.is_empty() {
            if existing.is_some() {
                assert_eq!(Some(g), current.map(|c| c + 1));
                self.remove_consumer(&consumer);
            } else {
                assert_eq!(g, 0);
            }
            return false;
        }
        // (a) strictly: every class written is within capacity.
        for a in &allocations {
            let info = self.engine.get_provider(&a.provider).expect("provider");
            for u in &info.usages {
                if a.resources.iter().any(|(c, _)| *c == u.class) {
                    assert!(
                        u.used <= u.capacity,
                        "replace over-committed {} {}",
                        info.name,
                        u.class
                    );
                }
            }
        }
        match self.model.get_mut(&consumer) {
            Some(m) => {
                assert_eq!(g, m.generation + 1);
                m.generation = g;
                m.allocations = allocations;
            }
            None => {
                assert_eq!(g, 1);
                self.consumers.push(consumer);
                self.model.insert(
                    consumer,
                    MConsumer {
                        generation: 1,
                        allocations,
                        moving: Vec::new(),
                        group: None,
                    },
                );
            }
        }
        false
    }

    fn move_claim(
        &mut self,
        c: usize,
        req: &Req,
        allow_same_host: bool,
        group_override: Option<usize>,
        before: &Snap,
    ) -> bool {
        let Some(consumer) = self.consumer(c) else {
            return false;
        };
        let resources = req_resources(req);
        let override_group = group_override.map(|g| self.group(g).clone());
        let spec = RequestSpec {
            resources: resources.clone(),
            num_instances: 1,
            group: override_group.as_ref().map(|g| g.name.clone()),
            project_id: "p1".into(),
            user_id: "u1".into(),
            ..RequestSpec::default()
        };
        let r = self.engine.move_claim(&consumer, &spec, allow_same_host);
        let held = &before.consumers[&consumer];
        if let Err(e) = &r {
            assert_named(e);
        }
        if !held.moving.is_empty() {
            assert!(
                matches!(r, Err(EngineError::FailedPrecondition(_))),
                "second move claim: {r:?}"
            );
            return true;
        }
        if let Some(g) = override_group.as_ref().filter(|g| Some(g.id) != held.group) {
            // A move keeps the consumer's group: naming another one is refused.
            // (The request's own validation may answer first.)
            assert!(
                invalid_field(&r).is_some(),
                "move of {consumer} (group {:?}) into group {}: {r:?}",
                held.group,
                g.name
            );
            return true;
        }
        match r {
            Ok(sel) => {
                assert_eq!(sel.consumer, consumer);
                let mut got = sel.allocations.clone();
                got.sort();
                assert_eq!(got, resources);
                let src = hosts_of(held);
                if !allow_same_host {
                    assert!(
                        !src.contains(&sel.host.uuid),
                        "move landed on a source host without allow_same_host"
                    );
                }
                let p = &before.providers[&sel.host.uuid];
                assert!(static_ok(p, None, None, None), "move to unusable host");
                let info = self.engine.get_provider(&sel.host.uuid).expect("host");
                for u in &info.usages {
                    if resources.iter().any(|(c, _)| *c == u.class) {
                        assert!(u.used <= u.capacity, "move over-committed {}", info.name);
                    }
                }
                let m = self.model.get_mut(&consumer).expect("model consumer");
                m.generation += 1;
                m.moving = vec![Allocation {
                    provider: sel.host.uuid,
                    resources,
                }];
                false
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        EngineError::NoValidHost(_) | EngineError::InvalidArgument { .. }
                    ),
                    "move_claim: unexpected {e:?}"
                );
                true
            }
        }
    }

    fn finish_move(&mut self, c: usize, confirm: bool) -> bool {
        let Some(consumer) = self.consumer(c) else {
            return false;
        };
        let r = if confirm {
            self.engine.confirm_move(&consumer)
        } else {
            self.engine.revert_move(&consumer)
        };
        let m = self.model.get_mut(&consumer).expect("model consumer");
        if m.moving.is_empty() {
            assert!(
                matches!(r, Err(EngineError::FailedPrecondition(_))),
                "finish without a move: {r:?}"
            );
            return true;
        }
        r.expect("finish move");
        let dest = std::mem::take(&mut m.moving);
        if confirm {
            m.allocations = dest;
        }
        m.generation += 1;
        false
    }

    fn delete_provider(&mut self, p: usize, unknown: bool, before: &Snap) -> bool {
        let target = match self.provider(p) {
            Some(u) if !unknown => u,
            _ => Uuid::from_u128(0xfeed),
        };
        let r = self.engine.delete_provider(&target);
        match before.providers.get(&target) {
            None => {
                assert!(matches!(r, Err(EngineError::NotFound { .. })), "{r:?}");
                true
            }
            Some(ps) => {
                let busy = ps.instances > 0 || ps.usages.values().any(|u| u.used > 0);
                if busy {
                    assert!(
                        matches!(r, Err(EngineError::FailedPrecondition(_))),
                        "deleting a provider in use: {r:?}"
                    );
                    true
                } else {
                    r.expect("delete idle provider");
                    self.providers.retain(|x| *x != target);
                    assert!(self.engine.get_provider(&target).is_err());
                    false
                }
            }
        }
    }
}

fn run_scenario(sc: &Scenario) {
    let mut h = Harness::new(sc);
    let mut before = snapshot(&h.engine, &h.groups);
    check_state(&before, &h.groups);
    h.check_model(&before);
    for (i, op) in sc.ops.iter().enumerate() {
        let (failed, generations_may_move) = h.run(op, &before);
        let after = snapshot(&h.engine, &h.groups);
        let ctx = format!("op #{i}: {op:?}");
        let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_state(&after, &h.groups);
            check_transition(&before, &after, failed, generations_may_move);
            h.check_model(&after);
        }));
        if let Err(p) = checks {
            eprintln!("invariant broken after {ctx}");
            std::panic::resume_unwind(p);
        }
        before = after;
    }
    // Tear down: every consumer releases, every provider is then idle and deletable.
    for c in h.consumers.clone() {
        h.engine.release(&c).expect("final release");
    }
    let end = snapshot(&h.engine, &h.groups);
    assert!(end.consumers.is_empty());
    for (u, p) in &end.providers {
        assert_eq!(p.instances, 0, "{} still counts instances", p.name);
        assert!(
            p.usages.values().all(|u| u.used == 0),
            "{} still used",
            p.name
        );
        h.engine.delete_provider(u).expect("idle provider deletes");
    }
    for g in &h.groups {
        assert!(end.groups[&g.id].members.is_empty());
        assert!(end.groups[&g.id].hosts.is_empty());
        h.engine.delete_group(&g.name).expect("empty group deletes");
    }
}

proptest! {
    // 256 cases of 30–60 operations run in about a second; set BERTH_INVARIANT_CASES for a
    // longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("BERTH_INVARIANT_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operation_sequences_keep_the_invariants(sc in scenario()) {
        run_scenario(&sc);
    }
}

/// A move may not change the consumer's server group: joining a group half-way (only the
/// destination recorded) or a second group (never forgotten) corrupts the group's counts.
#[test]
fn move_claim_naming_another_group_is_refused() {
    let e = Engine::new(EngineConfig {
        shards: 2,
        ..EngineConfig::default()
    })
    .expect("engine");
    for i in 0..3 {
        e.create_provider(
            ProviderSpec::new(format!("h{i}"))
                .inventory("VCPU", Inventory::new(8))
                .inventory("MEMORY_MB", Inventory::new(8192)),
        )
        .expect("provider");
    }
    let anti = |name: &str| ServerGroupSpec {
        id: None,
        name: name.into(),
        policy: GroupPolicy::AntiAffinity,
        max_server_per_host: None,
        project_id: "p".into(),
    };
    e.create_group(anti("a")).expect("group a");
    e.create_group(anti("b")).expect("group b");
    let mut spec = RequestSpec::resources(&[("VCPU", 1), ("MEMORY_MB", 512)]);
    spec.group = Some("a".into());
    let member = e.select_destinations(&spec).expect("member of a")[0].consumer;
    let plain = e
        .select_destinations(&RequestSpec::resources(&[("VCPU", 1)]))
        .expect("ungrouped")[0]
        .consumer;

    let mut mv = RequestSpec::resources(&[("VCPU", 1)]);
    mv.group = Some("b".into());
    for c in [member, plain] {
        let r = e.move_claim(&c, &mv, false);
        assert!(
            matches!(&r, Err(EngineError::InvalidArgument { field, .. }) if field == "group"),
            "{r:?}"
        );
        assert!(e.get_allocations(&c).expect("consumer").moving.is_empty());
    }
    // Naming the consumer's own group is fine.
    mv.group = Some("a".into());
    e.move_claim(&member, &mv, false)
        .expect("move within own group");
    e.confirm_move(&member).expect("confirm");
    let a = e.get_group("a").expect("a");
    assert_eq!(a.members, vec![member]);
    assert_eq!(a.hosts.len(), 1);
    assert!(e.get_group("b").expect("b").members.is_empty());
    e.release(&member).expect("release");
    e.release(&plain).expect("release");
    e.delete_group("a").expect("a is empty");
    e.delete_group("b").expect("b is empty");
}

/// While the sole member of an affinity group migrates, it holds its source and its
/// destination; a new member placed then could land on either, and after the move is
/// confirmed (or reverted) the group would be split for good. Until the move finishes no
/// host is certain to be the group's, so new members are refused.
#[test]
fn affinity_member_cannot_join_while_the_sole_member_migrates() {
    let e = Engine::new(EngineConfig {
        shards: 2,
        ..EngineConfig::default()
    })
    .expect("engine");
    for i in 0..3 {
        e.create_provider(
            ProviderSpec::new(format!("h{i}"))
                .inventory("VCPU", Inventory::new(16))
                .inventory("MEMORY_MB", Inventory::new(16384)),
        )
        .expect("provider");
    }
    e.create_group(ServerGroupSpec {
        id: None,
        name: "aff".into(),
        policy: GroupPolicy::Affinity,
        max_server_per_host: None,
        project_id: "p".into(),
    })
    .expect("group");
    let member = || {
        let mut s = RequestSpec::resources(&[("VCPU", 1), ("MEMORY_MB", 512)]);
        s.group = Some("aff".into());
        s
    };
    let first = e.select_destinations(&member()).expect("first member")[0].clone();
    let settled_host = |e: &Engine| -> BTreeSet<Uuid> {
        e.consumer_ids()
            .iter()
            .map(|c| e.get_allocations(c).expect("consumer"))
            .filter(|c| c.moving.is_empty())
            .flat_map(|c| c.allocations.into_iter().map(|a| a.provider))
            .collect()
    };
    for confirm in [true, false] {
        let dest = e
            .move_claim(&first.consumer, &member(), false)
            .expect("the sole member may migrate");
        match e.select_destinations(&member()) {
            Err(EngineError::NoValidHost(n)) => {
                assert!(n.to_string().contains("ServerGroupAffinity"), "{n}")
            }
            other => panic!("a member joined mid-migration: {other:?}"),
        }
        if confirm {
            e.confirm_move(&first.consumer).expect("confirm");
        } else {
            e.revert_move(&first.consumer).expect("revert");
        }
        let joined = e
            .select_destinations(&member())
            .expect("joins after the move")[0]
            .clone();
        let home = settled_host(&e);
        assert_eq!(home.len(), 1, "the group is split: {home:?}");
        assert!(home.contains(&joined.host.uuid));
        if confirm {
            assert_eq!(joined.host.uuid, dest.host.uuid);
        }
        e.release(&joined.consumer).expect("release");
    }
}
