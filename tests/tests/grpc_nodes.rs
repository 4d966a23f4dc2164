//! `berth.v1.Nodes/Connect` over real loopback gRPC: a node registers and its provider
//! appears in the engine, bad first messages and bad fields end the call with
//! INVALID_ARGUMENT naming the problem, actions round-trip, and a newer stream from the
//! same node replaces the older one with ABORTED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::api::nodes::NodesApi;
use berth_engine::lifecycle::{ComputeConfig, Dispatcher, NodeAction, NodeHub};
use berth_engine::{Engine, EngineConfig};
use berth_proto::v1::nodes_client::NodesClient;
use berth_proto::v1::nodes_server::NodesServer;
use berth_tests::v1 as pb;
use berth_tests::{DEADLINE, connect, inv};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

/// A server with only the Nodes service, on 127.0.0.1:0.
struct NodesServerUnderTest {
    engine: Arc<Engine>,
    hub: Arc<NodeHub>,
    client: NodesClient<Channel>,
    _stop: oneshot::Sender<()>,
}

impl NodesServerUnderTest {
    async fn start() -> Self {
        let engine = Arc::new(Engine::new(EngineConfig::default()).expect("default config"));
        let hub = NodeHub::new(engine.clone(), ComputeConfig::default());
        hub.spawn_liveness_monitor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr: SocketAddr = listener.local_addr().expect("listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = NodesServer::new(NodesApi::new(hub.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        });
        let channel = tokio::time::timeout(DEADLINE, connect(addr))
            .await
            .expect("connect before the deadline")
            .expect("connect to the test server");
        Self {
            engine,
            hub,
            client: NodesClient::new(channel),
            _stop: stop,
        }
    }

    /// Opens a stream and sends `first`; returns the call's result and the sender for more.
    async fn open(
        &self,
        first: pb::node_message::Body,
    ) -> (
        mpsc::Sender<pb::NodeMessage>,
        Result<Streaming<pb::EngineMessage>, Status>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::NodeMessage { body: Some(first) })
            .await
            .expect("queue the first message");
        let res = tokio::time::timeout(
            DEADLINE,
            self.client.clone().connect(ReceiverStream::new(rx)),
        )
        .await
        .expect("the engine answers before the deadline")
        .map(tonic::Response::into_inner);
        (tx, res)
    }

    /// Registers; returns the sender, the inbound stream and `Registered`.
    async fn register(
        &self,
        reg: pb::Register,
    ) -> (
        mpsc::Sender<pb::NodeMessage>,
        Streaming<pb::EngineMessage>,
        pb::Registered,
    ) {
        let (tx, res) = self.open(pb::node_message::Body::Register(reg)).await;
        let mut inbound = res.expect("registration accepted");
        match next(&mut inbound).await {
            Ok(Some(pb::EngineMessage {
                body: Some(pb::engine_message::Body::Registered(r)),
            })) => (tx, inbound, r),
            other => panic!("expected Registered first, got {other:?}"),
        }
    }
}

async fn next(
    inbound: &mut Streaming<pb::EngineMessage>,
) -> Result<Option<pb::EngineMessage>, Status> {
    tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("a message before the deadline")
}

fn register(name: &str) -> pb::Register {
    pb::Register {
        name: name.into(),
        availability_zone: "az1".into(),
        traits: vec!["CUSTOM_SSD".into()],
        inventories: vec![inv("VCPU", 8), inv("MEMORY_MB", 16384), inv("DISK_GB", 200)],
        arch: "x86_64".into(),
        hypervisor_type: "QEMU".into(),
        hypervisor_version: "8.0.0".into(),
        live_migration: true,
        domains: Vec::new(),
        heartbeat_interval_ms: 1000,
        agent_version: "grpc-test".into(),
    }
}

#[tokio::test]
async fn register_creates_the_provider_and_actions_round_trip() {
    let server = NodesServerUnderTest::start().await;
    let (tx, mut inbound, registered) = server.register(register("cn-grpc-1")).await;
    let uuid = Uuid::parse_str(&registered.provider_uuid).expect("a uuid");
    assert_eq!(
        registered.provider_uuid,
        uuid.to_string(),
        "lower-case, hyphenated"
    );
    assert_eq!(registered.down_after_ms, 3000);
    assert!(registered.warnings.is_empty(), "{:?}", registered.warnings);

    let p = server
        .engine
        .get_provider(&uuid)
        .expect("the provider exists");
    assert_eq!(p.name, "cn-grpc-1");
    assert_eq!(p.availability_zone, "az1");
    assert_eq!(p.traits, ["CUSTOM_SSD"]);
    assert!(p.up);
    assert_eq!(p.usages.len(), 3);
    assert_eq!(server.engine.resolve_host("cn-grpc-1"), Some(uuid));
    assert!(server.hub.is_connected(&uuid));

    tx.send(pb::NodeMessage {
        body: Some(pb::node_message::Body::Heartbeat(pb::Heartbeat {
            seq: 1,
            healthy: true,
            ..Default::default()
        })),
    })
    .await
    .expect("send a heartbeat");

    let call = {
        let hub = server.hub.clone();
        tokio::spawn(async move {
            hub.dispatch(
                uuid,
                NodeAction {
                    kind: pb::ActionKind::Stop,
                    instance: pb::InstanceSpec {
                        uuid: Uuid::new_v4().to_string(),
                        name: "instance-a".into(),
                        ..Default::default()
                    },
                    hard: false,
                    snapshot_name: String::new(),
                    request_id: "req-grpc".into(),
                },
                Duration::from_secs(10),
            )
            .await
        })
    };
    let action = match next(&mut inbound).await {
        Ok(Some(pb::EngineMessage {
            body: Some(pb::engine_message::Body::Action(a)),
        })) => a,
        other => panic!("expected an action, got {other:?}"),
    };
    assert_eq!(action.kind, pb::ActionKind::Stop as i32);
    assert_eq!(action.request_id, "req-grpc");
    tx.send(pb::NodeMessage {
        body: Some(pb::node_message::Body::ActionResult(pb::ActionResult {
            action_id: action.action_id,
            ok: true,
            power_state: "SHUTOFF".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("send the result");
    let outcome = call.await.expect("no panic").expect("an answer");
    assert!(outcome.ok);
    assert_eq!(outcome.power_state, "SHUTOFF");

    // The node goes away: the stream ends, the host stays up until down_after.
    drop(tx);
    drop(inbound);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.hub.is_connected(&uuid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "disconnect not noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn first_message_must_be_register() {
    let server = NodesServerUnderTest::start().await;
    let (_tx, res) = server
        .open(pb::node_message::Body::Heartbeat(pb::Heartbeat::default()))
        .await;
    let status = res.expect_err("a heartbeat first is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("first message must be register"),
        "{status:?}"
    );
    assert_eq!(server.engine.provider_count(), 0);
}

#[tokio::test]
async fn bad_inventory_is_invalid_argument_naming_the_field() {
    let server = NodesServerUnderTest::start().await;
    let mut reg = register("cn-bad");
    reg.inventories[1].reserved = 20000; // above MEMORY_MB's total of 16384
    let (_tx, res) = server.open(pb::node_message::Body::Register(reg)).await;
    let status = res.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("register.inventories[MEMORY_MB].reserved"),
        "{status:?}"
    );

    let mut reg = register("cn-bad");
    reg.inventories[0].resource_class = "vcpu".into();
    let (_tx, res) = server.open(pb::node_message::Body::Register(reg)).await;
    let status = res.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("register.inventories[0].resource_class"),
        "{status:?}"
    );
    assert_eq!(server.engine.provider_count(), 0, "nothing registered");
}

#[tokio::test]
async fn a_newer_stream_replaces_the_older_with_aborted() {
    let server = NodesServerUnderTest::start().await;
    let (_tx1, mut first, r1) = server.register(register("cn-twice")).await;
    let (_tx2, _second, r2) = server.register(register("cn-twice")).await;
    assert_eq!(r1.provider_uuid, r2.provider_uuid);
    let status = loop {
        match next(&mut first).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the old stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("replaced"), "{status:?}");
    let uuid = Uuid::parse_str(&r2.provider_uuid).expect("a uuid");
    assert!(server.hub.is_connected(&uuid));
    assert_eq!(server.hub.connected_nodes(), 1);
}
