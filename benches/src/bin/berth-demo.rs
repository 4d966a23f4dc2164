//! `berth-demo`: builds a synthetic cloud in-process and places a stream of instances on it
//! from several threads, then reports throughput, latency, utilisation per host class and
//! resource class, why failed requests failed, and checks the invariants (no anti-affinity
//! or affinity violation, no over-committed host). The interim "run" command until the
//! gRPC service exists.
//!
//! ```text
//! berth-demo [--hosts 10000] [--instances 100000] [--seed 42] [--threads N]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_benches::{Cloud, CloudSpec, HOST_CLASSES};
use berth_engine::EngineError;
use berth_engine::model::{GroupPolicy, RequestSpec};

const USAGE: &str = "usage: berth-demo [--hosts N (10000)] [--instances N (100000)] \
                     [--seed N (42)] [--threads N (cores)]";

struct Args {
    hosts: usize,
    instances: usize,
    seed: u64,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        hosts: 10_000,
        instances: 100_000,
        seed: 42,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
        let num = || -> Result<u64, String> {
            value
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{name} {value:?}: {e}\n{USAGE}"))
        };
        match name.as_str() {
            "--hosts" => a.hosts = num()? as usize,
            "--instances" => a.instances = num()? as usize,
            "--seed" => a.seed = num()?,
            "--threads" => a.threads = (num()? as usize).max(1),
            _ => return Err(format!("unknown flag {name}\n{USAGE}")),
        }
    }
    if a.hosts == 0 {
        return Err(format!("--hosts must be at least 1\n{USAGE}"));
    }
    Ok(a)
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    placed: usize,
    /// Failed requests by kind (`no valid host`, or the error's text).
    failed: BTreeMap<String, usize>,
    /// Per reason: hosts eliminated summed over failed requests, and failed requests
    /// where it eliminated the most hosts.
    reasons: BTreeMap<String, (u64, usize)>,
    latencies_ns: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.placed += o.placed;
        for (k, v) in o.failed {
            *self.failed.entry(k).or_default() += v;
        }
        for (k, (h, n)) in o.reasons {
            let e = self.reasons.entry(k).or_default();
            e.0 += h;
            e.1 += n;
        }
        self.latencies_ns.extend(o.latencies_ns);
    }

    fn record(&mut self, result: Result<(), EngineError>, ns: u64) {
        self.latencies_ns.push(ns);
        match result {
            Ok(()) => self.placed += 1,
            Err(EngineError::NoValidHost(nvh)) => {
                let kind = if nvh.detail.is_empty() {
                    "no valid host".to_string()
                } else {
                    format!("no valid host ({})", nvh.detail)
                };
                *self.failed.entry(kind).or_default() += 1;
                let top = nvh
                    .rejections
                    .iter()
                    .max_by_key(|(_, n)| *n)
                    .map(|(r, _)| r);
                for (r, n) in &nvh.rejections {
                    let e = self.reasons.entry(r.clone()).or_default();
                    e.0 += *n as u64;
                    e.1 += (Some(r) == top) as usize;
                }
            }
            Err(e) => *self.failed.entry(e.to_string()).or_default() += 1,
        }
    }
}

/// Used and capacity per (host class, resource class).
fn utilisation(cloud: &Cloud) -> BTreeMap<(usize, String), (u64, u64)> {
    let mut out: BTreeMap<(usize, String), (u64, u64)> = BTreeMap::new();
    for h in &cloud.hosts {
        let Ok(info) = cloud.engine.get_provider(&h.uuid) else {
            continue;
        };
        for u in info.usages {
            let e = out.entry((h.class, u.class)).or_default();
            e.0 += u.used;
            e.1 += u.capacity;
        }
    }
    out
}

fn print_utilisation(
    before: &BTreeMap<(usize, String), (u64, u64)>,
    after: &BTreeMap<(usize, String), (u64, u64)>,
    cloud: &Cloud,
) {
    let classes = ["VCPU", "MEMORY_MB", "DISK_GB"];
    println!("utilisation, used/capacity (before → after):");
    print!("  {:<8} {:>6}", "hosts", "count");
    for c in classes {
        print!("  {c:>17}");
    }
    println!();
    let pct = |m: &BTreeMap<(usize, String), (u64, u64)>, rows: &[usize], c: &str| {
        let (u, cap) = rows
            .iter()
            .filter_map(|&r| m.get(&(r, c.to_string())))
            .fold((0u64, 0u64), |(a, b), (u, c)| (a + u, b + c));
        100.0 * u as f64 / cap.max(1) as f64
    };
    let all: Vec<usize> = (0..HOST_CLASSES.len()).collect();
    for (i, hc) in HOST_CLASSES.iter().enumerate() {
        let n = cloud.hosts.iter().filter(|h| h.class == i).count();
        print!("  {:<8} {n:>6}", hc.name);
        for c in classes {
            print!(
                "  {:>6.1}% → {:>5.1}%",
                pct(before, &[i], c),
                pct(after, &[i], c)
            );
        }
        println!();
    }
    print!("  {:<8} {:>6}", "all", cloud.hosts.len());
    for c in classes {
        print!(
            "  {:>6.1}% → {:>5.1}%",
            pct(before, &all, c),
            pct(after, &all, c)
        );
    }
    println!();
}

/// (anti-affinity violations, affinity violations, groups checked).
fn group_violations(cloud: &Cloud) -> (usize, usize, usize) {
    let (mut anti, mut aff, mut n) = (0, 0, 0);
    for g in &cloud.groups {
        let Ok(view) = cloud.engine.get_group(&g.name) else {
            continue;
        };
        n += 1;
        match view.policy {
            GroupPolicy::AntiAffinity => {
                anti += view
                    .hosts
                    .iter()
                    .filter(|(_, k)| *k > view.max_server_per_host)
                    .count();
            }
            GroupPolicy::Affinity => aff += view.hosts.len().saturating_sub(1),
            _ => {}
        }
    }
    (anti, aff, n)
}

fn overcommitted(cloud: &Cloud) -> usize {
    cloud
        .hosts
        .iter()
        .filter_map(|h| cloud.engine.get_provider(&h.uuid).ok())
        .filter(|p| p.usages.iter().any(|u| u.used > u.capacity))
        .count()
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Duration::from_nanos(sorted[i])
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    println!(
        "berth-demo: {} hosts, {} instances, seed {}, {} threads",
        args.hosts, args.instances, args.seed, args.threads
    );
    let cloud = match CloudSpec::new(args.hosts, args.seed).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("building the cloud failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let per_policy = |p: GroupPolicy| cloud.groups.iter().filter(|g| g.policy == p).count();
    println!(
        "built in {:.2?}: {} AZs, {} aggregates, {} traits, {} flavors, {} server groups \
         ({} anti-affinity, {} affinity, {} soft-anti-affinity, {} soft-affinity), \
         {} pre-fill consumers, {} shards, {:.0} resident bytes/host",
        start.elapsed(),
        cloud.azs.len(),
        cloud.aggregates.len(),
        cloud.traits.len(),
        cloud.flavors.len(),
        cloud.groups.len(),
        per_policy(GroupPolicy::AntiAffinity),
        per_policy(GroupPolicy::Affinity),
        per_policy(GroupPolicy::SoftAntiAffinity),
        per_policy(GroupPolicy::SoftAffinity),
        cloud.prefill_consumers,
        cloud.engine.shard_count(),
        cloud.engine.bytes_per_host(),
    );
    let before = utilisation(&cloud);
    let reqs: Vec<RequestSpec> = cloud
        .requests(args.seed.wrapping_add(1))
        .take(args.instances);
    let grouped = reqs.iter().filter(|r| r.group.is_some()).count();
    let constrained = reqs
        .iter()
        .filter(|r| !r.required_traits.is_empty() || !r.member_of.is_empty())
        .count();
    let zoned = reqs
        .iter()
        .filter(|r| r.availability_zone.is_some())
        .count();
    println!(
        "requests: {} ({constrained} with traits or member_of, {zoned} with an AZ, \
         {grouped} in server groups)",
        reqs.len()
    );

    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    const CHUNK: usize = 16;
    let t0 = Instant::now();
    let mut tally = Tally::default();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.threads)
            .map(|_| {
                s.spawn(|| {
                    let mut t = Tally::default();
                    loop {
                        let lo = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if lo >= reqs.len() {
                            break;
                        }
                        for r in &reqs[lo..(lo + CHUNK).min(reqs.len())] {
                            let t1 = Instant::now();
                            let res = cloud.engine.select_destinations(r).map(|_| ());
                            t.record(res, t1.elapsed().as_nanos() as u64);
                        }
                        done.fetch_add((lo + CHUNK).min(reqs.len()) - lo, Ordering::Relaxed);
                    }
                    t
                })
            })
            .collect();
        let mut last = Instant::now();
        while done.load(Ordering::Relaxed) < reqs.len() && !workers.iter().all(|w| w.is_finished())
        {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let d = done.load(Ordering::Relaxed);
                eprintln!(
                    "  … {d}/{} ({:.0}%), {:.0} requests/s",
                    reqs.len(),
                    100.0 * d as f64 / reqs.len().max(1) as f64,
                    d as f64 / t0.elapsed().as_secs_f64()
                );
            }
        }
        for w in workers {
            match w.join() {
                Ok(t) => tally.merge(t),
                Err(_) => eprintln!("a worker panicked"),
            }
        }
    });
    let took = t0.elapsed();
    let failed: usize = tally.failed.values().sum();
    tally.latencies_ns.sort_unstable();
    let lat = &tally.latencies_ns;
    println!(
        "placed {} of {} instances in {:.2?}: {:.0} placements/s ({:.0} requests/s on {} threads); \
         latency p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        tally.placed,
        reqs.len(),
        took,
        tally.placed as f64 / took.as_secs_f64(),
        reqs.len() as f64 / took.as_secs_f64(),
        args.threads,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        percentile(lat, 1.0),
    );
    let after = utilisation(&cloud);
    print_utilisation(&before, &after, &cloud);
    println!("failures: {failed}");
    for (kind, n) in &tally.failed {
        println!("  {n:>7}  {kind}");
    }
    if !tally.reasons.is_empty() {
        println!(
            "  rejections by reason (hosts eliminated summed over failed requests; \
             failed requests where it was the main reason):"
        );
        let mut reasons: Vec<_> = tally.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(b.1.0.cmp(&a.1.0)));
        for (r, (hosts, main)) in reasons {
            println!("    {r:<28} {hosts:>12} hosts  {main:>7} requests");
        }
    }
    let (anti, aff, ngroups) = group_violations(&cloud);
    let over = overcommitted(&cloud);
    println!(
        "checks: {ngroups} server groups; anti-affinity violations: {anti}; \
         affinity violations: {aff}; over-committed hosts: {over}"
    );
    let st = &cloud.engine.stats;
    println!(
        "engine: {} claims, {} claim conflicts, {} no-valid-host, {} consumers",
        st.claims.load(Ordering::Relaxed),
        st.conflicts.load(Ordering::Relaxed),
        st.no_valid_host.load(Ordering::Relaxed),
        cloud.engine.consumer_count(),
    );
    println!("total time {:.2?}", start.elapsed());
    if anti + aff + over > 0 {
        eprintln!("invariant violated");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
