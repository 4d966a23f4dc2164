//! Issue 8's quotas over loopback, against the real server: 64 concurrent claims
//! (SelectDestinations, and CreateServer on an in-process node) in one project never take
//! it over its quota; the refusal is RESOURCE_EXHAUSTED naming the limit, the usage and the
//! request; a member reads its own project's quota but cannot set it, another project's
//! member cannot read it; and the `berth quota` commands set and show a quota.

use std::time::Duration;

use berth_engine::EngineConfig;
use berth_engine::api::ServerConfig;
use berth_engine::auth::Role;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_proto::v1::servers_client::ServersClient;
use berth_tests::v1 as pb;
use berth_tests::*;
use tonic::Code;

const HOUR: Duration = Duration::from_secs(3600);

fn limit(resource: &str, limit: Option<u64>) -> pb::QuotaSetting {
    pb::QuotaSetting {
        resource: resource.into(),
        limit,
    }
}

async fn set_quota(server: &TestServer, project: &str, limits: Vec<pb::QuotaSetting>) {
    server
        .placement
        .clone()
        .set_quota(pb::SetQuotaRequest {
            project_id: project.into(),
            limits,
            unset: vec![],
        })
        .await
        .expect("an admin sets a quota");
}

fn used(u: &pb::GetProjectUsagesResponse, class: &str) -> u64 {
    u.usages
        .iter()
        .find(|a| a.resource_class == class)
        .map_or(0, |a| a.amount)
}

/// 64 concurrent SelectDestinations of 2 VCPU each, as a member, against a VCPU limit of
/// 20 with room for all of them on the hosts: exactly 10 succeed, the rest are refused
/// with the quota, the usage and the request, and the project holds 20 VCPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_claims_never_exceed_the_quota() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    for i in 0..4 {
        create_provider(
            &mut p,
            provider_request(&format!("q{i}"), host_inventories(64, 65536, 1000)),
        )
        .await;
    }
    set_quota(&server, "acme", vec![limit("VCPU", Some(20))]).await;
    let member = server.token(&[Role::Member], "acme", "alice", HOUR);
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut s = SchedulerClient::new(server.as_token(&member));
            tokio::spawn(async move {
                s.select_destinations(pb::SelectDestinationsRequest {
                    spec: Some(spec(&[("VCPU", 2), ("MEMORY_MB", 256)], "acme")),
                })
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.expect("the call's task") {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(
                    s.message(),
                    "quota exceeded for project acme: VCPU limit 20, used 20, requested 2"
                );
            }
        }
    }
    assert_eq!(ok, 10);
    let u = project_usages(&mut p, "acme").await;
    assert_eq!((used(&u, "VCPU"), u.instances), (20, 10));
    let q = PlacementClient::new(server.as_token(&member))
        .get_quota(pb::GetQuotaRequest {
            project_id: "acme".into(),
        })
        .await
        .expect("a member reads its quota")
        .into_inner();
    let vcpu = q
        .limits
        .iter()
        .find(|l| l.resource == "VCPU")
        .expect("VCPU");
    assert_eq!(
        (vcpu.limit, vcpu.used, vcpu.source.as_str()),
        (Some(20), 20, "project")
    );
    server.shutdown().await;
}

/// 64 concurrent CreateServer calls by a member against an instances limit of 12: 12
/// servers become ACTIVE, the others are refused before anything is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_creates_never_exceed_the_quota() {
    let mut engine = EngineConfig::default();
    // Every build is in flight at once: the IoOps filter must not be what limits them.
    engine.scheduler.max_io_ops_per_host = 100;
    let server = TestServer::start_with(engine, ServerConfig::default()).await;
    server.fake_node("qn1", (64, 65536, 1000)).await;
    server.fake_node("qn2", (64, 65536, 1000)).await;
    let mut c = server.catalog.clone();
    c.create_flavor(pb::CreateFlavorRequest {
        name: "q.small".into(),
        vcpus: 1,
        ram_mb: 256,
        disk_gb: 1,
        ..Default::default()
    })
    .await
    .expect("flavor");
    c.create_image(pb::CreateImageRequest {
        name: "q-img".into(),
        ..Default::default()
    })
    .await
    .expect("image");
    set_quota(
        &server,
        "acme",
        vec![limit("instances", Some(12)), limit("VCPU", None)],
    )
    .await;
    let member = server.token(&[Role::Member], "acme", "alice", HOUR);
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let mut v = ServersClient::new(server.as_token(&member));
            tokio::spawn(async move {
                v.create_server(pb::CreateServerRequest {
                    name: format!("vm-{i}"),
                    flavor: "q.small".into(),
                    image: "q-img".into(),
                    count: 1,
                    project_id: "acme".into(),
                    user_id: "alice".into(),
                    request_id: format!("create-{i}"),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let mut active = 0;
    for call in calls {
        match call.await.expect("the call's task") {
            Ok(r) => {
                let servers = r.into_inner().servers;
                assert_eq!(servers.len(), 1);
                assert_eq!(
                    servers[0].vm_state,
                    pb::VmState::Active as i32,
                    "{servers:?}"
                );
                active += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains(
                        "quota exceeded for project acme: instances limit 12, used 12, requested 1"
                    ),
                    "{}",
                    s.message()
                );
            }
        }
    }
    assert_eq!(active, 12);
    let mut p = server.placement.clone();
    let u = project_usages(&mut p, "acme").await;
    assert_eq!((u.instances, used(&u, "VCPU")), (12, 12));
    let listed = server
        .servers
        .clone()
        .list_servers(pb::ListServersRequest::default())
        .await
        .expect("servers")
        .into_inner()
        .servers;
    assert_eq!(listed.len(), 12, "refused creates leave no server behind");
    server.shutdown().await;
}

/// Who may read and set a quota, and what a refused claim says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_their_quota_and_only_admins_set_it() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    create_provider(
        &mut p,
        provider_request("h1", host_inventories(64, 65536, 1000)),
    )
    .await;
    let member = server.token(&[Role::Member], "acme", "alice", HOUR);
    let reader = server.token(&[Role::Reader], "acme", "rita", HOUR);
    let other = server.token(&[Role::Member], "globex", "bob", HOUR);
    let get = |token: &str, project: &str| {
        let mut c = PlacementClient::new(server.as_token(token));
        let project = project.to_string();
        async move {
            c.get_quota(pb::GetQuotaRequest {
                project_id: project,
            })
            .await
        }
    };
    // Before any limit: instances, unlimited, from nowhere.
    let q = get(&member, "acme")
        .await
        .expect("member reads")
        .into_inner();
    assert_eq!(q.limits.len(), 1);
    assert_eq!(
        (
            q.limits[0].resource.as_str(),
            q.limits[0].limit,
            q.limits[0].source.as_str()
        ),
        ("instances", None, "none")
    );
    // Members (and readers) may not set a quota, not even their own project's.
    for token in [&member, &reader] {
        let e = PlacementClient::new(server.as_token(token))
            .set_quota(pb::SetQuotaRequest {
                project_id: "acme".into(),
                limits: vec![limit("VCPU", Some(1000))],
                unset: vec![],
            })
            .await
            .expect_err("not an admin");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    set_quota(
        &server,
        "acme",
        vec![limit("VCPU", Some(4)), limit("MEMORY_MB", Some(1024))],
    )
    .await;
    get(&reader, "acme")
        .await
        .expect("a reader reads its quota");
    let e = get(&other, "acme")
        .await
        .expect_err("another project's member");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A claim over two limits names both, with limit, usage and request.
    let mut s = SchedulerClient::new(server.as_token(&member));
    s.select_destinations(pb::SelectDestinationsRequest {
        spec: Some(spec(&[("VCPU", 3), ("MEMORY_MB", 512)], "acme")),
    })
    .await
    .expect("within the quota");
    let e = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(spec(&[("VCPU", 2), ("MEMORY_MB", 1024)], "acme")),
        })
        .await
        .expect_err("over the quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "quota exceeded for project acme: VCPU limit 4, used 3, requested 2; \
         MEMORY_MB limit 1024, used 512, requested 1024"
    );
    assert!(
        e.details().is_empty(),
        "no NoValidHostDetail on a quota refusal"
    );
    // The member sees the same numbers.
    let q = get(&member, "acme")
        .await
        .expect("member reads")
        .into_inner();
    let row = |r: &str| {
        let l = q.limits.iter().find(|l| l.resource == r).expect(r);
        (l.limit, l.used)
    };
    assert_eq!(row("VCPU"), (Some(4), 3));
    assert_eq!(row("MEMORY_MB"), (Some(1024), 512));
    assert_eq!(row("instances"), (None, 1));
    server.shutdown().await;
}

fn berth(server: &TestServer, args: &[&str]) -> std::process::Output {
    let url = format!("http://{}", server.addr);
    std::process::Command::new(berth_cli_binary())
        .args(["--engine", &url, "--token", &server.admin_token])
        .args(args)
        .env_remove("BERTH_PROJECT")
        .env_remove("BERTH_OUTPUT")
        .env_remove("BERTH_TOKEN")
        .output()
        .expect("run berth")
}

/// `berth quota set` then `berth quota show`, as a table and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_and_shows_a_quota() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    p.create_resource_class(pb::CreateResourceClassRequest {
        name: "CUSTOM_GPU".into(),
    })
    .await
    .expect("class");
    create_provider(
        &mut p,
        provider_request("h1", host_inventories(64, 65536, 1000)),
    )
    .await;
    server
        .scheduler
        .clone()
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(spec(&[("VCPU", 3), ("MEMORY_MB", 2048)], "acme")),
        })
        .await
        .expect("a claim");
    let out = tokio::task::block_in_place(|| {
        berth(
            &server,
            &[
                "quota",
                "set",
                "--project",
                "acme",
                "--instances",
                "10",
                "--vcpu",
                "8",
                "--memory-mb",
                "-1",
                "--class",
                "CUSTOM_GPU=2",
            ],
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out =
        tokio::task::block_in_place(|| berth(&server, &["quota", "show", "--project", "acme"]));
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip_while(|l| !l.starts_with("RESOURCE"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["RESOURCE", "USED", "/", "LIMIT", "SOURCE"],
            vec!["instances", "1", "/", "10", "project"],
            vec!["CUSTOM_GPU", "0", "/", "2", "project"],
            vec!["MEMORY_MB", "2048", "/", "unlimited", "project"],
            vec!["VCPU", "3", "/", "8", "project"],
        ],
        "{table}"
    );
    assert!(
        table.starts_with("project_id:") && table.lines().next().unwrap_or("").ends_with(" acme"),
        "{table}"
    );
    let out = tokio::task::block_in_place(|| {
        berth(
            &server,
            &[
                "-o",
                "json",
                "quota",
                "set",
                "--project",
                "acme",
                "--unset",
                "VCPU",
            ],
        )
    });
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let vcpu = json["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["resource"] == "VCPU")
        .expect("VCPU still shown: it has usage");
    assert_eq!(vcpu["limit"], serde_json::Value::Null);
    assert_eq!(vcpu["used"], 3);
    assert_eq!(vcpu["source"], "none");
    // And the engine enforces what the CLI set.
    let e = server
        .scheduler
        .clone()
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(spec(&[("VCPU", 1), ("CUSTOM_GPU", 3)], "acme")),
        })
        .await
        .expect_err("over the GPU limit");
    assert!(
        e.message()
            .contains("CUSTOM_GPU limit 2, used 0, requested 3"),
        "{e:?}"
    );
    server.shutdown().await;
}
