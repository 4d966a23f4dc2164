//! Resource providers (hosts) as callers see them: what they send and what they get back.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::Inventory;

/// A new resource provider. Validated by `Engine::create_provider`.
#[derive(Debug, Clone, Default)]
pub struct ProviderSpec {
    /// The provider's uuid; generated when `None`.
    pub uuid: Option<Uuid>,
    /// Unique name, usually the hostname.
    pub name: String,
    /// Availability zone; the configured default zone when `None`.
    pub availability_zone: Option<String>,
    /// Traits such as `HW_CPU_X86_AVX2`; `COMPUTE_STATUS_DISABLED` disables scheduling to it.
    pub traits: Vec<String>,
    /// Aggregates the provider belongs to.
    pub aggregates: Vec<String>,
    /// Inventory per resource class name.
    pub inventories: Vec<(String, Inventory)>,
    /// Free-form capabilities matched by flavor `capabilities:*` extra specs.
    pub capabilities: BTreeMap<String, String>,
    /// CPU architecture (`x86_64`, `aarch64`), matched by image `hw_architecture`.
    pub arch: Option<String>,
    /// Hypervisor type (`qemu`, `kvm`, `test`), matched by image `img_hv_type`.
    pub hypervisor_type: Option<String>,
    /// Hypervisor version (`8.0.0`), matched by image `img_hv_requested_version`.
    pub hypervisor_version: Option<String>,
}

impl ProviderSpec {
    /// A spec with a name and standard inventories of `vcpus`, `ram_mb` and `disk_gb`
    /// (ratios 1.0; tests and demos adjust from there).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Builder: add an inventory.
    pub fn inventory(mut self, class: &str, inv: Inventory) -> Self {
        self.inventories.push((class.to_string(), inv));
        self
    }

    /// Builder: set the availability zone.
    pub fn az(mut self, az: &str) -> Self {
        self.availability_zone = Some(az.to_string());
        self
    }

    /// Builder: add a trait.
    pub fn with_trait(mut self, t: &str) -> Self {
        self.traits.push(t.to_string());
        self
    }

    /// Builder: add an aggregate.
    pub fn aggregate(mut self, a: &str) -> Self {
        self.aggregates.push(a.to_string());
        self
    }

    /// Builder: set the uuid.
    pub fn uuid(mut self, u: Uuid) -> Self {
        self.uuid = Some(u);
        self
    }
}

/// A change to a provider's own fields (inventories, traits and aggregates have their own
/// calls, each with the provider generation).
#[derive(Debug, Clone, Default)]
pub struct ProviderUpdate {
    /// New name, if changing.
    pub name: Option<String>,
    /// New availability zone, if changing.
    pub availability_zone: Option<String>,
    /// New capabilities, if changing (replaces all).
    pub capabilities: Option<BTreeMap<String, String>>,
    /// New CPU architecture, if changing; `Some("")` clears it.
    pub arch: Option<String>,
    /// New hypervisor type, if changing; `Some("")` clears it.
    pub hypervisor_type: Option<String>,
    /// New hypervisor version (dotted numbers), if changing; `Some("")` clears it.
    pub hypervisor_version: Option<String>,
}

impl ProviderUpdate {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.availability_zone.is_none()
            && self.capabilities.is_none()
            && self.arch.is_none()
            && self.hypervisor_type.is_none()
            && self.hypervisor_version.is_none()
    }
}

/// Usage of one class on one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderUsage {
    /// Resource class name.
    pub class: String,
    /// Sum of allocations.
    pub used: u64,
    /// `(total − reserved) × allocation_ratio`.
    pub capacity: u64,
    /// The inventory behind it.
    pub inventory: Inventory,
}

/// A provider as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderInfo {
    /// Uuid.
    pub uuid: Uuid,
    /// Name.
    pub name: String,
    /// Bumped by every write to the provider, allocations included.
    pub generation: u64,
    /// Availability zone.
    pub availability_zone: String,
    /// Traits, sorted.
    pub traits: Vec<String>,
    /// Aggregates, sorted.
    pub aggregates: Vec<String>,
    /// Inventory and usage per class, standard classes first.
    pub usages: Vec<ProviderUsage>,
    /// Whether the host is up (heartbeating, or never managed by a node daemon).
    pub up: bool,
    /// Whether it carries `COMPUTE_STATUS_DISABLED`.
    pub disabled: bool,
    /// Consumers with allocations here.
    pub instances: u32,
    /// Builds and moves in progress here.
    pub io_ops: u32,
    /// Recent build failures (cleared by a success).
    pub failed_builds: u32,
    /// Free-form capabilities.
    pub capabilities: BTreeMap<String, String>,
    /// CPU architecture.
    pub arch: Option<String>,
    /// Hypervisor type.
    pub hypervisor_type: Option<String>,
    /// Hypervisor version.
    pub hypervisor_version: Option<String>,
}

/// One consumer's allocation on one provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    /// The provider.
    pub provider: Uuid,
    /// `(class name, amount)` pairs.
    pub resources: Vec<(String, u64)>,
}
