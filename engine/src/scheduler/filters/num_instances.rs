//! `NumInstances`: a host already running `max_instances_per_host` consumers takes no more.

use super::{Filter, Reason, Rejections, retain_below};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct NumInstances {
    /// `max_instances_per_host`.
    pub max: u32,
}

impl Filter for NumInstances {
    fn name(&self) -> &'static str {
        "NumInstances"
    }
    fn active(&self, _: &RequestContext) -> bool {
        true
    }
    fn filter(
        &self,
        _: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        retain_below(
            alive,
            &s.instances[..s.slots()],
            self.max,
            Reason::Filter(self.name()),
            rej,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn at_most_max_instances() {
        // (max_instances_per_host, instances already there, passes)
        let cases: &[(u32, u32, bool)] = &[
            (2, 0, true),
            (2, 1, true),
            (2, 2, false),
            (2, 3, false),
            (1, 0, true),
            (1, 1, false),
            (50, 49, true),
        ];
        for &(max, existing, pass) in cases {
            let mut cloud = TestCloud::with_scheduler(|s| s.max_instances_per_host = max);
            let h = cloud.host(host("h"));
            for _ in 0..existing {
                cloud.use_resources(h, &[("MEMORY_MB", 1)]);
            }
            assert_eq!(cloud.engine.get_provider(&h).unwrap().instances, existing);
            let out = cloud.run_filters(&spec());
            assert_eq!(out.passed.len() == 1, pass, "max {max} existing {existing}");
            if !pass {
                assert_eq!(out.rejections, vec![("NumInstances".to_string(), 1)]);
            }
        }
    }

    #[test]
    fn releasing_frees_a_place() {
        let mut cloud = TestCloud::with_scheduler(|s| s.max_instances_per_host = 1);
        cloud.host(host("h"));
        let first = cloud.place(&spec())[0].consumer;
        assert!(cloud.run_filters(&spec()).passed.is_empty());
        cloud.engine.release(&first).unwrap();
        assert_eq!(cloud.run_filters(&spec()).passed, vec!["h"]);
    }
}
