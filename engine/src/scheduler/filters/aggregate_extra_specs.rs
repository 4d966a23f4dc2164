//! `AggregateInstanceExtraSpecs`: flavor extra specs that are unscoped or scoped
//! `aggregate_instance_extra_specs:` must be satisfied by the metadata of at least one of
//! the host's aggregates. The context pre-computes, per spec, the set of aggregates that
//! satisfy it, so the per-host test is a bitset AND.

use super::{Filter, Reason, Rejections, retain};
use crate::intern::has_any;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct AggregateInstanceExtraSpecs;

impl Filter for AggregateInstanceExtraSpecs {
    fn name(&self) -> &'static str {
        "AggregateInstanceExtraSpecs"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.aggregate_specs.is_empty()
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
            ctx.aggregate_specs.iter().all(|set| has_any(row, set))
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::scheduler::filters::testkit::*;

    fn meta(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flavor_specs_against_aggregate_metadata() {
        let mut cloud = TestCloud::new();
        let e = &cloud.engine;
        e.set_aggregate_metadata("fast", meta(&[("ssd", "true"), ("tier", "gold")]))
            .unwrap();
        e.set_aggregate_metadata("slow", meta(&[("ssd", "false"), ("tier", "bronze")]))
            .unwrap();
        e.set_aggregate_metadata("gpu", meta(&[("gpus", "4")]))
            .unwrap();
        cloud.host(host("a").aggregate("fast"));
        cloud.host(host("b").aggregate("slow"));
        cloud.host(host("c").aggregate("fast").aggregate("gpu"));
        cloud.host(host("d"));
        cloud.host(host("e").aggregate("nometa"));
        let cases: &[(Pairs, &[&str])] = &[
            (&[], &["a", "b", "c", "d", "e"]),
            (&[("hw:cpu_policy", "shared")], &["a", "b", "c", "d", "e"]),
            (&[("ssd", "true")], &["a", "c"]),
            (
                &[("aggregate_instance_extra_specs:ssd", "true")],
                &["a", "c"],
            ),
            (&[("aggregate_instance_extra_specs:ssd", "false")], &["b"]),
            (
                &[(
                    "aggregate_instance_extra_specs:tier",
                    "<or> gold <or> bronze",
                )],
                &["a", "b", "c"],
            ),
            (&[("gpus", ">= 2")], &["c"]),
            (&[("ssd", "true"), ("gpus", ">= 8")], &[]),
            (&[("ssd", "true"), ("tier", "s== gold")], &["a", "c"]),
            (&[("aggregate_instance_extra_specs:color", "red")], &[]),
        ];
        for (i, (specs, want)) in cases.iter().enumerate() {
            let mut s = spec();
            s.flavor = Some(cloud.flavor(&format!("f{i}"), specs));
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, *want, "{specs:?}");
            let dropped = 5 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(
                    out.rejections,
                    vec![("AggregateInstanceExtraSpecs".to_string(), dropped)],
                    "{specs:?}"
                );
            }
        }
    }

    #[test]
    fn metadata_and_membership_changes_apply_to_the_next_request() {
        let mut cloud = TestCloud::new();
        let a = cloud.host(host("a").aggregate("agg1"));
        cloud.host(host("b"));
        let mut s = spec();
        s.flavor = Some(cloud.flavor("ssd", &[("ssd", "true")]));
        assert!(cloud.run_filters(&s).passed.is_empty(), "no metadata yet");
        cloud
            .engine
            .set_aggregate_metadata("agg1", meta(&[("ssd", "true")]))
            .unwrap();
        assert_eq!(cloud.run_filters(&s).passed, vec!["a"]);
        cloud.engine.set_aggregates(&a, None, &[]).unwrap();
        assert!(cloud.run_filters(&s).passed.is_empty(), "a left agg1");
    }
}
