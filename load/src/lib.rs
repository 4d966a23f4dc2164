//! The load harness: builds a synthetic cloud through the real gRPC API, then runs a named,
//! seeded scenario with many concurrent clients, then audits the engine's state.
//!
//! Scenarios: `flat-1k` / `flat-10k` (SelectDestinations + Release cycles, mixed flavors),
//! `fill-1k` (place until no valid host; report utilisation per class reached — packing
//! efficiency — and the first rejection reasons), `groups-10k` (place `--count` instances
//! and keep them: a quarter pinned to an AZ, a tenth in anti-affinity groups of 5, some in
//! soft-anti-affinity and affinity groups; the audit checks every group policy). Any
//! `flat-N` / `fill-N` / `groups-N` works.

mod engine_proc;
mod groups;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use clap::Parser;
use tonic::transport::Channel;

pub use report::Report;

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(version, about = "Load-test a Berth engine: concurrent clients, latency percentiles, audit", long_about = None)]
pub struct Args {
    /// Scenario: flat-1k, flat-10k, fill-1k (any flat-N or fill-N, N hosts; k = 1000).
    #[arg(long, default_value = "flat-1k")]
    pub scenario: String,
    /// Engine to target; when absent, a `berth-engine` is spawned for the run.
    #[arg(long, env = "BERTH_ENGINE")]
    pub engine: Option<String>,
    /// Path of the berth-engine binary to spawn [default: next to berth-load].
    #[arg(long)]
    pub engine_bin: Option<std::path::PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Run for this many seconds (flat scenarios).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many claims instead (flat scenarios).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed for the cloud and the request mix.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Spawned engine packs (negative RAM/CPU/disk multipliers) instead of spreading;
    /// fill scenarios always pack.
    #[arg(long)]
    pub pack: bool,
}

/// One scenario, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// SelectDestinations + Release cycles on N hosts.
    Flat(usize),
    /// Place until no valid host on N hosts.
    Fill(usize),
    /// Place `--count` instances with AZs and server groups, keep them, audit the groups.
    Groups(usize),
}

impl Scenario {
    /// Parses `flat-1k`, `fill-500`, ….
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, n) = s
            .split_once('-')
            .ok_or_else(|| format!("scenario {s:?}: expected KIND-HOSTS, e.g. flat-1k"))?;
        let hosts = match n.strip_suffix('k') {
            Some(k) => k.parse::<usize>().map(|v| v * 1000),
            None => n.parse::<usize>(),
        }
        .map_err(|_| format!("scenario {s:?}: {n:?} is not a host count like 1k or 500"))?;
        if hosts == 0 || hosts > 1_000_000 {
            return Err(format!("scenario {s:?}: hosts must be in 1..=1000000"));
        }
        match kind {
            "flat" => Ok(Self::Flat(hosts)),
            "fill" => Ok(Self::Fill(hosts)),
            "groups" => Ok(Self::Groups(hosts)),
            _ => Err(format!(
                "scenario {s:?}: unknown kind {kind:?} (flat, fill, groups)"
            )),
        }
    }
    fn hosts(self) -> usize {
        match self {
            Self::Flat(n) | Self::Fill(n) | Self::Groups(n) => n,
        }
    }
}

/// The flavors every run creates: (name, vcpus, ram_mb, disk_gb).
pub const FLAVORS: &[(&str, u32, u64, u64)] = &[
    ("load.small", 1, 2048, 20),
    ("load.medium", 2, 4096, 40),
    ("load.large", 4, 8192, 80),
    ("load.xlarge", 8, 16384, 160),
];

/// Runs a whole load test.
pub async fn run(args: Args) -> Result<Report, String> {
    let scenario = Scenario::parse(&args.scenario)?;
    if args.clients == 0 || args.connections == 0 {
        return Err("--clients and --connections must be at least 1".into());
    }
    let pack = args.pack || matches!(scenario, Scenario::Fill(_));
    let mut spawned = None;
    let url = match &args.engine {
        Some(u) => u.clone(),
        None => {
            let p = engine_proc::EngineProcess::spawn(args.engine_bin.as_deref(), pack).await?;
            let u = p.url.clone();
            spawned = Some(p);
            u
        }
    };
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let ch = Channel::from_shared(url.clone())
            .map_err(|e| format!("engine URL {url:?}: {e}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot reach the engine at {url}: {e}"))?;
        channels.push(ch);
    }
    let setup_start = Instant::now();
    let run_id = format!("{:08x}", fastrand::u32(..));
    build_cloud(&channels, scenario.hosts(), args.seed, &run_id).await?;
    let setup = setup_start.elapsed();
    let cpu_before = spawned.as_ref().map(|p| p.cpu_seconds()).unwrap_or(0.0);
    let mut report = match scenario {
        Scenario::Flat(_) => run_flat(&channels, &args, &run_id).await?,
        Scenario::Fill(_) => run_fill(&channels, &args, &run_id).await?,
        Scenario::Groups(_) => groups::run(&channels, &args, &run_id).await?,
    };
    report.scenario = args.scenario.clone();
    report.hosts = scenario.hosts();
    report.clients = args.clients;
    report.setup_seconds = setup.as_secs_f64();
    report.audit = audit(&channels[0], &run_id).await?;
    if matches!(scenario, Scenario::Groups(_)) {
        report.audit.group_violations = Some(groups::audit(&channels[0], &run_id).await?);
    }
    if let Some(p) = &spawned {
        report.engine_cpu_seconds = Some(p.cpu_seconds() - cpu_before);
        report.engine_peak_rss_mb = p.peak_rss_mb();
    }
    report.print(args.json);
    drop(spawned);
    Ok(report)
}

/// Creates `hosts` providers (mixed sizes, 4 AZs) and the flavors, concurrently.
async fn build_cloud(
    channels: &[Channel],
    hosts: usize,
    seed: u64,
    run_id: &str,
) -> Result<(), String> {
    let mut catalog = CatalogClient::new(channels[0].clone());
    for (name, vcpus, ram, disk) in FLAVORS {
        let r = catalog
            .create_flavor(pb::CreateFlavorRequest {
                name: name.to_string(),
                vcpus: *vcpus,
                ram_mb: *ram,
                disk_gb: *disk,
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(format!("creating flavor {name}: {}", s.message())),
        }
    }
    let workers = channels.len().max(4);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = PlacementClient::new(channels[w % channels.len()].clone());
        let next = next.clone();
        let run_id = run_id.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= hosts {
                    return Ok::<(), String>(());
                }
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let vcpus = [16u64, 32, 48, 64][rng.usize(..4)];
                let ram_gb = [64u64, 128, 192, 256][rng.usize(..4)];
                let inv = |c: &str, total: u64, ratio: f64, reserved: u64| pb::Inventory {
                    resource_class: c.into(),
                    total,
                    reserved,
                    allocation_ratio: ratio,
                    ..Default::default()
                };
                let req = pb::CreateResourceProviderRequest {
                    name: format!("load-{run_id}-{i:06}"),
                    availability_zone: format!("az{}", i % 4),
                    aggregates: vec![format!("load-{run_id}")],
                    inventories: vec![
                        inv("VCPU", vcpus, 4.0, 0),
                        inv("MEMORY_MB", ram_gb * 1024, 1.0, 512),
                        inv("DISK_GB", [1000u64, 2000, 4000][rng.usize(..3)], 1.0, 0),
                    ],
                    ..Default::default()
                };
                client
                    .create_resource_provider(req)
                    .await
                    .map_err(|s| format!("creating provider {i}: {}", s.message()))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

pub(crate) fn spec(flavor: &str, run_id: &str) -> pb::RequestSpec {
    pb::RequestSpec {
        flavor: Some(flavor.to_string()),
        member_of: vec![pb::AggregateSet {
            aggregates: vec![format!("load-{run_id}")],
        }],
        project_id: format!("load-{run_id}"),
        user_id: "berth-load".into(),
        num_instances: 1,
        ..Default::default()
    }
}

/// Latency recorders and counters shared by the clients.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) claims: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) errors: parking::Mutex<BTreeMap<String, u64>>,
    pub(crate) first_rejection: parking::Mutex<Option<String>>,
}

impl Tally {
    /// Counts a failed call under "RPC CODE"; keeps the first "no valid host" message.
    pub(crate) fn record_error(&self, rpc: &str, e: &tonic::Status) {
        if e.code() == tonic::Code::ResourceExhausted {
            self.first_rejection
                .lock()
                .get_or_insert_with(|| e.message().to_string());
        }
        *self
            .errors
            .lock()
            .entry(format!("{rpc} {}", code_name(e)))
            .or_default() += 1;
    }

    /// The report of a measured phase that took `elapsed` seconds.
    pub(crate) fn report(&self, elapsed: f64, latency: Vec<report::Latency>) -> Report {
        let claims = self.claims.load(Ordering::Relaxed);
        Report {
            seconds: elapsed,
            claims,
            releases: self.releases.load(Ordering::Relaxed),
            claims_per_second: claims as f64 / elapsed,
            latency,
            errors: std::mem::take(&mut *self.errors.lock()),
            first_rejection: self.first_rejection.lock().clone(),
            ..Report::default()
        }
    }
}

pub(crate) mod parking {
    //! A std mutex that shrugs off poisoning: a panicked client must not hide the report.
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self(std::sync::Mutex::new(T::default()))
        }
    }
    impl<T> Mutex<T> {
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

pub(crate) fn code_name(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

async fn run_flat(channels: &[Channel], args: &Args, run_id: &str) -> Result<Report, String> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs_f64(args.duration.max(0.1));
    let limit = args.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut sched = SchedulerClient::new(channels[c % channels.len()].clone());
        let tally = tally.clone();
        let stop = stop.clone();
        let run_id = run_id.to_string();
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut sel_h = report::histogram();
            let mut rel_h = report::histogram();
            while !stop.load(Ordering::Relaxed) {
                let flavor = FLAVORS[rng.usize(..FLAVORS.len())].0;
                let t = Instant::now();
                let r = sched
                    .select_destinations(pb::SelectDestinationsRequest {
                        spec: Some(spec(flavor, &run_id)),
                    })
                    .await;
                report::record(&mut sel_h, t.elapsed());
                match r {
                    Ok(resp) => {
                        let n = tally.claims.fetch_add(1, Ordering::Relaxed) + 1;
                        for s in resp.into_inner().selections {
                            let t = Instant::now();
                            let r = sched
                                .release(pb::ReleaseRequest {
                                    consumer_uuid: s.consumer_uuid,
                                })
                                .await;
                            report::record(&mut rel_h, t.elapsed());
                            match r {
                                Ok(_) => {
                                    tally.releases.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => tally.record_error("Release", &e),
                            }
                        }
                        if n >= limit {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tally.record_error("SelectDestinations", &e),
                }
            }
            (sel_h, rel_h)
        }));
    }
    let progress = report::Progress::start(tally_claims(&tally), args.duration > 3.0 && !args.json);
    while start.elapsed() < deadline && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sel = report::histogram();
    let mut rel = report::histogram();
    for t in tasks {
        let (s, r) = t.await.map_err(|e| e.to_string())?;
        sel.add(&s).map_err(|e| e.to_string())?;
        rel.add(&r).map_err(|e| e.to_string())?;
    }
    progress.stop();
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(
        elapsed,
        vec![
            report::summary("SelectDestinations", &sel),
            report::summary("Release", &rel),
        ],
    ))
}

pub(crate) fn tally_claims(t: &Arc<Tally>) -> impl Fn() -> u64 + Send + 'static {
    let t = t.clone();
    move || t.claims.load(Ordering::Relaxed)
}

async fn run_fill(channels: &[Channel], args: &Args, run_id: &str) -> Result<Report, String> {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut sched = SchedulerClient::new(channels[c % channels.len()].clone());
        let tally = tally.clone();
        let run_id = run_id.to_string();
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut sel_h = report::histogram();
            // Each client stops after its first rejection for every flavor, smallest last.
            let mut exhausted = [false; FLAVORS.len()];
            while !exhausted.iter().all(|e| *e) {
                let open: Vec<usize> = (0..FLAVORS.len()).filter(|i| !exhausted[*i]).collect();
                let f = open[rng.usize(..open.len())];
                let t = Instant::now();
                let r = sched
                    .select_destinations(pb::SelectDestinationsRequest {
                        spec: Some(spec(FLAVORS[f].0, &run_id)),
                    })
                    .await;
                report::record(&mut sel_h, t.elapsed());
                match r {
                    Ok(_) => {
                        tally.claims.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                        tally
                            .first_rejection
                            .lock()
                            .get_or_insert_with(|| format!("{}: {}", FLAVORS[f].0, e.message()));
                        // Smaller flavors may still fit: a flavor is done once it is rejected.
                        for (i, done) in exhausted.iter_mut().enumerate() {
                            if FLAVORS[i].1 >= FLAVORS[f].1 {
                                *done = true;
                            }
                        }
                    }
                    Err(e) => {
                        tally.record_error("SelectDestinations", &e);
                        exhausted[f] = true;
                    }
                }
            }
            sel_h
        }));
    }
    let progress = report::Progress::start(tally_claims(&tally), !args.json);
    let mut sel = report::histogram();
    for t in tasks {
        sel.add(&t.await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    progress.stop();
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(elapsed, vec![report::summary("SelectDestinations", &sel)]))
}

/// Recomputes usage from every allocation of this run and compares it with what the engine
/// reports per provider; counts over-commits.
async fn audit(channel: &Channel, run_id: &str) -> Result<report::Audit, String> {
    let mut placement = PlacementClient::new(channel.clone());
    let mut audit = report::Audit::default();
    let mut token = String::new();
    let mut per_class: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    loop {
        let resp = placement
            .list_resource_providers(pb::ListResourceProvidersRequest {
                member_of: vec![format!("load-{run_id}")],
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("audit: listing providers: {}", s.message()))?
            .into_inner();
        for p in &resp.providers {
            audit.providers += 1;
            for u in &p.usages {
                if u.used > u.capacity {
                    audit.overcommits += 1;
                }
                let e = per_class.entry(u.resource_class.clone()).or_default();
                e.0 += u.used;
                e.1 += u.capacity;
            }
        }
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    let project = placement
        .get_project_usages(pb::GetProjectUsagesRequest {
            project_id: format!("load-{run_id}"),
            user_id: None,
        })
        .await
        .map_err(|s| format!("audit: project usages: {}", s.message()))?
        .into_inner();
    let project_usage: BTreeMap<String, u64> = project
        .usages
        .into_iter()
        .map(|r| (r.resource_class, r.amount))
        .collect();
    for (class, (used, cap)) in &per_class {
        audit.utilisation.insert(
            class.clone(),
            if *cap > 0 {
                *used as f64 / *cap as f64
            } else {
                0.0
            },
        );
        if project_usage.get(class).copied().unwrap_or(0) != *used {
            audit.usage_mismatches += 1;
        }
    }
    audit.live_instances = u64::from(project.instances);
    Ok(audit)
}
