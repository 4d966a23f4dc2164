//! The seam between the node hub and the conductor.
//!
//! The conductor decides what must happen to a server and asks a [`Dispatcher`] to have the
//! host's node do it; the hub implements `Dispatcher` over the `Nodes/Connect` streams. The
//! other way round, the hub tells a [`Reconciler`] (the conductor) what each node reports, so
//! server states follow reality. Tests put a fake on either side.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use berth_proto::v1 as pb;
use uuid::Uuid;

/// One action for a node: the `Action` message without its correlation id (the dispatcher
/// assigns that).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAction {
    /// What to do.
    pub kind: pb::ActionKind,
    /// The instance; complete for SPAWN and REBUILD, uuid and name for the rest.
    pub instance: pb::InstanceSpec,
    /// REBOOT: power-cycle.
    pub hard: bool,
    /// SNAPSHOT: the snapshot's name.
    pub snapshot_name: String,
    /// The API request that caused it, for the node's logs.
    pub request_id: String,
}

/// What the node answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActionOutcome {
    /// The action succeeded (or was already done).
    pub ok: bool,
    /// When not ok: `NOT_FOUND`, `ALREADY_EXISTS`, `INVALID_STATE`, `INVALID_SPEC`,
    /// `UNSUPPORTED` or `DRIVER`.
    pub error_code: String,
    /// When not ok: why.
    pub message: String,
    /// Power state after the action; empty if the domain is gone.
    pub power_state: String,
    /// SNAPSHOT: the snapshot id.
    pub snapshot_id: String,
}

/// Why an action never got an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// No node stream is connected for this host.
    #[error("host {host} has no connected compute node")]
    NotConnected {
        /// Host name (or uuid when unknown).
        host: String,
    },
    /// The node did not answer within the timeout; the action may or may not have run (it
    /// is idempotent, so resending is safe).
    #[error("host {host} did not answer {action} within {seconds} s")]
    Timeout {
        /// Host name.
        host: String,
        /// The action, lower case.
        action: String,
        /// The timeout.
        seconds: u64,
    },
    /// The stream broke while the action was outstanding.
    #[error("the connection to host {host} closed before it answered {action}")]
    Disconnected {
        /// Host name.
        host: String,
        /// The action, lower case.
        action: String,
    },
}

/// A boxed future, so the traits stay object-safe without an extra crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends actions to compute nodes.
pub trait Dispatcher: Send + Sync + 'static {
    /// Sends `action` to the node of `host` (a provider uuid) and waits up to `timeout` for
    /// its result.
    fn dispatch(
        &self,
        host: Uuid,
        action: NodeAction,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ActionOutcome, DispatchError>>;

    /// Whether a node stream is connected for `host` right now.
    fn is_connected(&self, host: &Uuid) -> bool;

    /// Whether `host`'s node said it can live-migrate (false when unknown).
    fn live_migration(&self, host: &Uuid) -> bool;
}

/// What reconciliation found when a node registered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileReport {
    /// Reported domains with no server on this host; left alone.
    pub orphans: Vec<Uuid>,
    /// Servers on this host whose domain was not reported; now ERROR.
    pub missing: Vec<Uuid>,
    /// Reported domains of servers that now live elsewhere (evacuated while this host was
    /// down): the hub sends DELETE for each.
    pub to_delete: Vec<Uuid>,
}

/// Receives what nodes report, so server states follow the hosts.
pub trait Reconciler: Send + Sync + 'static {
    /// A node (re-)registered as `host` reporting `domains`: compare with the servers placed
    /// there and repair (missing domain → ERROR; power state changes).
    fn node_registered(&self, host: Uuid, domains: &[pb::DomainReport]) -> ReconcileReport;

    /// A heartbeat from `host`: update the servers' power states (and, for idle servers, the
    /// vm_state where the guest changed it itself, as Nova's power-state sync does).
    fn node_heartbeat(&self, host: Uuid, domains: &[pb::DomainReport]);
}
