//! Running the engine's `Action`s: from the wire to a [`Hypervisor`] call and back to an
//! `ActionResult`.
//!
//! Each action runs on the blocking pool (driver calls block). Actions on one instance run in
//! the order they arrived, one at a time; actions on different instances run concurrently.
//! The order is kept by a chain: every action waits for the one submitted before it on the
//! same uuid to finish. The chain outlives a connection, so an action the engine resends
//! after a reconnect still waits for the first attempt, whose driver call cannot be
//! cancelled, to finish.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use berth_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::hypervisor::{Hypervisor, HypervisorError, InstanceSpec, PowerState};

/// What one action asks of the hypervisor, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Define and boot.
    Spawn(InstanceSpec),
    /// Power off.
    Stop,
    /// Power on.
    Start,
    /// Reboot, power-cycling if `hard`.
    Reboot {
        /// Power-cycle instead of asking the guest.
        hard: bool,
    },
    /// Freeze vCPUs.
    Pause,
    /// Thaw vCPUs.
    Unpause,
    /// Save memory and stop.
    Suspend,
    /// Restore saved memory.
    Resume,
    /// Snapshot of this name.
    Snapshot(String),
    /// Redefine and boot again unless shut off.
    Rebuild(InstanceSpec),
    /// Remove the domain.
    Delete,
    /// The action is malformed (this says why); answered `INVALID_SPEC` without touching the
    /// domain, but in its turn and with the domain's power state.
    Reject(String),
}

/// One validated action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    /// Echoed in the result.
    pub(crate) action_id: String,
    /// For logs.
    pub(crate) request_id: String,
    /// Lower-case action name, for logs.
    pub(crate) kind: &'static str,
    /// The instance.
    pub(crate) uuid: Uuid,
    /// What to do.
    pub(crate) op: Op,
}

/// An `ActionResult` for an action refused before it reached the hypervisor (boxed: it is
/// the rare error path of a `Result` whose success is much smaller).
fn invalid(action_id: String, message: String) -> Box<pb::ActionResult> {
    Box::new(pb::ActionResult {
        action_id,
        ok: false,
        error_code: "INVALID_SPEC".into(),
        message,
        power_state: String::new(),
        snapshot_id: String::new(),
    })
}

/// Lower-case name of a wire action kind, for logs.
fn kind_name(kind: pb::ActionKind) -> &'static str {
    match kind {
        pb::ActionKind::Unspecified => "unspecified",
        pb::ActionKind::Spawn => "spawn",
        pb::ActionKind::Stop => "stop",
        pb::ActionKind::Start => "start",
        pb::ActionKind::Reboot => "reboot",
        pb::ActionKind::Pause => "pause",
        pb::ActionKind::Unpause => "unpause",
        pb::ActionKind::Suspend => "suspend",
        pb::ActionKind::Resume => "resume",
        pb::ActionKind::Snapshot => "snapshot",
        pb::ActionKind::Rebuild => "rebuild",
        pb::ActionKind::Delete => "delete",
    }
}

/// The crate's `InstanceSpec` from the wire's, for SPAWN and REBUILD: every field must be
/// set (the driver validates names and metadata further).
fn instance_spec(uuid: Uuid, spec: &pb::InstanceSpec) -> Result<InstanceSpec, String> {
    if spec.name.is_empty() {
        return Err("instance.name is empty".into());
    }
    if spec.vcpus == 0 {
        return Err("instance.vcpus must be at least 1".into());
    }
    if spec.memory_mb == 0 {
        return Err("instance.memory_mb must be at least 1".into());
    }
    Ok(InstanceSpec {
        uuid,
        name: spec.name.clone(),
        vcpus: spec.vcpus,
        memory_mb: spec.memory_mb,
        disk_gb: spec.disk_gb,
        image_id: spec.image_id.clone(),
        image_name: spec.image_name.clone(),
        flavor_name: spec.flavor_name.clone(),
        metadata: spec
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    })
}

impl Request {
    /// Validates `action`. An action without a usable instance uuid cannot be ordered or
    /// looked up: it comes back as the `INVALID_SPEC` result to send at once. Other
    /// malformed actions become [`Op::Reject`].
    pub(crate) fn from_proto(action: pb::Action) -> Result<Self, Box<pb::ActionResult>> {
        let pb::Action {
            action_id,
            request_id,
            kind,
            instance,
            hard,
            snapshot_name,
        } = action;
        let Some(instance) = instance else {
            return Err(invalid(action_id, "action has no instance".into()));
        };
        let uuid = match Uuid::parse_str(&instance.uuid) {
            Ok(u) if !u.is_nil() => u,
            Ok(_) => return Err(invalid(action_id, "instance.uuid is the nil uuid".into())),
            Err(e) => {
                return Err(invalid(
                    action_id,
                    format!("instance.uuid {:?} is not a uuid: {e}", instance.uuid),
                ));
            }
        };
        let (kind, op) = match pb::ActionKind::try_from(kind) {
            Err(_) => ("unknown", Op::Reject(format!("unknown action kind {kind}"))),
            Ok(k) => {
                let op = match k {
                    pb::ActionKind::Unspecified => Op::Reject("action kind is unspecified".into()),
                    pb::ActionKind::Spawn => {
                        instance_spec(uuid, &instance).map_or_else(Op::Reject, Op::Spawn)
                    }
                    pb::ActionKind::Rebuild => {
                        instance_spec(uuid, &instance).map_or_else(Op::Reject, Op::Rebuild)
                    }
                    pb::ActionKind::Stop => Op::Stop,
                    pb::ActionKind::Start => Op::Start,
                    pb::ActionKind::Reboot => Op::Reboot { hard },
                    pb::ActionKind::Pause => Op::Pause,
                    pb::ActionKind::Unpause => Op::Unpause,
                    pb::ActionKind::Suspend => Op::Suspend,
                    pb::ActionKind::Resume => Op::Resume,
                    pb::ActionKind::Snapshot if snapshot_name.is_empty() => {
                        Op::Reject("snapshot_name is empty".into())
                    }
                    pb::ActionKind::Snapshot => Op::Snapshot(snapshot_name),
                    pb::ActionKind::Delete => Op::Delete,
                };
                (kind_name(k), op)
            }
        };
        Ok(Self {
            action_id,
            request_id,
            kind,
            uuid,
            op,
        })
    }
}

/// What the hypervisor did: the action's outcome (a snapshot id, or empty) and the domain's
/// power state afterwards (`None`: gone; an error: could not be read).
struct Outcome {
    result: Result<String, HypervisorError>,
    /// Set when a SPAWN found its domain already running: a retry, answered ok.
    retried_spawn: bool,
    state: Result<Option<PowerState>, HypervisorError>,
}

/// Runs `op` on `uuid`. Blocks.
fn perform(hv: &dyn Hypervisor, uuid: Uuid, op: &Op) -> Outcome {
    let done = |r: crate::hypervisor::Result<()>| r.map(|()| String::new());
    let mut retried_spawn = false;
    let result = match op {
        Op::Spawn(spec) => match hv.spawn(spec) {
            // The engine resent a spawn whose result it never saw: the domain exists and
            // runs, so the spawn is done. (A clash on the name alone finds no domain under
            // this uuid and stays an error.)
            Err(HypervisorError::AlreadyExists { .. })
                if matches!(hv.domain_state(uuid), Ok(Some(PowerState::Running))) =>
            {
                retried_spawn = true;
                Ok(String::new())
            }
            r => done(r),
        },
        Op::Stop => done(hv.stop(uuid)),
        Op::Start => done(hv.start(uuid)),
        Op::Reboot { hard } => done(hv.reboot(uuid, *hard)),
        Op::Pause => done(hv.pause(uuid)),
        Op::Unpause => done(hv.unpause(uuid)),
        Op::Suspend => done(hv.suspend(uuid)),
        Op::Resume => done(hv.resume(uuid)),
        Op::Snapshot(name) => hv.snapshot(uuid, name),
        Op::Rebuild(spec) => done(hv.rebuild(spec)),
        Op::Delete => done(hv.delete(uuid)),
        Op::Reject(why) => Err(HypervisorError::InvalidSpec(why.clone())),
    };
    Outcome {
        result,
        retried_spawn,
        state: hv.domain_state(uuid),
    }
}

impl Request {
    /// Runs the action on the blocking pool, logs it, and returns its result.
    async fn execute(self, hv: Arc<dyn Hypervisor>) -> pb::ActionResult {
        let started = Instant::now();
        let Self {
            action_id,
            request_id,
            kind,
            uuid,
            op,
        } = self;
        let outcome = tokio::task::spawn_blocking(move || perform(&*hv, uuid, &op))
            .await
            .unwrap_or_else(|e| Outcome {
                result: Err(HypervisorError::Driver(format!(
                    "the hypervisor call did not complete: {e}"
                ))),
                retried_spawn: false,
                state: Err(HypervisorError::Driver("unknown".into())),
            });
        let power_state = match &outcome.state {
            Ok(state) => state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%request_id, %action_id, instance = %uuid, error = %e,
                    "could not read the domain's power state after the action");
                String::new()
            }
        };
        let elapsed_ms = started.elapsed().as_millis();
        match outcome.result {
            Ok(snapshot_id) => {
                tracing::info!(%request_id, %action_id, action = kind, instance = %uuid,
                    power_state, elapsed_ms, retried_spawn = outcome.retried_spawn,
                    "action done");
                pb::ActionResult {
                    action_id,
                    ok: true,
                    error_code: String::new(),
                    message: String::new(),
                    power_state,
                    snapshot_id,
                }
            }
            Err(e) => {
                tracing::warn!(%request_id, %action_id, action = kind, instance = %uuid,
                    power_state, elapsed_ms, error_code = e.code(), error = %e,
                    "action failed");
                pb::ActionResult {
                    action_id,
                    ok: false,
                    error_code: e.code().into(),
                    message: e.to_string(),
                    power_state,
                    snapshot_id: String::new(),
                }
            }
        }
    }
}

/// The last action submitted per instance, so the next one can wait for it.
#[derive(Debug, Default)]
struct Chains {
    /// Numbers actions, so a finished action removes its uuid's entry only if no later
    /// action has taken its place.
    next_ticket: u64,
    /// uuid → (ticket of its last action, fires (by being dropped) when that action is done).
    tails: HashMap<Uuid, (u64, oneshot::Receiver<()>)>,
}

/// Runs actions against one hypervisor, in order per instance.
#[derive(Clone)]
pub(crate) struct Executor {
    hypervisor: Arc<dyn Hypervisor>,
    /// A sync lock: each critical section is one map operation and never awaits.
    chains: Arc<Mutex<Chains>>,
}

impl Executor {
    /// An executor for `hypervisor` with nothing in flight.
    pub(crate) fn new(hypervisor: Arc<dyn Hypervisor>) -> Self {
        Self {
            hypervisor,
            chains: Arc::new(Mutex::new(Chains::default())),
        }
    }

    /// Instances with an action queued or running.
    #[cfg(test)]
    pub(crate) fn busy_instances(&self) -> usize {
        self.chains.lock().tails.len()
    }

    /// Starts `action` (after the previous action on its instance) and sends its result on
    /// `results`. Returns at once. A result that cannot be sent (the stream it came on has
    /// closed) is dropped: the action's effect stays and the engine resends if it needs to.
    pub(crate) fn submit(&self, action: pb::Action, results: mpsc::Sender<pb::NodeMessage>) {
        let request = match Request::from_proto(action) {
            Ok(request) => request,
            Err(refused) => {
                tracing::warn!(action_id = %refused.action_id, error = %refused.message,
                    "action refused");
                tokio::spawn(send_result(results, *refused).in_current_span());
                return;
            }
        };
        tracing::debug!(request_id = %request.request_id, action_id = %request.action_id,
            action = request.kind, instance = %request.uuid, "action received");
        let uuid = request.uuid;
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (ticket, previous) = {
            let mut chains = self.chains.lock();
            chains.next_ticket += 1;
            let ticket = chains.next_ticket;
            let previous = chains.tails.insert(uuid, (ticket, done_rx));
            (ticket, previous.map(|(_, rx)| rx))
        };
        let hypervisor = Arc::clone(&self.hypervisor);
        let chains = Arc::clone(&self.chains);
        let task = async move {
            if let Some(previous) = previous {
                // Err only means the previous action's task is gone: it is done either way.
                let _ = previous.await;
            }
            let result = request.execute(hypervisor).await;
            send_result(results, result).await;
            {
                let mut chains = chains.lock();
                if chains.tails.get(&uuid).is_some_and(|(t, _)| *t == ticket) {
                    chains.tails.remove(&uuid);
                }
            }
            // Lets the next action on this instance start.
            drop(done_tx);
        };
        tokio::spawn(task.in_current_span());
    }
}

async fn send_result(results: mpsc::Sender<pb::NodeMessage>, result: pb::ActionResult) {
    let action_id = result.action_id.clone();
    let message = pb::NodeMessage {
        body: Some(pb::node_message::Body::ActionResult(result)),
    };
    if results.send(message).await.is_err() {
        tracing::info!(%action_id,
            "connection closed before the action's result could be sent; the engine resends \
             the action if it needs the result");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: pb::ActionKind, uuid: &str) -> pb::Action {
        pb::Action {
            action_id: "a-1".into(),
            request_id: "req-1".into(),
            kind: kind as i32,
            instance: Some(pb::InstanceSpec {
                uuid: uuid.into(),
                name: "instance-1".into(),
                vcpus: 2,
                memory_mb: 512,
                disk_gb: 1,
                image_id: "img".into(),
                image_name: "cirros".into(),
                flavor_name: "m1.tiny".into(),
                metadata: [("k".to_string(), "v".to_string())].into(),
            }),
            hard: false,
            snapshot_name: String::new(),
        }
    }

    const U: &str = "6f1c1c8e-2f7e-4d59-9a57-0a5d8f3b2c11";

    #[test]
    fn spawn_converts_the_whole_spec() {
        let r = Request::from_proto(action(pb::ActionKind::Spawn, U)).unwrap();
        assert_eq!((r.kind, r.uuid.to_string().as_str()), ("spawn", U));
        let Op::Spawn(spec) = r.op else {
            panic!("{:?}", r.op)
        };
        assert_eq!(
            (spec.name.as_str(), spec.vcpus, spec.memory_mb),
            ("instance-1", 2, 512)
        );
        assert_eq!(spec.metadata.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn actions_without_a_usable_uuid_are_refused_at_once() {
        for bad in ["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
            let refused = Request::from_proto(action(pb::ActionKind::Stop, bad)).unwrap_err();
            assert_eq!(
                (refused.ok, refused.error_code.as_str()),
                (false, "INVALID_SPEC")
            );
            assert_eq!(refused.action_id, "a-1");
        }
        let mut a = action(pb::ActionKind::Stop, U);
        a.instance = None;
        assert_eq!(
            Request::from_proto(a).unwrap_err().error_code,
            "INVALID_SPEC"
        );
    }

    #[test]
    fn malformed_actions_on_a_known_uuid_are_rejected_in_turn() {
        let mut cases = vec![
            action(pb::ActionKind::Unspecified, U),
            action(pb::ActionKind::Snapshot, U),
        ];
        let mut unknown = action(pb::ActionKind::Stop, U);
        unknown.kind = 99;
        cases.push(unknown);
        for field in ["name", "vcpus", "memory_mb"] {
            let mut a = action(pb::ActionKind::Spawn, U);
            let spec = a.instance.as_mut().unwrap();
            match field {
                "name" => spec.name.clear(),
                "vcpus" => spec.vcpus = 0,
                _ => spec.memory_mb = 0,
            }
            cases.push(a);
        }
        for a in cases {
            let r = Request::from_proto(a.clone()).unwrap();
            assert!(matches!(r.op, Op::Reject(_)), "{a:?} → {:?}", r.op);
        }
        let mut reboot = action(pb::ActionKind::Reboot, U);
        reboot.hard = true;
        assert_eq!(
            Request::from_proto(reboot).unwrap().op,
            Op::Reboot { hard: true }
        );
    }
}
