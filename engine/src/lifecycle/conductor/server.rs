//! The server record: what the conductor knows about one instance, the names of its states,
//! and the instance spec a node needs to build its domain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::v1 as pb;
use uuid::Uuid;

use super::idempotency::RequestLog;
use crate::HostChoice;
use crate::model::{Flavor, Image};

pub use pb::{TaskState, VmState};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A vm_state's short upper-case name (`ACTIVE`, `SHELVED_OFFLOADED`), as messages use it.
pub fn vm_state_name(s: VmState) -> &'static str {
    let full = s.as_str_name();
    full.strip_prefix("VM_STATE_").unwrap_or(full)
}

/// A task_state's short upper-case name (`RESIZE_MIGRATING`, `NONE`).
pub fn task_state_name(s: TaskState) -> &'static str {
    let full = s.as_str_name();
    full.strip_prefix("TASK_STATE_").unwrap_or(full)
}

/// States joined for a message: `ACTIVE, STOPPED`.
pub(crate) fn state_list(states: &[VmState]) -> String {
    states
        .iter()
        .map(|s| vm_state_name(*s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry of a server's action history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// `create`, `stop`, ..., or `reconcile` for the engine's own changes.
    pub action: &'static str,
    /// The call's request id (empty for the engine's own changes).
    pub request_id: String,
    /// Start, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// End, ms since the Unix epoch; 0 while running.
    pub finished_at_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What happened.
    pub message: String,
}

/// A resize or cold migration waiting for confirm or revert (the server is RESIZED).
#[derive(Debug, Clone, PartialEq)]
pub struct MoveInfo {
    /// The host it moved from, whose stopped domain is kept for a revert.
    pub source: HostChoice,
    /// The flavor before the move.
    pub old_flavor: Arc<Flavor>,
    /// It was STOPPED before the move: confirm and revert end STOPPED, not ACTIVE.
    pub was_stopped: bool,
}

/// A server (instance) as the conductor reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Server uuid = consumer uuid in placement = domain uuid on its host.
    pub uuid: Uuid,
    /// Creation sequence number: orders `list` (creation order).
    pub seq: u64,
    /// Display name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// Current flavor (the new one while RESIZED).
    pub flavor: Arc<Flavor>,
    /// Image it was built (or last rebuilt) from.
    pub image: Arc<Image>,
    /// Lifecycle state.
    pub vm_state: VmState,
    /// Task in progress (`None` when idle).
    pub task_state: TaskState,
    /// The domain's power state as last reported (`RUNNING`, `SHUTOFF`, ...); empty when it
    /// has no domain.
    pub power_state: String,
    /// Host it is on (while RESIZED: the destination); `None` when it has none.
    pub host: Option<HostChoice>,
    /// Availability zone of its host when placed.
    pub availability_zone: String,
    /// Server group, if any.
    pub group: Option<Uuid>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Every action but unlock is refused while set.
    pub locked: bool,
    /// Why it was locked.
    pub locked_reason: String,
    /// The last failure (kept until the next success).
    pub fault: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// While RESIZED: where it came from and its old flavor.
    pub resize: Option<MoveInfo>,
    /// Every action, oldest first.
    pub actions: Vec<ActionRecord>,
}

impl Server {
    /// The domain name on its host.
    pub fn domain_name(&self) -> String {
        domain_name(&self.uuid)
    }

    /// Whether no task is in progress.
    pub fn idle(&self) -> bool {
        self.task_state == TaskState::None
    }
}

/// `instance-<uuid>`: unique on any host.
pub fn domain_name(uuid: &Uuid) -> String {
    format!("instance-{uuid}")
}

/// What a repeated action request gets back: the first answer without the action history,
/// which is append-only, so `actions_len` entries of the live history are the history the
/// first answer had. Storing whole snapshots would keep `remembered_request_ids` copies of
/// a growing history per server.
#[derive(Debug, Clone)]
pub(crate) struct StoredReply {
    pub server: Server,
    pub actions_len: usize,
    pub image_id: Option<Uuid>,
}

/// The answer to an action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionReply {
    /// The server after the action.
    pub server: Server,
    /// Snapshot only: the new image record's id.
    pub image_id: Option<Uuid>,
}

/// A server and the conductor's bookkeeping about it, behind the server's mutex.
#[derive(Debug)]
pub(crate) struct ServerRecord {
    pub server: Server,
    /// Answers to this server's recent action requests, by request id.
    pub requests: RequestLog<StoredReply, ActionReply>,
    /// The zone the create asked for (moves and unshelve keep to it, as Nova does).
    pub requested_az: Option<String>,
    /// Consecutive heartbeats whose power state disagreed with the vm_state (see
    /// `reconcile`): a vm_state is synced only on the second, so one heartbeat listed just
    /// before an action finished cannot undo it.
    pub sync_votes: u8,
    /// Set when deleted: a holder of the `Arc` that wakes late leaves it alone.
    pub deleted: bool,
}

impl ServerRecord {
    /// Appends a running history entry; returns its index (the history is append-only).
    pub fn start_action(&mut self, action: &'static str, request_id: &str) -> usize {
        let now = now_ms();
        self.server.actions.push(ActionRecord {
            action,
            request_id: request_id.to_string(),
            started_at_ms: now,
            finished_at_ms: 0,
            ok: false,
            message: String::new(),
        });
        self.server.updated_at_ms = now;
        self.server.actions.len() - 1
    }

    /// Finishes history entry `i`.
    pub fn end_action(&mut self, i: usize, ok: bool, message: String) {
        let now = now_ms();
        if let Some(a) = self.server.actions.get_mut(i) {
            a.finished_at_ms = now;
            a.ok = ok;
            a.message = message;
        }
        self.server.updated_at_ms = now;
    }

    /// Appends a finished entry of the engine's own (`reconcile`).
    pub fn note(&mut self, action: &'static str, ok: bool, message: String) {
        let i = self.start_action(action, "");
        self.end_action(i, ok, message);
    }

    /// The reply for a repeated request: the stored answer with the history it had.
    pub fn replay(&self, stored: &StoredReply) -> ActionReply {
        let mut server = stored.server.clone();
        let n = stored.actions_len.min(self.server.actions.len());
        server.actions = self.server.actions[..n].to_vec();
        ActionReply {
            server,
            image_id: stored.image_id,
        }
    }
}

/// Everything a node needs to build (or rebuild) the server's domain.
pub(crate) fn instance_spec(
    uuid: &Uuid,
    flavor: &Flavor,
    image: &Image,
    metadata: &BTreeMap<String, String>,
) -> pb::InstanceSpec {
    pb::InstanceSpec {
        uuid: uuid.to_string(),
        name: domain_name(uuid),
        vcpus: u32::try_from(flavor.vcpus).unwrap_or(u32::MAX),
        memory_mb: flavor.ram_mb,
        disk_gb: flavor.disk_gb,
        image_id: image.id.to_string(),
        image_name: image.name.clone(),
        flavor_name: flavor.name.clone(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_short() {
        assert_eq!(
            vm_state_name(VmState::ShelvedOffloaded),
            "SHELVED_OFFLOADED"
        );
        assert_eq!(
            task_state_name(TaskState::ResizeMigrating),
            "RESIZE_MIGRATING"
        );
        assert_eq!(task_state_name(TaskState::None), "NONE");
        assert_eq!(
            state_list(&[VmState::Active, VmState::Error]),
            "ACTIVE, ERROR"
        );
    }
}
