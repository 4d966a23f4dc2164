//! Wire ↔ engine conversions. Everything from the wire is parsed here with errors that name
//! the field; nothing is trusted (no `unwrap` on request data).

use std::collections::BTreeMap;
use std::collections::HashMap;

use berth_proto::v1 as pb;
use tonic::Status;
use uuid::Uuid;

use super::status::invalid;
use crate::model::{Allocation, Inventory, MAX_AMOUNT, ProviderInfo, RequestSpec};
use crate::scheduler::Selection;

/// Parses a required uuid field.
pub fn uuid(field: &str, s: &str) -> Result<Uuid, Status> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|e| invalid(field, format!("{s:?} is not a uuid ({e})")))
}

/// Parses an optional uuid field (empty = absent).
pub fn opt_uuid(field: &str, s: &str) -> Result<Option<Uuid>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        uuid(field, s).map(Some)
    }
}

/// Empty string = absent.
pub fn opt_str(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// A wire inventory, with Placement's defaults for unset (zero) fields.
pub fn inventory(inv: &pb::Inventory) -> (String, Inventory) {
    let d = Inventory::new(inv.total);
    (
        inv.resource_class.clone(),
        Inventory {
            total: inv.total,
            reserved: inv.reserved,
            min_unit: if inv.min_unit == 0 {
                d.min_unit
            } else {
                inv.min_unit
            },
            // Placement's INVENTORY_DEFAULTS: max_unit is MAX_INT (2^31 - 1), not total.
            max_unit: if inv.max_unit == 0 {
                d.max_unit
            } else {
                inv.max_unit
            },
            step_size: if inv.step_size == 0 {
                d.step_size
            } else {
                inv.step_size
            },
            allocation_ratio: if inv.allocation_ratio == 0.0 {
                1.0
            } else {
                inv.allocation_ratio
            },
        },
    )
}

/// An engine inventory on the wire.
pub fn inventory_pb(class: &str, inv: &Inventory) -> pb::Inventory {
    pb::Inventory {
        resource_class: class.to_string(),
        total: inv.total,
        reserved: inv.reserved,
        min_unit: inv.min_unit,
        max_unit: inv.max_unit,
        step_size: inv.step_size,
        allocation_ratio: inv.allocation_ratio,
    }
}

/// A provider's usages sorted by resource class name, as the contract lists them (the
/// engine keeps standard classes first).
fn sorted_usages(info: &ProviderInfo) -> Vec<&crate::model::ProviderUsage> {
    let mut v: Vec<_> = info.usages.iter().collect();
    v.sort_by(|a, b| a.class.cmp(&b.class));
    v
}

/// A provider's inventories on the wire, sorted by resource class.
pub fn inventories_pb(info: &ProviderInfo) -> Vec<pb::Inventory> {
    sorted_usages(info)
        .into_iter()
        .map(|u| inventory_pb(&u.class, &u.inventory))
        .collect()
}

/// Provider usages on the wire, sorted by resource class.
pub fn usages_pb(info: &ProviderInfo) -> Vec<pb::ProviderUsage> {
    sorted_usages(info)
        .into_iter()
        .map(|u| pb::ProviderUsage {
            resource_class: u.class.clone(),
            used: u.used,
            capacity: u.capacity,
            total: u.inventory.total,
            reserved: u.inventory.reserved,
            allocation_ratio: u.inventory.allocation_ratio,
        })
        .collect()
}

/// A provider on the wire.
pub fn provider_pb(info: ProviderInfo) -> pb::ResourceProvider {
    pb::ResourceProvider {
        uuid: info.uuid.to_string(),
        name: info.name.clone(),
        generation: info.generation,
        availability_zone: info.availability_zone.clone(),
        traits: info.traits.clone(),
        aggregates: info.aggregates.clone(),
        inventories: inventories_pb(&info),
        usages: usages_pb(&info),
        up: info.up,
        disabled: info.disabled,
        instances: info.instances,
        capabilities: info.capabilities.into_iter().collect(),
        arch: info.arch.unwrap_or_default(),
        hypervisor_type: info.hypervisor_type.unwrap_or_default(),
        hypervisor_version: info.hypervisor_version.unwrap_or_default(),
    }
}

/// `(class, amount)` pairs from the wire, amounts checked.
pub fn amounts(field: &str, v: &[pb::ResourceAmount]) -> Result<Vec<(String, u64)>, Status> {
    v.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.amount > MAX_AMOUNT {
                return Err(invalid(
                    &format!("{field}[{i}].amount"),
                    format!("{} exceeds {MAX_AMOUNT}", r.amount),
                ));
            }
            Ok((r.resource_class.clone(), r.amount))
        })
        .collect()
}

/// Allocations from the wire.
pub fn allocations(field: &str, v: &[pb::Allocation]) -> Result<Vec<Allocation>, Status> {
    v.iter()
        .enumerate()
        .map(|(i, a)| {
            let f = format!("{field}[{i}]");
            Ok(Allocation {
                provider: uuid(&format!("{f}.provider_uuid"), &a.provider_uuid)?,
                resources: amounts(&format!("{f}.resources"), &a.resources)?,
            })
        })
        .collect()
}

/// Allocations on the wire.
pub fn allocations_pb(v: &[Allocation]) -> Vec<pb::Allocation> {
    v.iter()
        .map(|a| pb::Allocation {
            provider_uuid: a.provider.to_string(),
            resources: a
                .resources
                .iter()
                .map(|(c, n)| pb::ResourceAmount {
                    resource_class: c.clone(),
                    amount: *n,
                })
                .collect(),
        })
        .collect()
}

/// A request spec from the wire.
pub fn request_spec(spec: Option<pb::RequestSpec>) -> Result<RequestSpec, Status> {
    let s = spec.ok_or_else(|| invalid("spec", "is required"))?;
    // The contract: with instance_uuids, num_instances is 0 (meaning their number) or equal
    // to their number.
    let num_instances = match (s.num_instances, s.instance_uuids.len()) {
        (n, 0) => n,
        (0, k) => u32::try_from(k).unwrap_or(u32::MAX),
        (n, k) if n as usize == k => n,
        (n, k) => {
            return Err(invalid(
                "spec.num_instances",
                format!("is {n} but {k} instance_uuids are given; it must be 0 or {k}"),
            ));
        }
    };
    let uuids = |field: &str, v: &[String]| -> Result<Vec<Uuid>, Status> {
        v.iter()
            .enumerate()
            .map(|(i, u)| uuid(&format!("spec.{field}[{i}]"), u))
            .collect()
    };
    Ok(RequestSpec {
        flavor: s.flavor.filter(|f| !f.is_empty()),
        resources: amounts("spec.resources", &s.resources)?,
        required_traits: s.required_traits,
        forbidden_traits: s.forbidden_traits,
        member_of: s.member_of.into_iter().map(|m| m.aggregates).collect(),
        forbidden_aggregates: s.forbidden_aggregates,
        availability_zone: opt_str(s.availability_zone),
        group: opt_str(s.group),
        image: opt_str(s.image),
        num_instances,
        instance_uuids: uuids("instance_uuids", &s.instance_uuids)?,
        ignore_hosts: s.ignore_hosts,
        force_hosts: s.force_hosts,
        same_host: uuids("same_host", &s.same_host)?,
        different_host: uuids("different_host", &s.different_host)?,
        project_id: s.project_id,
        user_id: s.user_id,
    })
}

/// A uuid in its hyphenated lower-case form (as `to_string`, without the formatter).
pub fn uuid_string(u: &Uuid) -> String {
    u.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

fn alloc_one(provider: &str, resources: &[(String, u64)]) -> Vec<pb::Allocation> {
    vec![pb::Allocation {
        provider_uuid: provider.to_owned(),
        resources: resources
            .iter()
            .map(|(c, n)| pb::ResourceAmount {
                resource_class: c.clone(),
                amount: *n,
            })
            .collect(),
    }]
}

/// A selection on the wire (alternates carry the same resources, unclaimed).
pub fn selection_pb(s: Selection) -> pb::Selection {
    let host_uuid = uuid_string(&s.host.uuid);
    pb::Selection {
        consumer_uuid: uuid_string(&s.consumer),
        allocations: alloc_one(&host_uuid, &s.allocations),
        alternates: s
            .alternates
            .into_iter()
            .map(|a| {
                let host_uuid = uuid_string(&a.uuid);
                pb::Alternate {
                    allocations: alloc_one(&host_uuid, &s.allocations),
                    host_uuid,
                    host_name: a.name,
                }
            })
            .collect(),
        host_uuid,
        host_name: s.host.name,
        weight: s.weight,
    }
}

/// A wire map as an ordered map.
pub fn btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}
