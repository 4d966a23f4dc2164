//! Simulated compute nodes behind the conductor's public [`Dispatcher`] seam (the engine's
//! own fake dispatcher is test-only): one map of domains per host following the node's
//! state machine (`compute-node/src/hypervisor.rs`), answered at once and deterministically.
//!
//! Three hosts misbehave on purpose, so the conductor's failure paths run too: on
//! [`FLAKY`] every spawn fails (build retries, build-failure records), [`OFFLINE`] has no
//! connected node (UNAVAILABLE, retries elsewhere) and [`NO_LIVE`] cannot live-migrate.
//! Every other host, including the ones the fuzzer creates, is a well-behaved node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use berth_engine::lifecycle::dispatch::BoxFuture;
use berth_engine::lifecycle::{ActionOutcome, DispatchError, Dispatcher, NodeAction};
use berth_proto::v1 as pb;
use uuid::Uuid;

/// A host whose spawns always fail with a driver error.
pub const FLAKY: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0f01);
/// A host with no connected node.
pub const OFFLINE: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0f02);
/// A host whose node cannot live-migrate.
pub const NO_LIVE: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0f03);

#[derive(Debug, Default)]
struct Host {
    /// Domain uuid → power state.
    domains: BTreeMap<Uuid, &'static str>,
    /// (domain, snapshot name) taken so far.
    snapshots: BTreeSet<(Uuid, String)>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct SimNodes {
    /// A `std` mutex: the fuzzer is single-threaded, every critical section is a few map
    /// operations, and nothing awaits while it is held.
    hosts: Mutex<HashMap<Uuid, Host>>,
    snapshots_taken: Mutex<u64>,
}

fn outcome(ok: bool, code: &str, message: String, power: &str) -> ActionOutcome {
    ActionOutcome {
        ok,
        error_code: code.to_string(),
        message,
        power_state: power.to_string(),
        snapshot_id: String::new(),
    }
}

fn done(power: &str) -> ActionOutcome {
    outcome(true, "", String::new(), power)
}

impl SimNodes {
    fn apply(&self, host: Uuid, a: &NodeAction) -> Result<ActionOutcome, DispatchError> {
        if host == OFFLINE {
            return Err(DispatchError::NotConnected {
                host: host.to_string(),
            });
        }
        let Ok(uuid) = Uuid::parse_str(&a.instance.uuid) else {
            return Ok(outcome(
                false,
                "INVALID_SPEC",
                format!("{:?} is not a uuid", a.instance.uuid),
                "",
            ));
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let h = hosts.entry(host).or_default();
        use pb::ActionKind as K;
        match a.kind {
            K::Spawn if host == FLAKY => {
                return Ok(outcome(
                    false,
                    "DRIVER",
                    "simulated spawn failure".into(),
                    "",
                ));
            }
            K::Spawn => {
                if h.domains.contains_key(&uuid) {
                    return Ok(outcome(
                        false,
                        "ALREADY_EXISTS",
                        format!("a domain already exists with uuid {uuid}"),
                        "RUNNING",
                    ));
                }
                h.domains.insert(uuid, "RUNNING");
                return Ok(done("RUNNING"));
            }
            K::Delete => {
                h.domains.remove(&uuid);
                h.snapshots.retain(|(d, _)| *d != uuid);
                return Ok(done(""));
            }
            _ => {}
        }
        let Some(power) = h.domains.get(&uuid).copied() else {
            return Ok(outcome(
                false,
                "NOT_FOUND",
                format!("no domain with uuid {uuid}"),
                "",
            ));
        };
        // The node's state table: the new power state, or None when the action is invalid.
        let next = match (a.kind, power) {
            (K::Stop, "RUNNING" | "PAUSED" | "CRASHED" | "SHUTOFF") => Some("SHUTOFF"),
            (K::Start, "SHUTOFF" | "CRASHED" | "RUNNING") => Some("RUNNING"),
            (K::Reboot, _) if a.hard => Some("RUNNING"),
            (K::Reboot, "RUNNING") => Some("RUNNING"),
            (K::Pause, "RUNNING" | "PAUSED") => Some("PAUSED"),
            (K::Unpause, "PAUSED" | "RUNNING") => Some("RUNNING"),
            (K::Suspend, "RUNNING" | "PAUSED" | "SUSPENDED") => Some("SUSPENDED"),
            (K::Resume, "SUSPENDED" | "RUNNING") => Some("RUNNING"),
            (K::Snapshot, p @ ("RUNNING" | "PAUSED" | "SHUTOFF" | "SUSPENDED")) => Some(p),
            (K::Rebuild, "SHUTOFF") => Some("SHUTOFF"),
            (K::Rebuild, "RUNNING" | "CRASHED") => Some("RUNNING"),
            _ => None,
        };
        let Some(next) = next else {
            return Ok(outcome(
                false,
                "INVALID_STATE",
                format!("cannot {:?} a domain that is {power}", a.kind),
                power,
            ));
        };
        if a.kind == K::Snapshot && !h.snapshots.insert((uuid, a.snapshot_name.clone())) {
            return Ok(outcome(
                false,
                "ALREADY_EXISTS",
                format!("a domain already exists with snapshot {}", a.snapshot_name),
                power,
            ));
        }
        h.domains.insert(uuid, next);
        let mut out = done(next);
        if a.kind == K::Snapshot {
            let mut n = self
                .snapshots_taken
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *n += 1;
            out.snapshot_id = format!("snap-{n}");
        }
        Ok(out)
    }
}

impl Dispatcher for SimNodes {
    fn dispatch(
        &self,
        host: Uuid,
        action: NodeAction,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<ActionOutcome, DispatchError>> {
        Box::pin(async move { self.apply(host, &action) })
    }

    fn is_connected(&self, host: &Uuid) -> bool {
        *host != OFFLINE
    }

    fn live_migration(&self, host: &Uuid) -> bool {
        *host != OFFLINE && *host != NO_LIVE
    }
}
