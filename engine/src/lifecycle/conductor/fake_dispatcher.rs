//! A [`Dispatcher`] that simulates compute nodes in memory, for tests: per host a map of
//! domains following the node state machine (`compute-node/src/hypervisor.rs`), plus fault
//! injection — fail the next N spawns on a host, a host with no connected node, a host
//! without live migration, a gate that holds a host's actions until released.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::lifecycle::dispatch::BoxFuture;
use crate::lifecycle::{ActionOutcome, DispatchError, Dispatcher, NodeAction};

/// One simulated domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakeDomain {
    pub name: String,
    pub power: &'static str,
    pub image: String,
    pub vcpus: u32,
    pub snapshots: Vec<String>,
}

#[derive(Debug, Default)]
struct FakeHost {
    domains: BTreeMap<Uuid, FakeDomain>,
    connected: bool,
    live_migration: bool,
    fail_spawns: u32,
    fail_all: Option<pb::ActionKind>,
    gate: Option<Arc<Semaphore>>,
    /// The next dispatches whose answer is lost (the stream breaks): (how many, whether
    /// the node did the action first).
    lose_answers: (u32, bool),
}

#[derive(Debug, Default)]
struct State {
    hosts: HashMap<Uuid, FakeHost>,
    /// (host, kind, instance) of every dispatch, in order.
    log: Vec<(Uuid, pb::ActionKind, Uuid)>,
    next_snapshot: u64,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct FakeDispatcher {
    state: Mutex<State>,
}

fn fail(code: &str, message: impl Into<String>) -> ActionOutcome {
    ActionOutcome {
        ok: false,
        error_code: code.into(),
        message: message.into(),
        ..Default::default()
    }
}

impl FakeDispatcher {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a connected host.
    pub fn add_host(&self, host: Uuid, live_migration: bool) {
        self.state.lock().hosts.insert(
            host,
            FakeHost {
                connected: true,
                live_migration,
                ..Default::default()
            },
        );
    }

    pub fn set_connected(&self, host: Uuid, connected: bool) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.connected = connected;
        }
    }

    /// The next `n` spawns on `host` fail with a driver error.
    pub fn fail_next_spawns(&self, host: Uuid, n: u32) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.fail_spawns = n;
        }
    }

    /// Every action of `kind` on `host` fails (None: stop failing).
    pub fn fail_all(&self, host: Uuid, kind: Option<pb::ActionKind>) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.fail_all = kind;
        }
    }

    /// The next `n` dispatches to `host` fail with `Disconnected`, as when the node dies
    /// mid-action: before doing it (`ran` false: nothing happens, nothing is logged) or
    /// after (`ran` true: the action takes effect and is logged, its answer is lost).
    pub fn lose_answers(&self, host: Uuid, n: u32, ran: bool) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.lose_answers = (n, ran);
        }
    }

    /// Holds every action on `host` until permits are added to the returned semaphore.
    pub fn gate(&self, host: Uuid) -> Arc<Semaphore> {
        let s = Arc::new(Semaphore::new(0));
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.gate = Some(s.clone());
        }
        s
    }

    pub fn domains(&self, host: Uuid) -> BTreeMap<Uuid, FakeDomain> {
        self.state
            .lock()
            .hosts
            .get(&host)
            .map(|h| h.domains.clone())
            .unwrap_or_default()
    }

    /// The domains as a node reports them.
    pub fn reports(&self, host: Uuid) -> Vec<pb::DomainReport> {
        self.domains(host)
            .into_iter()
            .map(|(u, d)| pb::DomainReport {
                uuid: u.to_string(),
                name: d.name,
                power_state: d.power.to_string(),
            })
            .collect()
    }

    pub fn power(&self, host: Uuid, uuid: Uuid) -> Option<&'static str> {
        self.state
            .lock()
            .hosts
            .get(&host)
            .and_then(|h| h.domains.get(&uuid).map(|d| d.power))
    }

    /// The guest changes its own power state.
    pub fn set_power(&self, host: Uuid, uuid: Uuid, power: &'static str) {
        if let Some(d) = self
            .state
            .lock()
            .hosts
            .get_mut(&host)
            .and_then(|h| h.domains.get_mut(&uuid))
        {
            d.power = power;
        }
    }

    /// Puts a domain on a host behind the engine's back.
    pub fn insert_domain(&self, host: Uuid, uuid: Uuid, power: &'static str) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.domains.insert(
                uuid,
                FakeDomain {
                    name: format!("instance-{uuid}"),
                    power,
                    image: String::new(),
                    vcpus: 1,
                    snapshots: Vec::new(),
                },
            );
        }
    }

    pub fn remove_domain(&self, host: Uuid, uuid: Uuid) {
        if let Some(h) = self.state.lock().hosts.get_mut(&host) {
            h.domains.remove(&uuid);
        }
    }

    /// Dispatches of `kind` (all hosts, all instances).
    pub fn count(&self, kind: pb::ActionKind) -> usize {
        self.state
            .lock()
            .log
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .count()
    }

    /// Every dispatch so far.
    pub fn total(&self) -> usize {
        self.state.lock().log.len()
    }

    fn apply(&self, host: Uuid, a: &NodeAction) -> Result<ActionOutcome, DispatchError> {
        let mut st = self.state.lock();
        let uuid = Uuid::parse_str(&a.instance.uuid).unwrap_or_default();
        st.log.push((host, a.kind, uuid));
        st.next_snapshot += 1;
        let snap = st.next_snapshot;
        let Some(h) = st.hosts.get_mut(&host).filter(|h| h.connected) else {
            return Err(DispatchError::NotConnected {
                host: host.to_string(),
            });
        };
        if h.fail_all == Some(a.kind) {
            return Ok(fail("DRIVER", "injected failure"));
        }
        use pb::ActionKind as K;
        if a.kind == K::Spawn {
            if h.fail_spawns > 0 {
                h.fail_spawns -= 1;
                return Ok(fail("DRIVER", "injected spawn failure"));
            }
            if h.domains.contains_key(&uuid) {
                return Ok(fail(
                    "ALREADY_EXISTS",
                    format!("a domain already exists with uuid {uuid}"),
                ));
            }
            h.domains.insert(
                uuid,
                FakeDomain {
                    name: a.instance.name.clone(),
                    power: "RUNNING",
                    image: a.instance.image_id.clone(),
                    vcpus: a.instance.vcpus,
                    snapshots: Vec::new(),
                },
            );
            return Ok(ok("RUNNING"));
        }
        if a.kind == K::Delete {
            h.domains.remove(&uuid);
            return Ok(ok(""));
        }
        let Some(d) = h.domains.get_mut(&uuid) else {
            return Ok(fail("NOT_FOUND", format!("no domain with uuid {uuid}")));
        };
        let p = d.power;
        // (new power state) per the node's table; None = invalid from this state.
        let next: Option<&'static str> = match (a.kind, p) {
            (K::Stop, "RUNNING" | "PAUSED" | "CRASHED" | "SHUTOFF") => Some("SHUTOFF"),
            (K::Start, "SHUTOFF" | "CRASHED" | "RUNNING") => Some("RUNNING"),
            (K::Reboot, _) if a.hard => Some("RUNNING"),
            (K::Reboot, "RUNNING") => Some("RUNNING"),
            (K::Pause, "RUNNING" | "PAUSED") => Some("PAUSED"),
            (K::Unpause, "PAUSED" | "RUNNING") => Some("RUNNING"),
            (K::Suspend, "RUNNING" | "PAUSED" | "SUSPENDED") => Some("SUSPENDED"),
            (K::Resume, "SUSPENDED" | "RUNNING") => Some("RUNNING"),
            (K::Snapshot, "RUNNING" | "PAUSED" | "SHUTOFF" | "SUSPENDED") => Some(p),
            (K::Rebuild, "SHUTOFF") => Some("SHUTOFF"),
            (K::Rebuild, "RUNNING" | "CRASHED") => Some("RUNNING"),
            _ => None,
        };
        let Some(next) = next else {
            return Ok(fail(
                "INVALID_STATE",
                format!("cannot {} a domain that is {p}", super::kind_name(a.kind)),
            ));
        };
        d.power = next;
        let mut out = ok(next);
        match a.kind {
            K::Snapshot => {
                if d.snapshots.contains(&a.snapshot_name) {
                    return Ok(fail(
                        "ALREADY_EXISTS",
                        format!("a domain already exists with snapshot {}", a.snapshot_name),
                    ));
                }
                d.snapshots.push(a.snapshot_name.clone());
                out.snapshot_id = format!("snap-{snap}");
            }
            K::Rebuild => {
                d.image = a.instance.image_id.clone();
            }
            _ => {}
        }
        Ok(out)
    }
}

fn ok(power: &str) -> ActionOutcome {
    ActionOutcome {
        ok: true,
        power_state: power.to_string(),
        ..Default::default()
    }
}

impl Dispatcher for FakeDispatcher {
    fn dispatch(
        &self,
        host: Uuid,
        action: NodeAction,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<ActionOutcome, DispatchError>> {
        Box::pin(async move {
            let gate = self
                .state
                .lock()
                .hosts
                .get(&host)
                .and_then(|h| h.gate.clone());
            if let Some(g) = gate {
                // Closed semaphores are never used here; a permit is taken and given back.
                let _permit = g.acquire().await;
            }
            tokio::task::yield_now().await;
            let lost = {
                let mut st = self.state.lock();
                match st.hosts.get_mut(&host) {
                    Some(h) if h.connected && h.lose_answers.0 > 0 => {
                        h.lose_answers.0 -= 1;
                        Some(h.lose_answers.1)
                    }
                    _ => None,
                }
            };
            match lost {
                None => self.apply(host, &action),
                Some(ran) => {
                    if ran {
                        let _ = self.apply(host, &action);
                    }
                    Err(DispatchError::Disconnected {
                        host: host.to_string(),
                        action: super::kind_name(action.kind),
                    })
                }
            }
        })
    }

    fn is_connected(&self, host: &Uuid) -> bool {
        self.state
            .lock()
            .hosts
            .get(host)
            .is_some_and(|h| h.connected)
    }

    fn live_migration(&self, host: &Uuid) -> bool {
        self.state
            .lock()
            .hosts
            .get(host)
            .is_some_and(|h| h.connected && h.live_migration)
    }
}
