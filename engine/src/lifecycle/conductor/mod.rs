//! The conductor: servers and their lifecycle (Nova's compute API + conductor roles).
//!
//! - [`server`]: the server record, its states and the instance spec sent to nodes.
//! - `create`: CreateServer — schedule and claim all servers at once, spawn each, retry a
//!   failed spawn on another host up to `max_attempts`.
//! - `actions`: the actions that stay on the server's host (power, snapshot, rebuild,
//!   shelve, lock) and delete.
//! - `moves`: resize, cold and live migration, confirm/revert, evacuation.
//! - `reconcile`: the [`Reconciler`](crate::lifecycle::Reconciler) side — what nodes
//!   report corrects the servers.
//! - `idempotency`: answers by request id.
//!
//! Every action follows one pattern: under the server's lock, check the request id, the
//! lock flag, the task in progress and the vm_state, then set the task_state (the
//! "check-and-set" that makes a second action wait its turn); release the lock; talk to the
//! nodes and the engine; re-lock to apply the result, clear the task and store the answer.
//! The work runs in its own tokio task, so a client that hangs up mid-action cannot leave a
//! server stuck with a task_state set. A node that never answers (its stream broke or timed
//! out) leaves the outcome unknown: the task is cleared, the vm_state kept until the host
//! reports, and the request id left *unresolved* rather than answered (see `unresolved`).
//!
//! Locks: each server's `parking_lot::Mutex` is held for microseconds and never across an
//! `.await`. While holding one, code may touch the leaf maps (`servers`, `by_host`) and call
//! the engine, but never lock another server. Code that walks a map clones the `Arc`s out
//! and drops the map's guard before locking any server.

/// Unpacks [`Start`]: the begun action and its plan, or returns a repeated request's answer.
macro_rules! go {
    ($start:expr) => {
        match $start? {
            $crate::lifecycle::conductor::Start::Go(b, plan) => (b, plan),
            $crate::lifecycle::conductor::Start::Answer(a) => return Ok(*a),
        }
    };
}

mod actions;
mod create;
#[cfg(test)]
pub(crate) mod fake_dispatcher;
mod idempotency;
mod moves;
mod persist;
mod reconcile;
pub mod server;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_proto::v1 as pb;
use dashmap::DashMap;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{ActionOutcome, ComputeConfig, DispatchError, Dispatcher, NodeAction};
use crate::error::EngineError;
use crate::model::ProviderInfo;
use crate::{DISABLED_TRAIT, Engine, HostChoice};
use idempotency::{Lookup, RequestLog};
pub use server::{
    ActionRecord, ActionReply, MoveInfo, Server, TaskState, VmState, task_state_name, vm_state_name,
};
use server::{ServerRecord, StoredReply, state_list};

/// Longest request id accepted (the contract's limit).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Most servers `evacuate_host` moves at once.
const EVACUATE_CONCURRENCY: usize = 8;
/// Deletes remembered (server, request id) for idempotency after the server is forgotten.
const REMEMBERED_DELETES: usize = 4096;
/// Retries of a provider trait update that lost a generation race.
const TRAIT_RETRIES: usize = 8;

/// Why a conductor call failed. Mapped to a gRPC status in one place (`api::servers`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConductorError {
    /// A field breaks a rule (INVALID_ARGUMENT).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field's name.
        field: String,
        /// The rule it broke.
        reason: String,
    },
    /// No such server (NOT_FOUND).
    #[error("server {0} not found")]
    ServerNotFound(Uuid),
    /// The action is not valid from the server's vm_state (FAILED_PRECONDITION).
    #[error(
        "cannot {action} server {server}: its vm_state is {}; {action} accepts {}",
        vm_state_name(*.vm_state),
        state_list(.accepts)
    )]
    InvalidState {
        /// The server.
        server: Uuid,
        /// The refused action.
        action: &'static str,
        /// Its current vm_state.
        vm_state: VmState,
        /// The states the action accepts.
        accepts: &'static [VmState],
    },
    /// Another task is in progress (FAILED_PRECONDITION).
    #[error(
        "cannot {action} server {server}: task_state {} is in progress; retry when it is NONE",
        task_state_name(*.task_state)
    )]
    TaskInProgress {
        /// The server.
        server: Uuid,
        /// The refused action.
        action: &'static str,
        /// The task in progress.
        task_state: TaskState,
    },
    /// The server is locked (FAILED_PRECONDITION).
    #[error("cannot {action} server {server}: it is locked{}; unlock it first", if .reason.is_empty() { String::new() } else { format!(" ({})", .reason) })]
    Locked {
        /// The server.
        server: Uuid,
        /// The refused action.
        action: &'static str,
        /// Why it was locked.
        reason: String,
    },
    /// Some other state forbids it (FAILED_PRECONDITION): a host that is up for an
    /// evacuation, a hypervisor that cannot live-migrate, a server without a host.
    #[error("{0}")]
    Precondition(String),
    /// The host has no connected compute node, or its node failed to act (UNAVAILABLE:
    /// retry later).
    #[error("{0}")]
    Unavailable(String),
    /// The engine refused (mapped as the engine's errors are: NOT_FOUND for an unknown
    /// flavor, RESOURCE_EXHAUSTED with details for no valid host, ...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bug or an abandoned operation (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl ConductorError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of conductor calls.
pub type Result<T, E = ConductorError> = std::result::Result<T, E>;

/// Ids a mutating call carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallIds {
    /// Idempotency key (empty: not idempotent); at most [`MAX_REQUEST_ID_CHARS`].
    pub request_id: String,
    /// The call's trace id (the `x-request-id` of its gRPC call), for node logs; the
    /// request id is used when empty.
    pub trace_id: String,
}

impl CallIds {
    /// Ids with an idempotency key only.
    pub fn request(id: impl Into<String>) -> Self {
        Self {
            request_id: id.into(),
            trace_id: String::new(),
        }
    }

    fn for_node(&self) -> &str {
        if self.trace_id.is_empty() {
            &self.request_id
        } else {
            &self.trace_id
        }
    }

    fn validate(&self) -> Result<()> {
        let n = self.request_id.chars().count();
        if n > MAX_REQUEST_ID_CHARS {
            return Err(ConductorError::invalid(
                "request_id",
                format!("is {n} characters long; at most {MAX_REQUEST_ID_CHARS}"),
            ));
        }
        Ok(())
    }

    /// The ids of one part of a bigger call (a server of an EvacuateHost).
    fn part(&self, of: &Uuid) -> Self {
        Self {
            request_id: if self.request_id.is_empty() {
                String::new()
            } else {
                format!("{}/{of}", self.request_id)
            },
            trace_id: self.trace_id.clone(),
        }
    }
}

/// What CreateServer asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Display name; with `count` > 1 the servers are `<name>-1`, `<name>-2`, ...
    pub name: String,
    /// Flavor id or name.
    pub flavor: String,
    /// Image id or name.
    pub image: String,
    /// Server group uuid or name.
    pub group: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Servers to create; 0 means 1.
    pub count: u32,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// Traits every chosen host must have.
    pub required_traits: Vec<String>,
    /// Traits no chosen host may have.
    pub forbidden_traits: Vec<String>,
    /// Only these hosts (uuids or names).
    pub force_hosts: Vec<String>,
}

/// One server action (the `ServerActionRequest` oneof).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Power off.
    Stop,
    /// Power on.
    Start,
    /// Reboot; `hard` power-cycles.
    Reboot {
        /// Power-cycle instead of asking the guest.
        hard: bool,
    },
    /// Freeze the vCPUs.
    Pause,
    /// Thaw them.
    Unpause,
    /// Save memory to disk and stop.
    Suspend,
    /// Restore saved memory.
    Resume,
    /// Snapshot into a new image record.
    Snapshot {
        /// Name of the new image record.
        image_name: String,
    },
    /// Rebuild from an image on the same host.
    Rebuild {
        /// Image id or name; `None` keeps the current image.
        image: Option<String>,
    },
    /// Stop and snapshot, keeping the host's resources.
    Shelve,
    /// Remove a shelved server from its host, releasing its resources.
    ShelveOffload,
    /// Bring a shelved server back.
    Unshelve,
    /// Change flavor on another host.
    Resize {
        /// New flavor id or name.
        flavor: String,
    },
    /// Keep a resize or migration.
    ConfirmResize,
    /// Undo a resize or migration.
    RevertResize,
    /// Cold-migrate.
    Migrate {
        /// Destination (uuid or name); the scheduler chooses when `None`.
        host: Option<String>,
    },
    /// Live-migrate.
    LiveMigrate {
        /// Destination (uuid or name); the scheduler chooses when `None`.
        host: Option<String>,
    },
    /// Rebuild elsewhere because the host is down.
    Evacuate {
        /// Destination (uuid or name); the scheduler chooses when `None`.
        host: Option<String>,
    },
    /// Refuse every action but unlock.
    Lock {
        /// Why.
        reason: String,
    },
    /// Allow actions again.
    Unlock,
}

impl Action {
    /// The action's name in the history and in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Reboot { .. } => "reboot",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Snapshot { .. } => "snapshot",
            Self::Rebuild { .. } => "rebuild",
            Self::Shelve => "shelve",
            Self::ShelveOffload => "shelve_offload",
            Self::Unshelve => "unshelve",
            Self::Resize { .. } => "resize",
            Self::ConfirmResize => "confirm_resize",
            Self::RevertResize => "revert_resize",
            Self::Migrate { .. } => "migrate",
            Self::LiveMigrate { .. } => "live_migrate",
            Self::Evacuate { .. } => "evacuate",
            Self::Lock { .. } => "lock",
            Self::Unlock => "unlock",
        }
    }
}

/// ListServers filters (all optional, ANDed).
#[derive(Debug, Clone, Default)]
pub struct ServerFilter {
    /// Only servers on this host (provider uuid).
    pub host: Option<Uuid>,
    /// Only this project's servers.
    pub project_id: Option<String>,
    /// Only servers in this state.
    pub vm_state: Option<VmState>,
}

/// What evacuating one server of a host came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvacuationResult {
    /// The server.
    pub uuid: Uuid,
    /// It now runs elsewhere.
    pub ok: bool,
    /// Where it went, or why not.
    pub message: String,
}

type Rec = Arc<persist::ServerCell>;
type EvacuationLog = RequestLog<Vec<EvacuationResult>, Vec<EvacuationResult>>;

/// The servers and their state machine. Share it as `Arc<Conductor>`.
pub struct Conductor {
    engine: Arc<Engine>,
    dispatcher: Arc<dyn Dispatcher>,
    config: ComputeConfig,
    /// Every server. Each behind its own `parking_lot::Mutex`: critical sections are a few
    /// field updates and never await, and one lock per server lets actions on different
    /// servers run in parallel.
    servers: DashMap<Uuid, Rec>,
    /// host → servers on it (while RESIZED: on the destination), so a heartbeat looks at
    /// its host's servers only. Updated under the server's lock whenever its host changes.
    by_host: DashMap<Uuid, HashMap<Uuid, Rec>>,
    /// project → recent CreateServer request ids.
    creates: DashMap<String, RequestLog<Vec<Server>, Vec<Server>>>,
    /// host → recent EvacuateHost request ids.
    evacuations: DashMap<Uuid, EvacuationLog>,
    /// Recently deleted (server, request id), so a repeated delete answers as the first.
    /// A plain mutex: pushed once per delete, read once per delete of an unknown server.
    /// Changes to it and to `local_deleted` are logged under it (`log_deleted`), so both
    /// survive a restart.
    deleted: Mutex<VecDeque<(Uuid, String)>>,
    /// Servers deleted while their node was not connected → that host. Their domain may
    /// still exist; the host's next registration asks for its deletion.
    local_deleted: DashMap<Uuid, Uuid>,
    /// Creation sequence numbers.
    seq: AtomicU64,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor")
            .field("servers", &self.servers.len())
            .field("hosts", &self.by_host.len())
            .finish_non_exhaustive()
    }
}

/// Why a node action did not succeed.
#[derive(Debug, Clone)]
pub(crate) struct NodeFailure {
    /// For the history: `spawn on host-a failed: DRIVER: ...`.
    pub message: String,
    /// The node's error code (`NOT_FOUND`, ...); empty for a dispatch error.
    pub code: String,
    /// No node was connected: nothing ran.
    pub not_connected: bool,
    /// Timeout or broken stream: the action may have run.
    pub maybe_ran: bool,
}

impl NodeFailure {
    /// The node answered (with an error): the outcome is known. Otherwise no node took the
    /// action or none answered it, and the call ends unresolved (see `Conductor::unresolved`).
    pub fn answered(&self) -> bool {
        !self.not_connected && !self.maybe_ran
    }
}

/// An action that passed its checks and holds the server's task_state.
pub(crate) struct Begun {
    rec: Rec,
    uuid: Uuid,
    hist: usize,
    action: &'static str,
    ids: CallIds,
}

/// What `begin` decided.
pub(crate) enum Start<P> {
    /// Go ahead with the plan.
    Go(Begun, P),
    /// A repeated request: its answer.
    Answer(Box<ActionReply>),
}

fn count(action: &'static str, result: &'static str) {
    metrics::counter!("berth_server_actions_total", "action" => action, "result" => result)
        .increment(1);
}

/// Lower-case name of a node action (`spawn`).
pub(crate) fn kind_name(kind: pb::ActionKind) -> String {
    let full = kind.as_str_name();
    full.strip_prefix("ACTION_KIND_")
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// Runs `f` in its own task, so a caller that goes away does not abandon it half-way.
async fn detach<T: Send + 'static>(
    f: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| ConductorError::Internal(format!("the operation's task failed: {e}")))?
}

impl Conductor {
    /// A conductor over `engine`, driving hosts through `dispatcher`.
    pub fn new(
        engine: Arc<Engine>,
        dispatcher: Arc<dyn Dispatcher>,
        config: ComputeConfig,
    ) -> Arc<Conductor> {
        Arc::new(Conductor {
            engine,
            dispatcher,
            config,
            servers: DashMap::new(),
            by_host: DashMap::new(),
            creates: DashMap::new(),
            evacuations: DashMap::new(),
            deleted: Mutex::new(VecDeque::new()),
            local_deleted: DashMap::new(),
            seq: AtomicU64::new(0),
        })
    }

    /// The engine it schedules with.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Creates servers: validates, schedules and claims all of them (RESOURCE_EXHAUSTED
    /// and nothing created if they cannot all be placed), spawns each, retrying a failed
    /// spawn on another host up to the scheduler's `max_attempts`. Returns the servers,
    /// ACTIVE or ERROR. Idempotent by (project, request id).
    pub async fn create(self: &Arc<Self>, req: CreateRequest, ids: CallIds) -> Result<Vec<Server>> {
        let me = self.clone();
        detach(async move { me.create_servers(req, ids).await }).await
    }

    /// Runs one action on a server (see [`Action`] and the state table in
    /// `servers.proto`). A node's failure is recorded in the server's history rather than
    /// failing the call. Idempotent by (server, request id). A power action, shelve-offload
    /// or unshelve whose node never answered (it disconnected, or timed out, mid-action)
    /// fails UNAVAILABLE with its outcome unknown; a retry with the same request id then
    /// acts, or is answered as done if the host reported the change meanwhile.
    pub async fn action(
        self: &Arc<Self>,
        uuid: Uuid,
        action: Action,
        ids: CallIds,
    ) -> Result<ActionReply> {
        let me = self.clone();
        detach(async move { me.run_action(uuid, action, ids).await }).await
    }

    /// Deletes a server: its domain(s), its allocations and group membership, and the
    /// record. A host without a connected node does not stop it (Nova's local delete: the
    /// domain is deleted when the node registers again). Refused while locked or while
    /// another task is in progress.
    pub async fn delete(self: &Arc<Self>, uuid: Uuid, ids: CallIds) -> Result<()> {
        let me = self.clone();
        detach(async move { me.delete_server(uuid, ids).await }).await
    }

    /// Evacuates every server of a down host (FAILED_PRECONDITION if it is up), at most
    /// a few at a time; one result per server. Idempotent by (host, request id).
    pub async fn evacuate_host(
        self: &Arc<Self>,
        host: &str,
        ids: CallIds,
    ) -> Result<Vec<EvacuationResult>> {
        let me = self.clone();
        let host = host.to_string();
        detach(async move { me.evacuate_all(&host, ids).await }).await
    }

    /// One server.
    pub fn get(&self, uuid: &Uuid) -> Result<Server> {
        Ok(self.record(uuid)?.lock().server.clone())
    }

    /// The servers matching `filter`, in creation order.
    pub fn list(&self, filter: &ServerFilter) -> Vec<Server> {
        let recs: Vec<Rec> = match &filter.host {
            Some(h) => self
                .by_host
                .get(h)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            None => self.servers.iter().map(|e| e.value().clone()).collect(),
        };
        let mut out: Vec<Server> = recs
            .iter()
            .filter_map(|rec| {
                let r = rec.lock();
                let s = &r.server;
                let keep = !r.deleted
                    && filter
                        .project_id
                        .as_ref()
                        .is_none_or(|p| *p == s.project_id)
                    && filter.vm_state.is_none_or(|v| v == s.vm_state);
                keep.then(|| s.clone())
            })
            .collect();
        out.sort_by_key(|s| s.seq);
        out
    }

    /// Number of servers.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Servers per vm_state (states with none left out), for gauges.
    pub fn counts_by_vm_state(&self) -> BTreeMap<VmState, usize> {
        let recs: Vec<Rec> = self.servers.iter().map(|e| e.value().clone()).collect();
        let mut counts = BTreeMap::new();
        for rec in recs {
            *counts.entry(rec.lock().server.vm_state).or_insert(0) += 1;
        }
        counts
    }

    /// Sets the `berth_servers{vm_state}` gauges (call periodically).
    pub fn publish_gauges(&self) {
        let counts = self.counts_by_vm_state();
        for v in (1..=9).filter_map(|i| VmState::try_from(i).ok()) {
            let n = counts.get(&v).copied().unwrap_or(0);
            metrics::gauge!("berth_servers", "vm_state" => vm_state_name(v)).set(n as f64);
        }
    }

    /// Enables or disables a host for new servers (the `COMPUTE_STATUS_DISABLED` trait);
    /// its servers stay. Returns the provider after the change.
    pub fn set_host_enabled(
        &self,
        host: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<ProviderInfo> {
        let uuid = self
            .engine
            .resolve_host(host)
            .ok_or_else(|| EngineError::not_found("resource provider", host))?;
        for _ in 0..TRAIT_RETRIES {
            let info = self.engine.get_provider(&uuid)?;
            let mut traits = info.traits.clone();
            let has = traits.iter().any(|t| t == DISABLED_TRAIT);
            if has != enabled {
                return Ok(info);
            }
            if enabled {
                traits.retain(|t| t != DISABLED_TRAIT);
            } else {
                traits.push(DISABLED_TRAIT.to_string());
            }
            match self
                .engine
                .set_traits(&uuid, Some(info.generation), &traits)
            {
                Ok(_) => {
                    tracing::info!(host = %info.name, enabled, reason, "host {} {}", info.name, if enabled { "enabled" } else { "disabled" });
                    return Ok(self.engine.get_provider(&uuid)?);
                }
                Err(EngineError::GenerationConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConductorError::Unavailable(format!(
            "host {host} changed {TRAIT_RETRIES} times while its traits were being updated; retry"
        )))
    }

    // ---- shared machinery -------------------------------------------------------------

    fn record(&self, uuid: &Uuid) -> Result<Rec> {
        self.servers
            .get(uuid)
            .map(|r| r.value().clone())
            .ok_or(ConductorError::ServerNotFound(*uuid))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.action_timeout_seconds)
    }

    fn cap(&self) -> usize {
        self.config.remembered_request_ids
    }

    /// Moves `uuid` in the host index.
    fn index_move(&self, uuid: Uuid, rec: &Rec, from: Option<Uuid>, to: Option<Uuid>) {
        if from == to {
            return;
        }
        if let Some(f) = from {
            if let Some(mut m) = self.by_host.get_mut(&f) {
                m.remove(&uuid);
            }
            self.by_host.remove_if(&f, |_, m| m.is_empty());
        }
        if let Some(t) = to {
            self.by_host.entry(t).or_default().insert(uuid, rec.clone());
        }
    }

    /// Sets the server's host, keeping the index in step. Called under the server's lock.
    fn set_host(&self, rec: &Rec, r: &mut ServerRecord, host: Option<HostChoice>) {
        let from = r.server.host.as_ref().map(|h| h.uuid);
        let to = host.as_ref().map(|h| h.uuid);
        self.index_move(r.server.uuid, rec, from, to);
        r.server.host = host;
    }

    /// The server's host, which must have a connected node.
    fn connected_host(&self, s: &Server, action: &str) -> Result<HostChoice> {
        let host = s.host.clone().ok_or_else(|| {
            ConductorError::Precondition(format!(
                "cannot {action} server {}: it has no host",
                s.uuid
            ))
        })?;
        self.require_connected(&host)?;
        Ok(host)
    }

    fn require_connected(&self, host: &HostChoice) -> Result<()> {
        if self.dispatcher.is_connected(&host.uuid) {
            Ok(())
        } else {
            Err(ConductorError::Unavailable(format!(
                "host {} has no connected compute node",
                host.name
            )))
        }
    }

    /// Sends one action to `host`'s node.
    async fn node(
        &self,
        host: &HostChoice,
        kind: pb::ActionKind,
        instance: pb::InstanceSpec,
        ids: &CallIds,
    ) -> Result<ActionOutcome, NodeFailure> {
        self.node_with(host, kind, instance, false, String::new(), ids)
            .await
    }

    async fn node_with(
        &self,
        host: &HostChoice,
        kind: pb::ActionKind,
        instance: pb::InstanceSpec,
        hard: bool,
        snapshot_name: String,
        ids: &CallIds,
    ) -> Result<ActionOutcome, NodeFailure> {
        let action = NodeAction {
            kind,
            instance,
            hard,
            snapshot_name,
            request_id: ids.for_node().to_string(),
        };
        let verb = kind_name(kind);
        match self
            .dispatcher
            .dispatch(host.uuid, action, self.timeout())
            .await
        {
            Ok(o) if o.ok => Ok(o),
            Ok(o) => Err(NodeFailure {
                message: format!(
                    "{verb} on {} failed: {}: {}",
                    host.name, o.error_code, o.message
                ),
                code: o.error_code,
                not_connected: false,
                maybe_ran: false,
            }),
            Err(e) => Err(NodeFailure {
                message: format!("{verb} on {} failed: {e}", host.name),
                code: String::new(),
                not_connected: matches!(e, DispatchError::NotConnected { .. }),
                maybe_ran: !matches!(e, DispatchError::NotConnected { .. }),
            }),
        }
    }

    /// Runs `work` (a spawn, snapshot or rebuild) counted as an I/O operation on `host`,
    /// which the scheduler's io_ops filter reads.
    async fn with_io_op<T>(&self, host: &HostChoice, work: impl Future<Output = T>) -> T {
        let _ = self.engine.track_io_op(&host.uuid, true);
        let out = work.await;
        let _ = self.engine.track_io_op(&host.uuid, false);
        out
    }

    /// Spawns server `uuid`'s domain on `host` (an I/O operation). A failed spawn that may
    /// have run (a timeout) may have left a domain: it is deleted in the background. The
    /// caller gives back the claim on `host`.
    async fn spawn(
        &self,
        host: &HostChoice,
        uuid: Uuid,
        instance: pb::InstanceSpec,
        ids: &CallIds,
    ) -> Result<ActionOutcome, NodeFailure> {
        let out = self
            .with_io_op(host, self.node(host, pb::ActionKind::Spawn, instance, ids))
            .await;
        if let Err(f) = &out
            && f.maybe_ran
        {
            self.delete_in_background(host.clone(), uuid, ids);
        }
        out
    }

    /// Sends DELETE for a domain in the background, for cleanup whose outcome changes
    /// nothing (a spawn that timed out may have left a domain).
    fn delete_in_background(&self, host: HostChoice, uuid: Uuid, ids: &CallIds) {
        let dispatcher = self.dispatcher.clone();
        let timeout = self.timeout();
        let action = NodeAction {
            kind: pb::ActionKind::Delete,
            instance: pb::InstanceSpec {
                uuid: uuid.to_string(),
                name: server::domain_name(&uuid),
                ..Default::default()
            },
            hard: false,
            snapshot_name: String::new(),
            request_id: ids.for_node().to_string(),
        };
        tokio::spawn(async move {
            if let Err(e) = dispatcher.dispatch(host.uuid, action, timeout).await {
                tracing::info!(server = %uuid, host = %host.name, error = %e, "cleanup delete of a failed spawn did not reach the node");
            }
        });
    }

    /// The check-and-set that starts an action: under the server's lock, answers a
    /// repeated request id, refuses a locked server, a task in progress or a vm_state not
    /// in `accepts`, runs `plan` (more checks; it gathers what the action needs), then sets
    /// `task` and opens a history entry. A repeat of a request still running waits for it.
    async fn begin<P>(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        action: &'static str,
        task: TaskState,
        accepts: &'static [VmState],
        plan: impl FnOnce(&ServerRecord) -> Result<P>,
    ) -> Result<Start<P>> {
        self.begin_with(uuid, ids, action, task, accepts, None, plan)
            .await
    }

    /// [`begin`](Self::begin) for an action whose success shows in the vm_state: `done_in`
    /// is the state it leads to, one that `accepts` does not contain. A retry of a request
    /// that ended unresolved (its node never answered) that finds the idle server in
    /// `done_in` learns that the first attempt took effect — the host reported it when its
    /// node came back — and is answered as done without acting again.
    #[allow(clippy::too_many_arguments)] // begin's six plus one; a struct would hide them
    async fn begin_with<P>(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        action: &'static str,
        task: TaskState,
        accepts: &'static [VmState],
        done_in: Option<VmState>,
        plan: impl FnOnce(&ServerRecord) -> Result<P>,
    ) -> Result<Start<P>> {
        ids.validate()?;
        debug_assert!(done_in.is_none_or(|d| !accepts.contains(&d)));
        let rec = self.record(&uuid)?;
        let pending = {
            let mut r = rec.lock();
            if done_in.is_some_and(|d| d == r.server.vm_state)
                && r.server.idle()
                && r.requests.is_unresolved(&ids.request_id)
            {
                return Ok(Start::Answer(Box::new(self.settle(&mut r, action, ids))));
            }
            match r.requests.lookup(&ids.request_id) {
                Lookup::Done(d) => return Ok(Start::Answer(Box::new(r.replay(&d)))),
                Lookup::Pending(rx) => rx,
                Lookup::New => {
                    let s = &r.server;
                    let checked = if s.locked {
                        Err(ConductorError::Locked {
                            server: uuid,
                            action,
                            reason: s.locked_reason.clone(),
                        })
                    } else if !s.idle() {
                        Err(ConductorError::TaskInProgress {
                            server: uuid,
                            action,
                            task_state: s.task_state,
                        })
                    } else if !accepts.contains(&s.vm_state) {
                        Err(ConductorError::InvalidState {
                            server: uuid,
                            action,
                            vm_state: s.vm_state,
                            accepts,
                        })
                    } else {
                        plan(&r)
                    };
                    let p = match checked {
                        Ok(p) => p,
                        Err(e) => {
                            count(action, "refused");
                            return Err(e);
                        }
                    };
                    r.server.task_state = task;
                    r.sync_votes = 0;
                    let hist = r.start_action(action, &ids.request_id);
                    r.requests.start(&ids.request_id, self.cap());
                    drop(r);
                    return Ok(Start::Go(
                        Begun {
                            rec,
                            uuid,
                            hist,
                            action,
                            ids: ids.clone(),
                        },
                        p,
                    ));
                }
            }
        };
        idempotency::wait(pending)
            .await
            .map(|a| Start::Answer(Box::new(a)))
    }

    /// Ends an action: `apply` changes the record, then the task is cleared, the history
    /// entry closed (a failure also becomes the `fault`; a success clears it — `apply` may
    /// override), and the answer stored for the request id.
    fn finish(
        &self,
        b: &Begun,
        ok: bool,
        message: String,
        image_id: Option<Uuid>,
        apply: impl FnOnce(&mut ServerRecord),
    ) -> ActionReply {
        let mut r = b.rec.lock();
        if ok {
            r.server.fault.clear();
        } else {
            r.server.fault.clone_from(&message);
        }
        apply(&mut r);
        r.server.task_state = TaskState::None;
        r.sync_votes = 0;
        tracing::info!(server = %b.uuid, action = b.action, ok, vm_state = vm_state_name(r.server.vm_state), "server {}: {}: {message}", b.uuid, b.action);
        r.end_action(b.hist, ok, message);
        let reply = ActionReply {
            server: r.server.clone(),
            image_id,
        };
        let stored = StoredReply {
            server: Server {
                actions: Vec::new(),
                ..reply.server.clone()
            },
            actions_len: reply.server.actions.len(),
            image_id,
        };
        r.requests.finish(
            &b.ids.request_id,
            Some(stored),
            Ok(reply.clone()),
            self.cap(),
        );
        count(b.action, if ok { "ok" } else { "failed" });
        reply
    }

    /// Answers a retry of an unresolved request whose first attempt turned out to have
    /// taken effect (see [`begin_with`](Self::begin_with)): notes it in the history and keeps
    /// the answer for the request id, as if the first attempt had been answered.
    fn settle(&self, r: &mut ServerRecord, action: &'static str, ids: &CallIds) -> ActionReply {
        let host = r
            .server
            .host
            .as_ref()
            .map_or_else(String::new, |h| h.name.clone());
        let message = format!(
            "{action} done by the earlier attempt of this request_id, whose answer was lost: host {host} reports the domain {}",
            r.server.power_state
        );
        tracing::info!(server = %r.server.uuid, action, request_id = %ids.request_id, "server {}: {message}", r.server.uuid);
        r.server.fault.clear();
        r.note(action, true, message);
        if let Some(a) = r.server.actions.last_mut() {
            a.request_id.clone_from(&ids.request_id);
        }
        let reply = ActionReply {
            server: r.server.clone(),
            image_id: None,
        };
        let stored = StoredReply {
            server: Server {
                actions: Vec::new(),
                ..reply.server.clone()
            },
            actions_len: reply.server.actions.len(),
            image_id: None,
        };
        let cap = self.cap();
        r.requests.start(&ids.request_id, cap);
        r.requests
            .finish(&ids.request_id, Some(stored), Ok(reply.clone()), cap);
        count(action, "ok");
        reply
    }

    /// Ends an action whose node never answered: no node took it (it disconnected after the
    /// action began) or the stream broke or timed out while it ran, so nobody knows whether
    /// the host did it. Recording a failure as the request's answer would be a guess, and a
    /// wrong one would make every retry with the same request id repeat it. Instead the task
    /// is cleared with the vm_state unchanged (the node reports the domain's real state when
    /// it registers again, and reconciliation follows it), the history and the fault say
    /// what happened, the request id is left unresolved so a retry acts (or finds it done),
    /// and the call fails UNAVAILABLE.
    fn unresolved(&self, b: &Begun, f: NodeFailure) -> ConductorError {
        let msg = if f.not_connected {
            format!(
                "{}; nothing was done: retry once the host's node is back (the same request_id is safe)",
                f.message
            )
        } else {
            format!(
                "{}; the outcome is unknown (the host may have done it): the server keeps its recorded state until its host reports the real one; retrying with the same request_id is safe",
                f.message
            )
        };
        let e = ConductorError::Unavailable(msg.clone());
        let mut r = b.rec.lock();
        r.server.task_state = TaskState::None;
        r.sync_votes = 0;
        r.server.fault.clone_from(&msg);
        tracing::warn!(server = %b.uuid, action = b.action, "server {}: {}: {msg}", b.uuid, b.action);
        r.end_action(b.hist, false, msg);
        r.requests
            .unresolve(&b.ids.request_id, Err(e.clone()), self.cap());
        count(b.action, "unresolved");
        e
    }

    /// Ends an action that turned out to be impossible before anything changed (no valid
    /// host for a move): the task is cleared, the history notes why, and the call fails.
    fn abort(&self, b: &Begun, e: ConductorError) -> ConductorError {
        let mut r = b.rec.lock();
        r.server.task_state = TaskState::None;
        r.end_action(b.hist, false, e.to_string());
        r.requests
            .finish(&b.ids.request_id, None, Err(e.clone()), self.cap());
        count(b.action, "failed");
        e
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}
