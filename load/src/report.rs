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
    /// Per provider, its fullest class (the one that binds it): how full hosts are in the
    /// resource that limits them. With hosts of different shapes a different class runs
    /// out on each, so the per-class figures above stay lower; this is the packing
    /// efficiency. Fill scenarios only (absent if nothing was placed).
    pub binding: Option<Binding>,
    /// Groups whose hard policy is broken (groups scenario only). Must be 0.
    pub group_violations: Option<u64>,
    /// (provider, class) pairs whose reported usage differs from the sum of the allocations
    /// of every live server (lifecycle scenario only: its servers are the consumers it can
    /// enumerate). Must be 0.
    pub allocation_mismatches: Option<u64>,
}

/// How full each provider is in its fullest class (see [`Audit::binding`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Binding {
    /// Mean over providers of max over classes of used / capacity.
    pub mean: f64,
    /// The least full provider's figure.
    pub min: f64,
    /// Providers per binding class.
    pub hosts_by_class: BTreeMap<String, u64>,
}

/// The simulated compute nodes of a run (`--nodes`, lifecycle, churn, heartbeat).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStats {
    /// Agents started before the measured phase.
    pub simulated: usize,
    /// Heartbeat interval of every agent, seconds.
    pub heartbeat_seconds: f64,
    /// When a silent host is marked down, seconds: the engine's default, three heartbeat
    /// intervals (what the spawned engine uses; assumed for `--engine`).
    pub down_after_seconds: f64,
    /// From the first agent started until every one was registered and up, seconds.
    pub registration_seconds: f64,
    /// This process's open-file soft limit after raising it (`None`: unlimited).
    pub open_file_limit: Option<u64>,
    /// Agents that stopped with a configuration error. Must be 0.
    pub agent_failures: u64,
}

/// Servers created and deleted through the node daemons (lifecycle scenario).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    /// CreateServer calls that returned a server.
    pub created: u64,
    /// Servers returned in ERROR (every build attempt failed). Must be 0.
    pub error_servers: u64,
    /// Build attempts beyond the first (a failed spawn retried on an alternate host).
    pub build_retries: u64,
    /// DeleteServer calls that succeeded.
    pub deleted: u64,
    /// Servers each client kept alive at most (`--window`).
    pub window: usize,
    /// ACTIVE servers whose domain was looked up on its host's fake hypervisor (after each
    /// create and in the final audit).
    pub domains_checked: u64,
    /// ACTIVE servers whose host's hypervisor had no running domain for them. Must be 0.
    pub missing_domains: u64,
    /// Domains left on a hypervisor after their server was deleted, or with no server at
    /// all in the final audit. Must be 0.
    pub leaked_domains: u64,
    /// Servers alive at the audit (deleted afterwards, outside the measured phase).
    pub live_servers: u64,
}

/// Nodes up and down at one moment (churn scenario), from `ListResourceProviders`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSample {
    /// Seconds since the measured phase started.
    pub t: f64,
    /// Hosts the engine reports up.
    pub up: u64,
    /// Hosts the engine reports down.
    pub down: u64,
    /// Agents running in the harness at that moment.
    pub running: u64,
}

/// Nodes joining, leaving and going silent while clients place (churn scenario).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnStats {
    /// Agents stopped for good (their hosts go down after `down_after`).
    pub left: u64,
    /// Agents started with new names during the run.
    pub joined: u64,
    /// Agents stopped and later restarted with the same name (missed heartbeats).
    pub paused: u64,
    /// Paused agents restarted so far.
    pub resumed: u64,
    /// Claims checked against the churn history.
    pub checked_claims: u64,
    /// Claims on hosts whose agent was stopped when the claim was sent, however briefly
    /// (allowed within `down_after`: the engine cannot know yet). Shows the check is
    /// exercised.
    pub claims_on_silent_hosts: u64,
    /// Claims sent more than 2 × down_after after the host's agent was stopped (and not
    /// restarted before the claim returned). Must be 0.
    pub claims_on_stopped_hosts: u64,
    /// Claims on a host that every host-list snapshot from at least 2 × down_after before
    /// the claim until after it showed down. Must be 0.
    pub claims_on_down_hosts: u64,
    /// Up/down counts, about once a second.
    pub timeline: Vec<NodeSample>,
}

/// What heartbeats alone cost the engine (heartbeat scenario).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeartbeatStats {
    /// Seconds of the steady window (every node registered, before the end).
    pub window_seconds: f64,
    /// Heartbeats the nodes should have sent in the window (nodes × window / interval).
    pub expected_heartbeats: u64,
    /// Engine CPU seconds in the window (spawned engine only).
    pub engine_cpu_seconds: Option<f64>,
    /// Engine CPU in the window as a percentage of one core.
    pub engine_core_percent: Option<f64>,
    /// The same, per heartbeat interval of the window (shows the noise).
    pub interval_core_percent: Vec<f64>,
    /// This harness's CPU in the window as a percentage of one core (the agents' side).
    pub harness_core_percent: Option<f64>,
    /// Hosts up at the end. Should equal `nodes_expected`.
    pub nodes_up_at_end: u64,
    /// Hosts started.
    pub nodes_expected: u64,
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
    /// CPU seconds this harness (clients, and simulated nodes if any) used during the
    /// measured phase: with the engine's, what a claim costs the shared cores.
    pub harness_cpu_seconds: Option<f64>,
    /// Peak resident memory of the spawned engine, MiB.
    pub engine_peak_rss_mb: Option<f64>,
    /// Status codes (as in `errors` keys) that this scenario expects and that do not fail
    /// the run, e.g. `ResourceExhausted` when filling the cloud.
    pub expected_errors: Vec<String>,
    /// Simulated compute nodes, when the run had any.
    pub nodes: Option<NodeStats>,
    /// Servers of the lifecycle scenario.
    pub servers: Option<ServerStats>,
    /// Churn of the churn scenario.
    pub churn: Option<ChurnStats>,
    /// Heartbeat cost of the heartbeat scenario.
    pub heartbeat: Option<HeartbeatStats>,
}

impl Report {
    /// Errors whose code the scenario does not expect.
    pub fn unexpected_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| !self.expected_errors.iter().any(|c| k.ends_with(c.as_str())))
            .map(|(_, n)| n)
            .sum()
    }

    /// Whether the audit passed and no unexpected error happened: no over-commit, no usage
    /// or allocation mismatch, no group violation, no missing or leaked domain, no claim on
    /// a host down for long, every agent healthy.
    pub fn ok(&self) -> bool {
        let a = &self.audit;
        let servers_ok = self.servers.as_ref().is_none_or(|s| {
            s.error_servers == 0 && s.missing_domains == 0 && s.leaked_domains == 0
        });
        let churn_ok = self
            .churn
            .as_ref()
            .is_none_or(|c| c.claims_on_stopped_hosts == 0 && c.claims_on_down_hosts == 0);
        let nodes_ok = self.nodes.as_ref().is_none_or(|n| n.agent_failures == 0);
        let heartbeat_ok = self
            .heartbeat
            .as_ref()
            .is_none_or(|h| h.nodes_up_at_end == h.nodes_expected);
        a.overcommits == 0
            && a.usage_mismatches == 0
            && a.group_violations.unwrap_or(0) == 0
            && a.allocation_mismatches.unwrap_or(0) == 0
            && servers_ok
            && churn_ok
            && nodes_ok
            && heartbeat_ok
            && self.unexpected_errors() == 0
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
        if let Some(n) = &self.nodes {
            println!(
                "  nodes       {} simulated, heartbeat {:.1}s, down after {:.1}s, all up in {:.1}s, open-file limit {}, {} agent failures",
                n.simulated,
                n.heartbeat_seconds,
                n.down_after_seconds,
                n.registration_seconds,
                n.open_file_limit
                    .map_or_else(|| "unlimited".to_string(), |l| l.to_string()),
                n.agent_failures
            );
        }
        if let Some(srv) = &self.servers {
            println!(
                "  servers     {:>10}  created in {:.2}s = {:.1} servers/s; {} deleted, {} in ERROR, {} build retries, window {}",
                srv.created,
                self.seconds,
                self.claims_per_second,
                srv.deleted,
                srv.error_servers,
                srv.build_retries,
                srv.window
            );
        } else if self.heartbeat.is_none() {
            println!(
                "  claims      {:>10}  in {:.2}s = {:.0} claims/s",
                self.claims, self.seconds, self.claims_per_second
            );
            if self.releases > 0 {
                println!("  releases    {:>10}", self.releases);
            }
        }
        if !self.latency.is_empty() {
            println!(
                "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
            );
        }
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
            let expected = self.expected_errors.iter().any(|c| k.ends_with(c.as_str()));
            println!(
                "  errors      {k}: {n}{}",
                if expected { " (expected)" } else { "" }
            );
        }
        if let Some(r) = &self.first_rejection {
            println!("  first no-valid-host: {r}");
        }
        if let Some(c) = &self.churn {
            println!(
                "  churn       {} left, {} joined, {} paused ({} resumed)",
                c.left, c.joined, c.paused, c.resumed
            );
            // About ten samples: enough to see hosts going down and coming back.
            let n = c.timeline.len();
            let mut shown: Vec<usize> = (0..n).step_by(n.div_ceil(10).max(1)).collect();
            if n > 0 && shown.last() != Some(&(n - 1)) {
                shown.push(n - 1);
            }
            let samples: Vec<String> = shown
                .iter()
                .map(|&i| &c.timeline[i])
                .map(|s| format!("{:.1}s {}/{}", s.t, s.up, s.down))
                .collect();
            println!("  up/down     {} (t up/down)", samples.join("  "));
            println!(
                "  churn audit {} claims checked: {} on hosts stopped > 2×down_after, {} on hosts seen down throughout ({} on hosts silent < 2×down_after, allowed)",
                c.checked_claims,
                c.claims_on_stopped_hosts,
                c.claims_on_down_hosts,
                c.claims_on_silent_hosts
            );
        }
        if let Some(srv) = &self.servers {
            println!(
                "  domains     {} checked, {} missing, {} leaked; {} live servers at the audit",
                srv.domains_checked, srv.missing_domains, srv.leaked_domains, srv.live_servers
            );
        }
        let a = &self.audit;
        let util: Vec<String> = a
            .utilisation
            .iter()
            .map(|(c, u)| format!("{c} {:.1}%", u * 100.0))
            .collect();
        println!("  utilisation {}", util.join(", "));
        if let Some(b) = &a.binding {
            let by: Vec<String> = b
                .hosts_by_class
                .iter()
                .map(|(c, n)| format!("{c} on {n}"))
                .collect();
            println!(
                "  binding     hosts are {:.1}% full in the class that binds them (mean; least full {:.1}%): {}",
                b.mean * 100.0,
                b.min * 100.0,
                by.join(", ")
            );
        }
        let allocations = a
            .allocation_mismatches
            .map(|m| format!(", {m} allocation mismatches"))
            .unwrap_or_default();
        println!(
            "  audit       {} providers, {} over-commits, {} usage mismatches{allocations}, {} live instances -> {}",
            a.providers,
            a.overcommits,
            a.usage_mismatches,
            a.live_instances,
            if self.ok() { "OK" } else { "FAILED" }
        );
        if let Some(v) = a.group_violations {
            println!("  groups      {v} policy violations");
        }
        if let Some(h) = &self.heartbeat {
            println!(
                "  heartbeats  {} nodes every {:.1}s, {:.1}s steady window, ~{} heartbeats; {}/{} up at the end",
                h.nodes_expected,
                self.nodes.as_ref().map_or(0.0, |n| n.heartbeat_seconds),
                h.window_seconds,
                h.expected_heartbeats,
                h.nodes_up_at_end,
                h.nodes_expected
            );
            match (h.engine_cpu_seconds, h.engine_core_percent) {
                (Some(cpu), Some(pct)) => {
                    let mut per = h.interval_core_percent.clone();
                    let per = if per.len() <= 12 {
                        let p: Vec<String> = per.iter().map(|p| format!("{p:.2}")).collect();
                        format!("per interval: {}%", p.join(" "))
                    } else {
                        per.sort_by(f64::total_cmp);
                        format!(
                            "per interval: min {:.2}%, median {:.2}%, max {:.2}% over {}",
                            per[0],
                            per[per.len() / 2],
                            per[per.len() - 1],
                            per.len()
                        )
                    };
                    println!(
                        "  engine      {cpu:.2} CPU-s in the window = {pct:.2}% of one core ({per})"
                    );
                }
                _ => println!("  engine      CPU not measured (not spawned by berth-load)"),
            }
            if let Some(p) = h.harness_core_percent {
                println!("  harness     {p:.2}% of one core (the agents' side)");
            }
        } else {
            let per_claim = |cpu: f64| {
                if self.claims > 0 {
                    format!(", {:.0} µs per claim", cpu * 1e6 / self.claims as f64)
                } else {
                    String::new()
                }
            };
            for (who, cpu) in [
                ("engine ", self.engine_cpu_seconds),
                ("harness", self.harness_cpu_seconds),
            ] {
                if let Some(cpu) = cpu {
                    println!(
                        "  {who}     {cpu:.2} CPU-s ({:.0}% of one core{})",
                        100.0 * cpu / self.seconds.max(1e-9),
                        per_claim(cpu)
                    );
                }
            }
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
    /// Starts printing `count()` claims and their rate, if `enabled`.
    pub fn start(count: impl Fn() -> u64 + Send + 'static, enabled: bool) -> Self {
        Self::start_labelled("claims", count, enabled)
    }

    /// Starts printing `count()` (named `label`, e.g. "servers") and its rate, if `enabled`.
    pub fn start_labelled(
        label: &'static str,
        count: impl Fn() -> u64 + Send + 'static,
        enabled: bool,
    ) -> Self {
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
                            "\r  {t:>4}s  {n:>10} {label}  {:>8.0}/s ",
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
