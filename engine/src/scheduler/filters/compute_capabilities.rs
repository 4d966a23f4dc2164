//! `ComputeCapabilities`: every flavor `capabilities:KEY=EXPR` extra spec must hold for the
//! host's reported capability `KEY` (Nova's extra-spec operators: `>= 4`, `s== Intel`,
//! `<in> avx`, …). A host without the key does not match.

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ComputeCapabilities;

impl Filter for ComputeCapabilities {
    fn name(&self) -> &'static str {
        "ComputeCapabilities"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.capabilities.is_empty()
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
            let caps = &s.cold[i].capabilities;
            ctx.capabilities
                .iter()
                .all(|(k, op)| caps.get(k).is_some_and(|v| op.matches(v)))
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::model::ProviderSpec;
    use crate::scheduler::filters::testkit::*;

    fn with_caps(name: &str, caps: &[(&str, &str)]) -> ProviderSpec {
        ProviderSpec {
            capabilities: caps
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..host(name)
        }
    }

    #[test]
    fn flavor_capabilities_against_host_capabilities() {
        let mut cloud = TestCloud::new();
        cloud.host(with_caps(
            "intel",
            &[
                ("cpu_info:vendor", "Intel"),
                ("cpu_count", "32"),
                ("cpu_flags", "sse avx avx2"),
            ],
        ));
        cloud.host(with_caps(
            "amd",
            &[
                ("cpu_info:vendor", "AMD"),
                ("cpu_count", "16"),
                ("cpu_flags", "sse avx"),
            ],
        ));
        cloud.host(host("none"));
        let cases: &[(Pairs, &[&str])] = &[
            (&[], &["amd", "intel", "none"]),
            (&[("hw:cpu_policy", "shared")], &["amd", "intel", "none"]),
            (&[("capabilities:cpu_info:vendor", "s== Intel")], &["intel"]),
            (&[("capabilities:cpu_info:vendor", "Intel")], &["intel"]),
            (&[("capabilities:cpu_count", ">= 20")], &["intel"]),
            (&[("capabilities:cpu_count", "= 16")], &["amd", "intel"]),
            (&[("capabilities:cpu_count", "== 16")], &["amd"]),
            (&[("capabilities:cpu_count", "<= 8")], &[]),
            (&[("capabilities:cpu_flags", "<in> avx2")], &["intel"]),
            (
                &[("capabilities:cpu_flags", "<all-in> sse avx")],
                &["amd", "intel"],
            ),
            (
                &[("capabilities:cpu_info:vendor", "<or> AMD <or> Arm")],
                &["amd"],
            ),
            (
                &[
                    ("capabilities:cpu_info:vendor", "s!= Intel"),
                    ("capabilities:cpu_count", ">= 8"),
                ],
                &["amd"],
            ),
            (&[("capabilities:gpu", "s!= nvidia")], &[]),
        ];
        for (i, (specs, want)) in cases.iter().enumerate() {
            let mut s = spec();
            s.resources.clear();
            s.flavor = Some(cloud.flavor(&format!("f{i}"), specs));
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, *want, "{specs:?}");
            let dropped = 3 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(
                    out.rejections,
                    vec![("ComputeCapabilities".to_string(), dropped)],
                    "{specs:?}"
                );
            }
        }
    }

    #[test]
    fn updated_capabilities_apply_to_the_next_request() {
        let mut cloud = TestCloud::new();
        let u = cloud.host(with_caps("h", &[("cpu_count", "4")]));
        let mut s = spec();
        s.flavor = Some(cloud.flavor("big", &[("capabilities:cpu_count", ">= 8")]));
        assert!(cloud.run_filters(&s).passed.is_empty());
        cloud
            .engine
            .update_provider(
                &u,
                None,
                crate::model::ProviderUpdate {
                    capabilities: Some([("cpu_count".to_string(), "8".to_string())].into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(cloud.run_filters(&s).passed, vec!["h"]);
    }
}
