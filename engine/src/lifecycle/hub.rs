//! The node hub: the engine's registry of connected compute nodes (`berth.v1.Nodes/Connect`).
//!
//! One [`NodeHub`] serves every node stream:
//!
//! - **Registration** (the first message of a stream): validates the `Register`, finds the
//!   node's resource provider by name or creates it, replaces its inventories, its *node*
//!   traits (operator traits such as `COMPUTE_STATUS_DISABLED` survive), its zone and
//!   node capabilities, marks the host up, lets the [`Reconciler`] compare the reported
//!   domains with the servers, answers `Registered` and sends `DELETE` for domains of
//!   servers that now live elsewhere. A newer stream from the same node replaces the older
//!   one, which is closed with `ABORTED`.
//! - **Liveness**: every message refreshes the node's `last_seen`; the monitor
//!   ([`NodeHub::spawn_liveness_monitor`]) marks a host down once it has been silent for
//!   its `down_after`, and the next message brings it back. A stream that ends does not
//!   mark the host down by itself, so a quick reconnect does not flap the host.
//! - **Restart**: an engine rebuilt from its store has every host back, up, but no node
//!   streams. The hub takes each host a node had registered as a node it expects, last
//!   seen at the hub's start: as if its heartbeats stopped at the restart, a host whose
//!   node does not come back goes down after `down_after` instead of staying up (and
//!   attracting servers) forever. Hosts created through the Placement API have no node and
//!   are left alone, as before the restart.
//! - **Dispatch** ([`Dispatcher`]): each action gets a fresh `action_id`; the node's
//!   `ActionResult` completes the waiting caller, a broken stream fails it with
//!   [`DispatchError::Disconnected`], silence with [`DispatchError::Timeout`].
//!
//! The heartbeat path is the hot one (10,000 nodes every 10 s): it stores `last_seen`,
//! bumps a counter and loads one flag, all atomics on the node's own entry (the stream's
//! reader holds it, so there is no map lookup), and calls into the engine only when the
//! host's up/down state changes. Counters are published by the monitor's tick.
//!
//! Locks (all `parking_lot`, none held across an `.await`, all critical sections short):
//! 1. `registry` (hub-wide `Mutex`): serialises the engine writes of registrations, which
//!    are rare (a node's connect), so two streams of one node cannot both create its
//!    provider and connection generations follow registration order;
//! 2. a node's `link` (`Mutex`): its connection and outstanding actions; also taken around
//!    up/down transitions so the engine sees them in order;
//! 3. engine locks, inside engine calls only.
//!
//! The `nodes` map (`DashMap`) is a leaf: no hub lock is taken while one of its guards is
//! held, except a node's `link` during the monitor's scan, which never takes the map again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use berth_proto::v1 as pb;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use uuid::Uuid;

use super::ComputeConfig;
use super::dispatch::{
    ActionOutcome, BoxFuture, DispatchError, Dispatcher, NodeAction, ReconcileReport, Reconciler,
};
use crate::api::status::to_status;
use crate::error::{EngineError, Result};
use crate::model::{
    Inventory, ProviderInfo, ProviderSpec, ProviderUpdate, validate_az, validate_class_name,
    validate_name, validate_trait,
};
use crate::state::providers::{DISABLED_TRAIT, ProviderFilter};
use crate::{Engine, api::convert};

/// Messages the engine may queue for one node before a sender waits.
const OUTBOUND_QUEUE: usize = 256;
/// The contract's limit on node (provider) names, in characters.
const MAX_NAME_CHARS: usize = 200;
/// The contract's smallest heartbeat interval.
const MIN_HEARTBEAT_MS: u32 = 100;
/// How long a replaced stream's `ABORTED` may wait for room in a full outbound queue.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Capability keys the hub owns (set from the registration; operator keys are kept). Named
/// as Nova's `ComputeCapabilitiesFilter` names the host attributes.
const CAP_HV_TYPE: &str = "hypervisor_type";
const CAP_HV_VERSION: &str = "hypervisor_version";
const CAP_ARCH: &str = "cpu_info:arch";
/// Status message a replaced stream ends with.
const REPLACED: &str = "replaced by a newer connection from the same node";
/// `down_after` of a host restored from disk until its node registers again and announces
/// its heartbeat interval (when `down_after_seconds` is not configured): three of
/// berth-node's default 10 s heartbeats, which is also longer than its longest reconnect
/// backoff (10 s), so a node that is merely reconnecting is not marked down meanwhile.
const RESTORED_DOWN_AFTER_MS: u64 = 30_000;

/// The outbound half of a node stream, as the API layer serves it.
pub type Outbound = mpsc::Receiver<std::result::Result<pb::EngineMessage, Status>>;

/// The registry of connected compute nodes; see the module doc. Share it as
/// `Arc<NodeHub>`: the API layer feeds it streams, the conductor dispatches through it.
pub struct NodeHub {
    engine: Arc<Engine>,
    config: ComputeConfig,
    reconciler: OnceLock<Arc<dyn Reconciler>>,
    /// Node entries by provider uuid. `DashMap`: read on every dispatch from many tasks,
    /// written only at registration.
    nodes: DashMap<Uuid, Arc<Node>>,
    /// Node name → provider uuid of its entry, and the lock that serialises registrations
    /// (see the module doc). A plain map: only registrations (and, at start-up, the
    /// restored hosts) touch it.
    registry: Mutex<HashMap<Arc<str>, Uuid>>,
    /// Connection generations, in registration order.
    next_generation: AtomicU64,
    /// Connected streams (for the gauge).
    connected: AtomicI64,
    /// Heartbeats received (published as a counter by the monitor, so the heartbeat path
    /// does not touch the metrics registry).
    heartbeats: AtomicU64,
    /// Wakes the liveness monitor when a node registers (its `down_after` may be shorter
    /// than the monitor's current period).
    wake: Arc<Notify>,
    /// Time base of `last_seen` (tokio's clock, so paused-time tests work).
    epoch: Instant,
}

/// One node, by provider uuid. Outlives its streams: reconnects reuse it.
struct Node {
    uuid: Uuid,
    name: Arc<str>,
    /// Milliseconds since the hub's epoch of the last message on any stream.
    last_seen_ms: AtomicU64,
    /// The host is considered down after this long without a message.
    down_after_ms: AtomicU64,
    /// The interval the node announced.
    heartbeat_interval_ms: AtomicU64,
    /// What the node said about live migration.
    live_migration: AtomicBool,
    /// The hub marked the host down (silent or unhealthy). Changes only under `link`.
    down: AtomicBool,
    /// Connection and node traits. `Mutex`: short sections, never across an `.await`.
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    /// The current stream, if any.
    conn: Option<Connection>,
    /// Highest generation ever installed: an older registration that finishes late must not
    /// replace a newer stream.
    latest_generation: u64,
    /// Traits the node reported last time, so the next registration can replace them
    /// without touching the operator's.
    node_traits: Vec<String>,
}

/// One live stream.
struct Connection {
    generation: u64,
    tx: mpsc::Sender<std::result::Result<pb::EngineMessage, Status>>,
    /// Outstanding actions. Dropping a sender fails its caller with `Disconnected`.
    pending: HashMap<Uuid, oneshot::Sender<ActionOutcome>>,
    /// Dropped with the connection: stops the stream's reader task.
    _stop: oneshot::Sender<()>,
}

/// A validated `Register`.
#[derive(Debug)]
struct Registration {
    name: String,
    availability_zone: String,
    /// Sorted, deduplicated, without `COMPUTE_STATUS_DISABLED`.
    traits: Vec<String>,
    inventories: Vec<(String, Inventory)>,
    arch: Option<String>,
    hypervisor_type: Option<String>,
    hypervisor_version: Option<String>,
    live_migration: bool,
    heartbeat_interval_ms: u32,
    domains: Vec<pb::DomainReport>,
    agent_version: String,
    warnings: Vec<String>,
}

impl Registration {
    /// The capability keys the hub owns, from this registration.
    fn capabilities(&self) -> [(&'static str, Option<&String>); 3] {
        [
            (CAP_HV_TYPE, self.hypervisor_type.as_ref()),
            (CAP_HV_VERSION, self.hypervisor_version.as_ref()),
            (CAP_ARCH, self.arch.as_ref()),
        ]
    }

    /// `current` with the hub's capability keys replaced by this registration's.
    fn merged_capabilities(&self, current: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut caps = current.clone();
        for (k, v) in self.capabilities() {
            match v {
                Some(v) => caps.insert(k.to_string(), v.clone()),
                None => caps.remove(k),
            };
        }
        caps
    }
}

/// What registration did to the engine.
struct Admission {
    node: Arc<Node>,
    generation: u64,
    down_after_ms: u64,
    created: bool,
    warnings: Vec<String>,
    /// An older entry of the same name (its provider was replaced) to close.
    superseded: Option<Arc<Node>>,
}

impl std::fmt::Debug for NodeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHub")
            .field("nodes", &self.nodes.len())
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeHub {
    /// A hub over `engine`. Call [`NodeHub::set_reconciler`] and
    /// [`NodeHub::spawn_liveness_monitor`] before serving streams.
    ///
    /// An engine with a store was rebuilt from disk (or starts an empty data directory):
    /// the hub expects the nodes of the hosts that nodes had registered, as the module doc
    /// says under "Restart".
    pub fn new(engine: Arc<Engine>, config: ComputeConfig) -> Arc<NodeHub> {
        let durable = engine.store().is_some();
        let hub = Arc::new(NodeHub {
            engine,
            config,
            reconciler: OnceLock::new(),
            nodes: DashMap::new(),
            registry: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            connected: AtomicI64::new(0),
            heartbeats: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            epoch: Instant::now(),
        });
        if durable {
            hub.expect_restored_nodes();
        }
        hub
    }

    /// Adds a node entry, not connected and last seen now, for every up host that carries
    /// the marks of a node's registration: the capability keys only the hub writes (from
    /// the hypervisor type, version and architecture a node reports; berth-node always
    /// reports them). Servers are only built on hosts whose node is connected, so this
    /// covers the hosts with servers too. A host created through the Placement API has none
    /// of the keys unless an operator set them by hand, and no node is expected for it. A
    /// node's registration later reuses its entry. Returns how many.
    fn expect_restored_nodes(&self) -> usize {
        let hosts = match self.engine.list_providers(&ProviderFilter::default()) {
            Ok(hosts) => hosts,
            Err(e) => {
                tracing::warn!(
                    "node hub: cannot list the restored hosts, so none is watched until its node registers: {e}"
                );
                return 0;
            }
        };
        let (down_after_ms, why) = if self.config.down_after_seconds > 0 {
            (
                self.config.down_after_seconds.saturating_mul(1000),
                "[compute] down_after_seconds",
            )
        } else {
            (
                RESTORED_DOWN_AFTER_MS,
                "three default heartbeat intervals, until the node announces its own",
            )
        };
        let mut registry = self.registry.lock();
        let mut names = Vec::new();
        for p in hosts
            .into_iter()
            .filter(|p| p.up && registered_by_a_node(p))
        {
            let name: Arc<str> = Arc::from(p.name.as_str());
            registry.insert(name.clone(), p.uuid);
            self.nodes.entry(p.uuid).or_insert_with(|| {
                Arc::new(Node {
                    uuid: p.uuid,
                    name,
                    // The hub's epoch: now.
                    last_seen_ms: AtomicU64::new(0),
                    down_after_ms: AtomicU64::new(down_after_ms),
                    heartbeat_interval_ms: AtomicU64::new(0),
                    live_migration: AtomicBool::new(false),
                    down: AtomicBool::new(false),
                    link: Mutex::new(Link::default()),
                })
            });
            names.push(p.name);
        }
        if !names.is_empty() {
            const SHOWN: usize = 8;
            let more = names.len().saturating_sub(SHOWN);
            let mut shown = names[..names.len().min(SHOWN)].join(", ");
            if more > 0 {
                shown.push_str(&format!(" and {more} more"));
            }
            tracing::info!(
                hosts = names.len(),
                down_after_ms,
                "{} restored host(s) registered by compute nodes: each goes down unless its node reconnects within {:.1}s ({why}): {shown}",
                names.len(),
                down_after_ms as f64 / 1000.0,
            );
        }
        names.len()
    }

    /// Sets the reconciler (the conductor) that hears about registrations and heartbeats.
    /// Only the first call counts; until then registrations report no orphans or missing
    /// servers.
    pub fn set_reconciler(&self, reconciler: Arc<dyn Reconciler>) {
        if self.reconciler.set(reconciler).is_err() {
            tracing::warn!("node hub: a reconciler is set already; ignoring the new one");
        }
    }

    /// Number of nodes with a connected stream.
    pub fn connected_nodes(&self) -> usize {
        usize::try_from(self.connected.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Starts the liveness monitor: it marks silent hosts down and publishes the hub's
    /// metrics. It ticks every quarter of the shortest `down_after` (50 ms to 1 s) and
    /// stops when the hub is dropped.
    pub fn spawn_liveness_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            loop {
                let period = match weak.upgrade() {
                    Some(hub) => hub.check_liveness(),
                    None => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = wake.notified() => {}
                }
            }
        })
    }

    /// Serves one node stream: waits for its first message, which must be `Register`,
    /// registers the node and returns the outbound half (its first message is
    /// `Registered`). Errors: INVALID_ARGUMENT naming the problem (first message not
    /// `Register`, a bad field), or the engine's error as a status.
    pub async fn connect<S>(
        self: &Arc<Self>,
        mut inbound: S,
    ) -> std::result::Result<Outbound, Status>
    where
        S: Stream<Item = std::result::Result<pb::NodeMessage, Status>> + Send + Unpin + 'static,
    {
        let first = match inbound.next().await {
            Some(Ok(m)) => m,
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::invalid_argument(
                    "the stream ended before its first message; the first message must be register",
                ));
            }
        };
        let register = match first.body {
            Some(pb::node_message::Body::Register(r)) => r,
            other => {
                return Err(Status::invalid_argument(format!(
                    "the first message must be register, got {}",
                    body_name(other.as_ref())
                )));
            }
        };
        let reg = validate(register, &self.engine).map_err(to_status)?;
        let admitted = self.register(&reg).map_err(to_status)?;
        let Admission {
            node,
            generation,
            down_after_ms,
            created,
            mut warnings,
            superseded,
        } = admitted;
        if let Some(old) = superseded {
            self.close_node(&old);
        }
        let report = match self.reconciler.get() {
            Some(r) => r.node_registered(node.uuid, &reg.domains),
            None => ReconcileReport::default(),
        };
        warnings.extend(reg.warnings.iter().cloned());
        for w in &warnings {
            tracing::warn!(host = %node.name, "host {}: registration: {w}", node.name);
        }

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let registered = pb::Registered {
            provider_uuid: node.uuid.to_string(),
            down_after_ms: u32::try_from(down_after_ms).unwrap_or(u32::MAX),
            orphans: report.orphans.iter().map(Uuid::to_string).collect(),
            missing: report.missing.iter().map(Uuid::to_string).collect(),
            warnings,
        };
        // The queue is new and empty: this cannot fail for lack of room.
        let _ = tx.try_send(Ok(pb::EngineMessage {
            body: Some(pb::engine_message::Body::Registered(registered)),
        }));

        let (stop_tx, stop_rx) = oneshot::channel();
        let conn = Connection {
            generation,
            tx,
            pending: HashMap::new(),
            _stop: stop_tx,
        };
        let replaced = {
            let mut link = node.link.lock();
            if generation < link.latest_generation {
                None
            } else {
                link.latest_generation = generation;
                Some(link.conn.replace(conn))
            }
        };
        match replaced {
            // A newer stream of this node registered while this one was being set up.
            None => return Err(Status::aborted(REPLACED)),
            Some(Some(old)) => {
                tracing::info!(host = %node.name, old = old.generation, new = generation, "host {}: {REPLACED}", node.name);
                close_connection(old, Status::aborted(REPLACED));
            }
            Some(None) => {
                self.connected_changed(1);
            }
        }
        tracing::info!(
            host = %node.name,
            provider = %node.uuid,
            created,
            agent_version = %reg.agent_version,
            domains = reg.domains.len(),
            orphans = report.orphans.len(),
            missing = report.missing.len(),
            to_delete = report.to_delete.len(),
            down_after_ms,
            "host {} registered",
            node.name
        );
        self.wake.notify_one();

        tokio::spawn(read_loop(
            self.clone(),
            node.clone(),
            generation,
            inbound,
            stop_rx,
        ));
        for uuid in report.to_delete {
            self.spawn_delete(&node, uuid, &reg.domains);
        }
        Ok(rx)
    }

    /// The engine side of a registration, under the registry lock.
    fn register(&self, reg: &Registration) -> Result<Admission> {
        let mut registry = self.registry.lock();
        let existing = self
            .engine
            .resolve_host(&reg.name)
            .and_then(|u| self.engine.get_provider(&u).ok())
            .filter(|p| p.name == reg.name);
        let previous_traits = |uuid: &Uuid| -> Vec<String> {
            self.nodes
                .get(uuid)
                .map(|n| n.link.lock().node_traits.clone())
                .unwrap_or_default()
        };
        let (uuid, created, warnings) = match existing {
            Some(info) => {
                let uuid = info.uuid;
                let prev = previous_traits(&uuid);
                let warnings = self.update_provider(info, reg, &prev)?;
                (uuid, false, warnings)
            }
            None => {
                let spec = ProviderSpec {
                    uuid: None,
                    name: reg.name.clone(),
                    availability_zone: Some(reg.availability_zone.clone()),
                    traits: reg.traits.clone(),
                    aggregates: Vec::new(),
                    inventories: reg.inventories.clone(),
                    capabilities: reg.merged_capabilities(&BTreeMap::new()),
                    arch: reg.arch.clone(),
                    hypervisor_type: reg.hypervisor_type.clone(),
                    hypervisor_version: reg.hypervisor_version.clone(),
                };
                let info = self.engine.create_provider(spec)?;
                (info.uuid, true, Vec::new())
            }
        };
        let name: Arc<str> = Arc::from(reg.name.as_str());
        let superseded = match registry.insert(name.clone(), uuid) {
            Some(old) if old != uuid => self.nodes.remove(&old).map(|(_, n)| n),
            _ => None,
        };
        let node = self
            .nodes
            .entry(uuid)
            .or_insert_with(|| {
                Arc::new(Node {
                    uuid,
                    name: name.clone(),
                    last_seen_ms: AtomicU64::new(0),
                    down_after_ms: AtomicU64::new(0),
                    heartbeat_interval_ms: AtomicU64::new(0),
                    live_migration: AtomicBool::new(false),
                    down: AtomicBool::new(false),
                    link: Mutex::new(Link::default()),
                })
            })
            .clone();
        let down_after_ms = if self.config.down_after_seconds > 0 {
            self.config.down_after_seconds.saturating_mul(1000)
        } else {
            3 * u64::from(reg.heartbeat_interval_ms)
        };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut link = node.link.lock();
            link.node_traits = reg.traits.clone();
            node.down_after_ms.store(down_after_ms, Ordering::Relaxed);
            node.heartbeat_interval_ms
                .store(u64::from(reg.heartbeat_interval_ms), Ordering::Relaxed);
            node.live_migration
                .store(reg.live_migration, Ordering::Relaxed);
            node.last_seen_ms.store(self.now_ms(), Ordering::SeqCst);
            self.engine.set_host_up(&uuid, true)?;
            node.down.store(false, Ordering::SeqCst);
        }
        drop(registry);
        Ok(Admission {
            node,
            generation,
            down_after_ms,
            created,
            warnings,
            superseded,
        })
    }

    /// Brings an existing provider in line with a registration; returns the warnings.
    fn update_provider(
        &self,
        info: ProviderInfo,
        reg: &Registration,
        previous_node_traits: &[String],
    ) -> Result<Vec<String>> {
        let uuid = info.uuid;
        let mut warnings = Vec::new();

        // Zone, capabilities and hypervisor attributes.
        let caps = reg.merged_capabilities(&info.capabilities);
        let az_changed = info.availability_zone != reg.availability_zone;
        let changed = |now: &Option<String>, want: &Option<String>| {
            (now != want).then(|| want.clone().unwrap_or_default())
        };
        let update = ProviderUpdate {
            name: None,
            availability_zone: az_changed.then(|| reg.availability_zone.clone()),
            capabilities: (caps != info.capabilities).then_some(caps),
            arch: changed(&info.arch, &reg.arch),
            hypervisor_type: changed(&info.hypervisor_type, &reg.hypervisor_type),
            hypervisor_version: changed(&info.hypervisor_version, &reg.hypervisor_version),
        };
        if !update.is_empty() {
            self.engine.update_provider(&uuid, None, update)?;
        }

        // Inventories: the node's word replaces them. A class still in use cannot be
        // removed; keep its old inventory and say so.
        if let Err(e) = self.engine.set_inventories(&uuid, None, &reg.inventories) {
            let EngineError::FailedPrecondition(why) = e else {
                return Err(e);
            };
            let mut invs = reg.inventories.clone();
            let current = self.engine.get_provider(&uuid)?;
            for u in &current.usages {
                if u.used > 0 && !invs.iter().any(|(c, _)| *c == u.class) {
                    warnings.push(format!(
                        "inventory of {} kept: {} in use by existing allocations ({why})",
                        u.class, u.used
                    ));
                    invs.push((u.class.clone(), u.inventory));
                }
            }
            self.engine.set_inventories(&uuid, None, &invs)?;
        }

        // Traits: node traits ∪ (current − what the node reported before). Read-modify-write
        // with the generation, so an operator's concurrent change is not lost.
        let mut attempts = 0;
        let info = loop {
            let info = self.engine.get_provider(&uuid)?;
            let mut traits: Vec<String> = info
                .traits
                .iter()
                .filter(|t| !previous_node_traits.contains(t))
                .cloned()
                .chain(reg.traits.iter().cloned())
                .collect();
            traits.sort();
            traits.dedup();
            if traits == info.traits {
                break info;
            }
            match self
                .engine
                .set_traits(&uuid, Some(info.generation), &traits)
            {
                Ok(_) => break self.engine.get_provider(&uuid)?,
                Err(EngineError::GenerationConflict { .. }) if attempts < 8 => attempts += 1,
                Err(e) => return Err(e),
            }
        };

        for u in &info.usages {
            if u.used > u.capacity {
                warnings.push(format!(
                    "{} capacity {} is below its current usage {}: existing allocations stay, new ones will not fit",
                    u.class, u.capacity, u.used
                ));
            }
        }
        Ok(warnings)
    }

    /// Ends every node stream with UNAVAILABLE saying `why`: a graceful shutdown waits for
    /// in-flight calls, and a node stream never ends by itself. Nodes reconnect with backoff
    /// to whichever engine listens next; their outstanding actions fail with `Disconnected`.
    pub fn close_all(&self, why: &str) {
        for entry in self.nodes.iter() {
            let conn = entry.value().link.lock().conn.take();
            if let Some(conn) = conn {
                self.connected_changed(-1);
                close_connection(conn, Status::unavailable(why.to_string()));
            }
        }
    }

    /// Closes the stream of a node entry that registration dropped (its provider was
    /// replaced by a new one of the same name).
    fn close_node(&self, node: &Node) {
        let conn = node.link.lock().conn.take();
        if let Some(conn) = conn {
            self.connected_changed(-1);
            close_connection(conn, Status::aborted(REPLACED));
        }
    }

    /// Handles one message after `Register`. Returns false when the stream must end.
    fn on_message(&self, node: &Node, generation: u64, msg: pb::NodeMessage) -> bool {
        node.last_seen_ms.store(self.now_ms(), Ordering::SeqCst);
        match msg.body {
            Some(pb::node_message::Body::Heartbeat(hb)) => {
                self.on_heartbeat(node, &hb);
                true
            }
            Some(pb::node_message::Body::ActionResult(r)) => {
                self.on_action_result(node, generation, r);
                true
            }
            Some(pb::node_message::Body::Register(_)) => {
                tracing::warn!(host = %node.name, "host {}: register sent twice on one stream; closing it", node.name);
                self.end_connection(
                    node,
                    generation,
                    Some(Status::invalid_argument(
                        "register may only be the first message of a stream",
                    )),
                    "second register",
                );
                false
            }
            None => {
                // A newer node may send a kind of message this engine does not know.
                tracing::debug!(host = %node.name, "host {}: ignoring an empty or unknown message", node.name);
                true
            }
        }
    }

    /// The hot path: see the module doc.
    fn on_heartbeat(&self, node: &Node, hb: &pb::Heartbeat) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(host = %node.name, seq = hb.seq, "heartbeat");
        if !hb.healthy {
            if !node.down.load(Ordering::SeqCst) {
                let _link = node.link.lock();
                if !node.down.swap(true, Ordering::SeqCst) {
                    self.set_up(node, false);
                    tracing::warn!(host = %node.name, detail = %hb.health_detail, "host {} is unhealthy, marked down: {}", node.name, hb.health_detail);
                }
            }
        } else if node.down.load(Ordering::SeqCst) {
            let _link = node.link.lock();
            if node.down.swap(false, Ordering::SeqCst) {
                self.set_up(node, true);
                tracing::info!(host = %node.name, "host {} is up again", node.name);
            }
        }
        if let Some(r) = self.reconciler.get() {
            r.node_heartbeat(node.uuid, &hb.domains);
        }
    }

    fn on_action_result(&self, node: &Node, generation: u64, r: pb::ActionResult) {
        let Ok(id) = Uuid::parse_str(&r.action_id) else {
            tracing::debug!(host = %node.name, action_id = %r.action_id, "host {}: action result with a malformed id; ignored", node.name);
            return;
        };
        let waiter = {
            let mut link = node.link.lock();
            link.conn
                .as_mut()
                .filter(|c| c.generation == generation)
                .and_then(|c| c.pending.remove(&id))
        };
        let outcome = ActionOutcome {
            ok: r.ok,
            error_code: r.error_code,
            message: r.message,
            power_state: r.power_state,
            snapshot_id: r.snapshot_id,
        };
        match waiter {
            // The caller may have given up in the meantime; nothing to do then.
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => {
                tracing::debug!(host = %node.name, %id, "host {}: result for unknown action {id} (late, after a timeout?); ignored", node.name)
            }
        }
    }

    /// Ends the connection `generation` of `node` if it is still the current one: sends
    /// `status` (if any) and fails its outstanding actions.
    fn end_connection(&self, node: &Node, generation: u64, status: Option<Status>, why: &str) {
        let conn = {
            let mut link = node.link.lock();
            if link
                .conn
                .as_ref()
                .is_some_and(|c| c.generation == generation)
            {
                link.conn.take()
            } else {
                None
            }
        };
        let Some(conn) = conn else { return };
        self.connected_changed(-1);
        tracing::info!(
            host = %node.name,
            outstanding = conn.pending.len(),
            "host {} disconnected ({why}); {} outstanding action(s) failed",
            node.name,
            conn.pending.len()
        );
        match status {
            Some(s) => close_connection(conn, s),
            None => drop(conn),
        }
    }

    /// One liveness pass; returns how long to sleep until the next.
    fn check_liveness(&self) -> Duration {
        let now = self.now_ms();
        let mut shortest = u64::MAX;
        let mut silent: Vec<Arc<Node>> = Vec::new();
        for entry in self.nodes.iter() {
            let node = entry.value();
            let down_after = node.down_after_ms.load(Ordering::Relaxed);
            shortest = shortest.min(down_after);
            if !node.down.load(Ordering::SeqCst)
                && now.saturating_sub(node.last_seen_ms.load(Ordering::SeqCst)) > down_after
            {
                silent.push(node.clone());
            }
        }
        for node in silent {
            let _link = node.link.lock();
            if node.down.swap(true, Ordering::SeqCst) {
                continue;
            }
            // Re-read after publishing `down`: a heartbeat that stored `last_seen` before
            // this sees the fresh time; one after it sees `down` and brings the host up.
            let idle = self
                .now_ms()
                .saturating_sub(node.last_seen_ms.load(Ordering::SeqCst));
            if idle <= node.down_after_ms.load(Ordering::Relaxed) {
                node.down.store(false, Ordering::SeqCst);
                continue;
            }
            self.set_up(&node, false);
            metrics::counter!("berth_hosts_marked_down_total").increment(1);
            tracing::warn!(
                host = %node.name,
                idle_ms = idle,
                heartbeat_interval_ms = node.heartbeat_interval_ms.load(Ordering::Relaxed),
                "host {} is down: no message for {:.1}s",
                node.name,
                idle as f64 / 1000.0
            );
        }
        metrics::counter!("berth_node_heartbeats_total")
            .absolute(self.heartbeats.load(Ordering::Relaxed));
        metrics::gauge!("berth_nodes_connected").set(self.connected.load(Ordering::Relaxed) as f64);
        let period = if shortest == u64::MAX {
            1000
        } else {
            (shortest / 4).clamp(50, 1000)
        };
        Duration::from_millis(period)
    }

    /// Tells the engine; a provider deleted meanwhile is not the hub's problem.
    fn set_up(&self, node: &Node, up: bool) {
        if let Err(e) = self.engine.set_host_up(&node.uuid, up) {
            tracing::debug!(host = %node.name, "host {}: cannot mark it {}: {e}", node.name, if up { "up" } else { "down" });
        }
    }

    fn connected_changed(&self, delta: i64) {
        let n = self.connected.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics::gauge!("berth_nodes_connected").set(n as f64);
    }

    /// Sends DELETE for a domain of a server that lives elsewhere now; logs the outcome.
    fn spawn_delete(self: &Arc<Self>, node: &Node, uuid: Uuid, domains: &[pb::DomainReport]) {
        let uuid_text = uuid.to_string();
        let name = domains
            .iter()
            .find(|d| d.uuid.eq_ignore_ascii_case(&uuid_text))
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("instance-{uuid}"));
        let action = NodeAction {
            kind: pb::ActionKind::Delete,
            instance: pb::InstanceSpec {
                uuid: uuid_text,
                name,
                ..Default::default()
            },
            hard: false,
            snapshot_name: String::new(),
            request_id: String::new(),
        };
        let hub = self.clone();
        let host = node.uuid;
        let host_name = node.name.clone();
        let timeout = Duration::from_secs(self.config.action_timeout_seconds);
        tokio::spawn(async move {
            match hub.dispatch(host, action, timeout).await {
                Ok(o) if o.ok => {
                    tracing::info!(host = %host_name, server = %uuid, "host {host_name}: deleted the domain of server {uuid}, which lives elsewhere now")
                }
                Ok(o) => {
                    tracing::warn!(host = %host_name, server = %uuid, code = %o.error_code, "host {host_name}: deleting the domain of server {uuid} failed: {}", o.message)
                }
                Err(e) => {
                    tracing::warn!(host = %host_name, server = %uuid, "host {host_name}: deleting the domain of server {uuid} failed: {e}")
                }
            }
        });
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn dispatch_inner(
        &self,
        host: Uuid,
        action: NodeAction,
        timeout: Duration,
    ) -> std::result::Result<ActionOutcome, DispatchError> {
        let kind = kind_name(action.kind);
        let node = self.nodes.get(&host).map(|n| n.value().clone());
        let Some(node) = node else {
            return Err(DispatchError::NotConnected {
                host: host.to_string(),
            });
        };
        let id = Uuid::new_v4();
        let (done_tx, done_rx) = oneshot::channel();
        let (tx, generation) = {
            let mut link = node.link.lock();
            let Some(conn) = link.conn.as_mut() else {
                return Err(DispatchError::NotConnected {
                    host: node.name.to_string(),
                });
            };
            conn.pending.insert(id, done_tx);
            (conn.tx.clone(), conn.generation)
        };
        // Removes the pending entry however this future ends (timeout, caller gave up).
        let _guard = PendingGuard {
            node: &node,
            generation,
            id,
        };
        let msg = pb::EngineMessage {
            body: Some(pb::engine_message::Body::Action(pb::Action {
                action_id: id.to_string(),
                request_id: action.request_id,
                kind: action.kind as i32,
                instance: Some(action.instance),
                hard: action.hard,
                snapshot_name: action.snapshot_name,
            })),
        };
        let deadline = Instant::now() + timeout;
        let timed_out = || DispatchError::Timeout {
            host: node.name.to_string(),
            action: kind.to_string(),
            seconds: timeout.as_secs_f64().ceil() as u64,
        };
        let disconnected = || DispatchError::Disconnected {
            host: node.name.to_string(),
            action: kind.to_string(),
        };
        tracing::debug!(host = %node.name, action = kind, %id, "host {}: sending {kind}", node.name);
        match tokio::time::timeout_at(deadline, tx.send(Ok(msg))).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(disconnected()),
            Ok(Ok(())) => {}
        }
        drop(tx);
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(disconnected()),
            Err(_) => Err(timed_out()),
        }
    }
}

impl Dispatcher for NodeHub {
    fn dispatch(
        &self,
        host: Uuid,
        action: NodeAction,
        timeout: Duration,
    ) -> BoxFuture<'_, std::result::Result<ActionOutcome, DispatchError>> {
        Box::pin(async move {
            let kind = kind_name(action.kind);
            let res = self.dispatch_inner(host, action, timeout).await;
            let result = match &res {
                Ok(o) if o.ok => "ok",
                Ok(_) => "failed",
                Err(DispatchError::NotConnected { .. }) => "not_connected",
                Err(DispatchError::Timeout { .. }) => "timeout",
                Err(DispatchError::Disconnected { .. }) => "disconnected",
            };
            metrics::counter!("berth_node_actions_total", "kind" => kind, "result" => result)
                .increment(1);
            if let Err(e) = &res {
                tracing::info!(host = %host, action = kind, result, "{e}");
            }
            res
        })
    }

    fn is_connected(&self, host: &Uuid) -> bool {
        self.nodes
            .get(host)
            .is_some_and(|n| n.link.lock().conn.is_some())
    }

    fn live_migration(&self, host: &Uuid) -> bool {
        self.nodes
            .get(host)
            .is_some_and(|n| n.live_migration.load(Ordering::Relaxed))
    }
}

/// Removes a dispatch's pending entry when the dispatch ends without an answer.
struct PendingGuard<'a> {
    node: &'a Node,
    generation: u64,
    id: Uuid,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut link = self.node.link.lock();
        if let Some(c) = link.conn.as_mut()
            && c.generation == self.generation
        {
            c.pending.remove(&self.id);
        }
    }
}

/// Reads a stream's messages until it ends, it breaks, or the connection is replaced.
async fn read_loop<S>(
    hub: Arc<NodeHub>,
    node: Arc<Node>,
    generation: u64,
    mut inbound: S,
    mut stop: oneshot::Receiver<()>,
) where
    S: Stream<Item = std::result::Result<pb::NodeMessage, Status>> + Send + Unpin + 'static,
{
    let why = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break "replaced",
            msg = inbound.next() => match msg {
                Some(Ok(m)) => {
                    if !hub.on_message(&node, generation, m) {
                        break "protocol error";
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(host = %node.name, code = ?status.code(), "host {}: stream error: {}", node.name, status.message());
                    break "stream error";
                }
                None => break "stream closed by the node",
            },
        }
    };
    hub.end_connection(&node, generation, None, why);
}

/// Ends a connection with `status`. Dropping the rest of it fails its outstanding actions
/// and stops its reader.
fn close_connection(conn: Connection, status: Status) {
    let Connection { tx, .. } = conn;
    match tx.try_send(Err(status)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(item)) => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(item)).await;
            });
        }
    }
}

/// Validates a `Register`; errors name the field (`register.inventories[VCPU].total`).
/// Everything the engine would reject is checked here first, so a rejected registration
/// leaves no new trait or class names behind.
fn validate(r: pb::Register, engine: &Engine) -> Result<Registration> {
    validate_name("register.name", &r.name)?;
    let chars = r.name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(EngineError::invalid(
            "register.name",
            format!("is {chars} characters long; at most {MAX_NAME_CHARS}"),
        ));
    }
    let availability_zone = if r.availability_zone.is_empty() {
        engine.config().default_availability_zone.clone()
    } else {
        validate_az("register.availability_zone", &r.availability_zone)?;
        r.availability_zone
    };
    let mut warnings = Vec::new();
    let mut traits = Vec::with_capacity(r.traits.len());
    for (i, t) in r.traits.into_iter().enumerate() {
        validate_trait(&format!("register.traits[{i}]"), &t)?;
        if t == DISABLED_TRAIT {
            warnings.push(format!(
                "trait {DISABLED_TRAIT} belongs to the operator; ignored"
            ));
        } else {
            traits.push(t);
        }
    }
    traits.sort();
    traits.dedup();
    let mut inventories: Vec<(String, Inventory)> = Vec::with_capacity(r.inventories.len());
    for (i, wire) in r.inventories.iter().enumerate() {
        let (class, inv) = convert::inventory(wire);
        validate_class_name(&format!("register.inventories[{i}].resource_class"), &class)?;
        inv.validate(&format!("register.inventories[{class}]"))?;
        if inventories.iter().any(|(c, _)| *c == class) {
            return Err(EngineError::invalid(
                format!("register.inventories[{class}]"),
                "resource class listed twice",
            ));
        }
        inventories.push((class, inv));
    }
    let label = |field: &str, v: String| -> Result<Option<String>> {
        if v.is_empty() {
            return Ok(None);
        }
        validate_name(field, &v)?;
        // Nova's canonical forms are lower case (`qemu`, `x86_64`); libvirt says `QEMU`.
        Ok(Some(v.to_ascii_lowercase()))
    };
    let arch = label("register.arch", r.arch)?;
    let hypervisor_type = label("register.hypervisor_type", r.hypervisor_type)?;
    let hypervisor_version = if r.hypervisor_version.is_empty() {
        None
    } else if crate::scheduler::extra_specs_ops::parse_version(&r.hypervisor_version).is_none() {
        return Err(EngineError::invalid(
            "register.hypervisor_version",
            format!("{:?} is not a version like 8.0.0", r.hypervisor_version),
        ));
    } else {
        Some(r.hypervisor_version)
    };
    if r.heartbeat_interval_ms < MIN_HEARTBEAT_MS {
        return Err(EngineError::invalid(
            "register.heartbeat_interval_ms",
            format!(
                "{} is below the minimum {MIN_HEARTBEAT_MS}",
                r.heartbeat_interval_ms
            ),
        ));
    }
    Ok(Registration {
        name: r.name,
        availability_zone,
        traits,
        inventories,
        arch,
        hypervisor_type,
        hypervisor_version,
        live_migration: r.live_migration,
        heartbeat_interval_ms: r.heartbeat_interval_ms,
        domains: r.domains,
        agent_version: r.agent_version,
        warnings,
    })
}

/// Whether a node's registration made this provider: it carries a capability key only the
/// hub writes (see [`NodeHub::expect_restored_nodes`]).
fn registered_by_a_node(p: &ProviderInfo) -> bool {
    [CAP_HV_TYPE, CAP_HV_VERSION, CAP_ARCH]
        .iter()
        .any(|k| p.capabilities.contains_key(*k))
}

/// For error messages about the first message.
fn body_name(body: Option<&pb::node_message::Body>) -> &'static str {
    match body {
        Some(pb::node_message::Body::Register(_)) => "register",
        Some(pb::node_message::Body::Heartbeat(_)) => "heartbeat",
        Some(pb::node_message::Body::ActionResult(_)) => "action_result",
        None => "an empty message",
    }
}

/// An action kind, lower case (metrics label, errors, logs).
fn kind_name(kind: pb::ActionKind) -> &'static str {
    use pb::ActionKind as K;
    match kind {
        K::Unspecified => "unspecified",
        K::Spawn => "spawn",
        K::Stop => "stop",
        K::Start => "start",
        K::Reboot => "reboot",
        K::Pause => "pause",
        K::Unpause => "unpause",
        K::Suspend => "suspend",
        K::Resume => "resume",
        K::Snapshot => "snapshot",
        K::Rebuild => "rebuild",
        K::Delete => "delete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;
    use crate::model::Allocation;
    use crate::state::consumers::AllocationRequest;
    use tokio_stream::wrappers::ReceiverStream;

    type NodeTx = mpsc::Sender<std::result::Result<pb::NodeMessage, Status>>;

    /// A fake compute node: the two halves of one stream.
    struct FakeNode {
        tx: NodeTx,
        rx: Outbound,
    }

    impl FakeNode {
        async fn send(&self, body: pb::node_message::Body) {
            self.tx
                .send(Ok(pb::NodeMessage { body: Some(body) }))
                .await
                .unwrap();
        }

        async fn heartbeat(&self, healthy: bool, domains: Vec<pb::DomainReport>) {
            self.send(pb::node_message::Body::Heartbeat(pb::Heartbeat {
                seq: 1,
                domains,
                healthy,
                health_detail: if healthy { "" } else { "libvirt is gone" }.into(),
            }))
            .await;
        }

        /// The next message from the engine (panics after 5 s).
        async fn next(&mut self) -> Option<std::result::Result<pb::EngineMessage, Status>> {
            tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                .await
                .expect("a message from the engine within 5 s")
        }

        async fn next_action(&mut self) -> pb::Action {
            match self.next().await {
                Some(Ok(pb::EngineMessage {
                    body: Some(pb::engine_message::Body::Action(a)),
                })) => a,
                other => panic!("expected an action, got {other:?}"),
            }
        }

        async fn answer(&self, action_id: &str, ok: bool) {
            self.send(pb::node_message::Body::ActionResult(pb::ActionResult {
                action_id: action_id.into(),
                ok,
                error_code: if ok { "" } else { "DRIVER" }.into(),
                message: if ok { "" } else { "boom" }.into(),
                power_state: "RUNNING".into(),
                snapshot_id: String::new(),
            }))
            .await;
        }

        /// Waits until the engine ends the stream; returns its final status, if any.
        async fn closed(&mut self) -> Option<Status> {
            loop {
                match self.next().await {
                    None => return None,
                    Some(Err(s)) => return Some(s),
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    fn inv(class: &str, total: u64) -> pb::Inventory {
        pb::Inventory {
            resource_class: class.into(),
            total,
            ..Default::default()
        }
    }

    fn register(name: &str) -> pb::Register {
        pb::Register {
            name: name.into(),
            availability_zone: String::new(),
            traits: vec!["CUSTOM_SSD".into(), "HW_CPU_X86_AVX2".into()],
            inventories: vec![
                pb::Inventory {
                    allocation_ratio: 4.0,
                    reserved: 1,
                    ..inv("VCPU", 16)
                },
                inv("MEMORY_MB", 32768),
                inv("DISK_GB", 500),
            ],
            arch: "x86_64".into(),
            hypervisor_type: "QEMU".into(),
            hypervisor_version: "8.0.0".into(),
            live_migration: true,
            domains: Vec::new(),
            heartbeat_interval_ms: 1000,
            agent_version: "test".into(),
        }
    }

    fn domain(uuid: Uuid, name: &str) -> pb::DomainReport {
        pb::DomainReport {
            uuid: uuid.to_string(),
            name: name.into(),
            power_state: "RUNNING".into(),
        }
    }

    fn hub_with(config: ComputeConfig) -> (Arc<Engine>, Arc<NodeHub>) {
        let engine = Arc::new(Engine::new(EngineConfig::default()).unwrap());
        let hub = NodeHub::new(engine.clone(), config);
        (engine, hub)
    }

    fn hub() -> (Arc<Engine>, Arc<NodeHub>) {
        hub_with(ComputeConfig::default())
    }

    /// Opens a stream whose first message is `first`.
    async fn open(
        hub: &Arc<NodeHub>,
        first: pb::NodeMessage,
    ) -> std::result::Result<FakeNode, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(first)).await.unwrap();
        let out = hub.connect(ReceiverStream::new(rx)).await?;
        Ok(FakeNode { tx, rx: out })
    }

    /// Registers and returns the node and its `Registered`.
    async fn connect(hub: &Arc<NodeHub>, reg: pb::Register) -> (FakeNode, pb::Registered) {
        let mut node = open(
            hub,
            pb::NodeMessage {
                body: Some(pb::node_message::Body::Register(reg)),
            },
        )
        .await
        .unwrap();
        match node.next().await {
            Some(Ok(pb::EngineMessage {
                body: Some(pb::engine_message::Body::Registered(r)),
            })) => (node, r),
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    fn action(kind: pb::ActionKind) -> NodeAction {
        NodeAction {
            kind,
            instance: pb::InstanceSpec {
                uuid: Uuid::new_v4().to_string(),
                name: "instance-x".into(),
                ..Default::default()
            },
            hard: false,
            snapshot_name: String::new(),
            request_id: "req-1".into(),
        }
    }

    fn pending_actions(hub: &NodeHub, host: &Uuid) -> usize {
        hub.nodes
            .get(host)
            .and_then(|n| n.link.lock().conn.as_ref().map(|c| c.pending.len()))
            .unwrap_or(0)
    }

    /// Polls `cond` every 10 ms for up to 5 s.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[derive(Default)]
    struct FakeReconciler {
        report: ReconcileReport,
        registered: Mutex<Vec<(Uuid, Vec<pb::DomainReport>)>>,
        heartbeats: Mutex<Vec<(Uuid, Vec<pb::DomainReport>)>>,
    }

    impl Reconciler for FakeReconciler {
        fn node_registered(&self, host: Uuid, domains: &[pb::DomainReport]) -> ReconcileReport {
            self.registered.lock().push((host, domains.to_vec()));
            self.report.clone()
        }
        fn node_heartbeat(&self, host: Uuid, domains: &[pb::DomainReport]) {
            self.heartbeats.lock().push((host, domains.to_vec()));
        }
    }

    #[tokio::test]
    async fn registration_creates_the_provider() {
        let (engine, hub) = hub();
        let (_node, reg) = connect(&hub, register("cn-1")).await;
        let uuid = Uuid::parse_str(&reg.provider_uuid).unwrap();
        assert_eq!(reg.down_after_ms, 3000, "3 × the heartbeat interval");
        assert!(reg.orphans.is_empty() && reg.missing.is_empty() && reg.warnings.is_empty());
        let p = engine.get_provider(&uuid).unwrap();
        assert_eq!(p.name, "cn-1");
        assert!(p.up);
        assert_eq!(
            p.availability_zone,
            engine.config().default_availability_zone
        );
        assert_eq!(p.traits, ["CUSTOM_SSD", "HW_CPU_X86_AVX2"]);
        let vcpu = p.usages.iter().find(|u| u.class == "VCPU").unwrap();
        assert_eq!(vcpu.inventory, Inventory::new(16).reserved(1).ratio(4.0));
        assert_eq!(vcpu.capacity, 60);
        let mem = p.usages.iter().find(|u| u.class == "MEMORY_MB").unwrap();
        assert_eq!(mem.inventory, Inventory::new(32768), "Placement's defaults");
        assert_eq!(p.usages.len(), 3);
        assert_eq!(p.arch.as_deref(), Some("x86_64"));
        assert_eq!(p.hypervisor_type.as_deref(), Some("qemu"));
        assert_eq!(p.hypervisor_version.as_deref(), Some("8.0.0"));
        assert_eq!(p.capabilities[CAP_HV_TYPE], "qemu");
        assert_eq!(p.capabilities[CAP_ARCH], "x86_64");
        assert!(hub.is_connected(&uuid));
        assert!(hub.live_migration(&uuid));
        assert_eq!(hub.connected_nodes(), 1);
        assert!(!hub.is_connected(&Uuid::new_v4()));
        assert!(!hub.live_migration(&Uuid::new_v4()));
    }

    #[tokio::test]
    async fn configured_down_after_wins() {
        let (_, hub) = hub_with(ComputeConfig {
            down_after_seconds: 7,
            ..ComputeConfig::default()
        });
        let (_node, reg) = connect(&hub, register("cn-1")).await;
        assert_eq!(reg.down_after_ms, 7000);
    }

    #[tokio::test]
    async fn reregistration_replaces_node_data_and_keeps_operator_traits() {
        let (engine, hub) = hub();
        let (mut first, reg) = connect(&hub, register("cn-1")).await;
        let uuid = Uuid::parse_str(&reg.provider_uuid).unwrap();
        // The operator disables the host and adds a trait of their own.
        let mut traits = engine.get_provider(&uuid).unwrap().traits;
        traits.push(DISABLED_TRAIT.into());
        traits.push("CUSTOM_OPERATOR".into());
        engine.set_traits(&uuid, None, &traits).unwrap();
        engine
            .update_provider(
                &uuid,
                None,
                ProviderUpdate {
                    capabilities: Some(BTreeMap::from([("owner".into(), "ops".into())])),
                    ..Default::default()
                },
            )
            .unwrap();

        let mut again = register("cn-1");
        again.availability_zone = "az2".into();
        again.traits = vec!["CUSTOM_NVME".into(), "HW_CPU_X86_AVX2".into()];
        again.inventories = vec![inv("VCPU", 8), inv("MEMORY_MB", 16384)];
        again.live_migration = false;
        let (_second, reg2) = connect(&hub, again).await;
        assert_eq!(reg2.provider_uuid, reg.provider_uuid, "found by name");
        assert!(reg2.warnings.is_empty(), "{:?}", reg2.warnings);

        let p = engine.get_provider(&uuid).unwrap();
        assert_eq!(
            p.traits,
            [
                DISABLED_TRAIT,
                "CUSTOM_NVME",
                "CUSTOM_OPERATOR",
                "HW_CPU_X86_AVX2"
            ],
            "CUSTOM_SSD (dropped by the node) is gone; the operator's traits survive"
        );
        assert!(p.disabled);
        assert_eq!(p.availability_zone, "az2");
        assert_eq!(p.capabilities["owner"], "ops");
        assert_eq!(p.capabilities[CAP_HV_TYPE], "qemu");
        let classes: Vec<_> = p.usages.iter().map(|u| u.class.as_str()).collect();
        assert_eq!(classes, ["VCPU", "MEMORY_MB"]);
        assert_eq!(p.usages[0].inventory.total, 8);
        assert!(!hub.live_migration(&uuid));

        // The second stream replaced the first.
        let status = first
            .closed()
            .await
            .expect("the old stream ends with a status");
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(status.message().contains("replaced"), "{status:?}");
        assert_eq!(hub.connected_nodes(), 1);
        assert!(hub.is_connected(&uuid));
    }

    #[tokio::test]
    async fn operator_trait_sent_by_a_node_is_ignored_with_a_warning() {
        let (engine, hub) = hub();
        let mut r = register("cn-1");
        r.traits.push(DISABLED_TRAIT.into());
        let (_node, reg) = connect(&hub, r).await;
        assert!(reg.warnings.iter().any(|w| w.contains(DISABLED_TRAIT)));
        let p = engine
            .get_provider(&Uuid::parse_str(&reg.provider_uuid).unwrap())
            .unwrap();
        assert!(!p.disabled);
    }

    #[tokio::test]
    async fn changed_hypervisor_attributes_are_applied() {
        let (engine, hub) = hub();
        let (_a, reg) = connect(&hub, register("cn-1")).await;
        let mut r = register("cn-1");
        r.hypervisor_version = "9.1.0".into();
        r.arch = "aarch64".into();
        let (_b, reg2) = connect(&hub, r).await;
        assert!(reg2.warnings.is_empty(), "{:?}", reg2.warnings);
        let p = engine
            .get_provider(&Uuid::parse_str(&reg.provider_uuid).unwrap())
            .unwrap();
        assert_eq!(p.capabilities[CAP_HV_VERSION], "9.1.0");
        // The typed fields the image-properties filter reads follow too.
        assert_eq!(p.hypervisor_version.as_deref(), Some("9.1.0"));
        assert_eq!(p.arch.as_deref(), Some("aarch64"));
    }

    #[tokio::test]
    async fn inventory_in_use_is_kept_with_a_warning() {
        let (engine, hub) = hub();
        let (_a, reg) = connect(&hub, register("cn-1")).await;
        let uuid = Uuid::parse_str(&reg.provider_uuid).unwrap();
        engine
            .replace_allocations(
                &Uuid::new_v4(),
                AllocationRequest {
                    consumer_generation: None,
                    project_id: "p".into(),
                    user_id: "u".into(),
                    allocations: vec![Allocation {
                        provider: uuid,
                        resources: vec![("DISK_GB".into(), 100), ("MEMORY_MB".into(), 4096)],
                    }],
                },
            )
            .unwrap();
        let mut r = register("cn-1");
        // DISK_GB disappears although in use; MEMORY_MB shrinks below its usage.
        r.inventories = vec![inv("VCPU", 16), inv("MEMORY_MB", 2048)];
        let (_b, reg2) = connect(&hub, r).await;
        assert!(
            reg2.warnings.iter().any(|w| w.contains("DISK_GB")),
            "{:?}",
            reg2.warnings
        );
        assert!(
            reg2.warnings.iter().any(|w| w.contains("MEMORY_MB")),
            "{:?}",
            reg2.warnings
        );
        let p = engine.get_provider(&uuid).unwrap();
        let total = |c: &str| {
            p.usages
                .iter()
                .find(|u| u.class == c)
                .map(|u| u.inventory.total)
        };
        assert_eq!(total("DISK_GB"), Some(500), "kept");
        assert_eq!(total("MEMORY_MB"), Some(2048), "replaced");
        assert_eq!(total("VCPU"), Some(16));
    }

    #[tokio::test]
    async fn bad_first_messages_are_invalid_argument() {
        let (engine, hub) = hub();
        let heartbeat = pb::NodeMessage {
            body: Some(pb::node_message::Body::Heartbeat(pb::Heartbeat::default())),
        };
        let e = open(&hub, heartbeat).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("first message must be register"),
            "{e:?}"
        );
        let e = open(&hub, pb::NodeMessage { body: None })
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        // A stream that ends before saying anything.
        let (tx, rx) = mpsc::channel::<std::result::Result<pb::NodeMessage, Status>>(1);
        drop(tx);
        let e = hub.connect(ReceiverStream::new(rx)).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let cases: Vec<(pb::Register, &str)> = vec![
            (
                pb::Register {
                    name: String::new(),
                    ..register("x")
                },
                "register.name",
            ),
            (
                pb::Register {
                    name: "n".repeat(201),
                    ..register("x")
                },
                "register.name",
            ),
            (
                pb::Register {
                    heartbeat_interval_ms: 99,
                    ..register("x")
                },
                "register.heartbeat_interval_ms",
            ),
            (
                pb::Register {
                    traits: vec!["lower".into()],
                    ..register("x")
                },
                "register.traits[0]",
            ),
            (
                pb::Register {
                    inventories: vec![inv("VCPU", 0)],
                    ..register("x")
                },
                "register.inventories[VCPU].total",
            ),
            (
                pb::Register {
                    inventories: vec![inv("GPU", 1)],
                    ..register("x")
                },
                "register.inventories[0].resource_class",
            ),
            (
                pb::Register {
                    inventories: vec![inv("VCPU", 1), inv("VCPU", 2)],
                    ..register("x")
                },
                "register.inventories[VCPU]",
            ),
            (
                pb::Register {
                    inventories: vec![pb::Inventory {
                        allocation_ratio: f64::NAN,
                        ..inv("VCPU", 4)
                    }],
                    ..register("x")
                },
                "register.inventories[VCPU].allocation_ratio",
            ),
            (
                pb::Register {
                    availability_zone: "a:b".into(),
                    ..register("x")
                },
                "register.availability_zone",
            ),
            (
                pb::Register {
                    hypervisor_version: "eight".into(),
                    ..register("x")
                },
                "register.hypervisor_version",
            ),
        ];
        for (reg, field) in cases {
            let msg = pb::NodeMessage {
                body: Some(pb::node_message::Body::Register(reg)),
            };
            let e = open(&hub, msg).await.err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
            assert!(e.message().contains(field), "{field}: {e:?}");
        }
        assert_eq!(engine.provider_count(), 0, "nothing was registered");
        assert_eq!(hub.connected_nodes(), 0);
    }

    #[tokio::test]
    async fn register_twice_on_one_stream_ends_it() {
        let (engine, hub) = hub();
        let (mut node, reg) = connect(&hub, register("cn-1")).await;
        node.send(pb::node_message::Body::Register(register("cn-1")))
            .await;
        let status = node.closed().await.expect("ends with a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let uuid = Uuid::parse_str(&reg.provider_uuid).unwrap();
        assert!(!hub.is_connected(&uuid));
        assert!(
            engine.get_provider(&uuid).unwrap().up,
            "not marked down at once"
        );
    }

    #[tokio::test]
    async fn dispatch_round_trip() {
        let (_, hub) = hub();
        let (mut node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let mut act = action(pb::ActionKind::Reboot);
        act.hard = true;
        let call = {
            let hub = hub.clone();
            let act = act.clone();
            tokio::spawn(async move { hub.dispatch(host, act, Duration::from_secs(5)).await })
        };
        let sent = node.next_action().await;
        assert_eq!(sent.kind, pb::ActionKind::Reboot as i32);
        assert!(sent.hard);
        assert_eq!(sent.request_id, "req-1");
        assert_eq!(sent.instance.as_ref(), Some(&act.instance));
        assert!(Uuid::parse_str(&sent.action_id).is_ok());
        node.answer(&sent.action_id, true).await;
        let outcome = call.await.unwrap().unwrap();
        assert!(outcome.ok);
        assert_eq!(outcome.power_state, "RUNNING");
        assert_eq!(pending_actions(&hub, &host), 0);

        // A failed action is an outcome, not a dispatch error.
        let call = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch(host, action(pb::ActionKind::Stop), Duration::from_secs(5))
                    .await
            })
        };
        let sent = node.next_action().await;
        node.answer(&sent.action_id, false).await;
        let outcome = call.await.unwrap().unwrap();
        assert!(!outcome.ok);
        assert_eq!(outcome.error_code, "DRIVER");
        assert_eq!(outcome.message, "boom");
    }

    #[tokio::test]
    async fn dispatch_to_an_unknown_or_gone_host_is_not_connected() {
        let (_, hub) = hub();
        let e = hub
            .dispatch(
                Uuid::new_v4(),
                action(pb::ActionKind::Start),
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, DispatchError::NotConnected { .. }), "{e:?}");

        let (node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        drop(node);
        eventually("the stream end is noticed", || !hub.is_connected(&host)).await;
        let e = hub
            .dispatch(host, action(pb::ActionKind::Start), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            DispatchError::NotConnected {
                host: "cn-1".into()
            }
        );
    }

    #[tokio::test]
    async fn dispatch_times_out_and_a_late_answer_is_ignored() {
        let (_, hub) = hub();
        let (mut node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let e = hub
            .dispatch(
                host,
                action(pb::ActionKind::Pause),
                Duration::from_millis(100),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DispatchError::Timeout { host, action, .. } if host == "cn-1" && action == "pause"),
            "{e:?}"
        );
        assert_eq!(pending_actions(&hub, &host), 0, "the pending entry is gone");
        let sent = node.next_action().await;
        node.answer(&sent.action_id, true).await;
        node.answer("not-a-uuid", true).await;
        // The stream survives late and unknown answers.
        let call = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch(
                    host,
                    action(pb::ActionKind::Unpause),
                    Duration::from_secs(5),
                )
                .await
            })
        };
        let sent = node.next_action().await;
        node.answer(&sent.action_id, true).await;
        assert!(call.await.unwrap().unwrap().ok);
    }

    #[tokio::test]
    async fn a_cancelled_dispatch_leaves_nothing_pending() {
        let (_, hub) = hub();
        let (mut node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let call = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch(host, action(pb::ActionKind::Stop), Duration::from_secs(60))
                    .await
            })
        };
        node.next_action().await;
        assert_eq!(pending_actions(&hub, &host), 1);
        call.abort();
        let _ = call.await;
        assert_eq!(pending_actions(&hub, &host), 0);
    }

    #[tokio::test]
    async fn disconnect_fails_outstanding_actions() {
        let (engine, hub) = hub();
        let (mut node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let calls: Vec<_> = [pb::ActionKind::Stop, pb::ActionKind::Suspend]
            .into_iter()
            .map(|k| {
                let hub = hub.clone();
                tokio::spawn(
                    async move { hub.dispatch(host, action(k), Duration::from_secs(30)).await },
                )
            })
            .collect();
        node.next_action().await;
        node.next_action().await;
        drop(node);
        for call in calls {
            let e = call.await.unwrap().unwrap_err();
            assert!(
                matches!(&e, DispatchError::Disconnected { host, .. } if host == "cn-1"),
                "{e:?}"
            );
        }
        assert!(!hub.is_connected(&host));
        assert_eq!(hub.connected_nodes(), 0);
        assert!(
            engine.get_provider(&host).unwrap().up,
            "a broken stream alone does not mark the host down"
        );
    }

    #[tokio::test]
    async fn replacement_fails_the_old_streams_actions() {
        let (_, hub) = hub();
        let (mut old, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let call = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch(host, action(pb::ActionKind::Stop), Duration::from_secs(30))
                    .await
            })
        };
        let sent = old.next_action().await;
        let (mut new, _) = connect(&hub, register("cn-1")).await;
        let e = call.await.unwrap().unwrap_err();
        assert!(matches!(e, DispatchError::Disconnected { .. }), "{e:?}");
        assert_eq!(
            old.closed().await.map(|s| s.code()),
            Some(tonic::Code::Aborted)
        );
        // An answer on the old stream after the replacement goes nowhere.
        let _ = old
            .tx
            .send(Ok(pb::NodeMessage {
                body: Some(pb::node_message::Body::ActionResult(pb::ActionResult {
                    action_id: sent.action_id,
                    ok: true,
                    ..Default::default()
                })),
            }))
            .await;
        // The new stream works.
        let call = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch(host, action(pb::ActionKind::Start), Duration::from_secs(5))
                    .await
            })
        };
        let sent = new.next_action().await;
        new.answer(&sent.action_id, true).await;
        assert!(call.await.unwrap().unwrap().ok);
        assert_eq!(hub.connected_nodes(), 1);
    }

    #[tokio::test]
    async fn silent_host_goes_down_and_comes_back_on_heartbeat() {
        let (engine, hub) = hub();
        let monitor = hub.spawn_liveness_monitor();
        let mut r = register("cn-1");
        r.heartbeat_interval_ms = 100; // down_after = 300 ms
        let (node, reg) = connect(&hub, r).await;
        assert_eq!(reg.down_after_ms, 300);
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let up = || engine.get_provider(&host).unwrap().up;
        eventually("the silent host is marked down", || !up()).await;
        node.heartbeat(true, Vec::new()).await;
        eventually("a heartbeat brings it back", up).await;

        monitor.abort();
    }

    #[tokio::test]
    async fn restored_hosts_go_down_unless_their_node_comes_back() {
        let engine = Arc::new(Engine::new(EngineConfig::default()).unwrap());
        let config = ComputeConfig {
            down_after_seconds: 1,
            ..ComputeConfig::default()
        };
        // Before the restart: two nodes registered, and a host made through the API.
        {
            let before = NodeHub::new(engine.clone(), config.clone());
            let _gone = connect(&before, register("cn-gone")).await;
            let _back = connect(&before, register("cn-back")).await;
        }
        let api = engine
            .create_provider(ProviderSpec::new("api-host").inventory("VCPU", Inventory::new(4)))
            .unwrap()
            .uuid;
        // The restart: a new hub over the same hosts, all up, no streams. (An engine
        // without a store does not do this by itself.)
        let started = Instant::now();
        let hub = NodeHub::new(engine.clone(), config);
        assert_eq!(hub.nodes.len(), 0);
        assert_eq!(
            hub.expect_restored_nodes(),
            2,
            "the API host is not expected"
        );
        let host = |name: &str| engine.resolve_host(name).unwrap();
        let (gone, back) = (host("cn-gone"), host("cn-back"));
        let up = |u: &Uuid| engine.get_provider(u).unwrap().up;
        assert!(up(&gone) && up(&back) && up(&api));
        assert!(!hub.is_connected(&gone), "expected, not connected");
        let monitor = hub.spawn_liveness_monitor();
        // cn-back's node reconnects and heartbeats; cn-gone's never comes back.
        let (node, reg) = connect(&hub, register("cn-back")).await;
        assert_eq!(reg.provider_uuid, back.to_string(), "the same host");
        let tx = node.tx.clone();
        let beats = tokio::spawn(async move {
            loop {
                let hb = pb::node_message::Body::Heartbeat(pb::Heartbeat {
                    seq: 1,
                    healthy: true,
                    ..Default::default()
                });
                if tx
                    .send(Ok(pb::NodeMessage { body: Some(hb) }))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        eventually("cn-gone goes down", || !up(&gone)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1),
            "down after {waited:?}, before its down_after of 1 s"
        );
        assert!(up(&back), "its node is back and heartbeating");
        assert!(up(&api), "no node is expected for an API host");
        beats.abort();
        monitor.abort();
    }

    #[tokio::test]
    async fn unhealthy_host_is_down_until_healthy() {
        let (engine, hub) = hub();
        let (node, reg) = connect(&hub, register("cn-1")).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        let up = || engine.get_provider(&host).unwrap().up;
        node.heartbeat(false, Vec::new()).await;
        eventually("unhealthy → down", || !up()).await;
        node.heartbeat(false, Vec::new()).await;
        node.heartbeat(true, Vec::new()).await;
        eventually("healthy → up", up).await;
    }

    #[tokio::test]
    async fn reconciler_hears_registrations_and_heartbeats() {
        let (engine, hub) = hub();
        let orphan = Uuid::new_v4();
        let missing = Uuid::new_v4();
        let evacuated = Uuid::new_v4();
        let rec = Arc::new(FakeReconciler {
            report: ReconcileReport {
                orphans: vec![orphan],
                missing: vec![missing],
                to_delete: vec![evacuated],
            },
            ..Default::default()
        });
        hub.set_reconciler(rec.clone());
        let domains = vec![
            domain(orphan, "stray"),
            domain(evacuated, "instance-evacuated"),
        ];
        let mut r = register("cn-1");
        r.domains = domains.clone();
        let (mut node, reg) = connect(&hub, r).await;
        let host = Uuid::parse_str(&reg.provider_uuid).unwrap();
        assert_eq!(reg.orphans, [orphan.to_string()]);
        assert_eq!(reg.missing, [missing.to_string()]);
        assert_eq!(*rec.registered.lock(), [(host, domains.clone())]);

        // The evacuated server's domain gets a DELETE.
        let del = node.next_action().await;
        assert_eq!(del.kind, pb::ActionKind::Delete as i32);
        let inst = del.instance.clone().unwrap();
        assert_eq!(inst.uuid, evacuated.to_string());
        assert_eq!(inst.name, "instance-evacuated");
        node.answer(&del.action_id, true).await;

        node.heartbeat(true, domains[..1].to_vec()).await;
        eventually("the heartbeat reaches the reconciler", || {
            !rec.heartbeats.lock().is_empty()
        })
        .await;
        assert_eq!(*rec.heartbeats.lock(), [(host, domains[..1].to_vec())]);
        assert!(engine.get_provider(&host).unwrap().up);
    }

    #[tokio::test]
    async fn a_recreated_provider_supersedes_the_old_entry() {
        let (engine, hub) = hub();
        let (mut old, reg) = connect(&hub, register("cn-1")).await;
        let old_uuid = Uuid::parse_str(&reg.provider_uuid).unwrap();
        engine.delete_provider(&old_uuid).unwrap();
        let (_new, reg2) = connect(&hub, register("cn-1")).await;
        let new_uuid = Uuid::parse_str(&reg2.provider_uuid).unwrap();
        assert_ne!(old_uuid, new_uuid);
        assert_eq!(
            old.closed().await.map(|s| s.code()),
            Some(tonic::Code::Aborted)
        );
        assert!(!hub.is_connected(&old_uuid));
        assert!(hub.is_connected(&new_uuid));
        assert_eq!(hub.connected_nodes(), 1);
    }
}
