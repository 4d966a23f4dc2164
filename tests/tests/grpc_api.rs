//! Happy paths of every RPC of `berth.v1.Placement`, `Scheduler` and `Catalog`, through a
//! real server on loopback, checked against the contract in `proto/berth/v1/*.proto`; and
//! the `x-request-id` metadata round trip.

use std::collections::{BTreeSet, HashMap};

use berth_tests::v1 as pb;
use berth_tests::*;
use tonic::Code;

/// Standard classes in the order the contract wants lists sorted (by resource class).
fn sorted(v: &[String]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

fn classes_of(invs: &[pb::Inventory]) -> Vec<String> {
    invs.iter().map(|i| i.resource_class.clone()).collect()
}

#[tokio::test]
async fn providers_create_get_list_update_delete() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let agg_a = new_uuid();
    let agg_b = new_uuid();

    // A provider with everything set, and an upper-case uuid the server must normalise.
    let upper = uuid::Uuid::new_v4().to_string().to_uppercase();
    let full = create_provider(
        &mut p,
        pb::CreateResourceProviderRequest {
            uuid: upper.clone(),
            name: "full-host".into(),
            availability_zone: "az1".into(),
            traits: vec!["HW_CPU_X86_AVX2".into(), "CUSTOM_FAST".into()],
            aggregates: vec![agg_b.clone(), agg_a.clone()],
            inventories: vec![
                inv("VCPU", 16),
                inv("MEMORY_MB", 65536),
                inv("DISK_GB", 1000),
                inv("CUSTOM_GPU", 2),
            ],
            capabilities: HashMap::from([("cpu_info:vendor".into(), "Intel".into())]),
            arch: "x86_64".into(),
            hypervisor_type: "kvm".into(),
            hypervisor_version: "8.2.0".into(),
        },
    )
    .await;
    assert_eq!(full.uuid, upper.to_lowercase(), "uuids come back lowercase");
    assert_eq!(full.name, "full-host");
    assert_eq!(full.availability_zone, "az1");
    assert_eq!(full.traits, ["CUSTOM_FAST", "HW_CPU_X86_AVX2"]);
    let mut aggs = vec![agg_a.clone(), agg_b.clone()];
    aggs.sort();
    assert_eq!(full.aggregates, aggs, "aggregates sorted");
    assert_eq!(
        classes_of(&full.inventories),
        ["CUSTOM_GPU", "DISK_GB", "MEMORY_MB", "VCPU"],
        "inventories sorted by resource class"
    );
    let usage_classes: Vec<_> = full
        .usages
        .iter()
        .map(|u| u.resource_class.clone())
        .collect();
    assert_eq!(
        usage_classes,
        classes_of(&full.inventories),
        "usages in inventory order"
    );
    assert!(full.usages.iter().all(|u| u.used == 0));
    assert!(full.up && !full.disabled);
    assert_eq!(full.instances, 0);
    assert_eq!(full.capabilities["cpu_info:vendor"], "Intel");
    assert_eq!(
        (
            full.arch.as_str(),
            full.hypervisor_type.as_str(),
            full.hypervisor_version.as_str()
        ),
        ("x86_64", "kvm", "8.2.0")
    );
    assert_eq!(get_provider(&mut p, &upper).await, full, "get == create");

    // A provider with only a name: the server makes the uuid; the zone is the default.
    let bare = create_provider(&mut p, provider_request("bare-host", vec![])).await;
    assert!(uuid::Uuid::parse_str(&bare.uuid).is_ok());
    assert_eq!(bare.uuid, bare.uuid.to_lowercase());
    assert_eq!(bare.availability_zone, "nova");
    assert!(bare.inventories.is_empty() && bare.traits.is_empty());

    // 22 more, in two zones, some with a trait and an aggregate, of varied sizes.
    for i in 0..22u64 {
        let mut req = provider_request(
            &format!("host-{i:02}"),
            host_inventories(8, 1024 * (i + 1), 100),
        );
        if i % 2 == 0 {
            req.availability_zone = "az1".into();
        }
        if i % 3 == 0 {
            req.traits = vec!["HW_CPU_X86_AVX2".into()];
        }
        if i % 4 == 0 {
            req.aggregates = vec![agg_a.clone()];
        }
        create_provider(&mut p, req).await;
    }
    // "host-1" must not match "host-10".."host-19" (exact name filter).
    create_provider(
        &mut p,
        provider_request("host-1", host_inventories(1, 512, 10)),
    )
    .await;

    // Paging through everything: ordered by uuid, each provider exactly once.
    let all = list_all(&mut p, pb::ListResourceProvidersRequest::default(), 7).await;
    assert_eq!(all.len(), 25);
    let uuids: Vec<String> = all.iter().map(|p| p.uuid.clone()).collect();
    assert!(sorted(&uuids), "providers ordered by uuid: {uuids:?}");

    // Page size 0 is the server default (at least 25 here), so one page.
    let first = p
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.providers.len(), 25);
    assert!(first.next_page_token.is_empty());

    // Filters, each alone and combined, paged with a small page.
    let names = |v: &[pb::ResourceProvider]| -> BTreeSet<String> {
        v.iter().map(|p| p.name.clone()).collect()
    };
    let by_name = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            name: "host-1".into(),
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(
        names(&by_name),
        BTreeSet::from(["host-1".to_string()]),
        "name is an exact match"
    );

    let az1 = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            availability_zone: "az1".into(),
            ..Default::default()
        },
        3,
    )
    .await;
    assert_eq!(az1.len(), 12, "11 even hosts + full-host");
    assert!(az1.iter().all(|p| p.availability_zone == "az1"));

    let avx = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            required_traits: vec!["HW_CPU_X86_AVX2".into()],
            ..Default::default()
        },
        3,
    )
    .await;
    assert_eq!(avx.len(), 8 + 1, "hosts 0,3,..,21 + full-host");

    let in_a = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            member_of: vec![agg_a.clone()],
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(in_a.len(), 6 + 1, "hosts 0,4,..,20 + full-host");

    let big = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            resources: vec![amount("MEMORY_MB", 20 * 1024)],
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(
        names(&big),
        BTreeSet::from(["full-host", "host-19", "host-20", "host-21"].map(String::from))
    );

    let combined = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            availability_zone: "az1".into(),
            required_traits: vec!["HW_CPU_X86_AVX2".into()],
            member_of: vec![agg_a.clone(), agg_b.clone()],
            resources: vec![amount("VCPU", 8)],
            ..Default::default()
        },
        1,
    )
    .await;
    // az1 = even; AVX2 = multiple of 3; agg_a = multiple of 4 → 0 and 12; plus full-host.
    assert_eq!(
        names(&combined),
        BTreeSet::from(["full-host", "host-00", "host-12"].map(String::from))
    );

    // Update: name, zone and capabilities; unset fields stay as they were.
    let before = get_provider(&mut p, &full.uuid).await;
    let updated = p
        .update_resource_provider(pb::UpdateResourceProviderRequest {
            uuid: full.uuid.clone(),
            generation: before.generation,
            name: Some("full-host-renamed".into()),
            availability_zone: None,
            capabilities: None,
        })
        .await
        .expect("update name")
        .into_inner()
        .provider
        .expect("provider");
    assert_eq!(updated.name, "full-host-renamed");
    assert_eq!(updated.availability_zone, "az1", "unset zone unchanged");
    assert_eq!(
        updated.capabilities, before.capabilities,
        "unset capabilities unchanged"
    );
    assert!(
        updated.generation > before.generation,
        "generation changes on update"
    );
    let updated2 = p
        .update_resource_provider(pb::UpdateResourceProviderRequest {
            uuid: full.uuid.clone(),
            generation: updated.generation,
            name: None,
            availability_zone: Some("az2".into()),
            capabilities: Some(pb::Capabilities {
                entries: HashMap::from([("cpu_info:vendor".into(), "AMD".into())]),
            }),
        })
        .await
        .expect("update zone and capabilities")
        .into_inner()
        .provider
        .expect("provider");
    assert_eq!(updated2.name, "full-host-renamed");
    assert_eq!(updated2.availability_zone, "az2");
    assert_eq!(updated2.capabilities["cpu_info:vendor"], "AMD");
    // An empty zone means the default zone; an empty capabilities message clears them.
    let updated3 = p
        .update_resource_provider(pb::UpdateResourceProviderRequest {
            uuid: full.uuid.clone(),
            generation: updated2.generation,
            name: None,
            availability_zone: Some(String::new()),
            capabilities: Some(pb::Capabilities::default()),
        })
        .await
        .expect("update to the default zone, clear capabilities")
        .into_inner()
        .provider
        .expect("provider");
    assert_eq!(updated3.availability_zone, "nova");
    assert!(updated3.capabilities.is_empty());
    assert_eq!(get_provider(&mut p, &full.uuid).await, updated3);
    // The old name is free again; the new name is taken.
    let renamed = list_all(
        &mut p,
        pb::ListResourceProvidersRequest {
            name: "full-host".into(),
            ..Default::default()
        },
        0,
    )
    .await;
    assert!(renamed.is_empty());

    // Delete.
    p.delete_resource_provider(pb::DeleteResourceProviderRequest {
        uuid: bare.uuid.clone(),
    })
    .await
    .expect("delete");
    expect_status(
        p.get_resource_provider(pb::GetResourceProviderRequest {
            uuid: bare.uuid.clone(),
        })
        .await,
        Code::NotFound,
        &[&bare.uuid],
    );
    assert_eq!(list_all(&mut p, Default::default(), 100).await.len(), 24);
    // Its name can be reused.
    create_provider(&mut p, provider_request("bare-host", vec![])).await;
    server.shutdown().await;
}

/// Lists every page of `req` with `page_size`, checking the tokens as it goes.
async fn list_all(
    p: &mut berth_proto::v1::placement_client::PlacementClient<berth_tests::AuthChannel>,
    mut req: pb::ListResourceProvidersRequest,
    page_size: u32,
) -> Vec<pb::ResourceProvider> {
    req.page_size = page_size;
    let mut out: Vec<pb::ResourceProvider> = Vec::new();
    let mut pages = 0;
    loop {
        let resp = p
            .list_resource_providers(req.clone())
            .await
            .expect("list providers")
            .into_inner();
        pages += 1;
        assert!(pages < 1000, "paging does not end");
        if page_size > 0 {
            assert!(
                resp.providers.len() <= page_size as usize,
                "page larger than asked"
            );
        }
        if !resp.next_page_token.is_empty() {
            assert_eq!(
                resp.providers.len(),
                page_size as usize,
                "only the last page may be short"
            );
        }
        out.extend(resp.providers);
        if resp.next_page_token.is_empty() {
            break;
        }
        req.page_token = resp.next_page_token;
    }
    let uuids: Vec<String> = out.iter().map(|p| p.uuid.clone()).collect();
    assert!(sorted(&uuids), "pages ordered by uuid with no repeats");
    out
}

#[tokio::test]
async fn inventories_traits_aggregates_and_classes() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let host = create_provider(&mut p, provider_request("h1", vec![inv("VCPU", 8)])).await;

    // Defaults are filled in on the way back.
    let got = p
        .get_inventories(pb::GetInventoriesRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get inventories")
        .into_inner();
    assert_eq!(got.generation, host.generation);
    assert_eq!(
        got.inventories,
        [pb::Inventory {
            resource_class: "VCPU".into(),
            total: 8,
            reserved: 0,
            min_unit: 1,
            max_unit: 2_147_483_647,
            step_size: 1,
            allocation_ratio: 1.0,
        }]
    );

    // Replace: every field given, a custom class registered on first use.
    let new_invs = vec![
        pb::Inventory {
            resource_class: "VCPU".into(),
            total: 32,
            reserved: 2,
            min_unit: 1,
            max_unit: 16,
            step_size: 1,
            allocation_ratio: 4.0,
        },
        pb::Inventory {
            resource_class: "MEMORY_MB".into(),
            total: 131072,
            reserved: 4096,
            min_unit: 512,
            max_unit: 65536,
            step_size: 512,
            allocation_ratio: 1.5,
        },
        inv("CUSTOM_FPGA", 4),
    ];
    let replaced = p
        .replace_inventories(pb::ReplaceInventoriesRequest {
            uuid: host.uuid.clone(),
            generation: got.generation,
            inventories: new_invs.clone(),
        })
        .await
        .expect("replace inventories")
        .into_inner();
    assert!(replaced.generation > got.generation);
    assert_eq!(
        classes_of(&replaced.inventories),
        ["CUSTOM_FPGA", "MEMORY_MB", "VCPU"]
    );
    let by_class: HashMap<String, pb::Inventory> = replaced
        .inventories
        .iter()
        .map(|i| (i.resource_class.clone(), i.clone()))
        .collect();
    assert_eq!(by_class["VCPU"], new_invs[0]);
    assert_eq!(by_class["MEMORY_MB"], new_invs[1]);
    // Placement's default max_unit is MAX_INT, not total.
    assert_eq!(by_class["CUSTOM_FPGA"].max_unit, 2_147_483_647);
    let again = p
        .get_inventories(pb::GetInventoriesRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get inventories")
        .into_inner();
    assert_eq!(again.generation, replaced.generation);
    assert_eq!(again.inventories, replaced.inventories);
    // Capacity = floor((total - reserved) * ratio).
    let usages = provider_usages(&mut p, &host.uuid).await;
    assert_eq!(usages.generation, replaced.generation);
    let cap: HashMap<String, u64> = usages
        .usages
        .iter()
        .map(|u| (u.resource_class.clone(), u.capacity))
        .collect();
    assert_eq!(cap["VCPU"], 120);
    assert_eq!(cap["MEMORY_MB"], 190464);
    assert_eq!(cap["CUSTOM_FPGA"], 4);
    let vcpu = usages
        .usages
        .iter()
        .find(|u| u.resource_class == "VCPU")
        .expect("VCPU usage");
    assert_eq!(
        (vcpu.total, vcpu.reserved, vcpu.allocation_ratio),
        (32, 2, 4.0)
    );

    // Dropping a class nothing uses is fine.
    let dropped = p
        .replace_inventories(pb::ReplaceInventoriesRequest {
            uuid: host.uuid.clone(),
            generation: again.generation,
            inventories: vec![new_invs[0].clone()],
        })
        .await
        .expect("drop unused classes")
        .into_inner();
    assert_eq!(classes_of(&dropped.inventories), ["VCPU"]);

    // Traits.
    let t0 = p
        .get_traits(pb::GetTraitsRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get traits")
        .into_inner();
    assert!(t0.traits.is_empty());
    assert_eq!(t0.generation, dropped.generation);
    let t1 = p
        .replace_traits(pb::ReplaceTraitsRequest {
            uuid: host.uuid.clone(),
            generation: t0.generation,
            traits: vec![
                "HW_CPU_X86_SSE42".into(),
                "CUSTOM_RACK_7".into(),
                "HW_CPU_X86_AVX2".into(),
            ],
        })
        .await
        .expect("replace traits")
        .into_inner();
    assert!(t1.generation > t0.generation);
    assert_eq!(
        t1.traits,
        ["CUSTOM_RACK_7", "HW_CPU_X86_AVX2", "HW_CPU_X86_SSE42"]
    );
    let t2 = p
        .get_traits(pb::GetTraitsRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get traits")
        .into_inner();
    assert_eq!((t2.generation, &t2.traits), (t1.generation, &t1.traits));
    let all_traits = p
        .list_traits(pb::ListTraitsRequest::default())
        .await
        .expect("list traits")
        .into_inner()
        .traits;
    assert!(sorted(&all_traits));
    for t in &t1.traits {
        assert!(all_traits.contains(t), "{t} listed");
    }
    let custom = p
        .list_traits(pb::ListTraitsRequest {
            prefix: "CUSTOM_".into(),
        })
        .await
        .expect("list traits by prefix")
        .into_inner()
        .traits;
    assert_eq!(custom, ["CUSTOM_RACK_7"]);
    // Disabling through the trait shows on the provider.
    let t3 = p
        .replace_traits(pb::ReplaceTraitsRequest {
            uuid: host.uuid.clone(),
            generation: t2.generation,
            traits: vec!["COMPUTE_STATUS_DISABLED".into()],
        })
        .await
        .expect("disable")
        .into_inner();
    assert!(get_provider(&mut p, &host.uuid).await.disabled);

    // Aggregates.
    let a0 = p
        .get_aggregates(pb::GetAggregatesRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get aggregates")
        .into_inner();
    assert_eq!(a0.generation, t3.generation);
    assert!(a0.aggregates.is_empty());
    let (x, y) = (new_uuid(), new_uuid());
    let a1 = p
        .replace_aggregates(pb::ReplaceAggregatesRequest {
            uuid: host.uuid.clone(),
            generation: a0.generation,
            aggregates: vec![x.clone(), y.clone(), x.clone()],
        })
        .await
        .expect("replace aggregates")
        .into_inner();
    assert!(a1.generation > a0.generation);
    let mut want = vec![x.clone(), y.clone()];
    want.sort();
    assert_eq!(a1.aggregates, want, "sorted, each once");
    let a2 = p
        .get_aggregates(pb::GetAggregatesRequest {
            uuid: host.uuid.clone(),
        })
        .await
        .expect("get aggregates")
        .into_inner();
    assert_eq!(
        (a2.generation, &a2.aggregates),
        (a1.generation, &a1.aggregates)
    );

    // Aggregate metadata.
    let md = HashMap::from([
        ("availability_zone".to_string(), "az9".to_string()),
        ("ssd".to_string(), "true".to_string()),
    ]);
    let set = p
        .set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: x.clone(),
            metadata: md.clone(),
        })
        .await
        .expect("set metadata")
        .into_inner();
    assert_eq!(set.metadata, md);
    let got_md = p
        .get_aggregate_metadata(pb::GetAggregateMetadataRequest {
            aggregate: x.clone(),
        })
        .await
        .expect("get metadata")
        .into_inner();
    assert_eq!(got_md.metadata, md);
    let none = p
        .get_aggregate_metadata(pb::GetAggregateMetadataRequest {
            aggregate: new_uuid(),
        })
        .await
        .expect("metadata of an unknown aggregate")
        .into_inner();
    assert!(none.metadata.is_empty());
    let cleared = p
        .set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: x.clone(),
            metadata: HashMap::new(),
        })
        .await
        .expect("clear metadata")
        .into_inner();
    assert!(cleared.metadata.is_empty());
    let got_md = p
        .get_aggregate_metadata(pb::GetAggregateMetadataRequest { aggregate: x })
        .await
        .expect("get metadata")
        .into_inner();
    assert!(got_md.metadata.is_empty());

    // Resource classes: standard ones always there; custom ones created or registered by
    // inventories; the list is sorted.
    let classes = p
        .list_resource_classes(pb::ListResourceClassesRequest {})
        .await
        .expect("list classes")
        .into_inner()
        .resource_classes;
    for c in ["VCPU", "PCPU", "MEMORY_MB", "DISK_GB", "CUSTOM_FPGA"] {
        assert!(classes.contains(&c.to_string()), "{c} in {classes:?}");
    }
    let created = p
        .create_resource_class(pb::CreateResourceClassRequest {
            name: "CUSTOM_NIC_VF".into(),
        })
        .await
        .expect("create class")
        .into_inner();
    assert_eq!(created.name, "CUSTOM_NIC_VF");
    let classes = p
        .list_resource_classes(pb::ListResourceClassesRequest {})
        .await
        .expect("list classes")
        .into_inner()
        .resource_classes;
    assert!(classes.contains(&"CUSTOM_NIC_VF".to_string()));
    assert!(sorted(&classes), "resource classes sorted: {classes:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn allocations_usages_and_candidates() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let h1 = create_provider(
        &mut p,
        provider_request("h1", host_inventories(8, 8192, 100)),
    )
    .await;
    let mut r2 = provider_request("h2", host_inventories(16, 16384, 200));
    r2.inventories.push(inv("CUSTOM_GPU", 2));
    let h2 = create_provider(&mut p, r2).await;

    // A new consumer (no generation) with allocations on two providers.
    let consumer = new_uuid();
    let g1 = p
        .replace_allocations(pb::ReplaceAllocationsRequest {
            consumer_uuid: consumer.clone(),
            consumer_generation: None,
            project_id: "proj-a".into(),
            user_id: "alice".into(),
            allocations: vec![
                pb::Allocation {
                    provider_uuid: h2.uuid.clone(),
                    resources: vec![amount("VCPU", 4), amount("CUSTOM_GPU", 1)],
                },
                pb::Allocation {
                    provider_uuid: h1.uuid.clone(),
                    resources: vec![amount("MEMORY_MB", 2048)],
                },
            ],
        })
        .await
        .expect("new consumer")
        .into_inner()
        .consumer_generation;
    let a = allocations(&mut p, &consumer).await;
    assert_eq!(a.consumer_generation, g1);
    assert_eq!(
        (a.project_id.as_str(), a.user_id.as_str()),
        ("proj-a", "alice")
    );
    let provs: Vec<String> = a
        .allocations
        .iter()
        .map(|x| x.provider_uuid.clone())
        .collect();
    let mut want = vec![h1.uuid.clone(), h2.uuid.clone()];
    want.sort();
    assert_eq!(provs, want, "one entry per provider, sorted by uuid");
    let on_h2 = a
        .allocations
        .iter()
        .find(|x| x.provider_uuid == h2.uuid)
        .expect("h2 allocation");
    let amounts: HashMap<&str, u64> = on_h2
        .resources
        .iter()
        .map(|r| (r.resource_class.as_str(), r.amount))
        .collect();
    assert_eq!(amounts, HashMap::from([("VCPU", 4), ("CUSTOM_GPU", 1)]));

    // Usages and generations of the providers moved.
    let u1 = provider_usages(&mut p, &h1.uuid).await;
    let u2 = provider_usages(&mut p, &h2.uuid).await;
    assert_eq!(used_of(&u1.usages, "MEMORY_MB"), 2048);
    assert_eq!(used_of(&u1.usages, "VCPU"), 0);
    assert_eq!(used_of(&u2.usages, "VCPU"), 4);
    assert_eq!(used_of(&u2.usages, "CUSTOM_GPU"), 1);
    assert!(u1.generation > h1.generation && u2.generation > h2.generation);
    let classes: Vec<String> = u2.usages.iter().map(|u| u.resource_class.clone()).collect();
    assert!(sorted(&classes), "usages sorted by class: {classes:?}");
    assert_eq!(get_provider(&mut p, &h2.uuid).await.instances, 1);

    // Replace with the current generation: the old allocations are swapped for the new.
    let g2 = p
        .replace_allocations(pb::ReplaceAllocationsRequest {
            consumer_uuid: consumer.clone(),
            consumer_generation: Some(g1),
            project_id: "proj-a".into(),
            user_id: "alice".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: h2.uuid.clone(),
                resources: vec![amount("VCPU", 16), amount("MEMORY_MB", 16384)],
            }],
        })
        .await
        .expect("replace with generation")
        .into_inner()
        .consumer_generation;
    assert_ne!(g2, g1);
    assert_eq!(allocations(&mut p, &consumer).await.consumer_generation, g2);
    let u1 = provider_usages(&mut p, &h1.uuid).await;
    let u2 = provider_usages(&mut p, &h2.uuid).await;
    assert_eq!(used_of(&u1.usages, "MEMORY_MB"), 0);
    assert_eq!(used_of(&u2.usages, "VCPU"), 16, "exactly the capacity fits");
    assert_eq!(used_of(&u2.usages, "CUSTOM_GPU"), 0);
    assert_eq!(get_provider(&mut p, &h1.uuid).await.instances, 0);

    // A second consumer of another user in the same project, and one in another project.
    let c2 = new_uuid();
    p.replace_allocations(pb::ReplaceAllocationsRequest {
        consumer_uuid: c2.clone(),
        consumer_generation: None,
        project_id: "proj-a".into(),
        user_id: "bob".into(),
        allocations: vec![pb::Allocation {
            provider_uuid: h1.uuid.clone(),
            resources: vec![amount("VCPU", 2), amount("DISK_GB", 20)],
        }],
    })
    .await
    .expect("second consumer");
    let c3 = new_uuid();
    p.replace_allocations(pb::ReplaceAllocationsRequest {
        consumer_uuid: c3.clone(),
        consumer_generation: None,
        project_id: "proj-b".into(),
        user_id: "bob".into(),
        allocations: vec![pb::Allocation {
            provider_uuid: h1.uuid.clone(),
            resources: vec![amount("VCPU", 1)],
        }],
    })
    .await
    .expect("third consumer");

    let pa = project_usages(&mut p, "proj-a").await;
    assert_eq!(pa.instances, 2);
    let pa_map: HashMap<String, u64> = pa
        .usages
        .iter()
        .map(|u| (u.resource_class.clone(), u.amount))
        .collect();
    assert_eq!(
        pa_map,
        HashMap::from([
            ("VCPU".to_string(), 18),
            ("MEMORY_MB".to_string(), 16384),
            ("DISK_GB".to_string(), 20)
        ]),
        "classes with nothing allocated are left out"
    );
    let pa_classes: Vec<String> = pa.usages.iter().map(|u| u.resource_class.clone()).collect();
    assert!(sorted(&pa_classes));
    let bob = p
        .get_project_usages(pb::GetProjectUsagesRequest {
            project_id: "proj-a".into(),
            user_id: Some("bob".into()),
        })
        .await
        .expect("user usages")
        .into_inner();
    assert_eq!(bob.instances, 1);
    assert_eq!(
        bob.usages,
        [amount("DISK_GB", 20), amount("VCPU", 2)],
        "only bob's consumer in proj-a, sorted by class"
    );
    let nobody = project_usages(&mut p, "proj-none").await;
    assert_eq!((nobody.instances, nobody.usages.len()), (0, 0));

    // Allocation candidates: claim nothing, return the providers that fit.
    let before1 = provider_usages(&mut p, &h1.uuid).await;
    let cands = p
        .get_allocation_candidates(pb::GetAllocationCandidatesRequest {
            resources: vec![amount("VCPU", 2), amount("MEMORY_MB", 1024)],
            ..Default::default()
        })
        .await
        .expect("candidates")
        .into_inner()
        .candidates;
    assert_eq!(
        cands.len(),
        1,
        "h2 is full of VCPU, only h1 fits: {cands:?}"
    );
    let c = &cands[0];
    assert_eq!(
        (c.provider_uuid.as_str(), c.provider_name.as_str()),
        (h1.uuid.as_str(), "h1")
    );
    assert_eq!(
        c.allocations,
        [pb::Allocation {
            provider_uuid: h1.uuid.clone(),
            resources: vec![amount("VCPU", 2), amount("MEMORY_MB", 1024)],
        }]
    );
    assert_eq!(
        c.usages, before1.usages,
        "candidate usages are the current ones"
    );
    assert_eq!(
        provider_usages(&mut p, &h1.uuid).await,
        before1,
        "nothing claimed"
    );

    // The candidate's allocations can be claimed as they are.
    let c4 = new_uuid();
    p.replace_allocations(pb::ReplaceAllocationsRequest {
        consumer_uuid: c4.clone(),
        consumer_generation: None,
        project_id: "proj-b".into(),
        user_id: "carol".into(),
        allocations: c.allocations.clone(),
    })
    .await
    .expect("claim a candidate");
    assert_eq!(
        used_of(&provider_usages(&mut p, &h1.uuid).await.usages, "VCPU"),
        used_of(&before1.usages, "VCPU") + 2
    );

    // An empty allocation list with the current generation releases the consumer.
    let g = allocations(&mut p, &c4).await.consumer_generation;
    p.replace_allocations(pb::ReplaceAllocationsRequest {
        consumer_uuid: c4.clone(),
        consumer_generation: Some(g),
        project_id: "proj-b".into(),
        user_id: "carol".into(),
        allocations: vec![],
    })
    .await
    .expect("empty list releases");
    assert_eq!(
        provider_usages(&mut p, &h1.uuid).await.usages,
        before1.usages
    );
    expect_status(
        p.get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: c4.clone(),
        })
        .await,
        Code::NotFound,
        &[&c4],
    );

    // DeleteAllocations releases everything and forgets the consumer.
    p.delete_allocations(pb::DeleteAllocationsRequest {
        consumer_uuid: consumer.clone(),
    })
    .await
    .expect("delete allocations");
    expect_status(
        p.get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: consumer.clone(),
        })
        .await,
        Code::NotFound,
        &[&consumer],
    );
    let u2 = provider_usages(&mut p, &h2.uuid).await;
    assert!(u2.usages.iter().all(|u| u.used == 0), "{u2:?}");
    let pa = project_usages(&mut p, "proj-a").await;
    assert_eq!(pa.instances, 1);
    assert_eq!(pa.usages, [amount("DISK_GB", 20), amount("VCPU", 2)]);
    server.shutdown().await;
}

#[tokio::test]
async fn allocation_candidate_filters() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let (agg1, agg2) = (new_uuid(), new_uuid());
    let mut names = HashMap::new();
    for (name, az, traits, aggs, vcpus) in [
        ("c1", "az1", vec!["HW_CPU_X86_AVX2"], vec![agg1.clone()], 8),
        ("c2", "az1", vec![], vec![agg2.clone()], 8),
        (
            "c3",
            "az2",
            vec!["HW_CPU_X86_AVX2"],
            vec![agg1.clone(), agg2.clone()],
            8,
        ),
        ("c4", "az2", vec!["CUSTOM_SLOW"], vec![], 2),
    ] {
        let mut req = provider_request(name, host_inventories(vcpus, 4096, 50));
        req.availability_zone = az.into();
        req.traits = traits.into_iter().map(String::from).collect();
        req.aggregates = aggs;
        let h = create_provider(&mut p, req).await;
        names.insert(h.uuid, name);
    }
    let ask = |req: pb::GetAllocationCandidatesRequest| {
        let mut p = p.clone();
        let names = names.clone();
        async move {
            let c = p
                .get_allocation_candidates(req)
                .await
                .expect("candidates")
                .into_inner()
                .candidates;
            for x in &c {
                assert_eq!(names[&x.provider_uuid], x.provider_name);
            }
            c.into_iter()
                .map(|x| x.provider_name)
                .collect::<BTreeSet<String>>()
        }
    };
    let base = || pb::GetAllocationCandidatesRequest {
        resources: vec![amount("VCPU", 4)],
        ..Default::default()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        ask(base()).await,
        set(&["c1", "c2", "c3"]),
        "c4 is too small"
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            required_traits: vec!["HW_CPU_X86_AVX2".into()],
            ..base()
        })
        .await,
        set(&["c1", "c3"])
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            forbidden_traits: vec!["HW_CPU_X86_AVX2".into()],
            ..base()
        })
        .await,
        set(&["c2"])
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            member_of: vec![
                pb::AggregateSet {
                    aggregates: vec![agg1.clone()]
                },
                pb::AggregateSet {
                    aggregates: vec![agg2.clone()]
                }
            ],
            ..base()
        })
        .await,
        set(&["c3"]),
        "sets are ANDed"
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            member_of: vec![pb::AggregateSet {
                aggregates: vec![agg1.clone(), agg2.clone()]
            }],
            ..base()
        })
        .await,
        set(&["c1", "c2", "c3"]),
        "inside a set, ORed"
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            forbidden_aggregates: vec![agg2.clone()],
            ..base()
        })
        .await,
        set(&["c1"])
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            availability_zone: "az2".into(),
            ..base()
        })
        .await,
        set(&["c3"])
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest {
            resources: vec![amount("VCPU", 1)],
            ..Default::default()
        })
        .await,
        set(&["c1", "c2", "c3", "c4"])
    );
    assert_eq!(
        ask(pb::GetAllocationCandidatesRequest { limit: 2, ..base() })
            .await
            .len(),
        2
    );
    assert!(
        ask(pb::GetAllocationCandidatesRequest {
            resources: vec![amount("VCPU", 9)],
            ..Default::default()
        })
        .await
        .is_empty(),
        "nothing fits: an empty answer, not an error"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn select_destinations_and_release() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();
    let mut c = server.catalog.clone();
    let mut hosts = Vec::new();
    for i in 0..5 {
        hosts.push(
            create_provider(
                &mut p,
                provider_request(&format!("node-{i}"), host_inventories(8, 16384, 200)),
            )
            .await,
        );
    }
    let host_uuids: BTreeSet<String> = hosts.iter().map(|h| h.uuid.clone()).collect();
    c.create_flavor(pb::CreateFlavorRequest {
        id: "f-small".into(),
        name: "m1.small".into(),
        vcpus: 2,
        ram_mb: 2048,
        disk_gb: 20,
        extra_specs: HashMap::new(),
    })
    .await
    .expect("flavor");

    // One instance by flavor name, with the server making the consumer uuid.
    let one = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                flavor: Some("m1.small".into()),
                ..spec(&[], "proj-s")
            }),
        })
        .await
        .expect("select one")
        .into_inner()
        .selections;
    assert_eq!(one.len(), 1);
    let sel = &one[0];
    assert!(uuid::Uuid::parse_str(&sel.consumer_uuid).is_ok());
    assert!(host_uuids.contains(&sel.host_uuid));
    assert_eq!(
        hosts
            .iter()
            .find(|h| h.uuid == sel.host_uuid)
            .map(|h| h.name.clone()),
        Some(sel.host_name.clone())
    );
    assert!(sel.weight.is_finite());
    let mut claimed: Vec<(String, u64)> = sel.allocations[0]
        .resources
        .iter()
        .map(|r| (r.resource_class.clone(), r.amount))
        .collect();
    claimed.sort();
    assert_eq!(
        claimed,
        [
            ("DISK_GB".to_string(), 20),
            ("MEMORY_MB".to_string(), 2048),
            ("VCPU".to_string(), 2)
        ]
    );
    assert_eq!(sel.allocations[0].provider_uuid, sel.host_uuid);
    // Alternates: other passing hosts (max_attempts 3 by default → 2), never the chosen one.
    assert_eq!(sel.alternates.len(), 2, "{:?}", sel.alternates);
    for alt in &sel.alternates {
        assert_ne!(alt.host_uuid, sel.host_uuid);
        assert!(host_uuids.contains(&alt.host_uuid));
        assert_eq!(alt.allocations.len(), 1);
        assert_eq!(alt.allocations[0].provider_uuid, alt.host_uuid);
        assert_eq!(alt.allocations[0].resources, sel.allocations[0].resources);
    }
    // The claim is real: the consumer has the allocations, the host the usage.
    let a = allocations(&mut p, &sel.consumer_uuid).await;
    assert_eq!(a.allocations, sel.allocations);
    assert_eq!(
        (a.project_id.as_str(), a.user_id.as_str()),
        ("proj-s", "user-1")
    );
    assert_eq!(
        used_of(
            &provider_usages(&mut p, &sel.host_uuid).await.usages,
            "VCPU"
        ),
        2
    );

    // Three instances with given uuids, resources overriding the flavor: order kept,
    // spread over the emptiest hosts (RAM and CPU weighers spread by default).
    let ids: Vec<String> = (0..3).map(|_| new_uuid()).collect();
    let three = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                flavor: Some("f-small".into()),
                resources: vec![amount("VCPU", 4), amount("DISK_GB", 0)],
                num_instances: 3,
                instance_uuids: ids.clone(),
                ..spec(&[], "proj-s")
            }),
        })
        .await
        .expect("select three")
        .into_inner()
        .selections;
    let got: Vec<String> = three.iter().map(|x| x.consumer_uuid.clone()).collect();
    assert_eq!(got, ids, "selections in instance_uuids order");
    let chosen: BTreeSet<&str> = three.iter().map(|x| x.host_uuid.as_str()).collect();
    assert_eq!(chosen.len(), 3, "spread over three hosts");
    assert!(
        !chosen.contains(sel.host_uuid.as_str()),
        "the busiest host is avoided"
    );
    for x in &three {
        let mut r: Vec<(String, u64)> = x.allocations[0]
            .resources
            .iter()
            .map(|r| (r.resource_class.clone(), r.amount))
            .collect();
        r.sort();
        assert_eq!(
            r,
            [("MEMORY_MB".to_string(), 2048), ("VCPU".to_string(), 4)]
        );
    }
    let pu = project_usages(&mut p, "proj-s").await;
    assert_eq!(pu.instances, 4);
    assert_eq!(
        pu.usages,
        [
            amount("DISK_GB", 20),
            amount("MEMORY_MB", 4 * 2048),
            amount("VCPU", 2 + 3 * 4)
        ]
    );
    let total_vcpu: u64 = {
        let mut t = 0;
        for h in &hosts {
            t += used_of(&provider_usages(&mut p, &h.uuid).await.usages, "VCPU");
        }
        t
    };
    assert_eq!(total_vcpu, 14);

    // num_instances 0 with instance_uuids means one instance per uuid.
    let two: Vec<String> = (0..2).map(|_| new_uuid()).collect();
    let sels = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                num_instances: 0,
                instance_uuids: two.clone(),
                ..spec(&[("VCPU", 1), ("MEMORY_MB", 128)], "proj-t")
            }),
        })
        .await
        .expect("two instances named by uuid")
        .into_inner()
        .selections;
    let got: Vec<String> = sels.iter().map(|x| x.consumer_uuid.clone()).collect();
    assert_eq!(got, two);

    // Release one: its usage is gone, the consumer unknown.
    s.release(pb::ReleaseRequest {
        consumer_uuid: ids[1].clone(),
    })
    .await
    .expect("release");
    expect_status(
        p.get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: ids[1].clone(),
        })
        .await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        used_of(
            &provider_usages(&mut p, &three[1].host_uuid).await.usages,
            "VCPU"
        ),
        0
    );
    assert_eq!(project_usages(&mut p, "proj-s").await.instances, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn server_groups_in_scheduling() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();
    let mut c = server.catalog.clone();
    for i in 0..4 {
        create_provider(
            &mut p,
            provider_request(&format!("g-{i}"), host_inventories(16, 32768, 500)),
        )
        .await;
    }
    let anti = c
        .create_server_group(pb::CreateServerGroupRequest {
            id: String::new(),
            name: "web".into(),
            policy: pb::ServerGroupPolicy::AntiAffinity as i32,
            max_server_per_host: 0,
            project_id: "proj-g".into(),
        })
        .await
        .expect("anti-affinity group")
        .into_inner()
        .server_group
        .expect("group");
    assert_eq!(anti.max_server_per_host, 1, "0 means the default, 1");
    let sels = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                group: "web".into(),
                num_instances: 4,
                ..spec(&[("VCPU", 1), ("MEMORY_MB", 512)], "proj-g")
            }),
        })
        .await
        .expect("four anti-affine instances on four hosts")
        .into_inner()
        .selections;
    let hosts: BTreeSet<String> = sels.iter().map(|x| x.host_uuid.clone()).collect();
    assert_eq!(hosts.len(), 4, "one per host");
    let g = c
        .get_server_group(pb::GetServerGroupRequest {
            id: anti.id.clone(),
        })
        .await
        .expect("group by id")
        .into_inner()
        .server_group
        .expect("group");
    let mut members: Vec<String> = sels.iter().map(|x| x.consumer_uuid.clone()).collect();
    members.sort();
    assert_eq!(g.members, members, "members sorted");
    assert_eq!(
        g.hosts,
        hosts.iter().cloned().collect::<Vec<_>>(),
        "host uuids, sorted"
    );

    // An affinity group keeps its members together.
    let aff = c
        .create_server_group(pb::CreateServerGroupRequest {
            id: new_uuid(),
            name: "db".into(),
            policy: pb::ServerGroupPolicy::Affinity as i32,
            max_server_per_host: 0,
            project_id: "proj-g".into(),
        })
        .await
        .expect("affinity group")
        .into_inner()
        .server_group
        .expect("group");
    assert_eq!(
        aff.max_server_per_host, 0,
        "0 for every policy but anti-affinity"
    );
    let sels = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                group: aff.id.clone(),
                num_instances: 3,
                ..spec(&[("VCPU", 1), ("MEMORY_MB", 512)], "proj-g")
            }),
        })
        .await
        .expect("three affine instances")
        .into_inner()
        .selections;
    let hosts: BTreeSet<&str> = sels.iter().map(|x| x.host_uuid.as_str()).collect();
    assert_eq!(hosts.len(), 1, "all on one host");
    let g = c
        .get_server_group(pb::GetServerGroupRequest { id: "db".into() })
        .await
        .expect("group by name")
        .into_inner()
        .server_group
        .expect("group");
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.hosts.len(), 1);

    // Release removes a member from its group.
    s.release(pb::ReleaseRequest {
        consumer_uuid: sels[0].consumer_uuid.clone(),
    })
    .await
    .expect("release");
    let g = c
        .get_server_group(pb::GetServerGroupRequest { id: "db".into() })
        .await
        .expect("group")
        .into_inner()
        .server_group
        .expect("group");
    assert_eq!(g.members.len(), 2);
    assert!(!g.members.contains(&sels[0].consumer_uuid));
    server.shutdown().await;
}

#[tokio::test]
async fn moves_claim_confirm_revert() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();
    for i in 0..3 {
        create_provider(
            &mut p,
            provider_request(&format!("m-{i}"), host_inventories(8, 8192, 100)),
        )
        .await;
    }
    let req = spec(&[("VCPU", 2), ("MEMORY_MB", 1024)], "proj-m");
    let sel = s
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(req.clone()),
        })
        .await
        .expect("place")
        .into_inner()
        .selections
        .remove(0);
    let consumer = sel.consumer_uuid.clone();
    let source = sel.host_uuid.clone();
    let gen0 = allocations(&mut p, &consumer).await.consumer_generation;

    // Migrate: a different host is claimed; both are held until confirm.
    let dest = s
        .move_claim(pb::MoveClaimRequest {
            consumer_uuid: consumer.clone(),
            spec: Some(req.clone()),
            allow_same_host: false,
        })
        .await
        .expect("move claim")
        .into_inner()
        .selection
        .expect("selection");
    assert_eq!(dest.consumer_uuid, consumer);
    assert_ne!(
        dest.host_uuid, source,
        "allow_same_host=false excludes the source"
    );
    let a = allocations(&mut p, &consumer).await;
    assert!(a.consumer_generation > gen0);
    let mut both = vec![source.clone(), dest.host_uuid.clone()];
    both.sort();
    let provs: Vec<String> = a
        .allocations
        .iter()
        .map(|x| x.provider_uuid.clone())
        .collect();
    assert_eq!(provs, both, "source and destination, sorted by provider");
    assert_eq!(
        used_of(&provider_usages(&mut p, &source).await.usages, "VCPU"),
        2
    );
    assert_eq!(
        used_of(
            &provider_usages(&mut p, &dest.host_uuid).await.usages,
            "VCPU"
        ),
        2
    );
    assert_eq!(
        project_usages(&mut p, "proj-m").await.usages,
        [amount("MEMORY_MB", 2048), amount("VCPU", 4)],
        "a moving consumer counts twice"
    );
    s.confirm_move(pb::ConfirmMoveRequest {
        consumer_uuid: consumer.clone(),
    })
    .await
    .expect("confirm");
    let a = allocations(&mut p, &consumer).await;
    assert_eq!(a.allocations.len(), 1);
    assert_eq!(a.allocations[0].provider_uuid, dest.host_uuid);
    assert_eq!(
        used_of(&provider_usages(&mut p, &source).await.usages, "VCPU"),
        0
    );
    assert_eq!(
        project_usages(&mut p, "proj-m").await.usages,
        [amount("MEMORY_MB", 1024), amount("VCPU", 2)]
    );

    // Resize (bigger) and revert: back to exactly what it held.
    let current = dest.host_uuid.clone();
    let before = provider_usages(&mut p, &current).await.usages;
    let resized = s
        .move_claim(pb::MoveClaimRequest {
            consumer_uuid: consumer.clone(),
            spec: Some(spec(&[("VCPU", 4), ("MEMORY_MB", 2048)], "proj-m")),
            allow_same_host: false,
        })
        .await
        .expect("resize claim")
        .into_inner()
        .selection
        .expect("selection");
    assert_ne!(resized.host_uuid, current);
    assert_eq!(
        used_of(
            &provider_usages(&mut p, &resized.host_uuid).await.usages,
            "VCPU"
        ),
        4
    );
    s.revert_move(pb::RevertMoveRequest {
        consumer_uuid: consumer.clone(),
    })
    .await
    .expect("revert");
    let a = allocations(&mut p, &consumer).await;
    assert_eq!(a.allocations.len(), 1);
    assert_eq!(a.allocations[0].provider_uuid, current);
    assert_eq!(provider_usages(&mut p, &current).await.usages, before);
    assert_eq!(
        used_of(
            &provider_usages(&mut p, &resized.host_uuid).await.usages,
            "VCPU"
        ),
        0
    );

    // Resize in place: the same host holds the sum of both until confirm.
    let in_place = s
        .move_claim(pb::MoveClaimRequest {
            consumer_uuid: consumer.clone(),
            spec: Some(pb::RequestSpec {
                force_hosts: vec![current.clone()],
                ..spec(&[("VCPU", 3), ("MEMORY_MB", 1024)], "proj-m")
            }),
            allow_same_host: true,
        })
        .await
        .expect("resize in place")
        .into_inner()
        .selection
        .expect("selection");
    assert_eq!(in_place.host_uuid, current);
    assert_eq!(
        used_of(&provider_usages(&mut p, &current).await.usages, "VCPU"),
        2 + 3
    );
    let a = allocations(&mut p, &consumer).await;
    assert_eq!(
        a.allocations.len(),
        1,
        "one entry per provider: {:?}",
        a.allocations
    );
    let vcpu: u64 = a.allocations[0]
        .resources
        .iter()
        .filter(|r| r.resource_class == "VCPU")
        .map(|r| r.amount)
        .sum();
    assert_eq!(vcpu, 5, "the sum of both while moving");
    s.confirm_move(pb::ConfirmMoveRequest {
        consumer_uuid: consumer.clone(),
    })
    .await
    .expect("confirm in place");
    assert_eq!(
        used_of(&provider_usages(&mut p, &current).await.usages, "VCPU"),
        3
    );
    let a = allocations(&mut p, &consumer).await;
    assert_eq!(
        a.allocations[0].resources,
        [amount("VCPU", 3), amount("MEMORY_MB", 1024)]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn explain_ranks_hosts_with_contributions() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();
    // Free RAM 4, 8, 16 GiB in az1; one host in az2; one too small in az1.
    for (name, az, ram, vcpus) in [
        ("e-4g", "az1", 4096, 8),
        ("e-8g", "az1", 8192, 8),
        ("e-16g", "az1", 16384, 8),
        ("e-other-az", "az2", 65536, 8),
        ("e-tiny", "az1", 256, 8),
    ] {
        let mut r = provider_request(name, host_inventories(vcpus, ram, 100));
        r.availability_zone = az.into();
        create_provider(&mut p, r).await;
    }
    let req = pb::RequestSpec {
        availability_zone: "az1".into(),
        ..spec(&[("VCPU", 1), ("MEMORY_MB", 1024)], "proj-e")
    };
    let e = s
        .explain(pb::ExplainRequest {
            spec: Some(req.clone()),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(e.hosts_considered, 5);
    let rej: HashMap<&str, u32> = e
        .rejections
        .iter()
        .map(|r| (r.filter.as_str(), r.hosts))
        .collect();
    assert_eq!(
        rej,
        HashMap::from([("AvailabilityZone", 1), ("Capacity(MEMORY_MB)", 1)])
    );
    let ranked: Vec<&str> = e
        .ranked_hosts
        .iter()
        .map(|h| h.host_name.as_str())
        .collect();
    assert_eq!(ranked, ["e-16g", "e-8g", "e-4g"], "most free RAM first");
    for w in e.ranked_hosts.windows(2) {
        assert!(w[0].total_weight >= w[1].total_weight);
    }
    for h in &e.ranked_hosts {
        assert!(!h.contributions.is_empty());
        let sum: f64 = h.contributions.iter().map(|c| c.weighted).sum();
        assert!((sum - h.total_weight).abs() < 1e-9, "{h:?}");
        for c in &h.contributions {
            assert!((0.0..=1.0).contains(&c.normalized), "{c:?}");
        }
    }
    let ram = |h: &pb::RankedHost| {
        h.contributions
            .iter()
            .find(|c| c.weigher == "RAM")
            .cloned()
            .expect("RAM weigher")
    };
    assert_eq!(ram(&e.ranked_hosts[0]).raw, 16384.0);
    assert_eq!(ram(&e.ranked_hosts[0]).normalized, 1.0);
    assert_eq!(ram(&e.ranked_hosts[2]).normalized, 0.0);
    assert!(e.summary.contains("5 hosts"), "{}", e.summary);
    // Explain claims nothing.
    let cands = p
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .providers;
    assert!(cands.iter().all(|h| h.usages.iter().all(|u| u.used == 0)));

    // No host fits: still OK, with no ranked hosts and the reasons.
    let none = s
        .explain(pb::ExplainRequest {
            spec: Some(spec(&[("MEMORY_MB", 1 << 20)], "proj-e")),
        })
        .await
        .expect("explain with no fit")
        .into_inner();
    assert!(none.ranked_hosts.is_empty());
    assert_eq!(
        none.rejections,
        [pb::FilterRejection {
            filter: "Capacity(MEMORY_MB)".into(),
            hosts: 5
        }]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn catalog_crud_and_paging() {
    let server = TestServer::start().await;
    let mut c = server.catalog.clone();

    // Flavors: 7 of them, ids in the reverse order of names, so ordering is observable.
    let mut flavor_ids = Vec::new();
    for i in 0..7u32 {
        let f = c
            .create_flavor(pb::CreateFlavorRequest {
                id: format!("fl-{}", 9 - i),
                name: format!("flavor-{i}"),
                vcpus: i + 1,
                ram_mb: 512 * u64::from(i + 1),
                disk_gb: u64::from(i),
                extra_specs: HashMap::from([("hw:cpu_policy".into(), "shared".into())]),
            })
            .await
            .expect("create flavor")
            .into_inner()
            .flavor
            .expect("flavor");
        assert_eq!(f.vcpus, i + 1);
        assert_eq!(f.extra_specs["hw:cpu_policy"], "shared");
        flavor_ids.push(f.id);
    }
    let generated = c
        .create_flavor(pb::CreateFlavorRequest {
            id: String::new(),
            name: "generated-id".into(),
            vcpus: 1,
            ram_mb: 64,
            ..Default::default()
        })
        .await
        .expect("flavor without id")
        .into_inner()
        .flavor
        .expect("flavor");
    assert!(
        uuid::Uuid::parse_str(&generated.id).is_ok(),
        "empty id: the server generates a UUID, got {:?}",
        generated.id
    );
    flavor_ids.push(generated.id.clone());
    let by_id = c
        .get_flavor(pb::GetFlavorRequest { id: "fl-9".into() })
        .await
        .expect("get by id")
        .into_inner()
        .flavor
        .expect("flavor");
    let by_name = c
        .get_flavor(pb::GetFlavorRequest {
            id: "flavor-0".into(),
        })
        .await
        .expect("get by name")
        .into_inner()
        .flavor
        .expect("flavor");
    assert_eq!(by_id, by_name);
    assert_eq!((by_id.vcpus, by_id.ram_mb, by_id.disk_gb), (1, 512, 0));
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_flavors(pb::ListFlavorsRequest {
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .expect("list flavors")
            .into_inner();
        assert!(r.flavors.len() <= 3);
        listed.extend(r.flavors.into_iter().map(|f| f.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    flavor_ids.sort();
    assert_eq!(listed, flavor_ids, "every flavor once, ordered by id");
    c.delete_flavor(pb::DeleteFlavorRequest {
        id: "flavor-3".into(),
    })
    .await
    .expect("delete by name");
    expect_status(
        c.get_flavor(pb::GetFlavorRequest { id: "fl-6".into() })
            .await,
        Code::NotFound,
        &["fl-6"],
    );

    // Images.
    let mut image_ids = Vec::new();
    for i in 0..5 {
        let img = c
            .create_image(pb::CreateImageRequest {
                id: if i == 0 { new_uuid() } else { String::new() },
                name: format!("image-{i}"),
                properties: HashMap::from([
                    ("hw_architecture".into(), "x86_64".into()),
                    ("os_distro".into(), "debian".into()),
                ]),
            })
            .await
            .expect("create image")
            .into_inner()
            .image
            .expect("image");
        assert!(!img.id.is_empty());
        assert_eq!(img.properties["os_distro"], "debian", "unknown keys kept");
        image_ids.push(img.id);
    }
    let img = c
        .get_image(pb::GetImageRequest {
            id: image_ids[2].clone(),
        })
        .await
        .expect("image by id")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(img.name, "image-2");
    let img2 = c
        .get_image(pb::GetImageRequest {
            id: "image-2".into(),
        })
        .await
        .expect("image by name")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(img, img2);
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_images(pb::ListImagesRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list images")
            .into_inner();
        assert!(r.images.len() <= 2);
        listed.extend(r.images.into_iter().map(|i| i.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    image_ids.sort();
    assert_eq!(listed, image_ids);
    c.delete_image(pb::DeleteImageRequest {
        id: "image-4".into(),
    })
    .await
    .expect("delete image");
    expect_status(
        c.get_image(pb::GetImageRequest {
            id: "image-4".into(),
        })
        .await,
        Code::NotFound,
        &[],
    );

    // Server groups, one per policy plus some.
    let policies = [
        pb::ServerGroupPolicy::Affinity,
        pb::ServerGroupPolicy::AntiAffinity,
        pb::ServerGroupPolicy::SoftAffinity,
        pb::ServerGroupPolicy::SoftAntiAffinity,
    ];
    let mut group_ids = Vec::new();
    let mut group0 = String::new();
    for i in 0..6 {
        let policy = policies[i % 4];
        let g = c
            .create_server_group(pb::CreateServerGroupRequest {
                id: String::new(),
                name: format!("group-{i}"),
                policy: policy as i32,
                max_server_per_host: if policy == pb::ServerGroupPolicy::AntiAffinity {
                    3
                } else {
                    0
                },
                project_id: "proj-c".into(),
            })
            .await
            .expect("create group")
            .into_inner()
            .server_group
            .expect("group");
        assert_eq!(g.policy, policy as i32);
        assert_eq!(g.project_id, "proj-c");
        assert!(g.members.is_empty() && g.hosts.is_empty());
        let want_max = if policy == pb::ServerGroupPolicy::AntiAffinity {
            3
        } else {
            0
        };
        assert_eq!(g.max_server_per_host, want_max, "{policy:?}");
        if i == 0 {
            group0 = g.id.clone();
        }
        group_ids.push(g.id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_server_groups(pb::ListServerGroupsRequest {
                page_size: 4,
                page_token: token.clone(),
            })
            .await
            .expect("list groups")
            .into_inner();
        assert!(r.server_groups.len() <= 4);
        listed.extend(r.server_groups.into_iter().map(|g| g.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    group_ids.sort();
    assert_eq!(listed, group_ids);
    c.delete_server_group(pb::DeleteServerGroupRequest {
        id: "group-5".into(),
    })
    .await
    .expect("delete group by name");
    c.delete_server_group(pb::DeleteServerGroupRequest { id: group0.clone() })
        .await
        .expect("delete group by id");
    let left = c
        .list_server_groups(pb::ListServerGroupsRequest::default())
        .await
        .expect("list groups")
        .into_inner()
        .server_groups;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|g| g.name != "group-5" && g.id != group0));
    server.shutdown().await;
}

/// A generated request id: short, printable, no spaces (its exact form is the server's).
fn usable_id(id: &str) -> bool {
    (8..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();

    let mut req = tonic::Request::new(pb::ListResourceClassesRequest {});
    req.metadata_mut()
        .insert("x-request-id", "test-req-42".parse().expect("ascii"));
    let resp = p.list_resource_classes(req).await.expect("list classes");
    assert_eq!(
        resp.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("test-req-42")
    );

    // Absent: the server makes one (a uuid), different each call.
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let resp = p
            .list_traits(pb::ListTraitsRequest::default())
            .await
            .expect("list traits");
        let id = resp
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("a generated x-request-id")
            .to_string();
        assert!(usable_id(&id), "{id:?}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 2, "a new id per call");

    // Errors carry it too (trailers-only responses put it in the headers).
    let mut req = tonic::Request::new(pb::ReleaseRequest {
        consumer_uuid: new_uuid(),
    });
    req.metadata_mut()
        .insert("x-request-id", "err-req-7".parse().expect("ascii"));
    let status = expect_status(s.release(req).await, Code::NotFound, &[]);
    assert_eq!(
        status
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("err-req-7")
    );
    // An unusable id (too long) is replaced, not echoed.
    let mut req = tonic::Request::new(pb::ListTraitsRequest::default());
    let long = "x".repeat(300);
    req.metadata_mut()
        .insert("x-request-id", long.parse().expect("ascii"));
    let resp = p.list_traits(req).await.expect("list traits");
    let id = resp
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id");
    assert_ne!(id, long);
    assert!(usable_id(id), "{id:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn flavor_extra_specs_and_image_properties_constrain_hosts() {
    let server = TestServer::start().await;
    let mut p = server.placement.clone();
    let mut s = server.scheduler.clone();
    let mut c = server.catalog.clone();
    // x86 with SSD and a GPU; arm with SSD and a GPU; arm without SSD (but a GPU).
    let mut uuids = HashMap::new();
    for (name, arch, traits) in [
        ("x86-ssd", "x86_64", vec!["CUSTOM_SSD"]),
        ("arm-ssd", "aarch64", vec!["CUSTOM_SSD"]),
        ("arm-hdd", "aarch64", vec![]),
    ] {
        let mut r = provider_request(name, host_inventories(8, 8192, 100));
        r.inventories.push(inv("CUSTOM_GPU", 1));
        r.arch = arch.into();
        r.hypervisor_type = "kvm".into();
        r.hypervisor_version = "8.2.0".into();
        r.traits = traits.into_iter().map(String::from).collect();
        uuids.insert(name, create_provider(&mut p, r).await.uuid);
    }
    c.create_flavor(pb::CreateFlavorRequest {
        id: "gpu-ssd".into(),
        name: "g1.ssd".into(),
        vcpus: 2,
        ram_mb: 1024,
        disk_gb: 0,
        extra_specs: HashMap::from([
            ("resources:CUSTOM_GPU".into(), "1".into()),
            ("trait:CUSTOM_SSD".into(), "required".into()),
        ]),
    })
    .await
    .expect("flavor");
    c.create_image(pb::CreateImageRequest {
        id: String::new(),
        name: "arm-image".into(),
        properties: HashMap::from([
            ("hw_architecture".into(), "aarch64".into()),
            ("img_hv_type".into(), "kvm".into()),
            ("img_hv_requested_version".into(), ">=8.0".into()),
        ]),
    })
    .await
    .expect("image");
    let req = pb::RequestSpec {
        flavor: Some("g1.ssd".into()),
        image: "arm-image".into(),
        ..spec(&[], "proj-f")
    };
    let e = s
        .explain(pb::ExplainRequest {
            spec: Some(req.clone()),
        })
        .await
        .expect("explain")
        .into_inner();
    let names: Vec<&str> = e
        .ranked_hosts
        .iter()
        .map(|h| h.host_name.as_str())
        .collect();
    assert_eq!(names, ["arm-ssd"]);
    let rej: HashMap<&str, u32> = e
        .rejections
        .iter()
        .map(|r| (r.filter.as_str(), r.hosts))
        .collect();
    assert_eq!(rej, HashMap::from([("Traits", 1), ("ImageProperties", 1)]));
    let sel = s
        .select_destinations(pb::SelectDestinationsRequest { spec: Some(req) })
        .await
        .expect("select")
        .into_inner()
        .selections
        .remove(0);
    assert_eq!(sel.host_uuid, uuids["arm-ssd"]);
    let mut got: Vec<(String, u64)> = sel.allocations[0]
        .resources
        .iter()
        .map(|r| (r.resource_class.clone(), r.amount))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("CUSTOM_GPU".to_string(), 1),
            ("MEMORY_MB".to_string(), 1024),
            ("VCPU".to_string(), 2)
        ],
        "the flavor's resources:CUSTOM_GPU extra spec is claimed too"
    );
    server.shutdown().await;
}
