//! The load harness: builds a synthetic cloud through the real gRPC API — API-created
//! providers, or simulated compute nodes that register and heartbeat like real ones — then
//! runs a named, seeded scenario with many concurrent clients, then audits the engine's
//! state.
//!
//! Modules:
//! - this file: flags ([`Args`]), scenario names ([`Scenario`]), the run ([`run`]), the
//!   API-created cloud, the `flat` and `fill` scenarios and the usage audit;
//! - [`fleet`]: simulated compute nodes (`berth_node::agent` over `FakeHypervisor`s);
//! - `groups`, `lifecycle`, `churn`, `heartbeat`: the other scenarios;
//! - [`report`]: latency histograms, the report and how it is printed;
//! - `engine_proc`: the `berth-engine` child process and its CPU time and memory.
//!
//! Scenarios are listed in [`SCENARIOS_HELP`] (also `berth-load --help`).

mod churn;
mod engine_proc;
pub mod fleet;
mod groups;
mod heartbeat;
mod lifecycle;
pub mod report;
pub mod sched;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use clap::Parser;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use report::Report;
pub use sched::{ClientKind, Sched};

/// Serving threads of a spawned engine. With berth-wire's client the harness's one thread
/// needs about a third of a core on flat-1k (11 µs per claim), so the engine gets one per
/// core, its own default (2 cores: 31-33k against 25k claims/s with one; churn-10k 8.4k
/// against 5.2k). tonic's client (45 µs per claim) needs a core of its own, and so does
/// lifecycle's harness (`busy_harness`: its agents run every server's spawn and delete,
/// 82% of a core with 2 engine threads: 4.7k against 6.4k servers/s with 1): cores − 1
/// (flat-1k over tonic with 2 threads: 13.5k against 15k claims/s).
pub fn default_engine_threads(client: ClientKind, busy_harness: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if client == ClientKind::Wire && !busy_harness {
        cores
    } else {
        cores.saturating_sub(1).max(1)
    }
}

/// A connection to the engine that sends the run's bearer token with every call.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` (when the run has a token) to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How a spawned engine is secured (`--security`), so the cost of each can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// `--insecure`: no token checked, plain text.
    Insecure,
    /// Tokens checked on every call (the default of berth-engine), plain text on loopback.
    Token,
    /// Tokens, and TLS on the listener (a development CA made for the run).
    Tls,
}

/// The scenarios, as `berth-load --help` shows them after the flags.
pub const SCENARIOS_HELP: &str = "\
Scenarios (N hosts: 500, 1k, 10k, ...; k = 1000; every run is seeded by --seed):
  flat-N       N API-created providers (mixed sizes, 4 AZs). Clients loop SelectDestinations
               + Release with mixed flavors for --duration [10s] or --count claims.
               Named: flat-1k, flat-10k.
  fill-N       N providers, packing. Clients place until no valid host; reports the
               utilisation reached per class, how full each host is in the class that
               binds it (packing efficiency) and the first rejection. Named: fill-1k.
  groups-N     N providers. Places --count [10000] instances and keeps them: a quarter
               pinned to an AZ, a tenth in anti-affinity groups of 5, some in soft-anti-
               affinity and affinity groups; the audit checks every group. Named: groups-10k.
  lifecycle-N  N simulated compute nodes (real Nodes/Connect streams over fake
               hypervisors). Clients loop CreateServer (count 1, mixed flavors, an image the
               run creates) and DeleteServer, each keeping at most --window servers, for
               --duration [10s] or --count creates. Every ACTIVE server's domain is checked
               on its host's fake hypervisor; deleted ones must be gone; the audit recomputes
               each provider's usage from every live server's allocations. Named:
               lifecycle-1k.
  churn-N      N simulated nodes heartbeating every --heartbeat [2s] (down after 3
               intervals). Clients loop SelectDestinations + Release while, every second,
               --churn [N/1000, at least 1] nodes leave for good, as many join with new
               names and as many pause (stop, then come back under the same name after
               0.5-2.5 x down_after) for --duration [30s]; half the victims are hosts just
               placed on. Reports up/down over time; the audit counts claims on hosts
               stopped for over 2 x down_after and on hosts every snapshot showed down.
               Named: churn-10k.
  heartbeat-N  N simulated nodes heartbeating every --heartbeat [10s], no clients, for
               --duration [60s] after all are up: the engine's CPU in that window as a
               percentage of one core (target: 10,000 nodes every 10s < 5%). Named:
               heartbeat-10k.

Simulated nodes are sized like flat's hosts, in AZs az0-az3, and carry the trait
CUSTOM_LOAD_<RUN> that requests and audits select them by. --nodes M adds M heartbeating
nodes to flat/fill/groups runs (they are not placed on: background load only).

The run fails (exit status 2) on any over-commit, usage or allocation mismatch, group
violation, missing or leaked domain, claim on a long-down host, or error the scenario does
not expect (fill, flat and groups expect RESOURCE_EXHAUSTED; the others expect none).";

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Load-test a Berth engine: simulated compute nodes, concurrent clients, latency percentiles, audit",
    long_about = None,
    after_help = SCENARIOS_HELP
)]
pub struct Args {
    /// Scenario: flat-N, fill-N, groups-N, lifecycle-N, churn-N, heartbeat-N (see below).
    #[arg(long, default_value = "flat-1k")]
    pub scenario: String,
    /// Engine to target; when absent, a `berth-engine` is spawned for the run.
    #[arg(long, env = "BERTH_ENGINE")]
    pub engine: Option<String>,
    /// Path of the berth-engine binary to spawn [default: next to berth-load].
    #[arg(long)]
    pub engine_bin: Option<std::path::PathBuf>,
    /// The spawned engine keeps its state durably in this directory (write-ahead log,
    /// fsync per group commit) instead of running --ephemeral; the directory should be
    /// new or empty.
    #[arg(long)]
    pub engine_data_dir: Option<std::path::PathBuf>,
    /// gRPC serving threads of the spawned engine (its --threads) [default: one per core;
    /// cores − 1, at least 1, with --client tonic or for lifecycle, whose harness needs a
    /// core of its own].
    #[arg(long)]
    pub engine_threads: Option<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// HTTP/2 connections the clients share (simulated nodes have one each).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Run for this many seconds [default: 10; churn 30; heartbeat 60, after all nodes are
    /// up]. With --count and no --duration, runs until the count is reached.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many claims (flat) or creates (lifecycle); instances to place
    /// (groups, default 10000).
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
    /// Simulated compute nodes, each a real agent with its own connection [default: N for
    /// lifecycle-N, churn-N, heartbeat-N; 0 otherwise].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Seconds between a simulated node's heartbeats (at least 0.1) [default: 10; churn 2].
    #[arg(long)]
    pub heartbeat: Option<f64>,
    /// Simulated nodes started per second while the fleet comes up.
    #[arg(long, default_value_t = 2000)]
    pub ramp: usize,
    /// Lifecycle: servers each client keeps alive; the oldest is deleted beyond it (0:
    /// delete each server right after creating it).
    #[arg(long, default_value_t = 2)]
    pub window: usize,
    /// Churn: nodes that leave, join and pause, each, per second [default: N/1000, at least 1].
    #[arg(long)]
    pub churn: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Security of the spawned engine (ignored with --engine): insecure, token (its
    /// default: every call's token is checked) or tls (tokens over TLS). Compare claims/s
    /// across the three to see what security costs.
    #[arg(long, value_enum, default_value_t = Security::Token)]
    pub security: Security,
    /// Bearer token for --engine (an admin's: the run creates hosts and flavors). Without
    /// it, for an engine on this machine, <data-dir>/admin.token is used.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of a local --engine, for its admin.token.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    pub data_dir: std::path::PathBuf,
    /// CA certificate (PEM) of an https:// --engine.
    #[arg(long, env = "BERTH_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// HTTP/2 client of the placement loops (flat, fill, groups, churn): wire (berth-wire;
    /// the harness spends 10–11 µs per flat-1k claim) or tonic (hyper + h2; 42–45 µs). An
    /// https engine always gets tonic's. The harness shares the machine with the engine:
    /// what it spends, the engine cannot.
    #[arg(long, value_enum, default_value_t = ClientKind::Wire)]
    pub client: ClientKind,
}

impl Args {
    /// `--duration`, or this scenario's default.
    fn duration_or(&self, default: f64) -> f64 {
        self.duration.unwrap_or(default).max(0.1)
    }

    /// How long the measured phase may last: `--duration`, or unbounded when only
    /// `--count` bounds it.
    fn deadline(&self, default: f64) -> Duration {
        if self.count.is_some() && self.duration.is_none() {
            Duration::MAX
        } else {
            Duration::from_secs_f64(self.duration_or(default))
        }
    }

    /// Progress lines on stderr: not with --quiet or --json.
    fn progress(&self) -> bool {
        !self.quiet && !self.json
    }
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
    /// CreateServer / DeleteServer through N simulated nodes.
    Lifecycle(usize),
    /// SelectDestinations + Release while N simulated nodes join, leave and go silent.
    Churn(usize),
    /// N simulated nodes heartbeating, no clients: the engine's CPU.
    Heartbeat(usize),
}

impl Scenario {
    /// Parses `flat-1k`, `fill-500`, `lifecycle-1k`, ….
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
            "lifecycle" => Ok(Self::Lifecycle(hosts)),
            "churn" => Ok(Self::Churn(hosts)),
            "heartbeat" => Ok(Self::Heartbeat(hosts)),
            _ => Err(format!(
                "scenario {s:?}: unknown kind {kind:?} (flat, fill, groups, lifecycle, churn, heartbeat)"
            )),
        }
    }

    fn hosts(self) -> usize {
        match self {
            Self::Flat(n)
            | Self::Fill(n)
            | Self::Groups(n)
            | Self::Lifecycle(n)
            | Self::Churn(n)
            | Self::Heartbeat(n) => n,
        }
    }

    /// Whether the scenario's hosts are simulated nodes rather than API-created providers.
    fn simulated(self) -> bool {
        matches!(
            self,
            Self::Lifecycle(_) | Self::Churn(_) | Self::Heartbeat(_)
        )
    }

    /// Default heartbeat interval: churn needs hosts to go down within the run.
    fn default_heartbeat(self) -> f64 {
        if matches!(self, Self::Churn(_)) {
            2.0
        } else {
            10.0
        }
    }

    /// Error codes that do not fail the run.
    fn expected_errors(self) -> Vec<String> {
        match self {
            // As before simulated nodes existed: a full cloud answers "no valid host".
            Self::Flat(_) | Self::Fill(_) | Self::Groups(_) => vec!["ResourceExhausted".into()],
            Self::Lifecycle(_) | Self::Churn(_) | Self::Heartbeat(_) => Vec::new(),
        }
    }
}

/// Which providers belong to this run: API-created ones are members of aggregate
/// `load-<run>`; simulated nodes report trait `CUSTOM_LOAD_<RUN>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Members of this aggregate.
    Aggregate(String),
    /// Providers with this trait.
    Trait(String),
}

impl Scope {
    /// Restricts a placement request to the scope.
    fn restrict(&self, spec: &mut pb::RequestSpec) {
        match self {
            Self::Aggregate(a) => spec.member_of.push(pb::AggregateSet {
                aggregates: vec![a.clone()],
            }),
            Self::Trait(t) => spec.required_traits.push(t.clone()),
        }
    }

    /// The list request of one page of the scope's providers.
    fn list_request(&self, page_token: String) -> pb::ListResourceProvidersRequest {
        let mut req = pb::ListResourceProvidersRequest {
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        match self {
            Self::Aggregate(a) => req.member_of.push(a.clone()),
            Self::Trait(t) => req.required_traits.push(t.clone()),
        }
        req
    }
}

/// Every provider of `scope`, all pages.
pub(crate) async fn list_providers(
    channel: &Conn,
    scope: &Scope,
) -> Result<Vec<pb::ResourceProvider>, String> {
    let mut placement = PlacementClient::new(channel.clone());
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let resp = placement
            .list_resource_providers(scope.list_request(token))
            .await
            .map_err(|s| format!("listing providers: {}", s.message()))?
            .into_inner();
        out.extend(resp.providers);
        if resp.next_page_token.is_empty() {
            return Ok(out);
        }
        token = resp.next_page_token;
    }
}

/// The hardware of host `i` of a seeded cloud: (vCPUs, RAM GiB, disk GB). API-created
/// providers and simulated nodes of the same index and seed are alike.
pub(crate) fn host_shape(seed: u64, i: usize) -> (u64, u64, u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let vcpus = [16u64, 32, 48, 64][rng.usize(..4)];
    let ram_gb = [64u64, 128, 192, 256][rng.usize(..4)];
    let disk_gb = [1000u64, 2000, 4000][rng.usize(..3)];
    (vcpus, ram_gb, disk_gb)
}

/// Provider `i` of the seeded API-created cloud of run `run_id`: named
/// `load-<run>-<i>`, in zone `az<i % 4>` and aggregate `load-<run>`, shaped by
/// [`host_shape`] (VCPU at ratio 4, 512 MiB of RAM reserved).
pub fn provider_request(seed: u64, i: usize, run_id: &str) -> pb::CreateResourceProviderRequest {
    let (vcpus, ram_gb, disk_gb) = host_shape(seed, i);
    let inv = |c: &str, total: u64, ratio: f64, reserved: u64| pb::Inventory {
        resource_class: c.into(),
        total,
        reserved,
        allocation_ratio: ratio,
        ..Default::default()
    };
    pb::CreateResourceProviderRequest {
        name: format!("load-{run_id}-{i:06}"),
        availability_zone: format!("az{}", i % 4),
        aggregates: vec![format!("load-{run_id}")],
        inventories: vec![
            inv("VCPU", vcpus, 4.0, 0),
            inv("MEMORY_MB", ram_gb * 1024, 1.0, 512),
            inv("DISK_GB", disk_gb, 1.0, 0),
        ],
        ..Default::default()
    }
}

/// The flavors every run creates: (name, vcpus, ram_mb, disk_gb).
pub const FLAVORS: &[(&str, u32, u64, u64)] = &[
    ("load.small", 1, 2048, 20),
    ("load.medium", 2, 4096, 40),
    ("load.large", 4, 8192, 80),
    ("load.xlarge", 8, 16384, 160),
];

/// Runs a whole load test: engine, cloud, fleet, scenario, audit; prints and returns the
/// report.
pub async fn run(args: Args) -> Result<Report, String> {
    let scenario = Scenario::parse(&args.scenario)?;
    if args.clients == 0 || args.connections == 0 {
        return Err("--clients and --connections must be at least 1".into());
    }
    let sim_nodes = args.nodes.unwrap_or(if scenario.simulated() {
        scenario.hosts()
    } else {
        0
    });
    if scenario.simulated() && sim_nodes == 0 {
        return Err(format!("{}: --nodes must be at least 1", args.scenario));
    }
    let heartbeat = args.heartbeat.unwrap_or(scenario.default_heartbeat());
    if !(heartbeat.is_finite() && heartbeat >= 0.1) {
        return Err(format!(
            "--heartbeat {heartbeat}: must be at least 0.1 seconds"
        ));
    }
    let heartbeat = Duration::from_secs_f64(heartbeat);
    let open_file_limit = if sim_nodes > 0 {
        fleet::make_room_for(sim_nodes, args.connections + 256)?
    } else {
        None
    };
    let pack = args.pack || matches!(scenario, Scenario::Fill(_));
    let mut spawned = None;
    let (url, credentials) = match &args.engine {
        Some(u) => (u.clone(), external_credentials(&args, u)?),
        None => {
            // The child inherits the open-file limit raised above; berth-engine also raises
            // its own soft limit to the hard one at start.
            let p = engine_proc::EngineProcess::spawn(
                args.engine_bin.as_deref(),
                pack,
                args.security,
                args.engine_data_dir.as_deref(),
                args.engine_threads.unwrap_or_else(|| {
                    // A TLS engine is called through tonic's client (sched::connect).
                    let client = match args.security {
                        Security::Tls => ClientKind::Tonic,
                        _ => args.client,
                    };
                    default_engine_threads(client, matches!(scenario, Scenario::Lifecycle(_)))
                }),
            )
            .await?;
            let u = p.url.clone();
            let c = p.credentials.clone();
            spawned = Some(p);
            (u, c)
        }
    };
    let bearer = Bearer(
        credentials
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| "token: characters a header cannot carry".to_string())?,
    );
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("engine URL {url:?}: {e}"))?
            .tcp_nodelay(true);
        if let Some(ca) = &credentials.ca_cert {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .map_err(|e| format!("TLS settings for {url}: {e}"))?;
        }
        let ch = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach the engine at {url}: {e}"))?;
        channels.push(InterceptedService::new(ch, bearer.clone()));
    }
    let scheds = sched::connect(args.client, &url, credentials.token.as_deref(), &channels).await?;
    let setup_start = Instant::now();
    let run_id = format!("{:08x}", fastrand::u32(..));
    create_flavors(&channels[0]).await?;
    if !scenario.simulated() {
        create_providers(&channels, scenario.hosts(), args.seed, &run_id).await?;
    }
    let fleet = fleet::Fleet::new(&url, credentials, heartbeat, &run_id, args.seed);
    let mut nodes = None;
    if sim_nodes > 0 {
        let started = Instant::now();
        fleet
            .start_range(0, sim_nodes, args.ramp.max(1), !args.progress())
            .await;
        // Generous: registrations are serialised in the engine, and this machine runs both.
        let timeout = Duration::from_secs(60 + sim_nodes as u64 / 100);
        let waited = fleet.wait_up(&channels[0], timeout, !args.progress()).await;
        if let Err(e) = waited {
            fleet.shutdown().await;
            return Err(e);
        }
        nodes = Some(report::NodeStats {
            simulated: sim_nodes,
            heartbeat_seconds: heartbeat.as_secs_f64(),
            down_after_seconds: 3.0 * heartbeat.as_secs_f64(),
            registration_seconds: started.elapsed().as_secs_f64(),
            open_file_limit,
            agent_failures: 0,
        });
    }
    let scope = if scenario.simulated() {
        fleet.scope()
    } else {
        Scope::Aggregate(format!("load-{run_id}"))
    };
    let setup = setup_start.elapsed();
    let cpu_before = spawned.as_ref().map(|p| p.cpu_seconds()).unwrap_or(0.0);
    let harness_before = engine_proc::cpu_seconds("self");
    let result = match scenario {
        Scenario::Flat(_) => run_flat(&scheds, &args, &run_id, &scope).await,
        Scenario::Fill(_) => run_fill(&scheds, &args, &run_id, &scope).await,
        Scenario::Groups(_) => groups::run(&channels, &scheds, &args, &run_id).await,
        Scenario::Lifecycle(_) => lifecycle::run(&channels, &args, &run_id, &fleet).await,
        Scenario::Churn(n) => churn::run(&channels, &scheds, &args, &run_id, &fleet, n).await,
        Scenario::Heartbeat(_) => {
            heartbeat::run(&channels[0], &args, &fleet, spawned.as_ref()).await
        }
    };
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            fleet.shutdown().await;
            return Err(e);
        }
    };
    let cpu_after = spawned.as_ref().map(|p| p.cpu_seconds());
    let harness_cpu = engine_proc::cpu_seconds("self") - harness_before;
    report.scenario = args.scenario.clone();
    report.hosts = if scenario.simulated() {
        sim_nodes
    } else {
        scenario.hosts()
    };
    report.clients = if matches!(scenario, Scenario::Heartbeat(_)) {
        0
    } else {
        args.clients
    };
    report.setup_seconds = setup.as_secs_f64();
    report.expected_errors = scenario.expected_errors();
    let audited = async {
        report.audit = audit(&channels[0], &run_id, &scope).await?;
        if !matches!(scenario, Scenario::Fill(_)) {
            // Packing efficiency means something only once the cloud is full.
            report.audit.binding = None;
        }
        match scenario {
            Scenario::Groups(_) => {
                report.audit.group_violations = Some(groups::audit(&channels[0], &run_id).await?);
            }
            Scenario::Lifecycle(_) => {
                lifecycle::audit(&channels, &run_id, &fleet, &scope, &mut report).await?;
            }
            _ => {}
        }
        Ok::<(), String>(())
    };
    let audited = audited.await;
    fleet.shutdown().await;
    audited?;
    if let Some(mut n) = nodes {
        n.agent_failures = fleet.failures();
        report.nodes = Some(n);
    }
    if let (Some(after), None) = (cpu_after, &report.heartbeat) {
        report.engine_cpu_seconds = Some(after - cpu_before);
    }
    if report.heartbeat.is_none() {
        report.harness_cpu_seconds = Some(harness_cpu);
    }
    report.engine_peak_rss_mb = spawned.as_ref().and_then(|p| p.peak_rss_mb());
    report.print(args.json);
    drop(spawned);
    Ok(report)
}

/// Creates the flavors every scenario uses (idempotently: `--engine` may be shared).
/// The token and CA for an `--engine` given on the command line: `--token`, or the admin
/// token of a local engine's data directory; `--ca-cert` for https.
fn external_credentials(args: &Args, url: &str) -> Result<berth_node::agent::Credentials, String> {
    let local = url
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    let token = match &args.token {
        Some(t) => Some(t.trim().to_string()),
        None if local => std::fs::read_to_string(args.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string()),
        None => None,
    };
    let ca_cert = match (&args.ca_cert, url.starts_with("https://")) {
        (Some(p), true) => {
            Some(std::fs::read(p).map_err(|e| format!("--ca-cert {}: {e}", p.display()))?)
        }
        (None, true) => return Err(format!("--engine {url}: https needs --ca-cert")),
        (Some(_), false) => return Err("--ca-cert is for an https:// --engine".into()),
        (None, false) => None,
    };
    Ok(berth_node::agent::Credentials {
        token,
        ca_cert,
        identity: None,
    })
}

async fn create_flavors(channel: &Conn) -> Result<(), String> {
    let mut catalog = CatalogClient::new(channel.clone());
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
    Ok(())
}

/// Creates `hosts` providers (mixed sizes, 4 AZs) in aggregate `load-<run>`, concurrently.
async fn create_providers(
    channels: &[Conn],
    hosts: usize,
    seed: u64,
    run_id: &str,
) -> Result<(), String> {
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
                let req = provider_request(seed, i, &run_id);
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

/// A one-instance request for `flavor` in project `load-<run>`, restricted to `scope`.
pub(crate) fn spec_in(flavor: &str, run_id: &str, scope: &Scope) -> pb::RequestSpec {
    let mut spec = pb::RequestSpec {
        flavor: Some(flavor.to_string()),
        project_id: format!("load-{run_id}"),
        user_id: "berth-load".into(),
        num_instances: 1,
        ..Default::default()
    };
    scope.restrict(&mut spec);
    spec
}

/// A one-instance request for `flavor` on this run's API-created providers.
pub(crate) fn spec(flavor: &str, run_id: &str) -> pb::RequestSpec {
    spec_in(flavor, run_id, &Scope::Aggregate(format!("load-{run_id}")))
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

    /// Counts a failure that is not a gRPC error (e.g. "CreateServer vm_state=ERROR").
    pub(crate) fn count(&self, key: &str) {
        *self.errors.lock().entry(key.to_string()).or_default() += 1;
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

async fn run_flat(
    scheds: &[Sched],
    args: &Args,
    run_id: &str,
    scope: &Scope,
) -> Result<Report, String> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = args.deadline(10.0);
    let limit = args.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut sched = scheds[c % scheds.len()].clone();
        let tally = tally.clone();
        let stop = stop.clone();
        let run_id = run_id.to_string();
        let scope = scope.clone();
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut sel_h = report::histogram();
            let mut rel_h = report::histogram();
            while !stop.load(Ordering::Relaxed) {
                let flavor = FLAVORS[rng.usize(..FLAVORS.len())].0;
                let t = Instant::now();
                let r = sched.select(spec_in(flavor, &run_id, &scope)).await;
                report::record(&mut sel_h, t.elapsed());
                match r {
                    Ok(resp) => {
                        let n = tally.claims.fetch_add(1, Ordering::Relaxed) + 1;
                        for s in resp.selections {
                            release_timed(&mut sched, s.consumer_uuid, &mut rel_h, &tally).await;
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
    let progress = report::Progress::start(
        tally_claims(&tally),
        args.duration_or(10.0) > 3.0 && args.progress(),
    );
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

async fn run_fill(
    scheds: &[Sched],
    args: &Args,
    run_id: &str,
    scope: &Scope,
) -> Result<Report, String> {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut sched = scheds[c % scheds.len()].clone();
        let tally = tally.clone();
        let run_id = run_id.to_string();
        let scope = scope.clone();
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut sel_h = report::histogram();
            // Each client stops after its first rejection for every flavor, smallest last.
            let mut exhausted = [false; FLAVORS.len()];
            while !exhausted.iter().all(|e| *e) {
                let open: Vec<usize> = (0..FLAVORS.len()).filter(|i| !exhausted[*i]).collect();
                let f = open[rng.usize(..open.len())];
                let t = Instant::now();
                let r = sched.select(spec_in(FLAVORS[f].0, &run_id, &scope)).await;
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
    let progress = report::Progress::start(tally_claims(&tally), args.progress());
    let mut sel = report::histogram();
    for t in tasks {
        sel.add(&t.await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    progress.stop();
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(elapsed, vec![report::summary("SelectDestinations", &sel)]))
}

/// Recomputes usage from every allocation of this run (the project's totals) and compares
/// it with what the engine reports per provider of `scope`; counts over-commits.
async fn audit(channel: &Conn, run_id: &str, scope: &Scope) -> Result<report::Audit, String> {
    let mut placement = PlacementClient::new(channel.clone());
    let mut audit = report::Audit::default();
    let mut per_class: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let providers = list_providers(channel, scope)
        .await
        .map_err(|e| format!("audit: {e}"))?;
    let mut binding = report::Binding {
        min: f64::INFINITY,
        ..Default::default()
    };
    let mut placed = false;
    for p in &providers {
        audit.providers += 1;
        let mut fullest: Option<(f64, &str)> = None;
        for u in &p.usages {
            if u.used > u.capacity {
                audit.overcommits += 1;
            }
            placed |= u.used > 0;
            if u.capacity > 0 {
                let f = u.used as f64 / u.capacity as f64;
                if fullest.is_none_or(|(g, _)| f > g) {
                    fullest = Some((f, &u.resource_class));
                }
            }
            let e = per_class.entry(u.resource_class.clone()).or_default();
            e.0 += u.used;
            e.1 += u.capacity;
        }
        if let Some((f, class)) = fullest {
            binding.mean += f;
            binding.min = binding.min.min(f);
            *binding.hosts_by_class.entry(class.to_string()).or_default() += 1;
        }
    }
    let counted: u64 = binding.hosts_by_class.values().sum();
    if placed && counted > 0 {
        binding.mean /= counted as f64;
        audit.binding = Some(binding);
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

/// Releases `consumer`, recording the call's latency in `hist` and its outcome in `tally`.
pub(crate) async fn release_timed(
    sched: &mut Sched,
    consumer: String,
    hist: &mut hdrhistogram::Histogram<u64>,
    tally: &Tally,
) {
    let t = Instant::now();
    let r = sched.release(consumer).await;
    report::record(hist, t.elapsed());
    match r {
        Ok(_) => {
            tally.releases.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tally.record_error("Release", &e),
    }
}
