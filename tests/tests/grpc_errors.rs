//! Bad inputs to every RPC get the contract's status code (INVALID_ARGUMENT naming the
//! field, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED with the current
//! generation, RESOURCE_EXHAUSTED with a decodable `NoValidHostDetail`), and a failed call
//! changes nothing: the whole observable state is read before and after every rejection
//! and compared.

use std::collections::HashMap;

use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_tests::v1 as pb;
use berth_tests::*;
use prost::Message as _;
use tonic::Code;

/// Everything a client can observe, read through the API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    providers: Vec<pb::ResourceProvider>,
    allocations: Vec<Result<pb::GetAllocationsResponse, Code>>,
    projects: Vec<pb::GetProjectUsagesResponse>,
    classes: Vec<String>,
    traits: Vec<String>,
    flavors: Vec<pb::Flavor>,
    images: Vec<pb::Image>,
    groups: Vec<pb::ServerGroup>,
    metadata: Vec<HashMap<String, String>>,
}

/// A small cloud with a placed consumer, a group, a flavor and an image.
struct World {
    server: TestServer,
    p: PlacementClient<AuthChannel>,
    s: SchedulerClient<AuthChannel>,
    c: CatalogClient<AuthChannel>,
    h1: pb::ResourceProvider,
    h2: pb::ResourceProvider,
    empty: pb::ResourceProvider,
    /// Holds 2 VCPU + 1024 MEMORY_MB on h1 (project "p1").
    consumer: String,
    /// Placed by the scheduler in group "grp" (project "p1").
    member: String,
    agg: String,
    consumers: Vec<String>,
}

impl World {
    async fn new() -> Self {
        let server = TestServer::start().await;
        let mut p = server.placement.clone();
        let mut s = server.scheduler.clone();
        let mut c = server.catalog.clone();
        let agg = new_uuid();
        let mut r1 = provider_request("h1", host_inventories(8, 8192, 100));
        r1.aggregates = vec![agg.clone()];
        r1.traits = vec!["HW_CPU_X86_AVX2".into()];
        r1.inventories.push(pb::Inventory {
            resource_class: "CUSTOM_GPU".into(),
            total: 8,
            min_unit: 2,
            max_unit: 4,
            step_size: 2,
            ..Default::default()
        });
        let h1 = create_provider(&mut p, r1).await;
        let h2 = create_provider(
            &mut p,
            provider_request("h2", host_inventories(4, 4096, 50)),
        )
        .await;
        let empty = create_provider(&mut p, provider_request("empty", vec![inv("VCPU", 2)])).await;
        p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: agg.clone(),
            metadata: HashMap::from([("ssd".into(), "true".into())]),
        })
        .await
        .expect("metadata");
        let consumer = new_uuid();
        p.replace_allocations(pb::ReplaceAllocationsRequest {
            consumer_uuid: consumer.clone(),
            consumer_generation: None,
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: h1.uuid.clone(),
                resources: vec![amount("VCPU", 2), amount("MEMORY_MB", 1024)],
            }],
        })
        .await
        .expect("allocations");
        c.create_server_group(pb::CreateServerGroupRequest {
            name: "grp".into(),
            policy: pb::ServerGroupPolicy::AntiAffinity as i32,
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .expect("group");
        let member = s
            .select_destinations(pb::SelectDestinationsRequest {
                spec: Some(pb::RequestSpec {
                    group: "grp".into(),
                    force_hosts: vec!["h2".into()],
                    ..spec(&[("VCPU", 1), ("MEMORY_MB", 512)], "p1")
                }),
            })
            .await
            .expect("member")
            .into_inner()
            .selections
            .remove(0)
            .consumer_uuid;
        c.create_flavor(pb::CreateFlavorRequest {
            id: "small".into(),
            name: "m1.small".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
            extra_specs: HashMap::new(),
        })
        .await
        .expect("flavor");
        c.create_image(pb::CreateImageRequest {
            name: "debian".into(),
            ..Default::default()
        })
        .await
        .expect("image");
        let consumers = vec![consumer.clone(), member.clone(), new_uuid()];
        Self {
            server,
            p,
            s,
            c,
            h1,
            h2,
            empty,
            consumer,
            member,
            agg,
            consumers,
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let p = &mut self.p.clone();
        let c = &mut self.c.clone();
        let providers = p
            .list_resource_providers(pb::ListResourceProvidersRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list providers")
            .into_inner()
            .providers;
        let mut allocations = Vec::new();
        for consumer in &self.consumers {
            allocations.push(
                p.get_allocations(pb::GetAllocationsRequest {
                    consumer_uuid: consumer.clone(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.code()),
            );
        }
        let mut projects = Vec::new();
        for project in ["p1", "p2"] {
            projects.push(project_usages(p, project).await);
        }
        let classes = p
            .list_resource_classes(pb::ListResourceClassesRequest {})
            .await
            .expect("classes")
            .into_inner()
            .resource_classes;
        let traits = p
            .list_traits(pb::ListTraitsRequest::default())
            .await
            .expect("traits")
            .into_inner()
            .traits;
        let flavors = c
            .list_flavors(pb::ListFlavorsRequest::default())
            .await
            .expect("flavors")
            .into_inner()
            .flavors;
        let images = c
            .list_images(pb::ListImagesRequest::default())
            .await
            .expect("images")
            .into_inner()
            .images;
        let groups = c
            .list_server_groups(pb::ListServerGroupsRequest::default())
            .await
            .expect("groups")
            .into_inner()
            .server_groups;
        let metadata = vec![
            p.get_aggregate_metadata(pb::GetAggregateMetadataRequest {
                aggregate: self.agg.clone(),
            })
            .await
            .expect("metadata")
            .into_inner()
            .metadata,
        ];
        Snapshot {
            providers,
            allocations,
            projects,
            classes,
            traits,
            flavors,
            images,
            groups,
            metadata,
        }
    }
}

/// Runs `$call` (a future of a tonic result) and asserts it fails with `$code`, its message
/// containing each of `$words`, and that the observable state did not change. Evaluates to
/// the status.
macro_rules! rejects {
    ($w:expr, $code:expr, $words:expr, $call:expr) => {{
        let before = $w.snapshot().await;
        let status = expect_status($call.await, $code, $words);
        let after = $w.snapshot().await;
        assert!(
            before == after,
            "a rejected call ({}) changed the state:\nbefore: {before:#?}\nafter: {after:#?}",
            stringify!($call)
        );
        status
    }};
}

/// As `rejects!`, but provider generations may have moved forward: a multi-instance
/// request claims instance by instance and rolls back on failure, and every claim and
/// release is a write that bumps the provider's generation (the contract allows it: a
/// generation changes on every write). Everything else must be as before.
macro_rules! rejects_modulo_generations {
    ($w:expr, $code:expr, $words:expr, $call:expr) => {{
        let mut before = $w.snapshot().await;
        let status = expect_status($call.await, $code, $words);
        let mut after = $w.snapshot().await;
        for (b, a) in before.providers.iter_mut().zip(after.providers.iter_mut()) {
            assert!(a.generation >= b.generation, "generations never go back");
            b.generation = 0;
            a.generation = 0;
        }
        assert!(
            before == after,
            "a rejected call ({}) changed the state:\nbefore: {before:#?}\nafter: {after:#?}",
            stringify!($call)
        );
        status
    }};
}

fn inv_with(f: impl FnOnce(&mut pb::Inventory)) -> pb::Inventory {
    let mut i = inv("VCPU", 8);
    f(&mut i);
    i
}

#[tokio::test]
async fn provider_rpcs_reject_bad_input() {
    let w = World::new().await;
    let mut p = w.p.clone();
    let h1 = w.h1.uuid.clone();

    // ---- CreateResourceProvider --------------------------------------------------------
    let create = |f: &dyn Fn(&mut pb::CreateResourceProviderRequest)| {
        let mut r = provider_request("new-host", host_inventories(4, 4096, 10));
        f(&mut r);
        r
    };
    let bad_creates: Vec<(pb::CreateResourceProviderRequest, Code, Vec<&str>)> = vec![
        (
            create(&|r| r.uuid = "not-a-uuid".into()),
            Code::InvalidArgument,
            vec!["uuid"],
        ),
        (
            create(&|r| r.uuid = "1234".into()),
            Code::InvalidArgument,
            vec!["uuid"],
        ),
        (
            create(&|r| r.uuid = uuid::Uuid::nil().to_string()),
            Code::InvalidArgument,
            vec!["uuid"],
        ),
        (
            create(&|r| r.name = String::new()),
            Code::InvalidArgument,
            vec!["name"],
        ),
        (
            create(&|r| r.name = " padded ".into()),
            Code::InvalidArgument,
            vec!["name"],
        ),
        (
            create(&|r| r.name = "x".repeat(201)),
            Code::InvalidArgument,
            vec!["name"],
        ),
        (
            create(&|r| r.name = "h1".into()),
            Code::AlreadyExists,
            vec!["h1"],
        ),
        (
            create(&|r| r.uuid = w.h2.uuid.clone()),
            Code::AlreadyExists,
            vec![&w.h2.uuid],
        ),
        (
            create(&|r| r.uuid = w.h2.uuid.to_uppercase()),
            Code::AlreadyExists,
            vec![&w.h2.uuid],
        ),
        (
            create(&|r| r.availability_zone = "az:host".into()),
            Code::InvalidArgument,
            vec!["availability_zone"],
        ),
        (
            create(&|r| r.traits = vec!["lower_case".into()]),
            Code::InvalidArgument,
            vec!["traits[0]"],
        ),
        (
            create(&|r| r.aggregates = vec!["has space".into()]),
            Code::InvalidArgument,
            vec!["aggregates[0]"],
        ),
        (
            create(&|r| r.hypervisor_version = "eight".into()),
            Code::InvalidArgument,
            vec!["hypervisor_version"],
        ),
    ];
    for (req, code, words) in bad_creates {
        rejects!(w, code, &words, p.create_resource_provider(req.clone()));
    }
    // Inventories: every rule, in create and in replace.
    let bad_invs: Vec<(pb::Inventory, &str)> = vec![
        (
            inv_with(|i| i.allocation_ratio = f64::NAN),
            "allocation_ratio",
        ),
        (
            inv_with(|i| i.allocation_ratio = f64::INFINITY),
            "allocation_ratio",
        ),
        (
            inv_with(|i| i.allocation_ratio = f64::NEG_INFINITY),
            "allocation_ratio",
        ),
        (inv_with(|i| i.allocation_ratio = -1.0), "allocation_ratio"),
        (inv_with(|i| i.allocation_ratio = 1e300), "allocation_ratio"),
        (inv_with(|i| i.reserved = 9), "reserved"),
        (inv_with(|i| i.total = 0), "total"),
        (inv_with(|i| i.total = 2_147_483_648), "total"),
        (inv_with(|i| i.total = u64::MAX), "total"),
        (
            inv_with(|i| {
                i.min_unit = 4;
                i.max_unit = 2;
            }),
            "max_unit",
        ),
        (inv_with(|i| i.max_unit = 2_147_483_648), "max_unit"),
        (
            inv_with(|i| i.resource_class = "GPU".into()),
            "resource_class",
        ),
        (
            inv_with(|i| i.resource_class = "vcpu".into()),
            "resource_class",
        ),
        (
            inv_with(|i| i.resource_class = "CUSTOM_".into()),
            "resource_class",
        ),
        (
            inv_with(|i| i.resource_class = String::new()),
            "resource_class",
        ),
    ];
    for (bad, field) in &bad_invs {
        let req = create(&|r| r.inventories.push(bad.clone()));
        // Put the bad one first, so no earlier rule masks it.
        let mut req2 = req.clone();
        req2.inventories.rotate_right(1);
        let st = rejects!(
            w,
            Code::InvalidArgument,
            &[field],
            p.create_resource_provider(req2)
        );
        assert!(st.message().starts_with("invalid "), "{}", st.message());
        let cur = get_provider(&mut p, &w.empty.uuid).await.generation;
        rejects!(
            w,
            Code::InvalidArgument,
            &[field],
            p.replace_inventories(pb::ReplaceInventoriesRequest {
                uuid: w.empty.uuid.clone(),
                generation: cur,
                inventories: vec![bad.clone()],
            })
        );
    }
    // A class twice.
    rejects!(
        w,
        Code::InvalidArgument,
        &["VCPU"],
        p.create_resource_provider(create(&|r| r.inventories.push(inv("VCPU", 2))))
    );
    // A new custom class, valid, next to a bad inventory: nothing is registered.
    rejects!(
        w,
        Code::InvalidArgument,
        &["reserved"],
        p.create_resource_provider(create(&|r| {
            r.inventories = vec![inv("CUSTOM_LEAK", 1), inv_with(|i| i.reserved = 100)]
        }))
    );
    // A new trait, valid, on a provider whose name is taken: nothing is registered.
    rejects!(
        w,
        Code::AlreadyExists,
        &["h1"],
        p.create_resource_provider(create(&|r| {
            r.name = "h1".into();
            r.traits = vec!["CUSTOM_LEAKED_TRAIT".into()];
        }))
    );

    // ---- Get / usages / inventories / traits / aggregates: malformed and unknown uuids -----
    let unknown = new_uuid();
    for (uuid, code) in [
        ("", Code::InvalidArgument),
        ("garbage", Code::InvalidArgument),
        ("123e4567-e89b-12d3-a456-42661417400", Code::InvalidArgument),
        (unknown.as_str(), Code::NotFound),
    ] {
        let words: &[&str] = if code == Code::NotFound {
            &[uuid]
        } else {
            &["uuid"]
        };
        rejects!(
            w,
            code,
            words,
            p.get_resource_provider(pb::GetResourceProviderRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.get_provider_usages(pb::GetProviderUsagesRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.get_inventories(pb::GetInventoriesRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.get_traits(pb::GetTraitsRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.get_aggregates(pb::GetAggregatesRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.delete_resource_provider(pb::DeleteResourceProviderRequest { uuid: uuid.into() })
        );
        rejects!(
            w,
            code,
            words,
            p.update_resource_provider(pb::UpdateResourceProviderRequest {
                uuid: uuid.into(),
                generation: 0,
                name: Some("renamed".into()),
                ..Default::default()
            })
        );
        rejects!(
            w,
            code,
            words,
            p.replace_inventories(pb::ReplaceInventoriesRequest {
                uuid: uuid.into(),
                generation: 0,
                inventories: vec![inv("VCPU", 1)],
            })
        );
        rejects!(
            w,
            code,
            words,
            p.replace_traits(pb::ReplaceTraitsRequest {
                uuid: uuid.into(),
                generation: 0,
                traits: vec![],
            })
        );
        rejects!(
            w,
            code,
            words,
            p.replace_aggregates(pb::ReplaceAggregatesRequest {
                uuid: uuid.into(),
                generation: 0,
                aggregates: vec![],
            })
        );
    }

    // ---- Stale provider generations: ABORTED naming the current generation --------------
    let cur = get_provider(&mut p, &h1).await.generation;
    let current = format!("current is {cur}");
    for stale in [cur.wrapping_sub(1), cur + 1, 0] {
        rejects!(
            w,
            Code::Aborted,
            &[&current, &h1],
            p.update_resource_provider(pb::UpdateResourceProviderRequest {
                uuid: h1.clone(),
                generation: stale,
                name: Some("stale-rename".into()),
                ..Default::default()
            })
        );
        rejects!(
            w,
            Code::Aborted,
            &[&current],
            p.replace_inventories(pb::ReplaceInventoriesRequest {
                uuid: h1.clone(),
                generation: stale,
                inventories: host_inventories(8, 8192, 100),
            })
        );
        rejects!(
            w,
            Code::Aborted,
            &[&current],
            p.replace_traits(pb::ReplaceTraitsRequest {
                uuid: h1.clone(),
                generation: stale,
                traits: vec!["CUSTOM_STALE".into()],
            })
        );
        rejects!(
            w,
            Code::Aborted,
            &[&current],
            p.replace_aggregates(pb::ReplaceAggregatesRequest {
                uuid: h1.clone(),
                generation: stale,
                aggregates: vec![new_uuid()],
            })
        );
    }
    // The name a stale rename asked for was not kept reserved.
    create_provider(&mut p, provider_request("stale-rename", vec![])).await;
    let cur = get_provider(&mut p, &h1).await.generation;

    // ---- Update: bad fields ------------------------------------------------------------
    for (update, code, word) in [
        (
            pb::UpdateResourceProviderRequest {
                name: Some(String::new()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            pb::UpdateResourceProviderRequest {
                name: Some("h2".into()),
                ..Default::default()
            },
            Code::AlreadyExists,
            "h2",
        ),
        (
            pb::UpdateResourceProviderRequest {
                availability_zone: Some("a:b".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "availability_zone",
        ),
        (
            pb::UpdateResourceProviderRequest {
                capabilities: Some(pb::Capabilities {
                    entries: HashMap::from([(String::new(), "v".into())]),
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            "capabilities",
        ),
    ] {
        rejects!(
            w,
            code,
            &[word],
            p.update_resource_provider(pb::UpdateResourceProviderRequest {
                uuid: h1.clone(),
                generation: cur,
                ..update.clone()
            })
        );
    }

    // ---- Inventories in use ------------------------------------------------------------
    let st = rejects!(
        w,
        Code::FailedPrecondition,
        &["MEMORY_MB"],
        p.replace_inventories(pb::ReplaceInventoriesRequest {
            uuid: h1.clone(),
            generation: cur,
            inventories: vec![inv("VCPU", 8), inv("DISK_GB", 100)],
        })
    );
    assert!(st.message().contains(&h1));
    rejects!(
        w,
        Code::FailedPrecondition,
        &["VCPU"],
        p.replace_inventories(pb::ReplaceInventoriesRequest {
            uuid: h1.clone(),
            generation: cur,
            inventories: vec![],
        })
    );
    // ---- Delete with allocations -------------------------------------------------------
    rejects!(
        w,
        Code::FailedPrecondition,
        &["allocations"],
        p.delete_resource_provider(pb::DeleteResourceProviderRequest { uuid: h1.clone() })
    );
    rejects!(
        w,
        Code::FailedPrecondition,
        &["allocations"],
        p.delete_resource_provider(pb::DeleteResourceProviderRequest {
            uuid: w.h2.uuid.clone()
        })
    );

    // ---- Traits and aggregates: bad names ------------------------------------------------
    for t in ["", "lower", "WITH SPACE", "DASH-ED", &"A".repeat(256)] {
        rejects!(
            w,
            Code::InvalidArgument,
            &["traits[1]"],
            p.replace_traits(pb::ReplaceTraitsRequest {
                uuid: h1.clone(),
                generation: cur,
                traits: vec!["CUSTOM_OK".into(), t.into()],
            })
        );
    }
    for a in ["", "has space", &"a".repeat(256)] {
        rejects!(
            w,
            Code::InvalidArgument,
            &["aggregates[0]"],
            p.replace_aggregates(pb::ReplaceAggregatesRequest {
                uuid: h1.clone(),
                generation: cur,
                aggregates: vec![a.into()],
            })
        );
        rejects!(
            w,
            Code::InvalidArgument,
            &["aggregate"],
            p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
                aggregate: a.into(),
                metadata: HashMap::new(),
            })
        );
        rejects!(
            w,
            Code::InvalidArgument,
            &["aggregate"],
            p.get_aggregate_metadata(pb::GetAggregateMetadataRequest {
                aggregate: a.into()
            })
        );
    }
    rejects!(
        w,
        Code::InvalidArgument,
        &["metadata"],
        p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: w.agg.clone(),
            metadata: HashMap::from([(String::new(), "x".into())]),
        })
    );
    rejects!(
        w,
        Code::InvalidArgument,
        &["metadata"],
        p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: w.agg.clone(),
            metadata: HashMap::from([("k".into(), "v".repeat(256))]),
        })
    );

    // ---- List: paging and filters ---------------------------------------------------------
    for (req, field) in [
        (
            pb::ListResourceProvidersRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListResourceProvidersRequest {
                page_size: u32::MAX,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListResourceProvidersRequest {
                page_token: "t".repeat(600),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListResourceProvidersRequest {
                required_traits: vec!["bad trait".into()],
                ..Default::default()
            },
            "required_traits",
        ),
        (
            pb::ListResourceProvidersRequest {
                resources: vec![amount("vcpu", 1)],
                ..Default::default()
            },
            "resources",
        ),
        (
            pb::ListResourceProvidersRequest {
                resources: vec![amount("VCPU", 2_147_483_648)],
                ..Default::default()
            },
            "resources",
        ),
        (
            pb::ListResourceProvidersRequest {
                member_of: vec!["bad agg".into()],
                ..Default::default()
            },
            "member_of",
        ),
    ] {
        rejects!(
            w,
            Code::InvalidArgument,
            &[field],
            p.list_resource_providers(req.clone())
        );
    }

    // ---- Resource classes ----------------------------------------------------------------
    for (name, code) in [
        ("VCPU", Code::InvalidArgument),
        ("CUSTOM_", Code::InvalidArgument),
        ("CUSTOM_lower", Code::InvalidArgument),
        ("", Code::InvalidArgument),
        ("GPU", Code::InvalidArgument),
        ("CUSTOM_GPU", Code::AlreadyExists),
    ] {
        let words: &[&str] = if code == Code::AlreadyExists {
            &["CUSTOM_GPU"]
        } else {
            &["name"]
        };
        rejects!(
            w,
            code,
            words,
            p.create_resource_class(pb::CreateResourceClassRequest { name: name.into() })
        );
    }
    w.server.shutdown().await;
}

#[tokio::test]
async fn allocation_rpcs_reject_bad_input() {
    let mut w = World::new().await;
    let mut p = w.p.clone();
    let (h1, h2) = (w.h1.uuid.clone(), w.h2.uuid.clone());
    let gen_now = allocations(&mut p, &w.consumer).await.consumer_generation;
    let alloc = |provider: &str, res: &[(&str, u64)]| pb::Allocation {
        provider_uuid: provider.into(),
        resources: res.iter().map(|(c, n)| amount(c, *n)).collect(),
    };
    let new_consumer = new_uuid();
    w.consumers.push(new_consumer.clone());
    let replace = |consumer: &str, generation: Option<u64>, allocs: Vec<pb::Allocation>| {
        pb::ReplaceAllocationsRequest {
            consumer_uuid: consumer.into(),
            consumer_generation: generation,
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: allocs,
        }
    };

    // Consumer generations.
    let current = format!("current is {gen_now}");
    for stale in [
        None,
        Some(gen_now + 1),
        Some(gen_now.wrapping_sub(1)),
        Some(0),
    ] {
        rejects!(
            w,
            Code::Aborted,
            &[&current, &w.consumer],
            p.replace_allocations(replace(
                &w.consumer,
                stale,
                vec![alloc(&h1, &[("VCPU", 1)])]
            ))
        );
    }
    rejects!(
        w,
        Code::Aborted,
        &["new consumer"],
        p.replace_allocations(replace(
            &new_consumer,
            Some(1),
            vec![alloc(&h1, &[("VCPU", 1)])]
        ))
    );
    // A stale empty list (a release) is refused too.
    rejects!(
        w,
        Code::Aborted,
        &[&current],
        p.replace_allocations(replace(&w.consumer, Some(gen_now + 7), vec![]))
    );

    // Capacity: h1 has 8 VCPU with 2 + the new ask; the existing consumer's own use counts
    // as freed when it replaces its allocations.
    rejects!(
        w,
        Code::FailedPrecondition,
        &["VCPU", &h1],
        p.replace_allocations(replace(
            &new_consumer,
            None,
            vec![alloc(&h1, &[("VCPU", 7)])]
        ))
    );
    // The consumer's own 2 VCPU on h1 count as freed, but h2 has only 3 VCPU free.
    rejects!(
        w,
        Code::FailedPrecondition,
        &["VCPU", &h2],
        p.replace_allocations(replace(
            &w.consumer,
            Some(gen_now),
            vec![
                alloc(&h1, &[("VCPU", 8), ("MEMORY_MB", 1024)]),
                alloc(&h2, &[("VCPU", 4)])
            ]
        ))
    );
    // All or nothing across providers: h2 fits, h1 does not; h2 must not be charged.
    rejects!(
        w,
        Code::FailedPrecondition,
        &["MEMORY_MB"],
        p.replace_allocations(replace(
            &new_consumer,
            None,
            vec![
                alloc(&h2, &[("VCPU", 1)]),
                alloc(&h1, &[("MEMORY_MB", 8192)])
            ]
        ))
    );
    // A class the provider has no inventory of.
    rejects!(
        w,
        Code::FailedPrecondition,
        &["CUSTOM_GPU"],
        p.replace_allocations(replace(
            &new_consumer,
            None,
            vec![alloc(&h2, &[("CUSTOM_GPU", 2)])]
        ))
    );

    // Unit rules (CUSTOM_GPU on h1: min 2, max 4, step 2).
    for (n, rule) in [(1, "min_unit"), (6, "max_unit"), (3, "step_size")] {
        rejects!(
            w,
            Code::InvalidArgument,
            &[rule],
            p.replace_allocations(replace(
                &new_consumer,
                None,
                vec![alloc(&h1, &[("CUSTOM_GPU", n)])]
            ))
        );
    }
    // Malformed allocations.
    let unknown = new_uuid();
    for (allocs, code, words) in [
        (
            vec![alloc("nope", &[("VCPU", 1)])],
            Code::InvalidArgument,
            vec!["allocations[0].provider_uuid"],
        ),
        (
            vec![alloc("", &[("VCPU", 1)])],
            Code::InvalidArgument,
            vec!["allocations[0].provider_uuid"],
        ),
        (
            vec![alloc(&unknown, &[("VCPU", 1)])],
            Code::NotFound,
            vec![unknown.as_str()],
        ),
        (
            vec![alloc(&h1, &[("VCPU", 0)])],
            Code::InvalidArgument,
            vec!["allocations[0].resources[0]"],
        ),
        (
            vec![alloc(&h1, &[("VCPU", 2_147_483_648)])],
            Code::InvalidArgument,
            vec!["allocations[0].resources[0].amount"],
        ),
        (
            vec![alloc(&h1, &[("vcpu", 1)])],
            Code::InvalidArgument,
            vec!["allocations[0].resources[0]"],
        ),
        (
            vec![alloc(&h1, &[("CUSTOM_UNKNOWN", 1)])],
            Code::InvalidArgument,
            vec!["CUSTOM_UNKNOWN"],
        ),
        (
            vec![alloc(&h1, &[])],
            Code::InvalidArgument,
            vec!["allocations[0].resources"],
        ),
        (
            vec![alloc(&h1, &[("VCPU", 1), ("VCPU", 1)])],
            Code::InvalidArgument,
            vec!["allocations[0].resources[1]"],
        ),
        (
            vec![alloc(&h1, &[("VCPU", 1)]), alloc(&h1, &[("DISK_GB", 1)])],
            Code::InvalidArgument,
            vec!["allocations[1]"],
        ),
    ] {
        rejects!(
            w,
            code,
            &words,
            p.replace_allocations(replace(&new_consumer, None, allocs.clone()))
        );
    }
    for (project, user, field) in [
        ("", "u1", "project_id"),
        ("p1", "", "user_id"),
        ("p 1 ", "u1", "project_id"),
    ] {
        rejects!(
            w,
            Code::InvalidArgument,
            &[field],
            p.replace_allocations(pb::ReplaceAllocationsRequest {
                project_id: project.into(),
                user_id: user.into(),
                ..replace(&new_consumer, None, vec![alloc(&h1, &[("VCPU", 1)])])
            })
        );
    }
    rejects!(
        w,
        Code::InvalidArgument,
        &["consumer_uuid"],
        p.replace_allocations(replace("bad", None, vec![alloc(&h1, &[("VCPU", 1)])]))
    );

    // Get / Delete allocations.
    for (consumer, code, word) in [
        ("", Code::InvalidArgument, "consumer_uuid"),
        ("x-y-z", Code::InvalidArgument, "consumer_uuid"),
        (new_consumer.as_str(), Code::NotFound, new_consumer.as_str()),
    ] {
        rejects!(
            w,
            code,
            &[word],
            p.get_allocations(pb::GetAllocationsRequest {
                consumer_uuid: consumer.into()
            })
        );
        rejects!(
            w,
            code,
            &[word],
            p.delete_allocations(pb::DeleteAllocationsRequest {
                consumer_uuid: consumer.into()
            })
        );
    }

    // Project usages.
    rejects!(
        w,
        Code::InvalidArgument,
        &["project_id"],
        p.get_project_usages(pb::GetProjectUsagesRequest {
            project_id: String::new(),
            user_id: None
        })
    );
    rejects!(
        w,
        Code::InvalidArgument,
        &["user_id"],
        p.get_project_usages(pb::GetProjectUsagesRequest {
            project_id: "p1".into(),
            user_id: Some(String::new())
        })
    );

    // Allocation candidates.
    for (req, field) in [
        (pb::GetAllocationCandidatesRequest::default(), "resources"),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 1)],
                limit: 1001,
                ..Default::default()
            },
            "limit",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("GPU", 1)],
                ..Default::default()
            },
            "resources[0]",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("CUSTOM_NOPE", 1)],
                ..Default::default()
            },
            "CUSTOM_NOPE",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 2_147_483_648)],
                ..Default::default()
            },
            "resources[0].amount",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 1)],
                required_traits: vec!["bad trait".into()],
                ..Default::default()
            },
            "required_traits",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 1)],
                member_of: vec![pb::AggregateSet { aggregates: vec![] }],
                ..Default::default()
            },
            "member_of[0]",
        ),
        (
            pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 1)],
                availability_zone: "a:b".into(),
                ..Default::default()
            },
            "availability_zone",
        ),
    ] {
        rejects!(
            w,
            Code::InvalidArgument,
            &[field],
            p.get_allocation_candidates(req.clone())
        );
    }
    w.server.shutdown().await;
}

#[tokio::test]
async fn scheduler_rpcs_reject_bad_input() {
    let mut w = World::new().await;
    let mut s = w.s.clone();
    let base = || spec(&[("VCPU", 1), ("MEMORY_MB", 256)], "p2");
    let select = |spec: Option<pb::RequestSpec>| pb::SelectDestinationsRequest { spec };

    let bad_specs: Vec<(Option<pb::RequestSpec>, Code, Vec<String>)> = vec![
        (None, Code::InvalidArgument, vec!["spec".into()]),
        (
            Some(pb::RequestSpec {
                resources: vec![],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["resources".into()],
        ),
        (
            Some(pb::RequestSpec {
                num_instances: 1001,
                ..base()
            }),
            Code::InvalidArgument,
            vec!["num_instances".into(), "1000".into()],
        ),
        (
            Some(pb::RequestSpec {
                num_instances: u32::MAX,
                ..base()
            }),
            Code::InvalidArgument,
            vec!["num_instances".into()],
        ),
        (
            Some(pb::RequestSpec {
                project_id: String::new(),
                ..base()
            }),
            Code::InvalidArgument,
            vec!["project_id".into()],
        ),
        (
            Some(pb::RequestSpec {
                user_id: String::new(),
                ..base()
            }),
            Code::InvalidArgument,
            vec!["user_id".into()],
        ),
        (
            Some(pb::RequestSpec {
                flavor: Some("no-such-flavor".into()),
                ..base()
            }),
            Code::NotFound,
            vec!["no-such-flavor".into()],
        ),
        (
            Some(pb::RequestSpec {
                image: "no-such-image".into(),
                ..base()
            }),
            Code::NotFound,
            vec!["no-such-image".into()],
        ),
        (
            Some(pb::RequestSpec {
                group: "no-such-group".into(),
                ..base()
            }),
            Code::NotFound,
            vec!["no-such-group".into()],
        ),
        (
            Some(pb::RequestSpec {
                resources: vec![amount("vcpu", 1)],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["resources[0]".into()],
        ),
        (
            Some(pb::RequestSpec {
                resources: vec![amount("CUSTOM_UNKNOWN", 1)],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["CUSTOM_UNKNOWN".into()],
        ),
        (
            Some(pb::RequestSpec {
                resources: vec![amount("VCPU", 2_147_483_648)],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["resources[0].amount".into()],
        ),
        (
            Some(pb::RequestSpec {
                instance_uuids: vec!["nope".into()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["instance_uuids[0]".into()],
        ),
        (
            Some(pb::RequestSpec {
                num_instances: 2,
                instance_uuids: vec![w.consumers[2].clone(), w.consumers[2].clone()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["instance_uuids[1]".into()],
        ),
        (
            Some(pb::RequestSpec {
                num_instances: 1,
                instance_uuids: vec![new_uuid(), new_uuid()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["instance_uuids".into()],
        ),
        (
            Some(pb::RequestSpec {
                num_instances: 3,
                instance_uuids: vec![new_uuid()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["num_instances".into()],
        ),
        (
            Some(pb::RequestSpec {
                instance_uuids: vec![w.consumer.clone()],
                ..base()
            }),
            Code::AlreadyExists,
            vec![w.consumer.clone()],
        ),
        (
            Some(pb::RequestSpec {
                same_host: vec!["bad".into()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["same_host[0]".into()],
        ),
        (
            Some(pb::RequestSpec {
                required_traits: vec!["HW_CPU_X86_AVX2".into()],
                forbidden_traits: vec!["HW_CPU_X86_AVX2".into()],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["forbidden_traits".into()],
        ),
        (
            Some(pb::RequestSpec {
                availability_zone: "a:b".into(),
                ..base()
            }),
            Code::InvalidArgument,
            vec!["availability_zone".into()],
        ),
        (
            Some(pb::RequestSpec {
                member_of: vec![pb::AggregateSet { aggregates: vec![] }],
                ..base()
            }),
            Code::InvalidArgument,
            vec!["member_of[0]".into()],
        ),
    ];
    for (spec, code, words) in &bad_specs {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        rejects!(
            w,
            *code,
            &words,
            s.select_destinations(select(spec.clone()))
        );
        if *code != Code::AlreadyExists {
            rejects!(
                w,
                *code,
                &words,
                s.explain(pb::ExplainRequest { spec: spec.clone() })
            );
        }
    }

    // No valid host: RESOURCE_EXHAUSTED with per-filter counts in the message and details.
    let st = rejects!(
        w,
        Code::ResourceExhausted,
        &["no valid host among 3", "Capacity(MEMORY_MB) 3"],
        s.select_destinations(select(Some(spec(&[("MEMORY_MB", 100_000)], "p2"))))
    );
    let d = pb::NoValidHostDetail::decode(st.details()).expect("details decode");
    assert_eq!(d.hosts_considered, 3);
    assert_eq!(
        d.rejections,
        [pb::FilterRejection {
            filter: "Capacity(MEMORY_MB)".into(),
            hosts: 3
        }]
    );
    // Several filters: AZ takes one (all in nova, so all 3), the message lists them in order.
    let st = rejects!(
        w,
        Code::ResourceExhausted,
        &["AvailabilityZone 3"],
        s.select_destinations(select(Some(pb::RequestSpec {
            availability_zone: "elsewhere".into(),
            ..base()
        })))
    );
    let d = pb::NoValidHostDetail::decode(st.details()).expect("details decode");
    assert_eq!(d.rejections.len(), 1);
    assert_eq!(
        (d.rejections[0].filter.as_str(), d.rejections[0].hosts),
        ("AvailabilityZone", 3)
    );
    // h2 (3 VCPU free) and empty (2) are too small; h1 (6 free) has the forbidden trait.
    let st = rejects!(
        w,
        Code::ResourceExhausted,
        &["no valid host among 3", "Capacity(VCPU) 2", "Traits 1"],
        s.select_destinations(select(Some(pb::RequestSpec {
            forbidden_traits: vec!["HW_CPU_X86_AVX2".into()],
            ..spec(&[("VCPU", 4)], "p2")
        })))
    );
    let d = pb::NoValidHostDetail::decode(st.details()).expect("details decode");
    assert_eq!(d.hosts_considered, 3);
    assert_eq!(
        d.rejections,
        [
            pb::FilterRejection {
                filter: "Capacity(VCPU)".into(),
                hosts: 2
            },
            pb::FilterRejection {
                filter: "Traits".into(),
                hosts: 1
            },
        ],
        "in pipeline order"
    );
    for r in &d.rejections {
        assert!(
            st.message().contains(&format!("{} {}", r.filter, r.hosts)),
            "message {:?} lists {r:?}",
            st.message()
        );
    }
    // All or nothing: the first instance fits on h1 (7168 MiB free), the second nowhere;
    // the first one's claim is rolled back.
    let ids: Vec<String> = (0..2).map(|_| new_uuid()).collect();
    w.consumers.extend(ids.iter().cloned());
    let st = rejects_modulo_generations!(
        w,
        Code::ResourceExhausted,
        &["instance 2 of 2"],
        s.select_destinations(select(Some(pb::RequestSpec {
            num_instances: 2,
            instance_uuids: ids.clone(),
            ..spec(&[("VCPU", 3), ("MEMORY_MB", 3600)], "p2")
        })))
    );
    let d = pb::NoValidHostDetail::decode(st.details()).expect("details decode");
    assert!(d.detail.contains("instance 2 of 2"), "{d:?}");
    // One instance of the same does fit, so the failure above was the second one.
    let one = s
        .explain(pb::ExplainRequest {
            spec: Some(spec(&[("VCPU", 3), ("MEMORY_MB", 3600)], "p2")),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(one.ranked_hosts.len(), 1);
    // Anti-affinity: the group's one member is on h2; forcing h2 finds no host.
    let st = rejects!(
        w,
        Code::ResourceExhausted,
        &["ServerGroupAntiAffinity 1"],
        s.select_destinations(select(Some(pb::RequestSpec {
            group: "grp".into(),
            force_hosts: vec!["h2".into()],
            ..base()
        })))
    );
    assert!(pb::NoValidHostDetail::decode(st.details()).is_ok());

    // Release.
    for (consumer, code) in [
        ("", Code::InvalidArgument),
        ("zz", Code::InvalidArgument),
        (w.consumers[2].as_str(), Code::NotFound),
    ] {
        let words: &[&str] = if code == Code::NotFound {
            &[consumer]
        } else {
            &["consumer_uuid"]
        };
        rejects!(
            w,
            code,
            words,
            s.release(pb::ReleaseRequest {
                consumer_uuid: consumer.into()
            })
        );
        rejects!(
            w,
            code,
            words,
            s.confirm_move(pb::ConfirmMoveRequest {
                consumer_uuid: consumer.into()
            })
        );
        rejects!(
            w,
            code,
            words,
            s.revert_move(pb::RevertMoveRequest {
                consumer_uuid: consumer.into()
            })
        );
        rejects!(
            w,
            code,
            words,
            s.move_claim(pb::MoveClaimRequest {
                consumer_uuid: consumer.into(),
                spec: Some(base()),
                allow_same_host: false,
            })
        );
    }
    // Moves: nothing in progress; bad spec; no host; already moving.
    for consumer in [&w.consumer, &w.member] {
        rejects!(
            w,
            Code::FailedPrecondition,
            &["no move in progress"],
            s.confirm_move(pb::ConfirmMoveRequest {
                consumer_uuid: consumer.clone()
            })
        );
        rejects!(
            w,
            Code::FailedPrecondition,
            &["no move in progress"],
            s.revert_move(pb::RevertMoveRequest {
                consumer_uuid: consumer.clone()
            })
        );
    }
    rejects!(
        w,
        Code::InvalidArgument,
        &["spec"],
        s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: w.consumer.clone(),
            spec: None,
            allow_same_host: false,
        })
    );
    rejects!(
        w,
        Code::InvalidArgument,
        &["project_id"],
        s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: w.consumer.clone(),
            spec: Some(pb::RequestSpec {
                project_id: String::new(),
                ..base()
            }),
            allow_same_host: false,
        })
    );
    rejects!(
        w,
        Code::InvalidArgument,
        &["num_instances"],
        s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: w.consumer.clone(),
            spec: Some(pb::RequestSpec {
                num_instances: 2,
                ..base()
            }),
            allow_same_host: false,
        })
    );
    for uuids in [
        vec![w.member.clone()],
        vec![w.consumer.clone(), w.consumer.clone()],
    ] {
        rejects!(
            w,
            Code::InvalidArgument,
            &["instance_uuids"],
            s.move_claim(pb::MoveClaimRequest {
                consumer_uuid: w.consumer.clone(),
                spec: Some(pb::RequestSpec {
                    instance_uuids: uuids.clone(),
                    ..base()
                }),
                allow_same_host: false,
            })
        );
    }
    let st = rejects!(
        w,
        Code::ResourceExhausted,
        &["no valid host"],
        s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: w.consumer.clone(),
            spec: Some(spec(&[("VCPU", 5)], "p1")),
            allow_same_host: false,
        })
    );
    assert!(pb::NoValidHostDetail::decode(st.details()).is_ok());
    // Start a real move, then a second one is refused and a replace is refused.
    s.move_claim(pb::MoveClaimRequest {
        consumer_uuid: w.consumer.clone(),
        spec: Some(spec(&[("VCPU", 1)], "p1")),
        allow_same_host: false,
    })
    .await
    .expect("move claim");
    rejects!(
        w,
        Code::FailedPrecondition,
        &["moving"],
        s.move_claim(pb::MoveClaimRequest {
            consumer_uuid: w.consumer.clone(),
            spec: Some(spec(&[("VCPU", 1)], "p1")),
            allow_same_host: true,
        })
    );
    let g = allocations(&mut w.p.clone(), &w.consumer)
        .await
        .consumer_generation;
    let mut p = w.p.clone();
    rejects!(
        w,
        Code::FailedPrecondition,
        &["move"],
        p.replace_allocations(pb::ReplaceAllocationsRequest {
            consumer_uuid: w.consumer.clone(),
            consumer_generation: Some(g),
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: w.h1.uuid.clone(),
                resources: vec![amount("VCPU", 1)],
            }],
        })
    );
    s.revert_move(pb::RevertMoveRequest {
        consumer_uuid: w.consumer.clone(),
    })
    .await
    .expect("revert");
    w.server.shutdown().await;
}

#[tokio::test]
async fn catalog_rpcs_reject_bad_input() {
    let w = World::new().await;
    let mut c = w.c.clone();
    let flavor = |f: &dyn Fn(&mut pb::CreateFlavorRequest)| {
        let mut r = pb::CreateFlavorRequest {
            id: "new".into(),
            name: "m1.new".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
            extra_specs: HashMap::new(),
        };
        f(&mut r);
        r
    };
    let spec_of = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    for (req, code, field) in [
        (
            flavor(&|r| r.name = String::new()),
            Code::InvalidArgument,
            "name",
        ),
        (
            flavor(&|r| r.name = "n".repeat(256)),
            Code::InvalidArgument,
            "name",
        ),
        (
            flavor(&|r| r.id = "i".repeat(256)),
            Code::InvalidArgument,
            "id",
        ),
        (flavor(&|r| r.vcpus = 0), Code::InvalidArgument, "vcpus"),
        (flavor(&|r| r.ram_mb = 0), Code::InvalidArgument, "ram_mb"),
        (
            flavor(&|r| r.ram_mb = 2_147_483_648),
            Code::InvalidArgument,
            "ram_mb",
        ),
        (
            flavor(&|r| r.disk_gb = u64::MAX),
            Code::InvalidArgument,
            "disk_gb",
        ),
        (
            flavor(&|r| r.extra_specs = spec_of("resources:gpu", "1")),
            Code::InvalidArgument,
            "extra_specs[resources:gpu]",
        ),
        (
            flavor(&|r| r.extra_specs = spec_of("resources:CUSTOM_GPU", "many")),
            Code::InvalidArgument,
            "extra_specs[resources:CUSTOM_GPU]",
        ),
        (
            flavor(&|r| r.extra_specs = spec_of("trait:HW_CPU_X86_AVX2", "maybe")),
            Code::InvalidArgument,
            "extra_specs[trait:HW_CPU_X86_AVX2]",
        ),
        (
            flavor(&|r| r.extra_specs = spec_of("hw:cpu_policy", "sometimes")),
            Code::InvalidArgument,
            "extra_specs[hw:cpu_policy]",
        ),
        (
            flavor(&|r| r.name = "m1.small".into()),
            Code::AlreadyExists,
            "m1.small",
        ),
        (
            flavor(&|r| r.id = "small".into()),
            Code::AlreadyExists,
            "small",
        ),
    ] {
        rejects!(w, code, &[field], c.create_flavor(req.clone()));
    }
    rejects!(
        w,
        Code::NotFound,
        &["nope"],
        c.get_flavor(pb::GetFlavorRequest { id: "nope".into() })
    );
    rejects!(
        w,
        Code::NotFound,
        &["nope"],
        c.delete_flavor(pb::DeleteFlavorRequest { id: "nope".into() })
    );

    let image = |f: &dyn Fn(&mut pb::CreateImageRequest)| {
        let mut r = pb::CreateImageRequest {
            id: String::new(),
            name: "img-new".into(),
            properties: HashMap::new(),
        };
        f(&mut r);
        r
    };
    for (req, code, field) in [
        (
            image(&|r| r.name = String::new()),
            Code::InvalidArgument,
            "name",
        ),
        (
            image(&|r| r.id = "i".repeat(256)),
            Code::InvalidArgument,
            "id",
        ),
        (
            image(&|r| r.properties = spec_of("trait:CUSTOM_X", "wanted")),
            Code::InvalidArgument,
            "properties[trait:CUSTOM_X]",
        ),
        (
            image(&|r| r.properties = spec_of("trait:lower", "required")),
            Code::InvalidArgument,
            "properties[trait:lower]",
        ),
        (
            image(&|r| r.properties = spec_of("img_hv_requested_version", ">=banana")),
            Code::InvalidArgument,
            "img_hv_requested_version",
        ),
        (
            image(&|r| r.name = "debian".into()),
            Code::AlreadyExists,
            "debian",
        ),
    ] {
        rejects!(w, code, &[field], c.create_image(req.clone()));
    }
    let unknown_image = new_uuid();
    rejects!(
        w,
        Code::NotFound,
        &[&unknown_image],
        c.get_image(pb::GetImageRequest {
            id: unknown_image.clone()
        })
    );
    rejects!(
        w,
        Code::NotFound,
        &["nope"],
        c.delete_image(pb::DeleteImageRequest { id: "nope".into() })
    );

    let group = |f: &dyn Fn(&mut pb::CreateServerGroupRequest)| {
        let mut r = pb::CreateServerGroupRequest {
            id: String::new(),
            name: "grp-new".into(),
            policy: pb::ServerGroupPolicy::AntiAffinity as i32,
            max_server_per_host: 0,
            project_id: "p1".into(),
        };
        f(&mut r);
        r
    };
    for (req, code, field) in [
        (
            group(&|r| r.policy = pb::ServerGroupPolicy::Unspecified as i32),
            Code::InvalidArgument,
            "policy",
        ),
        (group(&|r| r.policy = 99), Code::InvalidArgument, "policy"),
        (group(&|r| r.policy = -1), Code::InvalidArgument, "policy"),
        (
            group(&|r| {
                r.policy = pb::ServerGroupPolicy::Affinity as i32;
                r.max_server_per_host = 2;
            }),
            Code::InvalidArgument,
            "max_server_per_host",
        ),
        (
            group(&|r| r.name = String::new()),
            Code::InvalidArgument,
            "name",
        ),
        (
            group(&|r| r.name = new_uuid()),
            Code::InvalidArgument,
            "name",
        ),
        (
            group(&|r| r.project_id = String::new()),
            Code::InvalidArgument,
            "project_id",
        ),
        (
            group(&|r| r.id = "not-a-uuid".into()),
            Code::InvalidArgument,
            "id",
        ),
        (
            group(&|r| r.name = "grp".into()),
            Code::AlreadyExists,
            "grp",
        ),
    ] {
        rejects!(w, code, &[field], c.create_server_group(req.clone()));
    }
    let unknown_group = new_uuid();
    rejects!(
        w,
        Code::NotFound,
        &[&unknown_group],
        c.get_server_group(pb::GetServerGroupRequest {
            id: unknown_group.clone()
        })
    );
    rejects!(
        w,
        Code::NotFound,
        &["nope"],
        c.delete_server_group(pb::DeleteServerGroupRequest { id: "nope".into() })
    );

    // Paging limits on every list.
    for size in [1001, u32::MAX] {
        rejects!(
            w,
            Code::InvalidArgument,
            &["page_size"],
            c.list_flavors(pb::ListFlavorsRequest {
                page_size: size,
                page_token: String::new()
            })
        );
        rejects!(
            w,
            Code::InvalidArgument,
            &["page_size"],
            c.list_images(pb::ListImagesRequest {
                page_size: size,
                page_token: String::new()
            })
        );
        rejects!(
            w,
            Code::InvalidArgument,
            &["page_size"],
            c.list_server_groups(pb::ListServerGroupsRequest {
                page_size: size,
                page_token: String::new()
            })
        );
    }
    // 1000 itself is allowed.
    c.list_flavors(pb::ListFlavorsRequest {
        page_size: 1000,
        page_token: String::new(),
    })
    .await
    .expect("page_size 1000 is the maximum, allowed");
    w.server.shutdown().await;
}

#[tokio::test]
async fn oversized_message_fails_cleanly_and_server_keeps_serving() {
    let w = World::new().await;
    let mut p = w.p.clone();
    let big = "x".repeat(5 * 1024 * 1024);
    let before = w.snapshot().await;
    let err = p
        .create_resource_provider(provider_request(&big, vec![]))
        .await
        .expect_err("a 5 MiB message is refused");
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    // Also a large repeated field rather than one big string.
    let many = pb::ReplaceTraitsRequest {
        uuid: w.h1.uuid.clone(),
        generation: 0,
        traits: (0..400_000).map(|i| format!("CUSTOM_T{i:08}")).collect(),
    };
    assert!(many.encoded_len() > 4 * 1024 * 1024);
    let err = p.replace_traits(many).await.expect_err("refused");
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    // The same connection and the server still work, and nothing changed.
    assert_eq!(w.snapshot().await, before);
    let ok = create_provider(&mut p, provider_request("after-big", vec![inv("VCPU", 1)])).await;
    assert_eq!(get_provider(&mut p, &ok.uuid).await.name, "after-big");
    // Just under the limit is accepted (a long but valid metadata value set is small, so use
    // a large list of aggregates instead: ~3 MiB).
    let aggs: Vec<String> = (0..80_000).map(|_| new_uuid()).collect();
    let req = pb::ReplaceAggregatesRequest {
        uuid: ok.uuid.clone(),
        generation: ok.generation,
        aggregates: aggs,
    };
    assert!(req.encoded_len() < 4 * 1024 * 1024);
    let resp = p
        .replace_aggregates(req)
        .await
        .expect("a message under the limit is accepted")
        .into_inner();
    assert_eq!(resp.aggregates.len(), 80_000);
    w.server.shutdown().await;
}
