//! Server groups: policy, members and where they run. Each group has its own mutex (see
//! the lock order in `state`), taken by claims of members so the constraint re-check and
//! the claim are one atomic step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use smallvec::SmallVec;
use uuid::Uuid;

use super::{Engine, HostRef};
use crate::error::{EngineError, Result};
use crate::model::{GroupPolicy, ServerGroup, ServerGroupSpec, parse_uuid, validate_name};
use crate::store::record::Change;

/// A group's live state.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub id: Uuid,
    pub name: String,
    pub policy: GroupPolicy,
    pub max_per_host: u32,
    pub project: String,
    /// member consumer → hosts it holds allocations on (two during a move).
    pub members: BTreeMap<Uuid, SmallVec<[HostRef; 2]>>,
    /// host → members on it.
    pub hosts: HashMap<HostRef, u32>,
}

impl GroupState {
    /// Members on `host`.
    pub fn count(&self, host: HostRef) -> u32 {
        self.hosts.get(&host).copied().unwrap_or(0)
    }

    /// Records that `consumer` now also holds `host`.
    pub fn add_host(&mut self, consumer: Uuid, host: HostRef) {
        let hosts = self.members.entry(consumer).or_default();
        if !hosts.contains(&host) {
            hosts.push(host);
            *self.hosts.entry(host).or_default() += 1;
        }
    }

    /// Records that `consumer` no longer holds `host`.
    pub fn remove_host(&mut self, consumer: &Uuid, host: HostRef) {
        if let Some(hosts) = self.members.get_mut(consumer)
            && let Some(p) = hosts.iter().position(|h| *h == host)
        {
            hosts.swap_remove(p);
            if let Some(n) = self.hosts.get_mut(&host) {
                *n -= 1;
                if *n == 0 {
                    self.hosts.remove(&host);
                }
            }
        }
    }

    /// Drops `consumer` from the group entirely.
    pub fn forget(&mut self, consumer: &Uuid) {
        if let Some(hosts) = self.members.remove(consumer) {
            for h in hosts {
                if let Some(n) = self.hosts.get_mut(&h) {
                    *n -= 1;
                    if *n == 0 {
                        self.hosts.remove(&h);
                    }
                }
            }
        }
    }
}

impl Engine {
    /// Finds a group by uuid or name.
    pub(crate) fn find_group(&self, id_or_name: &str) -> Result<Arc<Mutex<GroupState>>> {
        let id = match Uuid::parse_str(id_or_name) {
            Ok(u) => u,
            Err(_) => *self
                .group_names
                .get(id_or_name)
                .ok_or_else(|| EngineError::not_found("server group", id_or_name))?,
        };
        self.groups
            .get(&id)
            .map(|g| g.clone())
            .ok_or_else(|| EngineError::not_found("server group", id_or_name))
    }

    /// Creates a server group. `max_server_per_host` is only valid for anti-affinity.
    pub fn create_group(&self, spec: ServerGroupSpec) -> Result<ServerGroup> {
        self.writable()?;
        validate_name("name", &spec.name)?;
        validate_name("project_id", &spec.project_id)?;
        if parse_uuid("name", &spec.name).is_ok() {
            return Err(EngineError::invalid(
                "name",
                "a group name must not look like a uuid",
            ));
        }
        let max_per_host = match (spec.policy, spec.max_server_per_host) {
            (_, None) => 1,
            (GroupPolicy::AntiAffinity, Some(n)) if n >= 1 => n,
            (GroupPolicy::AntiAffinity, Some(_)) => {
                return Err(EngineError::invalid(
                    "max_server_per_host",
                    "must be at least 1",
                ));
            }
            (p, Some(_)) => {
                return Err(EngineError::invalid(
                    "max_server_per_host",
                    format!("only applies to anti-affinity groups, not {p}"),
                ));
            }
        };
        let id = spec.id.unwrap_or_else(Uuid::new_v4);
        match self.group_names.entry(spec.name.clone()) {
            Entry::Occupied(_) => {
                return Err(EngineError::exists("server group named", &spec.name));
            }
            Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        match self.groups.entry(id) {
            Entry::Occupied(_) => {
                self.group_names.remove(&spec.name);
                Err(EngineError::exists("server group", id))
            }
            Entry::Vacant(v) => {
                let g = GroupState {
                    id,
                    name: spec.name,
                    policy: spec.policy,
                    max_per_host,
                    project: spec.project_id,
                    members: BTreeMap::new(),
                    hosts: HashMap::new(),
                };
                let view = self.group_view(&g);
                self.log(|| Change::Group(Self::group_rec(&g)));
                v.insert(Arc::new(Mutex::new(g)));
                Ok(view)
            }
        }
    }

    pub(crate) fn group_view(&self, g: &GroupState) -> ServerGroup {
        let mut hosts: Vec<(String, u32)> = g
            .hosts
            .iter()
            .map(|(h, n)| {
                (
                    self.shards[h.shard as usize].read().name[h.slot as usize].to_string(),
                    *n,
                )
            })
            .collect();
        hosts.sort();
        ServerGroup {
            id: g.id,
            name: g.name.clone(),
            policy: g.policy,
            max_server_per_host: g.max_per_host,
            project_id: g.project.clone(),
            members: g.members.keys().copied().collect(),
            hosts,
        }
    }

    /// A group by uuid or name.
    pub fn get_group(&self, id_or_name: &str) -> Result<ServerGroup> {
        let g = self.find_group(id_or_name)?;
        let g = g.lock();
        Ok(self.group_view(&g))
    }

    /// Every group, sorted by name.
    pub fn list_groups(&self) -> Vec<ServerGroup> {
        let all: Vec<_> = self.groups.iter().map(|g| g.value().clone()).collect();
        let mut v: Vec<ServerGroup> = all.iter().map(|g| self.group_view(&g.lock())).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deletes a group; `FailedPrecondition` while it has members.
    pub fn delete_group(&self, id_or_name: &str) -> Result<()> {
        self.writable()?;
        let g = self.find_group(id_or_name)?;
        let g = g.lock();
        if !g.members.is_empty() {
            return Err(EngineError::FailedPrecondition(format!(
                "server group {} has {} member(s); delete or release them first",
                g.name,
                g.members.len()
            )));
        }
        self.log(|| Change::GroupDeleted(g.id.as_bytes().to_vec()));
        self.groups.remove(&g.id);
        self.group_names.remove(&g.name);
        Ok(())
    }
}
