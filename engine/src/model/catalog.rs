//! Flavors, images and server groups: what requests refer to by name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::{MAX_AMOUNT, validate_class_name, validate_name, validate_trait};
use crate::error::{EngineError, Result};

/// A new flavor.
#[derive(Debug, Clone, Default)]
pub struct FlavorSpec {
    /// Flavor id; the name is used when `None`.
    pub id: Option<String>,
    /// Unique name (`m1.small`).
    pub name: String,
    /// Virtual CPUs (VCPU, or PCPU with `hw:cpu_policy=dedicated`).
    pub vcpus: u64,
    /// RAM in MiB.
    pub ram_mb: u64,
    /// Root disk in GiB.
    pub disk_gb: u64,
    /// Extra specs: `resources:CLASS=N` (0 removes a class), `trait:NAME=required|forbidden`,
    /// `capabilities:KEY=OP VALUE`, `aggregate_instance_extra_specs:KEY=VALUE` (or unscoped
    /// `KEY=VALUE`), `hw:cpu_policy=dedicated|shared`.
    pub extra_specs: BTreeMap<String, String>,
}

/// A validated flavor with its extra specs parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u64,
    /// RAM in MiB.
    pub ram_mb: u64,
    /// Disk in GiB.
    pub disk_gb: u64,
    /// Extra specs as given.
    pub extra_specs: BTreeMap<String, String>,
    /// Effective resources per instance (class name, amount), after `resources:*` overrides.
    pub resources: Vec<(String, u64)>,
    /// `trait:*=required`.
    pub required_traits: Vec<String>,
    /// `trait:*=forbidden`.
    pub forbidden_traits: Vec<String>,
    /// `capabilities:KEY` → expression.
    pub capabilities: Vec<(String, String)>,
    /// Aggregate metadata requirements (scoped or unscoped) → expression.
    pub aggregate_specs: Vec<(String, String)>,
}

impl FlavorSpec {
    /// Validates and parses the extra specs.
    pub fn into_flavor(self) -> Result<Flavor> {
        validate_name("name", &self.name)?;
        let id = self.id.clone().unwrap_or_else(|| self.name.clone());
        validate_name("id", &id)?;
        for (field, v) in [
            ("vcpus", self.vcpus),
            ("ram_mb", self.ram_mb),
            ("disk_gb", self.disk_gb),
        ] {
            if v > MAX_AMOUNT {
                return Err(EngineError::invalid(
                    field,
                    format!("{v} exceeds the maximum {MAX_AMOUNT}"),
                ));
            }
        }
        if self.vcpus == 0 {
            return Err(EngineError::invalid("vcpus", "must be at least 1"));
        }
        if self.ram_mb == 0 {
            return Err(EngineError::invalid("ram_mb", "must be at least 1"));
        }
        let dedicated = match self.extra_specs.get("hw:cpu_policy").map(String::as_str) {
            None | Some("shared") => false,
            Some("dedicated") => true,
            Some(other) => {
                return Err(EngineError::invalid(
                    "extra_specs[hw:cpu_policy]",
                    format!("{other:?} must be dedicated or shared"),
                ));
            }
        };
        let mut resources: BTreeMap<String, u64> = BTreeMap::new();
        resources.insert(if dedicated { "PCPU" } else { "VCPU" }.into(), self.vcpus);
        resources.insert("MEMORY_MB".into(), self.ram_mb);
        if self.disk_gb > 0 {
            resources.insert("DISK_GB".into(), self.disk_gb);
        }
        let mut required_traits = Vec::new();
        let mut forbidden_traits = Vec::new();
        let mut capabilities = Vec::new();
        let mut aggregate_specs = Vec::new();
        for (key, value) in &self.extra_specs {
            let field = format!("extra_specs[{key}]");
            if key.len() > 255 || value.len() > 255 {
                return Err(EngineError::invalid(
                    field,
                    "keys and values are at most 255 bytes",
                ));
            }
            if let Some(class) = key.strip_prefix("resources:") {
                validate_class_name(&field, class)?;
                let n: u64 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_AMOUNT)
                    .ok_or_else(|| {
                        EngineError::invalid(
                            &field,
                            format!("{value:?} is not an amount in 0..={MAX_AMOUNT}"),
                        )
                    })?;
                if n == 0 {
                    resources.remove(class);
                } else {
                    resources.insert(class.to_string(), n);
                }
            } else if let Some(t) = key.strip_prefix("trait:") {
                validate_trait(&field, t)?;
                match value.as_str() {
                    "required" => required_traits.push(t.to_string()),
                    "forbidden" => forbidden_traits.push(t.to_string()),
                    other => {
                        return Err(EngineError::invalid(
                            field,
                            format!("{other:?} must be required or forbidden"),
                        ));
                    }
                }
            } else if let Some(cap) = key.strip_prefix("capabilities:") {
                crate::scheduler::extra_specs_ops::parse(value)
                    .map_err(|e| EngineError::invalid(&field, e))?;
                capabilities.push((cap.to_string(), value.clone()));
            } else if let Some(k) = key.strip_prefix("aggregate_instance_extra_specs:") {
                crate::scheduler::extra_specs_ops::parse(value)
                    .map_err(|e| EngineError::invalid(&field, e))?;
                aggregate_specs.push((k.to_string(), value.clone()));
            } else if !key.contains(':') {
                crate::scheduler::extra_specs_ops::parse(value)
                    .map_err(|e| EngineError::invalid(&field, e))?;
                aggregate_specs.push((key.clone(), value.clone()));
            }
            // Other scoped keys (hw:*, quota:*, …) belong to the hypervisor, not to placement.
        }
        if let Some(t) = required_traits
            .iter()
            .find(|t| forbidden_traits.contains(t))
        {
            return Err(EngineError::invalid(
                "extra_specs",
                format!("trait {t} is both required and forbidden"),
            ));
        }
        Ok(Flavor {
            id,
            name: self.name,
            vcpus: self.vcpus,
            ram_mb: self.ram_mb,
            disk_gb: self.disk_gb,
            extra_specs: self.extra_specs,
            resources: resources.into_iter().collect(),
            required_traits,
            forbidden_traits,
            capabilities,
            aggregate_specs,
        })
    }
}

/// A new image (only the properties placement looks at matter to the engine).
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Image id; generated when `None`.
    pub id: Option<Uuid>,
    /// Unique name.
    pub name: String,
    /// Properties: `hw_architecture`, `img_hv_type`, `img_hv_requested_version` (e.g.
    /// `>=6.0`), `trait:NAME=required|forbidden`; others are kept and ignored.
    pub properties: BTreeMap<String, String>,
}

/// A validated image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// All properties as given.
    pub properties: BTreeMap<String, String>,
    /// `hw_architecture`.
    pub arch: Option<String>,
    /// `img_hv_type`.
    pub hypervisor_type: Option<String>,
    /// `img_hv_requested_version`, parsed: the comparison and the version.
    pub hypervisor_version: Option<(String, String)>,
    /// `trait:*=required`.
    pub required_traits: Vec<String>,
    /// `trait:*=forbidden`.
    pub forbidden_traits: Vec<String>,
}

impl ImageSpec {
    /// Validates the properties placement uses.
    pub fn into_image(self) -> Result<Image> {
        validate_name("name", &self.name)?;
        let mut required_traits = Vec::new();
        let mut forbidden_traits = Vec::new();
        for (key, value) in &self.properties {
            let field = format!("properties[{key}]");
            if key.len() > 255 || value.len() > 255 {
                return Err(EngineError::invalid(
                    field,
                    "keys and values are at most 255 bytes",
                ));
            }
            if let Some(t) = key.strip_prefix("trait:") {
                validate_trait(&field, t)?;
                match value.as_str() {
                    "required" => required_traits.push(t.to_string()),
                    "forbidden" => forbidden_traits.push(t.to_string()),
                    other => {
                        return Err(EngineError::invalid(
                            field,
                            format!("{other:?} must be required or forbidden"),
                        ));
                    }
                }
            }
        }
        let hypervisor_version = match self.properties.get("img_hv_requested_version") {
            None => None,
            Some(v) => Some(
                parse_version_requirement(v)
                    .map_err(|e| EngineError::invalid("properties[img_hv_requested_version]", e))?,
            ),
        };
        Ok(Image {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            arch: self.properties.get("hw_architecture").cloned(),
            hypervisor_type: self.properties.get("img_hv_type").cloned(),
            hypervisor_version,
            required_traits,
            forbidden_traits,
            name: self.name,
            properties: self.properties,
        })
    }
}

/// Splits `">=6.0"` into (`>=`, `6.0`); a bare version means `>=`.
fn parse_version_requirement(v: &str) -> std::result::Result<(String, String), String> {
    let v = v.trim();
    let (op, ver) = ["<=", ">=", "==", "!=", "<", ">", "="]
        .iter()
        .find_map(|op| v.strip_prefix(op).map(|rest| (*op, rest.trim())))
        .unwrap_or((">=", v));
    crate::scheduler::extra_specs_ops::parse_version(ver)
        .ok_or_else(|| format!("{v:?} is not a version requirement like >=6.0.0"))?;
    Ok((op.to_string(), ver.to_string()))
}

/// A server group's placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupPolicy {
    /// All members on one host (hard).
    Affinity,
    /// At most `max_server_per_host` members per host (hard).
    AntiAffinity,
    /// Prefer hosts with members (a weigher).
    SoftAffinity,
    /// Prefer hosts without members (a weigher).
    SoftAntiAffinity,
}

impl GroupPolicy {
    /// Nova's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affinity => "affinity",
            Self::AntiAffinity => "anti-affinity",
            Self::SoftAffinity => "soft-affinity",
            Self::SoftAntiAffinity => "soft-anti-affinity",
        }
    }
}

impl fmt::Display for GroupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupPolicy {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "affinity" => Self::Affinity,
            "anti-affinity" => Self::AntiAffinity,
            "soft-affinity" => Self::SoftAffinity,
            "soft-anti-affinity" => Self::SoftAntiAffinity,
            other => {
                return Err(EngineError::invalid(
                    "policy",
                    format!(
                        "{other:?} must be affinity, anti-affinity, soft-affinity or soft-anti-affinity"
                    ),
                ));
            }
        })
    }
}

/// A new server group.
#[derive(Debug, Clone)]
pub struct ServerGroupSpec {
    /// Id; generated when `None`.
    pub id: Option<Uuid>,
    /// Name (unique within the engine).
    pub name: String,
    /// Policy.
    pub policy: GroupPolicy,
    /// Rule `max_server_per_host`, anti-affinity only (default 1).
    pub max_server_per_host: Option<u32>,
    /// Owning project.
    pub project_id: String,
}

/// A server group as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerGroup {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Policy.
    pub policy: GroupPolicy,
    /// Effective `max_server_per_host` (1 unless set; only anti-affinity uses it).
    pub max_server_per_host: u32,
    /// Owning project.
    pub project_id: String,
    /// Member consumers, sorted.
    pub members: Vec<Uuid>,
    /// Hosts with members and how many, sorted by host name.
    pub hosts: Vec<(String, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(specs: &[(&str, &str)]) -> Result<Flavor> {
        FlavorSpec {
            id: None,
            name: "f".into(),
            vcpus: 2,
            ram_mb: 2048,
            disk_gb: 20,
            extra_specs: specs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
        .into_flavor()
    }

    #[test]
    fn flavor_resources_and_overrides() {
        let f = flavor(&[("resources:CUSTOM_GPU", "1"), ("resources:DISK_GB", "0")]).unwrap();
        assert_eq!(
            f.resources,
            vec![
                ("CUSTOM_GPU".into(), 1),
                ("MEMORY_MB".into(), 2048),
                ("VCPU".into(), 2)
            ]
        );
        let d = flavor(&[("hw:cpu_policy", "dedicated")]).unwrap();
        assert!(d.resources.contains(&("PCPU".into(), 2)));
        assert!(!d.resources.iter().any(|(c, _)| c == "VCPU"));
    }

    #[test]
    fn flavor_traits_caps_and_aggregate_specs() {
        let f = flavor(&[
            ("trait:HW_CPU_X86_AVX2", "required"),
            ("trait:CUSTOM_SLOW", "forbidden"),
            ("capabilities:cpu_info:vendor", "s== Intel"),
            ("aggregate_instance_extra_specs:ssd", "true"),
            ("pinned", "yes"),
            ("hw:mem_page_size", "large"),
        ])
        .unwrap();
        assert_eq!(f.required_traits, vec!["HW_CPU_X86_AVX2"]);
        assert_eq!(f.forbidden_traits, vec!["CUSTOM_SLOW"]);
        assert_eq!(
            f.capabilities,
            vec![("cpu_info:vendor".to_string(), "s== Intel".to_string())]
        );
        assert_eq!(f.aggregate_specs.len(), 2);
    }

    #[test]
    fn flavor_errors_name_the_spec() {
        for (specs, field) in [
            (vec![("resources:GPU", "1")], "extra_specs[resources:GPU]"),
            (
                vec![("resources:VCPU", "-1")],
                "extra_specs[resources:VCPU]",
            ),
            (vec![("trait:HW_X", "maybe")], "extra_specs[trait:HW_X]"),
            (
                vec![("hw:cpu_policy", "mixed")],
                "extra_specs[hw:cpu_policy]",
            ),
            (vec![("trait:A", "required"), ("trait:A2", "forbidden")], ""),
        ] {
            match flavor(&specs) {
                Err(EngineError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                Ok(_) if field.is_empty() => {}
                other => panic!("{specs:?}: {other:?}"),
            }
        }
        let bad = FlavorSpec {
            name: "x".into(),
            vcpus: 0,
            ram_mb: 1,
            ..Default::default()
        };
        assert!(
            matches!(bad.into_flavor(), Err(EngineError::InvalidArgument { field, .. }) if field == "vcpus")
        );
    }

    #[test]
    fn image_properties() {
        let img = ImageSpec {
            id: None,
            name: "cirros".into(),
            properties: [
                ("hw_architecture", "x86_64"),
                ("img_hv_requested_version", ">=6.0"),
                ("trait:CUSTOM_X", "required"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
        .into_image()
        .unwrap();
        assert_eq!(img.arch.as_deref(), Some("x86_64"));
        assert_eq!(img.hypervisor_version, Some((">=".into(), "6.0".into())));
        assert_eq!(img.required_traits, vec!["CUSTOM_X"]);
        let bad = ImageSpec {
            name: "x".into(),
            properties: [(
                "img_hv_requested_version".to_string(),
                ">=banana".to_string(),
            )]
            .into(),
            ..Default::default()
        };
        assert!(bad.into_image().is_err());
    }

    #[test]
    fn group_policy_round_trip() {
        for p in [
            "affinity",
            "anti-affinity",
            "soft-affinity",
            "soft-anti-affinity",
        ] {
            assert_eq!(p.parse::<GroupPolicy>().unwrap().as_str(), p);
        }
        assert!("spread".parse::<GroupPolicy>().is_err());
    }
}
