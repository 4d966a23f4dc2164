//! Cloud-wide totals for the operator surface (metrics, `berth usage`).

use super::Engine;
use super::shard::{DISABLED, NSTD, UP};
use crate::model::STANDARD_CLASSES;

/// Hosts by state and capacity/usage per class, summed over the cloud.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudSummary {
    /// Hosts up and enabled.
    pub hosts_up: u64,
    /// Hosts down (no heartbeat).
    pub hosts_down: u64,
    /// Hosts up but disabled.
    pub hosts_disabled: u64,
    /// Consumers holding allocations.
    pub consumers: u64,
    /// `(class, capacity, used)` per class that any host has.
    pub classes: Vec<(String, u64, u64)>,
}

impl Engine {
    /// Sums over every shard (one read lock at a time).
    pub fn cloud_summary(&self) -> CloudSummary {
        let mut s = CloudSummary {
            consumers: self.consumers.len() as u64,
            ..Default::default()
        };
        let mut std = [(0u64, 0u64); NSTD];
        let mut custom: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
        for shard in self.shards.iter() {
            let sh = shard.read();
            for i in 0..sh.slots() {
                if !sh.is_present(i) {
                    continue;
                }
                match (sh.flags[i] & UP != 0, sh.flags[i] & DISABLED != 0) {
                    (false, _) => s.hosts_down += 1,
                    (true, true) => s.hosts_disabled += 1,
                    (true, false) => s.hosts_up += 1,
                }
                for (c, acc) in std.iter_mut().enumerate() {
                    if let Some(inv) = sh.inv[c][i] {
                        acc.0 += inv.capacity();
                        acc.1 += sh.used[c][i];
                    }
                }
                for ci in &sh.custom[i] {
                    let e = custom.entry(ci.class.0).or_default();
                    e.0 += ci.inv.capacity();
                    e.1 += ci.used;
                }
            }
        }
        for (c, (cap, used)) in std.iter().enumerate() {
            if *cap > 0 || *used > 0 {
                s.classes
                    .push((STANDARD_CLASSES[c].to_string(), *cap, *used));
            }
        }
        let names = self.classes.read();
        for (id, (cap, used)) in custom {
            s.classes.push((names.name(id).to_string(), cap, used));
        }
        s
    }
}
