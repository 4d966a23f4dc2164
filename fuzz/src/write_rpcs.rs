//! The `write_rpcs` harness: the first byte of an input picks an RPC of the Placement,
//! Scheduler, Catalog or Servers service, the rest is prost-decoded as its request, and the
//! in-process handler runs against one persistent engine (the same service structs
//! `api::serve` mounts, a conductor over [`SimNodes`]).
//!
//! Handler errors are expected and never fail the run. What fails it, after every call:
//!
//! - **Usage bookkeeping.** Each provider's `used` per class equals the sum over every
//!   consumer's allocations (both sides of a move), no consumer holds a class its provider
//!   has no inventory of, `instances` counts the allocations there (a consumer moving
//!   within one host counts twice until the move ends), and
//!   every project's reported usage equals the sum over its consumers.
//! - **No over-commit.** Where `used > capacity` (capacity recomputed as
//!   `floor((total − reserved) × ratio)`), the call did not raise `used`: only an inventory
//!   shrink may leave a provider over-committed, and then it takes nothing new.
//! - **Stored inventories obey the rules** a request is checked against.
//! - **Generations.** Provider and consumer generations never go back, and any change to a
//!   provider's data or a consumer's allocations comes with a new generation.
//! - **Server groups.** Members are exactly the consumers that name the group, and the
//!   group's per-host counts match its members' allocations; a scheduled anti-affinity
//!   member never lands on a host already holding `max_server_per_host`.
//! - **Servers.** After a call returns no server is left with a task in progress, and the
//!   servers a successful CreateServer makes ACTIVE hold allocations on their host.
//! - **Errors.** Only the contract's codes (never INTERNAL or UNKNOWN), INVALID_ARGUMENT
//!   messages name a field (`invalid FIELD: ...`), and a rejected call changes nothing.
//!
//! Fuzzed bytes cannot guess the uuids the engine generates, so a uuid field holding `@N`
//! is replaced by the N-th known provider, consumer, server, aggregate or group, and a
//! generation of 2^62 or more by the current one (see [`Pools`]); seeded objects have fixed
//! uuids and names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_engine::api::catalog::CatalogApi;
use berth_engine::api::placement::PlacementApi;
use berth_engine::api::scheduler::SchedulerApi;
use berth_engine::api::servers::ServersApi;
use berth_engine::lifecycle::conductor::{Server, ServerFilter};
use berth_engine::lifecycle::{ComputeConfig, Conductor};
use berth_engine::model::{Flavor, GroupPolicy, Image, ProviderInfo, ServerGroup};
use berth_engine::{ConsumerAllocations, Engine, EngineConfig, ProjectUsageReport, ProviderFilter};
use berth_proto::v1 as pb;
use berth_proto::v1::catalog_server::Catalog;
use berth_proto::v1::placement_server::Placement;
use berth_proto::v1::scheduler_server::Scheduler;
use berth_proto::v1::servers_server::Servers;
use prost::Message;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::sim_nodes::{FLAKY, NO_LIVE, OFFLINE, SimNodes};

/// Calls between two fresh engines: keeps the per-call audit cheap and the state small
/// enough that a crash input replays against a state like the one it crashed on.
const RESET_EVERY: u64 = 2000;
/// A fresh engine also when the state grows past these.
const MAX_PROVIDERS: usize = 48;
const MAX_CONSUMERS: usize = 400;
const MAX_SERVERS: usize = 120;

macro_rules! rpcs {
    ($($name:ident),* $(,)?) => {
        /// The RPCs the harness drives; an input's first byte modulo their number picks one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Rpc { $(
            #[doc = stringify!($name)]
            $name
        ),* }

        impl Rpc {
            /// Every RPC, in selector order.
            pub const ALL: &'static [Rpc] = &[$(Rpc::$name),*];
        }
    };
}

rpcs!(
    CreateResourceProvider,
    UpdateResourceProvider,
    DeleteResourceProvider,
    ReplaceInventories,
    ReplaceTraits,
    ReplaceAggregates,
    SetAggregateMetadata,
    CreateResourceClass,
    ReplaceAllocations,
    DeleteAllocations,
    GetAllocationCandidates,
    ListResourceProviders,
    SelectDestinations,
    Release,
    MoveClaim,
    ConfirmMove,
    RevertMove,
    Explain,
    CreateFlavor,
    DeleteFlavor,
    CreateImage,
    DeleteImage,
    CreateServerGroup,
    DeleteServerGroup,
    CreateServer,
    DeleteServer,
    ServerAction,
    SetHostEnabled,
    EvacuateHost,
    ListServers,
);

impl Rpc {
    /// The selector byte of this RPC.
    pub fn selector(self) -> u8 {
        Rpc::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8
    }

    /// An input for this RPC: the selector byte, then the encoded request.
    pub fn input(self, request: &impl Message) -> Vec<u8> {
        let mut v = vec![self.selector()];
        v.extend(request.encode_to_vec());
        v
    }
}

// ---- Seeded world ----------------------------------------------------------------------

const fn fixed(n: u128) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n)
}

/// Seeded providers (`h1`…`h3`, plus the misbehaving hosts of [`SimNodes`] and `down`).
pub const H1: Uuid = fixed(0x101);
/// See [`H1`].
pub const H2: Uuid = fixed(0x102);
/// See [`H1`].
pub const H3: Uuid = fixed(0x103);
/// A host that is down, with a server on it (EvacuateHost can succeed).
pub const DOWN: Uuid = fixed(0x104);
/// Seeded aggregates.
pub const AGG1: Uuid = fixed(0xa01);
/// See [`AGG1`].
pub const AGG2: Uuid = fixed(0xa02);
/// A consumer holding explicit allocations on h1 (project `p1`).
pub const C1: Uuid = fixed(0xc01);
/// A scheduled member of the anti-affinity group `anti` (project `p1`).
pub const C2: Uuid = fixed(0xc02);
/// A scheduled consumer with a move in progress (project `p2`).
pub const C3: Uuid = fixed(0xc03);
/// The seeded image `cirros`.
pub const CIRROS: Uuid = fixed(0x1a1);

fn inv(class: &str, total: u64) -> pb::Inventory {
    pb::Inventory {
        resource_class: class.into(),
        total,
        ..Default::default()
    }
}

fn host_invs(vcpus: u64, ram_mb: u64, disk_gb: u64) -> Vec<pb::Inventory> {
    vec![
        inv("VCPU", vcpus),
        inv("MEMORY_MB", ram_mb),
        inv("DISK_GB", disk_gb),
    ]
}

fn amount(class: &str, amount: u64) -> pb::ResourceAmount {
    pb::ResourceAmount {
        resource_class: class.into(),
        amount,
    }
}

/// A request spec for `resources` owned by `project`.
pub fn spec(resources: &[(&str, u64)], project: &str) -> pb::RequestSpec {
    pb::RequestSpec {
        resources: resources.iter().map(|(c, n)| amount(c, *n)).collect(),
        project_id: project.into(),
        user_id: "u1".into(),
        ..Default::default()
    }
}

/// Everything the audit reads, straight from the engine and the conductor.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    providers: BTreeMap<Uuid, ProviderInfo>,
    consumers: BTreeMap<Uuid, ConsumerAllocations>,
    projects: BTreeMap<String, ProjectUsageReport>,
    classes: Vec<String>,
    traits: Vec<String>,
    flavors: Vec<Flavor>,
    images: Vec<Image>,
    groups: Vec<ServerGroup>,
    servers: Vec<Server>,
}

/// See [`Pools::generation`].
pub const CURRENT: u64 = 1 << 62;

/// Known ids that `@N` in a uuid field stands for.
#[derive(Debug, Default)]
pub struct Pools {
    /// Current generations, for [`Pools::generation`].
    provider_generations: BTreeMap<String, u64>,
    consumer_generations: BTreeMap<String, u64>,
    providers: Vec<String>,
    consumers: Vec<String>,
    servers: Vec<String>,
    aggregates: Vec<String>,
    groups: Vec<String>,
}

impl Pools {
    /// The pools for `s`; `seen` lists every consumer in the order it first appeared, so
    /// a replay of the same inputs resolves `@N` alike although generated uuids differ.
    fn of(s: &Snapshot, seen: &[Uuid]) -> Self {
        let mut providers: Vec<&ProviderInfo> = s.providers.values().collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        let servers: Vec<String> = s.servers.iter().map(|v| v.uuid.to_string()).collect();
        // Servers first (creation order), then the other consumers as they appeared.
        let mut consumers = servers.clone();
        for c in seen {
            let c = c.to_string();
            if !consumers.contains(&c) {
                consumers.push(c);
            }
        }
        let mut aggregates: BTreeSet<String> =
            [AGG1, AGG2].iter().map(ToString::to_string).collect();
        for p in s.providers.values() {
            aggregates.extend(p.aggregates.iter().cloned());
        }
        Self {
            provider_generations: s
                .providers
                .values()
                .map(|p| (p.uuid.to_string(), p.generation))
                .collect(),
            consumer_generations: s
                .consumers
                .values()
                .map(|c| (c.consumer.to_string(), c.generation))
                .collect(),
            providers: providers.iter().map(|p| p.uuid.to_string()).collect(),
            consumers,
            servers,
            aggregates: aggregates.into_iter().collect(),
            groups: s.groups.iter().map(|g| g.id.to_string()).collect(),
        }
    }

    /// Replaces `@N` in `field` with the N-th (modulo) id of `pool`.
    fn fix(field: &mut String, pool: &[String]) {
        if let Some(n) = field
            .strip_prefix('@')
            .and_then(|n| n.parse::<usize>().ok())
            && !pool.is_empty()
        {
            *field = pool[n % pool.len()].clone();
        }
    }

    /// A generation of [`CURRENT`] or more stands for the current one of `id` (fuzzed bytes
    /// rarely guess it; smaller values still test stale ones).
    fn generation(generation: &mut u64, id: &str, current: &BTreeMap<String, u64>) {
        if *generation >= CURRENT
            && let Some(g) = current.get(id)
        {
            *generation = *g;
        }
    }

    fn fix_all(fields: &mut [String], pool: &[String]) {
        for f in fields {
            Self::fix(f, pool);
        }
    }

    fn spec(&self, s: &mut pb::RequestSpec) {
        Self::fix_all(&mut s.instance_uuids, &self.consumers);
        Self::fix_all(&mut s.same_host, &self.consumers);
        Self::fix_all(&mut s.different_host, &self.consumers);
        Self::fix_all(&mut s.ignore_hosts, &self.providers);
        Self::fix_all(&mut s.force_hosts, &self.providers);
        Self::fix_all(&mut s.forbidden_aggregates, &self.aggregates);
        for m in &mut s.member_of {
            Self::fix_all(&mut m.aggregates, &self.aggregates);
        }
        Self::fix(&mut s.group, &self.groups);
    }
}

/// What a successful call returned that the audit checks further.
enum Done {
    Plain,
    Selected {
        selections: Vec<pb::Selection>,
        group: String,
    },
    Created(Vec<pb::Server>),
}

type Outcome = Result<Done, Status>;

fn plain<T>(r: Result<tonic::Response<T>, Status>) -> Outcome {
    r.map(|_| Done::Plain)
}

/// One engine, its services and the simulated nodes; see the module doc.
pub struct World {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    conductor: Arc<Conductor>,
    placement: PlacementApi,
    scheduler: SchedulerApi,
    catalog: CatalogApi,
    servers: ServersApi,
    calls: u64,
    /// The inputs run since this engine was seeded: written out when an audit fails, so
    /// `examples/replay.rs` can rebuild the state the failure needed.
    history: Vec<Vec<u8>>,
    /// Every consumer seen, in order of first appearance (see [`Pools::of`]).
    consumers_seen: Vec<Uuid>,
    /// The same, as a set.
    consumers_known: BTreeSet<Uuid>,
    /// Every project seen: their usage reports are audited even after their last consumer
    /// is gone (they must then be empty).
    projects: BTreeSet<String>,
}

impl World {
    /// A fresh engine with the seeded cloud.
    ///
    /// # Panics
    /// If seeding fails: that is a harness bug (or an engine bug the seed already hits).
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime");
        let engine = Arc::new(Engine::new(EngineConfig::default()).expect("default engine"));
        let conductor = Conductor::new(
            engine.clone(),
            Arc::new(SimNodes::default()),
            ComputeConfig::default(),
        );
        let mut w = World {
            rt,
            placement: PlacementApi::new(engine.clone()),
            scheduler: SchedulerApi::new(engine.clone()),
            catalog: CatalogApi::new(engine.clone()),
            servers: ServersApi::new(conductor.clone()),
            engine,
            conductor,
            calls: 0,
            history: Vec::new(),
            consumers_seen: Vec::new(),
            consumers_known: BTreeSet::new(),
            projects: BTreeSet::new(),
        };
        w.seed();
        w
    }

    fn seed(&mut self) {
        for input in seed_calls() {
            match self.call(&input) {
                Some(Ok(_)) => {}
                Some(Err(s)) => panic!("seed call {:?} failed: {s:?}", Rpc::ALL[input[0] as usize]),
                None => panic!("seed call does not decode"),
            }
            let after = self.snapshot();
            self.note_projects(&after);
        }
        // A host that went down with its server on it.
        let _ = self.engine.set_host_up(&DOWN, false);
    }

    /// Records the projects and consumers `s` shows for the first time; consumers that
    /// appear together are ordered by uuid.
    fn note_projects(&mut self, s: &Snapshot) {
        for (id, c) in &s.consumers {
            self.projects.insert(c.project_id.clone());
            if self.consumers_known.insert(*id) {
                self.consumers_seen.push(*id);
            }
        }
    }

    /// Everything the audit reads.
    pub fn snapshot(&self) -> Snapshot {
        let providers = self
            .engine
            .list_providers(&ProviderFilter::default())
            .expect("listing every provider cannot fail")
            .into_iter()
            .map(|p| (p.uuid, p))
            .collect();
        let consumers: BTreeMap<Uuid, ConsumerAllocations> = self
            .engine
            .consumer_ids()
            .into_iter()
            .filter_map(|c| self.engine.get_allocations(&c).ok().map(|a| (c, a)))
            .collect();
        let mut names: BTreeSet<String> = self.projects.clone();
        names.extend(consumers.values().map(|c| c.project_id.clone()));
        let projects = names
            .into_iter()
            .map(|p| {
                let r = self
                    .engine
                    .project_usages(&p, None)
                    .expect("project ids come from stored consumers");
                (p, r)
            })
            .collect();
        let mut classes = self.engine.list_resource_classes();
        classes.sort();
        Snapshot {
            providers,
            consumers,
            projects,
            classes,
            traits: self.engine.list_traits(),
            flavors: self
                .engine
                .list_flavors()
                .iter()
                .map(|f| (**f).clone())
                .collect(),
            images: self
                .engine
                .list_images()
                .iter()
                .map(|i| (**i).clone())
                .collect(),
            groups: self.engine.list_groups(),
            servers: self.conductor.list(&ServerFilter::default()),
        }
    }

    fn too_big(&self, s: &Snapshot) -> bool {
        self.calls >= RESET_EVERY
            || s.providers.len() > MAX_PROVIDERS
            || s.consumers.len() > MAX_CONSUMERS
            || s.servers.len() > MAX_SERVERS
    }

    /// Runs one fuzz input: decode, call, audit. Panics only on a broken invariant.
    /// Returns the call's status (`None` if the bytes do not decode).
    pub fn run(&mut self, data: &[u8]) -> Option<Result<(), Status>> {
        let before = self.snapshot();
        self.history.push(data.to_vec());
        let out = self.call_with(data, &Pools::of(&before, &self.consumers_seen))?;
        self.calls += 1;
        let rpc = Rpc::ALL[data[0] as usize % Rpc::ALL.len()];
        let after = self.snapshot();
        if let Err(violation) = audit(&before, &after, rpc, &out) {
            let path = std::env::var("BERTH_FUZZ_HISTORY")
                .unwrap_or_else(|_| "write_rpcs-history.bin".into());
            let saved = match std::fs::write(&path, encode_history(&self.history)) {
                Ok(()) => format!(
                    "the {} inputs since the seed are in {path}",
                    self.history.len()
                ),
                Err(e) => format!("could not save the inputs to {path}: {e}"),
            };
            panic!("{violation}\n({saved}; replay: cargo run --example replay {path})");
        }
        self.note_projects(&after);
        if self.too_big(&after) {
            *self = World::new();
        }
        Some(out.map(|_| ()))
    }

    fn call(&mut self, data: &[u8]) -> Option<Outcome> {
        let pools = Pools::of(&self.snapshot(), &self.consumers_seen);
        self.call_with(data, &pools)
    }

    /// Decodes and runs one call; `None` if the bytes do not decode.
    fn call_with(&mut self, data: &[u8], pools: &Pools) -> Option<Outcome> {
        let (&sel, body) = data.split_first()?;
        let rpc = Rpc::ALL[sel as usize % Rpc::ALL.len()];
        // Decode as `$ty`, let `$fix` resolve `@N` ids in it, call `$svc.$method`.
        macro_rules! go {
            ($ty:ty, $svc:ident . $method:ident) => {{
                let r = <$ty>::decode(body).ok()?;
                plain(self.rt.block_on(self.$svc.$method(Request::new(r))))
            }};
            ($ty:ty, $svc:ident . $method:ident, |$r:ident| $fix:expr) => {{
                let mut $r = <$ty>::decode(body).ok()?;
                $fix;
                plain(self.rt.block_on(self.$svc.$method(Request::new($r))))
            }};
        }
        let p = pools;
        Some(match rpc {
            Rpc::CreateResourceProvider => go!(
                pb::CreateResourceProviderRequest,
                placement.create_resource_provider,
                |r| Pools::fix_all(&mut r.aggregates, &p.aggregates)
            ),
            Rpc::UpdateResourceProvider => go!(
                pb::UpdateResourceProviderRequest,
                placement.update_resource_provider,
                |r| {
                    Pools::fix(&mut r.uuid, &p.providers);
                    Pools::generation(&mut r.generation, &r.uuid, &p.provider_generations);
                }
            ),
            Rpc::DeleteResourceProvider => go!(
                pb::DeleteResourceProviderRequest,
                placement.delete_resource_provider,
                |r| Pools::fix(&mut r.uuid, &p.providers)
            ),
            Rpc::ReplaceInventories => go!(
                pb::ReplaceInventoriesRequest,
                placement.replace_inventories,
                |r| {
                    Pools::fix(&mut r.uuid, &p.providers);
                    Pools::generation(&mut r.generation, &r.uuid, &p.provider_generations);
                }
            ),
            Rpc::ReplaceTraits => go!(pb::ReplaceTraitsRequest, placement.replace_traits, |r| {
                Pools::fix(&mut r.uuid, &p.providers);
                Pools::generation(&mut r.generation, &r.uuid, &p.provider_generations);
            }),
            Rpc::ReplaceAggregates => go!(
                pb::ReplaceAggregatesRequest,
                placement.replace_aggregates,
                |r| {
                    Pools::fix(&mut r.uuid, &p.providers);
                    Pools::generation(&mut r.generation, &r.uuid, &p.provider_generations);
                    Pools::fix_all(&mut r.aggregates, &p.aggregates);
                }
            ),
            Rpc::SetAggregateMetadata => go!(
                pb::SetAggregateMetadataRequest,
                placement.set_aggregate_metadata,
                |r| Pools::fix(&mut r.aggregate, &p.aggregates)
            ),
            Rpc::CreateResourceClass => go!(
                pb::CreateResourceClassRequest,
                placement.create_resource_class
            ),
            Rpc::ReplaceAllocations => go!(
                pb::ReplaceAllocationsRequest,
                placement.replace_allocations,
                |r| {
                    Pools::fix(&mut r.consumer_uuid, &p.consumers);
                    if let Some(g) = &mut r.consumer_generation {
                        Pools::generation(g, &r.consumer_uuid, &p.consumer_generations);
                    }
                    for a in &mut r.allocations {
                        Pools::fix(&mut a.provider_uuid, &p.providers);
                    }
                }
            ),
            Rpc::DeleteAllocations => go!(
                pb::DeleteAllocationsRequest,
                placement.delete_allocations,
                |r| Pools::fix(&mut r.consumer_uuid, &p.consumers)
            ),
            Rpc::GetAllocationCandidates => go!(
                pb::GetAllocationCandidatesRequest,
                placement.get_allocation_candidates,
                |r| {
                    Pools::fix_all(&mut r.forbidden_aggregates, &p.aggregates);
                    for m in &mut r.member_of {
                        Pools::fix_all(&mut m.aggregates, &p.aggregates);
                    }
                }
            ),
            Rpc::ListResourceProviders => go!(
                pb::ListResourceProvidersRequest,
                placement.list_resource_providers,
                |r| Pools::fix_all(&mut r.member_of, &p.aggregates)
            ),
            Rpc::SelectDestinations => {
                let mut r = pb::SelectDestinationsRequest::decode(body).ok()?;
                if let Some(s) = &mut r.spec {
                    p.spec(s);
                }
                let group = r.spec.as_ref().map(|s| s.group.clone()).unwrap_or_default();
                self.rt
                    .block_on(self.scheduler.select_destinations(Request::new(r)))
                    .map(|resp| Done::Selected {
                        selections: resp.into_inner().selections,
                        group,
                    })
            }
            Rpc::Release => go!(pb::ReleaseRequest, scheduler.release, |r| {
                Pools::fix(&mut r.consumer_uuid, &p.consumers)
            }),
            Rpc::MoveClaim => {
                let mut r = pb::MoveClaimRequest::decode(body).ok()?;
                Pools::fix(&mut r.consumer_uuid, &p.consumers);
                if let Some(s) = &mut r.spec {
                    p.spec(s);
                }
                let group = r.spec.as_ref().map(|s| s.group.clone()).unwrap_or_default();
                self.rt
                    .block_on(self.scheduler.move_claim(Request::new(r)))
                    .map(|resp| Done::Selected {
                        selections: resp.into_inner().selection.into_iter().collect(),
                        group,
                    })
            }
            Rpc::ConfirmMove => go!(pb::ConfirmMoveRequest, scheduler.confirm_move, |r| {
                Pools::fix(&mut r.consumer_uuid, &p.consumers)
            }),
            Rpc::RevertMove => go!(pb::RevertMoveRequest, scheduler.revert_move, |r| {
                Pools::fix(&mut r.consumer_uuid, &p.consumers)
            }),
            Rpc::Explain => go!(pb::ExplainRequest, scheduler.explain, |r| {
                if let Some(s) = &mut r.spec {
                    p.spec(s);
                }
            }),
            Rpc::CreateFlavor => go!(pb::CreateFlavorRequest, catalog.create_flavor),
            Rpc::DeleteFlavor => go!(pb::DeleteFlavorRequest, catalog.delete_flavor),
            Rpc::CreateImage => go!(pb::CreateImageRequest, catalog.create_image),
            Rpc::DeleteImage => go!(pb::DeleteImageRequest, catalog.delete_image),
            Rpc::CreateServerGroup => {
                go!(pb::CreateServerGroupRequest, catalog.create_server_group)
            }
            Rpc::DeleteServerGroup => go!(
                pb::DeleteServerGroupRequest,
                catalog.delete_server_group,
                |r| Pools::fix(&mut r.id, &p.groups)
            ),
            Rpc::CreateServer => {
                let mut r = pb::CreateServerRequest::decode(body).ok()?;
                Pools::fix(&mut r.group, &p.groups);
                Pools::fix_all(&mut r.force_hosts, &p.providers);
                self.rt
                    .block_on(self.servers.create_server(Request::new(r)))
                    .map(|resp| Done::Created(resp.into_inner().servers))
            }
            Rpc::DeleteServer => go!(pb::DeleteServerRequest, servers.delete_server, |r| {
                Pools::fix(&mut r.uuid, &p.servers)
            }),
            Rpc::ServerAction => go!(pb::ServerActionRequest, servers.server_action, |r| {
                Pools::fix(&mut r.uuid, &p.servers);
                use pb::server_action_request::Action as A;
                if let Some(A::Migrate(m) | A::LiveMigrate(m) | A::Evacuate(m)) = &mut r.action {
                    Pools::fix(&mut m.host, &p.providers);
                }
            }),
            Rpc::SetHostEnabled => go!(pb::SetHostEnabledRequest, servers.set_host_enabled, |r| {
                Pools::fix(&mut r.host, &p.providers)
            }),
            Rpc::EvacuateHost => go!(pb::EvacuateHostRequest, servers.evacuate_host, |r| {
                Pools::fix(&mut r.host, &p.providers)
            }),
            Rpc::ListServers => go!(pb::ListServersRequest, servers.list_servers, |r| {
                Pools::fix(&mut r.host, &p.providers)
            }),
        })
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Inputs as one file: each a 4-byte little-endian length, then its bytes.
pub fn encode_history(inputs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for i in inputs {
        v.extend((i.len() as u32).to_le_bytes());
        v.extend(i);
    }
    v
}

/// The inputs of a file written by [`encode_history`]; a truncated tail is dropped.
pub fn decode_history(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let n = u32::from_le_bytes(*len) as usize;
        let Some(input) = rest.get(..n) else { break };
        out.push(input.to_vec());
        bytes = &rest[n..];
    }
    out
}

/// The calls that build the seeded cloud, as fuzz inputs (they double as seed corpus).
pub fn seed_calls() -> Vec<Vec<u8>> {
    let mut h1 = pb::CreateResourceProviderRequest {
        uuid: H1.to_string(),
        name: "h1".into(),
        availability_zone: "az1".into(),
        traits: vec!["HW_CPU_X86_AVX2".into(), "CUSTOM_SSD".into()],
        aggregates: vec![AGG1.to_string()],
        inventories: host_invs(16, 32768, 500),
        arch: "x86_64".into(),
        hypervisor_type: "qemu".into(),
        hypervisor_version: "8.2.0".into(),
        ..Default::default()
    };
    h1.inventories[0].allocation_ratio = 4.0;
    h1.inventories[1].reserved = 512;
    let mut h2 = pb::CreateResourceProviderRequest {
        uuid: H2.to_string(),
        name: "h2".into(),
        availability_zone: "az2".into(),
        aggregates: vec![AGG2.to_string()],
        inventories: host_invs(8, 16384, 200),
        ..Default::default()
    };
    h2.inventories.push(pb::Inventory {
        resource_class: "CUSTOM_GPU".into(),
        total: 4,
        max_unit: 2,
        ..Default::default()
    });
    let mut h3 = pb::CreateResourceProviderRequest {
        uuid: H3.to_string(),
        name: "h3".into(),
        inventories: host_invs(2, 2048, 20),
        ..Default::default()
    };
    h3.inventories[0].allocation_ratio = 1.5;
    let plain_host = |uuid: Uuid, name: &str| pb::CreateResourceProviderRequest {
        uuid: uuid.to_string(),
        name: name.into(),
        inventories: host_invs(8, 8192, 100),
        ..Default::default()
    };
    let flavor =
        |id: &str, name: &str, vcpus: u32, ram_mb: u64, disk_gb: u64| pb::CreateFlavorRequest {
            id: id.into(),
            name: name.into(),
            vcpus,
            ram_mb,
            disk_gb,
            ..Default::default()
        };
    let group =
        |name: &str, policy: pb::ServerGroupPolicy, max: u32| pb::CreateServerGroupRequest {
            name: name.into(),
            policy: policy as i32,
            max_server_per_host: max,
            project_id: "p1".into(),
            ..Default::default()
        };
    let server = |name: &str, force: &str| pb::CreateServerRequest {
        name: name.into(),
        flavor: "tiny".into(),
        image: "cirros".into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        force_hosts: vec![force.into()],
        request_id: format!("seed-{name}"),
        ..Default::default()
    };
    use Rpc as R;
    let mut v = vec![
        R::CreateResourceClass.input(&pb::CreateResourceClassRequest {
            name: "CUSTOM_GPU".into(),
        }),
        R::CreateResourceProvider.input(&h1),
        R::CreateResourceProvider.input(&h2),
        R::CreateResourceProvider.input(&h3),
        R::CreateResourceProvider.input(&plain_host(FLAKY, "flaky")),
        R::CreateResourceProvider.input(&plain_host(OFFLINE, "offline")),
        R::CreateResourceProvider.input(&plain_host(NO_LIVE, "no-live")),
        R::CreateResourceProvider.input(&plain_host(DOWN, "down")),
        R::SetAggregateMetadata.input(&pb::SetAggregateMetadataRequest {
            aggregate: AGG1.to_string(),
            metadata: [("ssd".to_string(), "true".to_string())].into(),
        }),
        R::CreateFlavor.input(&flavor("tiny", "m1.tiny", 1, 512, 1)),
        R::CreateFlavor.input(&flavor("small", "m1.small", 2, 2048, 10)),
        R::CreateFlavor.input(&flavor("big", "m1.big", 8, 16384, 100)),
        R::CreateFlavor.input(&pb::CreateFlavorRequest {
            extra_specs: [
                ("resources:CUSTOM_GPU".to_string(), "1".to_string()),
                ("aggregate_instance_extra_specs:ssd".into(), "true".into()),
            ]
            .into(),
            ..flavor("gpu", "g1.gpu", 1, 1024, 0)
        }),
        R::CreateImage.input(&pb::CreateImageRequest {
            id: CIRROS.to_string(),
            name: "cirros".into(),
            ..Default::default()
        }),
        R::CreateImage.input(&pb::CreateImageRequest {
            name: "arm".into(),
            properties: [("hw_architecture".to_string(), "aarch64".to_string())].into(),
            ..Default::default()
        }),
        R::CreateServerGroup.input(&group("aff", pb::ServerGroupPolicy::Affinity, 0)),
        R::CreateServerGroup.input(&group("anti", pb::ServerGroupPolicy::AntiAffinity, 2)),
        R::CreateServerGroup.input(&group("soft", pb::ServerGroupPolicy::SoftAntiAffinity, 0)),
        R::ReplaceAllocations.input(&pb::ReplaceAllocationsRequest {
            consumer_uuid: C1.to_string(),
            consumer_generation: None,
            project_id: "p1".into(),
            user_id: "u1".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: H1.to_string(),
                resources: vec![amount("VCPU", 2), amount("MEMORY_MB", 1024)],
            }],
        }),
        R::SelectDestinations.input(&pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                instance_uuids: vec![C2.to_string()],
                group: "anti".into(),
                flavor: Some("small".into()),
                ..spec(&[], "p1")
            }),
        }),
        R::SelectDestinations.input(&pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                instance_uuids: vec![C3.to_string()],
                ..spec(&[("VCPU", 1), ("MEMORY_MB", 256)], "p2")
            }),
        }),
        R::MoveClaim.input(&pb::MoveClaimRequest {
            consumer_uuid: C3.to_string(),
            spec: Some(spec(&[("VCPU", 2), ("MEMORY_MB", 512)], "p2")),
            allow_same_host: true,
        }),
        R::CreateServer.input(&server("web", "h1")),
        R::CreateServer.input(&server("db", "no-live")),
        R::CreateServer.input(&server("stranded", "down")),
    ];
    v.push(R::ServerAction.input(&pb::ServerActionRequest {
        uuid: "@0".into(),
        request_id: "seed-stop".into(),
        action: Some(pb::server_action_request::Action::Stop(pb::NoArgs {})),
    }));
    v
}

/// A corpus entry: a name, the input, and whether it succeeds when the entries run in
/// order against a fresh [`World`] (the seed test checks exactly that).
pub type Entry = (String, Vec<u8>, bool);

/// The seed corpus: the seed calls (which fail when replayed: everything exists), then one
/// or more requests per RPC, in an order where each does what its name says.
pub fn corpus() -> Vec<Entry> {
    use Rpc as R;
    use pb::server_action_request::Action as A;
    let mut out: Vec<Entry> = seed_calls()
        .into_iter()
        .enumerate()
        // Replayed, only the aggregate metadata (a replace) and the server calls
        // (idempotent by request id) succeed again.
        .map(|(i, v)| {
            let ok = [R::SetAggregateMetadata, R::CreateServer, R::ServerAction]
                .iter()
                .any(|r| v[0] == r.selector());
            (format!("seed-{i:02}"), v, ok)
        })
        .collect();
    let mut add = |name: &str, ok: bool, v: Vec<u8>| out.push((name.to_string(), v, ok));
    // h3 starts at generation 0; each successful write below bumps it by one.
    add(
        "update-provider",
        true,
        R::UpdateResourceProvider.input(&pb::UpdateResourceProviderRequest {
            uuid: H3.to_string(),
            generation: 0,
            name: None,
            availability_zone: Some("az3".into()),
            capabilities: Some(pb::Capabilities {
                entries: [("cpu_info:vendor".to_string(), "Intel".to_string())].into(),
            }),
        }),
    );
    add(
        "replace-inventories",
        true,
        R::ReplaceInventories.input(&pb::ReplaceInventoriesRequest {
            uuid: H3.to_string(),
            generation: 1,
            inventories: host_invs(4, 4096, 40),
        }),
    );
    add(
        "replace-traits",
        true,
        R::ReplaceTraits.input(&pb::ReplaceTraitsRequest {
            uuid: H3.to_string(),
            generation: 2,
            traits: vec!["CUSTOM_NEW".into(), "HW_CPU_X86_AVX2".into()],
        }),
    );
    add(
        "replace-aggregates",
        true,
        R::ReplaceAggregates.input(&pb::ReplaceAggregatesRequest {
            uuid: "@4".into(),
            generation: CURRENT,
            aggregates: vec!["@0".into(), "@1".into()],
        }),
    );
    add(
        "stale-generation",
        false,
        R::ReplaceTraits.input(&pb::ReplaceTraitsRequest {
            uuid: H3.to_string(),
            generation: 0,
            traits: vec![],
        }),
    );
    add(
        "delete-provider",
        true,
        R::DeleteResourceProvider.input(&pb::DeleteResourceProviderRequest {
            uuid: OFFLINE.to_string(),
        }),
    );
    add(
        "delete-allocations",
        true,
        R::DeleteAllocations.input(&pb::DeleteAllocationsRequest {
            consumer_uuid: C1.to_string(),
        }),
    );
    add(
        "replace-allocations",
        true,
        R::ReplaceAllocations.input(&pb::ReplaceAllocationsRequest {
            consumer_uuid: C1.to_string(),
            consumer_generation: None,
            project_id: "p3".into(),
            user_id: "u3".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: H2.to_string(),
                resources: vec![amount("CUSTOM_GPU", 2), amount("DISK_GB", 5)],
            }],
        }),
    );
    add(
        "resize-allocations",
        true,
        R::ReplaceAllocations.input(&pb::ReplaceAllocationsRequest {
            consumer_uuid: C1.to_string(),
            consumer_generation: Some(CURRENT),
            project_id: "p3".into(),
            user_id: "u3".into(),
            allocations: vec![pb::Allocation {
                provider_uuid: H2.to_string(),
                resources: vec![amount("CUSTOM_GPU", 1)],
            }],
        }),
    );
    add(
        "allocation-candidates",
        true,
        R::GetAllocationCandidates.input(&pb::GetAllocationCandidatesRequest {
            resources: vec![amount("VCPU", 2), amount("CUSTOM_GPU", 1)],
            member_of: vec![pb::AggregateSet {
                aggregates: vec!["@0".into(), "@1".into()],
            }],
            limit: 3,
            ..Default::default()
        }),
    );
    add(
        "list-providers",
        true,
        R::ListResourceProviders.input(&pb::ListResourceProvidersRequest {
            required_traits: vec!["CUSTOM_SSD".into()],
            resources: vec![amount("VCPU", 1)],
            page_size: 2,
            ..Default::default()
        }),
    );
    add(
        "select-many",
        true,
        R::SelectDestinations.input(&pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                num_instances: 2,
                group: "anti".into(),
                flavor: Some("tiny".into()),
                ..spec(&[("DISK_GB", 0)], "p1")
            }),
        }),
    );
    add(
        "select-no-host",
        false,
        R::SelectDestinations.input(&pb::SelectDestinationsRequest {
            spec: Some(pb::RequestSpec {
                num_instances: 3,
                flavor: Some("big".into()),
                ..spec(&[], "p1")
            }),
        }),
    );
    add(
        "release",
        true,
        R::Release.input(&pb::ReleaseRequest {
            consumer_uuid: C2.to_string(),
        }),
    );
    add(
        "confirm-move",
        true,
        R::ConfirmMove.input(&pb::ConfirmMoveRequest {
            consumer_uuid: C3.to_string(),
        }),
    );
    add(
        "move-claim",
        true,
        R::MoveClaim.input(&pb::MoveClaimRequest {
            consumer_uuid: C3.to_string(),
            spec: Some(spec(&[("VCPU", 1), ("MEMORY_MB", 1024)], "p2")),
            allow_same_host: false,
        }),
    );
    add(
        "revert-move",
        true,
        R::RevertMove.input(&pb::RevertMoveRequest {
            consumer_uuid: C3.to_string(),
        }),
    );
    add(
        "explain",
        true,
        R::Explain.input(&pb::ExplainRequest {
            spec: Some(pb::RequestSpec {
                image: "arm".into(),
                availability_zone: "az1".into(),
                ..spec(&[("VCPU", 1)], "p3")
            }),
        }),
    );
    add(
        "create-flavor",
        true,
        R::CreateFlavor.input(&pb::CreateFlavorRequest {
            name: "m1.cap".into(),
            vcpus: 1,
            ram_mb: 256,
            extra_specs: [
                (
                    "capabilities:cpu_info:vendor".to_string(),
                    "<in> Intel".to_string(),
                ),
                ("trait:CUSTOM_NEW".into(), "required".into()),
            ]
            .into(),
            ..Default::default()
        }),
    );
    add(
        "create-image",
        true,
        R::CreateImage.input(&pb::CreateImageRequest {
            name: "qemu-only".into(),
            properties: [
                ("img_hv_type".to_string(), "qemu".to_string()),
                ("img_hv_requested_version".into(), ">=8.0".into()),
            ]
            .into(),
            ..Default::default()
        }),
    );
    add(
        "create-group",
        true,
        R::CreateServerGroup.input(&pb::CreateServerGroupRequest {
            name: "spread".into(),
            policy: pb::ServerGroupPolicy::SoftAffinity as i32,
            project_id: "p2".into(),
            ..Default::default()
        }),
    );
    add(
        "delete-flavor",
        true,
        R::DeleteFlavor.input(&pb::DeleteFlavorRequest {
            id: "m1.big".into(),
        }),
    );
    add(
        "delete-image",
        true,
        R::DeleteImage.input(&pb::DeleteImageRequest { id: "arm".into() }),
    );
    add(
        "delete-group",
        true,
        R::DeleteServerGroup.input(&pb::DeleteServerGroupRequest { id: "soft".into() }),
    );
    add(
        "create-servers",
        true,
        R::CreateServer.input(&pb::CreateServerRequest {
            name: "batch".into(),
            flavor: "small".into(),
            image: "cirros".into(),
            group: "anti".into(),
            count: 3,
            metadata: [("role".to_string(), "web".to_string())].into(),
            project_id: "p1".into(),
            user_id: "u1".into(),
            request_id: "r1".into(),
            ..Default::default()
        }),
    );
    let action = |uuid: &str, a: A| pb::ServerActionRequest {
        uuid: uuid.into(),
        request_id: String::new(),
        action: Some(a),
    };
    let none = || pb::NoArgs {};
    let anywhere = || pb::MoveArgs {
        host: String::new(),
    };
    // Servers in creation order: @0 web (h1, stopped by the seed), @1 db (no-live),
    // @2 stranded (down), then the batch.
    for (name, ok, uuid, a) in [
        ("action-start", true, "@0", A::Start(none())),
        ("action-pause", true, "@0", A::Pause(none())),
        ("action-unpause", true, "@0", A::Unpause(none())),
        ("action-suspend", true, "@0", A::Suspend(none())),
        ("action-resume", true, "@0", A::Resume(none())),
        (
            "action-reboot",
            true,
            "@0",
            A::Reboot(pb::RebootArgs { hard: false }),
        ),
        (
            "action-snapshot",
            true,
            "@0",
            A::Snapshot(pb::SnapshotArgs {
                image_name: "snap".into(),
            }),
        ),
        (
            "action-resize",
            true,
            "@0",
            A::Resize(pb::ResizeArgs {
                flavor: "small".into(),
            }),
        ),
        ("action-confirm", true, "@0", A::ConfirmResize(none())),
        ("action-migrate", true, "@0", A::Migrate(anywhere())),
        ("action-revert", true, "@0", A::RevertResize(none())),
        (
            "action-rebuild",
            true,
            "@0",
            A::Rebuild(pb::RebuildArgs {
                image: "qemu-only".into(),
            }),
        ),
        (
            "action-live-migrate",
            false,
            "@1",
            A::LiveMigrate(anywhere()),
        ),
        ("action-stop", true, "@1", A::Stop(none())),
        ("action-shelve", true, "@1", A::Shelve(none())),
        ("action-offload", true, "@1", A::ShelveOffload(none())),
        ("action-unshelve", true, "@1", A::Unshelve(none())),
        ("action-evacuate", true, "@2", A::Evacuate(anywhere())),
        (
            "action-lock",
            true,
            "@0",
            A::Lock(pb::LockArgs {
                reason: "ops".into(),
            }),
        ),
        ("action-locked", false, "@0", A::Stop(none())),
        ("action-unlock", true, "@0", A::Unlock(none())),
    ] {
        add(name, ok, R::ServerAction.input(&action(uuid, a)));
    }
    add(
        "disable-host",
        true,
        R::SetHostEnabled.input(&pb::SetHostEnabledRequest {
            host: "h1".into(),
            enabled: false,
            reason: "maintenance".into(),
        }),
    );
    add(
        "evacuate-host",
        true,
        R::EvacuateHost.input(&pb::EvacuateHostRequest {
            host: "down".into(),
            request_id: "e1".into(),
        }),
    );
    add(
        "list-servers",
        true,
        R::ListServers.input(&pb::ListServersRequest {
            host: "h1".into(),
            vm_state: pb::VmState::Active as i32,
            page_size: 1,
            ..Default::default()
        }),
    );
    add(
        "delete-server",
        true,
        R::DeleteServer.input(&pb::DeleteServerRequest {
            uuid: "@1".into(),
            request_id: "d1".into(),
        }),
    );
    add(
        "create-class",
        true,
        R::CreateResourceClass.input(&pb::CreateResourceClassRequest {
            name: "CUSTOM_FPGA".into(),
        }),
    );
    out
}

// ---- The audit -------------------------------------------------------------------------

/// Returns the violation, naming the call.
macro_rules! violated {
    ($rpc:expr, $($arg:tt)*) => {
        return Err(format!("invariant violated after {:?}: {}", $rpc, format!($($arg)*)))
    };
}

/// A broken invariant, described.
type Audit = Result<(), String>;

fn audit(before: &Snapshot, after: &Snapshot, rpc: Rpc, out: &Outcome) -> Audit {
    audit_usages(before, after, rpc)?;
    audit_generations(before, after, rpc)?;
    audit_groups(after, rpc)?;
    for s in &after.servers {
        if s.task_state != pb::TaskState::None {
            violated!(
                rpc,
                "server {} left with task_state {:?} after the call returned",
                s.uuid,
                s.task_state
            );
        }
        if let Some(h) = &s.host
            && !after.providers.contains_key(&h.uuid)
        {
            violated!(
                rpc,
                "server {} is on {}, which does not exist",
                s.uuid,
                h.uuid
            );
        }
    }
    match out {
        Ok(Done::Plain) => {}
        Ok(Done::Selected { selections, group }) => {
            audit_selections(after, rpc, selections, group)?
        }
        Ok(Done::Created(servers)) => {
            for s in servers {
                // A repeated request id answers the first call again, however stale: only
                // servers this call made are checked.
                let new = Uuid::parse_str(&s.uuid).is_ok_and(|u| {
                    before.servers.iter().all(|b| b.uuid != u)
                        && after.servers.iter().any(|a| a.uuid == u)
                });
                if !new || s.vm_state != pb::VmState::Active as i32 {
                    continue;
                }
                let placed = Uuid::parse_str(&s.uuid)
                    .ok()
                    .and_then(|u| after.consumers.get(&u))
                    .is_some_and(|c| {
                        c.allocations
                            .iter()
                            .any(|a| a.provider.to_string() == s.host_uuid)
                    });
                if !placed {
                    violated!(
                        rpc,
                        "ACTIVE server {} holds no allocation on its host {}",
                        s.uuid,
                        s.host_uuid
                    );
                }
            }
        }
        Err(status) => audit_error(before, after, rpc, status)?,
    }
    Ok(())
}

fn audit_usages(before: &Snapshot, after: &Snapshot, rpc: Rpc) -> Audit {
    // provider → class → sum of allocations; provider → consumers holding some.
    let mut used: BTreeMap<Uuid, BTreeMap<&str, u64>> = BTreeMap::new();
    // `instances` counts allocation rows: a consumer moving within one host holds two
    // there until the move ends (the engine's own tests pin this down).
    let mut rows: BTreeMap<Uuid, usize> = BTreeMap::new();
    let mut projects: BTreeMap<&str, (BTreeMap<&str, u64>, u64)> = BTreeMap::new();
    for c in after.consumers.values() {
        let project = projects.entry(c.project_id.as_str()).or_default();
        project.1 += 1;
        for a in c.allocations.iter().chain(&c.moving) {
            *rows.entry(a.provider).or_default() += 1;
            for (class, n) in &a.resources {
                *used
                    .entry(a.provider)
                    .or_default()
                    .entry(class.as_str())
                    .or_default() += n;
                *project.0.entry(class.as_str()).or_default() += n;
            }
        }
    }
    for (provider, classes) in &used {
        let Some(p) = after.providers.get(provider) else {
            violated!(
                rpc,
                "consumers hold allocations on {provider}, which does not exist"
            );
        };
        for class in classes.keys() {
            if !p.usages.iter().any(|u| u.class == *class) {
                violated!(
                    rpc,
                    "consumers hold {class} on {} ({provider}), which has no inventory of it",
                    p.name
                );
            }
        }
    }
    for p in after.providers.values() {
        for u in &p.usages {
            let expected = used
                .get(&p.uuid)
                .and_then(|m| m.get(u.class.as_str()))
                .copied()
                .unwrap_or(0);
            if u.used != expected {
                violated!(
                    rpc,
                    "{} reports {} {} used; its consumers hold {expected}",
                    p.name,
                    u.used,
                    u.class
                );
            }
            let inv = &u.inventory;
            if let Err(e) = inv.validate("stored inventory") {
                violated!(
                    rpc,
                    "{} stores an invalid {} inventory: {e}",
                    p.name,
                    u.class
                );
            }
            let capacity =
                (inv.total.saturating_sub(inv.reserved) as f64 * inv.allocation_ratio).floor();
            if u.capacity as f64 != capacity {
                violated!(
                    rpc,
                    "{} reports {} capacity {}; the inventory gives {capacity}",
                    p.name,
                    u.class,
                    u.capacity
                );
            }
            if u.used > u.capacity {
                let was = before
                    .providers
                    .get(&p.uuid)
                    .and_then(|b| b.usages.iter().find(|b| b.class == u.class))
                    .map_or(0, |b| b.used);
                if u.used > was {
                    violated!(
                        rpc,
                        "{} went from {was} to {} {} used, over its capacity {}",
                        p.name,
                        u.used,
                        u.class,
                        u.capacity
                    );
                }
            }
        }
        let n = rows.get(&p.uuid).copied().unwrap_or(0);
        if p.instances as usize != n {
            violated!(
                rpc,
                "{} reports {} instances; {n} allocations are there",
                p.name,
                p.instances
            );
        }
    }
    for (name, report) in &after.projects {
        let (amounts, consumers) = projects.remove(name.as_str()).unwrap_or_default();
        let reported: BTreeMap<&str, u64> = report
            .usages
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect();
        let amounts: BTreeMap<&str, u64> = amounts.into_iter().filter(|(_, n)| *n > 0).collect();
        if reported != amounts || report.consumers != consumers {
            violated!(
                rpc,
                "project {name} reports {reported:?} over {} consumers; its consumers hold {amounts:?} over {consumers}",
                report.consumers
            );
        }
    }
    Ok(())
}

/// A provider without the fields that are not writes (generation itself, liveness, the
/// scheduler's I/O and build-failure counters).
fn provider_data(p: &ProviderInfo) -> ProviderInfo {
    ProviderInfo {
        generation: 0,
        up: true,
        io_ops: 0,
        failed_builds: 0,
        ..p.clone()
    }
}

fn audit_generations(before: &Snapshot, after: &Snapshot, rpc: Rpc) -> Audit {
    for (id, b) in &before.providers {
        let Some(a) = after.providers.get(id) else {
            continue;
        };
        if a.generation < b.generation {
            violated!(
                rpc,
                "{}'s generation went back from {} to {}",
                a.name,
                b.generation,
                a.generation
            );
        }
        if a.generation == b.generation && provider_data(a) != provider_data(b) {
            violated!(
                rpc,
                "{} changed without a new generation ({}):\nbefore: {b:?}\nafter: {a:?}",
                a.name,
                a.generation
            );
        }
    }
    for (id, b) in &before.consumers {
        let Some(a) = after.consumers.get(id) else {
            continue;
        };
        if a.generation < b.generation {
            violated!(
                rpc,
                "consumer {id}'s generation went back from {} to {}",
                b.generation,
                a.generation
            );
        }
        let data = |c: &ConsumerAllocations| {
            (
                c.allocations.clone(),
                c.moving.clone(),
                c.project_id.clone(),
                c.user_id.clone(),
            )
        };
        if a.generation == b.generation && data(a) != data(b) {
            violated!(
                rpc,
                "consumer {id} changed without a new generation ({}):\nbefore: {b:?}\nafter: {a:?}",
                a.generation
            );
        }
    }
    Ok(())
}

fn audit_groups(after: &Snapshot, rpc: Rpc) -> Audit {
    for g in &after.groups {
        if g.policy == GroupPolicy::AntiAffinity && g.max_server_per_host == 0 {
            violated!(rpc, "anti-affinity group {} allows 0 per host", g.name);
        }
        let mut hosts: BTreeMap<String, u32> = BTreeMap::new();
        for m in &g.members {
            let Some(c) = after.consumers.get(m) else {
                violated!(
                    rpc,
                    "group {} lists member {m}, which holds nothing",
                    g.name
                );
            };
            if c.group != Some(g.id) {
                violated!(
                    rpc,
                    "group {} lists {m}, whose group is {:?}",
                    g.name,
                    c.group
                );
            }
            let on: BTreeSet<Uuid> = c
                .allocations
                .iter()
                .chain(&c.moving)
                .map(|a| a.provider)
                .collect();
            for p in on {
                let name = after
                    .providers
                    .get(&p)
                    .map_or_else(|| p.to_string(), |p| p.name.clone());
                *hosts.entry(name).or_default() += 1;
            }
        }
        let reported: BTreeMap<String, u32> = g.hosts.iter().cloned().collect();
        if reported != hosts {
            violated!(
                rpc,
                "group {} counts {reported:?} per host; its members hold {hosts:?}",
                g.name
            );
        }
    }
    for (id, c) in &after.consumers {
        if let Some(gid) = c.group
            && !after
                .groups
                .iter()
                .any(|g| g.id == gid && g.members.contains(id))
        {
            violated!(
                rpc,
                "consumer {id} names group {gid}, which does not list it"
            );
        }
    }
    Ok(())
}

fn audit_selections(
    after: &Snapshot,
    rpc: Rpc,
    selections: &[pb::Selection],
    group: &str,
) -> Audit {
    let mut seen = BTreeSet::new();
    for s in selections {
        if !seen.insert(&s.consumer_uuid) {
            violated!(
                rpc,
                "consumer {} selected twice in one answer",
                s.consumer_uuid
            );
        }
        let Some(c) = Uuid::parse_str(&s.consumer_uuid)
            .ok()
            .and_then(|u| after.consumers.get(&u))
        else {
            violated!(rpc, "selected consumer {} holds nothing", s.consumer_uuid);
        };
        // SelectDestinations claims `allocations`, MoveClaim claims `moving`.
        let held = if rpc == Rpc::MoveClaim {
            &c.moving
        } else {
            &c.allocations
        };
        let claimed: Vec<(String, Vec<(String, u64)>)> = s
            .allocations
            .iter()
            .map(|a| {
                let mut r: Vec<(String, u64)> = a
                    .resources
                    .iter()
                    .map(|r| (r.resource_class.clone(), r.amount))
                    .collect();
                r.sort();
                (a.provider_uuid.clone(), r)
            })
            .collect();
        let stored: Vec<(String, Vec<(String, u64)>)> = held
            .iter()
            .map(|a| {
                let mut r = a.resources.clone();
                r.sort();
                (a.provider.to_string(), r)
            })
            .collect();
        if claimed != stored {
            violated!(
                rpc,
                "selection of {} says {claimed:?}; the engine holds {stored:?}",
                s.consumer_uuid
            );
        }
        if s.allocations.iter().any(|a| a.provider_uuid != s.host_uuid) {
            violated!(
                rpc,
                "selection of {} claims off its host {}",
                s.consumer_uuid,
                s.host_uuid
            );
        }
        if let Some(g) = after
            .groups
            .iter()
            .find(|g| !group.is_empty() && (g.name == group || g.id.to_string() == group))
            && g.policy == GroupPolicy::AntiAffinity
        {
            let n = g
                .hosts
                .iter()
                .find(|(h, _)| *h == s.host_name)
                .map_or(0, |(_, n)| *n);
            if n > g.max_server_per_host {
                violated!(
                    rpc,
                    "anti-affinity group {} has {n} members on {} (max {})",
                    g.name,
                    s.host_name,
                    g.max_server_per_host
                );
            }
        }
    }
    Ok(())
}

/// A snapshot without what a rejected call may change (see `audit_error`).
fn without_generations(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    for p in s.providers.values_mut() {
        p.generation = 0;
    }
    for c in s.consumers.values_mut() {
        c.generation = 0;
    }
    for v in &mut s.servers {
        v.actions.clear();
        v.updated_at_ms = 0;
    }
    s
}

fn audit_error(before: &Snapshot, after: &Snapshot, rpc: Rpc, status: &Status) -> Audit {
    match status.code() {
        Code::InvalidArgument => {
            if !status.message().starts_with("invalid ") {
                violated!(
                    rpc,
                    "INVALID_ARGUMENT without a field: {:?}",
                    status.message()
                );
            }
        }
        Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unavailable => {}
        other => violated!(rpc, "answered {other:?}: {:?}", status.message()),
    }
    // A multi-instance claim rolls back instance by instance, and each claim and release
    // is a write that bumps the provider's generation (and a move tried and undone, the
    // consumer's: live migration claims, finds the host cannot, reverts); a server action that passed its
    // state checks and then failed (no valid host, say) is in the server's history. Nothing
    // else may change.
    let (b, a) = (without_generations(before), without_generations(after));
    if b != a {
        violated!(
            rpc,
            "a rejected call ({:?}: {}) changed the state:\n{}",
            status.code(),
            status.message(),
            diff(&b, &a)
        );
    }
    Ok(())
}

/// The parts of two snapshots that differ, for violation messages.
fn diff(b: &Snapshot, a: &Snapshot) -> String {
    fn maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        out: &mut String,
        what: &str,
        b: &BTreeMap<K, V>,
        a: &BTreeMap<K, V>,
    ) {
        for k in b.keys().chain(a.keys()).collect::<BTreeSet<_>>() {
            let (x, y) = (b.get(k), a.get(k));
            if x != y {
                out.push_str(&format!(
                    "{what} {k:?}:\n  before: {x:?}\n  after:  {y:?}\n"
                ));
            }
        }
    }
    let mut out = String::new();
    maps(&mut out, "provider", &b.providers, &a.providers);
    maps(&mut out, "consumer", &b.consumers, &a.consumers);
    maps(&mut out, "project", &b.projects, &a.projects);
    let servers = |s: &Snapshot| -> BTreeMap<Uuid, Server> {
        s.servers.iter().map(|v| (v.uuid, v.clone())).collect()
    };
    maps(&mut out, "server", &servers(b), &servers(a));
    for (what, x, y) in [
        (
            "classes",
            format!("{:?}", b.classes),
            format!("{:?}", a.classes),
        ),
        (
            "traits",
            format!("{:?}", b.traits),
            format!("{:?}", a.traits),
        ),
        (
            "flavors",
            format!("{:?}", b.flavors),
            format!("{:?}", a.flavors),
        ),
        (
            "images",
            format!("{:?}", b.images),
            format!("{:?}", a.images),
        ),
        (
            "groups",
            format!("{:?}", b.groups),
            format!("{:?}", a.groups),
        ),
    ] {
        if x != y {
            out.push_str(&format!("{what}:\n  before: {x}\n  after:  {y}\n"));
        }
    }
    out
}
