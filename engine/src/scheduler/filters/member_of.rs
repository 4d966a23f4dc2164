//! `MemberOf`: Placement's `member_of`. Each entry is an any-of set (the host must be in at
//! least one of its aggregates); several entries must all hold; `forbidden_aggregates`
//! (`member_of=!in:…`) must not hold any.

use super::{Filter, Reason, Rejections, retain, retain_by};
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
        // One word of aggregates per host and at most one any-of set: two ANDs on one column
        // value (only word 0 of the request's sets can meet a one-word row).
        if s.agg_words == 1
            && ctx.member_of.len() <= 1
            && let Some(col) = s.aggs.get(..s.slots())
        {
            let any = ctx
                .member_of
                .first()
                .map(|set| set.first().copied().unwrap_or(0));
            let (need, any) = (any.is_some(), any.unwrap_or(0));
            let none = ctx.forbidden_aggregates.first().copied().unwrap_or(0);
            retain_by(alive, col, Reason::Filter(self.name()), rej, |a| {
                (!need | (a & any != 0)) & (a & none == 0)
            });
            return;
        }
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
        // (member_of, forbidden aggregates, hosts that pass)
        type Case<'a> = (Vec<Vec<String>>, Vec<String>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
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
