//! Concurrency stress: many threads racing claims, releases, moves and allocation
//! replacements on one small, tight cloud, then a full audit of the state they left:
//!
//! - usage recomputed from every consumer's allocations (moving ones included) equals each
//!   provider's `used` per class and its `instances` count;
//! - no class is over capacity (no inventory is lowered here, so this is strict);
//! - every server group's view equals what its members hold, hard anti-affinity never
//!   exceeds `max_server_per_host`, an affinity group's members not mid-move share a host;
//! - project usage (kept incrementally) equals the sum over the project's consumers;
//! - the counters balance: claims − releases = live consumers (+ successful move claims,
//!   which count as claims but are finished by confirm/revert, not by a release).
//!
//! While the threads run, an auditor checks what can be read consistently mid-flight (a
//! group's view is taken under its lock, a provider's usage under its shard lock). Every
//! run has a deadline: a thread still busy after it means a deadlock, and the test fails
//! instead of hanging.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_engine::model::{
    Allocation, GroupPolicy, Inventory, ProviderSpec, RequestSpec, ServerGroupSpec,
};
use berth_engine::{AllocationRequest, Engine, EngineConfig, EngineError, ProviderFilter};
use parking_lot::Mutex;
use uuid::Uuid;

const THREADS: usize = 8;
const HOSTS: usize = 20;
/// How long a run may take before it is declared deadlocked (debug builds on 2 cores are
/// slow; a healthy run takes a fraction of this).
const DEADLINE: Duration = Duration::from_secs(120);

/// Iterations scale (`BERTH_STRESS_SCALE`, default 1) for longer hunts.
fn scale(n: usize) -> usize {
    n * std::env::var("BERTH_STRESS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[derive(Debug, Clone)]
struct Group {
    name: &'static str,
    policy: GroupPolicy,
    max: Option<u32>,
}

const GROUPS: &[Group] = &[
    Group {
        name: "anti1",
        policy: GroupPolicy::AntiAffinity,
        max: None,
    },
    Group {
        name: "anti2",
        policy: GroupPolicy::AntiAffinity,
        max: Some(2),
    },
    Group {
        name: "aff",
        policy: GroupPolicy::Affinity,
        max: None,
    },
    Group {
        name: "soft-anti",
        policy: GroupPolicy::SoftAntiAffinity,
        max: None,
    },
    Group {
        name: "soft-aff",
        policy: GroupPolicy::SoftAffinity,
        max: None,
    },
];

fn engine(host_subset_size: usize, vcpus: u64, ram_mb: u64) -> Arc<Engine> {
    let mut config = EngineConfig {
        shards: 4,
        ..EngineConfig::default()
    };
    config.scheduler.host_subset_size = host_subset_size;
    // Instance-count and io-ops limits are not what this test is about.
    config.scheduler.max_instances_per_host = 1000;
    let e = Engine::new(config).expect("engine");
    for i in 0..HOSTS {
        e.create_provider(
            ProviderSpec::new(format!("h{i:02}"))
                .inventory("VCPU", Inventory::new(vcpus))
                .inventory("MEMORY_MB", Inventory::new(ram_mb).reserved(512))
                .inventory("DISK_GB", Inventory::new(100).ratio(1.5)),
        )
        .expect("provider");
    }
    for g in GROUPS {
        e.create_group(ServerGroupSpec {
            id: None,
            name: g.name.into(),
            policy: g.policy,
            max_server_per_host: g.max,
            project_id: "p0".into(),
        })
        .expect("group");
    }
    Arc::new(e)
}

fn spec(rng: &mut fastrand::Rng, group: Option<&str>, n: u32) -> RequestSpec {
    let mut s = RequestSpec::resources(&[
        ("VCPU", rng.u64(1..=2)),
        ("MEMORY_MB", [512, 1024, 1536][rng.usize(..3)]),
        ("DISK_GB", [5, 10][rng.usize(..2)]),
    ]);
    s.num_instances = n;
    s.group = group.map(str::to_string);
    s.project_id = format!("p{}", rng.usize(..3));
    s.user_id = format!("u{}", rng.usize(..2));
    s
}

/// Runs `workers` on their own threads and waits for all of them, failing (not hanging) if
/// any is still running at the deadline.
fn run_all(workers: Vec<Box<dyn FnOnce() + Send>>) {
    let handles: Vec<JoinHandle<()>> = workers.into_iter().map(std::thread::spawn).collect();
    let start = Instant::now();
    while !handles.iter().all(JoinHandle::is_finished) {
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {} threads still running after {DEADLINE:?}: deadlock",
            handles.iter().filter(|h| !h.is_finished()).count(),
            handles.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in handles {
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    }
}

/// Checks what is consistent to read while others write: each group's view (taken under
/// its lock) respects the policy, and each provider (read under its shard lock) is within
/// capacity.
fn audit_live(e: &Engine) {
    for g in GROUPS {
        let view = e.get_group(g.name).expect("group");
        match g.policy {
            GroupPolicy::AntiAffinity => {
                let max = g.max.unwrap_or(1);
                for (h, n) in &view.hosts {
                    assert!(*n <= max, "{}: {n} members on {h} (max {max})", g.name);
                }
            }
            GroupPolicy::Affinity => {
                assert!(view.hosts.len() <= 1, "{} spans {:?}", g.name, view.hosts);
            }
            _ => {}
        }
    }
    for p in e.list_providers(&ProviderFilter::default()).expect("list") {
        for u in &p.usages {
            assert!(
                u.used <= u.capacity,
                "{} {}: {} > {}",
                p.name,
                u.class,
                u.used,
                u.capacity
            );
        }
    }
}

/// The full audit of a quiescent engine. Returns the number of consumers mid-move.
fn audit(e: &Engine) -> usize {
    let providers = e.list_providers(&ProviderFilter::default()).expect("list");
    let names: HashMap<Uuid, String> = providers.iter().map(|p| (p.uuid, p.name.clone())).collect();
    let consumers: BTreeMap<Uuid, _> = e
        .consumer_ids()
        .into_iter()
        .map(|c| (c, e.get_allocations(&c).expect("listed consumer")))
        .collect();
    assert_eq!(consumers.len(), e.consumer_count());

    // Usage and instance counts, recomputed.
    let mut used: HashMap<(Uuid, String), u64> = HashMap::new();
    let mut instances: HashMap<Uuid, u32> = HashMap::new();
    let mut per_project: BTreeMap<String, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
    let mut moving = 0;
    for (cu, c) in &consumers {
        assert!(!c.allocations.is_empty(), "{cu} listed without allocations");
        moving += usize::from(!c.moving.is_empty());
        let proj = per_project.entry(c.project_id.clone()).or_default();
        proj.1 += 1;
        for a in c.allocations.iter().chain(&c.moving) {
            assert!(
                names.contains_key(&a.provider),
                "{cu} on a missing provider"
            );
            *instances.entry(a.provider).or_default() += 1;
            for (class, n) in &a.resources {
                *used.entry((a.provider, class.clone())).or_default() += n;
                *proj.0.entry(class.clone()).or_default() += n;
            }
        }
    }
    for p in &providers {
        for u in &p.usages {
            let want = used.remove(&(p.uuid, u.class.clone())).unwrap_or(0);
            assert_eq!(u.used, want, "{} {}: used vs allocations", p.name, u.class);
            assert!(
                u.used <= u.capacity,
                "{} {} over-committed",
                p.name,
                u.class
            );
        }
        assert_eq!(
            p.instances,
            instances.get(&p.uuid).copied().unwrap_or(0),
            "{} instances",
            p.name
        );
    }
    assert!(
        used.is_empty(),
        "allocations of classes without inventory: {used:?}"
    );

    // Project usage, kept incrementally, equals the recomputation.
    for (project, (amounts, count)) in &per_project {
        let r = e.project_usages(project, None).expect("project usage");
        let mut got = r.usages.clone();
        got.sort();
        let want: Vec<(String, u64)> = amounts.iter().map(|(c, n)| (c.clone(), *n)).collect();
        assert_eq!(got, want, "project {project} usage");
        assert_eq!(r.consumers, *count, "project {project} consumers");
    }

    // Groups: the view equals the members' allocations, and the policy holds.
    for g in GROUPS {
        let view = e.get_group(g.name).expect("group");
        let members: Vec<Uuid> = consumers
            .iter()
            .filter(|(_, c)| c.group == Some(view.id))
            .map(|(u, _)| *u)
            .collect();
        assert_eq!(view.members, members, "{} members", g.name);
        let mut hosts: BTreeMap<String, u32> = BTreeMap::new();
        for m in &members {
            let c = &consumers[m];
            let held: BTreeSet<Uuid> = c
                .allocations
                .iter()
                .chain(&c.moving)
                .map(|a| a.provider)
                .collect();
            for h in held {
                *hosts.entry(names[&h].clone()).or_default() += 1;
            }
        }
        let hosts: Vec<(String, u32)> = hosts.into_iter().collect();
        assert_eq!(view.hosts, hosts, "{} host counts", g.name);
        match g.policy {
            GroupPolicy::AntiAffinity => {
                let max = g.max.unwrap_or(1);
                assert!(
                    hosts.iter().all(|(_, n)| *n <= max),
                    "{}: {hosts:?}",
                    g.name
                );
            }
            GroupPolicy::Affinity => {
                // Members not mid-move share one host.
                let settled: BTreeSet<&String> = members
                    .iter()
                    .map(|m| &consumers[m])
                    .filter(|c| c.moving.is_empty())
                    .flat_map(|c| c.allocations.iter().map(|a| &names[&a.provider]))
                    .collect();
                assert!(settled.len() <= 1, "{}: {settled:?} ({hosts:?})", g.name);
            }
            _ => {}
        }
    }
    moving
}

fn stat(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Releases everyone and checks the cloud is empty again; `move_claims` successful move
/// claims were counted as claims.
fn drain(e: &Engine, move_claims: u64) {
    for c in e.consumer_ids() {
        e.release(&c).expect("release");
    }
    audit(e);
    for p in e.list_providers(&ProviderFilter::default()).expect("list") {
        assert_eq!(p.instances, 0, "{}", p.name);
        assert!(p.usages.iter().all(|u| u.used == 0), "{}", p.name);
    }
    for g in GROUPS {
        let v = e.get_group(g.name).expect("group");
        assert!(v.members.is_empty() && v.hosts.is_empty(), "{v:?}");
    }
    assert_eq!(
        stat(&e.stats.claims),
        stat(&e.stats.releases) + move_claims,
        "claims = releases + move claims once everything is released"
    );
}

fn racing_claims_and_releases(host_subset_size: usize, iterations: usize) {
    // 20 hosts of 4 VCPU and 3.5 GiB usable: room for roughly 60 instances; the threads
    // attempt thousands.
    let e = engine(host_subset_size, 4, 4096);
    let pool: Arc<Mutex<Vec<Uuid>>> = Arc::new(Mutex::new(Vec::new()));
    let placed = Arc::new(AtomicU64::new(0));
    let released = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut workers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for t in 0..THREADS {
        let (e, pool) = (e.clone(), pool.clone());
        let (placed, released, refused) = (placed.clone(), released.clone(), refused.clone());
        workers.push(Box::new(move || {
            let mut rng = fastrand::Rng::with_seed(0x5eed + t as u64);
            for _ in 0..scale(iterations) {
                if rng.u32(..100) < 58 {
                    // Ungrouped, or one of the groups.
                    let g = rng.usize(..GROUPS.len() + 2);
                    let group = GROUPS.get(g).map(|g| g.name);
                    let n = [1, 1, 1, 2, 3][rng.usize(..5)];
                    match e.select_destinations(&spec(&mut rng, group, n)) {
                        Ok(sel) => {
                            assert_eq!(sel.len(), n as usize);
                            placed.fetch_add(n as u64, Ordering::Relaxed);
                            pool.lock().extend(sel.iter().map(|s| s.consumer));
                        }
                        Err(EngineError::NoValidHost(_)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("select_destinations: {other:?}"),
                    }
                } else {
                    let victim = {
                        let mut p = pool.lock();
                        if p.is_empty() {
                            continue;
                        }
                        let i = rng.usize(..p.len());
                        p.swap_remove(i)
                    };
                    e.release(&victim).expect("release a live consumer");
                    released.fetch_add(1, Ordering::Relaxed);
                    if rng.u32(..10) == 0 {
                        assert!(matches!(
                            e.release(&victim),
                            Err(EngineError::NotFound { .. })
                        ));
                    }
                }
            }
        }));
    }
    let auditor = {
        let (e, done) = (e.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                audit_live(&e);
                std::thread::yield_now();
            }
        })
    };
    run_all(workers);
    done.store(true, Ordering::Relaxed);
    if let Err(p) = auditor.join() {
        std::panic::resume_unwind(p);
    }

    let moving = audit(&e);
    assert_eq!(moving, 0);
    let live = e.consumer_count() as u64;
    assert_eq!(live, pool.lock().len() as u64, "live consumers vs the pool");
    assert_eq!(
        live,
        stat(&placed) - stat(&released),
        "placed − released = live"
    );
    assert_eq!(
        stat(&e.stats.claims) - stat(&e.stats.releases),
        live,
        "stats: claims {} − releases {} must equal live consumers",
        stat(&e.stats.claims),
        stat(&e.stats.releases)
    );
    assert!(
        stat(&refused) > 0,
        "the cloud never filled up: not a stress"
    );
    assert!(stat(&placed) > 100, "too few placements: {}", stat(&placed));
    drain(&e, 0);
}

#[test]
fn racing_claims_and_releases_best_host() {
    // host_subset_size 1: every thread wants the same best host, maximal claim races.
    racing_claims_and_releases(1, 400);
}

#[test]
fn racing_claims_and_releases_spread() {
    racing_claims_and_releases(3, 400);
}

/// Moves (claim, confirm, revert), allocation replacements, releases and new placements,
/// all racing on a shared set of consumers, so the same consumer is often the target of
/// several writers at once.
#[test]
fn racing_moves_and_replacements() {
    let e = engine(2, 8, 8192);
    let hosts: Vec<Uuid> = e
        .list_providers(&ProviderFilter::default())
        .expect("list")
        .iter()
        .map(|p| p.uuid)
        .collect();
    let known: Arc<Mutex<Vec<Uuid>>> = Arc::new(Mutex::new(Vec::new()));
    let mut rng = fastrand::Rng::with_seed(7);
    for (group, n) in [
        (Some("anti1"), 8),
        (Some("anti2"), 6),
        (Some("aff"), 4),
        (Some("soft-aff"), 3),
        (None, 12),
    ] {
        for _ in 0..n {
            let sel = e
                .select_destinations(&spec(&mut rng, group, 1))
                .expect("seed");
            known.lock().push(sel[0].consumer);
        }
    }
    for _ in 0..8 {
        let c = Uuid::new_v4();
        let req = AllocationRequest {
            consumer_generation: None,
            project_id: "p9".into(),
            user_id: "u9".into(),
            allocations: vec![
                Allocation {
                    provider: hosts[rng.usize(..HOSTS)],
                    resources: vec![("VCPU".into(), 1), ("MEMORY_MB".into(), 512)],
                },
                Allocation {
                    provider: hosts[rng.usize(..HOSTS / 2)],
                    resources: vec![("DISK_GB".into(), 10)],
                },
            ]
            .into_iter()
            .fold(Vec::new(), |mut v: Vec<Allocation>, a| {
                if !v.iter().any(|x| x.provider == a.provider) {
                    v.push(a);
                }
                v
            }),
        };
        e.replace_allocations(&c, req).expect("seed allocations");
        known.lock().push(c);
    }
    audit(&e);

    let move_claims = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let mut workers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for t in 0..THREADS {
        let (e, known, hosts) = (e.clone(), known.clone(), hosts.clone());
        let (move_claims, outcomes) = (move_claims.clone(), outcomes.clone());
        workers.push(Box::new(move || {
            let mut rng = fastrand::Rng::with_seed(0xbee5 + t as u64);
            let mut tally: BTreeMap<String, u64> = BTreeMap::new();
            let mut note = |what: &str, r: &Result<(), EngineError>| {
                let k = match r {
                    Ok(()) => format!("{what} ok"),
                    Err(e) => format!("{what} {}", e.code()),
                };
                *tally.entry(k).or_default() += 1;
            };
            for _ in 0..scale(300) {
                let c = {
                    let k = known.lock();
                    k[rng.usize(..k.len())]
                };
                let roll = rng.u32(..100);
                let r: Result<(), EngineError> = if roll < 30 {
                    let s = spec(&mut rng, None, 1);
                    let r = e.move_claim(&c, &s, rng.bool());
                    if r.is_ok() {
                        move_claims.fetch_add(1, Ordering::Relaxed);
                    }
                    let r = r.map(|_| ());
                    note("move_claim", &r);
                    if r.is_ok() && rng.bool() {
                        let r2 = if rng.bool() {
                            e.confirm_move(&c)
                        } else {
                            e.revert_move(&c)
                        };
                        note("finish own move", &r2);
                        match r2 {
                            // Someone else may have finished it, or released the consumer.
                            Ok(())
                            | Err(EngineError::FailedPrecondition(_))
                            | Err(EngineError::NotFound { .. }) => {}
                            Err(other) => panic!("finish own move: {other:?}"),
                        }
                    }
                    r
                } else if roll < 45 {
                    let r = e.confirm_move(&c);
                    note("confirm", &r);
                    r
                } else if roll < 60 {
                    let r = e.revert_move(&c);
                    note("revert", &r);
                    r
                } else if roll < 82 {
                    // Read, then write back with the generation read: races make it stale.
                    let r = match e.get_allocations(&c) {
                        Err(err) => Err(err),
                        Ok(cur) => {
                            let allocations: Vec<Allocation> = if cur.group.is_some() {
                                // Group members keep their hosts (replacing is not
                                // group-aware); only amounts change.
                                cur.allocations
                                    .iter()
                                    .map(|a| Allocation {
                                        provider: a.provider,
                                        resources: vec![
                                            ("VCPU".into(), rng.u64(1..=2)),
                                            ("MEMORY_MB".into(), [512, 1024][rng.usize(..2)]),
                                        ],
                                    })
                                    .collect()
                            } else {
                                let mut v = vec![Allocation {
                                    provider: hosts[rng.usize(..HOSTS)],
                                    resources: vec![
                                        ("VCPU".into(), rng.u64(1..=3)),
                                        ("MEMORY_MB".into(), [512, 1024, 2048][rng.usize(..3)]),
                                    ],
                                }];
                                let other = hosts[rng.usize(..HOSTS)];
                                if rng.bool() && other != v[0].provider {
                                    v.push(Allocation {
                                        provider: other,
                                        resources: vec![("DISK_GB".into(), 20)],
                                    });
                                }
                                v
                            };
                            // Widen the read-to-write window so generations go stale.
                            std::thread::yield_now();
                            e.replace_allocations(
                                &c,
                                AllocationRequest {
                                    consumer_generation: Some(cur.generation),
                                    project_id: cur.project_id.clone(),
                                    user_id: cur.user_id.clone(),
                                    allocations,
                                },
                            )
                            .map(|_| ())
                        }
                    };
                    note("replace", &r);
                    r
                } else if roll < 92 {
                    // Release, and place it again under the same uuid (ungrouped).
                    let r = e.release(&c);
                    note("release", &r);
                    if r.is_ok() {
                        let mut s = spec(&mut rng, None, 1);
                        s.instance_uuids = vec![c];
                        let r2 = e.select_destinations(&s).map(|_| ());
                        note("re-place", &r2);
                        match r2 {
                            Ok(())
                            | Err(EngineError::NoValidHost(_))
                            | Err(EngineError::AlreadyExists { .. }) => {}
                            Err(other) => panic!("re-place: {other:?}"),
                        }
                    }
                    r
                } else {
                    let group = [None, Some("anti1"), Some("anti2"), Some("aff")][rng.usize(..4)];
                    let r = e.select_destinations(&spec(&mut rng, group, 1));
                    if let Ok(sel) = &r {
                        known.lock().push(sel[0].consumer);
                    }
                    let r = r.map(|_| ());
                    note("place", &r);
                    r
                };
                match r {
                    Ok(())
                    | Err(EngineError::NotFound { .. })
                    | Err(EngineError::FailedPrecondition(_))
                    | Err(EngineError::GenerationConflict { .. })
                    | Err(EngineError::NoValidHost(_)) => {}
                    Err(other) => panic!("unexpected error: {other:?}"),
                }
            }
            let mut all = outcomes.lock();
            for (k, n) in tally {
                *all.entry(k).or_default() += n;
            }
        }));
    }
    run_all(workers);

    audit(&e);
    let live = e.consumer_count() as u64;
    assert_eq!(
        stat(&e.stats.claims) - stat(&e.stats.releases),
        live + stat(&move_claims),
        "claims − releases = live consumers + move claims"
    );
    let outcomes = outcomes.lock().clone();
    eprintln!("outcomes: {outcomes:?}");
    for wanted in [
        "move_claim ok",
        "confirm ok",
        "revert ok",
        "replace ok",
        "release ok",
        "confirm failed_precondition",
    ] {
        assert!(
            outcomes.get(wanted).copied().unwrap_or(0) > 0,
            "never saw {wanted:?}: {outcomes:?}"
        );
    }
    // Finish every move still open, half by confirm and half by revert, and audit again.
    for (i, c) in e.consumer_ids().into_iter().enumerate() {
        if !e.get_allocations(&c).expect("consumer").moving.is_empty() {
            if i % 2 == 0 {
                e.confirm_move(&c).expect("confirm");
            } else {
                e.revert_move(&c).expect("revert");
            }
        }
    }
    assert_eq!(audit(&e), 0);
    drain(&e, stat(&move_claims));
}

/// Readers that hold a leaf lock while visiting consumers (per-user project usage) racing
/// claims (which hold a consumer entry and read the class table) and writers of the class
/// table (new custom classes): with the wrong lock order these three deadlock.
#[test]
fn usage_readers_claims_and_class_writers_do_not_deadlock() {
    let e = engine(2, 64, 65536);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for t in 0..4 {
        let (e, stop) = (e.clone(), stop.clone());
        workers.push(Box::new(move || {
            let mut rng = fastrand::Rng::with_seed(t);
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if mine.len() < 200 && rng.bool() {
                    if let Ok(sel) = e.select_destinations(&spec(&mut rng, None, 1)) {
                        mine.push(sel[0].consumer);
                    }
                } else if !mine.is_empty() {
                    let c = mine.swap_remove(rng.usize(..mine.len()));
                    e.release(&c).expect("release");
                }
            }
        }));
    }
    for t in 0..2 {
        let (e, stop) = (e.clone(), stop.clone());
        workers.push(Box::new(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in 0..3 {
                    e.project_usages(&format!("p{p}"), Some(&format!("u{}", n % 2)))
                        .expect("usage");
                }
                n += 1;
                if n.is_multiple_of(64) {
                    e.create_resource_class(&format!("CUSTOM_R{t}_{n}"))
                        .expect("new class");
                }
            }
        }));
    }
    {
        let (e, stop) = (e.clone(), stop.clone());
        workers.push(Box::new(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3 * scale(1) as u64) {
                e.create_resource_class(&format!("CUSTOM_W{n}"))
                    .expect("new class");
                n += 1;
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        }));
    }
    run_all(workers);
    audit(&e);
    drain(&e, 0);
}
