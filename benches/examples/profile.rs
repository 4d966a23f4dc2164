//! A fixed amount of placement work for instruction-count profiling:
//!
//! ```text
//! cargo build --release -p berth-benches --example profile
//! valgrind --tool=callgrind --toggle-collect='profile::run' \
//!     target/release/examples/profile 10000 200 place
//! ```
//!
//! Arguments: hosts (10000), requests (200), `place` (select + claim + release) or
//! `explain` (dry run). The cloud and the requests are the benchmark's (seeds 42 and 7).
//! `BERTH_PARALLEL_THRESHOLD` overrides `scheduler.parallel_threshold`, `BERTH_SHARDS` the
//! shard count (0 = one per core).

use berth_benches::{Cloud, CloudSpec};
use berth_engine::model::RequestSpec;

#[inline(never)]
fn run(cloud: &Cloud, reqs: &[RequestSpec], place: bool) -> usize {
    let mut ok = 0;
    for r in reqs {
        if place {
            if let Ok(sel) = cloud.engine.select_destinations(r) {
                ok += 1;
                for s in &sel {
                    let _ = cloud.engine.release(&s.consumer);
                }
            }
        } else if cloud.engine.explain(r, 3).is_ok() {
            ok += 1;
        }
    }
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let place = args.get(3).is_none_or(|m| m != "explain");
    let mut spec = CloudSpec::new(hosts, 42);
    if let Some(t) = std::env::var("BERTH_PARALLEL_THRESHOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        spec.config.scheduler.parallel_threshold = t;
    }
    if let Some(n) = std::env::var("BERTH_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        spec.config.shards = n;
    }
    let cloud = match spec.build() {
        Ok(c) => c,
        Err(e) => panic!("build: {e}"),
    };
    let reqs = cloud.requests(7).take(n);
    let t = std::time::Instant::now();
    let ok = run(&cloud, &reqs, place);
    let el = t.elapsed();
    println!(
        "{hosts} hosts, {n} requests ({}): {ok} ok, {:.1} µs each",
        if place { "place" } else { "explain" },
        el.as_secs_f64() * 1e6 / n as f64
    );
    let st = &cloud.engine.stats;
    println!(
        "claims {}, conflicts {}, no valid host {}",
        st.claims.load(std::sync::atomic::Ordering::Relaxed),
        st.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        st.no_valid_host.load(std::sync::atomic::Ordering::Relaxed)
    );
}
