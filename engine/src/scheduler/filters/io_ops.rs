//! `IoOps`: a host with `max_io_ops_per_host` builds, resizes, migrations or snapshots in
//! flight takes no new build (Nova's IoOpsFilter).

use super::{Filter, Reason, Rejections, retain_below};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct IoOps {
    /// `max_io_ops_per_host`.
    pub max: u32,
}

impl Filter for IoOps {
    fn name(&self) -> &'static str {
        "IoOps"
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
            &s.io_ops[..s.slots()],
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
    fn busy_hosts_take_no_builds() {
        // (max_io_ops_per_host, ops started, ops finished, passes)
        let cases: &[(u32, u32, u32, bool)] = &[
            (2, 0, 0, true),
            (2, 1, 0, true),
            (2, 2, 0, false),
            (2, 3, 1, false),
            (2, 3, 2, true),
            (2, 0, 1, true), // finishing more than started saturates at 0
            (8, 7, 0, true),
            (8, 8, 0, false),
        ];
        for &(max, started, finished, pass) in cases {
            let mut cloud = TestCloud::with_scheduler(|s| s.max_io_ops_per_host = max);
            let h = cloud.host(host("h"));
            for _ in 0..started {
                cloud.engine.track_io_op(&h, true).unwrap();
            }
            for _ in 0..finished {
                cloud.engine.track_io_op(&h, false).unwrap();
            }
            assert_eq!(
                cloud.engine.get_provider(&h).unwrap().io_ops,
                started.saturating_sub(finished)
            );
            let out = cloud.run_filters(&spec());
            assert_eq!(
                out.passed.len() == 1,
                pass,
                "max {max} ops +{started} -{finished}"
            );
            if !pass {
                assert_eq!(out.rejections, vec![("IoOps".to_string(), 1)]);
            }
        }
    }
}
