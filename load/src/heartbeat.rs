//! The `heartbeat-N` scenario: what N nodes heartbeating cost the engine, with nothing else
//! going on. Once every node is registered and up (the run waits for that), it lets one
//! second settle, then measures the spawned engine's CPU time over `--duration` [60 s],
//! per heartbeat interval and in total, as a percentage of one core. The target:
//! 10,000 nodes every 10 s cost less than 5 % of one core.
//!
//! Nothing in the window asks the engine anything: the hosts are listed once, after it, to
//! check that every one is still up.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Conn;

use crate::engine_proc::{self, EngineProcess};
use crate::fleet::Fleet;
use crate::{Args, Report, report};

/// Runs the measurement window.
pub(crate) async fn run(
    channel: &Conn,
    args: &Args,
    fleet: &Arc<Fleet>,
    engine: Option<&EngineProcess>,
) -> Result<Report, String> {
    let window = Duration::from_secs_f64(args.duration_or(60.0));
    let interval = fleet.heartbeat();
    // The last registrations' follow-up work (first heartbeats, reconciliation) settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let engine_cpu = || engine.map(EngineProcess::cpu_seconds);
    let start = Instant::now();
    let (engine0, harness0) = (engine_cpu(), engine_proc::cpu_seconds("self"));
    let mut per_interval = Vec::new();
    let mut last = (start, engine0);
    while start.elapsed() < window {
        let left = window.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(interval)).await;
        let now = (Instant::now(), engine_cpu());
        if let (Some(before), Some(after)) = (last.1, now.1) {
            let pct = 100.0 * (after - before) / (now.0 - last.0).as_secs_f64();
            per_interval.push(pct);
            if args.progress() {
                eprint!(
                    "\r  {:>4.0}s / {:.0}s  engine {pct:>6.2}% of one core over the last {:.1}s ",
                    start.elapsed().as_secs_f64(),
                    window.as_secs_f64(),
                    (now.0 - last.0).as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        }
        last = now;
    }
    let seconds = start.elapsed().as_secs_f64();
    let engine_cpu_seconds = engine0.zip(engine_cpu()).map(|(a, b)| b - a);
    let harness = engine_proc::cpu_seconds("self") - harness0;
    if args.progress() {
        eprintln!();
    }
    let up = crate::list_providers(channel, &fleet.scope())
        .await?
        .iter()
        .filter(|p| p.up)
        .count();
    let nodes = fleet.running() as u64;
    Ok(Report {
        seconds,
        heartbeat: Some(report::HeartbeatStats {
            window_seconds: seconds,
            expected_heartbeats: (nodes as f64 * seconds / interval.as_secs_f64()) as u64,
            engine_cpu_seconds,
            engine_core_percent: engine_cpu_seconds.map(|c| 100.0 * c / seconds),
            interval_core_percent: per_interval,
            harness_core_percent: Some(100.0 * harness / seconds),
            nodes_up_at_end: up as u64,
            nodes_expected: nodes,
        }),
        ..Report::default()
    })
}
