//! The agent against an in-process fake engine: a `Nodes` server on 127.0.0.1 that records
//! what nodes send and lets the test push actions, talking the real protocol over gRPC.
//! Intervals are short (100 ms heartbeats, 20–200 ms backoff); waits are bounded but nothing
//! asserts how fast anything is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::nodes_server::{Nodes, NodesServer};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{AgentConfig, run};
use crate::error::NodeError;
use crate::fake::FakeHypervisor;
use crate::faulty::FaultyHypervisor;
use crate::hypervisor::{
    ActionKind, DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState,
    Result as HvResult,
};
use crate::inventory::ResourcePolicy;

/// How long any single wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the fake engine saw, per stream (numbered from 0 in the order they opened).
#[derive(Debug)]
// Test-only and short-lived; boxing the message would only make the patterns below clumsier.
#[allow(clippy::large_enum_variant)]
enum Event {
    Message(usize, pb::NodeMessage),
    Closed(usize),
}

type Outbound = mpsc::UnboundedSender<Result<pb::EngineMessage, Status>>;

struct Shared {
    events: mpsc::UnboundedSender<Event>,
    /// Per stream, the sender of engine messages.
    streams: Mutex<Vec<Outbound>>,
}

struct EngineService(Arc<Shared>);

const PROVIDER: &str = "0c6a4d1e-9a35-4bd4-8f5e-3a1c2b7d9e01";

#[tonic::async_trait]
impl Nodes for EngineService {
    type ConnectStream = UnboundedReceiverStream<Result<pb::EngineMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = {
            let mut streams = self.0.streams.lock();
            streams.push(tx.clone());
            streams.len() - 1
        };
        let shared = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(pb::node_message::Body::Register(register)) = &message.body {
                    let registered = pb::Registered {
                        provider_uuid: PROVIDER.into(),
                        down_after_ms: 1000,
                        orphans: register.domains.iter().map(|d| d.uuid.clone()).collect(),
                        missing: Vec::new(),
                        warnings: vec!["just testing".into()],
                    };
                    let _ = tx.send(Ok(pb::EngineMessage {
                        body: Some(pb::engine_message::Body::Registered(registered)),
                    }));
                }
                let _ = shared.events.send(Event::Message(stream, message));
            }
            let _ = shared.events.send(Event::Closed(stream));
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct FakeEngine {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl FakeEngine {
    /// An engine on `addr` (port 0: any free port).
    async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: events_tx,
            streams: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = NodesServer::new(EngineService(Arc::clone(&shared)));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            events,
            shared,
            stop: Some(stop),
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every stream with UNAVAILABLE and stops serving, as an engine going down does.
    async fn stop(mut self) {
        for stream in self.shared.streams.lock().drain(..) {
            let _ = stream.send(Err(Status::unavailable("engine stopping")));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(PATIENCE, &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }

    /// Ends stream `stream` with `status`.
    fn end_stream(&self, stream: usize, status: Status) {
        let _ = self.shared.streams.lock()[stream].send(Err(status));
    }

    /// Sends `action` on stream `stream`.
    fn send(&self, stream: usize, action: pb::Action) {
        let message = pb::EngineMessage {
            body: Some(pb::engine_message::Body::Action(action)),
        };
        self.shared.streams.lock()[stream]
            .send(Ok(message))
            .unwrap();
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("the engine heard from the node in time")
            .expect("event channel open")
    }

    /// The next event `pick` accepts, skipping others.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = self.next_event().await;
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    /// The next Register, with its stream.
    async fn register(&mut self) -> (usize, pb::Register) {
        self.wait_for(|e| match e {
            Event::Message(
                s,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::Register(r)),
                },
            ) => Some((*s, r.clone())),
            _ => None,
        })
        .await
    }

    /// The next heartbeat on any stream.
    async fn heartbeat(&mut self) -> (usize, pb::Heartbeat) {
        self.wait_for(|e| match e {
            Event::Message(
                s,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::Heartbeat(h)),
                },
            ) => Some((*s, h.clone())),
            _ => None,
        })
        .await
    }

    /// The next action result.
    async fn result(&mut self) -> pb::ActionResult {
        self.wait_for(|e| match e {
            Event::Message(
                _,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::ActionResult(r)),
                },
            ) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Sends `action` on `stream` and waits for its result.
    async fn call(&mut self, stream: usize, action: pb::Action) -> pb::ActionResult {
        let id = action.action_id.clone();
        self.send(stream, action);
        let result = self.result().await;
        assert_eq!(
            result.action_id, id,
            "results come back for the action sent"
        );
        result
    }
}

/// A running agent and the switch that stops it.
struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Agent {
    fn start(config: AgentConfig, hypervisor: Arc<dyn Hypervisor>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, hypervisor, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the agent stops in time")
            .unwrap()
            .unwrap();
    }
}

fn config(engine: &FakeEngine) -> AgentConfig {
    AgentConfig {
        heartbeat_interval: Duration::from_millis(100),
        reconnect_backoff: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        register_timeout: Duration::from_secs(2),
        ..AgentConfig::new(engine.url(), "node-1")
    }
}

fn spec(name: &str) -> pb::InstanceSpec {
    pb::InstanceSpec {
        uuid: Uuid::new_v4().to_string(),
        name: name.into(),
        vcpus: 1,
        memory_mb: 256,
        disk_gb: 1,
        image_id: "img-1".into(),
        image_name: "cirros".into(),
        flavor_name: "m1.tiny".into(),
        metadata: [("owner".to_string(), "tests".to_string())].into(),
    }
}

fn action(id: &str, kind: pb::ActionKind, instance: &pb::InstanceSpec) -> pb::Action {
    pb::Action {
        action_id: id.into(),
        request_id: format!("req-{id}"),
        kind: kind as i32,
        instance: Some(instance.clone()),
        hard: false,
        snapshot_name: String::new(),
    }
}

fn local_spec(name: &str) -> InstanceSpec {
    InstanceSpec {
        uuid: Uuid::new_v4(),
        name: name.into(),
        vcpus: 1,
        memory_mb: 128,
        disk_gb: 1,
        image_id: "i".into(),
        image_name: "i".into(),
        flavor_name: "f".into(),
        metadata: BTreeMap::new(),
    }
}

fn assert_ok(result: &pb::ActionResult, power_state: &str) {
    assert!(result.ok, "{result:?}");
    assert_eq!(
        (result.error_code.as_str(), result.power_state.as_str()),
        ("", power_state),
        "{result:?}"
    );
}

fn assert_failed(result: &pb::ActionResult, code: &str) {
    assert!(!result.ok, "{result:?}");
    assert_eq!(result.error_code, code, "{result:?}");
    assert!(!result.message.is_empty(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_carries_identity_inventories_and_domains_then_heartbeats_count_up() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let fake = Arc::new(
        FakeHypervisor::new(NodeInfo {
            vcpus: 8,
            memory_mb: 16384,
            disk_gb: 100,
            arch: "x86_64".into(),
            hypervisor_type: "FAKE".into(),
            hypervisor_version: 8_002_001,
        })
        .with_live_migration(false),
    );
    let (a, b) = (local_spec("vm-a"), local_spec("vm-b"));
    fake.spawn(&a).unwrap();
    fake.spawn(&b).unwrap();
    fake.pause(b.uuid).unwrap();
    let cfg = AgentConfig {
        availability_zone: Some("az1".into()),
        traits: vec!["CUSTOM_SSD".into()],
        resources: ResourcePolicy {
            reserved_vcpus: 1,
            ..ResourcePolicy::default()
        },
        ..config(&engine)
    };
    let agent = Agent::start(cfg, fake.clone());

    // Register is the stream's very first message.
    let (stream, reg) = match engine.next_event().await {
        Event::Message(
            s,
            pb::NodeMessage {
                body: Some(pb::node_message::Body::Register(r)),
            },
        ) => (s, r),
        other => panic!("first message was not Register: {other:?}"),
    };
    assert_eq!(stream, 0);
    assert_eq!(reg.name, "node-1");
    assert_eq!(reg.availability_zone, "az1");
    assert_eq!(reg.traits, ["CUSTOM_SSD"]);
    assert_eq!(reg.arch, "x86_64");
    assert_eq!(reg.hypervisor_type, "FAKE");
    assert_eq!(reg.hypervisor_version, "8.2.1");
    assert!(!reg.live_migration);
    assert_eq!(reg.heartbeat_interval_ms, 100);
    assert_eq!(reg.agent_version, env!("CARGO_PKG_VERSION"));
    let inventory = |class: &str| {
        reg.inventories
            .iter()
            .find(|i| i.resource_class == class)
            .unwrap_or_else(|| panic!("no {class} in {:?}", reg.inventories))
            .clone()
    };
    assert_eq!(
        inventory("VCPU"),
        pb::Inventory {
            resource_class: "VCPU".into(),
            total: 8,
            reserved: 1,
            min_unit: 1,
            max_unit: 8,
            step_size: 1,
            allocation_ratio: 4.0,
        }
    );
    assert_eq!(
        (
            inventory("MEMORY_MB").total,
            inventory("MEMORY_MB").reserved
        ),
        (16384, 512)
    );
    assert_eq!(inventory("DISK_GB").total, 100);
    assert_eq!(reg.inventories.len(), 3);
    let mut domains: Vec<_> = reg
        .domains
        .iter()
        .map(|d| (d.uuid.clone(), d.name.clone(), d.power_state.clone()))
        .collect();
    domains.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        domains,
        [
            (a.uuid.to_string(), "vm-a".into(), "RUNNING".into()),
            (b.uuid.to_string(), "vm-b".into(), "PAUSED".into()),
        ]
    );

    // Heartbeats follow, numbered 1, 2, 3… on the stream, with every domain.
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let (s, hb) = engine.heartbeat().await;
        assert_eq!(s, 0);
        assert!(hb.healthy && hb.health_detail.is_empty(), "{hb:?}");
        assert_eq!(hb.domains.len(), 2);
        seqs.push(hb.seq);
    }
    assert_eq!(seqs, [1, 2, 3]);
    fake.stop(a.uuid).unwrap();
    let hb = engine
        .wait_for(|e| match e {
            Event::Message(
                _,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::Heartbeat(h)),
                },
            ) if h.domains.iter().any(|d| d.power_state == "SHUTOFF") => Some(h.clone()),
            _ => None,
        })
        .await;
    let stopped = hb
        .domains
        .iter()
        .find(|d| d.uuid == a.uuid.to_string())
        .unwrap();
    assert_eq!(stopped.power_state, "SHUTOFF");
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_produce_results_and_domain_states() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let fake = Arc::new(FakeHypervisor::default());
    let agent = Agent::start(config(&engine), fake.clone());
    let (s, _) = engine.register().await;
    let vm = spec("instance-1");
    let uuid: Uuid = vm.uuid.parse().unwrap();

    let r = engine
        .call(s, action("1", pb::ActionKind::Spawn, &vm))
        .await;
    assert_ok(&r, "RUNNING");
    let d = fake.domain(uuid).unwrap();
    assert_eq!(
        (
            d.spec.name.as_str(),
            d.spec.memory_mb,
            d.spec.image_name.as_str()
        ),
        ("instance-1", 256, "cirros")
    );
    assert_eq!(
        d.spec.metadata.get("owner").map(String::as_str),
        Some("tests")
    );
    // The engine resends a spawn whose result it lost: the running domain makes it ok.
    let r = engine
        .call(s, action("1", pb::ActionKind::Spawn, &vm))
        .await;
    assert_ok(&r, "RUNNING");

    let r = engine.call(s, action("2", pb::ActionKind::Stop, &vm)).await;
    assert_ok(&r, "SHUTOFF");
    assert_eq!(fake.domain(uuid).unwrap().state, PowerState::Shutoff);
    // A spawn retried onto a domain that is not running is a real conflict.
    let r = engine
        .call(s, action("2b", pb::ActionKind::Spawn, &vm))
        .await;
    assert_failed(&r, "ALREADY_EXISTS");
    assert_eq!(r.power_state, "SHUTOFF");
    let r = engine
        .call(s, action("3", pb::ActionKind::Pause, &vm))
        .await;
    assert_failed(&r, "INVALID_STATE");
    assert_eq!(
        r.power_state, "SHUTOFF",
        "a refused action reports the state"
    );

    let mut snap = action("4", pb::ActionKind::Snapshot, &vm);
    snap.snapshot_name = "before-upgrade".into();
    let r = engine.call(s, snap).await;
    assert_ok(&r, "SHUTOFF");
    assert_eq!(r.snapshot_id, "before-upgrade");
    assert_eq!(fake.domain(uuid).unwrap().snapshots, ["before-upgrade"]);

    let r = engine
        .call(s, action("5", pb::ActionKind::Start, &vm))
        .await;
    assert_ok(&r, "RUNNING");
    let mut reboot = action("6", pb::ActionKind::Reboot, &vm);
    reboot.hard = true;
    assert_ok(&engine.call(s, reboot).await, "RUNNING");
    assert_eq!(fake.domain(uuid).unwrap().boots, 3);
    let mut rebuilt = vm.clone();
    rebuilt.image_id = "img-2".into();
    let r = engine
        .call(s, action("7", pb::ActionKind::Rebuild, &rebuilt))
        .await;
    assert_ok(&r, "RUNNING");
    assert_eq!(fake.domain(uuid).unwrap().spec.image_id, "img-2");
    for (id, kind, state) in [
        ("8", pb::ActionKind::Pause, "PAUSED"),
        ("9", pb::ActionKind::Unpause, "RUNNING"),
        ("10", pb::ActionKind::Suspend, "SUSPENDED"),
        ("11", pb::ActionKind::Resume, "RUNNING"),
    ] {
        assert_ok(&engine.call(s, action(id, kind, &vm)).await, state);
    }

    let r = engine
        .call(s, action("12", pb::ActionKind::Delete, &vm))
        .await;
    assert_ok(&r, "");
    assert!(fake.domain(uuid).is_none());
    let r = engine
        .call(s, action("13", pb::ActionKind::Delete, &vm))
        .await;
    assert_ok(&r, "");
    let r = engine
        .call(s, action("14", pb::ActionKind::Stop, &vm))
        .await;
    assert_failed(&r, "NOT_FOUND");
    assert_eq!(r.power_state, "");

    // Malformed actions: INVALID_SPEC, and the hypervisor is not asked.
    let calls = fake.calls().len();
    let mut bad_uuid = spec("x");
    bad_uuid.uuid = "not-a-uuid".into();
    assert_failed(
        &engine
            .call(s, action("15", pb::ActionKind::Spawn, &bad_uuid))
            .await,
        "INVALID_SPEC",
    );
    assert_failed(
        &engine
            .call(s, action("16", pb::ActionKind::Unspecified, &vm))
            .await,
        "INVALID_SPEC",
    );
    let mut no_cpus = spec("y");
    no_cpus.vcpus = 0;
    assert_failed(
        &engine
            .call(s, action("17", pb::ActionKind::Spawn, &no_cpus))
            .await,
        "INVALID_SPEC",
    );
    let mut unnamed = action("18", pb::ActionKind::Snapshot, &vm);
    unnamed.snapshot_name.clear();
    assert_failed(&engine.call(s, unnamed).await, "INVALID_SPEC");
    let mut no_instance = action("19", pb::ActionKind::Stop, &vm);
    no_instance.instance = None;
    assert_failed(&engine.call(s, no_instance).await, "INVALID_SPEC");
    assert_eq!(fake.calls().len(), calls);
    // The driver's own spec validation maps to INVALID_SPEC too.
    let bad_name = spec("bad\u{1}name");
    assert_failed(
        &engine
            .call(s, action("20", pb::ActionKind::Spawn, &bad_name))
            .await,
        "INVALID_SPEC",
    );

    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_spawns_answer_driver_and_leave_nothing() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let fake = Arc::new(FakeHypervisor::default());
    fake.fail_next_spawns(1);
    // The --fail-spawns decorator over the fake: one more failure on top of the fake's own.
    let hv: Arc<dyn Hypervisor> = Arc::new(FaultyHypervisor::new(fake.clone(), 1));
    let agent = Agent::start(config(&engine), hv);
    let (s, _) = engine.register().await;
    let vm = spec("instance-f");
    for id in ["1", "2"] {
        let r = engine.call(s, action(id, pb::ActionKind::Spawn, &vm)).await;
        assert_failed(&r, "DRIVER");
        assert!(r.message.contains("injected"), "{r:?}");
        assert_eq!(r.power_state, "", "a failed spawn leaves no domain");
    }
    assert!(fake.list_domains().unwrap().is_empty());
    let r = engine
        .call(s, action("3", pb::ActionKind::Spawn, &vm))
        .await;
    assert_ok(&r, "RUNNING");
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_one_instance_run_in_order_and_others_run_alongside() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let rigged = Arc::new(Rigged::default());
    let agent = Agent::start(config(&engine), rigged.clone());
    let (s, _) = engine.register().await;
    let (vm, other) = (spec("instance-o"), spec("instance-p"));
    let (uuid, other_uuid): (Uuid, Uuid) = (vm.uuid.parse().unwrap(), other.uuid.parse().unwrap());
    assert_ok(
        &engine
            .call(s, action("p0", pb::ActionKind::Spawn, &other))
            .await,
        "RUNNING",
    );

    // A pause on another instance that cannot finish until this instance's actions have:
    // were instances serialised together, this test would hang.
    rigged.hold_pauses(true);
    engine.send(s, action("p1", pb::ActionKind::Pause, &other));
    // A slow spawn: were the next actions not queued behind it, they would find no domain.
    rigged
        .inner
        .set_delay(ActionKind::Spawn, Duration::from_millis(200));
    let mut snap = action("o3", pb::ActionKind::Snapshot, &vm);
    snap.snapshot_name = "s1".into();
    let sequence = [
        action("o1", pb::ActionKind::Spawn, &vm),
        action("o2", pb::ActionKind::Stop, &vm),
        snap,
        action("o4", pb::ActionKind::Start, &vm),
        action("o5", pb::ActionKind::Suspend, &vm),
    ];
    for a in sequence {
        engine.send(s, a);
    }
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(engine.result().await);
    }
    rigged.hold_pauses(false);
    results.push(engine.result().await);
    let order: Vec<_> = results.iter().map(|r| r.action_id.as_str()).collect();
    assert_eq!(order, ["o1", "o2", "o3", "o4", "o5", "p1"], "{results:?}");
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    assert_eq!(results[4].power_state, "SUSPENDED");
    assert_eq!(results[5].power_state, "PAUSED");
    let calls: Vec<_> = rigged
        .inner
        .calls()
        .into_iter()
        .filter(|(_, u)| *u == uuid)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        calls,
        [
            ActionKind::Spawn,
            ActionKind::Stop,
            ActionKind::Snapshot,
            ActionKind::Start,
            ActionKind::Suspend
        ]
    );
    assert_eq!(
        rigged.inner.domain(other_uuid).unwrap().state,
        PowerState::Paused
    );
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_gets_a_new_registration_with_the_domains() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = engine.addr;
    let fake = Arc::new(FakeHypervisor::default());
    let agent = Agent::start(config(&engine), fake.clone());
    let (s, first) = engine.register().await;
    assert!(first.domains.is_empty());
    let vm = spec("instance-r");
    assert_ok(
        &engine
            .call(s, action("1", pb::ActionKind::Spawn, &vm))
            .await,
        "RUNNING",
    );
    engine.heartbeat().await;
    engine.stop().await;

    // Nothing listens for a while: the agent's dials fail and it backs off.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut engine = FakeEngine::start(addr).await;
    let (s, again) = engine.register().await;
    assert_eq!(s, 0, "a fresh engine's first stream");
    assert_eq!(again.name, "node-1");
    let reported: Vec<_> = again
        .domains
        .iter()
        .map(|d| (d.uuid.as_str(), d.power_state.as_str()))
        .collect();
    assert_eq!(reported, [(vm.uuid.as_str(), "RUNNING")]);
    let (_, hb) = engine.heartbeat().await;
    assert_eq!(hb.seq, 1, "sequence numbers restart per stream");
    // Actions work on the new stream.
    let r = engine.call(s, action("2", pb::ActionKind::Stop, &vm)).await;
    assert_ok(&r, "SHUTOFF");
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_is_replaced_by_a_new_registration() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let agent = Agent::start(config(&engine), Arc::new(FakeHypervisor::default()));
    let (s, _) = engine.register().await;
    engine.end_stream(s, Status::aborted("replaced by a newer connection"));
    let (s2, reg) = engine.register().await;
    assert_eq!(s2, 1);
    assert_eq!(reg.name, "node-1");
    engine
        .wait_for(|e| matches!(e, Event::Message(1, _)).then_some(()))
        .await;
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_stream_and_returns() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let agent = Agent::start(config(&engine), Arc::new(FakeHypervisor::default()));
    let (s, _) = engine.register().await;
    engine.heartbeat().await;
    agent.shutdown().await;
    let closed = engine
        .wait_for(|e| match e {
            Event::Closed(stream) => Some(*stream),
            _ => None,
        })
        .await;
    assert_eq!(closed, s);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_engine_is_unreachable_returns() {
    // A port with nothing behind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = AgentConfig {
        heartbeat_interval: Duration::from_millis(100),
        reconnect_backoff: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(100),
        ..AgentConfig::new(format!("http://{addr}"), "lonely")
    };
    let agent = Agent::start(cfg, Arc::new(FakeHypervisor::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!agent.task.is_finished(), "the agent keeps retrying");
    agent.shutdown().await;
}

/// A fake with two more faults: the hypervisor can be made unreachable (node info and
/// listing fail), and pauses can be held until the test lets them through.
#[derive(Default)]
struct Rigged {
    inner: FakeHypervisor,
    down: AtomicBool,
    /// True while pauses wait. A sync lock and condvar: the waiter is a blocking-pool thread.
    pauses_held: Mutex<bool>,
    pauses_released: parking_lot::Condvar,
}

impl Rigged {
    fn check(&self) -> HvResult<()> {
        if self.down.load(Ordering::Relaxed) {
            Err(HypervisorError::Driver(
                "connection to the hypervisor lost".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn hold_pauses(&self, held: bool) {
        *self.pauses_held.lock() = held;
        self.pauses_released.notify_all();
    }
}

impl Hypervisor for Rigged {
    fn node_info(&self) -> HvResult<NodeInfo> {
        self.check()?;
        self.inner.node_info()
    }
    fn list_domains(&self) -> HvResult<Vec<DomainStatus>> {
        self.check()?;
        self.inner.list_domains()
    }
    fn spawn(&self, spec: &InstanceSpec) -> HvResult<()> {
        self.inner.spawn(spec)
    }
    fn stop(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.stop(uuid)
    }
    fn start(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.start(uuid)
    }
    fn reboot(&self, uuid: Uuid, hard: bool) -> HvResult<()> {
        self.inner.reboot(uuid, hard)
    }
    fn pause(&self, uuid: Uuid) -> HvResult<()> {
        let mut held = self.pauses_held.lock();
        while *held {
            self.pauses_released.wait(&mut held);
        }
        drop(held);
        self.inner.pause(uuid)
    }
    fn unpause(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.unpause(uuid)
    }
    fn suspend(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.suspend(uuid)
    }
    fn resume(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.resume(uuid)
    }
    fn snapshot(&self, uuid: Uuid, name: &str) -> HvResult<String> {
        self.inner.snapshot(uuid, name)
    }
    fn rebuild(&self, spec: &InstanceSpec) -> HvResult<()> {
        self.inner.rebuild(spec)
    }
    fn delete(&self, uuid: Uuid) -> HvResult<()> {
        self.inner.delete(uuid)
    }
    fn live_migration_supported(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hypervisor_makes_heartbeats_unhealthy() {
    let mut engine = FakeEngine::start("127.0.0.1:0".parse().unwrap()).await;
    let flaky = Arc::new(Rigged::default());
    let agent = Agent::start(config(&engine), flaky.clone());
    engine.register().await;
    let (_, hb) = engine.heartbeat().await;
    assert!(hb.healthy);
    flaky.down.store(true, Ordering::Relaxed);
    let hb = engine
        .wait_for(|e| match e {
            Event::Message(
                _,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::Heartbeat(h)),
                },
            ) if !h.healthy => Some(h.clone()),
            _ => None,
        })
        .await;
    assert!(hb.health_detail.contains("hypervisor lost"), "{hb:?}");
    flaky.down.store(false, Ordering::Relaxed);
    engine
        .wait_for(|e| match e {
            Event::Message(
                _,
                pb::NodeMessage {
                    body: Some(pb::node_message::Body::Heartbeat(h)),
                },
            ) if h.healthy => Some(()),
            _ => None,
        })
        .await;
    agent.shutdown().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_can_never_work_are_refused_at_once() {
    let hv: Arc<dyn Hypervisor> = Arc::new(FakeHypervisor::default());
    let base = AgentConfig::new("http://127.0.0.1:1", "n");
    let cases = [
        (
            AgentConfig {
                engine: "127.0.0.1:1".into(),
                ..base.clone()
            },
            "http://",
        ),
        (
            AgentConfig {
                engine: "https://engine:443".into(),
                ..base.clone()
            },
            "TLS",
        ),
        (
            AgentConfig {
                heartbeat_interval: Duration::from_millis(50),
                ..base.clone()
            },
            "heartbeat_interval",
        ),
        (
            AgentConfig {
                reconnect_backoff: Duration::ZERO,
                ..base.clone()
            },
            "backoff",
        ),
        (
            AgentConfig {
                resources: ResourcePolicy {
                    reserved_vcpus: 99,
                    ..ResourcePolicy::default()
                },
                ..base.clone()
            },
            "reserved_vcpus",
        ),
    ];
    for (cfg, key) in cases {
        let out = tokio::time::timeout(PATIENCE, run(cfg, Arc::clone(&hv), std::future::pending()))
            .await
            .expect("refused at once");
        match out {
            Err(NodeError::Config(msg)) => assert!(msg.contains(key), "{key}: {msg}"),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_chain_forgets_finished_instances() {
    let fake = Arc::new(FakeHypervisor::default());
    let executor = super::Executor::new(fake.clone());
    // Drive the executor directly: its results go to a channel we read.
    let (tx, mut rx) = mpsc::channel(16);
    let vm = spec("instance-c");
    executor.submit(action("1", pb::ActionKind::Spawn, &vm), tx.clone());
    executor.submit(action("2", pb::ActionKind::Stop, &vm), tx.clone());
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // The chain entry goes once the last action's task has finished.
    tokio::time::timeout(PATIENCE, async {
        while executor.busy_instances() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the chain empties");
    assert_eq!(
        fake.domain(vm.uuid.parse().unwrap()).unwrap().state,
        PowerState::Shutoff
    );
}
