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
        let free = &s.freef[self.class];
        // Every slot survived (the usual case on a lightly used cloud): the survivors are
        // exactly 0..n (sorted, distinct, below n), so the gather is a straight copy.
        if let Some(col) = free.get(..slots.len())
            && slots.last().is_some_and(|&l| l as usize + 1 == slots.len())
        {
            let n = out.len().min(col.len());
            out[..n].copy_from_slice(&col[..n]);
            return;
        }
        // Four gathers per iteration: the loop overhead is most of a one-load body.
        let (mut o4, mut s4) = (out.chunks_exact_mut(4), slots.chunks_exact(4));
        for (o, i) in (&mut o4).zip(&mut s4) {
            for l in 0..4 {
                o[l] = free[i[l] as usize];
            }
        }
        for (o, &i) in o4.into_remainder().iter_mut().zip(s4.remainder()) {
            *o = free[i as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Inventory, RequestSpec};
    use crate::scheduler::filters::testkit::*;

    fn sized(name: &str, vcpu: u64, ram: u64, disk: u64) -> crate::model::ProviderSpec {
        host(name)
            .inventory("VCPU", Inventory::new(vcpu))
            .inventory("MEMORY_MB", Inventory::new(ram))
            .inventory("DISK_GB", Inventory::new(disk))
    }

    #[test]
    fn spread_with_positive_pack_with_negative() {
        // (multiplier key, value, weigher name, ranking best first, normalised h1 value)
        let cases: &[(&str, f64, &str, [&str; 3], f64)] = &[
            ("ram", 1.0, "RAM", ["h2", "h1", "h3"], 1.0 / 3.0),
            ("ram", -1.0, "RAM", ["h3", "h1", "h2"], 1.0 / 3.0),
            ("ram", 2.5, "RAM", ["h2", "h1", "h3"], 1.0 / 3.0),
            ("cpu", 1.0, "CPU", ["h3", "h2", "h1"], 0.0),
            ("cpu", -1.0, "CPU", ["h1", "h2", "h3"], 0.0),
            ("disk", 1.0, "Disk", ["h3", "h1", "h2"], 1.0 / 3.0),
            ("disk", -1.0, "Disk", ["h2", "h1", "h3"], 1.0 / 3.0),
        ];
        for &(key, m, name, want, h1_norm) in cases {
            let mut cloud = TestCloud::with_scheduler(|s| s.multipliers = multipliers(&[(key, m)]));
            cloud.host(sized("h1", 4, 8192, 100));
            cloud.host(sized("h2", 8, 16384, 50));
            cloud.host(sized("h3", 16, 4096, 200));
            let e = cloud.explain(&spec());
            let ranking: Vec<&str> = e.ranked.iter().map(|r| r.host.name.as_str()).collect();
            assert_eq!(ranking, want, "{key} × {m}");
            for r in &e.ranked {
                assert_eq!(r.contributions.len(), 1, "only {name} is on: {r:?}");
                assert_eq!(r.contributions[0].weigher, name);
            }
            let h1 = e.ranked.iter().find(|r| r.host.name == "h1").unwrap();
            assert!((h1.contributions[0].normalized - h1_norm).abs() < 1e-12);
            let best = &e.ranked[0].contributions[0];
            assert_eq!(best.normalized, if m > 0.0 { 1.0 } else { 0.0 });
            assert_eq!(e.ranked[0].weight, m.max(0.0));
            // The pipeline picks the same host.
            assert_eq!(cloud.place(&spec())[0].host.name, want[0], "{key} × {m}");
        }
    }

    #[test]
    fn free_counts_overcommit_reserved_and_usage() {
        let mut cloud = TestCloud::with_scheduler(|s| s.multipliers = multipliers(&[("ram", 1.0)]));
        cloud.host(host("ratio").inventory("MEMORY_MB", Inventory::new(8192).ratio(1.5)));
        let used = cloud.host(host("used").inventory("MEMORY_MB", Inventory::new(16384)));
        cloud.host(host("reserved").inventory("MEMORY_MB", Inventory::new(16384).reserved(8192)));
        cloud.use_resources(used, &[("MEMORY_MB", 6000)]);
        let e = cloud.explain(&spec());
        let got: Vec<(&str, f64)> = e
            .ranked
            .iter()
            .map(|r| (r.host.name.as_str(), r.contributions[0].raw))
            .collect();
        assert_eq!(
            got,
            vec![("ratio", 12288.0), ("used", 10384.0), ("reserved", 8192.0)]
        );
    }

    #[test]
    fn consecutive_placements_spread_or_pack() {
        for (m, distinct) in [(1.0, 2), (-1.0, 1)] {
            let mut cloud =
                TestCloud::with_scheduler(|s| s.multipliers = multipliers(&[("ram", m)]));
            cloud.host(host("a"));
            cloud.host(host("b"));
            let one = RequestSpec::resources(&[("MEMORY_MB", 1024)]);
            let mut hosts: Vec<String> = (0..2)
                .map(|_| cloud.place(&one)[0].host.name.clone())
                .collect();
            hosts.dedup();
            assert_eq!(hosts.len(), distinct, "ram × {m}: {hosts:?}");
        }
    }
}
