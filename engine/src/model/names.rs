//! Names and their rules: resource classes, traits, aggregates, availability zones.

use crate::error::{EngineError, Result};

/// The standard resource classes, in the order of their dense per-host arrays.
pub const STANDARD_CLASSES: [&str; 4] = ["VCPU", "PCPU", "MEMORY_MB", "DISK_GB"];

/// A resource class, interned: ids 0..4 are [`STANDARD_CLASSES`], larger ids are `CUSTOM_*`
/// classes in the engine's registry. Copy and compare as an integer on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u32);

impl ClassId {
    /// `VCPU`: shared (overcommittable) virtual CPUs.
    pub const VCPU: ClassId = ClassId(0);
    /// `PCPU`: dedicated physical CPUs.
    pub const PCPU: ClassId = ClassId(1);
    /// `MEMORY_MB`: RAM in MiB.
    pub const MEMORY_MB: ClassId = ClassId(2);
    /// `DISK_GB`: local disk in GiB.
    pub const DISK_GB: ClassId = ClassId(3);

    /// The index into the dense standard-class arrays, or `None` for a custom class.
    #[inline]
    pub fn std_index(self) -> Option<usize> {
        (self.0 < STANDARD_CLASSES.len() as u32).then_some(self.0 as usize)
    }
}

/// A resource class name is a standard class or `CUSTOM_[A-Z0-9_]+` (at most 255 bytes).
pub fn validate_class_name(field: &str, name: &str) -> Result<()> {
    if STANDARD_CLASSES.contains(&name) {
        return Ok(());
    }
    match name.strip_prefix("CUSTOM_") {
        Some(rest) if !rest.is_empty() && name.len() <= 255 && upper_snake(rest) => Ok(()),
        _ => Err(EngineError::invalid(
            field,
            format!(
                "resource class {name:?} is neither standard ({}) nor CUSTOM_[A-Z0-9_]+",
                STANDARD_CLASSES.join(", ")
            ),
        )),
    }
}

/// A trait is `[A-Z0-9_]+` of at most 255 bytes, like `HW_CPU_X86_AVX2` or `CUSTOM_GPU`.
pub fn validate_trait(field: &str, name: &str) -> Result<()> {
    if !name.is_empty() && name.len() <= 255 && upper_snake(name) {
        Ok(())
    } else {
        Err(EngineError::invalid(
            field,
            format!("trait {name:?} must match [A-Z0-9_]+ (1 to 255 bytes)"),
        ))
    }
}

/// An aggregate is named by a uuid (Placement's rule) or, for convenience, any printable
/// name without spaces of at most 255 bytes.
pub fn validate_aggregate(field: &str, name: &str) -> Result<()> {
    printable_token(field, "aggregate", name)
}

/// An availability-zone name: printable, no spaces at either end, 1 to 255 bytes, no `:`
/// (Nova reserves `az:host` for forcing).
pub fn validate_az(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.trim() != name
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return Err(EngineError::invalid(
            field,
            format!(
                "availability zone {name:?} must be 1 to 255 printable bytes, no ':' and no surrounding spaces"
            ),
        ));
    }
    Ok(())
}

/// A human name (provider, flavor, image, group): 1 to 255 bytes, no control characters,
/// no surrounding whitespace.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.trim() != name
        || name.chars().any(char::is_control)
    {
        return Err(EngineError::invalid(
            field,
            format!(
                "name {name:?} must be 1 to 255 bytes without control characters or surrounding spaces"
            ),
        ));
    }
    Ok(())
}

fn printable_token(field: &str, what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(EngineError::invalid(
            field,
            format!("{what} {name:?} must be 1 to 255 printable bytes without spaces"),
        ));
    }
    Ok(())
}

fn upper_snake(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names() {
        for ok in ["VCPU", "MEMORY_MB", "CUSTOM_GPU_A100", "CUSTOM_1"] {
            assert!(validate_class_name("c", ok).is_ok(), "{ok}");
        }
        for bad in ["", "vcpu", "CUSTOM_", "CUSTOM_gpu", "GPU", "CUSTOM_A-B"] {
            let e = validate_class_name("resources[0]", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid resources[0]:"), "{e}");
        }
        assert_eq!(ClassId::MEMORY_MB.std_index(), Some(2));
        assert_eq!(ClassId(4).std_index(), None);
    }

    #[test]
    fn traits_and_names() {
        assert!(validate_trait("t", "HW_CPU_X86_AVX2").is_ok());
        assert!(validate_trait("t", "hw").is_err());
        assert!(validate_trait("t", &"A".repeat(256)).is_err());
        assert!(validate_name("n", "host-1").is_ok());
        assert!(validate_name("n", " host").is_err());
        assert!(validate_name("n", "a\u{0}b").is_err());
        assert!(validate_az("az", "az1").is_ok());
        assert!(validate_az("az", "az:host").is_err());
        assert!(validate_aggregate("a", "agg 1").is_err());
    }
}
