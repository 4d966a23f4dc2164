//! Inventories: how much of one resource class a provider has, and the rules for using it.

use crate::error::{EngineError, Result};

/// Placement's upper bound for totals and amounts (a signed 32-bit integer). Keeping amounts
/// below it means `amount × ratio` can never overflow the engine's 64-bit arithmetic.
pub const MAX_AMOUNT: u64 = 0x7FFF_FFFF;
/// Upper bound for an allocation ratio. Real clouds use 1–16; anything near this is a typo.
pub const MAX_ALLOCATION_RATIO: f64 = 1_000_000.0;

/// One resource class's inventory on one provider, with Placement's semantics:
/// capacity = (total − reserved) × allocation_ratio, and a single allocation must satisfy
/// `min_unit ≤ amount ≤ max_unit` and `amount % step_size == 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inventory {
    /// Physical amount.
    pub total: u64,
    /// Held back for the host itself (never allocatable).
    pub reserved: u64,
    /// Smallest amount one allocation may take.
    pub min_unit: u64,
    /// Largest amount one allocation may take.
    pub max_unit: u64,
    /// Allocations must be a multiple of this.
    pub step_size: u64,
    /// Overcommit factor: 4.0 lets 4 virtual units share one physical unit.
    pub allocation_ratio: f64,
}

impl Inventory {
    /// An inventory of `total` with Placement's defaults: nothing reserved, `min_unit` 1,
    /// `max_unit` [`MAX_AMOUNT`], `step_size` 1, ratio 1.0.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: MAX_AMOUNT,
            step_size: 1,
            allocation_ratio: 1.0,
        }
    }

    /// Builder: set the overcommit ratio.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.allocation_ratio = ratio;
        self
    }

    /// Builder: set the reserved amount.
    pub fn reserved(mut self, reserved: u64) -> Self {
        self.reserved = reserved;
        self
    }

    /// Builder: set min_unit, max_unit and step_size.
    pub fn units(mut self, min_unit: u64, max_unit: u64, step_size: u64) -> Self {
        self.min_unit = min_unit;
        self.max_unit = max_unit;
        self.step_size = step_size;
        self
    }

    /// Allocatable capacity: `floor((total − reserved) × allocation_ratio)`.
    #[inline]
    pub fn capacity(&self) -> u64 {
        // total ≤ MAX_AMOUNT and ratio ≤ MAX_ALLOCATION_RATIO keep this far below 2^63.
        (self.total.saturating_sub(self.reserved) as f64 * self.allocation_ratio).floor() as u64
    }

    /// Whether one allocation of `amount` respects min_unit, max_unit and step_size; the
    /// error says which rule failed.
    pub fn check_amount(&self, amount: u64) -> Result<(), String> {
        if amount < self.min_unit {
            return Err(format!("{amount} is below min_unit {}", self.min_unit));
        }
        if amount > self.max_unit {
            return Err(format!("{amount} is above max_unit {}", self.max_unit));
        }
        if !amount.is_multiple_of(self.step_size) {
            return Err(format!(
                "{amount} is not a multiple of step_size {}",
                self.step_size
            ));
        }
        Ok(())
    }

    /// Checks Placement's rules; `field` prefixes the error (`inventories[VCPU]`).
    pub fn validate(&self, field: &str) -> Result<()> {
        let bad =
            |sub: &str, reason: String| Err(EngineError::invalid(format!("{field}.{sub}"), reason));
        for (sub, v) in [
            ("total", self.total),
            ("reserved", self.reserved),
            ("min_unit", self.min_unit),
            ("max_unit", self.max_unit),
            ("step_size", self.step_size),
        ] {
            if v > MAX_AMOUNT {
                return bad(sub, format!("{v} exceeds the maximum {MAX_AMOUNT}"));
            }
        }
        if self.total == 0 {
            return bad("total", "must be at least 1".into());
        }
        if self.reserved > self.total {
            return bad(
                "reserved",
                format!("{} exceeds total {}", self.reserved, self.total),
            );
        }
        if self.min_unit < 1 {
            return bad("min_unit", "must be at least 1".into());
        }
        if self.max_unit < self.min_unit {
            return bad(
                "max_unit",
                format!("{} is below min_unit {}", self.max_unit, self.min_unit),
            );
        }
        if self.step_size < 1 {
            return bad("step_size", "must be at least 1".into());
        }
        let r = self.allocation_ratio;
        if !r.is_finite() || r <= 0.0 || r > MAX_ALLOCATION_RATIO {
            return bad(
                "allocation_ratio",
                format!("{r} must be finite, above 0 and at most {MAX_ALLOCATION_RATIO}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_applies_reserved_then_ratio() {
        assert_eq!(Inventory::new(16).reserved(2).ratio(4.0).capacity(), 56);
        assert_eq!(Inventory::new(3).ratio(1.5).capacity(), 4); // floor(4.5)
        assert_eq!(Inventory::new(10).reserved(10).capacity(), 0);
    }

    #[test]
    fn validation_names_the_field() {
        let cases: &[(Inventory, &str)] = &[
            (Inventory::new(0), "inv.total"),
            (Inventory::new(4).reserved(5), "inv.reserved"),
            (Inventory::new(4).units(0, 4, 1), "inv.min_unit"),
            (Inventory::new(4).units(3, 2, 1), "inv.max_unit"),
            (Inventory::new(4).units(1, 4, 0), "inv.step_size"),
            (Inventory::new(4).ratio(f64::NAN), "inv.allocation_ratio"),
            (
                Inventory::new(4).ratio(f64::INFINITY),
                "inv.allocation_ratio",
            ),
            (Inventory::new(4).ratio(0.0), "inv.allocation_ratio"),
            (Inventory::new(4).ratio(-1.0), "inv.allocation_ratio"),
            (Inventory::new(u64::MAX), "inv.total"),
        ];
        for (inv, field) in cases {
            match inv.validate("inv") {
                Err(EngineError::InvalidArgument { field: f, .. }) => {
                    assert_eq!(f, *field, "{inv:?}")
                }
                other => panic!("{inv:?}: expected InvalidArgument on {field}, got {other:?}"),
            }
        }
        assert!(
            Inventory::new(MAX_AMOUNT)
                .ratio(MAX_ALLOCATION_RATIO)
                .validate("inv")
                .is_ok()
        );
    }

    #[test]
    fn amount_rules() {
        let inv = Inventory::new(64).units(2, 16, 2);
        assert!(inv.check_amount(4).is_ok());
        assert!(inv.check_amount(1).unwrap_err().contains("min_unit"));
        assert!(inv.check_amount(18).unwrap_err().contains("max_unit"));
        assert!(inv.check_amount(5).unwrap_err().contains("step_size"));
    }
}
