//! Simulated compute nodes: each one a real [`berth_node::agent`] (its own HTTP/2 connection
//! and `Nodes/Connect` stream, `Register`, heartbeats every `--heartbeat`, actions) over its own
//! [`FakeHypervisor`], all in this process.
//!
//! Hosts are shaped like the flat scenario's API-created ones (`host_shape`: 16–64
//! vCPUs, 64–256 GiB, 1–4 TB, zones `az0`–`az3`) and report the run's trait
//! ([`trait_name`]), which is how requests and audits find them (agents cannot join an
//! aggregate). The harness keeps every `FakeHypervisor`, so audits can look inside the hosts.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Conn;
use berth_node::agent::{self, AgentConfig};
use berth_node::fake::FakeHypervisor;
use berth_node::{Hypervisor, NodeInfo, PowerState};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Scope;

/// The trait every simulated node of run `run_id` reports, e.g. `CUSTOM_LOAD_0A1B2C3D`.
pub fn trait_name(run_id: &str) -> String {
    format!("CUSTOM_LOAD_{}", run_id.to_ascii_uppercase())
}

/// One simulated node, running or not.
struct SimNode {
    hypervisor: Arc<FakeHypervisor>,
    /// Sending (or dropping) it completes the agent's shutdown future; `None` while stopped.
    stop: Option<oneshot::Sender<()>>,
}

/// The simulated nodes of a run, by index; node `i` is called [`Fleet::name`]`(i)`.
pub struct Fleet {
    engine: String,
    /// The run's token (an admin may connect as any node) and the engine's CA.
    credentials: agent::Credentials,
    heartbeat: Duration,
    run_id: String,
    seed: u64,
    trait_name: String,
    /// Nodes by name. `parking_lot::Mutex`: every critical section is a map operation or a
    /// clone of an `Arc`, nothing awaits while it is held.
    nodes: Mutex<HashMap<String, SimNode>>,
    /// Agent tasks, awaited at shutdown. Same lock reasoning as `nodes`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Agents that ended with an error (a configuration the agent refuses).
    failures: Arc<AtomicU64>,
}

impl Fleet {
    /// A fleet reporting to `engine`; nothing runs until [`start`](Self::start).
    pub fn new(
        engine: &str,
        credentials: agent::Credentials,
        heartbeat: Duration,
        run_id: &str,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine: engine.to_string(),
            credentials,
            heartbeat,
            run_id: run_id.to_string(),
            seed,
            trait_name: trait_name(run_id),
            nodes: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Name of node `i` (also its resource provider's name).
    pub fn name(&self, i: usize) -> String {
        format!("load-{}-n{i:06}", self.run_id)
    }

    /// The index of the node called `name`, if it is one of this fleet's names.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix("load-")?
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix("-n")?
            .parse()
            .ok()
    }

    /// Every agent's heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The scope (trait) that selects this fleet's hosts.
    pub fn scope(&self) -> Scope {
        Scope::Trait(self.trait_name.clone())
    }

    /// Starts node `i`'s agent: a new host the first time, the same host (same name, same
    /// hypervisor and domains) when it was stopped before. No-op if it runs.
    pub fn start(&self, i: usize) {
        let name = self.name(i);
        let (tx, rx) = oneshot::channel::<()>();
        let hypervisor = {
            let mut nodes = self.nodes.lock();
            let node = nodes.entry(name.clone()).or_insert_with(|| SimNode {
                hypervisor: Arc::new(FakeHypervisor::new(self.node_info(i))),
                stop: None,
            });
            if node.stop.is_some() {
                return;
            }
            node.stop = Some(tx);
            Arc::clone(&node.hypervisor)
        };
        let config = AgentConfig {
            availability_zone: Some(format!("az{}", i % 4)),
            traits: vec![self.trait_name.clone()],
            heartbeat_interval: self.heartbeat,
            credentials: self.credentials.clone(),
            ..AgentConfig::new(self.engine.clone(), name.clone())
        };
        let failures = Arc::clone(&self.failures);
        let hypervisor: Arc<dyn Hypervisor> = hypervisor;
        let task = tokio::spawn(async move {
            // A dropped sender also ends the agent: dropping the fleet stops every node.
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = agent::run(config, hypervisor, shutdown).await {
                failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("berth-load: agent {name} stopped: {e}");
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Stops node `i`'s agent (it closes its stream and sends nothing more; the engine marks
    /// the host down after `down_after`). Returns whether it was running.
    pub fn stop(&self, i: usize) -> bool {
        let stop = self
            .nodes
            .lock()
            .get_mut(&self.name(i))
            .and_then(|n| n.stop.take());
        match stop {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    /// Whether the agent called `name` runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.nodes
            .lock()
            .get(name)
            .is_some_and(|n| n.stop.is_some())
    }

    /// Agents running now.
    pub fn running(&self) -> usize {
        self.nodes
            .lock()
            .values()
            .filter(|n| n.stop.is_some())
            .count()
    }

    /// Agents that ended with an error.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The power state of domain `uuid` on host `name`, if that host is simulated here and
    /// has the domain.
    pub fn domain_state(&self, name: &str, uuid: Uuid) -> Option<PowerState> {
        let hypervisor = Arc::clone(&self.nodes.lock().get(name)?.hypervisor);
        hypervisor.domain(uuid).map(|d| d.state)
    }

    /// Every host's hypervisor, by name.
    pub fn hypervisors(&self) -> Vec<(String, Arc<FakeHypervisor>)> {
        self.nodes
            .lock()
            .iter()
            .map(|(name, n)| (name.clone(), Arc::clone(&n.hypervisor)))
            .collect()
    }

    /// Starts nodes `from..to` at about `per_second`, printing progress unless `quiet`.
    pub async fn start_range(&self, from: usize, to: usize, per_second: usize, quiet: bool) {
        // Bursts every 20 ms: a dial storm of thousands at once overflows the engine's
        // listen backlog and turns into seconds of SYN retransmits.
        let tick = Duration::from_millis(20);
        let per_tick = (per_second / 50).max(1);
        let mut next = from;
        let mut ticker = tokio::time::interval(tick);
        while next < to {
            ticker.tick().await;
            let end = (next + per_tick).min(to);
            for i in next..end {
                self.start(i);
            }
            next = end;
            if !quiet && (next - from) % (per_tick * 50) < per_tick {
                eprint!("\r  nodes   {:>7}/{} started ", next - from, to - from);
                let _ = std::io::stderr().flush();
            }
        }
    }

    /// Waits until every running agent's host is registered and up, polling
    /// `ListResourceProviders`; returns how long it waited. Fails after `timeout`.
    pub async fn wait_up(
        &self,
        channel: &Conn,
        timeout: Duration,
        quiet: bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let scope = self.scope();
        loop {
            let want = self.running();
            let hosts = crate::list_providers(channel, &scope).await?;
            let up = hosts
                .iter()
                .filter(|p| p.up && self.is_running(&p.name))
                .count();
            if !quiet {
                eprint!(
                    "\r  nodes   {up:>7}/{want} registered and up ({:.1}s) ",
                    start.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
            if up >= want {
                if !quiet {
                    eprintln!();
                }
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                if !quiet {
                    eprintln!();
                }
                return Err(format!(
                    "only {up} of {want} simulated nodes registered and up after {:.0}s \
                     ({} agents failed); the engine or this machine cannot keep up — try fewer \
                     --nodes or a lower --ramp",
                    timeout.as_secs_f64(),
                    self.failures()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every agent and waits (a few seconds at most) for them to close their streams.
    pub async fn shutdown(&self) {
        for node in self.nodes.lock().values_mut() {
            if let Some(tx) = node.stop.take() {
                let _ = tx.send(());
            }
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }

    /// Node `i`'s hardware: the shape API-created host `i` of the same seed has.
    fn node_info(&self, i: usize) -> NodeInfo {
        let (vcpus, ram_gb, disk_gb) = crate::host_shape(self.seed, i);
        NodeInfo {
            vcpus: u32::try_from(vcpus).unwrap_or(u32::MAX),
            memory_mb: ram_gb * 1024,
            disk_gb,
            arch: "x86_64".into(),
            hypervisor_type: "FAKE".into(),
            hypervisor_version: 1_000_000,
        }
    }
}

/// Raises this process's open-file soft limit to the hard limit (each simulated node holds
/// a connection, and the usual soft default is 1,024), then checks that `nodes` connections
/// plus `spare` other descriptors fit, and that the loopback has enough ephemeral ports.
/// Returns the soft limit now in force (`None`: unlimited).
///
/// # Errors
/// When they do not fit, saying what to raise.
pub fn make_room_for(nodes: usize, spare: usize) -> Result<Option<u64>, String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    // `None` is unlimited, so `Option`'s order (None first) does not apply.
    let below_hard = match (lim.current, lim.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    let need = (nodes + spare) as u64;
    if let Some(soft) = lim.current
        && soft < need
    {
        return Err(format!(
            "{nodes} simulated nodes need about {need} open files (one connection each, plus \
             {spare} for clients and the runtime), but this process may open only {soft} (hard \
             limit {}); raise it (ulimit -Hn / LimitNOFILE, as root) or run fewer --nodes",
            lim.maximum
                .map_or_else(|| "unlimited".into(), |m| m.to_string())
        ));
    }
    // All nodes dial one engine address: each connection takes an ephemeral port.
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let ports: Vec<u64> = range
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let [lo, hi] = ports[..]
            && hi >= lo
            && hi - lo + 1 < nodes as u64
        {
            return Err(format!(
                "{nodes} simulated nodes need {nodes} ephemeral ports to one engine address, \
                 but net.ipv4.ip_local_port_range offers {} ({lo}-{hi}); widen it or run \
                 fewer --nodes",
                hi - lo + 1
            ));
        }
    }
    Ok(lim.current)
}
