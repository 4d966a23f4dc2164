//! Weighers: each gives every surviving host a raw value; the pipeline normalises each
//! weigher's values to [0, 1] over the candidates (all equal → all 0), multiplies by the
//! weigher's multiplier and sums — Nova's rule, so operators can reason about multipliers.
//! A weigher whose multiplier is 0, or that has nothing to say about the request, is
//! skipped entirely.

mod build_failure;
mod count;
mod free;
mod group;

use super::context::RequestContext;
use crate::config::SchedulerConfig;
use crate::error::{EngineError, Result};
use crate::state::shard::Shard;

/// A weigher. Contract: `weigh` writes exactly one finite raw value per slot in `slots`
/// into `out` (same order), reads only, and never fails.
pub trait Weigher: Send + Sync {
    /// Name, used in configuration and in `Explain`.
    fn name(&self) -> &'static str;
    /// The configured multiplier.
    fn multiplier(&self) -> f64;
    /// Whether this request gives the weigher anything to weigh.
    fn active(&self, _ctx: &RequestContext) -> bool {
        true
    }
    /// Raw values for `slots` of `shard` (index `shard_idx`); `slots` are ascending and
    /// distinct.
    fn weigh(
        &self,
        ctx: &RequestContext,
        shard: &Shard,
        shard_idx: u32,
        slots: &[u32],
        out: &mut [f64],
    );
    /// `Some(v)` when the weigher can tell cheaply that `weigh` would give every slot of
    /// `shard` the value `v` (a counter that is 0 on every host, say); the pipeline then
    /// skips `weigh`, the bounds pass and the scoring for that shard. `None` (the default)
    /// promises nothing.
    fn uniform(&self, _ctx: &RequestContext, _shard: &Shard) -> Option<f64> {
        None
    }
}

/// Builds the enabled weighers from configuration (multiplier 0 ones are kept, and skipped
/// per request, so `Explain` can still list them).
pub fn build(config: &SchedulerConfig) -> Result<Vec<Box<dyn Weigher>>> {
    let m = &config.multipliers;
    let mut out: Vec<Box<dyn Weigher>> = Vec::new();
    for (i, name) in config.weighers.iter().enumerate() {
        let w: Box<dyn Weigher> = match name.as_str() {
            "RAM" => Box::new(free::FreeWeigher::ram(m.ram)),
            "CPU" => Box::new(free::FreeWeigher::cpu(m.cpu)),
            "Disk" => Box::new(free::FreeWeigher::disk(m.disk)),
            "InstanceCount" => Box::new(count::InstanceCount(m.instance_count)),
            "IoOps" => Box::new(count::IoOps(m.io_ops)),
            "SoftAffinity" => Box::new(group::SoftAffinity(m.soft_affinity)),
            "SoftAntiAffinity" => Box::new(group::SoftAntiAffinity(m.soft_anti_affinity)),
            "BuildFailure" => Box::new(build_failure::BuildFailure(m.build_failure)),
            other => {
                return Err(EngineError::invalid(
                    format!("scheduler.weighers[{i}]"),
                    format!(
                        "unknown weigher {other:?}; known: {}",
                        crate::config::DEFAULT_WEIGHERS.join(", ")
                    ),
                ));
            }
        };
        if out.iter().any(|w| w.name() == name) {
            return Err(EngineError::invalid(
                format!("scheduler.weighers[{i}]"),
                format!("{name} listed twice"),
            ));
        }
        out.push(w);
    }
    Ok(out)
}

/// Writes `f(col[slot])` for each of `slots` into `out`. A column that is 0 everywhere (the
/// usual state of failure and in-flight counters) is detected with one vectorised pass over
/// the column and written as `f(0)` throughout, instead of a gather per candidate.
#[inline]
pub fn gather_counter(col: &[u32], slots: &[u32], out: &mut [f64], f: impl Fn(u32) -> f64) {
    if col.iter().fold(0, |acc, &v| acc | v) == 0 {
        out.fill(f(0));
        return;
    }
    for (o, &i) in out.iter_mut().zip(slots) {
        *o = f(col[i as usize]);
    }
}

/// `Some(f(0))` when `col` is 0 everywhere (one vectorised pass), for [`Weigher::uniform`].
#[inline]
pub fn uniform_counter(col: &[u32], f: impl Fn(u32) -> f64) -> Option<f64> {
    (col.iter().fold(0, |acc, &v| acc | v) == 0).then(|| f(0))
}

/// Nova's normalisation: `(x − min) / (max − min)`, or 0 for every host when all are equal.
#[inline]
pub fn normalize(x: f64, min: f64, max: f64) -> f64 {
    let range = max - min;
    if range > 0.0 { (x - min) / range } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize(5.0, 0.0, 10.0), 0.5);
        assert_eq!(normalize(3.0, 3.0, 3.0), 0.0);
        assert_eq!(normalize(-2.0, -4.0, 0.0), 0.5);
    }

    #[test]
    fn registry_rejects_unknown_and_duplicates() {
        let mut c = SchedulerConfig {
            weighers: vec!["RAM".into(), "Nope".into()],
            ..Default::default()
        };
        assert!(build(&c).is_err());
        c.weighers = vec!["RAM".into(), "RAM".into()];
        assert!(build(&c).is_err());
        c.weighers = crate::config::DEFAULT_WEIGHERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(build(&c).unwrap().len(), 8);
    }
}
