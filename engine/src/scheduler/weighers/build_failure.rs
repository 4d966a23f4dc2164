//! `BuildFailure`: hosts where builds recently failed weigh less, strongly (Nova's default
//! multiplier 1,000,000 outweighs every other weigher), so a broken host stops attracting
//! builds until one succeeds there.

use super::{Weigher, gather_counter, uniform_counter};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct BuildFailure(pub f64);

impl Weigher for BuildFailure {
    fn name(&self) -> &'static str {
        "BuildFailure"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        gather_counter(&s.failures, slots, out, |n| -(n as f64));
    }
    fn uniform(&self, _: &RequestContext, s: &Shard) -> Option<f64> {
        uniform_counter(&s.failures, |n| -(n as f64))
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Inventory;
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn a_failing_host_loses_to_an_otherwise_worse_host() {
        let mut cloud = TestCloud::new();
        let big = cloud.host(host("big").inventory("MEMORY_MB", Inventory::new(65536)));
        let small = cloud.host(host("small"));
        assert_eq!(cloud.ranking(&spec()), vec!["big", "small"]);
        // (failures on big, failures on small, best)
        for (fb, fs, best) in [
            (1, 0, "small"),
            (2, 1, "small"),
            (1, 1, "big"),
            (1, 2, "big"),
        ] {
            cloud.engine.clear_build_failures(&big).unwrap();
            cloud.engine.clear_build_failures(&small).unwrap();
            for _ in 0..fb {
                cloud.engine.record_build_failure(&big).unwrap();
            }
            for _ in 0..fs {
                cloud.engine.record_build_failure(&small).unwrap();
            }
            assert_eq!(cloud.engine.get_provider(&big).unwrap().failed_builds, fb);
            let e = cloud.explain(&spec());
            assert_eq!(e.ranked[0].host.name, best, "big {fb} small {fs}");
            let bf: Vec<f64> = e
                .ranked
                .iter()
                .map(|r| {
                    r.contributions
                        .iter()
                        .find(|c| c.weigher == "BuildFailure")
                        .map_or(0.0, |c| c.weighted)
                })
                .collect();
            if fb == fs {
                assert_eq!(bf, vec![0.0, 0.0]);
            } else {
                assert_eq!(
                    bf,
                    vec![1_000_000.0, 0.0],
                    "the better host gets the full multiplier"
                );
            }
        }
        cloud.engine.clear_build_failures(&small).unwrap();
        cloud.engine.record_build_failure(&big).unwrap();
        assert_eq!(cloud.place(&spec())[0].host.name, "small");
        cloud.engine.clear_build_failures(&big).unwrap();
        assert_eq!(cloud.place(&spec())[0].host.name, "big");
    }
}
