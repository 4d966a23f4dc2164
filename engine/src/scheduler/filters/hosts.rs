//! Host-list filters: `IgnoreHosts` (skip hosts a retry already tried), `ForceHosts` (only
//! these hosts), and the scheduler hints `SameHost` (on a host running one of the given
//! instances) and `DifferentHost` (on none of them).

use super::{Filter, Reason, Rejections, drop_slots, retain_only};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// Drops the request's `ignore_hosts`.
pub struct IgnoreHosts;
/// Keeps only the request's `force_hosts`.
pub struct ForceHosts;
/// Keeps only hosts of the `same_host` instances.
pub struct SameHost;
/// Drops hosts of the `different_host` instances.
pub struct DifferentHost;

impl Filter for IgnoreHosts {
    fn name(&self) -> &'static str {
        "IgnoreHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.ignore_hosts.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        drop_slots(
            alive,
            ctx.ignore_hosts.in_shard(si).iter().map(|(h, _)| h.slot),
            Reason::Filter(self.name()),
            rej,
        );
    }
}

impl Filter for ForceHosts {
    fn name(&self) -> &'static str {
        "ForceHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.force_hosts.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(f) = &ctx.force_hosts {
            retain_only(
                alive,
                f.in_shard(si).iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}

impl Filter for SameHost {
    fn name(&self) -> &'static str {
        "SameHost"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.same_host.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        if let Some(f) = &ctx.same_host {
            retain_only(
                alive,
                f.in_shard(si).iter().map(|(h, _)| h.slot),
                Reason::Filter(self.name()),
                rej,
            );
        }
    }
}

impl Filter for DifferentHost {
    fn name(&self) -> &'static str {
        "DifferentHost"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.different_host.is_empty()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        _: &Shard,
        si: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        drop_slots(
            alive,
            ctx.different_host.in_shard(si).iter().map(|(h, _)| h.slot),
            Reason::Filter(self.name()),
            rej,
        );
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::scheduler::filters::testkit::*;

    fn four() -> TestCloud {
        let mut cloud = TestCloud::new();
        for n in ["a", "b", "c", "d"] {
            cloud.host(host(n));
        }
        cloud
    }

    #[test]
    fn ignore_and_force_by_name_and_uuid() {
        let cloud = four();
        let (a, b, c) = (
            cloud.uuid("a").to_string(),
            cloud.uuid("b").to_string(),
            cloud.uuid("c").to_string(),
        );
        // (ignore_hosts, force_hosts, passes, rejections)
        type Case<'a> = (
            Vec<&'a str>,
            Vec<&'a str>,
            &'a [&'a str],
            Vec<(&'a str, u32)>,
        );
        let cases: Vec<Case> = vec![
            (vec![], vec![], &["a", "b", "c", "d"], vec![]),
            (
                vec!["a"],
                vec![],
                &["b", "c", "d"],
                vec![("IgnoreHosts", 1)],
            ),
            (vec!["a", &b], vec![], &["c", "d"], vec![("IgnoreHosts", 2)]),
            (vec!["zzz"], vec![], &["a", "b", "c", "d"], vec![]),
            (
                vec!["a", "a"],
                vec![],
                &["b", "c", "d"],
                vec![("IgnoreHosts", 1)],
            ),
            (vec![], vec!["a"], &["a"], vec![("ForceHosts", 3)]),
            (vec![], vec![&c], &["c"], vec![("ForceHosts", 3)]),
            (vec![], vec!["a", &b], &["a", "b"], vec![("ForceHosts", 2)]),
            (vec![], vec!["zzz"], &[], vec![("ForceHosts", 4)]),
            (
                vec![&a],
                vec!["a", "b"],
                &["b"],
                vec![("IgnoreHosts", 1), ("ForceHosts", 2)],
            ),
        ];
        for (ignore, force, want, rej) in cases {
            let mut s = spec();
            s.ignore_hosts = strings(&ignore);
            s.force_hosts = strings(&force);
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, want, "ignore {ignore:?} force {force:?}");
            let rej: Vec<(String, u32)> = rej.iter().map(|(r, n)| (r.to_string(), *n)).collect();
            assert_eq!(out.rejections, rej, "ignore {ignore:?} force {force:?}");
        }
    }

    #[test]
    fn same_host_and_different_host_hints() {
        let cloud = four();
        let i1 = cloud.place_on("a", &spec());
        let i2 = cloud.place_on("c", &spec());
        let unknown = Uuid::new_v4();
        // (same_host, different_host, passes)
        let cases: &[(&[Uuid], &[Uuid], &[&str])] = &[
            (&[], &[], &["a", "b", "c", "d"]),
            (&[i1], &[], &["a"]),
            (&[i1, i2], &[], &["a", "c"]),
            (&[unknown], &[], &[]),
            (&[], &[i1], &["b", "c", "d"]),
            (&[], &[i1, i2], &["b", "d"]),
            (&[], &[unknown], &["a", "b", "c", "d"]),
            (&[i1, i2], &[i2], &["a"]),
            (&[i1], &[i1], &[]),
        ];
        for (same, different, want) in cases {
            let mut s = spec();
            s.same_host = same.to_vec();
            s.different_host = different.to_vec();
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, *want, "same {same:?} different {different:?}");
        }
        let mut s = spec();
        s.same_host = vec![i1, i2];
        s.different_host = vec![i2];
        assert_eq!(
            cloud.run_filters(&s).rejections,
            vec![
                ("SameHost".to_string(), 2),
                ("DifferentHost".to_string(), 1)
            ]
        );
        // A placement honours the hint, and a released instance no longer pins anything.
        let sel = cloud.place(&s);
        assert_eq!(sel[0].host.name, "a");
        cloud.engine.release(&i1).unwrap();
        let mut s = spec();
        s.different_host = vec![i1];
        assert_eq!(cloud.run_filters(&s).passed, vec!["a", "b", "c", "d"]);
    }
}
