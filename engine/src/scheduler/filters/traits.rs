//! `Traits`: the host must have every required trait (request, flavor `trait:*=required`,
//! image `trait:*=required`) and none of the forbidden ones.

use super::{Filter, Reason, Rejections, retain, retain_by};
use crate::intern::{has_all, has_any};
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// See the module doc.
pub struct Traits;

impl Filter for Traits {
    fn name(&self) -> &'static str {
        "Traits"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        !ctx.required_traits.is_empty()
            || !ctx.forbidden_traits.is_empty()
            || ctx.unknown_required_trait
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let (req, forb) = (&ctx.required_traits[..], &ctx.forbidden_traits[..]);
        let possible = !ctx.unknown_required_trait;
        // One word of traits per host (fewer than 64 distinct traits), and the request needs
        // none beyond it: the whole test is two ANDs on one column value.
        if s.trait_words == 1
            && req.iter().skip(1).all(|&w| w == 0)
            && let Some(col) = s.traits.get(..s.slots())
        {
            let r = req.first().copied().unwrap_or(0);
            let f = forb.first().copied().unwrap_or(0);
            retain_by(alive, col, Reason::Filter(self.name()), rej, |t| {
                possible & (t & r == r) & (t & f == 0)
            });
            return;
        }
        retain(alive, s.slots(), Reason::Filter(self.name()), rej, |i| {
            let row = s.trait_row(i);
            possible && has_all(row, req) && !has_any(row, forb)
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::model::RequestSpec;
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn required_and_forbidden() {
        let mut cloud = TestCloud::new();
        cloud.host(host("avx").with_trait("HW_CPU_X86_AVX2"));
        cloud.host(
            host("avx-ssd")
                .with_trait("HW_CPU_X86_AVX2")
                .with_trait("CUSTOM_SSD"),
        );
        cloud.host(host("none"));
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["HW_CPU_X86_AVX2"], &[], &["avx", "avx-ssd"]),
            (&["HW_CPU_X86_AVX2"], &["CUSTOM_SSD"], &["avx"]),
            (&[], &["CUSTOM_SSD"], &["avx", "none"]),
            (&["HW_CPU_X86_AVX2", "CUSTOM_SSD"], &[], &["avx-ssd"]),
            (&[], &["CUSTOM_NOBODY_HAS_IT"], &["avx", "avx-ssd", "none"]),
        ];
        for (req, forb, want) in cases {
            let mut spec = RequestSpec::resources(&[("VCPU", 1)]);
            spec.required_traits = req.iter().map(|s| s.to_string()).collect();
            spec.forbidden_traits = forb.iter().map(|s| s.to_string()).collect();
            let out = cloud.run_filters(&spec);
            assert_eq!(out.passed, *want, "{req:?} {forb:?}");
            let dropped = 3 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(out.rejections, vec![("Traits".to_string(), dropped)]);
            }
        }
    }
}
