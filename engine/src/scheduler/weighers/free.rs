//! `RAM`, `CPU` and `Disk`: free amount of `MEMORY_MB`, `VCPU` and `DISK_GB` (capacity with
//! overcommit, minus usage). A positive multiplier spreads instances over the emptiest
//! hosts; a negative one packs them onto the fullest (the usual way to keep whole hosts
//! free for large flavors).

use super::Weigher;
use crate::model::ClassId;
use crate::scheduler::context::RequestContext;
use crate::state::shard::Shard;

/// Free amount of one standard class.
pub struct FreeWeigher {
    name: &'static str,
    class: usize,
    multiplier: f64,
}

impl FreeWeigher {
    /// Free RAM.
    pub fn ram(multiplier: f64) -> Self {
        Self {
            name: "RAM",
            class: ClassId::MEMORY_MB.0 as usize,
            multiplier,
        }
    }
    /// Free VCPUs.
    pub fn cpu(multiplier: f64) -> Self {
        Self {
            name: "CPU",
            class: ClassId::VCPU.0 as usize,
            multiplier,
        }
    }
    /// Free disk.
    pub fn disk(multiplier: f64) -> Self {
        Self {
            name: "Disk",
            class: ClassId::DISK_GB.0 as usize,
            multiplier,
        }
    }
}

impl Weigher for FreeWeigher {
    fn name(&self) -> &'static str {
        self.name
    }
    fn multiplier(&self) -> f64 {
        self.multiplier
    }
    fn weigh(&self, _: &RequestContext, s: &Shard, _: u32, slots: &[u32], out: &mut [f64]) {
        let free = &s.free[self.class];
        for (o, &i) in out.iter_mut().zip(slots) {
            *o = free[i as usize] as f64;
        }
    }
}
