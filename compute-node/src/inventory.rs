//! The node's inventory, as `Register` will send it: libvirt's totals, the operator's
//! reserved amounts and allocation ratios, in Placement's terms.
//!
//! Per class (Nova's rules): `total` is what the host has, `reserved` what the operator keeps
//! for the host itself, `min_unit = step_size = 1`, `max_unit = total` (one instance may not
//! be bigger than the host), and capacity is `floor((total − reserved) × allocation_ratio)`.
//! A class whose total is 0 (no instance disk configured, say) is left out, as Nova does.
//!
//! The conversions to the wire (`berth_proto::v1::Inventory`, `Register`, `DomainReport`)
//! live here too, so the agent only assembles messages.

use std::fmt;
use std::time::Duration;

use berth_proto::v1 as pb;

use crate::error::NodeError;
use crate::hypervisor::{DomainStatus, NodeInfo};

/// Resource class of virtual CPUs.
pub const VCPU: &str = "VCPU";
/// Resource class of memory, in MiB.
pub const MEMORY_MB: &str = "MEMORY_MB";
/// Resource class of instance disk, in GiB.
pub const DISK_GB: &str = "DISK_GB";

/// What the operator holds back and how far each class may be over-committed.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePolicy {
    /// vCPUs kept for the host.
    pub reserved_vcpus: u64,
    /// Memory kept for the host, in MiB (Nova's `reserved_host_memory_mb`, default 512).
    pub reserved_ram_mb: u64,
    /// Disk kept for the host, in GiB.
    pub reserved_disk_gb: u64,
    /// `VCPU` allocation ratio (Nova's default 4.0: CPUs are shared well).
    pub cpu_ratio: f64,
    /// `MEMORY_MB` allocation ratio (1.0: over-committing memory invites the OOM killer).
    pub ram_ratio: f64,
    /// `DISK_GB` allocation ratio (1.0; above it only with thin-provisioned disks).
    pub disk_ratio: f64,
}

impl Default for ResourcePolicy {
    fn default() -> Self {
        Self {
            reserved_vcpus: 0,
            reserved_ram_mb: 512,
            reserved_disk_gb: 0,
            cpu_ratio: 4.0,
            ram_ratio: 1.0,
            disk_ratio: 1.0,
        }
    }
}

/// One resource class's inventory (the fields of the `Inventory` message in
/// `proto/berth/v1/common.proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// `VCPU`, `MEMORY_MB` or `DISK_GB`.
    pub resource_class: &'static str,
    /// Physical amount.
    pub total: u64,
    /// Amount held back for the host.
    pub reserved: u64,
    /// Smallest allocation.
    pub min_unit: u64,
    /// Largest allocation.
    pub max_unit: u64,
    /// Allocations are multiples of this.
    pub step_size: u64,
    /// Over-commit factor on `total − reserved`.
    pub allocation_ratio: f64,
}

impl Inventory {
    /// Usable capacity: `floor((total − reserved) × allocation_ratio)`.
    pub fn capacity(&self) -> u64 {
        // Amounts are far below 2^53, so the float is exact; `as` saturates, never wraps.
        ((self.total - self.reserved) as f64 * self.allocation_ratio).floor() as u64
    }

    /// The wire form (`Inventory` in common.proto).
    pub fn to_proto(&self) -> pb::Inventory {
        pb::Inventory {
            resource_class: self.resource_class.to_string(),
            total: self.total,
            reserved: self.reserved,
            min_unit: self.min_unit,
            max_unit: self.max_unit,
            step_size: self.step_size,
            allocation_ratio: self.allocation_ratio,
        }
    }
}

impl From<&Inventory> for pb::Inventory {
    fn from(inv: &Inventory) -> Self {
        inv.to_proto()
    }
}

/// A hypervisor version in libvirt's integer encoding (`major * 1_000_000 + minor * 1_000 +
/// release`) as the dotted `major.minor.release` the engine compares: `8_002_001` is `8.2.1`.
pub fn dotted_version(version: u64) -> String {
    format!(
        "{}.{}.{}",
        version / 1_000_000,
        version / 1_000 % 1_000,
        version % 1_000
    )
}

impl From<&DomainStatus> for pb::DomainReport {
    fn from(d: &DomainStatus) -> Self {
        pb::DomainReport {
            uuid: d.uuid.to_string(),
            name: d.name.clone(),
            power_state: d.state.as_str().to_string(),
        }
    }
}

/// The inventories for `node` under `policy`, in the order VCPU, MEMORY_MB, DISK_GB.
///
/// # Errors
/// `NodeError::Config` when a ratio is not finite and positive, or a reserved amount exceeds
/// its total (Placement would refuse the inventory; better to say so at startup).
pub fn inventories(node: &NodeInfo, policy: &ResourcePolicy) -> Result<Vec<Inventory>, NodeError> {
    let classes = [
        (
            VCPU,
            u64::from(node.vcpus),
            policy.reserved_vcpus,
            policy.cpu_ratio,
            "reserved_vcpus",
            "cpu_ratio",
        ),
        (
            MEMORY_MB,
            node.memory_mb,
            policy.reserved_ram_mb,
            policy.ram_ratio,
            "reserved_ram_mb",
            "ram_ratio",
        ),
        (
            DISK_GB,
            node.disk_gb,
            policy.reserved_disk_gb,
            policy.disk_ratio,
            "reserved_disk_gb",
            "disk_ratio",
        ),
    ];
    let mut out = Vec::with_capacity(classes.len());
    for (class, total, reserved, ratio, reserved_key, ratio_key) in classes {
        if !(ratio.is_finite() && ratio > 0.0) {
            return Err(NodeError::Config(format!(
                "{ratio_key} must be finite and greater than 0, not {ratio}"
            )));
        }
        if total == 0 {
            continue;
        }
        if reserved > total {
            return Err(NodeError::Config(format!(
                "{reserved_key} = {reserved} exceeds the host's {class} total of {total}"
            )));
        }
        out.push(Inventory {
            resource_class: class,
            total,
            reserved,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: ratio,
        });
    }
    Ok(out)
}

/// What the node will tell the engine when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Resource-provider name (the host name by default).
    pub name: String,
    /// Availability zone, if configured (the engine applies its default otherwise).
    pub availability_zone: Option<String>,
    /// Traits, e.g. `CUSTOM_SSD`.
    pub traits: Vec<String>,
    /// The hypervisor's description of the host.
    pub node: NodeInfo,
    /// Per-class inventory.
    pub inventories: Vec<Inventory>,
    /// Whether the host can live-migrate.
    pub live_migration: bool,
}

impl Registration {
    /// The `Register` message: this registration, every domain the hypervisor has, the
    /// heartbeat interval the node will keep (whole milliseconds, saturating) and the daemon's
    /// version.
    pub fn to_register(
        &self,
        domains: &[DomainStatus],
        heartbeat_interval: Duration,
        agent_version: &str,
    ) -> pb::Register {
        pb::Register {
            name: self.name.clone(),
            availability_zone: self.availability_zone.clone().unwrap_or_default(),
            traits: self.traits.clone(),
            inventories: self.inventories.iter().map(Inventory::to_proto).collect(),
            arch: self.node.arch.clone(),
            hypervisor_type: self.node.hypervisor_type.clone(),
            hypervisor_version: dotted_version(self.node.hypervisor_version),
            live_migration: self.live_migration,
            domains: domains.iter().map(pb::DomainReport::from).collect(),
            heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            agent_version: agent_version.to_string(),
        }
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.name)?;
        writeln!(
            f,
            "  availability zone: {}",
            self.availability_zone
                .as_deref()
                .unwrap_or("(engine default)")
        )?;
        let traits = if self.traits.is_empty() {
            "(none)".to_string()
        } else {
            self.traits.join(", ")
        };
        writeln!(f, "  traits: {traits}")?;
        writeln!(
            f,
            "  hypervisor: {} version {} ({}), live migration: {}",
            self.node.hypervisor_type,
            dotted_version(self.node.hypervisor_version),
            self.node.arch,
            if self.live_migration { "yes" } else { "no" }
        )?;
        writeln!(
            f,
            "  {:<10} {:>10} {:>10} {:>6} {:>10} {:>10}",
            "class", "total", "reserved", "ratio", "max_unit", "capacity"
        )?;
        for inv in &self.inventories {
            writeln!(
                f,
                "  {:<10} {:>10} {:>10} {:>6} {:>10} {:>10}",
                inv.resource_class,
                inv.total,
                inv.reserved,
                inv.allocation_ratio,
                inv.max_unit,
                inv.capacity()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(vcpus: u32, memory_mb: u64, disk_gb: u64) -> NodeInfo {
        NodeInfo {
            vcpus,
            memory_mb,
            disk_gb,
            arch: "x86_64".into(),
            hypervisor_type: "TEST".into(),
            hypervisor_version: 2,
        }
    }

    #[test]
    fn defaults_follow_nova() {
        let inv = inventories(&node(8, 16384, 100), &ResourcePolicy::default()).unwrap();
        let by = |c: &str| inv.iter().find(|i| i.resource_class == c).unwrap().clone();
        assert_eq!(by(VCPU).capacity(), 32, "8 vCPUs × 4.0");
        assert_eq!(by(MEMORY_MB).reserved, 512);
        assert_eq!(by(MEMORY_MB).capacity(), 16384 - 512);
        assert_eq!(by(DISK_GB).capacity(), 100);
        for i in &inv {
            assert_eq!((i.min_unit, i.step_size, i.max_unit), (1, 1, i.total));
        }
    }

    #[test]
    fn capacity_floors_fractional_results() {
        let policy = ResourcePolicy {
            reserved_vcpus: 1,
            ram_ratio: 1.5,
            reserved_ram_mb: 0,
            ..ResourcePolicy::default()
        };
        let inv = inventories(&node(3, 1001, 0), &policy).unwrap();
        assert_eq!(inv[0].capacity(), 8, "(3 − 1) × 4.0");
        assert_eq!(inv[1].capacity(), 1501, "floor(1001 × 1.5)");
    }

    #[test]
    fn zero_totals_are_left_out() {
        let inv = inventories(&node(4, 4096, 0), &ResourcePolicy::default()).unwrap();
        let classes: Vec<_> = inv.iter().map(|i| i.resource_class).collect();
        assert_eq!(classes, [VCPU, MEMORY_MB]);
    }

    #[test]
    fn reserved_beyond_total_and_bad_ratios_are_refused() {
        let err = inventories(&node(4, 256, 10), &ResourcePolicy::default()).unwrap_err();
        assert!(err.to_string().contains("reserved_ram_mb"), "{err}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let policy = ResourcePolicy {
                disk_ratio: bad,
                ..ResourcePolicy::default()
            };
            let err = inventories(&node(4, 4096, 10), &policy).unwrap_err();
            assert!(err.to_string().contains("disk_ratio"), "{err}");
        }
    }

    #[test]
    fn versions_are_dotted_from_libvirts_integer() {
        assert_eq!(dotted_version(8_002_001), "8.2.1");
        assert_eq!(dotted_version(1_000_000), "1.0.0");
        assert_eq!(dotted_version(2), "0.0.2");
        assert_eq!(dotted_version(10_011_012), "10.11.12");
    }

    #[test]
    fn register_carries_the_registration_on_the_wire() {
        use crate::hypervisor::PowerState;
        let node = NodeInfo {
            hypervisor_version: 9_001_000,
            ..node(8, 16384, 100)
        };
        let reg = Registration {
            name: "host-1".into(),
            availability_zone: Some("az1".into()),
            traits: vec!["CUSTOM_SSD".into()],
            inventories: inventories(&node, &ResourcePolicy::default()).unwrap(),
            node,
            live_migration: true,
        };
        let dom = DomainStatus {
            uuid: uuid::Uuid::new_v4(),
            name: "vm".into(),
            state: PowerState::Paused,
        };
        let msg = reg.to_register(
            std::slice::from_ref(&dom),
            Duration::from_millis(250),
            "1.2.3",
        );
        assert_eq!(
            (msg.name.as_str(), msg.availability_zone.as_str()),
            ("host-1", "az1")
        );
        assert_eq!(msg.traits, ["CUSTOM_SSD"]);
        assert_eq!(
            (msg.arch.as_str(), msg.hypervisor_type.as_str()),
            ("x86_64", "TEST")
        );
        assert_eq!(msg.hypervisor_version, "9.1.0");
        assert!(msg.live_migration);
        assert_eq!(msg.heartbeat_interval_ms, 250);
        assert_eq!(msg.agent_version, "1.2.3");
        assert_eq!(
            msg.domains,
            [pb::DomainReport {
                uuid: dom.uuid.to_string(),
                name: "vm".into(),
                power_state: "PAUSED".into(),
            }]
        );
        let vcpu = &msg.inventories[0];
        assert_eq!(
            (
                vcpu.resource_class.as_str(),
                vcpu.total,
                vcpu.max_unit,
                vcpu.allocation_ratio
            ),
            ("VCPU", 8, 8, 4.0)
        );
        assert_eq!(msg.inventories[1].reserved, 512);
        assert_eq!(msg.inventories.len(), 3);
        let no_az = Registration {
            availability_zone: None,
            ..reg
        };
        assert_eq!(
            no_az
                .to_register(&[], Duration::from_secs(10), "v")
                .availability_zone,
            ""
        );
    }

    #[test]
    fn display_lists_every_class_with_capacity() {
        let reg = Registration {
            name: "host-1".into(),
            availability_zone: None,
            traits: vec!["CUSTOM_SSD".into()],
            node: node(8, 16384, 100),
            inventories: inventories(&node(8, 16384, 100), &ResourcePolicy::default()).unwrap(),
            live_migration: false,
        };
        let text = reg.to_string();
        assert!(text.contains("node host-1"));
        assert!(text.contains("CUSTOM_SSD"));
        assert!(text.contains("(engine default)"));
        let vcpu_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("VCPU"))
            .unwrap();
        assert!(vcpu_line.trim_end().ends_with(" 32"), "{vcpu_line}");
        let mem_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("MEMORY_MB"))
            .unwrap();
        assert!(mem_line.trim_end().ends_with(" 15872"), "{mem_line}");
    }
}
