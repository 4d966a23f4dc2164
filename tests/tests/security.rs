//! Issue 8 over loopback, against the real server: for every RPC, no token, an expired
//! token, a forged signature, a node's token, the wrong role and another project each get
//! the right code, and none of them changes anything; readers and members can do what they
//! should; a node registers only as itself (token or certificate); with TLS, a client
//! without a certificate cannot open the node stream, a certificate from another CA is
//! refused at the handshake, and plain text to the TLS port fails cleanly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_engine::Engine;
use berth_engine::api::ServerConfig;
use berth_engine::auth::policy::{Access, METHODS, NODES_CONNECT};
use berth_engine::auth::tls::{CertInit, cert_init};
use berth_engine::auth::{Role, TokenKey, TokenSpec};
use berth_engine::lifecycle::ComputeConfig;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::nodes_client::NodesClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_proto::v1::servers_client::ServersClient;
use berth_tests::v1 as pb;
use berth_tests::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const P1: &str = "sec-p1";
const P2: &str = "sec-p2";
const HOUR: Duration = Duration::from_secs(3600);

/// The objects the calls name: all in project P1 where a project applies.
struct Fixture {
    host: String,
    host_name: String,
    aggregate: String,
    group: String,
    consumer: String,
    server: String,
}

/// A `berth-node --hypervisor fake` process, killed on drop.
struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(server: &TestServer, name: &str) -> NodeProc {
    let mut cmd = Command::new(berth_node_binary());
    cmd.args([
        "--engine",
        &format!("http://{}", server.addr),
        "--name",
        name,
        "--hypervisor",
        "fake",
        "--heartbeat-interval",
        "1",
        "--log",
        "warn",
    ])
    .env("BERTH_NODE_TOKEN", server.node_token(name))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_NODE_") && k != "BERTH_NODE_TOKEN" {
            cmd.env_remove(k);
        }
    }
    NodeProc(cmd.spawn().expect("spawn berth-node"))
}

async fn wait_host_up(server: &TestServer, name: &str) -> pb::ResourceProvider {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut p = server.placement.clone();
    loop {
        let hosts = p
            .list_resource_providers(pb::ListResourceProvidersRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("list providers as admin")
            .into_inner()
            .providers;
        if let Some(h) = hosts.into_iter().find(|h| h.up) {
            return h;
        }
        assert!(Instant::now() < deadline, "{name} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cloud with one real (fake-hypervisor) node, a flavor, an image, a group, a claimed
/// consumer and a server, the last three in P1.
async fn fixture(server: &TestServer) -> (Fixture, NodeProc) {
    let node = spawn_node(server, "sec-node");
    let host = wait_host_up(server, "sec-node").await;
    let mut c = server.catalog.clone();
    c.create_flavor(pb::CreateFlavorRequest {
        name: "sec.small".into(),
        vcpus: 1,
        ram_mb: 256,
        disk_gb: 1,
        ..Default::default()
    })
    .await
    .expect("flavor");
    c.create_image(pb::CreateImageRequest {
        name: "sec-img".into(),
        ..Default::default()
    })
    .await
    .expect("image");
    let group = c
        .create_server_group(pb::CreateServerGroupRequest {
            name: "sec-group".into(),
            policy: pb::ServerGroupPolicy::SoftAntiAffinity as i32,
            project_id: P1.into(),
            ..Default::default()
        })
        .await
        .expect("group")
        .into_inner()
        .server_group
        .expect("group")
        .id;
    let aggregate = new_uuid();
    server
        .placement
        .clone()
        .set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: aggregate.clone(),
            metadata: [("k".to_string(), "v".to_string())].into(),
        })
        .await
        .expect("aggregate metadata");
    let consumer = server
        .scheduler
        .clone()
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(spec(&[("VCPU", 1), ("MEMORY_MB", 128)], P1)),
        })
        .await
        .expect("claim as admin")
        .into_inner()
        .selections[0]
        .consumer_uuid
        .clone();
    // The server is created by a member of P1 with its own token: what members may do.
    let member = server.token(&[Role::Member], P1, "alice", HOUR);
    let created = ServersClient::new(server.as_token(&member))
        .create_server(create_server_request(P1))
        .await
        .expect("a member creates a server in its project")
        .into_inner()
        .servers;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].vm_state, pb::VmState::Active as i32);
    (
        Fixture {
            host: host.uuid,
            host_name: host.name,
            aggregate,
            group,
            consumer,
            server: created[0].uuid.clone(),
        },
        node,
    )
}

fn create_server_request(project: &str) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: "sec-vm".into(),
        flavor: "sec.small".into(),
        image: "sec-img".into(),
        count: 1,
        project_id: project.into(),
        user_id: "alice".into(),
        ..Default::default()
    }
}

/// Calls `path` with a plausible request naming the fixture's objects; the answer's status.
async fn invoke(path: &str, ch: AuthChannel, f: &Fixture) -> Result<(), Status> {
    let mut p = PlacementClient::new(ch.clone());
    let mut s = SchedulerClient::new(ch.clone());
    let mut c = CatalogClient::new(ch.clone());
    let mut v = ServersClient::new(ch);
    let spec1 = || Some(spec(&[("VCPU", 1), ("MEMORY_MB", 128)], P1));
    let host = || f.host.clone();
    let consumer = || f.consumer.clone();
    let method = path.rsplit('/').next().unwrap_or_default();
    let service = path.split('/').nth(1).unwrap_or_default();
    macro_rules! ok {
        ($e:expr) => {
            $e.await.map(|_| ())
        };
    }
    match (service, method) {
        ("berth.v1.Catalog", "CreateFlavor") => ok!(c.create_flavor(pb::CreateFlavorRequest {
            name: "sec.new".into(),
            vcpus: 1,
            ram_mb: 128,
            disk_gb: 1,
            ..Default::default()
        })),
        ("berth.v1.Catalog", "CreateImage") => ok!(c.create_image(pb::CreateImageRequest {
            name: "sec-new".into(),
            ..Default::default()
        })),
        ("berth.v1.Catalog", "CreateServerGroup") => {
            ok!(c.create_server_group(pb::CreateServerGroupRequest {
                name: "sec-new".into(),
                policy: pb::ServerGroupPolicy::Affinity as i32,
                project_id: P1.into(),
                ..Default::default()
            }))
        }
        ("berth.v1.Catalog", "DeleteFlavor") => ok!(c.delete_flavor(pb::DeleteFlavorRequest {
            id: "sec.small".into()
        })),
        ("berth.v1.Catalog", "DeleteImage") => ok!(c.delete_image(pb::DeleteImageRequest {
            id: "sec-img".into()
        })),
        ("berth.v1.Catalog", "DeleteServerGroup") => {
            ok!(c.delete_server_group(pb::DeleteServerGroupRequest {
                id: f.group.clone()
            }))
        }
        ("berth.v1.Catalog", "GetFlavor") => ok!(c.get_flavor(pb::GetFlavorRequest {
            id: "sec.small".into()
        })),
        ("berth.v1.Catalog", "GetImage") => ok!(c.get_image(pb::GetImageRequest {
            id: "sec-img".into()
        })),
        ("berth.v1.Catalog", "GetServerGroup") => {
            ok!(c.get_server_group(pb::GetServerGroupRequest {
                id: f.group.clone()
            }))
        }
        ("berth.v1.Catalog", "ListFlavors") => {
            ok!(c.list_flavors(pb::ListFlavorsRequest::default()))
        }
        ("berth.v1.Catalog", "ListImages") => ok!(c.list_images(pb::ListImagesRequest::default())),
        ("berth.v1.Catalog", "ListServerGroups") => {
            ok!(c.list_server_groups(pb::ListServerGroupsRequest::default()))
        }
        ("berth.v1.Placement", "CreateResourceClass") => {
            ok!(p.create_resource_class(pb::CreateResourceClassRequest {
                name: "CUSTOM_SEC_NEW".into()
            }))
        }
        ("berth.v1.Placement", "CreateResourceProvider") => ok!(p.create_resource_provider(
            provider_request("sec-new-host", host_inventories(4, 4096, 40))
        )),
        ("berth.v1.Placement", "DeleteAllocations") => {
            ok!(p.delete_allocations(pb::DeleteAllocationsRequest {
                consumer_uuid: consumer()
            }))
        }
        ("berth.v1.Placement", "DeleteResourceProvider") => {
            ok!(p.delete_resource_provider(pb::DeleteResourceProviderRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "GetAggregateMetadata") => {
            ok!(p.get_aggregate_metadata(pb::GetAggregateMetadataRequest {
                aggregate: f.aggregate.clone()
            }))
        }
        ("berth.v1.Placement", "GetAggregates") => {
            ok!(p.get_aggregates(pb::GetAggregatesRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "GetAllocationCandidates") => {
            ok!(
                p.get_allocation_candidates(pb::GetAllocationCandidatesRequest {
                    resources: vec![amount("VCPU", 1)],
                    ..Default::default()
                })
            )
        }
        ("berth.v1.Placement", "GetAllocations") => {
            ok!(p.get_allocations(pb::GetAllocationsRequest {
                consumer_uuid: consumer()
            }))
        }
        ("berth.v1.Placement", "GetInventories") => {
            ok!(p.get_inventories(pb::GetInventoriesRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "GetProjectUsages") => {
            ok!(p.get_project_usages(pb::GetProjectUsagesRequest {
                project_id: P1.into(),
                user_id: None,
            }))
        }
        ("berth.v1.Placement", "GetQuota") => ok!(p.get_quota(pb::GetQuotaRequest {
            project_id: P1.into(),
        })),
        ("berth.v1.Placement", "SetQuota") => ok!(p.set_quota(pb::SetQuotaRequest {
            project_id: P1.into(),
            limits: vec![pb::QuotaSetting {
                resource: "instances".into(),
                limit: Some(1000),
            }],
            unset: vec![],
        })),
        ("berth.v1.Placement", "GetProviderUsages") => {
            ok!(p.get_provider_usages(pb::GetProviderUsagesRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "GetResourceProvider") => {
            ok!(p.get_resource_provider(pb::GetResourceProviderRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "GetTraits") => {
            ok!(p.get_traits(pb::GetTraitsRequest { uuid: host() }))
        }
        ("berth.v1.Placement", "ListResourceClasses") => {
            ok!(p.list_resource_classes(pb::ListResourceClassesRequest {}))
        }
        ("berth.v1.Placement", "ListResourceProviders") => {
            ok!(p.list_resource_providers(pb::ListResourceProvidersRequest::default()))
        }
        ("berth.v1.Placement", "ListTraits") => {
            ok!(p.list_traits(pb::ListTraitsRequest::default()))
        }
        ("berth.v1.Placement", "ReplaceAggregates") => {
            ok!(p.replace_aggregates(pb::ReplaceAggregatesRequest {
                uuid: host(),
                generation: 0,
                aggregates: vec![new_uuid()],
            }))
        }
        ("berth.v1.Placement", "ReplaceAllocations") => {
            ok!(p.replace_allocations(pb::ReplaceAllocationsRequest {
                consumer_uuid: new_uuid(),
                consumer_generation: None,
                project_id: P1.into(),
                user_id: "alice".into(),
                allocations: vec![pb::Allocation {
                    provider_uuid: host(),
                    resources: vec![amount("VCPU", 1)],
                }],
            }))
        }
        ("berth.v1.Placement", "ReplaceInventories") => {
            ok!(p.replace_inventories(pb::ReplaceInventoriesRequest {
                uuid: host(),
                generation: 0,
                inventories: host_inventories(1, 1024, 1),
            }))
        }
        ("berth.v1.Placement", "ReplaceTraits") => {
            ok!(p.replace_traits(pb::ReplaceTraitsRequest {
                uuid: host(),
                generation: 0,
                traits: vec!["CUSTOM_SEC".into()],
            }))
        }
        ("berth.v1.Placement", "SetAggregateMetadata") => {
            ok!(p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
                aggregate: f.aggregate.clone(),
                metadata: Default::default(),
            }))
        }
        ("berth.v1.Placement", "UpdateResourceProvider") => {
            ok!(
                p.update_resource_provider(pb::UpdateResourceProviderRequest {
                    uuid: host(),
                    generation: 0,
                    name: Some("sec-renamed".into()),
                    ..Default::default()
                })
            )
        }
        ("berth.v1.Scheduler", "ConfirmMove") => ok!(s.confirm_move(pb::ConfirmMoveRequest {
            consumer_uuid: consumer()
        })),
        ("berth.v1.Scheduler", "Explain") => ok!(s.explain(pb::ExplainRequest { spec: spec1() })),
        ("berth.v1.Scheduler", "MoveClaim") => ok!(s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: consumer(),
            spec: spec1(),
            allow_same_host: true,
        })),
        ("berth.v1.Scheduler", "Release") => ok!(s.release(pb::ReleaseRequest {
            consumer_uuid: consumer()
        })),
        ("berth.v1.Scheduler", "RevertMove") => ok!(s.revert_move(pb::RevertMoveRequest {
            consumer_uuid: consumer()
        })),
        ("berth.v1.Scheduler", "SelectDestinations") => {
            ok!(s.select_destinations(pb::SelectDestinationsRequest { spec: spec1() }))
        }
        ("berth.v1.Servers", "CreateServer") => ok!(v.create_server(create_server_request(P1))),
        ("berth.v1.Servers", "DeleteServer") => ok!(v.delete_server(pb::DeleteServerRequest {
            uuid: f.server.clone(),
            ..Default::default()
        })),
        ("berth.v1.Servers", "EvacuateHost") => ok!(v.evacuate_host(pb::EvacuateHostRequest {
            host: f.host_name.clone(),
            ..Default::default()
        })),
        ("berth.v1.Servers", "GetServer") => ok!(v.get_server(pb::GetServerRequest {
            uuid: f.server.clone()
        })),
        ("berth.v1.Servers", "ListServers") => {
            ok!(v.list_servers(pb::ListServersRequest::default()))
        }
        ("berth.v1.Servers", "ServerAction") => ok!(v.server_action(pb::ServerActionRequest {
            uuid: f.server.clone(),
            action: Some(pb::server_action_request::Action::Stop(pb::NoArgs {})),
            ..Default::default()
        })),
        ("berth.v1.Servers", "SetHostEnabled") => {
            ok!(v.set_host_enabled(pb::SetHostEnabledRequest {
                host: f.host_name.clone(),
                enabled: false,
                ..Default::default()
            }))
        }
        _ => panic!("security.rs has no call for {path}: add one to invoke()"),
    }
}

/// Everything an admin can see, with what moves on its own (liveness, timestamps) blanked
/// and maps sorted (protobuf maps are hash maps: their order is not state).
async fn snapshot(server: &TestServer, f: &Fixture) -> String {
    let mut p = server.placement.clone();
    let mut c = server.catalog.clone();
    let mut v = server.servers.clone();
    let mut providers = p
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("providers")
        .into_inner()
        .providers;
    let mut maps = Vec::new();
    for h in &mut providers {
        h.up = false;
        maps.push(sorted(std::mem::take(&mut h.capabilities)));
    }
    let mut servers = v
        .list_servers(pb::ListServersRequest::default())
        .await
        .expect("servers")
        .into_inner()
        .servers;
    for s in &mut servers {
        s.updated_at_ms = 0;
        maps.push(sorted(std::mem::take(&mut s.metadata)));
    }
    format!(
        "{providers:?}\n{servers:?}\n{maps:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        c.list_flavors(pb::ListFlavorsRequest::default())
            .await
            .expect("flavors")
            .into_inner(),
        c.list_images(pb::ListImagesRequest::default())
            .await
            .expect("images")
            .into_inner(),
        c.list_server_groups(pb::ListServerGroupsRequest::default())
            .await
            .expect("groups")
            .into_inner(),
        p.list_traits(pb::ListTraitsRequest::default())
            .await
            .expect("traits")
            .into_inner(),
        p.list_resource_classes(pb::ListResourceClassesRequest {})
            .await
            .expect("classes")
            .into_inner(),
        sorted(
            p.get_aggregate_metadata(pb::GetAggregateMetadataRequest {
                aggregate: f.aggregate.clone()
            })
            .await
            .expect("aggregate")
            .into_inner()
            .metadata
        ),
        allocations(&mut p, &f.consumer).await,
        project_usages(&mut p, P1).await,
    ) + &format!(
        "\n{:?}",
        p.get_quota(pb::GetQuotaRequest {
            project_id: P1.into()
        })
        .await
        .expect("quota")
        .into_inner()
    )
}

fn sorted(
    m: std::collections::HashMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    m.into_iter().collect()
}

/// A token signed by this server's key, issued two hours ago for one hour.
fn expired_token(server: &TestServer) -> String {
    let (key, _) =
        berth_engine::auth::files::load_key(&server.data_dir, false).expect("the server's key");
    let now = berth_engine::auth::token::now_secs();
    key.issue_at(
        &TokenSpec {
            subject: "alice".into(),
            project: P1.into(),
            roles: vec![Role::Admin],
            ttl: HOUR,
        },
        now - 7200,
    )
    .expect("token")
}

/// An admin token with a valid shape, signed by a key that is not the server's.
fn forged_token() -> String {
    let (key, _) = TokenKey::generate().expect("a key");
    key.issue(&TokenSpec {
        subject: "mallory".into(),
        project: String::new(),
        roles: vec![Role::Admin],
        ttl: HOUR,
    })
    .expect("token")
}

fn rpcs() -> impl Iterator<Item = (&'static str, Access)> {
    METHODS.iter().copied().filter(|(p, _)| *p != NODES_CONNECT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_the_wrong_caller_and_changes_nothing() {
    let server = TestServer::start().await;
    let (f, _node) = fixture(&server).await;
    let before = snapshot(&server, &f).await;

    // 1. Bad credentials: UNAUTHENTICATED, saying which.
    let expired = expired_token(&server);
    let forged = forged_token();
    for (path, _) in rpcs() {
        // An empty token sends no authorization header at all.
        let e = invoke(path, server.as_token(""), &f).await.expect_err(path);
        assert_eq!(e.code(), Code::Unauthenticated, "{path}: {e:?}");
        assert!(e.message().contains("Bearer"), "{path}: {}", e.message());
        for (token, word) in [
            (&expired, "expired"),
            (&forged, "signature"),
            (&"x.y.z".to_string(), "malformed"),
        ] {
            let e = invoke(path, server.as_token(token), &f)
                .await
                .expect_err(path);
            assert_eq!(e.code(), Code::Unauthenticated, "{path} {word}: {e:?}");
            assert!(e.message().contains(word), "{path}: {}", e.message());
        }
    }

    // 2. A node's token is for its stream only.
    let node = server.node_token("sec-node");
    for (path, _) in rpcs() {
        let e = invoke(path, server.as_token(&node), &f)
            .await
            .expect_err(path);
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "node token on {path}: {e:?}"
        );
    }

    // 3. Roles: members may not do an admin's work, readers may not write.
    let member = server.token(&[Role::Member], P1, "alice", HOUR);
    let reader = server.token(&[Role::Reader], P1, "rita", HOUR);
    for (path, access) in rpcs() {
        let who: &[(&str, &String)] = match access {
            Access::Admin => &[("member", &member), ("reader", &reader)],
            Access::ProjectWrite => &[("reader", &reader)],
            _ => &[],
        };
        for (name, token) in who {
            let e = invoke(path, server.as_token(token), &f)
                .await
                .expect_err(path);
            assert_eq!(e.code(), Code::PermissionDenied, "{name} on {path}: {e:?}");
            assert!(e.message().contains("needs"), "{path}: {}", e.message());
        }
    }

    // 4. Another project's member: what it names is NOT_FOUND (as if it did not exist), a
    //    request naming the other project is PERMISSION_DENIED, lists leave it out.
    let other = server.token(&[Role::Member], P2, "bob", HOUR);
    let not_found: BTreeSet<&str> = [
        "DeleteAllocations",
        "GetAllocations",
        "ConfirmMove",
        "MoveClaim",
        "Release",
        "RevertMove",
        "DeleteServerGroup",
        "GetServerGroup",
        "DeleteServer",
        "GetServer",
        "ServerAction",
    ]
    .into();
    let denied: BTreeSet<&str> = [
        "CreateServerGroup",
        "GetProjectUsages",
        "GetQuota",
        "SelectDestinations",
        "CreateServer",
    ]
    .into();
    for (path, access) in rpcs() {
        if !matches!(access, Access::ProjectRead | Access::ProjectWrite) {
            continue;
        }
        let method = path.rsplit('/').next().unwrap_or_default();
        let res = invoke(path, server.as_token(&other), &f).await;
        if not_found.contains(method) {
            let e = res.expect_err(path);
            assert_eq!(e.code(), Code::NotFound, "{path}: {e:?}");
        } else if denied.contains(method) {
            let e = res.expect_err(path);
            assert_eq!(e.code(), Code::PermissionDenied, "{path}: {e:?}");
        } else {
            assert!(res.is_ok(), "{path}: {res:?}");
        }
    }
    // The answer for another project's server is the answer for no server at all.
    let mut bob = ServersClient::new(server.as_token(&other));
    let theirs = bob
        .get_server(pb::GetServerRequest {
            uuid: f.server.clone(),
        })
        .await
        .expect_err("another project's server");
    let nothing = new_uuid();
    let none = bob
        .get_server(pb::GetServerRequest {
            uuid: nothing.clone(),
        })
        .await
        .expect_err("no server");
    assert_eq!(
        theirs.message().replace(&f.server, "X"),
        none.message().replace(&nothing, "X")
    );
    let listed = bob
        .list_servers(pb::ListServersRequest::default())
        .await
        .expect("bob lists")
        .into_inner()
        .servers;
    assert!(listed.is_empty(), "bob sees {listed:?}");
    let groups = CatalogClient::new(server.as_token(&other))
        .list_server_groups(pb::ListServerGroupsRequest::default())
        .await
        .expect("bob lists groups")
        .into_inner()
        .server_groups;
    assert!(groups.is_empty(), "bob sees {groups:?}");

    // 5. Nothing above changed anything.
    assert_eq!(
        snapshot(&server, &f).await,
        before,
        "a refused call changed the state"
    );

    // 6. Readers read their project, and the catalog.
    for (path, access) in rpcs() {
        if matches!(access, Access::ProjectRead | Access::Catalog) {
            let res = invoke(path, server.as_token(&reader), &f).await;
            assert!(res.is_ok(), "reader on {path}: {res:?}");
        }
    }
    let mine = ServersClient::new(server.as_token(&reader))
        .list_servers(pb::ListServersRequest::default())
        .await
        .expect("reader lists")
        .into_inner()
        .servers;
    assert_eq!(mine.len(), 1, "the reader sees P1's server");
    server.shutdown().await;
}

/// Opens the node stream over `ch` and sends `register` first; the call's answer.
async fn open_node_stream<T>(
    mut client: NodesClient<T>,
    register: pb::Register,
) -> Result<pb::Registered, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::NodeMessage {
        body: Some(pb::node_message::Body::Register(register)),
    })
    .await
    .expect("queue register");
    let mut inbound = tokio::time::timeout(DEADLINE, client.connect(ReceiverStream::new(rx)))
        .await
        .expect("an answer before the deadline")?
        .into_inner();
    // Keep the sender alive until the answer is in.
    let first = tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("a message before the deadline")?;
    drop(tx);
    match first {
        Some(pb::EngineMessage {
            body: Some(pb::engine_message::Body::Registered(r)),
        }) => Ok(r),
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn register(name: &str) -> pb::Register {
    pb::Register {
        name: name.into(),
        inventories: host_inventories(8, 16384, 100),
        heartbeat_interval_ms: 1000,
        agent_version: "security-test".into(),
        ..Default::default()
    }
}

async fn host_exists(server_placement: &mut PlacementClient<AuthChannel>, name: &str) -> bool {
    !server_placement
        .list_resource_providers(pb::ListResourceProvidersRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .providers
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_token_registers_only_as_its_node() {
    let server = TestServer::start().await;
    let nodes = |token: &str| NodesClient::new(server.as_token(token));
    let mine = server.node_token("sec-a");
    let e = open_node_stream(nodes(&mine), register("sec-b"))
        .await
        .expect_err("a's token registering as b");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("sec-a") && e.message().contains("sec-b"),
        "{}",
        e.message()
    );
    let member = server.token(&[Role::Member], P1, "alice", HOUR);
    let e = open_node_stream(nodes(&member), register("sec-a"))
        .await
        .expect_err("a member is no node");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = open_node_stream(NodesClient::new(server.channel.clone()), register("sec-a"))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut p = server.placement.clone();
    assert!(
        !host_exists(&mut p, "sec-b").await,
        "nothing registered as b"
    );
    assert!(!host_exists(&mut p, "sec-a").await);
    let ok = open_node_stream(nodes(&mine), register("sec-a"))
        .await
        .expect("a registers as itself");
    assert!(!ok.provider_uuid.is_empty());
    assert!(host_exists(&mut p, "sec-a").await);
    server.shutdown().await;
}

/// A server with TLS and node certificates (from `cert init` in `dir`), and its admin
/// token.
struct TlsServer {
    addr: SocketAddr,
    pki: std::path::PathBuf,
    admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<ServeResult>,
}

impl TlsServer {
    async fn start(dir: &std::path::Path) -> Self {
        let pki = dir.join("pki");
        cert_init(&CertInit {
            dir: pki.clone(),
            nodes: vec!["tls-a".into(), "tls-b".into()],
            ..Default::default()
        })
        .expect("cert init");
        let path = |f: &str| pki.join(f).display().to_string();
        let config = ServerConfig {
            data_dir: dir.join("data"),
            tls_cert: path("engine.pem"),
            tls_key: path("engine.key"),
            tls_client_ca: path("ca.pem"),
            ..Default::default()
        };
        let (key, _) = berth_engine::auth::files::load_key(&config.data_dir, true).expect("key");
        berth_engine::auth::files::ensure_admin_token(&config.data_dir, &key).expect("token");
        let admin_token = std::fs::read_to_string(config.data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
        let engine =
            std::sync::Arc::new(Engine::new(Default::default()).expect("engine configuration"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            berth_engine::api::serve(
                engine,
                &config,
                &ComputeConfig::default(),
                listener,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Self {
            addr,
            pki,
            admin_token,
            stop: Some(stop),
            task,
        }
    }

    fn pem(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.pki.join(f)).expect("pem")
    }

    /// A TLS channel trusting the engine's CA, presenting `node`'s certificate if given.
    async fn channel(&self, node: Option<&str>) -> Result<Channel, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pem("ca.pem")));
        if let Some(n) = node {
            tls = tls.identity(Identity::from_pem(
                self.pem(&format!("node-{n}.pem")),
                self.pem(&format!("node-{n}.key")),
            ));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops in time")
            .expect("no panic")
            .expect("served cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_node_certificates_bind_names_and_plain_text_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TlsServer::start(dir.path()).await;

    // An API client over TLS with the admin token works.
    let admin = with_token(
        server.channel(None).await.expect("TLS connect"),
        &server.admin_token,
    );
    let mut p = PlacementClient::new(admin.clone());
    p.list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("admin over TLS");

    // No certificate: no node stream, not even with the admin token.
    let e = open_node_stream(NodesClient::new(admin.clone()), register("tls-a"))
        .await
        .expect_err("no client certificate");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("certificate"), "{}", e.message());

    // A's certificate may not register as b; it registers as a.
    let a = server.channel(Some("tls-a")).await.expect("mTLS connect");
    let e = open_node_stream(NodesClient::new(a.clone()), register("tls-b"))
        .await
        .expect_err("a as b");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("certificate"), "{}", e.message());
    assert!(
        !host_exists(&mut p, "tls-b").await,
        "nothing registered as b"
    );
    let reg = open_node_stream(NodesClient::new(a.clone()), register("tls-a"))
        .await
        .expect("a as itself");
    assert!(!reg.provider_uuid.is_empty());
    assert!(host_exists(&mut p, "tls-a").await);

    // A node certificate is no API credential.
    let e = PlacementClient::new(a)
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect_err("certificate without token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A certificate from another CA is refused during the handshake.
    let other = dir.path().join("other");
    cert_init(&CertInit {
        dir: other.clone(),
        nodes: vec!["tls-a".into()],
        ..Default::default()
    })
    .expect("another CA");
    let rogue = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server.pem("ca.pem")))
        .identity(Identity::from_pem(
            std::fs::read(other.join("node-tls-a.pem")).expect("pem"),
            std::fs::read(other.join("node-tls-a.key")).expect("key"),
        ));
    let rogue = Endpoint::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .expect("url")
        .tls_config(rogue)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let res = match rogue.connect().await {
        Err(_) => Err(Code::Unavailable),
        Ok(ch) => open_node_stream(NodesClient::new(ch), register("tls-a"))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
    };
    assert!(
        res.is_err(),
        "a certificate from another CA opened the stream"
    );

    // Plain text to the TLS port: an error (not a hang, not an answer), and the engine
    // keeps serving.
    let plain = tokio::time::timeout(DEADLINE, async {
        match connect(server.addr).await {
            Err(e) => Err(e.to_string()),
            Ok(ch) => PlacementClient::new(with_token(ch, &server.admin_token))
                .list_resource_providers(pb::ListResourceProvidersRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}: {}", e.code(), e.message())),
        }
    })
    .await
    .expect("plain text fails instead of hanging");
    assert!(plain.is_err(), "plain text was answered");
    p.list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("still serving TLS after a plain-text attempt");
    server.stop().await;
}
