//! `Compute`: the host must be up (its node daemon heartbeating within `down_after`) and
//! not disabled (`COMPUTE_STATUS_DISABLED`, set by `berth host disable`).

use super::{Filter, Reason, Rejections, retain_by};
use crate::scheduler::context::RequestContext;
use crate::state::shard::{DISABLED, Shard, UP};

/// See the module doc.
pub struct Compute;

impl Filter for Compute {
    fn name(&self) -> &'static str {
        "Compute"
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
        let flags = &s.flags[..s.slots()];
        retain_by(alive, flags, Reason::Filter(self.name()), rej, |f| {
            f & (UP | DISABLED) == UP
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::DISABLED_TRAIT;
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn down_or_disabled_hosts_are_out() {
        // (up, disabled by set_traits, disabled at creation, passes)
        let cases: &[(bool, bool, bool, bool)] = &[
            (true, false, false, true),
            (false, false, false, false),
            (true, true, false, false),
            (true, false, true, false),
            (false, true, false, false),
        ];
        for &(up, disable, born_disabled, pass) in cases {
            let mut cloud = TestCloud::new();
            let mut h = host("h").with_trait("CUSTOM_X");
            if born_disabled {
                h = h.with_trait(DISABLED_TRAIT);
            }
            let u = cloud.host(h);
            cloud.host(host("other"));
            cloud.engine.set_host_up(&u, up).unwrap();
            if disable {
                cloud
                    .engine
                    .set_traits(&u, None, &strings(&["CUSTOM_X", DISABLED_TRAIT]))
                    .unwrap();
            }
            let info = cloud.engine.get_provider(&u).unwrap();
            assert_eq!(info.up, up);
            assert_eq!(info.disabled, disable || born_disabled);
            let out = cloud.run_filters(&spec());
            let want: &[&str] = if pass { &["h", "other"] } else { &["other"] };
            assert_eq!(
                out.passed, want,
                "up {up} disabled {disable}/{born_disabled}"
            );
            if !pass {
                assert_eq!(out.rejections, vec![("Compute".to_string(), 1)]);
            }
        }
    }

    #[test]
    fn reenabling_and_coming_back_up_restores_the_host() {
        let mut cloud = TestCloud::new();
        let u = cloud.host(host("h").with_trait(DISABLED_TRAIT));
        cloud.engine.set_host_up(&u, false).unwrap();
        assert!(cloud.run_filters(&spec()).passed.is_empty());
        cloud.engine.set_traits(&u, None, &[]).unwrap();
        assert!(cloud.run_filters(&spec()).passed.is_empty(), "still down");
        cloud.engine.set_host_up(&u, true).unwrap();
        assert_eq!(cloud.run_filters(&spec()).passed, vec!["h"]);
        // The claim itself also refuses a host that went down.
        cloud.engine.set_host_up(&u, false).unwrap();
        let err = cloud.engine.select_destinations(&spec()).unwrap_err();
        assert_eq!(err.to_string(), "no valid host among 1: Compute 1");
    }
}
