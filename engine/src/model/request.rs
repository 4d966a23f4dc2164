//! The request spec: everything a scheduling request may ask for.

use uuid::Uuid;

use crate::error::{EngineError, Result};

/// A scheduling request, in Nova's terms. Names (flavor, image, group, hosts, traits,
/// aggregates) are resolved and validated when the request is prepared, once.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    /// Flavor id or name; its resources and extra specs apply.
    pub flavor: Option<String>,
    /// Resources per instance `(class, amount)`, added to (or overriding) the flavor's.
    pub resources: Vec<(String, u64)>,
    /// Traits every chosen host must have.
    pub required_traits: Vec<String>,
    /// Traits no chosen host may have.
    pub forbidden_traits: Vec<String>,
    /// `member_of`: the host must be in at least one aggregate of *each* inner list.
    pub member_of: Vec<Vec<String>>,
    /// The host must be in none of these aggregates (`member_of=!in:…`).
    pub forbidden_aggregates: Vec<String>,
    /// Availability zone; any when `None`.
    pub availability_zone: Option<String>,
    /// Server group id or name.
    pub group: Option<String>,
    /// Image id or name.
    pub image: Option<String>,
    /// Instances to place, all or nothing (0 is read as 1).
    pub num_instances: u32,
    /// Consumer uuid per instance; generated where missing.
    pub instance_uuids: Vec<Uuid>,
    /// Hosts (names or uuids) not to use, e.g. those a failed build already tried.
    pub ignore_hosts: Vec<String>,
    /// Only these hosts (names or uuids) may be used.
    pub force_hosts: Vec<String>,
    /// Scheduler hint `same_host`: on a host that runs one of these instances.
    pub same_host: Vec<Uuid>,
    /// Scheduler hint `different_host`: on no host that runs one of these instances.
    pub different_host: Vec<Uuid>,
    /// Project the instances belong to.
    pub project_id: String,
    /// User creating them.
    pub user_id: String,
}

impl RequestSpec {
    /// A request for one instance of `resources`, in project `demo`.
    pub fn resources(resources: &[(&str, u64)]) -> Self {
        Self {
            resources: resources.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            num_instances: 1,
            project_id: "demo".into(),
            user_id: "demo".into(),
            ..Self::default()
        }
    }

    /// Instances requested (at least 1).
    pub fn count(&self) -> u32 {
        self.num_instances.max(1)
    }
}

/// Parses a uuid, naming the field on failure.
pub fn parse_uuid(field: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| EngineError::invalid(field, format!("{s:?} is not a uuid: {e}")))
}
