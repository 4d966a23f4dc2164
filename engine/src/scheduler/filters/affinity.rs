//! Server-group filters. `ServerGroupAntiAffinity`: a host already running
//! `max_server_per_host` members of the request's anti-affinity group (default 1) is out.
//! `ServerGroupAffinity`: once an affinity group has a member, only that member's host is
//! in. Both read the group snapshot taken when the request was prepared; the claim
//! re-checks under the group's lock, so a concurrent claim cannot break the policy.

use super::{Filter, Reason, Rejections, drop_slots, retain_only};
use crate::model::GroupPolicy;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ServerGroupAntiAffinity;
/// See the module doc.
pub struct ServerGroupAffinity;

impl Filter for ServerGroupAntiAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinity"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::AntiAffinity && !g.hosts.is_empty())
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(g) = &ctx.group {
            let full = g
                .hosts
                .in_shard(si)
                .iter()
                .filter(|(_, n)| *n >= g.max_per_host)
                .map(|(h, _)| h.slot);
            drop_slots(alive, full, Reason::Filter(self.name()), rej);
        }
    }
}

impl Filter for ServerGroupAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAffinity"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.group
            .as_ref()
            .is_some_and(|g| g.policy == GroupPolicy::Affinity && !g.hosts.is_empty())
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(g) = &ctx.group {
            // Members on two hosts (other than the request's own consumer): a sole member
            // is mid-migration, and no host qualifies until that move finishes (the claim's
            // re-check says the same).
            let hosts = if g.hosts.len() > 1 {
                &[][..]
            } else {
                g.hosts.in_shard(si)
            };
            retain_only(
                alive,
                hosts.iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::EngineError;
    use crate::model::GroupPolicy;
    use crate::scheduler::filters::testkit::*;

    fn three() -> TestCloud {
        let mut cloud = TestCloud::new();
        for n in ["a", "b", "c"] {
            cloud.host(host(n));
        }
        cloud
    }

    fn in_group(group: &str) -> crate::model::RequestSpec {
        let mut s = spec();
        s.group = Some(group.into());
        s
    }

    #[test]
    fn anti_affinity_with_max_server_per_host() {
        // (max_server_per_host, members placed on, passes)
        let cases: &[(Option<u32>, &[&str], &[&str])] = &[
            (None, &[], &["a", "b", "c"]),
            (None, &["a"], &["b", "c"]),
            (None, &["a", "b"], &["c"]),
            (Some(1), &["a", "b", "c"], &[]),
            (Some(2), &["a"], &["a", "b", "c"]),
            (Some(2), &["a", "a", "b"], &["b", "c"]),
            (Some(2), &["a", "a", "b", "b", "c"], &["c"]),
            (Some(3), &["a", "a"], &["a", "b", "c"]),
        ];
        for (max, members, want) in cases {
            let cloud = three();
            cloud.group("g", GroupPolicy::AntiAffinity, *max);
            for m in *members {
                cloud.place_on(m, &in_group("g"));
            }
            let out = cloud.run_filters(&in_group("g"));
            assert_eq!(out.passed, *want, "max {max:?} members {members:?}");
            let dropped = 3 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(
                    out.rejections,
                    vec![("ServerGroupAntiAffinity".to_string(), dropped)]
                );
            }
            // Outside the group nothing is filtered.
            assert_eq!(cloud.run_filters(&spec()).passed, vec!["a", "b", "c"]);
        }
    }

    #[test]
    fn anti_affinity_is_enforced_at_placement_and_released_members_free_the_host() {
        let cloud = three();
        cloud.group("g", GroupPolicy::AntiAffinity, None);
        let first = cloud.place_on("a", &in_group("g"));
        let mut s = in_group("g");
        s.force_hosts = vec!["a".into()];
        match cloud.engine.select_destinations(&s) {
            Err(EngineError::NoValidHost(n)) => assert_eq!(
                n.to_string(),
                "no valid host among 3: ForceHosts 2, ServerGroupAntiAffinity 1"
            ),
            other => panic!("{other:?}"),
        }
        cloud.engine.release(&first).unwrap();
        assert!(cloud.engine.get_group("g").unwrap().members.is_empty());
        cloud.place_on("a", &in_group("g"));
    }

    #[test]
    fn affinity_follows_the_first_member() {
        let cloud = three();
        cloud.group("g", GroupPolicy::Affinity, None);
        assert_eq!(
            cloud.run_filters(&in_group("g")).passed,
            vec!["a", "b", "c"],
            "an empty affinity group goes anywhere"
        );
        let first = cloud.place_on("b", &in_group("g"));
        let out = cloud.run_filters(&in_group("g"));
        assert_eq!(out.passed, vec!["b"]);
        assert_eq!(out.rejections, vec![("ServerGroupAffinity".to_string(), 2)]);
        let mut s = in_group("g");
        s.num_instances = 3;
        let sel = cloud.place(&s);
        assert!(sel.iter().all(|x| x.host.name == "b"), "{sel:?}");
        assert_eq!(
            cloud.engine.get_group("g").unwrap().hosts,
            vec![("b".to_string(), 4)]
        );
        // Once every member is gone the group may start over anywhere.
        cloud.engine.release(&first).unwrap();
        for x in &sel {
            cloud.engine.release(&x.consumer).unwrap();
        }
        assert_eq!(
            cloud.run_filters(&in_group("g")).passed,
            vec!["a", "b", "c"]
        );
        // A multi-instance request into the empty group lands together (the first instance
        // picks the host for the rest), even though spreading weighers prefer otherwise.
        let mut s = in_group("g");
        s.num_instances = 3;
        let sel = cloud.place(&s);
        let hosts: std::collections::HashSet<_> = sel.iter().map(|x| &x.host.name).collect();
        assert_eq!(hosts.len(), 1, "{sel:?}");
    }

    #[test]
    fn affinity_does_not_spill_over_when_the_host_is_full() {
        let mut cloud = TestCloud::new();
        cloud.host(host("small").inventory("VCPU", crate::model::Inventory::new(2)));
        cloud.host(host("big"));
        cloud.group("g", GroupPolicy::Affinity, None);
        cloud.place_on("small", &in_group("g"));
        cloud.place(&in_group("g"));
        assert_eq!(
            cloud
                .engine
                .select_destinations(&in_group("g"))
                .unwrap_err()
                .to_string(),
            "no valid host among 2: Capacity(VCPU) 1, ServerGroupAffinity 1"
        );
    }
}
