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

/// Result of a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedView {
    /// What kind of thing: `host`, `flavor`, `image`, `group`, `allocation`.
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
    /// Something was deleted.
    Deleted(DeletedView),
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
            Output::Deleted(v) => j(v),
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
            Output::Deleted(d) => format!("Deleted {} {}\n", d.deleted, d.id),
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

fn host_table(hosts: &[HostView]) -> String {
    let mut t =
        Table::new(["UUID", "NAME", "AZ", "STATE", "INSTANCES", "GENERATION"]).right(&[4, 5]);
    for h in hosts {
        t.row([
            h.uuid.clone(),
            h.name.clone(),
            h.availability_zone.clone(),
            host_state(h.up, h.disabled),
            h.instances.to_string(),
            h.generation.to_string(),
        ]);
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
            "UUID  NAME       AZ   STATE        INSTANCES  GENERATION\n\
             u     compute-1  az1  up,disabled          3           7\n"
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
}
