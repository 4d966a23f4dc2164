//! `InstanceCount` (consumers on the host; Nova's default multiplier 0 leaves it off, a
//! positive one packs by count) and `IoOps` (operations in flight; the default −1 steers
//! builds away from busy hosts).

use super::{Weigher, gather_counter, uniform_counter};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// Consumers on the host.
pub struct InstanceCount(pub f64);
/// Builds and moves in flight on the host.
pub struct IoOps(pub f64);

impl Weigher for InstanceCount {
    fn name(&self) -> &'static str {
        "InstanceCount"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        gather_counter(&s.instances, slots, out, |n| n as f64);
    }
    fn uniform(&self, _: &RequestContext, s: &Shard) -> Option<f64> {
        uniform_counter(&s.instances, |n| n as f64)
    }
}

impl Weigher for IoOps {
    fn name(&self) -> &'static str {
        "IoOps"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        gather_counter(&s.io_ops, slots, out, |n| n as f64);
    }
    fn uniform(&self, _: &RequestContext, s: &Shard) -> Option<f64> {
        uniform_counter(&s.io_ops, |n| n as f64)
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn instance_count_is_off_by_default_and_packs_or_spreads_when_set() {
        let mut cloud = TestCloud::new();
        let busy = cloud.host(host("busy"));
        cloud.host(host("idle"));
        cloud.use_resources(busy, &[("DISK_GB", 1)]);
        cloud.use_resources(busy, &[("DISK_GB", 1)]);
        let e = cloud.explain(&spec());
        assert!(
            e.ranked
                .iter()
                .all(|r| r.contributions.iter().all(|c| c.weigher != "InstanceCount")),
            "multiplier 0 leaves it out"
        );
        // (multiplier, best host)
        for (m, best) in [(1.0, "busy"), (-1.0, "idle"), (3.0, "busy")] {
            let mut cloud = TestCloud::with_scheduler(|s| {
                s.multipliers = multipliers(&[("instance_count", m)])
            });
            let busy = cloud.host(host("busy"));
            cloud.host(host("idle"));
            cloud.use_resources(busy, &[("DISK_GB", 1)]);
            cloud.use_resources(busy, &[("DISK_GB", 1)]);
            let e = cloud.explain(&spec());
            assert_eq!(e.ranked[0].host.name, best, "× {m}");
            let raw: Vec<f64> = e.ranked.iter().map(|r| r.contributions[0].raw).collect();
            assert_eq!(raw, if m > 0.0 { [2.0, 0.0] } else { [0.0, 2.0] });
            assert_eq!(e.ranked[0].weight, m.max(0.0));
        }
    }

    #[test]
    fn io_ops_default_avoids_busy_hosts() {
        let mut cloud = TestCloud::new();
        let a = cloud.host(host("a"));
        let b = cloud.host(host("b"));
        let c = cloud.host(host("c"));
        for (h, ops) in [(a, 3), (b, 1), (c, 0)] {
            for _ in 0..ops {
                cloud.engine.track_io_op(&h, true).unwrap();
            }
        }
        let e = cloud.explain(&spec());
        let got: Vec<(&str, f64, f64)> = e
            .ranked
            .iter()
            .map(|r| {
                let c = r
                    .contributions
                    .iter()
                    .find(|c| c.weigher == "IoOps")
                    .expect("IoOps weighs by default");
                (r.host.name.as_str(), c.raw, c.weighted)
            })
            .collect();
        assert_eq!(
            got,
            vec![("c", 0.0, -0.0), ("b", 1.0, -1.0 / 3.0), ("a", 3.0, -1.0)]
        );
        assert_eq!(cloud.place(&spec())[0].host.name, "c");
        // Finishing the operations evens it out again.
        for _ in 0..3 {
            cloud.engine.track_io_op(&a, false).unwrap();
        }
        cloud.engine.track_io_op(&b, false).unwrap();
        let e = cloud.explain(&spec());
        let io: Vec<f64> = e
            .ranked
            .iter()
            .flat_map(|r| r.contributions.iter().filter(|c| c.weigher == "IoOps"))
            .map(|c| c.weighted)
            .collect();
        assert!(io.iter().all(|w| *w == 0.0), "{io:?}");
    }
}
