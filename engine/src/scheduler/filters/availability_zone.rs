//! `AvailabilityZone`: the host must be in the requested zone. Hosts registered without a
//! zone are in `default_availability_zone` ("nova"). An unknown zone matches no host.

use super::{Filter, Reason, Rejections, retain_by};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct AvailabilityZone;

impl Filter for AvailabilityZone {
    fn name(&self) -> &'static str {
        "AvailabilityZone"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.az.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let Some(az) = ctx.az else { return };
        let col = &s.az[..s.slots()];
        retain_by(alive, col, Reason::Filter(self.name()), rej, |z| z == az);
    }
}

#[cfg(test)]
mod tests {
    use crate::EngineConfig;
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn zones_default_and_unknown() {
        let mut cloud = TestCloud::new();
        cloud.host(host("a").az("az1"));
        cloud.host(host("b").az("az1"));
        cloud.host(host("c").az("az2"));
        cloud.host(host("d")); // the default zone, "nova"
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &["a", "b", "c", "d"]),
            (Some(""), &["a", "b", "c", "d"]),
            (Some("az1"), &["a", "b"]),
            (Some("az2"), &["c"]),
            (Some("nova"), &["d"]),
            (Some("nowhere"), &[]),
        ];
        for (az, want) in cases {
            let mut s = spec();
            s.availability_zone = az.map(str::to_string);
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, *want, "zone {az:?}");
            let dropped = 4 - want.len() as u32;
            let expected = if dropped > 0 {
                vec![("AvailabilityZone".to_string(), dropped)]
            } else {
                vec![]
            };
            assert_eq!(out.rejections, expected, "zone {az:?}");
        }
        assert_eq!(
            cloud
                .engine
                .get_provider(&cloud.uuid("d"))
                .unwrap()
                .availability_zone,
            "nova"
        );
        let mut bad = spec();
        bad.availability_zone = Some("a:b".into());
        assert!(cloud.try_filters(&bad).is_err(), "':' is reserved");
    }

    #[test]
    fn configured_default_zone_replaces_nova() {
        let mut cloud = TestCloud::with_config(EngineConfig {
            default_availability_zone: "zone0".into(),
            ..Default::default()
        });
        cloud.host(host("plain"));
        cloud.host(host("z1").az("z1"));
        let passed = |az: &str| {
            let mut s = spec();
            s.availability_zone = Some(az.into());
            cloud.run_filters(&s).passed
        };
        assert_eq!(passed("zone0"), vec!["plain"]);
        assert_eq!(passed("z1"), vec!["z1"]);
        assert!(passed("nova").is_empty());
    }

    #[test]
    fn dense_shard_words_and_holes() {
        // One shard, enough hosts for the dense (≥16 live bits per word) path and a partial
        // last word, then deletions leaving holes.
        let mut cloud = TestCloud::with_config(EngineConfig {
            shards: 1,
            ..Default::default()
        });
        let mut uuids = Vec::new();
        for i in 0..150 {
            let zone = if i % 3 == 0 { "x" } else { "y" };
            uuids.push(cloud.host(host(&format!("h{i:03}")).az(zone)));
        }
        let mut s = spec();
        s.availability_zone = Some("x".into());
        let out = cloud.run_filters(&s);
        assert_eq!(out.passed.len(), 50);
        assert_eq!(out.rejections, vec![("AvailabilityZone".to_string(), 100)]);
        for u in uuids.iter().step_by(2) {
            cloud.engine.delete_provider(u).unwrap();
        }
        let out = cloud.run_filters(&s);
        // i % 3 == 0 and i odd: 3, 9, 15, … 147.
        assert_eq!(out.passed.len(), 25);
        assert!(out.passed.iter().all(|n| {
            let i: usize = n[1..].parse().unwrap();
            i.is_multiple_of(3) && !i.is_multiple_of(2)
        }));
        assert_eq!(out.rejections, vec![("AvailabilityZone".to_string(), 50)]);
    }
}
