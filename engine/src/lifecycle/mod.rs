//! The instance lifecycle: the engine's conductor role (Nova's conductor + compute API) and
//! its link to the compute nodes.
//!
//! - [`dispatch`]: the seam between the two halves — [`Dispatcher`] (send an action to a
//!   host's node and await its result) and [`Reconciler`] (what the node hub tells the
//!   conductor when a node registers or heartbeats). Both halves are tested alone against
//!   fakes of the other.
//! - [`hub`]: `NodeHub`, the registry of connected compute nodes: registration (provider,
//!   inventories, traits, AZ), heartbeats and liveness (`down_after`), action dispatch over
//!   each node's stream, correlation of results.
//! - [`conductor`]: `Conductor`, the servers and their state machine: create with build
//!   retries, the actions, moves, evacuation, idempotency by request id, reconciliation.
//!
//! Locks: the conductor's per-server state lives behind one `parking_lot::Mutex` per server,
//! never held across an `.await`; engine locks (see [`crate::state`]) are taken inside
//! engine calls only, never while a server lock is held across a dispatch.

pub mod conductor;
pub mod dispatch;
pub mod hub;

pub use conductor::Conductor;
pub use dispatch::{
    ActionOutcome, DispatchError, Dispatcher, NodeAction, ReconcileReport, Reconciler,
};
pub use hub::NodeHub;

use serde::Deserialize;

/// Compute-node and lifecycle settings (`[compute]` in `berth.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// A host with no message from its node for this long is down; 0 means three times the
    /// heartbeat interval the node announced.
    pub down_after_seconds: u64,
    /// Longest wait for one node action (spawn, stop, ...) before it counts as failed.
    pub action_timeout_seconds: u64,
    /// Request ids remembered per server (and per project for creates) for idempotency.
    pub remembered_request_ids: usize,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            down_after_seconds: 0,
            action_timeout_seconds: 120,
            remembered_request_ids: 64,
        }
    }
}
