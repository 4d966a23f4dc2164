//! Hostile input to every unary RPC of Placement, Scheduler, Catalog and Servers: empty
//! requests, oversized strings and lists, zero and negative where positive is needed,
//! overflowing numbers, NaN and infinite ratios, unknown classes, malformed uuids and
//! duplicate ids. One table of (request, code, words the message must hold), one loop: each
//! row must fail with exactly its code (or succeed, for the few empty requests that are
//! valid reads), the message must name the field, and the whole observable state, read
//! through the API, must be the same before and after.
//!
//! `grpc_errors.rs` covers the first layer of each rule (a bad name, a stale generation,
//! one NaN ratio per RPC); this table covers what it leaves out: empty requests everywhere,
//! the Servers service, limits at and beyond their edges, and ids given twice.

use std::collections::HashMap;

use berth_tests::v1 as pb;
use berth_tests::*;
use tonic::{Code, Status};

macro_rules! rpcs {
    ($($client:ident . $method:ident ($req:ident)),* $(,)?) => {
        /// One request of any unary RPC.
        #[derive(Debug, Clone)]
        #[allow(clippy::large_enum_variant)] // a test table; size is irrelevant
        #[allow(clippy::enum_variant_names)] // the variants are the request types' names
        enum Req { $($req(pb::$req)),* }

        /// Every unary RPC, by request type, so the test can check each has a row.
        const ALL_RPCS: &[&str] = &[$(stringify!($req)),*];

        impl Req {
            fn name(&self) -> &'static str {
                match self { $(Req::$req(_) => stringify!($req)),* }
            }
        }

        impl World {
            async fn send(&self, r: Req) -> Result<(), Status> {
                match r {
                    $(Req::$req(m) => self.server.$client.clone().$method(m).await.map(|_| ())),*
                }
            }
        }
    };
}

rpcs!(
    placement.create_resource_provider(CreateResourceProviderRequest),
    placement.get_resource_provider(GetResourceProviderRequest),
    placement.list_resource_providers(ListResourceProvidersRequest),
    placement.update_resource_provider(UpdateResourceProviderRequest),
    placement.delete_resource_provider(DeleteResourceProviderRequest),
    placement.get_inventories(GetInventoriesRequest),
    placement.replace_inventories(ReplaceInventoriesRequest),
    placement.get_traits(GetTraitsRequest),
    placement.replace_traits(ReplaceTraitsRequest),
    placement.list_traits(ListTraitsRequest),
    placement.get_aggregates(GetAggregatesRequest),
    placement.replace_aggregates(ReplaceAggregatesRequest),
    placement.set_aggregate_metadata(SetAggregateMetadataRequest),
    placement.get_aggregate_metadata(GetAggregateMetadataRequest),
    placement.list_resource_classes(ListResourceClassesRequest),
    placement.create_resource_class(CreateResourceClassRequest),
    placement.get_allocations(GetAllocationsRequest),
    placement.replace_allocations(ReplaceAllocationsRequest),
    placement.delete_allocations(DeleteAllocationsRequest),
    placement.get_provider_usages(GetProviderUsagesRequest),
    placement.get_project_usages(GetProjectUsagesRequest),
    placement.get_quota(GetQuotaRequest),
    placement.set_quota(SetQuotaRequest),
    placement.get_allocation_candidates(GetAllocationCandidatesRequest),
    scheduler.select_destinations(SelectDestinationsRequest),
    scheduler.release(ReleaseRequest),
    scheduler.move_claim(MoveClaimRequest),
    scheduler.confirm_move(ConfirmMoveRequest),
    scheduler.revert_move(RevertMoveRequest),
    scheduler.explain(ExplainRequest),
    catalog.create_flavor(CreateFlavorRequest),
    catalog.get_flavor(GetFlavorRequest),
    catalog.list_flavors(ListFlavorsRequest),
    catalog.delete_flavor(DeleteFlavorRequest),
    catalog.create_image(CreateImageRequest),
    catalog.get_image(GetImageRequest),
    catalog.list_images(ListImagesRequest),
    catalog.delete_image(DeleteImageRequest),
    catalog.create_server_group(CreateServerGroupRequest),
    catalog.get_server_group(GetServerGroupRequest),
    catalog.list_server_groups(ListServerGroupsRequest),
    catalog.delete_server_group(DeleteServerGroupRequest),
    servers.create_server(CreateServerRequest),
    servers.get_server(GetServerRequest),
    servers.list_servers(ListServersRequest),
    servers.delete_server(DeleteServerRequest),
    servers.server_action(ServerActionRequest),
    servers.set_host_enabled(SetHostEnabledRequest),
    servers.evacuate_host(EvacuateHostRequest),
);

/// Everything a client can observe, read through the API.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    providers: Vec<pb::ResourceProvider>,
    allocations: Vec<Result<pb::GetAllocationsResponse, Code>>,
    projects: Vec<pb::GetProjectUsagesResponse>,
    quotas: Vec<pb::GetQuotaResponse>,
    classes: Vec<String>,
    traits: Vec<String>,
    flavors: Vec<pb::Flavor>,
    images: Vec<pb::Image>,
    groups: Vec<pb::ServerGroup>,
    servers: Vec<pb::Server>,
    metadata: HashMap<String, String>,
}

/// A small cloud: a node `n1` with an ACTIVE server, a plain host `h1` with a consumer's
/// allocations, an aggregate with metadata, a flavor, an image and an anti-affinity group.
struct World {
    server: TestServer,
    h1: pb::ResourceProvider,
    n1: String,
    /// Holds 2 VCPU + 1024 MEMORY_MB on h1 (project p1).
    consumer: String,
    /// ACTIVE on n1 (project p1).
    active: String,
    agg: String,
    image: pb::Image,
    group: pb::ServerGroup,
    /// Consumers read into the fingerprint (those above and ids the table uses).
    consumers: Vec<String>,
}

impl World {
    async fn new() -> Self {
        let server = TestServer::start().await;
        let mut p = server.placement.clone();
        let mut c = server.catalog.clone();
        let agg = new_uuid();
        let mut r1 = provider_request("h1", host_inventories(8, 8192, 100));
        r1.aggregates = vec![agg.clone()];
        r1.inventories.push(pb::Inventory {
            resource_class: "CUSTOM_GPU".into(),
            total: 4,
            ..Default::default()
        });
        let h1 = create_provider(&mut p, r1).await;
        p.set_aggregate_metadata(pb::SetAggregateMetadataRequest {
            aggregate: agg.clone(),
            metadata: HashMap::from([("ssd".into(), "true".into())]),
        })
        .await
        .expect("aggregate metadata");
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
        let image = c
            .create_image(pb::CreateImageRequest {
                name: "cirros".into(),
                ..Default::default()
            })
            .await
            .expect("image")
            .into_inner()
            .image
            .expect("the image");
        let group = c
            .create_server_group(pb::CreateServerGroupRequest {
                name: "anti".into(),
                policy: pb::ServerGroupPolicy::AntiAffinity as i32,
                project_id: "p1".into(),
                ..Default::default()
            })
            .await
            .expect("group")
            .into_inner()
            .server_group
            .expect("the group");
        let n1 = server.fake_node("n1", (16, 32768, 400)).await.provider_uuid;
        let created = server
            .servers
            .clone()
            .create_server(pb::CreateServerRequest {
                name: "web".into(),
                flavor: "small".into(),
                image: "cirros".into(),
                project_id: "p1".into(),
                user_id: "u1".into(),
                force_hosts: vec!["n1".into()],
                request_id: "create-web".into(),
                ..Default::default()
            })
            .await
            .expect("create server")
            .into_inner()
            .servers;
        assert_eq!(created.len(), 1);
        assert_eq!(
            (created[0].vm_state, created[0].host_uuid.as_str()),
            (pb::VmState::Active as i32, n1.as_str()),
            "{created:?}"
        );
        let active = created[0].uuid.clone();
        let consumers = vec![consumer.clone(), active.clone()];
        Self {
            server,
            h1,
            n1,
            consumer,
            active,
            agg,
            image,
            group,
            consumers,
        }
    }

    async fn fingerprint(&self) -> Fingerprint {
        let p = &mut self.server.placement.clone();
        let c = &mut self.server.catalog.clone();
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
                .map(tonic::Response::into_inner)
                .map_err(|s| s.code()),
            );
        }
        let mut projects = Vec::new();
        let mut quotas = Vec::new();
        for project in ["p1", "p2"] {
            projects.push(project_usages(p, project).await);
            quotas.push(
                p.get_quota(pb::GetQuotaRequest {
                    project_id: project.into(),
                })
                .await
                .expect("quota")
                .into_inner(),
            );
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
        let servers = self
            .server
            .servers
            .clone()
            .list_servers(pb::ListServersRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("servers")
            .into_inner()
            .servers;
        let metadata = p
            .get_aggregate_metadata(pb::GetAggregateMetadataRequest {
                aggregate: self.agg.clone(),
            })
            .await
            .expect("metadata")
            .into_inner()
            .metadata;
        Fingerprint {
            providers,
            allocations,
            projects,
            quotas,
            classes,
            traits,
            flavors,
            images,
            groups,
            servers,
            metadata,
        }
    }
}

/// One row: the request, the code it must get, words its message must contain.
struct Case {
    req: Req,
    code: Code,
    words: Vec<String>,
}

fn case(req: Req, code: Code, words: &[&str]) -> Case {
    Case {
        req,
        code,
        words: words.iter().map(|w| w.to_string()).collect(),
    }
}

fn bad(req: Req, field: &str) -> Case {
    case(req, Code::InvalidArgument, &[field])
}

/// A valid request that changes nothing (an empty read).
fn fine(req: Req) -> Case {
    case(req, Code::Ok, &[])
}

fn inv_with(f: impl FnOnce(&mut pb::Inventory)) -> pb::Inventory {
    let mut i = inv("VCPU", 8);
    f(&mut i);
    i
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// The table.
fn cases(w: &World) -> Vec<Case> {
    use Req as R;
    use pb::server_action_request::Action as A;
    let h1 = w.h1.uuid.clone();
    let unknown = new_uuid();
    let malformed = [
        "not-a-uuid",
        "123e4567-e89b-12d3-a456-42661417400g",
        "123e4567-e89b-12d3-a456-4266141740000",
        " 123e4567-e89b-12d3-a456-426614174000",
    ];
    let spec = |f: &dyn Fn(&mut pb::RequestSpec)| {
        let mut s = spec(&[("VCPU", 1), ("MEMORY_MB", 256)], "p2");
        f(&mut s);
        Some(s)
    };
    let select = |s| R::SelectDestinationsRequest(pb::SelectDestinationsRequest { spec: s });
    let create_server = |f: &dyn Fn(&mut pb::CreateServerRequest)| {
        let mut r = pb::CreateServerRequest {
            name: "hostile".into(),
            flavor: "small".into(),
            image: "cirros".into(),
            project_id: "p2".into(),
            user_id: "u2".into(),
            force_hosts: vec!["n1".into()],
            ..Default::default()
        };
        f(&mut r);
        R::CreateServerRequest(r)
    };
    let action = |uuid: &str, a: Option<A>| {
        R::ServerActionRequest(pb::ServerActionRequest {
            uuid: uuid.into(),
            request_id: String::new(),
            action: a,
        })
    };
    let replace_invs = |invs: Vec<pb::Inventory>| {
        R::ReplaceInventoriesRequest(pb::ReplaceInventoriesRequest {
            uuid: h1.clone(),
            generation: w.h1.generation + 1, // one allocation write since creation
            inventories: invs,
        })
    };
    let alloc_candidates = |resources: Vec<pb::ResourceAmount>| {
        R::GetAllocationCandidatesRequest(pb::GetAllocationCandidatesRequest {
            resources,
            ..Default::default()
        })
    };
    let none = pb::NoArgs {};

    let mut t = vec![
        // ---- Every RPC with an empty request ---------------------------------------------
        bad(R::CreateResourceProviderRequest(Default::default()), "name"),
        bad(R::GetResourceProviderRequest(Default::default()), "uuid"),
        fine(R::ListResourceProvidersRequest(Default::default())),
        bad(R::UpdateResourceProviderRequest(Default::default()), "uuid"),
        bad(R::DeleteResourceProviderRequest(Default::default()), "uuid"),
        bad(R::GetInventoriesRequest(Default::default()), "uuid"),
        bad(R::ReplaceInventoriesRequest(Default::default()), "uuid"),
        bad(R::GetTraitsRequest(Default::default()), "uuid"),
        bad(R::ReplaceTraitsRequest(Default::default()), "uuid"),
        fine(R::ListTraitsRequest(Default::default())),
        bad(R::GetAggregatesRequest(Default::default()), "uuid"),
        bad(R::ReplaceAggregatesRequest(Default::default()), "uuid"),
        bad(
            R::SetAggregateMetadataRequest(Default::default()),
            "aggregate",
        ),
        bad(
            R::GetAggregateMetadataRequest(Default::default()),
            "aggregate",
        ),
        fine(R::ListResourceClassesRequest(Default::default())),
        bad(R::CreateResourceClassRequest(Default::default()), "name"),
        bad(
            R::GetAllocationsRequest(Default::default()),
            "consumer_uuid",
        ),
        bad(
            R::ReplaceAllocationsRequest(Default::default()),
            "consumer_uuid",
        ),
        bad(
            R::DeleteAllocationsRequest(Default::default()),
            "consumer_uuid",
        ),
        bad(R::GetProviderUsagesRequest(Default::default()), "uuid"),
        bad(R::GetProjectUsagesRequest(Default::default()), "project_id"),
        bad(R::GetQuotaRequest(Default::default()), "project_id"),
        bad(R::SetQuotaRequest(Default::default()), "project_id"),
        bad(
            R::SetQuotaRequest(pb::SetQuotaRequest {
                project_id: "p1".into(),
                ..Default::default()
            }),
            "limits",
        ),
        bad(
            R::GetQuotaRequest(pb::GetQuotaRequest {
                project_id: long(256),
            }),
            "project_id",
        ),
        bad(
            R::SetQuotaRequest(pb::SetQuotaRequest {
                project_id: "p1".into(),
                limits: vec![pb::QuotaSetting {
                    resource: "CUSTOM_NOPE".into(),
                    limit: Some(1),
                }],
                ..Default::default()
            }),
            "limits[0].resource",
        ),
        bad(
            R::SetQuotaRequest(pb::SetQuotaRequest {
                project_id: "p1".into(),
                limits: vec![
                    pb::QuotaSetting {
                        resource: "VCPU".into(),
                        limit: Some(1),
                    },
                    pb::QuotaSetting {
                        resource: "VCPU".into(),
                        limit: None,
                    },
                ],
                ..Default::default()
            }),
            "limits[1].resource",
        ),
        bad(
            R::SetQuotaRequest(pb::SetQuotaRequest {
                project_id: "p1".into(),
                limits: vec![pb::QuotaSetting {
                    resource: "instances".into(),
                    limit: Some(1),
                }],
                unset: vec!["instances".into()],
            }),
            "unset[0]",
        ),
        bad(
            R::SetQuotaRequest(pb::SetQuotaRequest {
                project_id: "p1".into(),
                unset: vec!["".into()],
                ..Default::default()
            }),
            "unset[0]",
        ),
        bad(
            R::GetAllocationCandidatesRequest(Default::default()),
            "resources",
        ),
        bad(R::SelectDestinationsRequest(Default::default()), "spec"),
        bad(R::ReleaseRequest(Default::default()), "consumer_uuid"),
        bad(R::MoveClaimRequest(Default::default()), "consumer_uuid"),
        bad(R::ConfirmMoveRequest(Default::default()), "consumer_uuid"),
        bad(R::RevertMoveRequest(Default::default()), "consumer_uuid"),
        bad(R::ExplainRequest(Default::default()), "spec"),
        bad(R::CreateFlavorRequest(Default::default()), "name"),
        bad(R::GetFlavorRequest(Default::default()), "id"),
        fine(R::ListFlavorsRequest(Default::default())),
        bad(R::DeleteFlavorRequest(Default::default()), "id"),
        bad(R::CreateImageRequest(Default::default()), "name"),
        bad(R::GetImageRequest(Default::default()), "id"),
        fine(R::ListImagesRequest(Default::default())),
        bad(R::DeleteImageRequest(Default::default()), "id"),
        bad(R::CreateServerGroupRequest(Default::default()), "policy"),
        bad(R::GetServerGroupRequest(Default::default()), "id"),
        fine(R::ListServerGroupsRequest(Default::default())),
        bad(R::DeleteServerGroupRequest(Default::default()), "id"),
        bad(R::CreateServerRequest(Default::default()), "name"),
        bad(R::GetServerRequest(Default::default()), "uuid"),
        fine(R::ListServersRequest(Default::default())),
        bad(R::DeleteServerRequest(Default::default()), "uuid"),
        bad(R::ServerActionRequest(Default::default()), "uuid"),
        bad(R::SetHostEnabledRequest(Default::default()), "host"),
        bad(R::EvacuateHostRequest(Default::default()), "host"),
        // ---- Oversized strings and lists ---------------------------------------------------
        bad(
            R::CreateResourceClassRequest(pb::CreateResourceClassRequest {
                name: format!("CUSTOM_{}", "A".repeat(249)),
            }),
            "name",
        ),
        bad(
            R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                consumer_uuid: unknown.clone(),
                project_id: long(256),
                user_id: "u1".into(),
                allocations: vec![pb::Allocation {
                    provider_uuid: h1.clone(),
                    resources: vec![amount("VCPU", 1)],
                }],
                ..Default::default()
            }),
            "project_id",
        ),
        bad(
            R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                consumer_uuid: unknown.clone(),
                project_id: "p1".into(),
                user_id: long(256),
                allocations: vec![pb::Allocation {
                    provider_uuid: h1.clone(),
                    resources: vec![amount("VCPU", 1)],
                }],
                ..Default::default()
            }),
            "user_id",
        ),
        bad(
            R::GetProjectUsagesRequest(pb::GetProjectUsagesRequest {
                project_id: long(256),
                user_id: None,
            }),
            "project_id",
        ),
        bad(
            R::CreateServerGroupRequest(pb::CreateServerGroupRequest {
                name: "g2".into(),
                policy: pb::ServerGroupPolicy::Affinity as i32,
                project_id: long(256),
                ..Default::default()
            }),
            "project_id",
        ),
        bad(
            R::CreateImageRequest(pb::CreateImageRequest {
                name: long(256),
                ..Default::default()
            }),
            "name",
        ),
        bad(
            R::UpdateResourceProviderRequest(pb::UpdateResourceProviderRequest {
                uuid: h1.clone(),
                generation: w.h1.generation + 1,
                capabilities: Some(pb::Capabilities {
                    entries: HashMap::from([("k".into(), long(256))]),
                }),
                ..Default::default()
            }),
            "capabilities",
        ),
        // More instance uuids than one request may place (num_instances follows them).
        bad(
            select(spec(&|s| {
                s.instance_uuids = (0..1001).map(|_| new_uuid()).collect();
            })),
            "num_instances",
        ),
        bad(create_server(&|r| r.name = long(256)), "name"),
        bad(create_server(&|r| r.name = "tab\there".into()), "name"),
        bad(create_server(&|r| r.count = 1001), "count"),
        bad(create_server(&|r| r.count = u32::MAX), "count"),
        bad(
            create_server(&|r| {
                r.metadata = (0..129).map(|i| (format!("k{i}"), "v".into())).collect();
            }),
            "metadata",
        ),
        bad(
            create_server(&|r| r.metadata = HashMap::from([(long(256), "v".into())])),
            "metadata",
        ),
        bad(
            create_server(&|r| r.metadata = HashMap::from([("k".into(), long(256))])),
            "metadata[k]",
        ),
        bad(
            create_server(&|r| r.metadata = HashMap::from([(String::new(), "v".into())])),
            "metadata",
        ),
        bad(create_server(&|r| r.request_id = long(129)), "request_id"),
        bad(
            R::DeleteServerRequest(pb::DeleteServerRequest {
                uuid: w.active.clone(),
                request_id: long(129),
            }),
            "request_id",
        ),
        bad(
            R::ServerActionRequest(pb::ServerActionRequest {
                uuid: w.active.clone(),
                request_id: long(129),
                action: Some(A::Stop(none)),
            }),
            "request_id",
        ),
        bad(
            R::EvacuateHostRequest(pb::EvacuateHostRequest {
                host: "h1".into(),
                request_id: long(129),
            }),
            "request_id",
        ),
        bad(
            action(
                &w.active,
                Some(A::Snapshot(pb::SnapshotArgs {
                    image_name: long(256),
                })),
            ),
            "image_name",
        ),
        bad(
            action(
                &w.active,
                Some(A::Snapshot(pb::SnapshotArgs {
                    image_name: String::new(),
                })),
            ),
            "image_name",
        ),
        bad(
            R::ListServersRequest(pb::ListServersRequest {
                page_token: long(600),
                ..Default::default()
            }),
            "page_token",
        ),
        // ---- Zero and negative where positive is needed ------------------------------------
        bad(alloc_candidates(vec![amount("VCPU", 0)]), "resources"),
        bad(
            alloc_candidates(vec![amount("VCPU", 1), amount("MEMORY_MB", 0)]),
            "resources[1]",
        ),
        bad(
            R::ListResourceProvidersRequest(pb::ListResourceProvidersRequest {
                resources: vec![amount("VCPU", 0)],
                ..Default::default()
            }),
            "resources[0]",
        ),
        bad(
            R::ListServersRequest(pb::ListServersRequest {
                vm_state: -1,
                ..Default::default()
            }),
            "vm_state",
        ),
        bad(
            R::ListServersRequest(pb::ListServersRequest {
                vm_state: 99,
                ..Default::default()
            }),
            "vm_state",
        ),
        bad(
            R::CreateFlavorRequest(pb::CreateFlavorRequest {
                name: "m1.neg".into(),
                vcpus: 1,
                ram_mb: 1,
                extra_specs: HashMap::from([("resources:VCPU".into(), "-1".into())]),
                ..Default::default()
            }),
            "extra_specs[resources:VCPU]",
        ),
        // ---- Overflowing numbers -------------------------------------------------------------
        bad(
            replace_invs(vec![inv_with(|i| i.reserved = u64::MAX)]),
            "reserved",
        ),
        bad(
            replace_invs(vec![inv_with(|i| i.min_unit = u64::MAX)]),
            "min_unit",
        ),
        bad(
            replace_invs(vec![inv_with(|i| i.step_size = u64::MAX)]),
            "step_size",
        ),
        bad(
            replace_invs(vec![inv_with(|i| {
                i.total = u64::MAX;
                i.allocation_ratio = 1e6;
            })]),
            "total",
        ),
        bad(
            replace_invs(vec![inv_with(|i| {
                i.total = 2_147_483_647;
                i.allocation_ratio = 1_000_000.5;
            })]),
            "allocation_ratio",
        ),
        bad(
            replace_invs(vec![inv_with(|i| i.allocation_ratio = f64::MIN)]),
            "allocation_ratio",
        ),
        bad(
            replace_invs(vec![inv_with(|i| i.allocation_ratio = -f64::MIN_POSITIVE)]),
            "allocation_ratio",
        ),
        bad(
            R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                consumer_uuid: unknown.clone(),
                project_id: "p1".into(),
                user_id: "u1".into(),
                allocations: vec![pb::Allocation {
                    provider_uuid: h1.clone(),
                    resources: vec![amount("VCPU", u64::MAX)],
                }],
                ..Default::default()
            }),
            "amount",
        ),
        bad(
            select(spec(&|s| s.resources = vec![amount("MEMORY_MB", u64::MAX)])),
            "amount",
        ),
        bad(
            R::ExplainRequest(pb::ExplainRequest {
                spec: spec(&|s| s.num_instances = u32::MAX),
            }),
            "num_instances",
        ),
        bad(
            R::ListResourceProvidersRequest(pb::ListResourceProvidersRequest {
                resources: vec![amount("VCPU", u64::MAX)],
                ..Default::default()
            }),
            "resources[0].amount",
        ),
        bad(
            R::GetAllocationCandidatesRequest(pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 1)],
                limit: u32::MAX,
                ..Default::default()
            }),
            "limit",
        ),
        bad(
            R::CreateFlavorRequest(pb::CreateFlavorRequest {
                name: "m1.huge".into(),
                vcpus: u32::MAX,
                ram_mb: 1,
                ..Default::default()
            }),
            "vcpus",
        ),
        bad(
            R::CreateFlavorRequest(pb::CreateFlavorRequest {
                name: "m1.huge".into(),
                vcpus: 1,
                ram_mb: u64::MAX,
                ..Default::default()
            }),
            "ram_mb",
        ),
        bad(
            R::CreateFlavorRequest(pb::CreateFlavorRequest {
                name: "m1.huge".into(),
                vcpus: 1,
                ram_mb: 1,
                extra_specs: HashMap::from([("resources:MEMORY_MB".into(), u64::MAX.to_string())]),
                ..Default::default()
            }),
            "extra_specs[resources:MEMORY_MB]",
        ),
        case(
            R::UpdateResourceProviderRequest(pb::UpdateResourceProviderRequest {
                uuid: h1.clone(),
                generation: u64::MAX,
                name: Some("renamed".into()),
                ..Default::default()
            }),
            Code::Aborted,
            &["current is"],
        ),
        case(
            R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                consumer_uuid: w.consumer.clone(),
                consumer_generation: Some(u64::MAX),
                project_id: "p1".into(),
                user_id: "u1".into(),
                allocations: vec![],
            }),
            Code::Aborted,
            &["current is 1"],
        ),
        bad(
            R::ListServersRequest(pb::ListServersRequest {
                page_size: u32::MAX,
                ..Default::default()
            }),
            "page_size",
        ),
        // ---- Unknown resource classes --------------------------------------------------------
        // (A new CUSTOM_ class in an inventory is registered on first use, as a custom trait
        // is; a class that is neither standard nor custom is refused.)
        bad(
            replace_invs({
                let mut v = host_inventories(8, 8192, 100);
                v.push(inv("CUSTOM_GPU", 4));
                v.push(inv("SRIOV_NET_VF", 4));
                v
            }),
            "inventories[4].resource_class",
        ),
        // A filter naming a class nobody has matches nothing (as an unknown trait does).
        fine(R::ListResourceProvidersRequest(
            pb::ListResourceProvidersRequest {
                resources: vec![amount("CUSTOM_NEVER_CREATED", 1)],
                ..Default::default()
            },
        )),
        bad(
            R::MoveClaimRequest(pb::MoveClaimRequest {
                consumer_uuid: w.consumer.clone(),
                spec: spec(&|s| s.resources = vec![amount("CUSTOM_NEVER_CREATED", 1)]),
                allow_same_host: true,
            }),
            "CUSTOM_NEVER_CREATED",
        ),
        // ---- Malformed uuids -------------------------------------------------------------------
        bad(
            R::CreateImageRequest(pb::CreateImageRequest {
                id: "not-a-uuid".into(),
                name: "img2".into(),
                ..Default::default()
            }),
            "id",
        ),
        bad(
            select(spec(&|s| s.different_host = vec!["nope".into()])),
            "different_host[0]",
        ),
        bad(
            R::CreateResourceProviderRequest(pb::CreateResourceProviderRequest {
                uuid: "{not a uuid}".into(),
                name: "h9".into(),
                ..Default::default()
            }),
            "uuid",
        ),
        // ---- Duplicate ids -----------------------------------------------------------------------
        case(
            R::CreateResourceProviderRequest(pb::CreateResourceProviderRequest {
                uuid: w.n1.clone(),
                name: "n1-again".into(),
                ..Default::default()
            }),
            Code::AlreadyExists,
            &[&w.n1],
        ),
        case(
            R::CreateImageRequest(pb::CreateImageRequest {
                id: w.image.id.clone(),
                name: "cirros-2".into(),
                ..Default::default()
            }),
            Code::AlreadyExists,
            &[&w.image.id],
        ),
        case(
            R::CreateServerGroupRequest(pb::CreateServerGroupRequest {
                id: w.group.id.clone(),
                name: "anti-2".into(),
                policy: pb::ServerGroupPolicy::Affinity as i32,
                project_id: "p1".into(),
                ..Default::default()
            }),
            Code::AlreadyExists,
            &[&w.group.id],
        ),
        case(
            R::CreateFlavorRequest(pb::CreateFlavorRequest {
                id: "small".into(),
                name: "m1.other".into(),
                vcpus: 1,
                ram_mb: 1,
                ..Default::default()
            }),
            Code::AlreadyExists,
            &["small"],
        ),
        bad(
            alloc_candidates(vec![amount("VCPU", 1), amount("VCPU", 2)]),
            "resources[1]",
        ),
        bad(
            R::ListResourceProvidersRequest(pb::ListResourceProvidersRequest {
                resources: vec![amount("VCPU", 1), amount("VCPU", 1)],
                ..Default::default()
            }),
            "resources[1]",
        ),
        bad(
            select(spec(&|s| {
                s.instance_uuids = vec![w.consumers[0].clone(); 2];
                s.num_instances = 0;
            })),
            "instance_uuids",
        ),
        case(
            select(spec(&|s| s.instance_uuids = vec![w.active.clone()])),
            Code::AlreadyExists,
            &[&w.active],
        ),
        bad(
            R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                consumer_uuid: unknown.clone(),
                project_id: "p1".into(),
                user_id: "u1".into(),
                allocations: vec![
                    pb::Allocation {
                        provider_uuid: h1.clone(),
                        resources: vec![amount("VCPU", 1)],
                    },
                    pb::Allocation {
                        provider_uuid: h1.to_uppercase(),
                        resources: vec![amount("MEMORY_MB", 1)],
                    },
                ],
                ..Default::default()
            }),
            "allocations[1]",
        ),
        // ---- Servers: unknown names and refused actions ---------------------------------------
        case(
            create_server(&|r| r.flavor = "nope".into()),
            Code::NotFound,
            &["nope"],
        ),
        case(
            create_server(&|r| r.image = "nope".into()),
            Code::NotFound,
            &["nope"],
        ),
        case(
            create_server(&|r| r.group = "nope".into()),
            Code::NotFound,
            &["nope"],
        ),
        bad(
            create_server(&|r| r.required_traits = vec!["bad trait".into()]),
            "required_traits",
        ),
        bad(
            create_server(&|r| r.availability_zone = "a:b".into()),
            "availability_zone",
        ),
        bad(
            create_server(&|r| r.project_id = " p1".into()),
            "project_id",
        ),
        bad(create_server(&|r| r.user_id = String::new()), "user_id"),
        case(
            R::GetServerRequest(pb::GetServerRequest {
                uuid: unknown.clone(),
            }),
            Code::NotFound,
            &[&unknown],
        ),
        case(
            R::DeleteServerRequest(pb::DeleteServerRequest {
                uuid: unknown.clone(),
                request_id: String::new(),
            }),
            Code::NotFound,
            &[&unknown],
        ),
        case(
            action(&unknown, Some(A::Stop(none))),
            Code::NotFound,
            &[&unknown],
        ),
        bad(action(&w.active, None), "action"),
        case(
            action(&w.active, Some(A::Start(none))),
            Code::FailedPrecondition,
            &["ACTIVE"],
        ),
        case(
            action(&w.active, Some(A::ConfirmResize(none))),
            Code::FailedPrecondition,
            &["ACTIVE"],
        ),
        case(
            action(&w.active, Some(A::Unshelve(none))),
            Code::FailedPrecondition,
            &["ACTIVE"],
        ),
        case(
            action(
                &w.active,
                Some(A::Resize(pb::ResizeArgs {
                    flavor: "nope".into(),
                })),
            ),
            Code::NotFound,
            &["nope"],
        ),
        bad(
            action(
                &w.active,
                Some(A::Resize(pb::ResizeArgs {
                    flavor: "m1.small".into(),
                })),
            ),
            "flavor",
        ),
        case(
            action(
                &w.active,
                Some(A::Rebuild(pb::RebuildArgs {
                    image: "nope".into(),
                })),
            ),
            Code::NotFound,
            &["nope"],
        ),
        case(
            action(
                &w.active,
                Some(A::Snapshot(pb::SnapshotArgs {
                    image_name: "cirros".into(),
                })),
            ),
            Code::AlreadyExists,
            &["cirros"],
        ),
        case(
            action(
                &w.active,
                Some(A::Migrate(pb::MoveArgs {
                    host: "nope".into(),
                })),
            ),
            Code::NotFound,
            &["nope"],
        ),
        bad(
            action(
                &w.active,
                Some(A::LiveMigrate(pb::MoveArgs { host: "n1".into() })),
            ),
            "host",
        ),
        case(
            action(&w.active, Some(A::Evacuate(pb::MoveArgs::default()))),
            Code::FailedPrecondition,
            &["up"],
        ),
        case(
            R::SetHostEnabledRequest(pb::SetHostEnabledRequest {
                host: "nope".into(),
                enabled: false,
                reason: String::new(),
            }),
            Code::NotFound,
            &["nope"],
        ),
        case(
            R::EvacuateHostRequest(pb::EvacuateHostRequest {
                host: "nope".into(),
                request_id: String::new(),
            }),
            Code::NotFound,
            &["nope"],
        ),
        case(
            R::EvacuateHostRequest(pb::EvacuateHostRequest {
                host: "n1".into(),
                request_id: String::new(),
            }),
            Code::FailedPrecondition,
            &["up"],
        ),
        case(
            R::ListServersRequest(pb::ListServersRequest {
                host: "nope".into(),
                ..Default::default()
            }),
            Code::NotFound,
            &["nope"],
        ),
    ];
    // Malformed uuids wherever a uuid is required.
    for m in malformed {
        let m = m.to_string();
        t.extend([
            bad(
                R::GetServerRequest(pb::GetServerRequest { uuid: m.clone() }),
                "uuid",
            ),
            bad(
                R::DeleteServerRequest(pb::DeleteServerRequest {
                    uuid: m.clone(),
                    request_id: String::new(),
                }),
                "uuid",
            ),
            bad(action(&m, Some(A::Stop(none))), "uuid"),
            bad(
                R::ReleaseRequest(pb::ReleaseRequest {
                    consumer_uuid: m.clone(),
                }),
                "consumer_uuid",
            ),
            bad(
                R::ReplaceAllocationsRequest(pb::ReplaceAllocationsRequest {
                    consumer_uuid: m.clone(),
                    project_id: "p1".into(),
                    user_id: "u1".into(),
                    ..Default::default()
                }),
                "consumer_uuid",
            ),
            bad(
                R::GetProviderUsagesRequest(pb::GetProviderUsagesRequest { uuid: m.clone() }),
                "uuid",
            ),
        ]);
    }
    t
}

#[tokio::test]
async fn every_rpc_refuses_hostile_input_and_changes_nothing() {
    let mut w = World::new().await;
    let table = cases(&w);
    // Ids the table uses, read into the fingerprint so a stray write to them shows.
    for c in &table {
        if let Req::ReplaceAllocationsRequest(r) = &c.req
            && uuid::Uuid::parse_str(&r.consumer_uuid).is_ok()
            && !w.consumers.contains(&r.consumer_uuid)
        {
            w.consumers.push(r.consumer_uuid.clone());
        }
    }
    let missing: Vec<&str> = ALL_RPCS
        .iter()
        .copied()
        .filter(|name| table.iter().all(|c| c.req.name() != *name))
        .collect();
    assert!(missing.is_empty(), "RPCs without a row: {missing:?}");

    let mut failures = Vec::new();
    let mut before = w.fingerprint().await;
    for (i, c) in table.into_iter().enumerate() {
        let what = format!("row {i} {}: {:?}", c.req.name(), c.req);
        let what: String = what.chars().take(300).collect();
        let result = w.send(c.req).await;
        match (&result, c.code) {
            (Ok(()), Code::Ok) => {}
            (Ok(()), code) => failures.push(format!("{what}\n  succeeded; expected {code:?}")),
            (Err(s), Code::Ok) => failures.push(format!("{what}\n  failed: {s:?}")),
            (Err(s), code) => {
                if s.code() != code {
                    failures.push(format!(
                        "{what}\n  got {:?} ({}); expected {code:?}",
                        s.code(),
                        s.message()
                    ));
                }
                for word in &c.words {
                    if !s.message().contains(word.as_str()) {
                        failures.push(format!(
                            "{what}\n  message {:?} does not name {word:?}",
                            s.message()
                        ));
                    }
                }
                if code == Code::InvalidArgument && !s.message().starts_with("invalid ") {
                    failures.push(format!(
                        "{what}\n  message {:?} names no field",
                        s.message()
                    ));
                }
            }
        }
        let after = w.fingerprint().await;
        if after != before {
            failures.push(format!(
                "{what}\n  changed the state:\n  before: {before:?}\n  after: {after:?}"
            ));
            // Compare the next row against the new state, so one failure is reported once.
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the hostile requests were mishandled:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The server survived all of it.
    w.fingerprint().await;
    w.server.shutdown().await;
}
