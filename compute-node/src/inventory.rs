//! The node's inventory, as `Register` will send it: libvirt's totals, the operator's
//! reserved amounts and allocation ratios, in Placement's terms.
//!
//! Per class (Nova's rules): `total` is what the host has, `reserved` what the operator keeps
//! for the host itself, `min_unit = step_size = 1`, `max_unit = total` (one instance may not
//! be bigger than the host), and capacity is `floor((total − reserved) × allocation_ratio)`.
//! A class whose total is 0 (no instance disk configured, say) is left out, as Nova does.

use std::fmt;

use crate::error::NodeError;
use crate::hypervisor::NodeInfo;

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
            self.node.hypervisor_version,
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
