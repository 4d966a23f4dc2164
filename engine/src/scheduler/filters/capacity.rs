//! `Capacity`: for every requested class, the host must have an inventory with room —
//! `(total − reserved) × allocation_ratio − used ≥ amount` — and the amount must respect
//! that inventory's `min_unit`, `max_unit` and `step_size`. Rejections are charged per
//! class (`Capacity(MEMORY_MB)`), so "no valid host" says which resource ran out.
//! This filter cannot be disabled; the claim re-checks the same rule under the lock.

use smallvec::SmallVec;

use super::{AtLeast, Filter, Reason, Rejections, retain, retain_at_least, retain_by};
use crate::model::ClassId;
use crate::scheduler::context::RequestContext;
use crate::state::shard::{NSTD, Shard};

/// See the module doc.
pub struct Capacity;

impl Filter for Capacity {
    fn name(&self) -> &'static str {
        "Capacity"
    }
    fn active(&self, _: &RequestContext) -> bool {
        true
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let n = s.slots();
        // Every requested standard class within its shard-wide unit bounds (the usual case):
        // only room decides, one `i32` compare per host and class (exact: `free32`
        // saturates, amounts are < 2^31), all classes in one pass, charged in class order,
        // and none at all in a block of 64 hosts whose smallest free amount is enough.
        let wanted = || (0..NSTD).filter(|&c| ctx.std[c] > 0);
        if wanted().all(|c| s.unit_bounds[c].accept(ctx.std[c] as u32)) {
            let tests: SmallVec<[AtLeast<'_>; NSTD]> = wanted()
                .map(|c| AtLeast {
                    col: &s.free32[c][..n],
                    floor: &s.free_floor[c],
                    least: ctx.std[c] as i32,
                    reason: Reason::Capacity(ClassId(c as u32)),
                })
                .collect();
            retain_at_least(alive, &tests, rej);
        } else {
            self.per_class(ctx, s, alive, rej);
        }
        for &(class, amt) in &ctx.custom {
            retain(alive, n, Reason::Capacity(class), rej, |i| {
                s.fits(i, class, amt)
            });
        }
    }
}

impl Capacity {
    /// The standard classes one at a time, with the unit rules where they may matter.
    fn per_class(&self, ctx: &RequestContext, s: &Shard, alive: &mut [u64], rej: &mut Rejections) {
        let n = s.slots();
        for c in 0..NSTD {
            let amt = ctx.std[c];
            if amt == 0 {
                continue;
            }
            let (free, min, max, step) = (
                &s.free[c][..n],
                &s.min_unit[c][..n],
                &s.max_unit[c][..n],
                &s.step[c][..n],
            );
            let a = amt as i64;
            let a32 = amt as u32; // amounts are validated ≤ MAX_AMOUNT < 2^31
            let reason = Reason::Capacity(ClassId(c as u32));
            if s.unit_bounds[c].accept(a32) {
                // Every host's unit rules accept the amount: only room decides, one `i32`
                // compare per host (exact: `free32` saturates, `a` < 2^31).
                let a = a32 as i32;
                retain_by(alive, &s.free32[c][..n], reason, rej, |f| f >= a);
                continue;
            }
            retain(alive, n, reason, rej, |i| {
                let st = step[i];
                (free[i] >= a)
                    & (min[i] <= a32)
                    & (a32 <= max[i])
                    & ((st == 1) || a32.is_multiple_of(st.max(1)))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Inventory, RequestSpec};
    use crate::scheduler::filters::testkit::*;

    #[test]
    fn capacity_table() {
        // (inventory, used, request, passes)
        let cases: &[(Inventory, u64, u64, bool)] = &[
            (Inventory::new(8), 0, 8, true),
            (Inventory::new(8), 1, 8, false),
            (Inventory::new(8).ratio(2.0), 8, 8, true),
            (Inventory::new(8).ratio(2.0), 9, 8, false),
            (Inventory::new(8).reserved(2), 0, 7, false),
            (Inventory::new(8).reserved(2).ratio(1.5), 0, 9, true),
            (Inventory::new(8).units(2, 8, 1), 0, 1, false),
            (Inventory::new(8).units(1, 4, 1), 0, 5, false),
            (Inventory::new(8).units(1, 8, 2), 0, 3, false),
            (Inventory::new(8).units(1, 8, 2), 0, 4, true),
        ];
        for (inv, used, req, pass) in cases {
            let mut cloud = TestCloud::new();
            let h = cloud.host(host("h").inventory("VCPU", *inv));
            if *used > 0 {
                cloud.use_resources(h, &[("VCPU", *used)]);
            }
            let out = cloud.run_filters(&RequestSpec::resources(&[("VCPU", *req)]));
            assert_eq!(
                out.passed.len() == 1,
                *pass,
                "{inv:?} used {used} req {req}: {out:?}"
            );
            if !pass {
                assert_eq!(out.rejections, vec![("Capacity(VCPU)".to_string(), 1)]);
            }
        }
    }

    #[test]
    fn missing_class_and_custom_classes() {
        let mut cloud = TestCloud::new();
        cloud.host(host("plain"));
        cloud.host(host("gpu").inventory("CUSTOM_GPU", Inventory::new(2)));
        let out = cloud.run_filters(&RequestSpec::resources(&[("VCPU", 1), ("CUSTOM_GPU", 2)]));
        assert_eq!(out.passed, vec!["gpu"]);
        assert_eq!(
            out.rejections,
            vec![("Capacity(CUSTOM_GPU)".to_string(), 1)]
        );
        let out = cloud.run_filters(&RequestSpec::resources(&[("CUSTOM_GPU", 3)]));
        assert!(out.passed.is_empty());
    }
}
