//! `MemberOf`: Placement's `member_of`. Each entry is an any-of set (the host must be in at
//! least one of its aggregates); several entries must all hold; `forbidden_aggregates`
//! (`member_of=!in:…`) must not hold any.

use super::{Filter, Reason, Rejections, retain};
use crate::intern::has_any;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct MemberOf;

impl Filter for MemberOf {
    fn name(&self) -> &'static str {
        "MemberOf"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.member_of.is_empty() || !ctx.forbidden_aggregates.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        retain(alive, s.slots(), Reason::Filter(self.name()), rej, |i| {
            let row = s.agg_row(i);
            ctx.member_of.iter().all(|set| has_any(row, set))
                && !has_any(row, &ctx.forbidden_aggregates)
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::model::RequestSpec;
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn any_of_within_and_across() {
        let mut cloud = TestCloud::new();
        cloud.host(host("a").aggregate("rack1").aggregate("ssd"));
        cloud.host(host("b").aggregate("rack2"));
        cloud.host(host("c").aggregate("rack2").aggregate("ssd"));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Vec<Vec<String>>, Vec<String>, Vec<&str>)> = vec![
            (vec![s(&["rack1", "rack2"])], vec![], vec!["a", "b", "c"]),
            (
                vec![s(&["rack1", "rack2"]), s(&["ssd"])],
                vec![],
                vec!["a", "c"],
            ),
            (vec![s(&["rack2"])], s(&["ssd"]), vec!["b"]),
            (vec![s(&["unknown-agg"])], vec![], vec![]),
            (vec![], s(&["rack1"]), vec!["b", "c"]),
        ];
        for (member_of, forbidden, want) in cases {
            let mut spec = RequestSpec::resources(&[("VCPU", 1)]);
            spec.member_of = member_of.clone();
            spec.forbidden_aggregates = forbidden.clone();
            let out = cloud.run_filters(&spec);
            assert_eq!(out.passed, want, "{member_of:?} !{forbidden:?}");
        }
    }
}
