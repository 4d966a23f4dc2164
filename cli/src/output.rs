//! What commands print. Each result is a plain, `Serialize` view struct defined here (not
//! the generated proto types), so `-o json` has stable field names that scripts can rely
//! on; the same view renders as a table for people.
//!
//! JSON conventions: lists are top-level arrays; resource amounts keyed by class are JSON
//! objects (`{"VCPU": 2, "MEMORY_MB": 2048}`); absent optional values are `null`.

use std::collections::BTreeMap;

use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::OutputFormat;
use crate::table::{Table, key_values};

// ---- views -------------------------------------------------------------------------------

/// One resource class's inventory on a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoryView {
    /// Resource class.
    pub resource_class: String,
    /// Physical amount.
    pub total: u64,
    /// Held back for the host.
    pub reserved: u64,
    /// Smallest single allocation.
    pub min_unit: u64,
    /// Largest single allocation.
    pub max_unit: u64,
    /// Allocation granularity.
    pub step_size: u64,
    /// Overcommit factor.
    pub allocation_ratio: f64,
}

/// Use of one resource class on a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageView {
    /// Resource class.
    pub resource_class: String,
    /// Sum of allocations.
    pub used: u64,
    /// `floor((total - reserved) * allocation_ratio)`.
    pub capacity: u64,
    /// Inventory total.
    pub total: u64,
    /// Inventory reserved.
    pub reserved: u64,
    /// Inventory allocation ratio.
    pub allocation_ratio: f64,
}

/// A host (resource provider).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    /// Provider UUID.
    pub uuid: String,
    /// Unique name.
    pub name: String,
    /// Current generation.
    pub generation: u64,
    /// Availability zone; empty for the default zone.
    pub availability_zone: String,
    /// Alive (its compute node reports in).
    pub up: bool,
    /// Disabled for new placements.
    pub disabled: bool,
    /// Consumers holding allocations here.
    pub instances: u32,
    /// CPU architecture; empty if unknown.
    pub arch: String,
    /// Hypervisor type; empty if unknown.
    pub hypervisor_type: String,
    /// Hypervisor version; empty if unknown.
    pub hypervisor_version: String,
    /// Traits, sorted.
    pub traits: Vec<String>,
    /// Aggregate UUIDs, sorted.
    pub aggregates: Vec<String>,
    /// Host capabilities.
    pub capabilities: BTreeMap<String, String>,
    /// Inventory per class.
    pub inventories: Vec<InventoryView>,
    /// Usage per class.
    pub usages: Vec<UsageView>,
}

/// A host's inventory after `inventory set` or for `inventory show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoriesView {
    /// Provider UUID.
    pub host_uuid: String,
    /// Provider generation.
    pub generation: u64,
    /// Inventory per class, sorted by class.
    pub inventories: Vec<InventoryView>,
    /// Usage per class (present for `inventory show`; empty after `inventory set`).
    pub usages: Vec<UsageView>,
}

/// A host's traits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraitsView {
    /// Provider UUID.
    pub host_uuid: String,
    /// Provider generation.
    pub generation: u64,
    /// Traits, sorted.
    pub traits: Vec<String>,
}

/// A host's aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AggregatesView {
    /// Provider UUID.
    pub host_uuid: String,
    /// Provider generation.
    pub generation: u64,
    /// Aggregate UUIDs, sorted.
    pub aggregates: Vec<String>,
}

/// A flavor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlavorView {
    /// Flavor id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub ram_mb: u64,
    /// Root disk in GiB.
    pub disk_gb: u64,
    /// Extra specs.
    pub extra_specs: BTreeMap<String, String>,
}

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageView {
    /// Image id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Properties.
    pub properties: BTreeMap<String, String>,
}

/// A server group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Group UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `affinity`, `anti-affinity`, `soft-affinity`, `soft-anti-affinity` (or `unknown(N)`).
    pub policy: String,
    /// Most members per host (anti-affinity only; else 0).
    pub max_server_per_host: u32,
    /// Owning project.
    pub project_id: String,
    /// Member consumer UUIDs, sorted.
    pub members: Vec<String>,
    /// Host UUIDs the members are on, sorted.
    pub hosts: Vec<String>,
}

/// Resources held (or that would be held) on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocationView {
    /// Provider UUID.
    pub provider_uuid: String,
    /// Provider name when known (looked up for `allocation show`), else `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    /// Amount per class.
    pub resources: BTreeMap<String, u64>,
}

/// A host that also passed the filters for an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlternateView {
    /// Provider UUID.
    pub host_uuid: String,
    /// Host name.
    pub host_name: String,
}

/// Where one instance was placed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectionView {
    /// Consumer (instance) UUID.
    pub consumer_uuid: String,
    /// Chosen host UUID.
    pub host_uuid: String,
    /// Chosen host name.
    pub host_name: String,
    /// Total weight of the chosen host.
    pub weight: f64,
    /// Allocations claimed.
    pub allocations: Vec<AllocationView>,
    /// Alternates, best first.
    pub alternates: Vec<AlternateView>,
}

/// A consumer's allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerView {
    /// Consumer UUID.
    pub consumer_uuid: String,
    /// Consumer generation.
    pub consumer_generation: u64,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// One entry per host.
    pub allocations: Vec<AllocationView>,
}

/// Hosts one filter eliminated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionView {
    /// Filter name.
    pub filter: String,
    /// Hosts eliminated.
    pub hosts: u32,
}

/// One weigher's part in a host's weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContributionView {
    /// Weigher name.
    pub weigher: String,
    /// Raw score.
    pub raw: f64,
    /// Normalised to 0..=1 over the passing hosts.
    pub normalized: f64,
    /// `normalized * multiplier`, added to the total.
    pub weighted: f64,
}

/// A passing host with its weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedHostView {
    /// Provider UUID.
    pub host_uuid: String,
    /// Host name.
    pub host_name: String,
    /// Sum of weighted contributions.
    pub total_weight: f64,
    /// Per weigher, in the order they ran.
    pub contributions: Vec<ContributionView>,
}

/// A scheduling explanation (`schedule --dry-run`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainView {
    /// Hosts considered before filtering.
    pub hosts_considered: u32,
    /// Rejections per filter, in filter order.
    pub rejections: Vec<RejectionView>,
    /// Passing hosts, best first.
    pub ranked_hosts: Vec<RankedHostView>,
    /// Human-readable summary.
    pub summary: String,
}

/// One row of `usage` without `--project`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostUsageView {
    /// Provider UUID.
    pub uuid: String,
    /// Host name.
    pub name: String,
    /// Consumers on the host.
    pub instances: u32,
    /// Usage per class.
    pub usages: Vec<UsageView>,
}

/// `usage --project`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectUsageView {
    /// Project.
    pub project_id: String,
    /// User, if filtered by one.
    pub user_id: Option<String>,
    /// Consumers counted.
    pub instances: u32,
    /// Total allocated per class.
    pub usages: BTreeMap<String, u64>,
}

/// `quota show` and `quota set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaView {
    /// Project.
    pub project_id: String,
    /// `instances` first, then the resource classes with a limit or usage.
    pub limits: Vec<QuotaLimitView>,
}

/// One resource of a project's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaLimitView {
    /// `instances` or a resource class.
    pub resource: String,
    /// The limit; null: unlimited.
    pub limit: Option<u64>,
    /// Current usage.
    pub used: u64,
    /// `project`, `default` or `none`.
    pub source: String,
}

impl QuotaView {
    /// From the engine's answer.
    pub fn new(project_id: String, limits: Vec<pb::QuotaLimit>) -> Self {
        Self {
            project_id,
            limits: limits
                .into_iter()
                .map(|l| QuotaLimitView {
                    resource: l.resource,
                    limit: l.limit,
                    used: l.used,
                    source: l.source,
                })
                .collect(),
        }
    }
}

/// One entry of a server's action history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerActionRecordView {
    /// `create`, `stop`, `live_migrate`, ..., or `reconcile` for the engine's own changes.
    pub action: String,
    /// Request id of the call; `null` for the engine's own changes.
    pub request_id: Option<String>,
    /// Start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// End, milliseconds since the Unix epoch; `null` while running.
    pub finished_at_ms: Option<u64>,
    /// True if the action succeeded.
    pub ok: bool,
    /// What happened, or why it failed.
    pub message: String,
}

/// A server (instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    /// Server UUID (also its consumer UUID in placement).
    pub uuid: String,
    /// Display name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// Flavor name.
    pub flavor: String,
    /// Image name.
    pub image: String,
    /// `BUILDING`, `ACTIVE`, `STOPPED`, `PAUSED`, `SUSPENDED`, `RESIZED`, `SHELVED`,
    /// `SHELVED_OFFLOADED`, `ERROR` (or `UNKNOWN(N)`).
    pub vm_state: String,
    /// The task in progress, e.g. `SPAWNING`, `MIGRATING`; `NONE` when idle.
    pub task_state: String,
    /// `RUNNING`, `PAUSED`, `SUSPENDED`, `SHUTOFF`, `CRASHED`, `NOSTATE`; `null` without a
    /// domain.
    pub power_state: Option<String>,
    /// Provider UUID of its host; `null` when on none.
    pub host_uuid: Option<String>,
    /// Name of its host; `null` when on none.
    pub host_name: Option<String>,
    /// Availability zone it was placed in; `null` if none.
    pub availability_zone: Option<String>,
    /// Server group UUID; `null` if none.
    pub group: Option<String>,
    /// Network addresses.
    pub addresses: Vec<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// True while locked.
    pub locked: bool,
    /// Why it was locked; `null` if no reason was given.
    pub locked_reason: Option<String>,
    /// The last failure; `null` if none.
    pub fault: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// While RESIZED: the host it moved from; else `null`.
    pub resize_source_host: Option<String>,
    /// While RESIZED: the flavor before the resize; else `null`.
    pub resize_old_flavor: Option<String>,
    /// Action history, oldest first.
    pub actions: Vec<ServerActionRecordView>,
}

/// The answer to one server action (`berth server stop`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerActionView {
    /// The action as the history names it: `stop`, `live_migrate`, ...
    pub action: String,
    /// The request id that was sent.
    pub request_id: String,
    /// Outcome from the history entry of this request; `null` if the engine recorded none.
    pub ok: Option<bool>,
    /// That entry's message; `null` if there is none.
    pub message: Option<String>,
    /// Snapshot only: id of the new image record; else `null`.
    pub image_id: Option<String>,
    /// The server after the action.
    pub server: ServerView,
}

/// The answer to `berth server delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServersDeletedView {
    /// The servers deleted (printed; in JSON, the whole output is this array).
    pub deleted: Vec<DeletedView>,
    /// `UUID: CODE: message` per server that could not be deleted (reported on stderr).
    pub failures: Vec<String>,
}

/// Outcome of evacuating one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvacuationResultView {
    /// Server UUID.
    pub uuid: String,
    /// True if it now runs elsewhere.
    pub ok: bool,
    /// Where it went, or why it could not.
    pub message: String,
}

/// The answer to `berth host evacuate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvacuationView {
    /// The host as given on the command line.
    pub host: String,
    /// The request id that was sent.
    pub request_id: String,
    /// One result per server that was on the host.
    pub results: Vec<EvacuationResultView>,
}

/// Result of a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedView {
    /// What kind of thing: `host`, `flavor`, `image`, `group`, `allocation`, `server`.
    pub deleted: &'static str,
    /// The id or name that was deleted.
    pub id: String,
}

/// The result of any command, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One host.
    Host(Box<HostView>),
    /// Host list.
    Hosts(Vec<HostView>),
    /// A host's inventory.
    Inventories(InventoriesView),
    /// A host's traits.
    Traits(TraitsView),
    /// A list of trait names.
    TraitNames(Vec<String>),
    /// A host's aggregates.
    Aggregates(AggregatesView),
    /// One flavor.
    Flavor(FlavorView),
    /// Flavor list.
    Flavors(Vec<FlavorView>),
    /// One image.
    Image(ImageView),
    /// Image list.
    Images(Vec<ImageView>),
    /// One group.
    Group(GroupView),
    /// Group list.
    Groups(Vec<GroupView>),
    /// Placements made by `schedule`.
    Selections(Vec<SelectionView>),
    /// `schedule --dry-run`.
    Explain(ExplainView),
    /// A consumer's allocations.
    Consumer(ConsumerView),
    /// Per-host usage.
    HostUsages(Vec<HostUsageView>),
    /// A project's usage.
    ProjectUsage(ProjectUsageView),
    /// A project's quota.
    Quota(QuotaView),
    /// Something was deleted.
    Deleted(DeletedView),
    /// One server.
    Server(Box<ServerView>),
    /// Server list.
    Servers(Vec<ServerView>),
    /// Servers made by `server create` (a server in ERROR is a failure).
    ServersCreated(Vec<ServerView>),
    /// The answer to a server action.
    ServerAction(Box<ServerActionView>),
    /// Servers deleted, and the ones that could not be.
    ServersDeleted(ServersDeletedView),
    /// Evacuation of a host.
    Evacuation(EvacuationView),
}

impl Output {
    /// Renders in the requested format; the text ends with a newline.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Json => {
                let mut s = self.json();
                s.push('\n');
                s
            }
            OutputFormat::Table => self.table(),
        }
    }

    /// Pretty JSON of the view.
    pub fn json(&self) -> String {
        fn j<T: Serialize + ?Sized>(v: &T) -> String {
            // Views hold only strings, numbers, bools, maps with string keys and
            // sequences: serialising them cannot fail. Non-finite floats become null.
            serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        }
        match self {
            Output::Host(v) => j(v),
            Output::Hosts(v) => j(v),
            Output::Inventories(v) => j(v),
            Output::Traits(v) => j(v),
            Output::TraitNames(v) => j(v),
            Output::Aggregates(v) => j(v),
            Output::Flavor(v) => j(v),
            Output::Flavors(v) => j(v),
            Output::Image(v) => j(v),
            Output::Images(v) => j(v),
            Output::Group(v) => j(v),
            Output::Groups(v) => j(v),
            Output::Selections(v) => j(v),
            Output::Explain(v) => j(v),
            Output::Consumer(v) => j(v),
            Output::HostUsages(v) => j(v),
            Output::ProjectUsage(v) => j(v),
            Output::Quota(v) => j(v),
            Output::Deleted(v) => j(v),
            Output::Server(v) => j(v),
            Output::Servers(v) | Output::ServersCreated(v) => j(v),
            Output::ServerAction(v) => j(v),
            Output::ServersDeleted(v) => j(&v.deleted),
            Output::Evacuation(v) => j(v),
        }
    }

    /// A failure the engine reported inside a successful answer: a server action that
    /// failed on its node, a server that failed to build, servers that could not be
    /// deleted or evacuated. The output is still printed; this then goes to stderr as
    /// `error: <failure>` and the exit code is 1.
    pub fn failure(&self) -> Option<String> {
        match self {
            Output::ServerAction(v) if v.ok == Some(false) => Some(format!(
                "{} failed: {} (server {} is now {})",
                v.action,
                v.message.as_deref().unwrap_or("no reason given"),
                v.server.uuid,
                v.server.vm_state
            )),
            Output::ServersCreated(servers) => {
                let failed: Vec<&ServerView> =
                    servers.iter().filter(|s| s.vm_state == "ERROR").collect();
                if failed.is_empty() {
                    return None;
                }
                let mut msg = format!(
                    "{} of {} servers failed to build",
                    failed.len(),
                    servers.len()
                );
                for s in failed {
                    msg.push_str(&format!(
                        "\n  {} ({}): {}",
                        s.uuid,
                        s.name,
                        s.fault.as_deref().unwrap_or("no fault recorded")
                    ));
                }
                Some(msg)
            }
            Output::ServersDeleted(v) if !v.failures.is_empty() => {
                let mut msg = format!(
                    "could not delete {} of {} servers",
                    v.failures.len(),
                    v.failures.len() + v.deleted.len()
                );
                for f in &v.failures {
                    msg.push_str("\n  ");
                    msg.push_str(f);
                }
                Some(msg)
            }
            Output::Evacuation(v) => {
                let failed = v.results.iter().filter(|r| !r.ok).count();
                (failed > 0).then(|| {
                    format!(
                        "could not evacuate {failed} of {} servers from {}",
                        v.results.len(),
                        v.host
                    )
                })
            }
            _ => None,
        }
    }

    /// Human-readable text.
    pub fn table(&self) -> String {
        match self {
            Output::Host(h) => host_detail(h),
            Output::Hosts(hs) => host_table(hs),
            Output::Inventories(v) => format!(
                "host {}  generation {}\n{}",
                v.host_uuid,
                v.generation,
                inventory_table(&v.inventories, &v.usages)
            ),
            Output::Traits(v) => list_under_header(
                &format!("host {}  generation {}", v.host_uuid, v.generation),
                "TRAIT",
                &v.traits,
            ),
            Output::TraitNames(names) => list_under_header("", "TRAIT", names),
            Output::Aggregates(v) => list_under_header(
                &format!("host {}  generation {}", v.host_uuid, v.generation),
                "AGGREGATE",
                &v.aggregates,
            ),
            Output::Flavor(f) => key_values(&[
                ("id", f.id.clone()),
                ("name", f.name.clone()),
                ("vcpus", f.vcpus.to_string()),
                ("ram_mb", f.ram_mb.to_string()),
                ("disk_gb", f.disk_gb.to_string()),
                ("extra_specs", lines_of_map(&f.extra_specs)),
            ]),
            Output::Flavors(fs) => {
                let mut t = Table::new(["ID", "NAME", "VCPUS", "RAM_MB", "DISK_GB", "EXTRA_SPECS"])
                    .right(&[2, 3, 4]);
                for f in fs {
                    t.row([
                        f.id.clone(),
                        f.name.clone(),
                        f.vcpus.to_string(),
                        f.ram_mb.to_string(),
                        f.disk_gb.to_string(),
                        inline_map(&f.extra_specs),
                    ]);
                }
                t.render()
            }
            Output::Image(i) => key_values(&[
                ("id", i.id.clone()),
                ("name", i.name.clone()),
                ("properties", lines_of_map(&i.properties)),
            ]),
            Output::Images(is) => {
                let mut t = Table::new(["ID", "NAME", "PROPERTIES"]);
                for i in is {
                    t.row([i.id.clone(), i.name.clone(), inline_map(&i.properties)]);
                }
                t.render()
            }
            Output::Group(g) => key_values(&[
                ("id", g.id.clone()),
                ("name", g.name.clone()),
                ("policy", g.policy.clone()),
                ("max_server_per_host", g.max_server_per_host.to_string()),
                ("project_id", g.project_id.clone()),
                ("members", g.members.join("\n")),
                ("hosts", g.hosts.join("\n")),
            ]),
            Output::Groups(gs) => {
                let mut t = Table::new([
                    "ID",
                    "NAME",
                    "POLICY",
                    "MAX_PER_HOST",
                    "PROJECT",
                    "MEMBERS",
                    "HOSTS",
                ])
                .right(&[3, 5, 6]);
                for g in gs {
                    t.row([
                        g.id.clone(),
                        g.name.clone(),
                        g.policy.clone(),
                        g.max_server_per_host.to_string(),
                        g.project_id.clone(),
                        g.members.len().to_string(),
                        g.hosts.len().to_string(),
                    ]);
                }
                t.render()
            }
            Output::Selections(ss) => selection_table(ss),
            Output::Explain(e) => explain_text(e),
            Output::Consumer(c) => {
                let mut out = key_values(&[
                    ("consumer", c.consumer_uuid.clone()),
                    ("generation", c.consumer_generation.to_string()),
                    ("project_id", c.project_id.clone()),
                    ("user_id", c.user_id.clone()),
                ]);
                out.push('\n');
                let mut t = Table::new(["HOST_UUID", "HOST", "RESOURCES"]);
                for a in &c.allocations {
                    t.row([
                        a.provider_uuid.clone(),
                        a.provider_name.clone().unwrap_or_default(),
                        resources_inline(&a.resources),
                    ]);
                }
                out.push_str(&t.render());
                out
            }
            Output::HostUsages(rows) => usage_table(rows),
            Output::ProjectUsage(p) => {
                let mut pairs = vec![("project_id", p.project_id.clone())];
                if let Some(u) = &p.user_id {
                    pairs.push(("user_id", u.clone()));
                }
                pairs.push(("instances", p.instances.to_string()));
                let mut out = key_values(&pairs);
                out.push('\n');
                let mut t = Table::new(["CLASS", "USED"]).right(&[1]);
                let mut classes: Vec<(&String, &u64)> = p.usages.iter().collect();
                classes.sort_by(|a, b| class_order(a.0).cmp(&class_order(b.0)));
                for (class, used) in classes {
                    t.row([class.clone(), used.to_string()]);
                }
                out.push_str(&t.render());
                out
            }
            Output::Quota(q) => {
                let mut out = key_values(&[("project_id", q.project_id.clone())]);
                out.push('\n');
                let mut t = Table::new(["RESOURCE", "USED / LIMIT", "SOURCE"]);
                for l in &q.limits {
                    let limit = l.limit.map_or("unlimited".to_string(), |n| n.to_string());
                    t.row([
                        l.resource.clone(),
                        format!("{} / {limit}", l.used),
                        l.source.clone(),
                    ]);
                }
                out.push_str(&t.render());
                out
            }
            Output::Deleted(d) => format!("Deleted {} {}\n", d.deleted, d.id),
            Output::Server(v) => server_detail(v, true),
            Output::Servers(v) | Output::ServersCreated(v) => server_table(v),
            Output::ServerAction(v) => action_text(v),
            Output::ServersDeleted(v) => v
                .deleted
                .iter()
                .map(|d| format!("Deleted {} {}\n", d.deleted, d.id))
                .collect(),
            Output::Evacuation(v) => evacuation_text(v),
        }
    }
}

// ---- conversions from the proto types ----------------------------------------------------

impl From<&pb::Inventory> for InventoryView {
    fn from(i: &pb::Inventory) -> Self {
        Self {
            resource_class: i.resource_class.clone(),
            total: i.total,
            reserved: i.reserved,
            min_unit: i.min_unit,
            max_unit: i.max_unit,
            step_size: i.step_size,
            allocation_ratio: i.allocation_ratio,
        }
    }
}

impl From<&pb::ProviderUsage> for UsageView {
    fn from(u: &pb::ProviderUsage) -> Self {
        Self {
            resource_class: u.resource_class.clone(),
            used: u.used,
            capacity: u.capacity,
            total: u.total,
            reserved: u.reserved,
            allocation_ratio: u.allocation_ratio,
        }
    }
}

impl From<pb::ResourceProvider> for HostView {
    fn from(p: pb::ResourceProvider) -> Self {
        Self {
            inventories: p.inventories.iter().map(Into::into).collect(),
            usages: p.usages.iter().map(Into::into).collect(),
            capabilities: p.capabilities.into_iter().collect(),
            uuid: p.uuid,
            name: p.name,
            generation: p.generation,
            availability_zone: p.availability_zone,
            up: p.up,
            disabled: p.disabled,
            instances: p.instances,
            arch: p.arch,
            hypervisor_type: p.hypervisor_type,
            hypervisor_version: p.hypervisor_version,
            traits: p.traits,
            aggregates: p.aggregates,
        }
    }
}

impl From<pb::Flavor> for FlavorView {
    fn from(f: pb::Flavor) -> Self {
        Self {
            id: f.id,
            name: f.name,
            vcpus: f.vcpus,
            ram_mb: f.ram_mb,
            disk_gb: f.disk_gb,
            extra_specs: f.extra_specs.into_iter().collect(),
        }
    }
}

impl From<pb::Image> for ImageView {
    fn from(i: pb::Image) -> Self {
        Self {
            id: i.id,
            name: i.name,
            properties: i.properties.into_iter().collect(),
        }
    }
}

/// The CLI spelling of a policy number from the wire.
pub fn policy_name(policy: i32) -> String {
    use pb::ServerGroupPolicy as P;
    match P::try_from(policy) {
        Ok(P::Affinity) => "affinity".into(),
        Ok(P::AntiAffinity) => "anti-affinity".into(),
        Ok(P::SoftAffinity) => "soft-affinity".into(),
        Ok(P::SoftAntiAffinity) => "soft-anti-affinity".into(),
        Ok(P::Unspecified) | Err(_) => format!("unknown({policy})"),
    }
}

impl From<pb::ServerGroup> for GroupView {
    fn from(g: pb::ServerGroup) -> Self {
        Self {
            policy: policy_name(g.policy),
            id: g.id,
            name: g.name,
            max_server_per_host: g.max_server_per_host,
            project_id: g.project_id,
            members: g.members,
            hosts: g.hosts,
        }
    }
}

impl From<pb::Allocation> for AllocationView {
    fn from(a: pb::Allocation) -> Self {
        Self {
            provider_uuid: a.provider_uuid,
            provider_name: None,
            resources: a
                .resources
                .into_iter()
                .map(|r| (r.resource_class, r.amount))
                .collect(),
        }
    }
}

impl From<pb::Selection> for SelectionView {
    fn from(s: pb::Selection) -> Self {
        Self {
            consumer_uuid: s.consumer_uuid,
            host_uuid: s.host_uuid,
            host_name: s.host_name,
            weight: s.weight,
            allocations: s.allocations.into_iter().map(Into::into).collect(),
            alternates: s
                .alternates
                .into_iter()
                .map(|a| AlternateView {
                    host_uuid: a.host_uuid,
                    host_name: a.host_name,
                })
                .collect(),
        }
    }
}

impl From<pb::ExplainResponse> for ExplainView {
    fn from(e: pb::ExplainResponse) -> Self {
        Self {
            hosts_considered: e.hosts_considered,
            rejections: e
                .rejections
                .into_iter()
                .map(|r| RejectionView {
                    filter: r.filter,
                    hosts: r.hosts,
                })
                .collect(),
            ranked_hosts: e
                .ranked_hosts
                .into_iter()
                .map(|h| RankedHostView {
                    host_uuid: h.host_uuid,
                    host_name: h.host_name,
                    total_weight: h.total_weight,
                    contributions: h
                        .contributions
                        .into_iter()
                        .map(|c| ContributionView {
                            weigher: c.weigher,
                            raw: c.raw,
                            normalized: c.normalized,
                            weighted: c.weighted,
                        })
                        .collect(),
                })
                .collect(),
            summary: e.summary,
        }
    }
}

impl From<pb::ResourceProvider> for HostUsageView {
    fn from(p: pb::ResourceProvider) -> Self {
        Self {
            usages: p.usages.iter().map(Into::into).collect(),
            uuid: p.uuid,
            name: p.name,
            instances: p.instances,
        }
    }
}

/// `Some(s)` unless `s` is empty: the proto's "empty means none" as an `Option`.
fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// The short upper-case name of a vm_state from the wire: `ACTIVE`, `SHELVED_OFFLOADED`.
pub fn vm_state_name(state: i32) -> String {
    match pb::VmState::try_from(state) {
        Ok(pb::VmState::Unspecified) | Err(_) => format!("UNKNOWN({state})"),
        Ok(s) => s.as_str_name().trim_start_matches("VM_STATE_").to_owned(),
    }
}

/// The short upper-case name of a task_state from the wire: `NONE`, `RESIZE_MIGRATING`.
pub fn task_state_name(state: i32) -> String {
    match pb::TaskState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("TASK_STATE_").to_owned(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

impl From<pb::ServerActionRecord> for ServerActionRecordView {
    fn from(a: pb::ServerActionRecord) -> Self {
        Self {
            action: a.action,
            request_id: non_empty(a.request_id),
            started_at_ms: a.started_at_ms,
            finished_at_ms: (a.finished_at_ms != 0).then_some(a.finished_at_ms),
            ok: a.ok,
            message: a.message,
        }
    }
}

impl From<pb::Server> for ServerView {
    fn from(s: pb::Server) -> Self {
        Self {
            vm_state: vm_state_name(s.vm_state),
            task_state: task_state_name(s.task_state),
            uuid: s.uuid,
            name: s.name,
            project_id: s.project_id,
            user_id: s.user_id,
            flavor: s.flavor,
            image: s.image,
            power_state: non_empty(s.power_state),
            host_uuid: non_empty(s.host_uuid),
            host_name: non_empty(s.host_name),
            availability_zone: non_empty(s.availability_zone),
            group: non_empty(s.group),
            addresses: s.addresses,
            metadata: s.metadata.into_iter().collect(),
            locked: s.locked,
            locked_reason: non_empty(s.locked_reason),
            fault: non_empty(s.fault),
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
            resize_source_host: non_empty(s.resize_source_host),
            resize_old_flavor: non_empty(s.resize_old_flavor),
            actions: s.actions.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::EvacuationResult> for EvacuationResultView {
    fn from(r: pb::EvacuationResult) -> Self {
        Self {
            uuid: r.uuid,
            ok: r.ok,
            message: r.message,
        }
    }
}

// ---- formatting helpers ------------------------------------------------------------------

/// Sort key for resource classes: the standard ones in their usual order, then the rest
/// alphabetically.
pub fn class_order(class: &str) -> (usize, &str) {
    const STANDARD: [&str; 4] = ["VCPU", "PCPU", "MEMORY_MB", "DISK_GB"];
    match STANDARD.iter().position(|s| *s == class) {
        Some(i) => (i, ""),
        None => (STANDARD.len(), class),
    }
}

/// An allocation ratio for people: always with a decimal point (`4.0`, `1.5`, `0.75`).
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() && r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{r:.1}")
    } else {
        format!("{r}")
    }
}

/// A weight for people: three decimals, no negative zero.
pub fn fmt_weight(w: f64) -> String {
    let s = format!("{w:.3}");
    if s == "-0.000" { "0.000".into() } else { s }
}

/// `used / capacity (ratio)`, e.g. `12 / 64 (4.0)`.
pub fn usage_cell(u: &UsageView) -> String {
    format!(
        "{} / {} ({})",
        u.used,
        u.capacity,
        fmt_ratio(u.allocation_ratio)
    )
}

/// `VCPU=2, MEMORY_MB=2048` in class order.
pub fn resources_inline(resources: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = resources.iter().collect();
    v.sort_by(|a, b| class_order(a.0).cmp(&class_order(b.0)));
    v.iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn inline_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lines_of_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn list_under_header(title: &str, header: &str, items: &[String]) -> String {
    let mut out = String::new();
    if !title.is_empty() {
        out.push_str(title);
        out.push('\n');
    }
    let mut t = Table::new([header]);
    for i in items {
        t.row([i.clone()]);
    }
    out.push_str(&t.render());
    out
}

fn host_state(up: bool, disabled: bool) -> String {
    let s = if up { "up" } else { "down" };
    if disabled {
        format!("{s},disabled")
    } else {
        s.to_string()
    }
}

/// `host list`: one row per host, then one `used/capacity` column per resource class any
/// host has (standard classes first; `-` where a host lacks the class).
fn host_table(hosts: &[HostView]) -> String {
    let mut classes: Vec<&str> = Vec::new();
    for h in hosts {
        for u in &h.usages {
            if !classes.contains(&u.resource_class.as_str()) {
                classes.push(&u.resource_class);
            }
        }
    }
    classes.sort_by_key(|c| class_order(c));
    let mut headers = vec!["UUID", "NAME", "AZ", "STATE", "INSTANCES", "GENERATION"];
    headers.extend(classes.iter().copied());
    let right: Vec<usize> = (4..headers.len()).collect();
    let mut t = Table::new(headers).right(&right);
    for h in hosts {
        let mut row = vec![
            h.uuid.clone(),
            h.name.clone(),
            h.availability_zone.clone(),
            host_state(h.up, h.disabled),
            h.instances.to_string(),
            h.generation.to_string(),
        ];
        for c in &classes {
            row.push(
                h.usages
                    .iter()
                    .find(|u| u.resource_class == *c)
                    .map_or_else(|| "-".into(), |u| format!("{}/{}", u.used, u.capacity)),
            );
        }
        t.row(row);
    }
    t.render()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn host_detail(h: &HostView) -> String {
    let mut out = key_values(&[
        ("uuid", h.uuid.clone()),
        ("name", h.name.clone()),
        ("generation", h.generation.to_string()),
        ("availability_zone", or_dash(&h.availability_zone)),
        ("state", host_state(h.up, h.disabled)),
        ("instances", h.instances.to_string()),
        ("arch", or_dash(&h.arch)),
        ("hypervisor", {
            let v = format!("{} {}", h.hypervisor_type, h.hypervisor_version);
            or_dash(v.trim())
        }),
        ("traits", h.traits.join("\n")),
        ("aggregates", h.aggregates.join("\n")),
        ("capabilities", lines_of_map(&h.capabilities)),
    ]);
    out.push('\n');
    out.push_str(&inventory_table(&h.inventories, &h.usages));
    out
}

/// Inventory with usage joined by class: one row per inventory entry. Without usage (the
/// answer to a replace carries none) the USED and CAPACITY columns are left out.
pub fn inventory_table(inventories: &[InventoryView], usages: &[UsageView]) -> String {
    let mut headers = vec!["CLASS", "TOTAL", "RESERVED", "RATIO", "MIN", "MAX", "STEP"];
    let with_usage = !usages.is_empty();
    if with_usage {
        headers.extend(["USED", "CAPACITY"]);
    }
    let right: Vec<usize> = (1..headers.len()).collect();
    let mut t = Table::new(headers).right(&right);
    for i in inventories {
        let mut row = vec![
            i.resource_class.clone(),
            i.total.to_string(),
            i.reserved.to_string(),
            fmt_ratio(i.allocation_ratio),
            i.min_unit.to_string(),
            i.max_unit.to_string(),
            i.step_size.to_string(),
        ];
        if with_usage {
            let u = usages.iter().find(|u| u.resource_class == i.resource_class);
            row.push(u.map_or_else(|| "-".into(), |u| u.used.to_string()));
            row.push(u.map_or_else(|| "-".into(), |u| u.capacity.to_string()));
        }
        t.row(row);
    }
    t.render()
}

fn selection_table(ss: &[SelectionView]) -> String {
    let mut t = Table::new([
        "CONSUMER",
        "HOST",
        "HOST_UUID",
        "WEIGHT",
        "RESOURCES",
        "ALTERNATES",
    ])
    .right(&[3, 5]);
    for s in ss {
        let resources = s
            .allocations
            .iter()
            .map(|a| {
                if a.provider_uuid == s.host_uuid {
                    resources_inline(&a.resources)
                } else {
                    format!("{}: {}", a.provider_uuid, resources_inline(&a.resources))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        t.row([
            s.consumer_uuid.clone(),
            s.host_name.clone(),
            s.host_uuid.clone(),
            fmt_weight(s.weight),
            resources,
            s.alternates.len().to_string(),
        ]);
    }
    t.render()
}

/// The weighers in first-seen order across all ranked hosts (normally every host lists
/// the same weighers in the same order).
fn weigher_columns(hosts: &[RankedHostView]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for h in hosts {
        for c in &h.contributions {
            if !names.contains(&c.weigher) {
                names.push(c.weigher.clone());
            }
        }
    }
    names
}

fn explain_text(e: &ExplainView) -> String {
    let mut out = String::new();
    if !e.summary.is_empty() {
        out.push_str(&e.summary);
        out.push_str("\n\n");
    }
    let rejected: u64 = e.rejections.iter().map(|r| u64::from(r.hosts)).sum();
    out.push_str(&format!(
        "hosts considered: {}, rejected: {}, passed: {}\n\n",
        e.hosts_considered,
        rejected,
        e.ranked_hosts.len()
    ));
    if !e.rejections.is_empty() {
        let mut t = Table::new(["FILTER", "REJECTED"]).right(&[1]);
        for r in &e.rejections {
            t.row([r.filter.clone(), r.hosts.to_string()]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    if e.ranked_hosts.is_empty() {
        out.push_str("no host passed every filter\n");
        return out;
    }
    let weighers = weigher_columns(&e.ranked_hosts);
    let mut headers = vec![
        "RANK".to_string(),
        "HOST".to_string(),
        "HOST_UUID".to_string(),
        "TOTAL".to_string(),
    ];
    headers.extend(weighers.iter().cloned());
    let right: Vec<usize> = std::iter::once(0).chain(3..headers.len()).collect();
    let mut t = Table::new(headers).right(&right);
    for (rank, h) in e.ranked_hosts.iter().enumerate() {
        let mut row = vec![
            (rank + 1).to_string(),
            h.host_name.clone(),
            h.host_uuid.clone(),
            fmt_weight(h.total_weight),
        ];
        for w in &weighers {
            row.push(
                h.contributions
                    .iter()
                    .find(|c| &c.weigher == w)
                    .map_or_else(|| "-".into(), |c| fmt_weight(c.weighted)),
            );
        }
        t.row(row);
    }
    out.push_str("ranked hosts (weigher columns: weighted contribution to TOTAL)\n");
    out.push_str(&t.render());
    out
}

fn usage_table(rows: &[HostUsageView]) -> String {
    let mut classes: Vec<&str> = Vec::new();
    for r in rows {
        for u in &r.usages {
            if !classes.contains(&u.resource_class.as_str()) {
                classes.push(&u.resource_class);
            }
        }
    }
    classes.sort_by_key(|c| class_order(c));
    let mut headers = vec!["HOST".to_string(), "INSTANCES".to_string()];
    headers.extend(classes.iter().map(|c| c.to_string()));
    let right: Vec<usize> = (1..headers.len()).collect();
    let mut t = Table::new(headers).right(&right);
    for r in rows {
        let mut row = vec![r.name.clone(), r.instances.to_string()];
        for c in &classes {
            row.push(
                r.usages
                    .iter()
                    .find(|u| u.resource_class == *c)
                    .map_or_else(|| "-".into(), usage_cell),
            );
        }
        t.row(row);
    }
    t.render()
}

// ---- servers -----------------------------------------------------------------------------

/// Milliseconds since the Unix epoch as UTC `2024-06-01T12:00:05Z`; `-` for 0 (unset).
pub fn fmt_time_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`), in
    // unsigned arithmetic: the epoch is after the era origin, so nothing goes negative.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn fmt_duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// A free-text value on one table line: newlines become `; `.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The task_state column: `-` when idle.
fn task_cell(task_state: &str) -> String {
    if task_state == "NONE" {
        "-".into()
    } else {
        task_state.into()
    }
}

fn server_table(servers: &[ServerView]) -> String {
    let with_fault = servers.iter().any(|s| s.fault.is_some());
    let mut headers = vec![
        "UUID",
        "NAME",
        "VM_STATE",
        "TASK_STATE",
        "POWER_STATE",
        "HOST",
        "FLAVOR",
        "IMAGE",
    ];
    if with_fault {
        headers.push("FAULT");
    }
    let mut t = Table::new(headers);
    for s in servers {
        let mut row = vec![
            s.uuid.clone(),
            s.name.clone(),
            s.vm_state.clone(),
            task_cell(&s.task_state),
            or_dash(s.power_state.as_deref().unwrap_or_default()),
            or_dash(s.host_name.as_deref().unwrap_or_default()),
            s.flavor.clone(),
            s.image.clone(),
        ];
        if with_fault {
            row.push(one_line(s.fault.as_deref().unwrap_or_default()));
        }
        t.row(row);
    }
    t.render()
}

/// `server show`: every field as `label: value`, then (with `history`) the action table.
/// Fields that only sometimes apply (fault, resize source, lock reason) appear when set.
fn server_detail(s: &ServerView, history: bool) -> String {
    let host = match (&s.host_name, &s.host_uuid) {
        (Some(name), Some(uuid)) => format!("{name} ({uuid})"),
        (Some(one), None) | (None, Some(one)) => one.clone(),
        (None, None) => "-".into(),
    };
    let mut pairs = vec![
        ("uuid", s.uuid.clone()),
        ("name", s.name.clone()),
        ("project_id", s.project_id.clone()),
        ("user_id", s.user_id.clone()),
        ("flavor", s.flavor.clone()),
        ("image", s.image.clone()),
        ("vm_state", s.vm_state.clone()),
        ("task_state", task_cell(&s.task_state)),
        (
            "power_state",
            or_dash(s.power_state.as_deref().unwrap_or_default()),
        ),
        ("host", host),
        (
            "availability_zone",
            or_dash(s.availability_zone.as_deref().unwrap_or_default()),
        ),
        ("group", or_dash(s.group.as_deref().unwrap_or_default())),
        ("addresses", or_dash(&s.addresses.join("\n"))),
        ("metadata", or_dash(&lines_of_map(&s.metadata))),
        (
            "locked",
            match (s.locked, &s.locked_reason) {
                (false, _) => "no".into(),
                (true, None) => "yes".into(),
                (true, Some(r)) => format!("yes: {r}"),
            },
        ),
    ];
    if let Some(f) = &s.fault {
        pairs.push(("fault", f.clone()));
    }
    if let Some(h) = &s.resize_source_host {
        pairs.push(("resize_source_host", h.clone()));
    }
    if let Some(f) = &s.resize_old_flavor {
        pairs.push(("resize_old_flavor", f.clone()));
    }
    pairs.push(("created", fmt_time_ms(s.created_at_ms)));
    pairs.push(("updated", fmt_time_ms(s.updated_at_ms)));
    let mut out = key_values(&pairs);
    if history && !s.actions.is_empty() {
        out.push('\n');
        out.push_str(&action_history_table(&s.actions));
    }
    out
}

/// The action history, oldest first: RESULT is `ok`, `failed` or `running`.
pub fn action_history_table(actions: &[ServerActionRecordView]) -> String {
    let mut t = Table::new([
        "ACTION",
        "REQUEST_ID",
        "STARTED",
        "DURATION",
        "RESULT",
        "MESSAGE",
    ])
    .right(&[3]);
    for a in actions {
        let (duration, result) = match a.finished_at_ms {
            None => ("-".to_string(), "running"),
            Some(end) => (
                fmt_duration_ms(end.saturating_sub(a.started_at_ms)),
                if a.ok { "ok" } else { "failed" },
            ),
        };
        t.row([
            a.action.clone(),
            or_dash(a.request_id.as_deref().unwrap_or_default()),
            fmt_time_ms(a.started_at_ms),
            duration,
            result.to_string(),
            one_line(&a.message),
        ]);
    }
    t.render()
}

fn action_text(v: &ServerActionView) -> String {
    let result = match (v.ok, v.message.as_deref()) {
        (None, _) => "unknown (the engine recorded no history entry for this request)".into(),
        (Some(ok), msg) => {
            let word = if ok { "ok" } else { "failed" };
            match msg {
                Some(m) if !m.is_empty() => format!("{word}: {}", one_line(m)),
                _ => word.to_string(),
            }
        }
    };
    let mut pairs = vec![
        ("action", v.action.clone()),
        ("request_id", v.request_id.clone()),
        ("result", result),
    ];
    if let Some(id) = &v.image_id {
        pairs.push(("image_id", id.clone()));
    }
    let mut out = key_values(&pairs);
    out.push('\n');
    out.push_str(&server_detail(&v.server, false));
    out
}

fn evacuation_text(v: &EvacuationView) -> String {
    let mut out = format!("host {}  request_id {}\n", v.host, v.request_id);
    if v.results.is_empty() {
        out.push_str("no servers to evacuate\n");
        return out;
    }
    let mut t = Table::new(["SERVER", "RESULT", "MESSAGE"]);
    for r in &v.results {
        t.row([
            r.uuid.clone(),
            if r.ok { "ok" } else { "failed" }.to_string(),
            one_line(&r.message),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(class: &str, used: u64, capacity: u64, ratio: f64) -> UsageView {
        UsageView {
            resource_class: class.into(),
            used,
            capacity,
            total: 0,
            reserved: 0,
            allocation_ratio: ratio,
        }
    }

    #[test]
    fn ratios_always_show_a_decimal_point() {
        assert_eq!(fmt_ratio(4.0), "4.0");
        assert_eq!(fmt_ratio(1.0), "1.0");
        assert_eq!(fmt_ratio(1.5), "1.5");
        assert_eq!(fmt_ratio(0.75), "0.75");
        assert_eq!(fmt_ratio(16.0), "16.0");
    }

    #[test]
    fn usage_cell_matches_the_issue_example() {
        assert_eq!(usage_cell(&usage("VCPU", 12, 64, 4.0)), "12 / 64 (4.0)");
    }

    #[test]
    fn usage_table_orders_classes_and_dashes_missing_ones() {
        let rows = vec![
            HostUsageView {
                uuid: "u1".into(),
                name: "compute-1".into(),
                instances: 3,
                usages: vec![
                    usage("DISK_GB", 60, 2000, 1.0),
                    usage("MEMORY_MB", 6144, 393216, 1.5),
                    usage("VCPU", 12, 64, 4.0),
                ],
            },
            HostUsageView {
                uuid: "u2".into(),
                name: "gpu-1".into(),
                instances: 0,
                usages: vec![usage("CUSTOM_GPU", 0, 4, 1.0), usage("VCPU", 0, 16, 1.0)],
            },
        ];
        assert_eq!(
            Output::HostUsages(rows).table(),
            "HOST       INSTANCES           VCPU            MEMORY_MB          DISK_GB   CUSTOM_GPU\n\
             compute-1          3  12 / 64 (4.0)  6144 / 393216 (1.5)  60 / 2000 (1.0)            -\n\
             gpu-1              0   0 / 16 (1.0)                    -                -  0 / 4 (1.0)\n"
        );
    }

    fn explain() -> ExplainView {
        let c = |w: &str, weighted: f64| ContributionView {
            weigher: w.into(),
            raw: 0.0,
            normalized: 0.0,
            weighted,
        };
        ExplainView {
            hosts_considered: 10,
            rejections: vec![
                RejectionView {
                    filter: "AvailabilityZoneFilter".into(),
                    hosts: 5,
                },
                RejectionView {
                    filter: "Capacity(MEMORY_MB)".into(),
                    hosts: 3,
                },
            ],
            ranked_hosts: vec![
                RankedHostView {
                    host_uuid: "uuid-a".into(),
                    host_name: "a".into(),
                    total_weight: 1.5,
                    contributions: vec![c("RAMWeigher", 1.0), c("CPUWeigher", 0.5)],
                },
                RankedHostView {
                    host_uuid: "uuid-b".into(),
                    host_name: "bb".into(),
                    total_weight: -0.25,
                    contributions: vec![c("RAMWeigher", 0.0), c("CPUWeigher", -0.25)],
                },
            ],
            summary: "2 of 10 hosts passed".into(),
        }
    }

    #[test]
    fn explain_shows_rejections_and_weigher_contributions() {
        assert_eq!(
            Output::Explain(explain()).table(),
            "2 of 10 hosts passed\n\
             \n\
             hosts considered: 10, rejected: 8, passed: 2\n\
             \n\
             FILTER                  REJECTED\n\
             AvailabilityZoneFilter         5\n\
             Capacity(MEMORY_MB)            3\n\
             \n\
             ranked hosts (weigher columns: weighted contribution to TOTAL)\n\
             RANK  HOST  HOST_UUID   TOTAL  RAMWeigher  CPUWeigher\n\
             \x20  1  a     uuid-a      1.500       1.000       0.500\n\
             \x20  2  bb    uuid-b     -0.250       0.000      -0.250\n"
        );
    }

    #[test]
    fn explain_with_no_passing_host_says_so() {
        let mut e = explain();
        e.ranked_hosts.clear();
        assert!(
            Output::Explain(e)
                .table()
                .ends_with("no host passed every filter\n")
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let v: serde_json::Value =
            serde_json::from_str(&Output::Explain(explain()).json()).unwrap();
        assert_eq!(v["hosts_considered"], 10);
        assert_eq!(v["rejections"][0]["filter"], "AvailabilityZoneFilter");
        assert_eq!(v["ranked_hosts"][1]["contributions"][1]["weighted"], -0.25);
        let sel = SelectionView {
            consumer_uuid: "c".into(),
            host_uuid: "h".into(),
            host_name: "n".into(),
            weight: 0.5,
            allocations: vec![AllocationView {
                provider_uuid: "h".into(),
                provider_name: None,
                resources: [("VCPU".to_string(), 2), ("MEMORY_MB".to_string(), 2048)].into(),
            }],
            alternates: vec![],
        };
        let v: serde_json::Value =
            serde_json::from_str(&Output::Selections(vec![sel.clone()]).json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "consumer_uuid": "c",
                "host_uuid": "h",
                "host_name": "n",
                "weight": 0.5,
                "allocations": [{"provider_uuid": "h", "resources": {"MEMORY_MB": 2048, "VCPU": 2}}],
                "alternates": []
            }])
        );
        assert_eq!(
            Output::Selections(vec![sel]).table(),
            "CONSUMER  HOST  HOST_UUID  WEIGHT  RESOURCES               ALTERNATES\n\
             c         n     h           0.500  VCPU=2, MEMORY_MB=2048           0\n"
        );
    }

    #[test]
    fn deleted_renders_both_ways() {
        let d = Output::Deleted(DeletedView {
            deleted: "host",
            id: "abc".into(),
        });
        assert_eq!(d.table(), "Deleted host abc\n");
        assert_eq!(
            d.render(OutputFormat::Json),
            "{\n  \"deleted\": \"host\",\n  \"id\": \"abc\"\n}\n"
        );
    }

    #[test]
    fn host_conversion_and_detail() {
        let p = pb::ResourceProvider {
            uuid: "u".into(),
            name: "compute-1".into(),
            generation: 7,
            availability_zone: "az1".into(),
            traits: vec!["HW_CPU_X86_AVX2".into(), "CUSTOM_A".into()],
            inventories: vec![pb::Inventory {
                resource_class: "VCPU".into(),
                total: 16,
                reserved: 0,
                min_unit: 1,
                max_unit: 16,
                step_size: 1,
                allocation_ratio: 4.0,
            }],
            usages: vec![pb::ProviderUsage {
                resource_class: "VCPU".into(),
                used: 12,
                capacity: 64,
                total: 16,
                reserved: 0,
                allocation_ratio: 4.0,
            }],
            up: true,
            disabled: true,
            instances: 3,
            ..Default::default()
        };
        let h = HostView::from(p);
        let text = Output::Host(Box::new(h.clone())).table();
        assert!(text.contains("state:              up,disabled\n"), "{text}");
        assert!(
            text.contains("traits:             HW_CPU_X86_AVX2\n"),
            "{text}"
        );
        assert!(text.contains("\n                    CUSTOM_A\n"), "{text}");
        assert!(
            text.ends_with(
                "CLASS  TOTAL  RESERVED  RATIO  MIN  MAX  STEP  USED  CAPACITY\n\
                 VCPU      16         0    4.0    1   16     1    12        64\n"
            ),
            "{text}"
        );
        let list = Output::Hosts(vec![h]).table();
        assert_eq!(
            list,
            "UUID  NAME       AZ   STATE        INSTANCES  GENERATION   VCPU\n\
             u     compute-1  az1  up,disabled          3           7  12/64\n"
        );
    }

    #[test]
    fn inventory_without_usage_drops_usage_columns() {
        let inv = InventoryView {
            resource_class: "VCPU".into(),
            total: 8,
            reserved: 0,
            min_unit: 1,
            max_unit: 8,
            step_size: 1,
            allocation_ratio: 2.0,
        };
        assert_eq!(
            inventory_table(std::slice::from_ref(&inv), &[]),
            "CLASS  TOTAL  RESERVED  RATIO  MIN  MAX  STEP\n\
             VCPU       8         0    2.0    1    8     1\n"
        );
    }

    #[test]
    fn policy_names() {
        assert_eq!(policy_name(2), "anti-affinity");
        assert_eq!(policy_name(4), "soft-anti-affinity");
        assert_eq!(policy_name(0), "unknown(0)");
        assert_eq!(policy_name(99), "unknown(99)");
    }

    #[test]
    fn class_order_puts_standard_classes_first() {
        let mut v = vec![
            "CUSTOM_B",
            "DISK_GB",
            "CUSTOM_A",
            "VCPU",
            "MEMORY_MB",
            "PCPU",
        ];
        v.sort_by_key(|c| class_order(c));
        assert_eq!(
            v,
            [
                "VCPU",
                "PCPU",
                "MEMORY_MB",
                "DISK_GB",
                "CUSTOM_A",
                "CUSTOM_B"
            ]
        );
    }

    // ---- servers ---------------------------------------------------------------------

    const T0: u64 = 1_717_243_205_123; // 2024-06-01T12:00:05Z

    fn record(
        action: &str,
        request_id: &str,
        secs: u64,
        ok: bool,
        message: &str,
    ) -> pb::ServerActionRecord {
        pb::ServerActionRecord {
            action: action.into(),
            request_id: request_id.into(),
            started_at_ms: T0,
            finished_at_ms: T0 + secs * 1000 + 250,
            ok,
            message: message.into(),
        }
    }

    /// An ACTIVE server on compute-1 with two history entries, as GetServer returns it.
    fn pb_server() -> pb::Server {
        pb::Server {
            uuid: "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10".into(),
            name: "web-1".into(),
            project_id: "acme".into(),
            user_id: "alice".into(),
            flavor: "m1.small".into(),
            image: "cirros".into(),
            vm_state: pb::VmState::Active.into(),
            task_state: pb::TaskState::None.into(),
            power_state: "RUNNING".into(),
            host_uuid: "6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a".into(),
            host_name: "compute-1".into(),
            availability_zone: "az1".into(),
            metadata: [("role".to_string(), "web".to_string())].into(),
            created_at_ms: T0,
            updated_at_ms: T0 + 65_000,
            actions: vec![
                record(
                    "create",
                    "req-1",
                    12,
                    true,
                    "spawned on compute-1 (attempt 1 of 3)",
                ),
                pb::ServerActionRecord {
                    action: "reconcile".into(),
                    request_id: String::new(),
                    started_at_ms: T0 + 60_000,
                    finished_at_ms: T0 + 60_000,
                    ok: true,
                    message: "power state RUNNING".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn server_states_use_the_short_enum_names() {
        assert_eq!(vm_state_name(pb::VmState::Active.into()), "ACTIVE");
        assert_eq!(vm_state_name(pb::VmState::Stopped.into()), "STOPPED");
        assert_eq!(
            vm_state_name(pb::VmState::ShelvedOffloaded.into()),
            "SHELVED_OFFLOADED"
        );
        assert_eq!(vm_state_name(0), "UNKNOWN(0)");
        assert_eq!(vm_state_name(99), "UNKNOWN(99)");
        assert_eq!(task_state_name(0), "NONE");
        assert_eq!(
            task_state_name(pb::TaskState::ResizeMigrating.into()),
            "RESIZE_MIGRATING"
        );
        assert_eq!(task_state_name(-1), "UNKNOWN(-1)");
    }

    #[test]
    fn server_conversion_turns_empty_into_none() {
        let mut p = pb_server();
        p.host_uuid.clear();
        p.host_name.clear();
        p.power_state.clear();
        p.task_state = pb::TaskState::Unshelving.into();
        let s = ServerView::from(p);
        assert_eq!(s.vm_state, "ACTIVE");
        assert_eq!(s.task_state, "UNSHELVING");
        assert_eq!(s.host_uuid, None);
        assert_eq!(s.power_state, None);
        assert_eq!(s.fault, None);
        assert_eq!(s.group, None);
        assert_eq!(s.actions[0].request_id.as_deref(), Some("req-1"));
        assert_eq!(s.actions[1].request_id, None);
        assert_eq!(s.actions[0].finished_at_ms, Some(T0 + 12_250));
    }

    #[test]
    fn server_show_lists_every_field_and_the_history() {
        let text = Output::Server(Box::new(pb_server().into())).table();
        assert_eq!(
            text,
            "uuid:               0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10\n\
             name:               web-1\n\
             project_id:         acme\n\
             user_id:            alice\n\
             flavor:             m1.small\n\
             image:              cirros\n\
             vm_state:           ACTIVE\n\
             task_state:         -\n\
             power_state:        RUNNING\n\
             host:               compute-1 (6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a)\n\
             availability_zone:  az1\n\
             group:              -\n\
             addresses:          -\n\
             metadata:           role=web\n\
             locked:             no\n\
             created:            2024-06-01T12:00:05Z\n\
             updated:            2024-06-01T12:01:10Z\n\
             \n\
             ACTION     REQUEST_ID  STARTED               DURATION  RESULT  MESSAGE\n\
             create     req-1       2024-06-01T12:00:05Z     12.2s  ok      spawned on compute-1 (attempt 1 of 3)\n\
             reconcile  -           2024-06-01T12:01:05Z       0ms  ok      power state RUNNING\n"
        );
    }

    #[test]
    fn server_show_adds_fault_lock_and_resize_fields_when_set() {
        let mut p = pb_server();
        p.vm_state = pb::VmState::Error.into();
        p.fault = "attempt 1: no disk\nattempt 2: no disk".into();
        p.locked = true;
        p.locked_reason = "legal hold".into();
        p.resize_source_host = "compute-2".into();
        p.resize_old_flavor = "m1.tiny".into();
        p.actions = vec![pb::ServerActionRecord {
            action: "rebuild".into(),
            request_id: "r".into(),
            started_at_ms: T0,
            finished_at_ms: 0,
            ok: false,
            message: String::new(),
        }];
        let text = Output::Server(Box::new(p.into())).table();
        assert!(text.contains("vm_state:            ERROR\n"), "{text}");
        assert!(
            text.contains("locked:              yes: legal hold\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "fault:               attempt 1: no disk\n\
                 \x20                    attempt 2: no disk\n"
            ),
            "{text}"
        );
        assert!(text.contains("resize_source_host:  compute-2\n"), "{text}");
        assert!(text.contains("resize_old_flavor:   m1.tiny\n"), "{text}");
        assert!(
            text.ends_with("rebuild  r           2024-06-01T12:00:05Z         -  running\n"),
            "{text}"
        );
    }

    #[test]
    fn server_list_dashes_idle_tasks_and_shows_faults_only_when_any() {
        let a = ServerView::from(pb_server());
        let mut b = pb_server();
        b.uuid = "u-2".into();
        b.name = "web-2".into();
        b.vm_state = pb::VmState::ShelvedOffloaded.into();
        b.task_state = pb::TaskState::Unshelving.into();
        b.host_name.clear();
        b.host_uuid.clear();
        b.power_state.clear();
        let b = ServerView::from(b);
        assert_eq!(
            Output::Servers(vec![a.clone(), b.clone()]).table(),
            "UUID                                  NAME   VM_STATE           TASK_STATE  POWER_STATE  HOST       FLAVOR    IMAGE\n\
             0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10  web-1  ACTIVE             -           RUNNING      compute-1  m1.small  cirros\n\
             u-2                                   web-2  SHELVED_OFFLOADED  UNSHELVING  -            -          m1.small  cirros\n"
        );
        let mut c = b;
        c.vm_state = "ERROR".into();
        c.task_state = "NONE".into();
        c.fault = Some("no valid host\nafter 3 attempts".into());
        let text = Output::Servers(vec![a, c]).table();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("IMAGE   FAULT"), "{text}");
        assert!(lines[1].ends_with("cirros"), "{text}");
        assert!(
            lines[2].ends_with("cirros  no valid host; after 3 attempts"),
            "{text}"
        );
    }

    #[test]
    fn server_json_has_stable_names_and_nulls_for_absent_values() {
        let mut p = pb_server();
        p.group.clear();
        let v: serde_json::Value =
            serde_json::from_str(&Output::Server(Box::new(p.into())).json()).unwrap();
        assert_eq!(v["uuid"], "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10");
        assert_eq!(v["vm_state"], "ACTIVE");
        assert_eq!(v["task_state"], "NONE");
        assert_eq!(v["power_state"], "RUNNING");
        assert_eq!(v["host_name"], "compute-1");
        assert_eq!(v["group"], serde_json::Value::Null);
        assert_eq!(v["fault"], serde_json::Value::Null);
        assert_eq!(v["locked"], false);
        assert_eq!(v["metadata"], serde_json::json!({"role": "web"}));
        assert_eq!(v["created_at_ms"], T0);
        assert_eq!(
            v["actions"][0],
            serde_json::json!({
                "action": "create",
                "request_id": "req-1",
                "started_at_ms": T0,
                "finished_at_ms": T0 + 12_250,
                "ok": true,
                "message": "spawned on compute-1 (attempt 1 of 3)"
            })
        );
        assert_eq!(v["actions"][1]["request_id"], serde_json::Value::Null);
        // Lists (list, create) are arrays of the same objects.
        let list: serde_json::Value =
            serde_json::from_str(&Output::Servers(vec![pb_server().into()]).json()).unwrap();
        assert_eq!(list[0]["name"], "web-1");
    }

    fn action(ok: Option<bool>, message: &str) -> ServerActionView {
        let mut server = ServerView::from(pb_server());
        server.vm_state = "STOPPED".into();
        server.power_state = Some("SHUTOFF".into());
        ServerActionView {
            action: "stop".into(),
            request_id: "req-9".into(),
            ok,
            message: Some(message.into()),
            image_id: None,
            server,
        }
    }

    #[test]
    fn action_result_prints_the_outcome_then_the_server_without_history() {
        let out = Output::ServerAction(Box::new(action(Some(true), "powered off")));
        assert_eq!(out.failure(), None);
        let text = out.table();
        assert!(
            text.starts_with(
                "action:      stop\n\
                 request_id:  req-9\n\
                 result:      ok: powered off\n\
                 \n\
                 uuid:               0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10\n"
            ),
            "{text}"
        );
        assert!(text.contains("vm_state:           STOPPED\n"), "{text}");
        assert!(!text.contains("ACTION"), "no history table: {text}");
        assert!(text.ends_with("updated:            2024-06-01T12:01:10Z\n"));

        let mut snap = action(Some(true), "");
        snap.action = "snapshot".into();
        snap.image_id = Some("img-7".into());
        let text = Output::ServerAction(Box::new(snap.clone())).table();
        assert!(
            text.contains("result:      ok\nimage_id:    img-7\n"),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&Output::ServerAction(Box::new(snap)).json()).unwrap();
        assert_eq!(v["action"], "snapshot");
        assert_eq!(v["request_id"], "req-9");
        assert_eq!(v["ok"], true);
        assert_eq!(v["image_id"], "img-7");
        assert_eq!(v["server"]["vm_state"], "STOPPED");
    }

    #[test]
    fn a_failed_node_action_is_a_failure() {
        let mut v = action(Some(false), "domain would not shut down");
        v.server.vm_state = "ERROR".into();
        let out = Output::ServerAction(Box::new(v));
        assert_eq!(
            out.failure().unwrap(),
            "stop failed: domain would not shut down \
             (server 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 is now ERROR)"
        );
        assert!(
            out.table()
                .contains("result:      failed: domain would not shut down\n")
        );
        // No history entry for the request: not known to have failed.
        let out = Output::ServerAction(Box::new(action(None, "")));
        assert_eq!(out.failure(), None);
        assert!(out.table().contains("result:      unknown ("));
    }

    #[test]
    fn created_servers_in_error_are_a_failure_listed_ones_are_not() {
        let ok = ServerView::from(pb_server());
        let mut bad = ok.clone();
        bad.uuid = "u-bad".into();
        bad.name = "web-2".into();
        bad.vm_state = "ERROR".into();
        bad.fault = Some("attempt 1 on compute-1: image not found".into());
        assert_eq!(
            Output::ServersCreated(vec![ok.clone(), bad.clone()])
                .failure()
                .unwrap(),
            "1 of 2 servers failed to build\n  u-bad (web-2): attempt 1 on compute-1: image not found"
        );
        assert_eq!(Output::Servers(vec![ok.clone(), bad]).failure(), None);
        assert_eq!(Output::ServersCreated(vec![ok]).failure(), None);
    }

    #[test]
    fn server_delete_prints_each_and_reports_the_rest() {
        let v = ServersDeletedView {
            deleted: vec![DeletedView {
                deleted: "server",
                id: "u-1".into(),
            }],
            failures: vec!["u-2: FAILED_PRECONDITION: server u-2 is locked".into()],
        };
        let out = Output::ServersDeleted(v);
        assert_eq!(out.table(), "Deleted server u-1\n");
        assert_eq!(
            out.render(OutputFormat::Json),
            "[\n  {\n    \"deleted\": \"server\",\n    \"id\": \"u-1\"\n  }\n]\n"
        );
        assert_eq!(
            out.failure().unwrap(),
            "could not delete 1 of 2 servers\n  u-2: FAILED_PRECONDITION: server u-2 is locked"
        );
    }

    #[test]
    fn evacuation_lists_each_server_and_fails_if_any_did() {
        let v = EvacuationView {
            host: "compute-1".into(),
            request_id: "r-1".into(),
            results: vec![
                EvacuationResultView {
                    uuid: "u-1".into(),
                    ok: true,
                    message: "rebuilt on compute-2".into(),
                },
                EvacuationResultView {
                    uuid: "u-2".into(),
                    ok: false,
                    message: "no valid host".into(),
                },
            ],
        };
        let out = Output::Evacuation(v.clone());
        assert_eq!(
            out.table(),
            "host compute-1  request_id r-1\n\
             SERVER  RESULT  MESSAGE\n\
             u-1     ok      rebuilt on compute-2\n\
             u-2     failed  no valid host\n"
        );
        assert_eq!(
            out.failure().unwrap(),
            "could not evacuate 1 of 2 servers from compute-1"
        );
        let j: serde_json::Value = serde_json::from_str(&out.json()).unwrap();
        assert_eq!(
            j["results"][1],
            serde_json::json!({"uuid": "u-2", "ok": false, "message": "no valid host"})
        );
        let empty = Output::Evacuation(EvacuationView {
            results: vec![],
            ..v
        });
        assert_eq!(empty.failure(), None);
        assert!(empty.table().ends_with("no servers to evacuate\n"));
    }

    #[test]
    fn times_are_utc_iso_8601() {
        assert_eq!(fmt_time_ms(0), "-");
        assert_eq!(fmt_time_ms(1), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time_ms(T0), "2024-06-01T12:00:05Z");
        assert_eq!(fmt_time_ms(1_709_208_000_000), "2024-02-29T12:00:00Z");
        assert_eq!(fmt_time_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(fmt_duration_ms(0), "0ms");
        assert_eq!(fmt_duration_ms(999), "999ms");
        assert_eq!(fmt_duration_ms(1_000), "1.0s");
        assert_eq!(fmt_duration_ms(12_250), "12.2s");
        assert_eq!(fmt_duration_ms(245_000), "4m05s");
        assert_eq!(fmt_duration_ms(7_380_000), "2h03m");
    }

    #[test]
    fn host_list_shows_usage_per_class_as_used_over_capacity() {
        let host = |uuid: &str, up: bool, usages: Vec<UsageView>| HostView {
            uuid: uuid.into(),
            name: format!("{uuid}-name"),
            generation: 1,
            availability_zone: String::new(),
            up,
            disabled: false,
            instances: 2,
            arch: String::new(),
            hypervisor_type: String::new(),
            hypervisor_version: String::new(),
            traits: vec![],
            aggregates: vec![],
            capabilities: BTreeMap::new(),
            inventories: vec![],
            usages,
        };
        let hosts = vec![
            host(
                "a",
                true,
                vec![
                    usage("DISK_GB", 40, 2000, 1.0),
                    usage("MEMORY_MB", 4096, 393216, 1.5),
                    usage("VCPU", 12, 64, 4.0),
                ],
            ),
            host("b", false, vec![usage("CUSTOM_GPU", 1, 4, 1.0)]),
        ];
        assert_eq!(
            Output::Hosts(hosts).table(),
            "UUID  NAME    AZ  STATE  INSTANCES  GENERATION   VCPU    MEMORY_MB  DISK_GB  CUSTOM_GPU\n\
             a     a-name      up             2           1  12/64  4096/393216  40/2000           -\n\
             b     b-name      down           2           1      -            -        -         1/4\n"
        );
    }
}
