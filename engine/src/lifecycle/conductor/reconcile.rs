//! The conductor as [`Reconciler`]: what nodes report corrects the servers.
//!
//! - A registration (a node that connects, or reconnects after a break) lists every domain:
//!   a server placed there whose domain is absent goes to ERROR (`missing`); a domain of a
//!   server that now lives elsewhere — evacuated while the host was down, or deleted while
//!   its node was away — is to be deleted (`to_delete`); other unknown domains are left to
//!   the operator (`orphans`).
//! - A heartbeat updates power states, and for idle servers follows the guest: ACTIVE with
//!   its domain SHUTOFF becomes STOPPED, STOPPED with its domain RUNNING becomes ACTIVE (Nova's
//!   power-state sync). That change waits for a second heartbeat saying the same, so a
//!   heartbeat listed just before an action finished cannot undo the action.
//!
//! Heartbeats are the hot path (every node every few seconds, hundreds of domains each):
//! only the host's own servers are looked at, through the host index, and a server whose
//! reported power state is unchanged costs a lookup and an uncontended lock, no allocation.

use std::collections::{HashMap, HashSet};

use berth_proto::v1 as pb;
use uuid::Uuid;

use super::server::{ServerRecord, now_ms};
use super::{Conductor, Rec, VmState, count, vm_state_name};
use crate::lifecycle::{ReconcileReport, Reconciler};

/// Applies a reported power state; `confirm` asks for a second report before a vm_state
/// change (heartbeats), a registration's fresh listing is trusted at once.
fn sync_power(r: &mut ServerRecord, reported: &str, confirm: bool) {
    if r.server.power_state != reported {
        r.server.power_state.clear();
        r.server.power_state.push_str(reported);
        r.server.updated_at_ms = now_ms();
    }
    if !r.server.idle() {
        r.sync_votes = 0;
        return;
    }
    let to = match (r.server.vm_state, reported) {
        (VmState::Active, "SHUTOFF") => VmState::Stopped,
        (VmState::Stopped, "RUNNING") => VmState::Active,
        _ => {
            r.sync_votes = 0;
            return;
        }
    };
    r.sync_votes = r.sync_votes.saturating_add(1);
    if confirm && r.sync_votes < 2 {
        return;
    }
    r.sync_votes = 0;
    let host = r
        .server
        .host
        .as_ref()
        .map_or_else(String::new, |h| h.name.clone());
    let from = r.server.vm_state;
    r.server.vm_state = to;
    let message = format!(
        "host {host} reports the domain {reported}: vm_state {} → {}",
        vm_state_name(from),
        vm_state_name(to)
    );
    tracing::info!(server = %r.server.uuid, host = %host, "server {}: {message}", r.server.uuid);
    r.note("reconcile", true, message);
    count("reconcile", "ok");
}

impl Conductor {
    fn servers_on(&self, host: &Uuid) -> Vec<Rec> {
        self.by_host
            .get(host)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Reconciler for Conductor {
    fn node_registered(&self, host: Uuid, domains: &[pb::DomainReport]) -> ReconcileReport {
        let host_name = self
            .engine
            .get_provider(&host)
            .map_or_else(|_| host.to_string(), |p| p.name);
        let mut reported: HashMap<Uuid, &str> = HashMap::with_capacity(domains.len());
        for d in domains {
            match Uuid::parse_str(&d.uuid) {
                Ok(u) => {
                    reported.insert(u, d.power_state.as_str());
                }
                Err(_) => {
                    tracing::debug!(host = %host_name, domain = %d.uuid, "host {host_name} reports a domain whose id is not a uuid; not Berth's, left alone");
                }
            }
        }
        let mut report = ReconcileReport::default();
        let mut placed_here: HashSet<Uuid> = HashSet::new();
        // Local deletes this registration settles (logged at the end).
        let mut settled: Vec<Uuid> = Vec::new();
        for rec in self.servers_on(&host) {
            let mut r = rec.lock();
            if r.deleted {
                continue;
            }
            let uuid = r.server.uuid;
            placed_here.insert(uuid);
            if let Some(p) = reported.get(&uuid) {
                sync_power(&mut r, p, false);
                continue;
            }
            if !r.server.idle()
                || matches!(
                    r.server.vm_state,
                    VmState::Building | VmState::ShelvedOffloaded
                )
            {
                continue;
            }
            let fault = format!("domain missing on host {host_name} after it re-registered");
            report.missing.push(uuid);
            if r.server.vm_state == VmState::Error && r.server.fault == fault {
                continue; // flagged by an earlier registration already
            }
            tracing::warn!(server = %uuid, host = %host_name, "server {uuid}: {fault}");
            r.server.vm_state = VmState::Error;
            r.server.power_state.clear();
            r.server.fault.clone_from(&fault);
            r.note("reconcile", false, fault);
            count("reconcile", "failed");
        }
        for uuid in reported.keys().filter(|u| !placed_here.contains(u)) {
            if self
                .local_deleted
                .remove_if(uuid, |_, h| *h == host)
                .is_some()
            {
                report.to_delete.push(*uuid);
                settled.push(*uuid);
                continue;
            }
            let rec = self.servers.get(uuid).map(|r| r.value().clone());
            let Some(rec) = rec else {
                report.orphans.push(*uuid);
                continue;
            };
            let r = rec.lock();
            // Mid-action (a move's destination spawning), being deleted, or the source a
            // RESIZED server keeps for a revert: not ours to remove now.
            let keep = r.deleted
                || !r.server.idle()
                || r.server
                    .resize
                    .as_ref()
                    .is_some_and(|m| m.source.uuid == host);
            if !keep {
                report.to_delete.push(*uuid);
            }
        }
        // Locally deleted servers whose domain this host no longer has: nothing to do.
        self.local_deleted.retain(|u, h| {
            let other = *h != host;
            if !other {
                settled.push(*u);
            }
            other
        });
        if !settled.is_empty() {
            let deleted = self.deleted.lock();
            for u in settled {
                self.log_deleted(&deleted, u);
            }
        }
        report.orphans.sort_unstable();
        report.missing.sort_unstable();
        report.to_delete.sort_unstable();
        if !(report.missing.is_empty() && report.to_delete.is_empty() && report.orphans.is_empty())
        {
            tracing::info!(host = %host_name, missing = report.missing.len(), to_delete = report.to_delete.len(), orphans = report.orphans.len(), "host {host_name} reconciled");
        }
        report
    }

    fn node_heartbeat(&self, host: Uuid, domains: &[pb::DomainReport]) {
        // Pick the reported domains that are this host's servers, under the index's guard
        // (no server lock is taken while it is held).
        let matched: Vec<(Rec, &str)> = {
            let Some(mine) = self.by_host.get(&host) else {
                return;
            };
            domains
                .iter()
                .filter_map(|d| {
                    let u = Uuid::parse_str(&d.uuid).ok()?;
                    mine.get(&u).map(|r| (r.clone(), d.power_state.as_str()))
                })
                .collect()
        };
        for (rec, power) in matched {
            let mut r = rec.lock();
            if r.deleted || r.server.host.as_ref().is_none_or(|h| h.uuid != host) {
                continue;
            }
            sync_power(&mut r, power, true);
        }
    }
}
