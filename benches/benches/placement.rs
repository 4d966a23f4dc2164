//! Placement benchmarks over seeded synthetic clouds (see `berth_benches`):
//!
//! - `place_claim_release/N`: one `select_destinations` of one instance with the default
//!   filters and weighers (prepare → filter → weigh → select → claim), then its release, so
//!   the cloud stays the same from one iteration to the next;
//! - `explain/N`: the same requests as a dry run (prepare → filter → weigh → rank the best
//!   3), i.e. the scan without the claim.
//!
//! N is the number of hosts: 1,000, 10,000 and 100,000 by default; set
//! `BERTH_BENCH_HOSTS=1000,10000` to choose. Requests cycle through 1,024 pre-drawn ones
//! (half with required traits or `member_of`, 30% with a zone, 10% in server groups).
//! Each size prints its resident bytes per host and how many of the requests fit.

use std::hint::black_box;
use std::time::Duration;

use berth_benches::{Cloud, CloudSpec};
use berth_engine::EngineError;
use berth_engine::model::RequestSpec;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const REQUESTS: usize = 1024;

fn sizes() -> Vec<usize> {
    std::env::var("BERTH_BENCH_HOSTS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().replace('_', "").parse().ok())
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000])
}

/// Places and releases one request; whether it was placed.
fn place_release(cloud: &Cloud, spec: &RequestSpec) -> bool {
    match cloud.engine.select_destinations(spec) {
        Ok(sel) => {
            for s in &sel {
                if let Err(e) = cloud.engine.release(&s.consumer) {
                    panic!("release {}: {e}", s.consumer);
                }
            }
            true
        }
        Err(EngineError::NoValidHost(_)) => false,
        Err(e) => panic!("request failed: {e}"),
    }
}

fn placement(c: &mut Criterion) {
    for hosts in sizes() {
        let t = std::time::Instant::now();
        let cloud = match CloudSpec::new(hosts, 42).build() {
            Ok(c) => c,
            Err(e) => panic!("building {hosts} hosts: {e}"),
        };
        let reqs = cloud.requests(7).take(REQUESTS);
        let placed = reqs.iter().filter(|r| place_release(&cloud, r)).count();
        eprintln!(
            "{hosts} hosts: built in {:.2?}, {:.0} resident bytes/host, {} shards, \
             {placed}/{REQUESTS} requests placeable",
            t.elapsed(),
            cloud.engine.bytes_per_host(),
            cloud.engine.shard_count(),
        );

        let mut g = c.benchmark_group("place_claim_release");
        g.throughput(Throughput::Elements(hosts as u64));
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(hosts), |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(place_release(&cloud, &reqs[i]))
            })
        });
        g.finish();

        let mut g = c.benchmark_group("explain");
        g.throughput(Throughput::Elements(hosts as u64));
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(hosts), |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(cloud.engine.explain(&reqs[i], 3).map(|e| e.passed).ok())
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = placement
}
criterion_main!(benches);
