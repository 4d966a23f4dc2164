//! Differential test of the optimised scan (word-at-a-time filters with column fast paths,
//! per-shard unit-rule bounds, uniform weighers, block-pruned ranking) against a plain
//! per-host reference of the pipeline as first written: each filter a per-host predicate
//! charged in configured order, raw weigher values straight from the columns, Nova's
//! normalisation, and a stable sort by score (ties in scan order). `Explain` must agree
//! exactly — eliminations per reason, candidates, ranking, weights and every weigher's
//! contribution — on seeded clouds large enough for dense survivor words, with and without
//! unit rules, multi-word trait and aggregate rows, busy and failed hosts, ties, server
//! groups and custom classes.
//!
//! Filters and weighers whose code the optimisations did not touch (host lists, images,
//! capabilities, aggregate extra specs, the group filters and soft weighers) run as they
//! are inside the reference.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::context::RequestContext;
use super::filters::{Reason, Rejections};
use super::weighers::normalize;
use super::{Explanation, HostChoice, RankedHost, WeigherContribution};
use crate::intern::{has_all, has_any};
use crate::model::{
    Allocation, ClassId, GroupPolicy, Inventory, ProviderSpec, RequestSpec, ServerGroupSpec,
};
use crate::state::Engine;
use crate::state::shard::{DISABLED, ISOLATED, NSTD, Shard, UP};
use crate::{AllocationRequest, EngineConfig, EngineError};

/// Clears the alive bits of slots failing `keep`, charging them to `reason`.
fn apply(
    alive: &mut [u64],
    reason: Reason,
    rej: &mut Rejections,
    mut keep: impl FnMut(usize) -> bool,
) {
    let mut dropped = 0;
    for (w, word) in alive.iter_mut().enumerate() {
        for b in 0..64 {
            if *word & (1 << b) != 0 && !keep(w * 64 + b) {
                *word &= !(1 << b);
                dropped += 1;
            }
        }
    }
    rej.add(reason, dropped);
}

/// The raw value of weigher `wi` for slot `i`.
fn raw(e: &Engine, ctx: &RequestContext, s: &Shard, si: usize, i: usize, wi: usize) -> f64 {
    let w = &e.weighers[wi];
    match w.name() {
        "RAM" => s.free[ClassId::MEMORY_MB.0 as usize][i] as f64,
        "CPU" => s.free[ClassId::VCPU.0 as usize][i] as f64,
        "Disk" => s.free[ClassId::DISK_GB.0 as usize][i] as f64,
        "InstanceCount" => s.instances[i] as f64,
        "IoOps" => s.io_ops[i] as f64,
        "BuildFailure" => -(s.failures[i] as f64),
        _ => {
            let mut out = [0.0];
            w.weigh(ctx, s, si as u32, &[i as u32], &mut out);
            out[0]
        }
    }
}

fn reference_explain(e: &Engine, spec: &RequestSpec, limit: usize) -> Explanation {
    let ctx = RequestContext::prepare(e, spec).expect("valid request");
    let sched = &e.config.scheduler;
    let wsel: Vec<usize> = e
        .weighers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.multiplier() != 0.0 && w.active(&ctx))
        .map(|(i, _)| i)
        .collect();
    let mut hosts = 0;
    let mut rej = Rejections::default();
    // (shard, slot, raw per selected weigher), in scan order.
    let mut cands: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for si in 0..e.shards.len() {
        let s = e.shards[si].read();
        let mut alive = s.present.clone();
        hosts += alive.iter().map(|w| w.count_ones()).sum::<u32>();
        for f in e.filters.iter().filter(|f| f.active(&ctx)) {
            let r = Reason::Filter(f.name());
            let row = |i: usize| s.trait_row(i);
            let aggs = |i: usize| s.agg_row(i);
            match f.name() {
                "AvailabilityZone" => apply(&mut alive, r, &mut rej, |i| Some(s.az[i]) == ctx.az),
                "Compute" => apply(&mut alive, r, &mut rej, |i| {
                    s.flags[i] & (UP | DISABLED) == UP
                }),
                "Capacity" => {
                    for c in 0..NSTD {
                        let amt = ctx.std[c];
                        if amt > 0 {
                            let class = ClassId(c as u32);
                            let reason = Reason::Capacity(class);
                            apply(&mut alive, reason, &mut rej, |i| s.fits(i, class, amt));
                        }
                    }
                    for &(class, amt) in &ctx.custom {
                        let reason = Reason::Capacity(class);
                        apply(&mut alive, reason, &mut rej, |i| s.fits(i, class, amt));
                    }
                }
                "Traits" => apply(&mut alive, r, &mut rej, |i| {
                    !ctx.unknown_required_trait
                        && has_all(row(i), &ctx.required_traits)
                        && !has_any(row(i), &ctx.forbidden_traits)
                }),
                "MemberOf" => apply(&mut alive, r, &mut rej, |i| {
                    ctx.member_of.iter().all(|set| has_any(aggs(i), set))
                        && !has_any(aggs(i), &ctx.forbidden_aggregates)
                }),
                "NumInstances" => apply(&mut alive, r, &mut rej, |i| {
                    s.instances[i] < sched.max_instances_per_host
                }),
                "IoOps" => apply(&mut alive, r, &mut rej, |i| {
                    s.io_ops[i] < sched.max_io_ops_per_host
                }),
                "IsolatedHosts" => apply(&mut alive, r, &mut rej, |i| {
                    (s.flags[i] & ISOLATED != 0) == ctx.isolated_image
                }),
                _ => f.filter(&ctx, &s, si as u32, &mut alive, &mut rej),
            }
        }
        for (w, &word) in alive.iter().enumerate() {
            for b in 0..64 {
                if word & (1 << b) != 0 {
                    let i = w * 64 + b;
                    let raws = wsel.iter().map(|&wi| raw(e, &ctx, &s, si, i, wi)).collect();
                    cands.push((si, i, raws));
                }
            }
        }
    }
    let mut min = vec![f64::INFINITY; wsel.len()];
    let mut max = vec![f64::NEG_INFINITY; wsel.len()];
    for (_, _, raws) in &cands {
        for (k, &v) in raws.iter().enumerate() {
            min[k] = min[k].min(v);
            max[k] = max[k].max(v);
        }
    }
    let mults: Vec<f64> = wsel.iter().map(|&wi| e.weighers[wi].multiplier()).collect();
    let mut scored: Vec<(f64, usize)> = cands
        .iter()
        .enumerate()
        .map(|(c, (_, _, raws))| {
            let mut score = 0.0;
            for (k, &v) in raws.iter().enumerate() {
                score += mults[k] * normalize(v, min[k], max[k]);
            }
            (score, c)
        })
        .collect();
    // Stable: equal scores keep scan order.
    scored.sort_by(|a, b| b.0.partial_cmp(&a.0).expect("finite scores"));
    scored.truncate(limit);
    let ranked = scored
        .iter()
        .map(|&(score, c)| {
            let (si, i, raws) = &cands[c];
            let s = e.shards[*si].read();
            RankedHost {
                host: HostChoice {
                    uuid: s.uuid[*i],
                    name: s.name[*i].to_string(),
                },
                weight: score,
                contributions: wsel
                    .iter()
                    .enumerate()
                    .map(|(k, &wi)| {
                        let normalized = normalize(raws[k], min[k], max[k]);
                        WeigherContribution {
                            weigher: e.weighers[wi].name(),
                            raw: raws[k],
                            normalized,
                            weighted: normalized * mults[k],
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Explanation {
        hosts,
        passed: cands.len() as u32,
        rejections: e.named_rejections(&rej),
        ranked,
    }
}

/// What varies between the test clouds.
struct Shape {
    hosts: usize,
    traits: usize,
    aggregates: usize,
    /// Some hosts get unit rules (min_unit / max_unit / step_size) on RAM and disk.
    unit_rules: bool,
    /// Some hosts get builds in flight, build failures, or a full instance count.
    busy: bool,
}

struct Cloud {
    engine: Engine,
    hosts: Vec<Uuid>,
    traits: Vec<String>,
    aggregates: Vec<String>,
    groups: Vec<String>,
}

fn build(rng: &mut fastrand::Rng, shape: &Shape) -> Cloud {
    let config = EngineConfig {
        shards: 8,
        ..EngineConfig::default()
    };
    let engine = Engine::new(config).expect("valid config");
    let traits: Vec<String> = (0..shape.traits).map(|t| format!("CUSTOM_T{t}")).collect();
    let aggregates: Vec<String> = (0..shape.aggregates).map(|a| format!("agg{a}")).collect();
    let sizes = [(16, 64), (32, 128), (64, 256), (128, 512)];
    let mut hosts = Vec::new();
    for h in 0..shape.hosts {
        let (vcpus, ram_gib) = sizes[rng.usize(..sizes.len())];
        let mut ram = Inventory::new(ram_gib * 1024).reserved(4096);
        let mut disk = Inventory::new(vcpus * 30);
        if shape.unit_rules && rng.f64() < 0.05 {
            ram = ram.units(1024, ram_gib * 512, 512);
            disk = disk.units(10, vcpus * 30, 10);
        }
        let mut spec = ProviderSpec::new(format!("h{h:05}"))
            .az(["az1", "az2", "az3"][rng.usize(..3)])
            .inventory("VCPU", Inventory::new(vcpus).ratio(4.0))
            .inventory("MEMORY_MB", ram)
            .inventory("DISK_GB", disk);
        if rng.f64() < 0.05 {
            spec = spec.inventory("CUSTOM_GPU", Inventory::new(rng.u64(1..=4)));
        }
        for t in &traits {
            if rng.f64() < 0.3 {
                spec.traits.push(t.clone());
            }
        }
        if rng.f64() < 0.02 {
            spec.traits.push(crate::DISABLED_TRAIT.into());
        }
        for _ in 0..rng.usize(1..=3) {
            let a = &aggregates[rng.usize(..aggregates.len())];
            if !spec.aggregates.contains(a) {
                spec.aggregates.push(a.clone());
            }
        }
        let uuid = engine.create_provider(spec).expect("valid host").uuid;
        if rng.f64() < 0.02 {
            engine.set_host_up(&uuid, false).expect("host exists");
        }
        // Half the hosts stay empty: many exact ties in every weigher.
        if rng.bool() {
            // At most 45%: within the unit rules' max_unit (half the RAM) where there are any.
            let f = rng.f64() * 0.45;
            let amounts = [
                ("VCPU", (vcpus as f64 * 4.0 * f) as u64, 1),
                (
                    "MEMORY_MB",
                    ((ram_gib * 1024 - 4096) as f64 * f) as u64 / 512 * 512,
                    1024,
                ),
                ("DISK_GB", (vcpus as f64 * 30.0 * f) as u64 / 10 * 10, 10),
            ];
            let resources: Vec<(String, u64)> = amounts
                .iter()
                .filter(|(_, n, least)| n >= least)
                .map(|(c, n, _)| (c.to_string(), *n))
                .collect();
            if !resources.is_empty() {
                allocate(&engine, uuid, resources);
            }
        }
        if shape.busy {
            if rng.f64() < 0.05 {
                for _ in 0..rng.usize(1..=9) {
                    engine.track_io_op(&uuid, true).expect("host exists");
                }
            }
            if rng.f64() < 0.03 {
                engine.record_build_failure(&uuid).expect("host exists");
            }
            if h % 500 == 7 {
                for _ in 0..engine.config.scheduler.max_instances_per_host {
                    allocate(&engine, uuid, vec![("VCPU".into(), 1)]);
                }
            }
        }
        hosts.push(uuid);
    }
    let mut groups = Vec::new();
    for (g, policy) in [
        GroupPolicy::AntiAffinity,
        GroupPolicy::Affinity,
        GroupPolicy::SoftAffinity,
        GroupPolicy::SoftAntiAffinity,
    ]
    .into_iter()
    .cycle()
    .take(8)
    .enumerate()
    {
        let name = format!("g{g}");
        engine
            .create_group(ServerGroupSpec {
                id: None,
                name: name.clone(),
                policy,
                max_server_per_host: (policy == GroupPolicy::AntiAffinity)
                    .then_some(1 + g as u32 % 2),
                project_id: "p".into(),
            })
            .expect("valid group");
        for _ in 0..rng.usize(0..4) {
            let mut spec = RequestSpec::resources(&[("VCPU", 1), ("MEMORY_MB", 1024)]);
            spec.group = Some(name.clone());
            let _ = engine.select_destinations(&spec);
        }
        groups.push(name);
    }
    Cloud {
        engine,
        hosts,
        traits,
        aggregates,
        groups,
    }
}

fn allocate(engine: &Engine, provider: Uuid, resources: Vec<(String, u64)>) {
    engine
        .replace_allocations(
            &Uuid::new_v4(),
            AllocationRequest {
                consumer_generation: None,
                project_id: "p".into(),
                user_id: "u".into(),
                allocations: vec![Allocation {
                    provider,
                    resources,
                }],
            },
        )
        .expect("allocation fits");
}

fn request(rng: &mut fastrand::Rng, cloud: &Cloud) -> RequestSpec {
    let mut res: BTreeMap<&str, u64> = BTreeMap::new();
    res.insert("VCPU", rng.u64(1..=32));
    res.insert(
        "MEMORY_MB",
        [512, 1024, 2048, 4096, 8192, 65536][rng.usize(..6)],
    );
    if rng.bool() {
        res.insert("DISK_GB", [10, 20, 40, 160, 2000][rng.usize(..5)]);
    }
    if rng.f64() < 0.1 {
        res.insert("CUSTOM_GPU", rng.u64(1..=2));
    }
    let res: Vec<(&str, u64)> = res.into_iter().collect();
    let mut spec = RequestSpec::resources(&res);
    let pick = |rng: &mut fastrand::Rng, v: &[String]| v[rng.usize(..v.len())].clone();
    for _ in 0..[0, 0, 1, 2][rng.usize(..4)] {
        spec.required_traits.push(pick(rng, &cloud.traits));
    }
    if rng.f64() < 0.03 {
        spec.required_traits.push("CUSTOM_NOBODY".into());
    }
    if rng.f64() < 0.3 {
        let t = pick(rng, &cloud.traits);
        if !spec.required_traits.contains(&t) {
            spec.forbidden_traits.push(t);
        }
    }
    for _ in 0..[0, 0, 1, 2][rng.usize(..4)] {
        let set = (0..rng.usize(1..=3))
            .map(|_| pick(rng, &cloud.aggregates))
            .collect();
        spec.member_of.push(set);
    }
    if rng.f64() < 0.2 {
        spec.forbidden_aggregates.push(pick(rng, &cloud.aggregates));
    }
    if rng.f64() < 0.4 {
        spec.availability_zone = Some(["az1", "az2", "az3", "nowhere"][rng.usize(..4)].into());
    }
    if rng.f64() < 0.25 {
        spec.group = Some(pick(rng, &cloud.groups));
    }
    spec
}

fn check(shape: Shape, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cloud = build(&mut rng, &shape);
    let (mut placed, mut compared) = (Vec::new(), 0);
    for n in 0..120 {
        let spec = request(&mut rng, &cloud);
        let limit = if n % 15 == 0 { usize::MAX } else { 1 + n % 9 };
        let want = reference_explain(&cloud.engine, &spec, limit);
        let got = cloud.engine.explain(&spec, limit).expect("valid request");
        assert_eq!(got, want, "request {n}: {spec:?}");
        compared += got.ranked.len();
        // Change the cloud as we go: place some, release some.
        if rng.f64() < 0.5 {
            match cloud.engine.select_destinations(&spec) {
                Ok(sel) => {
                    assert_eq!(sel[0].host, want.ranked[0].host, "request {n}: {spec:?}");
                    placed.push(sel[0].consumer);
                }
                Err(EngineError::NoValidHost(_)) => assert!(want.ranked.is_empty()),
                Err(e) => panic!("request {n}: {e}"),
            }
        }
        if rng.f64() < 0.2 && !placed.is_empty() {
            let c = placed.swap_remove(rng.usize(..placed.len()));
            cloud.engine.release(&c).expect("placed consumer");
        }
    }
    assert!(compared > 2000, "only {compared} ranked hosts compared");
    assert_eq!(cloud.hosts.len(), cloud.engine.provider_count());
}

#[test]
fn plain_cloud_matches_the_reference() {
    check(
        Shape {
            hosts: 2500,
            traits: 40,
            aggregates: 20,
            unit_rules: false,
            busy: false,
        },
        1,
    );
}

#[test]
fn busy_cloud_with_unit_rules_and_wide_rows_matches_the_reference() {
    check(
        Shape {
            hosts: 2000,
            traits: 100,
            aggregates: 70,
            unit_rules: true,
            busy: true,
        },
        2,
    );
}
