//! `berth-node` settings: flags, `BERTH_NODE_*` environment variables and a TOML file.
//!
//! Precedence, highest first: flag, environment variable, `--config` file, built-in default.
//! The file's keys are the flags' names with `_` for `-` (`--reserved-ram-mb` is
//! `reserved_ram_mb`; `--trait` is the list `traits`); `compute-node/berth-node.toml` lists
//! every key with its default. Unknown keys are refused, so a typo does not go unnoticed.
//!
//! Durations are seconds and may be fractional (`--heartbeat-interval 0.2` is 200 ms, which
//! tests use); they are rounded to whole milliseconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::agent::Credentials;
use crate::error::NodeError;
use crate::inventory::ResourcePolicy;
use crate::libvirt::DEFAULT_URI;
use crate::testnode::TestNode;

/// Where instance disks live when `instances_dir` is not set (Nova's is
/// `/var/lib/nova/instances`).
pub const DEFAULT_INSTANCES_DIR: &str = "/var/lib/berth/instances";

/// Test-node size used for any `--test-node-*` size not given.
pub const DEFAULT_TEST_NODE: (u32, u64, u64) = (8, 16 * 1024, 100);

/// The engine endpoint when none is configured: an engine on this machine, on its default
/// gRPC port.
pub const DEFAULT_ENGINE: &str = "http://127.0.0.1:50051";

/// Seconds between heartbeats when not configured (Nova's `report_interval`).
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: f64 = 10.0;

/// Shortest heartbeat interval, in seconds: the Nodes protocol asks for at least 100 ms.
pub const MIN_HEARTBEAT_INTERVAL_SECS: f64 = 0.1;

/// First reconnect delay, in seconds, when not configured (it doubles per failed attempt).
pub const DEFAULT_RECONNECT_BACKOFF_SECS: f64 = 0.2;

/// Longest reconnect delay, in seconds, when not configured.
pub const DEFAULT_RECONNECT_BACKOFF_MAX_SECS: f64 = 10.0;

/// Longest duration any duration setting accepts, in seconds (an hour: anything longer is a
/// typo, and heartbeat intervals travel as 32-bit milliseconds).
const MAX_DURATION_SECS: f64 = 3600.0;

/// Which driver runs the instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// libvirt, at `libvirt_uri` or on a simulated test node.
    #[default]
    Libvirt,
    /// The in-memory fake driver (`FakeHypervisor`), sized like a test node: for the load
    /// harness and quick local runs. Nothing really runs.
    Fake,
}

impl HypervisorKind {
    /// Lower-case name, as in the flag and the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Libvirt => "libvirt",
            Self::Fake => "fake",
        }
    }
}

/// Berth compute node: reports this host's capacity to the engine and runs its instances
/// through libvirt.
///
/// Without --once it connects to the engine (--engine), registers, heartbeats and runs the
/// engine's actions until SIGINT or SIGTERM, reconnecting with backoff when the connection
/// breaks.
///
/// Example: berth-node --once --test-node-vcpus 32 --test-node-memory-mb 131072 --az az1
#[derive(Debug, Parser)]
#[command(name = "berth-node", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML; keys are the flag names with `_`, see berth-node.toml).
    #[arg(long, env = "BERTH_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the inventory that Register would send and the domains the hypervisor has, then
    /// exit without contacting the engine.
    #[arg(long)]
    pub once: bool,
    /// Every setting; unset ones fall back to the file, then the defaults.
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting, each optional so that sources can be layered. The same struct is read from
/// flags (clap) and from the TOML file (serde).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Engine gRPC endpoint the node dials, e.g. http://10.0.0.1:50051
    /// [default: http://127.0.0.1:50051].
    #[arg(long, env = "BERTH_NODE_ENGINE")]
    pub engine: Option<String>,
    /// Driver that runs the instances: libvirt, or fake (in memory, sized by --test-node-*;
    /// nothing really runs) [default: libvirt].
    #[arg(long, env = "BERTH_NODE_HYPERVISOR", value_enum)]
    pub hypervisor: Option<HypervisorKind>,
    /// Resource-provider name [default: this host's name].
    #[arg(long, env = "BERTH_NODE_NAME")]
    pub name: Option<String>,
    /// libvirt connection URI [default: test:///default].
    #[arg(long, env = "BERTH_NODE_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// Availability zone [default: the engine's default zone].
    #[arg(long, env = "BERTH_NODE_AZ")]
    pub az: Option<String>,
    /// A trait of this host, e.g. CUSTOM_SSD (repeatable; env: comma-separated).
    #[arg(long = "trait", env = "BERTH_NODE_TRAITS", value_delimiter = ',')]
    pub traits: Option<Vec<String>>,
    /// Memory kept for the host, MiB [default: 512].
    #[arg(long, env = "BERTH_NODE_RESERVED_RAM_MB")]
    pub reserved_ram_mb: Option<u64>,
    /// vCPUs kept for the host [default: 0].
    #[arg(long, env = "BERTH_NODE_RESERVED_VCPUS")]
    pub reserved_vcpus: Option<u64>,
    /// Disk kept for the host, GiB [default: 0].
    #[arg(long, env = "BERTH_NODE_RESERVED_DISK_GB")]
    pub reserved_disk_gb: Option<u64>,
    /// VCPU allocation ratio [default: 4.0].
    #[arg(long, env = "BERTH_NODE_CPU_RATIO")]
    pub cpu_ratio: Option<f64>,
    /// MEMORY_MB allocation ratio [default: 1.0].
    #[arg(long, env = "BERTH_NODE_RAM_RATIO")]
    pub ram_ratio: Option<f64>,
    /// DISK_GB allocation ratio [default: 1.0].
    #[arg(long, env = "BERTH_NODE_DISK_RATIO")]
    pub disk_ratio: Option<f64>,
    /// Seconds between heartbeats; fractions allowed, at least 0.1 (e.g. 0.2 for tests)
    /// [default: 10].
    #[arg(long, env = "BERTH_NODE_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// Seconds before the first reconnect attempt after the engine connection fails; each
    /// further failure doubles it, up to --reconnect-backoff-max, and every delay is drawn at
    /// random below that bound (full jitter) [default: 0.2].
    #[arg(long, env = "BERTH_NODE_RECONNECT_BACKOFF")]
    pub reconnect_backoff: Option<f64>,
    /// Longest wait between reconnect attempts, seconds; a cap below the default first delay
    /// lowers that delay to the cap [default: 10].
    #[arg(long, env = "BERTH_NODE_RECONNECT_BACKOFF_MAX")]
    pub reconnect_backoff_max: Option<f64>,
    /// Seconds `stop` waits for a clean guest shutdown before powering off [default: 60].
    #[arg(long, env = "BERTH_NODE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Simulate a host of this many CPUs with libvirt's test driver (writes a node file and
    /// connects to it; conflicts with --libvirt-uri) [default when another --test-node-* is
    /// given: 8].
    #[arg(long, env = "BERTH_NODE_TEST_NODE_VCPUS")]
    pub test_node_vcpus: Option<u32>,
    /// Simulated host memory, MiB [default when simulating: 16384].
    #[arg(long, env = "BERTH_NODE_TEST_NODE_MEMORY_MB")]
    pub test_node_memory_mb: Option<u64>,
    /// Simulated host disk, GiB [default when simulating: 100].
    #[arg(long, env = "BERTH_NODE_TEST_NODE_DISK_GB")]
    pub test_node_disk_gb: Option<u64>,
    /// Where to write the simulated node's file [default: $TMPDIR/berth-node-NAME.xml].
    #[arg(long, env = "BERTH_NODE_TEST_NODE_FILE")]
    pub test_node_file: Option<PathBuf>,
    /// Directory of instance disks; DISK_GB is its filesystem's size unless --disk-gb is set
    /// [default: /var/lib/berth/instances, or its nearest existing parent].
    #[arg(long, env = "BERTH_NODE_INSTANCES_DIR")]
    pub instances_dir: Option<PathBuf>,
    /// Instance disk in GiB, overriding the filesystem size.
    #[arg(long, env = "BERTH_NODE_DISK_GB")]
    pub disk_gb: Option<u64>,
    /// Log filter, as RUST_LOG: "info", "berth_node=debug" [default: info].
    #[arg(long, env = "BERTH_NODE_LOG")]
    pub log: Option<String>,
    /// Testing: fail the next N spawns with a driver error (DRIVER), then spawn normally
    /// [default: 0].
    #[arg(long, env = "BERTH_NODE_FAIL_SPAWNS")]
    pub fail_spawns: Option<u32>,
    /// Bearer token for the engine: a node token for this node's name
    /// (berth-engine token issue --role node --subject NAME). Prefer --token-file or the
    /// environment: a flag shows in `ps`.
    #[arg(long, env = "BERTH_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (its first line).
    #[arg(long, env = "BERTH_NODE_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the engine's certificate; needed for an https://
    /// engine (berth-engine cert init writes ca.pem).
    #[arg(long, env = "BERTH_NODE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// This node's client certificate (PEM), for an engine that requires node certificates;
    /// its common name must be the node's --name.
    #[arg(long, env = "BERTH_NODE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "BERTH_NODE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Testing: hold every action this many milliseconds before the driver runs it (a
    /// window in which a test can kill the node with the action not yet done) [default: 0].
    #[arg(long, env = "BERTH_NODE_ACTION_DELAY_MS")]
    pub action_delay_ms: Option<u64>,
    /// Testing: hold every action's result this many milliseconds after the driver ran it,
    /// before it is answered (a window in which a test can kill the node with the action
    /// done but unanswered) [default: 0].
    #[arg(long, env = "BERTH_NODE_RESULT_DELAY_MS")]
    pub result_delay_ms: Option<u64>,
    /// Testing: keep the domains in this file so that they outlive the berth-node process,
    /// as a real host's domains outlive the agent under libvirtd (libvirt's test driver and
    /// the fake driver forget them when the process ends). Restored at start-up; the file
    /// also counts every driver call per action and instance.
    #[arg(long, env = "BERTH_NODE_TEST_DOMAINS_FILE")]
    pub test_domains_file: Option<PathBuf>,
}

impl Settings {
    /// Reads settings from a TOML document.
    ///
    /// # Errors
    /// `Config` for malformed TOML, wrong types or unknown keys.
    pub fn from_toml(text: &str) -> Result<Self, NodeError> {
        toml::from_str(text).map_err(|e| NodeError::Config(e.to_string()))
    }

    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// `Io` when unreadable, `Config` as [`from_toml`](Self::from_toml).
    pub fn from_file(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
    }

    /// Each setting from `self` if set, else from `lower`.
    #[must_use]
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            engine: self.engine.or(lower.engine),
            hypervisor: self.hypervisor.or(lower.hypervisor),
            name: self.name.or(lower.name),
            libvirt_uri: self.libvirt_uri.or(lower.libvirt_uri),
            az: self.az.or(lower.az),
            traits: self.traits.or(lower.traits),
            reserved_ram_mb: self.reserved_ram_mb.or(lower.reserved_ram_mb),
            reserved_vcpus: self.reserved_vcpus.or(lower.reserved_vcpus),
            reserved_disk_gb: self.reserved_disk_gb.or(lower.reserved_disk_gb),
            cpu_ratio: self.cpu_ratio.or(lower.cpu_ratio),
            ram_ratio: self.ram_ratio.or(lower.ram_ratio),
            disk_ratio: self.disk_ratio.or(lower.disk_ratio),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            reconnect_backoff: self.reconnect_backoff.or(lower.reconnect_backoff),
            reconnect_backoff_max: self.reconnect_backoff_max.or(lower.reconnect_backoff_max),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            test_node_vcpus: self.test_node_vcpus.or(lower.test_node_vcpus),
            test_node_memory_mb: self.test_node_memory_mb.or(lower.test_node_memory_mb),
            test_node_disk_gb: self.test_node_disk_gb.or(lower.test_node_disk_gb),
            test_node_file: self.test_node_file.or(lower.test_node_file),
            instances_dir: self.instances_dir.or(lower.instances_dir),
            disk_gb: self.disk_gb.or(lower.disk_gb),
            log: self.log.or(lower.log),
            fail_spawns: self.fail_spawns.or(lower.fail_spawns),
            token: self.token.or(lower.token),
            token_file: self.token_file.or(lower.token_file),
            ca_cert: self.ca_cert.or(lower.ca_cert),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            action_delay_ms: self.action_delay_ms.or(lower.action_delay_ms),
            result_delay_ms: self.result_delay_ms.or(lower.result_delay_ms),
            test_domains_file: self.test_domains_file.or(lower.test_domains_file),
        }
    }
}

/// A simulated host for libvirt's test driver.
#[derive(Debug, Clone, PartialEq)]
pub struct TestNodeConfig {
    /// CPUs, memory and arch written to the node file.
    pub node: TestNode,
    /// Disk reported for it, GiB.
    pub disk_gb: u64,
    /// Where the node file goes.
    pub file: PathBuf,
}

/// Where DISK_GB's total comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskSource {
    /// A fixed size in GiB (`--disk-gb`, or the simulated node's).
    Fixed(u64),
    /// The size of the filesystem holding this directory.
    Filesystem(PathBuf),
}

/// The resolved, validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Engine endpoint (an `http://` or `https://` URL).
    pub engine: String,
    /// Driver that runs the instances.
    pub hypervisor: HypervisorKind,
    /// Resource-provider name.
    pub name: String,
    /// libvirt URI (the node file's URI is computed at startup when simulating).
    pub libvirt_uri: String,
    /// Availability zone, if configured.
    pub availability_zone: Option<String>,
    /// Traits, without duplicates, in the order given.
    pub traits: Vec<String>,
    /// Reserved amounts and allocation ratios.
    pub resources: ResourcePolicy,
    /// Time between heartbeats (at least 100 ms, whole milliseconds).
    pub heartbeat_interval: Duration,
    /// First reconnect delay bound; doubles per failed attempt.
    pub reconnect_backoff: Duration,
    /// Cap of the reconnect delay bound.
    pub reconnect_backoff_max: Duration,
    /// Clean-shutdown wait before a hard power-off.
    pub shutdown_timeout: Duration,
    /// The simulated host: for libvirt, when any `test_node_*` setting is given; for the fake
    /// driver, always (its size, with defaults for what is not given).
    pub test_node: Option<TestNodeConfig>,
    /// Where DISK_GB comes from.
    pub disk: DiskSource,
    /// Log filter.
    pub log: String,
    /// Testing: how many spawns fail with a driver error before spawns work (0: none).
    pub fail_spawns: u32,
    /// Token and TLS material, read from their files.
    pub credentials: Credentials,
    /// Testing: how long each action waits before the driver runs it (zero: none).
    pub action_delay: Duration,
    /// Testing: how long each action's result waits after the driver ran it (zero: none).
    pub result_delay: Duration,
    /// Testing: the file that keeps the domains across restarts (see
    /// [`crate::durable`]).
    pub test_domains_file: Option<PathBuf>,
}

impl NodeConfig {
    /// Flags and environment over the `--config` file over defaults.
    ///
    /// # Errors
    /// `Io`/`Config` for an unreadable or malformed file or an invalid setting.
    pub fn load(cli: &Cli) -> Result<Self, NodeError> {
        let file = match &cli.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Self::resolve(cli.settings.clone().or(file), local_hostname)
    }

    /// Applies defaults to `s` and validates it. `hostname` supplies the default name (a
    /// function so tests need not depend on the machine's name).
    ///
    /// # Errors
    /// `Config` naming the first invalid setting.
    pub fn resolve(s: Settings, hostname: impl FnOnce() -> String) -> Result<Self, NodeError> {
        let name = s.name.unwrap_or_else(hostname);
        check_label("name", &name)?;
        if let Some(az) = &s.az {
            check_label("az", az)?;
        }
        let engine = s.engine.unwrap_or_else(|| DEFAULT_ENGINE.into());
        if !(engine.starts_with("http://") || engine.starts_with("https://")) {
            return Err(config(format!(
                "engine {engine:?} must be an http:// or https:// URL"
            )));
        }
        let hypervisor = s.hypervisor.unwrap_or_default();
        let mut traits: Vec<String> = Vec::new();
        for t in s.traits.unwrap_or_default() {
            let t = t.trim().to_string();
            let valid = !t.is_empty()
                && t.len() <= 255
                && t.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(config(format!(
                    "trait {t:?}: use upper-case letters, digits and '_' (e.g. CUSTOM_SSD)"
                )));
            }
            if !traits.contains(&t) {
                traits.push(t);
            }
        }
        let defaults = ResourcePolicy::default();
        let resources = ResourcePolicy {
            reserved_vcpus: s.reserved_vcpus.unwrap_or(defaults.reserved_vcpus),
            reserved_ram_mb: s.reserved_ram_mb.unwrap_or(defaults.reserved_ram_mb),
            reserved_disk_gb: s.reserved_disk_gb.unwrap_or(defaults.reserved_disk_gb),
            cpu_ratio: s.cpu_ratio.unwrap_or(defaults.cpu_ratio),
            ram_ratio: s.ram_ratio.unwrap_or(defaults.ram_ratio),
            disk_ratio: s.disk_ratio.unwrap_or(defaults.disk_ratio),
        };
        for (key, ratio) in [
            ("cpu_ratio", resources.cpu_ratio),
            ("ram_ratio", resources.ram_ratio),
            ("disk_ratio", resources.disk_ratio),
        ] {
            if !(ratio.is_finite() && ratio > 0.0) {
                return Err(config(format!(
                    "{key} must be finite and greater than 0, not {ratio}"
                )));
            }
        }
        let heartbeat_interval = seconds(
            "heartbeat_interval",
            s.heartbeat_interval
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_SECS),
            MIN_HEARTBEAT_INTERVAL_SECS,
        )?;
        let mut reconnect_backoff = seconds(
            "reconnect_backoff",
            s.reconnect_backoff
                .unwrap_or(DEFAULT_RECONNECT_BACKOFF_SECS),
            0.001,
        )?;
        let reconnect_backoff_max = seconds(
            "reconnect_backoff_max",
            s.reconnect_backoff_max
                .unwrap_or(DEFAULT_RECONNECT_BACKOFF_MAX_SECS),
            0.001,
        )?;
        if reconnect_backoff_max < reconnect_backoff {
            if s.reconnect_backoff.is_some() {
                return Err(config(format!(
                    "reconnect_backoff_max ({} s) is below reconnect_backoff ({} s)",
                    reconnect_backoff_max.as_secs_f64(),
                    reconnect_backoff.as_secs_f64()
                )));
            }
            // Only the cap was given, below the default start: start at the cap.
            reconnect_backoff = reconnect_backoff_max;
        }
        let fake = hypervisor == HypervisorKind::Fake;
        if fake && s.libvirt_uri.is_some() {
            return Err(config(
                "libvirt_uri and hypervisor = \"fake\" both given: the fake driver uses no libvirt",
            ));
        }
        let simulating = fake
            || s.test_node_vcpus.is_some()
            || s.test_node_memory_mb.is_some()
            || s.test_node_disk_gb.is_some()
            || s.test_node_file.is_some();
        if simulating && s.libvirt_uri.is_some() {
            return Err(config(
                "libvirt_uri and test_node_* both given: a simulated node brings its own URI",
            ));
        }
        let test_node = simulating.then(|| {
            let (vcpus, memory_mb, disk_gb) = DEFAULT_TEST_NODE;
            TestNodeConfig {
                node: TestNode::new(
                    s.test_node_vcpus.unwrap_or(vcpus),
                    s.test_node_memory_mb.unwrap_or(memory_mb),
                ),
                disk_gb: s.test_node_disk_gb.unwrap_or(disk_gb),
                file: s.test_node_file.clone().unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("berth-node-{}.xml", file_safe(&name)))
                }),
            }
        });
        if let Some(t) = &test_node {
            t.node
                .to_xml()
                .map_err(|e| config(format!("test node: {e}")))?;
        }
        if s.test_domains_file.is_some()
            && s.libvirt_uri
                .as_deref()
                .is_some_and(|u| !u.starts_with("test:"))
        {
            return Err(config(
                "test_domains_file is for simulated hosts (libvirt's test driver or the fake \
                 driver): a real hypervisor keeps its domains itself",
            ));
        }
        let disk = match (s.disk_gb, &test_node) {
            (Some(gb), _) => DiskSource::Fixed(gb),
            (None, Some(t)) => DiskSource::Fixed(t.disk_gb),
            (None, None) => DiskSource::Filesystem(
                s.instances_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTANCES_DIR)),
            ),
        };
        Ok(Self {
            engine,
            hypervisor,
            name,
            libvirt_uri: s.libvirt_uri.unwrap_or_else(|| DEFAULT_URI.into()),
            availability_zone: s.az,
            traits,
            resources,
            heartbeat_interval,
            reconnect_backoff,
            reconnect_backoff_max,
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout.unwrap_or(60)),
            test_node,
            disk,
            log: s.log.unwrap_or_else(|| "info".into()),
            fail_spawns: s.fail_spawns.unwrap_or(0),
            credentials: credentials(&s.token, &s.token_file, &s.ca_cert, &s.tls_cert, &s.tls_key)?,
            action_delay: test_delay("action_delay_ms", s.action_delay_ms)?,
            result_delay: test_delay("result_delay_ms", s.result_delay_ms)?,
            test_domains_file: s.test_domains_file,
        })
    }
}

/// Reads the token and TLS files; errors name the setting and the file.
fn credentials(
    token: &Option<String>,
    token_file: &Option<PathBuf>,
    ca_cert: &Option<PathBuf>,
    tls_cert: &Option<PathBuf>,
    tls_key: &Option<PathBuf>,
) -> Result<Credentials, NodeError> {
    let read = |key: &str, p: &Path| {
        std::fs::read(p).map_err(|e| config(format!("{key} {}: {e}", p.display())))
    };
    let token = match (token, token_file) {
        (Some(_), Some(_)) => return Err(config("token and token_file both given: use one")),
        (Some(t), None) => Some(t.trim().to_string()),
        (None, Some(p)) => {
            let text = String::from_utf8(read("token_file", p)?)
                .map_err(|_| config(format!("token_file {}: not text", p.display())))?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(config("token: empty"));
    }
    let identity = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((read("tls_cert", c)?, read("tls_key", k)?)),
        (None, None) => None,
        _ => return Err(config("tls_cert and tls_key go together: give both")),
    };
    Ok(Credentials {
        token,
        ca_cert: ca_cert.as_deref().map(|p| read("ca_cert", p)).transpose()?,
        identity,
    })
}

fn config(msg: impl Into<String>) -> NodeError {
    NodeError::Config(msg.into())
}

/// A duration setting given in (possibly fractional) seconds, rounded to whole milliseconds,
/// at least `min` and at most an hour.
fn seconds(key: &str, value: f64, min: f64) -> Result<Duration, NodeError> {
    if !(value.is_finite() && (min..=MAX_DURATION_SECS).contains(&value)) {
        return Err(config(format!(
            "{key} must be between {min} and {MAX_DURATION_SECS} seconds, not {value}"
        )));
    }
    // In range, so the product is far below 2^53 and the cast is exact.
    Ok(Duration::from_millis((value * 1000.0).round() as u64))
}

/// A testing delay in milliseconds (absent: none), at most an hour.
fn test_delay(key: &str, ms: Option<u64>) -> Result<Duration, NodeError> {
    let ms = ms.unwrap_or(0);
    // MAX_DURATION_SECS is a whole number of seconds; the cast is exact.
    let max_ms = MAX_DURATION_SECS as u64 * 1000;
    if ms > max_ms {
        return Err(config(format!(
            "{key} must be at most {max_ms} milliseconds, not {ms}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn check_label(key: &str, value: &str) -> Result<(), NodeError> {
    if value.is_empty() || value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Err(config(format!(
            "{key} {value:?}: 1 to 255 characters, no control characters"
        )));
    }
    Ok(())
}

/// `name` with everything but ASCII letters, digits, `-`, `_` and `.` replaced by `_`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This machine's host name (`uname -n`), or `localhost` if it has none.
pub fn local_hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(s: Settings) -> Result<NodeConfig, NodeError> {
        NodeConfig::resolve(s, || "host-a".into())
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("berth-node").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = resolve(Settings::default()).unwrap();
        assert_eq!(c.name, "host-a");
        assert_eq!(c.libvirt_uri, "test:///default");
        assert_eq!(c.resources, ResourcePolicy::default());
        assert_eq!(c.resources.reserved_ram_mb, 512);
        assert_eq!(c.resources.cpu_ratio, 4.0);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.disk, DiskSource::Filesystem(DEFAULT_INSTANCES_DIR.into()));
        assert!(c.test_node.is_none() && c.traits.is_empty());
        assert_eq!(c.engine, DEFAULT_ENGINE);
        assert_eq!(c.engine, "http://127.0.0.1:50051");
        assert_eq!(c.hypervisor, HypervisorKind::Libvirt);
        assert_eq!(c.reconnect_backoff, Duration::from_millis(200));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(10));
        assert_eq!(c.fail_spawns, 0);
        assert_eq!(
            (c.action_delay, c.result_delay),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(c.test_domains_file, None);
    }

    #[test]
    fn shipped_example_file_parses_and_states_the_defaults() {
        let example = include_str!("../berth-node.toml");
        let from_file = resolve(Settings::from_toml(example).unwrap()).unwrap();
        let mut defaults = resolve(Settings::default()).unwrap();
        // The example names its instances directory explicitly; everything else is default.
        defaults.disk = from_file.disk.clone();
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn flags_parse_into_settings() {
        let cli = parse(&[
            "--engine",
            "http://10.0.0.1:50051",
            "--name",
            "n1",
            "--az",
            "az1",
            "--trait",
            "CUSTOM_SSD",
            "--trait",
            "HW_CPU_X86_AVX2",
            "--reserved-ram-mb",
            "1024",
            "--reserved-vcpus",
            "2",
            "--reserved-disk-gb",
            "5",
            "--cpu-ratio",
            "16",
            "--ram-ratio",
            "1.5",
            "--disk-ratio",
            "2",
            "--heartbeat-interval",
            "3",
            "--once",
        ]);
        assert!(cli.once);
        let c = resolve(cli.settings).unwrap();
        assert_eq!(c.engine, "http://10.0.0.1:50051");
        assert_eq!(c.name, "n1");
        assert_eq!(c.availability_zone.as_deref(), Some("az1"));
        assert_eq!(c.traits, ["CUSTOM_SSD", "HW_CPU_X86_AVX2"]);
        assert_eq!(
            c.resources,
            ResourcePolicy {
                reserved_vcpus: 2,
                reserved_ram_mb: 1024,
                reserved_disk_gb: 5,
                cpu_ratio: 16.0,
                ram_ratio: 1.5,
                disk_ratio: 2.0,
            }
        );
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file = Settings::from_toml(
            "name = \"from-file\"\ncpu_ratio = 8.0\ntraits = [\"CUSTOM_A\"]\nreserved_ram_mb = 0\n",
        )
        .unwrap();
        let flags = parse(&["--cpu-ratio", "2.5", "--trait", "CUSTOM_B"]).settings;
        let c = resolve(flags.or(file)).unwrap();
        assert_eq!(c.name, "from-file");
        assert_eq!(c.resources.cpu_ratio, 2.5);
        assert_eq!(c.resources.reserved_ram_mb, 0);
        assert_eq!(
            c.traits,
            ["CUSTOM_B"],
            "a flag list replaces the file's list"
        );
    }

    #[test]
    fn config_file_is_read_through_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "name = \"filed\"\ndisk_gb = 7\n").unwrap();
        let cli = parse(&["--config", path.to_str().unwrap(), "--az", "z"]);
        let c = NodeConfig::load(&cli).unwrap();
        assert_eq!(
            (c.name.as_str(), c.availability_zone.as_deref()),
            ("filed", Some("z"))
        );
        assert_eq!(c.disk, DiskSource::Fixed(7));
        let missing = parse(&["--config", "/nonexistent/berth-node.toml"]);
        assert!(matches!(
            NodeConfig::load(&missing),
            Err(NodeError::Io { .. })
        ));
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_refused() {
        let err = Settings::from_toml("reserved_ram = 5\n").unwrap_err();
        assert!(err.to_string().contains("reserved_ram"), "{err}");
        assert!(Settings::from_toml("cpu_ratio = \"four\"\n").is_err());
    }

    #[test]
    fn test_node_settings_imply_a_simulated_node_with_defaults() {
        let c = resolve(parse(&["--test-node-vcpus", "64"]).settings).unwrap();
        let t = c.test_node.expect("simulating");
        assert_eq!(t.node.vcpus, 64);
        assert_eq!(t.node.memory_mb, DEFAULT_TEST_NODE.1);
        assert_eq!(t.disk_gb, DEFAULT_TEST_NODE.2);
        assert_eq!(c.disk, DiskSource::Fixed(DEFAULT_TEST_NODE.2));
        assert!(t.file.ends_with("berth-node-host-a.xml"));
        // --disk-gb wins over the simulated disk.
        let c = resolve(parse(&["--test-node-disk-gb", "5", "--disk-gb", "9"]).settings).unwrap();
        assert_eq!(c.disk, DiskSource::Fixed(9));
    }

    #[test]
    fn invalid_settings_are_refused_with_their_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["--cpu-ratio", "0"], "cpu_ratio"),
            (&["--ram-ratio=-1"], "ram_ratio"),
            (&["--disk-ratio", "inf"], "disk_ratio"),
            (&["--heartbeat-interval", "0"], "heartbeat_interval"),
            (&["--heartbeat-interval", "0.05"], "heartbeat_interval"),
            (&["--heartbeat-interval", "NaN"], "heartbeat_interval"),
            (&["--heartbeat-interval", "86400"], "heartbeat_interval"),
            (&["--reconnect-backoff", "0"], "reconnect_backoff"),
            (
                &["--reconnect-backoff", "5", "--reconnect-backoff-max", "1"],
                "reconnect_backoff_max",
            ),
            (
                &["--hypervisor", "fake", "--libvirt-uri", "qemu:///system"],
                "libvirt_uri",
            ),
            (&["--trait", "custom_lower"], "trait"),
            (&["--trait", "CUSTOM SPACE"], "trait"),
            (&["--engine", "10.0.0.1:50051"], "engine"),
            (&["--name", ""], "name"),
            (&["--az", "bad\nzone"], "az"),
            (
                &["--libvirt-uri", "qemu:///system", "--test-node-vcpus", "4"],
                "libvirt_uri",
            ),
            (&["--test-node-vcpus", "0"], "test node"),
        ];
        for (args, key) in cases {
            let err = resolve(parse(args).settings).unwrap_err();
            assert!(err.to_string().contains(key), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations_take_fractional_seconds_and_round_to_milliseconds() {
        let c = resolve(
            parse(&[
                "--heartbeat-interval",
                "0.2",
                "--reconnect-backoff",
                "0.05",
                "--reconnect-backoff-max",
                "1.5",
            ])
            .settings,
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.reconnect_backoff, Duration::from_millis(50));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(1500));
        let c = resolve(parse(&["--reconnect-backoff-max", "0.1"]).settings).unwrap();
        assert_eq!(
            (c.reconnect_backoff, c.reconnect_backoff_max),
            (Duration::from_millis(100), Duration::from_millis(100)),
            "a low cap alone lowers the first delay"
        );
        let c = resolve(parse(&["--heartbeat-interval", "0.1234"]).settings).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(123));
        // The file takes integers and floats alike.
        let file =
            Settings::from_toml("heartbeat_interval = 3\nreconnect_backoff_max = 2.5\n").unwrap();
        let c = resolve(file).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(2500));
    }

    #[test]
    fn agent_keys_layer_like_the_others() {
        let file = Settings::from_toml(
            "engine = \"http://engine:1\"\nhypervisor = \"fake\"\nfail_spawns = 2\n",
        )
        .unwrap();
        let c = resolve(file.clone()).unwrap();
        assert_eq!(c.engine, "http://engine:1");
        assert_eq!(c.hypervisor, HypervisorKind::Fake);
        assert_eq!(c.fail_spawns, 2);
        let flags = parse(&["--hypervisor", "libvirt", "--fail-spawns", "5"]).settings;
        let c = resolve(flags.or(file)).unwrap();
        assert_eq!(c.hypervisor, HypervisorKind::Libvirt);
        assert_eq!(c.fail_spawns, 5);
        assert_eq!(c.engine, "http://engine:1");
        assert!(Settings::from_toml("hypervisor = \"xen\"\n").is_err());
    }

    #[test]
    fn testing_faults_parse_and_are_bounded() {
        let c = resolve(
            parse(&[
                "--action-delay-ms",
                "1500",
                "--result-delay-ms",
                "20",
                "--test-domains-file",
                "/tmp/d.toml",
            ])
            .settings,
        )
        .unwrap();
        assert_eq!(c.action_delay, Duration::from_millis(1500));
        assert_eq!(c.result_delay, Duration::from_millis(20));
        assert_eq!(c.test_domains_file, Some(PathBuf::from("/tmp/d.toml")));
        let file = Settings::from_toml("action_delay_ms = 7\n").unwrap();
        assert_eq!(
            resolve(file).unwrap().action_delay,
            Duration::from_millis(7)
        );
        let err = resolve(parse(&["--result-delay-ms", "3600001"]).settings).unwrap_err();
        assert!(err.to_string().contains("result_delay_ms"), "{err}");
        let real = parse(&[
            "--libvirt-uri",
            "qemu:///system",
            "--test-domains-file",
            "/tmp/d.toml",
        ]);
        let err = resolve(real.settings).unwrap_err();
        assert!(err.to_string().contains("simulated hosts"), "{err}");
    }

    #[test]
    fn the_fake_hypervisor_is_sized_like_a_test_node() {
        let c = resolve(parse(&["--hypervisor", "fake"]).settings).unwrap();
        let t = c.test_node.expect("fake driver has a size");
        assert_eq!(
            (t.node.vcpus, t.node.memory_mb, t.disk_gb),
            DEFAULT_TEST_NODE
        );
        assert_eq!(c.disk, DiskSource::Fixed(DEFAULT_TEST_NODE.2));
        let c = resolve(
            parse(&[
                "--hypervisor",
                "fake",
                "--test-node-vcpus",
                "64",
                "--test-node-disk-gb",
                "7",
            ])
            .settings,
        )
        .unwrap();
        let t = c.test_node.expect("fake driver has a size");
        assert_eq!((t.node.vcpus, t.disk_gb), (64, 7));
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.len() > 10, "--{id} has no help text");
        }
    }

    #[test]
    fn duplicate_traits_are_dropped_and_names_made_file_safe() {
        let c = resolve(parse(&["--trait", "CUSTOM_A", "--trait", "CUSTOM_A"]).settings).unwrap();
        assert_eq!(c.traits, ["CUSTOM_A"]);
        assert_eq!(file_safe("a/b c.d"), "a_b_c.d");
    }

    #[test]
    fn credentials_are_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("node.token");
        std::fs::write(&tok, "abc.def.ghi\n").unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let path = |p: &Path| p.display().to_string();
        let c = resolve(
            parse(&[
                "--token-file",
                &path(&tok),
                "--ca-cert",
                &path(&pem),
                "--tls-cert",
                &path(&pem),
                "--tls-key",
                &path(&pem),
            ])
            .settings,
        )
        .unwrap();
        assert_eq!(c.credentials.token.as_deref(), Some("abc.def.ghi"));
        assert!(c.credentials.ca_cert.is_some() && c.credentials.identity.is_some());
        assert!(
            !format!("{:?}", c.credentials).contains("abc.def"),
            "the token never shows in Debug"
        );
        let missing = dir.path().join("missing.pem");
        let e = resolve(parse(&["--ca-cert", &path(&missing)]).settings).unwrap_err();
        assert!(
            e.to_string().contains("ca_cert") && e.to_string().contains("missing.pem"),
            "{e}"
        );
        let s = Settings {
            tls_cert: Some(pem.clone()),
            ..Settings::default()
        };
        assert!(resolve(s).unwrap_err().to_string().contains("tls_key"));
        std::fs::write(&tok, "\n").unwrap();
        let e = resolve(parse(&["--token-file", &path(&tok)]).settings).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!local_hostname().is_empty());
    }
}
