//! `MemberOf`: Placement's `member_of`. Each entry is an any-of set (the host must be in at
//! least one of its aggregates); several entries must all hold; `forbidden_aggregates`
//! (`member_of=!in:…`) must not hold any.

use super::{Filter, Reason, Rejections, is_dense, retain, settle, word_mask};
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
            let keep = |a: u64| (!need | (a & any != 0)) & (a & none == 0);
            let mut dropped = 0u32;
            for (w, word) in alive.iter_mut().enumerate() {
                let bits = *word;
                if bits == 0 {
                    continue;
                }
                // Hosts in a word usually agree (providers join aggregates in batches): the
                // AND and OR of their rows, one vectorised pass, settle the whole word when
                // every row passes or every row fails; otherwise host by host. Rows of dead
                // slots take part, which can only send a word to the host-by-host path.
                let rows = col.get(w * 64..).unwrap_or_default();
                let rows = &rows[..rows.len().min(64)];
                let (and, or) = rows
                    .iter()
                    .fold((u64::MAX, 0u64), |(and, or), &a| (and & a, or | a));
                let mask = if or & none == 0 && (!need || and & any != 0) {
                    // Every row passes (slots beyond the column do not, as in `word_mask`).
                    if rows.len() == 64 {
                        u64::MAX
                    } else {
                        (1u64 << rows.len()) - 1
                    }
                } else if need && or & any == 0 {
                    0
                } else {
                    word_mask(col, w, bits, is_dense(bits), &keep)
                };
                dropped += settle(word, mask);
            }
            rej.add(Reason::Filter(self.name()), dropped);
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

    /// Words of 64 hosts that all pass, all fail or mix, full and partial (one shard, so
    /// hosts fill its slots in order).
    #[test]
    fn whole_words_and_mixed_words_agree() {
        let mut cloud = TestCloud::with_config(crate::EngineConfig {
            shards: 1,
            ..Default::default()
        });
        for i in 0..200 {
            let mut h = host(&format!("h{i:03}")).aggregate(if i < 100 { "a" } else { "b" });
            if (150..160).contains(&i) {
                h = h.aggregate("c");
            }
            cloud.host(h);
        }
        let names = |r: &mut dyn Iterator<Item = usize>| -> Vec<String> {
            r.map(|i| format!("h{i:03}")).collect()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (member_of, forbidden aggregates, hosts that pass)
        type Case = (Vec<Vec<String>>, Vec<String>, Vec<String>);
        let cases: Vec<Case> = vec![
            (vec![s(&["a"])], vec![], names(&mut (0..100))),
            (vec![s(&["b"])], vec![], names(&mut (100..200))),
            (vec![s(&["a", "b"])], vec![], names(&mut (0..200))),
            (vec![], s(&["a"]), names(&mut (100..200))),
            (
                vec![s(&["b"])],
                s(&["c"]),
                names(&mut (100..150).chain(160..200)),
            ),
            (vec![s(&["c"])], vec![], names(&mut (150..160))),
        ];
        for (member_of, forbidden, want) in cases {
            let mut spec = RequestSpec::resources(&[("VCPU", 1)]);
            spec.member_of = member_of.clone();
            spec.forbidden_aggregates = forbidden.clone();
            let out = cloud.run_filters(&spec);
            assert_eq!(out.passed, want, "{member_of:?} !{forbidden:?}");
        }
    }

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
