//! Engine configuration: every knob with its default, loadable from the `[engine]` and
//! `[scheduler]` tables of `berth.toml`. Defaults follow Nova where Nova has one.

use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The filters in their default order: cheap, selective checks first (Nomad's rule), so the
/// expensive ones see fewer hosts.
pub const DEFAULT_FILTERS: &[&str] = &[
    "IgnoreHosts",
    "ForceHosts",
    "AvailabilityZone",
    "Compute",
    "Capacity",
    "Traits",
    "MemberOf",
    "NumInstances",
    "IoOps",
    "IsolatedHosts",
    "ImageProperties",
    "ComputeCapabilities",
    "AggregateInstanceExtraSpecs",
    "SameHost",
    "DifferentHost",
    "ServerGroupAntiAffinity",
    "ServerGroupAffinity",
];

/// The weighers in their default order.
pub const DEFAULT_WEIGHERS: &[&str] = &[
    "RAM",
    "CPU",
    "Disk",
    "InstanceCount",
    "IoOps",
    "SoftAffinity",
    "SoftAntiAffinity",
    "BuildFailure",
];

/// Engine-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Provider shards (a power of two; 0 = one per core, rounded up). More shards mean less
    /// write contention between concurrent claims, but every request visits every shard
    /// (its lock, survivor bitmap and weigher bounds), which at 1,000 hosts makes 8 shards
    /// cost ~20% more than 2; parallel scans of large clouds split by shard, so one per
    /// core keeps every core busy.
    pub shards: usize,
    /// Zone given to providers registered without one (Nova's `default_availability_zone`).
    pub default_availability_zone: String,
    /// Quota limits of projects that have none of their own for a class: `instances` or a
    /// resource class → limit. A class not listed is unlimited (unless the project sets
    /// one with `SetQuota`).
    pub default_quota: std::collections::BTreeMap<String, u64>,
    /// Scheduling policy.
    pub scheduler: SchedulerConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            default_availability_zone: "nova".into(),
            default_quota: std::collections::BTreeMap::new(),
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// The filter → weigh → select policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Enabled filters, in the order they run. `Capacity` cannot be left out.
    pub filters: Vec<String>,
    /// Enabled weighers.
    pub weighers: Vec<String>,
    /// Weigher multipliers.
    pub multipliers: Multipliers,
    /// Pick randomly among the best N hosts (1 = always the best). Larger values spread
    /// concurrent requests and cut claim races, at some cost in placement quality.
    pub host_subset_size: usize,
    /// Hosts tried per instance: the selection plus `max_attempts − 1` alternates.
    pub max_attempts: u32,
    /// `NumInstances` filter: most consumers on one host.
    pub max_instances_per_host: u32,
    /// `IoOps` filter: most builds/moves in flight on one host.
    pub max_io_ops_per_host: u32,
    /// `IsolatedHosts` filter: hosts reserved for `isolated_images` (names or uuids).
    pub isolated_hosts: Vec<String>,
    /// Images (names or ids) that may only run on `isolated_hosts`.
    pub isolated_images: Vec<String>,
    /// Whether isolated hosts refuse images that are not isolated.
    pub restrict_isolated_hosts_to_isolated_images: bool,
    /// Scan shards in parallel (rayon) only above this many hosts: below it one thread is
    /// faster than fork/join.
    pub parallel_threshold: usize,
    /// Largest `num_instances` in one request.
    pub max_instances_per_request: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            filters: DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect(),
            weighers: DEFAULT_WEIGHERS.iter().map(|s| s.to_string()).collect(),
            multipliers: Multipliers::default(),
            host_subset_size: 1,
            max_attempts: 3,
            max_instances_per_host: 50,
            max_io_ops_per_host: 8,
            isolated_hosts: Vec::new(),
            isolated_images: Vec::new(),
            restrict_isolated_hosts_to_isolated_images: true,
            parallel_threshold: 16_384,
            max_instances_per_request: 1000,
        }
    }
}

/// Weigher multipliers (Nova's names and defaults). Each weigher's raw values are
/// normalised to [0, 1] over the candidates, then multiplied: a positive RAM multiplier
/// spreads instances, a negative one packs them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Multipliers {
    /// Free RAM.
    pub ram: f64,
    /// Free VCPUs.
    pub cpu: f64,
    /// Free disk.
    pub disk: f64,
    /// Instances on the host (positive prefers busy hosts).
    pub instance_count: f64,
    /// Builds in flight (negative avoids busy hosts).
    pub io_ops: f64,
    /// Members of a soft-affinity group on the host.
    pub soft_affinity: f64,
    /// Members of a soft-anti-affinity group on the host (they count against it).
    pub soft_anti_affinity: f64,
    /// Recent build failures (they count against the host, strongly).
    pub build_failure: f64,
}

impl Default for Multipliers {
    fn default() -> Self {
        Self {
            ram: 1.0,
            cpu: 1.0,
            disk: 1.0,
            instance_count: 0.0,
            io_ops: -1.0,
            soft_affinity: 1.0,
            soft_anti_affinity: 1.0,
            build_failure: 1_000_000.0,
        }
    }
}

impl EngineConfig {
    /// Parses a TOML document (the whole `berth.toml` or just the engine part).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| EngineError::invalid("config", e.to_string()))
    }

    /// Shards to use: `shards` if set, otherwise one per core, as a power of two in 1..=1024.
    pub fn shard_count(&self) -> usize {
        let want = if self.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.shards
        };
        want.clamp(1, 1024).next_power_of_two()
    }

    /// Checks every setting; the error names the key.
    pub fn validate(&self) -> Result<()> {
        crate::model::validate_az("default_availability_zone", &self.default_availability_zone)?;
        for name in self.default_quota.keys() {
            if name != crate::state::quotas::INSTANCES {
                crate::model::validate_class_name(&format!("default_quota.{name}"), name)?;
            }
        }
        let s = &self.scheduler;
        if !s.filters.iter().any(|f| f == "Capacity") {
            return Err(EngineError::invalid(
                "scheduler.filters",
                "Capacity cannot be disabled: it is what keeps hosts from being over-committed",
            ));
        }
        crate::scheduler::filters::build(s)?;
        crate::scheduler::weighers::build(s)?;
        if s.host_subset_size == 0 {
            return Err(EngineError::invalid(
                "scheduler.host_subset_size",
                "must be at least 1",
            ));
        }
        if !(1..=100).contains(&s.max_attempts) {
            return Err(EngineError::invalid(
                "scheduler.max_attempts",
                "must be in 1..=100",
            ));
        }
        if s.max_instances_per_request == 0 {
            return Err(EngineError::invalid(
                "scheduler.max_instances_per_request",
                "must be at least 1",
            ));
        }
        let m = &s.multipliers;
        for (k, v) in [
            ("ram", m.ram),
            ("cpu", m.cpu),
            ("disk", m.disk),
            ("instance_count", m.instance_count),
            ("io_ops", m.io_ops),
            ("soft_affinity", m.soft_affinity),
            ("soft_anti_affinity", m.soft_anti_affinity),
            ("build_failure", m.build_failure),
        ] {
            if !v.is_finite() {
                return Err(EngineError::invalid(
                    format!("scheduler.multipliers.{k}"),
                    "must be a finite number",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_toml_overrides() {
        EngineConfig::default().validate().unwrap();
        let c = EngineConfig::from_toml(
            "shards = 8\n[scheduler]\nhost_subset_size = 3\n[scheduler.multipliers]\nram = -1.0\n",
        )
        .unwrap();
        assert_eq!(c.shard_count(), 8);
        assert_eq!(c.scheduler.host_subset_size, 3);
        assert_eq!(c.scheduler.multipliers.ram, -1.0);
        assert_eq!(c.scheduler.multipliers.cpu, 1.0);
        assert!(
            EngineConfig::from_toml("shardz = 1").is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let mut c = EngineConfig::default();
        c.scheduler.filters.retain(|f| f != "Capacity");
        assert!(
            matches!(c.validate(), Err(EngineError::InvalidArgument { field, .. }) if field == "scheduler.filters")
        );
        let mut c = EngineConfig::default();
        c.scheduler.filters.push("Bogus".into());
        assert!(c.validate().unwrap_err().to_string().contains("Bogus"));
        let mut c = EngineConfig::default();
        c.scheduler.multipliers.ram = f64::NAN;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("multipliers.ram")
        );
        assert_eq!(
            EngineConfig {
                shards: 5,
                ..Default::default()
            }
            .shard_count(),
            8
        );
    }
}
