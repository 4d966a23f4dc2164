//! End to end: the engine (in-process gRPC server) and real `berth-node` processes on
//! libvirt's test driver, each a simulated host of its own size and availability zone.
//!
//! - `thirty_servers_every_action`: 30 servers across AZs and server groups, all ACTIVE on
//!   the host they were placed on; then every instance action with the states it leads to.
//! - `failed_spawn_is_retried_on_an_alternate`: a node that fails spawns; the build lands on
//!   another host and the failure is in the server's history.
//! - `dead_node_is_evacuated_and_reconciled_on_restart`: kill a node → it goes down within
//!   `down_after` → evacuate → its servers run elsewhere with their allocations; restart it →
//!   it registers again and the engine reconciles what it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_engine::EngineConfig;
use berth_engine::api::ServerConfig;
use berth_proto::v1::servers_client::ServersClient;
use berth_tests::node::NodeProc;
use berth_tests::v1 as pb;
use berth_tests::*;
use pb::server_action_request::Action;
use tonic::Code;

/// Heartbeat interval of the test nodes; the engine's `down_after` is three of them.
const HEARTBEAT: &str = "0.2";

/// Starts `berth-node` as `name` in `az` against `server`, simulating a host of the given
/// size.
fn start_node(
    server: &TestServer,
    dir: &std::path::Path,
    name: &str,
    az: &str,
    size: (u32, u64, u64),
    extra: &[&str],
) -> NodeProc {
    let engine = format!("http://{}", server.addr);
    let token = server.node_token(name);
    let extra: Vec<&str> = ["--az", az, "--token", &token]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    NodeProc::simulated(&engine, dir, name, HEARTBEAT, size, &extra)
}

/// The provider named `name`, if it exists.
async fn host(server: &TestServer, name: &str) -> Option<pb::ResourceProvider> {
    let mut p = server.placement.clone();
    let list = p
        .list_resource_providers(pb::ListResourceProvidersRequest {
            name: name.to_string(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    list.providers.into_iter().find(|h| h.name == name)
}

/// Waits until every named host is registered and up.
async fn wait_up(server: &TestServer, names: &[&str]) {
    for name in names {
        wait_for(
            Duration::from_secs(60),
            &format!("{name} registers and is up"),
            || async { host(server, name).await.filter(|h| h.up).map(|_| ()) },
        )
        .await;
    }
}

/// Flavors `tiny` (1 vCPU, 512 MiB, 1 GiB) and `small` (2, 1024, 2), images `cirros` and
/// `debian`.
async fn catalog(server: &TestServer) {
    let mut c = server.catalog.clone();
    for (name, vcpus, ram_mb, disk_gb) in [("tiny", 1, 512, 1), ("small", 2, 1024, 2)] {
        c.create_flavor(pb::CreateFlavorRequest {
            name: name.into(),
            vcpus,
            ram_mb,
            disk_gb,
            ..Default::default()
        })
        .await
        .expect("create flavor");
    }
    for name in ["cirros", "debian"] {
        c.create_image(pb::CreateImageRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("create image");
    }
}

fn create_req(name: &str, count: u32) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: name.into(),
        flavor: "tiny".into(),
        image: "cirros".into(),
        count,
        project_id: "demo".into(),
        user_id: "alice".into(),
        request_id: format!("create-{name}"),
        ..Default::default()
    }
}

async fn create(
    servers: &mut ServersClient<AuthChannel>,
    req: pb::CreateServerRequest,
) -> Vec<pb::Server> {
    let name = req.name.clone();
    servers
        .create_server(req)
        .await
        .unwrap_or_else(|s| panic!("create {name}: {s:?}"))
        .into_inner()
        .servers
}

async fn get(servers: &mut ServersClient<AuthChannel>, uuid: &str) -> pb::Server {
    servers
        .get_server(pb::GetServerRequest { uuid: uuid.into() })
        .await
        .unwrap_or_else(|s| panic!("get {uuid}: {s:?}"))
        .into_inner()
        .server
        .expect("server in response")
}

async fn act(
    servers: &mut ServersClient<AuthChannel>,
    uuid: &str,
    request_id: &str,
    action: Action,
) -> Result<pb::ServerActionResponse, tonic::Status> {
    servers
        .server_action(pb::ServerActionRequest {
            uuid: uuid.into(),
            request_id: request_id.into(),
            action: Some(action),
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs `action` and checks the server ends idle in `state` with `power` (empty: no domain).
async fn step(
    servers: &mut ServersClient<AuthChannel>,
    uuid: &str,
    label: &str,
    action: Action,
    state: pb::VmState,
    power: &str,
) -> pb::ServerActionResponse {
    let res = act(servers, uuid, &format!("{label}-{uuid}"), action)
        .await
        .unwrap_or_else(|s| panic!("{label}: {s:?}"));
    let s = res.server.clone().expect("server in response");
    assert_eq!(s.vm_state(), state, "{label}: vm_state of {s:?}");
    assert_eq!(s.task_state(), pb::TaskState::None, "{label}: task_state");
    assert_eq!(s.power_state, power, "{label}: power_state");
    let last = s.actions.last().expect("action history");
    assert!(last.ok, "{label}: last action record {last:?}");
    res
}

/// The consumer's allocations: provider uuid → resources.
async fn allocations(server: &TestServer, uuid: &str) -> BTreeMap<String, Vec<pb::ResourceAmount>> {
    let mut p = server.placement.clone();
    match p
        .get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: uuid.into(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .allocations
            .into_iter()
            .map(|a| (a.provider_uuid, a.resources))
            .collect(),
        Err(s) if s.code() == Code::NotFound => BTreeMap::new(),
        Err(s) => panic!("get allocations {uuid}: {s:?}"),
    }
}

fn noargs() -> pb::NoArgs {
    pb::NoArgs {}
}

async fn start_engine() -> TestServer {
    TestServer::start_with(EngineConfig::default(), ServerConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_servers_every_action() {
    let server = start_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = start_node(&server, dir.path(), "node-a", "az-1", (8, 16384, 100), &[]);
    let _b = start_node(&server, dir.path(), "node-b", "az-1", (16, 32768, 200), &[]);
    let _c = start_node(&server, dir.path(), "node-c", "az-2", (32, 65536, 400), &[]);
    wait_up(&server, &["node-a", "node-b", "node-c"]).await;
    catalog(&server).await;
    let mut servers = server.servers.clone();
    let mut catalog_client = server.catalog.clone();
    for (name, policy) in [
        ("spread", pb::ServerGroupPolicy::AntiAffinity),
        ("pack", pb::ServerGroupPolicy::Affinity),
    ] {
        catalog_client
            .create_server_group(pb::CreateServerGroupRequest {
                name: name.into(),
                policy: policy.into(),
                project_id: "demo".into(),
                ..Default::default()
            })
            .await
            .expect("create group");
    }

    // 30 servers: 2 anti-affine in az-1 (one per host there), 6 affine, 12 in az-1, 10 in az-2.
    let mut all = Vec::new();
    let mut spread = create_req("spread", 2);
    spread.group = "spread".into();
    spread.availability_zone = "az-1".into();
    all.extend(create(&mut servers, spread).await);
    let mut pack = create_req("pack", 6);
    pack.group = "pack".into();
    all.extend(create(&mut servers, pack).await);
    let mut az1 = create_req("web", 12);
    az1.availability_zone = "az-1".into();
    all.extend(create(&mut servers, az1).await);
    let mut az2 = create_req("db", 10);
    az2.availability_zone = "az-2".into();
    all.extend(create(&mut servers, az2).await);
    assert_eq!(all.len(), 30);
    let az_of: BTreeMap<&str, &str> =
        [("node-a", "az-1"), ("node-b", "az-1"), ("node-c", "az-2")].into();
    for s in &all {
        assert_eq!(s.vm_state(), pb::VmState::Active, "{s:?}");
        assert_eq!(s.power_state, "RUNNING", "{s:?}");
        let want_az = az_of[s.host_name.as_str()];
        assert_eq!(s.availability_zone, want_az, "{}", s.name);
        if s.name.starts_with("web") || s.name.starts_with("spread") {
            assert_eq!(want_az, "az-1", "{} landed on {}", s.name, s.host_name);
        }
        if s.name.starts_with("db") {
            assert_eq!(want_az, "az-2", "{} landed on {}", s.name, s.host_name);
        }
        // The claim is on the host the node spawned it on.
        let alloc = allocations(&server, &s.uuid).await;
        assert_eq!(
            alloc.keys().collect::<Vec<_>>(),
            [&s.host_uuid],
            "{}",
            s.name
        );
    }
    let spread_hosts: BTreeSet<_> = all
        .iter()
        .filter(|s| s.name.starts_with("spread"))
        .map(|s| &s.host_name)
        .collect();
    assert_eq!(
        spread_hosts.len(),
        2,
        "anti-affinity puts each member on its own host"
    );
    let pack_hosts: BTreeSet<_> = all
        .iter()
        .filter(|s| s.name.starts_with("pack"))
        .map(|s| &s.host_name)
        .collect();
    assert_eq!(pack_hosts.len(), 1, "affinity keeps the group on one host");
    // Every host reports the instances placed on it.
    for name in ["node-a", "node-b", "node-c"] {
        let h = host(&server, name).await.expect("host");
        let placed = all.iter().filter(|s| s.host_name == name).count();
        assert_eq!(h.instances as usize, placed, "{name}");
    }
    // A repeated create with the same request id creates nothing new.
    let again = create(&mut servers, create_req("db", 10)).await;
    let again_uuids: BTreeSet<_> = again.iter().map(|s| s.uuid.clone()).collect();
    let db_uuids: BTreeSet<_> = all
        .iter()
        .filter(|s| s.name.starts_with("db"))
        .map(|s| s.uuid.clone())
        .collect();
    assert_eq!(again_uuids, db_uuids, "create is idempotent by request id");

    // Every action on one server of az-1 (two hosts there, so moves have a destination).
    let s = all
        .iter()
        .find(|s| s.name.starts_with("web"))
        .expect("a web server")
        .clone();
    let u = s.uuid.as_str();
    use pb::VmState as V;
    step(
        &mut servers,
        u,
        "stop",
        Action::Stop(noargs()),
        V::Stopped,
        "SHUTOFF",
    )
    .await;
    // Pausing a stopped server is refused, naming the state.
    let e = act(&mut servers, u, "pause-stopped", Action::Pause(noargs()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("STOPPED"), "{}", e.message());
    step(
        &mut servers,
        u,
        "start",
        Action::Start(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    // The same request id again: the stored answer, no second action.
    let before = get(&mut servers, u).await.actions.len();
    act(
        &mut servers,
        u,
        &format!("start-{u}"),
        Action::Start(noargs()),
    )
    .await
    .expect("repeat start");
    assert_eq!(
        get(&mut servers, u).await.actions.len(),
        before,
        "repeated request id acts once"
    );
    step(
        &mut servers,
        u,
        "reboot-soft",
        Action::Reboot(pb::RebootArgs { hard: false }),
        V::Active,
        "RUNNING",
    )
    .await;
    step(
        &mut servers,
        u,
        "reboot-hard",
        Action::Reboot(pb::RebootArgs { hard: true }),
        V::Active,
        "RUNNING",
    )
    .await;
    step(
        &mut servers,
        u,
        "pause",
        Action::Pause(noargs()),
        V::Paused,
        "PAUSED",
    )
    .await;
    step(
        &mut servers,
        u,
        "unpause",
        Action::Unpause(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    step(
        &mut servers,
        u,
        "suspend",
        Action::Suspend(noargs()),
        V::Suspended,
        "SUSPENDED",
    )
    .await;
    step(
        &mut servers,
        u,
        "resume",
        Action::Resume(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    let snap = step(
        &mut servers,
        u,
        "snapshot",
        Action::Snapshot(pb::SnapshotArgs {
            image_name: "web-snap".into(),
        }),
        V::Active,
        "RUNNING",
    )
    .await;
    let image = catalog_client
        .get_image(pb::GetImageRequest {
            id: "web-snap".into(),
        })
        .await
        .expect("snapshot image exists")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(image.id, snap.image_id);
    let rebuilt = step(
        &mut servers,
        u,
        "rebuild",
        Action::Rebuild(pb::RebuildArgs {
            image: "debian".into(),
        }),
        V::Active,
        "RUNNING",
    )
    .await;
    let rebuilt = rebuilt.server.expect("server");
    assert_eq!(rebuilt.image, "debian");
    assert_eq!(rebuilt.host_uuid, s.host_uuid, "rebuild stays on its host");

    // Shelve keeps the claim; offload releases it; unshelve schedules again.
    step(
        &mut servers,
        u,
        "shelve",
        Action::Shelve(noargs()),
        V::Shelved,
        "SHUTOFF",
    )
    .await;
    assert!(
        !allocations(&server, u).await.is_empty(),
        "shelved keeps its resources"
    );
    let off = step(
        &mut servers,
        u,
        "offload",
        Action::ShelveOffload(noargs()),
        V::ShelvedOffloaded,
        "",
    )
    .await;
    assert_eq!(off.server.expect("server").host_name, "");
    assert!(
        allocations(&server, u).await.is_empty(),
        "offloaded holds nothing"
    );
    let un = step(
        &mut servers,
        u,
        "unshelve",
        Action::Unshelve(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    let un = un.server.expect("server");
    assert_eq!(
        allocations(&server, u).await.keys().collect::<Vec<_>>(),
        [&un.host_uuid]
    );

    // Resize to another host, confirm: only the new host's claim is left, with the new size.
    let r = step(
        &mut servers,
        u,
        "resize",
        Action::Resize(pb::ResizeArgs {
            flavor: "small".into(),
        }),
        V::Resized,
        "RUNNING",
    )
    .await;
    let r = r.server.expect("server");
    assert_ne!(r.host_uuid, un.host_uuid, "resize moves to another host");
    assert_eq!(
        allocations(&server, u).await.len(),
        2,
        "both claims held while RESIZED"
    );
    let c = step(
        &mut servers,
        u,
        "confirm",
        Action::ConfirmResize(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    let c = c.server.expect("server");
    assert_eq!(c.flavor, "small");
    let alloc = allocations(&server, u).await;
    assert_eq!(alloc.keys().collect::<Vec<_>>(), [&r.host_uuid]);
    assert!(
        alloc[&r.host_uuid]
            .iter()
            .any(|a| a.resource_class == "VCPU" && a.amount == 2),
        "{alloc:?}"
    );

    // Cold migrate, then revert: back where it was, one claim.
    let m = step(
        &mut servers,
        u,
        "migrate",
        Action::Migrate(pb::MoveArgs::default()),
        V::Resized,
        "RUNNING",
    )
    .await;
    let m = m.server.expect("server");
    assert_ne!(m.host_uuid, c.host_uuid);
    let back = step(
        &mut servers,
        u,
        "revert",
        Action::RevertResize(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;
    let back = back.server.expect("server");
    assert_eq!(
        back.host_uuid, c.host_uuid,
        "revert returns to the source host"
    );
    assert_eq!(
        allocations(&server, u).await.keys().collect::<Vec<_>>(),
        [&c.host_uuid]
    );

    // The test driver cannot live-migrate: refused, saying why, nothing changed.
    let e = act(
        &mut servers,
        u,
        "live",
        Action::LiveMigrate(pb::MoveArgs::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("live"), "{}", e.message());
    assert_eq!(get(&mut servers, u).await.vm_state(), V::Active);

    // Evacuate needs the host down.
    let e = act(
        &mut servers,
        u,
        "evac-up",
        Action::Evacuate(pb::MoveArgs::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Locked: every action but unlock is refused.
    step(
        &mut servers,
        u,
        "lock",
        Action::Lock(pb::LockArgs {
            reason: "audit".into(),
        }),
        V::Active,
        "RUNNING",
    )
    .await;
    let e = act(&mut servers, u, "stop-locked", Action::Stop(noargs()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("locked"), "{}", e.message());
    step(
        &mut servers,
        u,
        "unlock",
        Action::Unlock(noargs()),
        V::Active,
        "RUNNING",
    )
    .await;

    // Delete: gone, and its resources with it.
    servers
        .delete_server(pb::DeleteServerRequest {
            uuid: u.into(),
            request_id: "del".into(),
        })
        .await
        .expect("delete");
    let e = servers
        .get_server(pb::GetServerRequest { uuid: u.into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(allocations(&server, u).await.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_spawn_is_retried_on_an_alternate() {
    let server = start_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The failing node is the biggest, so the (spreading) weighers pick it first.
    let _bad = start_node(
        &server,
        dir.path(),
        "node-bad",
        "az-1",
        (64, 262144, 1000),
        &["--fail-spawns", "5"],
    );
    let _good = start_node(
        &server,
        dir.path(),
        "node-good",
        "az-1",
        (8, 16384, 100),
        &[],
    );
    wait_up(&server, &["node-bad", "node-good"]).await;
    catalog(&server).await;
    let mut servers = server.servers.clone();
    let s = create(&mut servers, create_req("retry", 1))
        .await
        .pop()
        .expect("one server");
    assert_eq!(s.vm_state(), pb::VmState::Active, "{s:?}");
    assert_eq!(s.host_name, "node-good", "retried on the alternate");
    let history = s
        .actions
        .iter()
        .map(|a| a.message.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        history.contains("node-bad"),
        "the failed attempt is recorded: {history}"
    );
    assert_eq!(
        allocations(&server, &s.uuid)
            .await
            .keys()
            .collect::<Vec<_>>(),
        [&s.host_uuid]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_evacuated_and_reconciled_on_restart() {
    let server = start_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = start_node(&server, dir.path(), "node-a", "az-1", (16, 32768, 200), &[]);
    let mut doomed = start_node(&server, dir.path(), "node-x", "az-1", (16, 32768, 200), &[]);
    wait_up(&server, &["node-a", "node-x"]).await;
    catalog(&server).await;
    let mut servers = server.servers.clone();
    let mut on_x = Vec::new();
    for i in 0..2 {
        let mut req = create_req(&format!("x{i}"), 1);
        req.force_hosts = vec!["node-x".into()];
        on_x.extend(create(&mut servers, req).await);
    }
    assert!(
        on_x.iter()
            .all(|s| s.host_name == "node-x" && s.vm_state() == pb::VmState::Active)
    );

    doomed.kill();
    let x = host(&server, "node-x").await.expect("node-x");
    let started = Instant::now();
    wait_for(Duration::from_secs(30), "node-x is marked down", || async {
        host(&server, "node-x").await.filter(|h| !h.up).map(|_| ())
    })
    .await;
    // down_after is 3 × 0.2 s; allow for a loaded machine, but it must not take ages.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "down after {:?}",
        started.elapsed()
    );

    // Evacuate the first server; leave the second to be found missing on restart.
    let ev = act(
        &mut servers,
        &on_x[0].uuid,
        "evac",
        Action::Evacuate(pb::MoveArgs::default()),
    )
    .await
    .expect("evacuate");
    let ev = ev.server.expect("server");
    assert_eq!(ev.vm_state(), pb::VmState::Active);
    assert_eq!(ev.host_name, "node-a");
    let alloc = allocations(&server, &ev.uuid).await;
    assert_eq!(
        alloc.keys().collect::<Vec<_>>(),
        [&ev.host_uuid],
        "allocations moved"
    );
    assert_ne!(ev.host_uuid, x.uuid);

    // Restart: the test driver forgot every domain, so the server left there is missing.
    doomed.spawn();
    wait_up(&server, &["node-x"]).await;
    let left = wait_for(
        Duration::from_secs(30),
        "the left-behind server is reconciled",
        || {
            let mut servers = servers.clone();
            let uuid = on_x[1].uuid.clone();
            async move {
                let s = get(&mut servers, &uuid).await;
                (s.vm_state() == pb::VmState::Error).then_some(s)
            }
        },
    )
    .await;
    assert!(left.fault.contains("missing"), "{}", left.fault);
    // The evacuated one is untouched.
    assert_eq!(
        get(&mut servers, &ev.uuid).await.vm_state(),
        pb::VmState::Active
    );
    server.shutdown().await;
}
