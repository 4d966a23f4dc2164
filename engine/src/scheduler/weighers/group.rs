//! `SoftAffinity` and `SoftAntiAffinity`: for requests in a soft-affinity group, hosts with
//! more members weigh more; in a soft-anti-affinity group, hosts with more members weigh
//! less. Unlike the hard policies these never exclude a host.

use super::Weigher;
use crate::model::GroupPolicy;
use crate::scheduler::context::RequestContext;
use crate::state::HostRef;
use crate::state::shard::Shard;

/// Prefer hosts with members.
pub struct SoftAffinity(pub f64);
/// Prefer hosts without members.
pub struct SoftAntiAffinity(pub f64);

fn members(ctx: &RequestContext, si: u32, slots: &[u32], out: &mut [f64], sign: f64) {
    let Some(g) = &ctx.group else { return };
    out.fill(0.0);
    let here = g.hosts.in_shard(si);
    if here.is_empty() {
        return;
    }
    for (o, &slot) in out.iter_mut().zip(slots) {
        *o = sign * g.hosts.get(HostRef { shard: si, slot }) as f64;
    }
}

impl Weigher for SoftAffinity {
    fn name(&self) -> &'static str {
        "SoftAffinity"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::SoftAffinity)
    }
    fn weigh(&self, ctx: &RequestContext, _: &Shard, si: u32, slots: &[u32], out: &mut [f64]) {
        members(ctx, si, slots, out, 1.0);
    }
}

impl Weigher for SoftAntiAffinity {
    fn name(&self) -> &'static str {
        "SoftAntiAffinity"
    }
    fn multiplier(&self) -> f64 {
        self.0
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::SoftAntiAffinity)
    }
    fn weigh(&self, ctx: &RequestContext, _: &Shard, si: u32, slots: &[u32], out: &mut [f64]) {
        members(ctx, si, slots, out, -1.0);
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{GroupPolicy, RequestSpec};
    use crate::scheduler::filters::testkit::*;

    fn in_group(group: &str) -> RequestSpec {
        let mut s = spec();
        s.group = Some(group.into());
        s
    }

    fn cloud(set: &[(&str, f64)]) -> TestCloud {
        let mut cloud = TestCloud::with_scheduler(|s| s.multipliers = multipliers(set));
        for n in ["a", "b", "c"] {
            cloud.host(host(n));
        }
        cloud
    }

    fn contribution(e: &crate::Explanation, host: &str, weigher: &str) -> Option<f64> {
        e.ranked
            .iter()
            .find(|r| r.host.name == host)
            .and_then(|r| r.contributions.iter().find(|c| c.weigher == weigher))
            .map(|c| c.weighted)
    }

    #[test]
    fn soft_policies_rank_by_members_and_never_exclude() {
        // (policy, members placed on, normalised weight of a, b, c)
        let cases: &[(GroupPolicy, &[&str], [f64; 3])] = &[
            (GroupPolicy::SoftAffinity, &["b"], [0.0, 1.0, 0.0]),
            (GroupPolicy::SoftAffinity, &["c", "b", "c"], [0.0, 0.5, 1.0]),
            (GroupPolicy::SoftAntiAffinity, &["a"], [0.0, 1.0, 1.0]),
            (
                GroupPolicy::SoftAntiAffinity,
                &["a", "a", "b"],
                [0.0, 0.5, 1.0],
            ),
        ];
        for (policy, members, want) in cases {
            let cloud = cloud(&[("soft_affinity", 1.0), ("soft_anti_affinity", 1.0)]);
            cloud.group("g", *policy, None);
            for m in *members {
                cloud.place_on(m, &in_group("g"));
            }
            let (weigher, other) = match policy {
                GroupPolicy::SoftAffinity => ("SoftAffinity", "SoftAntiAffinity"),
                _ => ("SoftAntiAffinity", "SoftAffinity"),
            };
            let e = cloud.explain(&in_group("g"));
            assert_eq!(e.passed, 3, "soft policies filter nothing");
            for (h, w) in ["a", "b", "c"].iter().zip(want) {
                assert_eq!(
                    contribution(&e, h, weigher),
                    Some(*w),
                    "{policy} {members:?}: {h}"
                );
                // The other soft weigher has nothing to say about this group.
                assert_eq!(contribution(&e, h, other), None);
            }
            // The best host (ties rank in scan order, so any of the tied best).
            let best: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .zip(want)
                .filter(|(_, w)| **w == 1.0)
                .map(|(h, _)| h)
                .collect();
            assert!(best.contains(&e.ranked[0].host.name.as_str()), "{e:?}");
            let placed = cloud.place(&in_group("g"))[0].host.name.clone();
            assert!(
                best.contains(&placed.as_str()),
                "{policy}: placed on {placed}"
            );
            // Outside the group neither weighs.
            let e = cloud.explain(&spec());
            assert!(e.ranked.iter().all(|r| r.contributions.is_empty()), "{e:?}");
        }
    }

    #[test]
    fn soft_anti_affinity_spreads_a_multi_instance_request_against_packing() {
        for (policy, distinct) in [
            (Some(GroupPolicy::SoftAntiAffinity), 3),
            (Some(GroupPolicy::SoftAffinity), 1),
            (None, 1),
        ] {
            let cloud = cloud(&[
                ("ram", -1.0),
                ("soft_affinity", 10.0),
                ("soft_anti_affinity", 10.0),
            ]);
            let mut s = RequestSpec::resources(&[("MEMORY_MB", 1024)]);
            s.num_instances = 3;
            if let Some(p) = policy {
                cloud.group("g", p, None);
                s.group = Some("g".into());
            }
            let sel = cloud.place(&s);
            let mut hosts: Vec<&str> = sel.iter().map(|x| x.host.name.as_str()).collect();
            hosts.sort();
            hosts.dedup();
            assert_eq!(hosts.len(), distinct, "{policy:?}: {sel:?}");
        }
    }
}
