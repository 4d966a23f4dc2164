//! Results: latency histograms (HdrHistogram), the audit, and how they are printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Records one latency (saturating at the top bound).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

/// Percentiles of one RPC.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// RPC name.
    pub rpc: String,
    /// Calls.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
}

/// Summarises a histogram.
pub fn summary(rpc: &str, h: &Histogram<u64>) -> Latency {
    Latency {
        rpc: rpc.into(),
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// The end-of-run audit: recomputed from the engine's own reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Providers of this run.
    pub providers: u64,
    /// (provider, class) pairs with used > capacity. Must be 0.
    pub overcommits: u64,
    /// Classes whose per-provider usage sum differs from the project's usage. Must be 0.
    pub usage_mismatches: u64,
    /// Consumers of this run still holding allocations.
    pub live_instances: u64,
    /// used / capacity per class over this run's providers.
    pub utilisation: BTreeMap<String, f64>,
    /// Groups whose hard policy is broken (groups scenario only). Must be 0.
    pub group_violations: Option<u64>,
}

/// A run's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Hosts.
    pub hosts: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds spent creating the cloud.
    pub setup_seconds: f64,
    /// Seconds of the measured phase.
    pub seconds: f64,
    /// Successful claims.
    pub claims: u64,
    /// Successful releases.
    pub releases: u64,
    /// Claims per second.
    pub claims_per_second: f64,
    /// Latency per RPC.
    pub latency: Vec<Latency>,
    /// Errors by "RPC CODE".
    pub errors: BTreeMap<String, u64>,
    /// The first "no valid host" message seen.
    pub first_rejection: Option<String>,
    /// The audit.
    pub audit: Audit,
    /// CPU seconds the spawned engine used during the measured phase.
    pub engine_cpu_seconds: Option<f64>,
    /// Peak resident memory of the spawned engine, MiB.
    pub engine_peak_rss_mb: Option<f64>,
}

impl Report {
    /// Whether the audit passed and no unexpected error happened (fill runs expect
    /// RESOURCE_EXHAUSTED; flat runs expect nothing).
    pub fn ok(&self) -> bool {
        let unexpected = self
            .errors
            .iter()
            .filter(|(k, _)| !k.ends_with("ResourceExhausted"))
            .count();
        self.audit.overcommits == 0
            && self.audit.usage_mismatches == 0
            && self.audit.group_violations.unwrap_or(0) == 0
            && unexpected == 0
    }

    /// Prints a human table, or JSON.
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string_pretty(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("berth-load: cannot encode the report: {e}"),
            }
            return;
        }
        println!(
            "scenario {}: {} hosts, {} clients (setup {:.1}s)",
            self.scenario, self.hosts, self.clients, self.setup_seconds
        );
        println!(
            "  claims      {:>10}  in {:.2}s = {:.0} claims/s",
            self.claims, self.seconds, self.claims_per_second
        );
        if self.releases > 0 {
            println!("  releases    {:>10}", self.releases);
        }
        println!(
            "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for l in &self.latency {
            println!(
                "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                l.rpc, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        if self.errors.is_empty() {
            println!("  errors      none");
        }
        for (k, n) in &self.errors {
            println!("  errors      {k}: {n}");
        }
        if let Some(r) = &self.first_rejection {
            println!("  first no-valid-host: {r}");
        }
        let a = &self.audit;
        let util: Vec<String> = a
            .utilisation
            .iter()
            .map(|(c, u)| format!("{c} {:.1}%", u * 100.0))
            .collect();
        println!("  utilisation {}", util.join(", "));
        println!(
            "  audit       {} providers, {} over-commits, {} usage mismatches, {} live instances -> {}",
            a.providers,
            a.overcommits,
            a.usage_mismatches,
            a.live_instances,
            if self.ok() { "OK" } else { "FAILED" }
        );
        if let Some(v) = a.group_violations {
            println!("  groups      {v} policy violations");
        }
        if let Some(cpu) = self.engine_cpu_seconds {
            println!(
                "  engine      {cpu:.2} CPU-s ({:.0}% of one core)",
                100.0 * cpu / self.seconds.max(1e-9)
            );
        }
        if let Some(rss) = self.engine_peak_rss_mb {
            println!("  engine      peak RSS {rss:.1} MiB");
        }
    }
}

/// A once-a-second progress line on stderr.
pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts printing `count()` and its rate, if `enabled`.
    pub fn start(count: impl Fn() -> u64 + Send + 'static, enabled: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = enabled.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let t = start.elapsed().as_secs();
                    if t > last {
                        last = t;
                        let n = count();
                        eprint!(
                            "\r  {t:>4}s  {n:>10} claims  {:>8.0}/s ",
                            n as f64 / start.elapsed().as_secs_f64()
                        );
                        let _ = std::io::stderr().flush();
                    }
                }
                if last > 0 {
                    eprintln!();
                }
            })
        });
        Self { stop, handle }
    }

    /// Stops printing.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
