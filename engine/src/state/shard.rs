//! One shard of resource providers, laid out as a struct of arrays: the scan reads a few
//! dense columns (free capacity per standard class, AZ id, flags, trait and aggregate bit
//! rows) and never chases a pointer or hashes a string per host. Cold data (names,
//! inventories as configured, custom classes, capabilities) sits in separate columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::model::{ClassId, Inventory};

/// Flag: the host is up (heartbeating, or not managed by a node daemon).
pub const UP: u8 = 1;
/// Flag: the host carries `COMPUTE_STATUS_DISABLED`.
pub const DISABLED: u8 = 2;
/// Flag: the host is listed in `isolated_hosts`.
pub const ISOLATED: u8 = 4;

/// Number of standard classes with dense columns.
pub const NSTD: usize = 4;

/// Per shard and standard class: the tightest unit rules of any host that has (or had) an
/// inventory of the class. Bounds only ever tighten (a host leaving does not loosen them),
/// so they are conservative: when an amount is inside them, every host's `min_unit`,
/// `max_unit` and `step_size` accept it and the capacity test is the free-amount compare
/// alone. Hosts without the inventory fail that compare anyway (their free amount is never
/// positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitBounds {
    /// Largest `min_unit`.
    pub max_min_unit: u32,
    /// Smallest `max_unit`.
    pub min_max_unit: u32,
    /// Whether any `step_size` is not 1.
    pub stepped: bool,
}

impl Default for UnitBounds {
    fn default() -> Self {
        Self {
            max_min_unit: 0,
            min_max_unit: u32::MAX,
            stepped: false,
        }
    }
}

impl UnitBounds {
    /// Whether every host's unit rules accept `amount`.
    #[inline]
    pub fn accept(&self, amount: u32) -> bool {
        !self.stepped && self.max_min_unit <= amount && amount <= self.min_max_unit
    }

    fn tighten(&mut self, min_unit: u32, max_unit: u32, step: u32) {
        self.max_min_unit = self.max_min_unit.max(min_unit);
        self.min_max_unit = self.min_max_unit.min(max_unit);
        self.stepped |= step != 1;
    }
}

/// A custom-class inventory and its usage on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomInventory {
    /// Class id.
    pub class: ClassId,
    /// The inventory.
    pub inv: Inventory,
    /// Sum of allocations.
    pub used: u64,
}

/// Rarely read per-host data.
#[derive(Debug, Clone, Default)]
pub struct ColdHost {
    /// Capabilities for `capabilities:*` extra specs.
    pub capabilities: BTreeMap<String, String>,
    /// Architecture, as given.
    pub arch: Option<String>,
    /// Hypervisor type, as given.
    pub hypervisor_type: Option<String>,
    /// Hypervisor version, as given.
    pub hypervisor_version: Option<String>,
}

/// The providers of one shard. Slot `i` of every column is one host; `present` says which
/// slots hold a live host (deleted slots are reused).
#[derive(Debug, Default)]
pub struct Shard {
    /// Bit `i` set ⇔ slot `i` holds a provider.
    pub present: Vec<u64>,
    free_slots: Vec<u32>,
    /// Provider uuid.
    pub uuid: Vec<Uuid>,
    /// Provider name.
    pub name: Vec<Arc<str>>,
    /// Provider generation.
    pub generation: Vec<u64>,
    /// Availability-zone id.
    pub az: Vec<u16>,
    /// `UP | DISABLED | ISOLATED`.
    pub flags: Vec<u8>,
    /// Capacity − used per standard class (negative if capacity was lowered under usage).
    pub free: [Vec<i64>; NSTD],
    /// `free` saturated to `i32`: the capacity filter's column. Exact for its compare, as
    /// amounts are at most `MAX_AMOUNT` (`i32::MAX`); half the bytes, and SSE2 compares
    /// four `i32`s at once but no `i64`s.
    pub free32: [Vec<i32>; NSTD],
    /// `free` as `f64`: the free-capacity weighers' column, copied or gathered as it is
    /// (x86 has no packed `i64` → `f64` conversion before AVX-512, so converting per host
    /// per request went one scalar instruction at a time).
    pub freef: [Vec<f64>; NSTD],
    /// Per block of 64 slots (one survivor-bitmap word), the smallest `free32` of any slot
    /// in it, live or not: when it is at least the amount asked, the whole block has room
    /// and the capacity filter skips it. Kept exact on every write of `free32`.
    pub free_floor: [Vec<i32>; NSTD],
    /// Unit rules summary per standard class (see [`UnitBounds`]).
    pub unit_bounds: [UnitBounds; NSTD],
    /// Used per standard class.
    pub used: [Vec<u64>; NSTD],
    /// min_unit per standard class (0 when the host has no such inventory).
    pub min_unit: [Vec<u32>; NSTD],
    /// max_unit per standard class (0 when the host has no such inventory).
    pub max_unit: [Vec<u32>; NSTD],
    /// step_size per standard class.
    pub step: [Vec<u32>; NSTD],
    /// Inventory per standard class as configured.
    pub inv: [Vec<Option<Inventory>>; NSTD],
    /// Custom-class inventories (sparse; most hosts have none).
    pub custom: Vec<Vec<CustomInventory>>,
    /// Words per host in `traits`.
    pub trait_words: usize,
    /// Trait bit rows, `trait_words` per host.
    pub traits: Vec<u64>,
    /// Words per host in `aggs`.
    pub agg_words: usize,
    /// Aggregate bit rows, `agg_words` per host.
    pub aggs: Vec<u64>,
    /// Consumers with allocations on the host.
    pub instances: Vec<u32>,
    /// Builds and moves in flight.
    pub io_ops: Vec<u32>,
    /// Recent build failures.
    pub failures: Vec<u32>,
    /// Architecture label id (0 = unknown).
    pub arch: Vec<u16>,
    /// Hypervisor-type label id (0 = unknown).
    pub hv_type: Vec<u16>,
    /// Hypervisor version packed by `pack_version` (0 = unknown).
    pub hv_version: Vec<u64>,
    /// Cold data.
    pub cold: Vec<ColdHost>,
}

/// Everything needed to fill a slot.
pub struct NewHost {
    pub uuid: Uuid,
    pub name: Arc<str>,
    pub az: u16,
    pub flags: u8,
    pub inventories: Vec<(ClassId, Inventory)>,
    pub traits: Vec<u32>,
    pub aggs: Vec<u32>,
    pub arch: u16,
    pub hv_type: u16,
    pub hv_version: u64,
    pub cold: ColdHost,
}

impl Shard {
    /// Number of slots (live or free).
    #[inline]
    pub fn slots(&self) -> usize {
        self.uuid.len()
    }

    /// Whether slot `i` holds a provider.
    #[inline]
    pub fn is_present(&self, i: usize) -> bool {
        self.present
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Live providers in the shard.
    pub fn live(&self) -> usize {
        self.present.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The trait row of slot `i`.
    #[inline]
    pub fn trait_row(&self, i: usize) -> &[u64] {
        &self.traits[i * self.trait_words..(i + 1) * self.trait_words]
    }

    /// The aggregate row of slot `i`.
    #[inline]
    pub fn agg_row(&self, i: usize) -> &[u64] {
        &self.aggs[i * self.agg_words..(i + 1) * self.agg_words]
    }

    /// Puts a host in a free slot (or a new one) and returns the slot.
    pub fn insert(&mut self, h: NewHost) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(s) => s as usize,
            None => {
                let s = self.slots();
                self.grow_one();
                s
            }
        };
        self.uuid[slot] = h.uuid;
        self.name[slot] = h.name;
        self.generation[slot] = 0;
        self.az[slot] = h.az;
        self.flags[slot] = h.flags;
        self.instances[slot] = 0;
        self.io_ops[slot] = 0;
        self.failures[slot] = 0;
        self.arch[slot] = h.arch;
        self.hv_type[slot] = h.hv_type;
        self.hv_version[slot] = h.hv_version;
        self.cold[slot] = h.cold;
        for c in 0..NSTD {
            self.used[c][slot] = 0;
        }
        self.custom[slot].clear();
        self.set_inventories(slot, &h.inventories);
        self.set_traits(slot, &h.traits);
        self.set_aggs(slot, &h.aggs);
        self.present[slot / 64] |= 1 << (slot % 64);
        slot as u32
    }

    fn grow_one(&mut self) {
        let n = self.slots() + 1;
        self.uuid.push(Uuid::nil());
        self.name.push(Arc::from(""));
        self.generation.push(0);
        self.az.push(0);
        self.flags.push(0);
        for c in 0..NSTD {
            self.free[c].push(0);
            self.free32[c].push(0);
            self.freef[c].push(0.0);
            if self.free_floor[c].len() < n.div_ceil(64) {
                self.free_floor[c].push(0);
            }
            self.refresh_floor(c, n - 1);
            self.used[c].push(0);
            self.min_unit[c].push(0);
            self.max_unit[c].push(0);
            self.step[c].push(1);
            self.inv[c].push(None);
        }
        self.custom.push(Vec::new());
        self.traits.resize(n * self.trait_words.max(1), 0);
        self.trait_words = self.trait_words.max(1);
        self.aggs.resize(n * self.agg_words.max(1), 0);
        self.agg_words = self.agg_words.max(1);
        self.instances.push(0);
        self.io_ops.push(0);
        self.failures.push(0);
        self.arch.push(0);
        self.hv_type.push(0);
        self.hv_version.push(0);
        self.cold.push(ColdHost::default());
        if self.present.len() * 64 < n {
            self.present.push(0);
        }
    }

    /// Frees slot `i`.
    pub fn remove(&mut self, i: usize) {
        self.present[i / 64] &= !(1 << (i % 64));
        self.uuid[i] = Uuid::nil();
        self.free_slots.push(i as u32);
    }

    /// Replaces every inventory of slot `i`; usage is kept (free is recomputed).
    pub fn set_inventories(&mut self, i: usize, invs: &[(ClassId, Inventory)]) {
        for c in 0..NSTD {
            self.inv[c][i] = None;
        }
        let old_custom = std::mem::take(&mut self.custom[i]);
        for (class, inv) in invs {
            match class.std_index() {
                Some(c) => self.inv[c][i] = Some(*inv),
                None => {
                    let used = old_custom
                        .iter()
                        .find(|ci| ci.class == *class)
                        .map_or(0, |ci| ci.used);
                    self.custom[i].push(CustomInventory {
                        class: *class,
                        inv: *inv,
                        used,
                    });
                }
            }
        }
        for c in 0..NSTD {
            self.refresh_std(c, i);
        }
    }

    /// Recomputes the hot columns of standard class `c` on slot `i` from inventory and usage.
    pub fn refresh_std(&mut self, c: usize, i: usize) {
        match self.inv[c][i] {
            Some(inv) => {
                self.set_free(c, i, inv.capacity() as i64 - self.used[c][i] as i64);
                self.min_unit[c][i] = inv.min_unit as u32;
                self.max_unit[c][i] = inv.max_unit as u32;
                self.step[c][i] = inv.step_size as u32;
                self.unit_bounds[c].tighten(
                    inv.min_unit as u32,
                    inv.max_unit as u32,
                    inv.step_size as u32,
                );
            }
            None => {
                self.set_free(c, i, -(self.used[c][i] as i64));
                self.min_unit[c][i] = 0;
                self.max_unit[c][i] = 0;
                self.step[c][i] = 1;
            }
        }
    }

    /// Sets `free` and its `i32` and `f64` shadows.
    #[inline]
    fn set_free(&mut self, c: usize, i: usize, free: i64) {
        self.free[c][i] = free;
        self.freef[c][i] = free as f64;
        self.free32[c][i] = free.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        self.refresh_floor(c, i);
    }

    /// Recomputes `free_floor` for the block of slot `i` (64 values: a few dozen
    /// instructions per write, against a compare per host per request saved).
    #[inline]
    fn refresh_floor(&mut self, c: usize, i: usize) {
        let b = i / 64;
        let col = &self.free32[c];
        let floor = col[b * 64..col.len().min(b * 64 + 64)]
            .iter()
            .fold(i32::MAX, |m, &v| m.min(v));
        self.free_floor[c][b] = floor;
    }

    /// Replaces the trait row of slot `i`, widening the shard's rows if an id needs it.
    pub fn set_traits(&mut self, i: usize, ids: &[u32]) {
        let need = ids.iter().map(|&t| t as usize / 64 + 1).max().unwrap_or(1);
        if need > self.trait_words {
            self.traits = restride(&self.traits, self.trait_words, need, self.slots());
            self.trait_words = need;
        }
        let w = self.trait_words;
        let row = &mut self.traits[i * w..(i + 1) * w];
        row.fill(0);
        for &t in ids {
            row[t as usize / 64] |= 1 << (t % 64);
        }
    }

    /// Replaces the aggregate row of slot `i`.
    pub fn set_aggs(&mut self, i: usize, ids: &[u32]) {
        let need = ids.iter().map(|&t| t as usize / 64 + 1).max().unwrap_or(1);
        if need > self.agg_words {
            self.aggs = restride(&self.aggs, self.agg_words, need, self.slots());
            self.agg_words = need;
        }
        let w = self.agg_words;
        let row = &mut self.aggs[i * w..(i + 1) * w];
        row.fill(0);
        for &t in ids {
            row[t as usize / 64] |= 1 << (t % 64);
        }
    }

    /// Ids set in a bit row.
    pub fn row_ids(row: &[u64]) -> Vec<u32> {
        let mut out = Vec::new();
        for (w, &bits) in row.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                out.push(w as u32 * 64 + b.trailing_zeros());
                b &= b - 1;
            }
        }
        out
    }

    /// Free amount of `class` on slot `i` (may be negative), and the inventory.
    pub fn free_of(&self, i: usize, class: ClassId) -> Option<(i64, Inventory)> {
        match class.std_index() {
            Some(c) => self.inv[c][i].map(|inv| (self.free[c][i], inv)),
            None => self.custom[i]
                .iter()
                .find(|ci| ci.class == class)
                .map(|ci| (ci.inv.capacity() as i64 - ci.used as i64, ci.inv)),
        }
    }

    /// Used amount of `class` on slot `i`.
    pub fn used_of(&self, i: usize, class: ClassId) -> u64 {
        match class.std_index() {
            Some(c) => self.used[c][i],
            None => self.custom[i]
                .iter()
                .find(|ci| ci.class == class)
                .map_or(0, |ci| ci.used),
        }
    }

    /// Whether `amount` of `class` fits on slot `i` now (capacity and unit rules).
    pub fn fits(&self, i: usize, class: ClassId, amount: u64) -> bool {
        match self.free_of(i, class) {
            Some((free, inv)) => free >= amount as i64 && inv.check_amount(amount).is_ok(),
            None => false,
        }
    }

    /// Adds `amount` of `class` to slot `i`'s usage. Callers check `fits` first.
    pub fn add_usage(&mut self, i: usize, class: ClassId, amount: u64) {
        match class.std_index() {
            Some(c) => {
                self.used[c][i] += amount;
                self.set_free(c, i, self.free[c][i] - amount as i64);
            }
            None => match self.custom[i].iter_mut().find(|ci| ci.class == class) {
                Some(ci) => ci.used += amount,
                // Unreachable after `fits`; recorded anyway so a release balances exactly.
                None => self.custom[i].push(CustomInventory {
                    class,
                    inv: Inventory::new(1),
                    used: amount,
                }),
            },
        }
    }

    /// Subtracts `amount` of `class` from slot `i`'s usage (saturating).
    pub fn sub_usage(&mut self, i: usize, class: ClassId, amount: u64) {
        match class.std_index() {
            Some(c) => {
                let a = amount.min(self.used[c][i]);
                self.used[c][i] -= a;
                self.set_free(c, i, self.free[c][i] + a as i64);
            }
            None => {
                if let Some(ci) = self.custom[i].iter_mut().find(|ci| ci.class == class) {
                    ci.used = ci.used.saturating_sub(amount);
                }
            }
        }
    }

    /// Whether slot `i` has any usage at all.
    pub fn has_usage(&self, i: usize) -> bool {
        self.instances[i] > 0
            || (0..NSTD).any(|c| self.used[c][i] > 0)
            || self.custom[i].iter().any(|c| c.used > 0)
    }

    /// Approximate resident bytes of this shard (for the bytes-per-host report).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let n = self.slots();
        let per_host = size_of::<Uuid>()
            + size_of::<Arc<str>>()
            + 8
            + 2
            + 1
            + NSTD * (8 + 4 + 8 + 8 + 4 + 4 + 4 + size_of::<Option<Inventory>>())
            + NSTD * 4 / 64
            + size_of::<Vec<CustomInventory>>()
            + 4 * 3
            + 2 * 2
            + 8
            + size_of::<ColdHost>();
        let names: usize = self.name.iter().map(|n| n.len() + 16).sum();
        let custom: usize = self
            .custom
            .iter()
            .map(|c| c.capacity() * size_of::<CustomInventory>())
            .sum();
        n * per_host
            + (self.traits.len() + self.aggs.len() + self.present.len()) * 8
            + names
            + custom
    }
}

fn restride(rows: &[u64], old: usize, new: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; n * new];
    for i in 0..n {
        out[i * new..i * new + old].copy_from_slice(&rows[i * old..(i + 1) * old]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, vcpus: u64) -> NewHost {
        NewHost {
            uuid: Uuid::new_v4(),
            name: Arc::from(name),
            az: 1,
            flags: UP,
            inventories: vec![(ClassId::VCPU, Inventory::new(vcpus).ratio(2.0))],
            traits: vec![3],
            aggs: vec![],
            arch: 0,
            hv_type: 0,
            hv_version: 0,
            cold: ColdHost::default(),
        }
    }

    #[test]
    fn insert_remove_reuses_slots_and_keeps_columns_aligned() {
        let mut s = Shard::default();
        let a = s.insert(host("a", 4));
        let b = s.insert(host("b", 8));
        assert_eq!((a, b), (0, 1));
        assert_eq!(s.free[0][1], 16);
        s.remove(0);
        assert!(!s.is_present(0));
        assert_eq!(s.live(), 1);
        let c = s.insert(host("c", 2));
        assert_eq!(c, 0, "freed slot is reused");
        assert_eq!(s.free[0][0], 4);
        assert_eq!(&*s.name[0], "c");
    }

    #[test]
    fn trait_rows_widen_without_losing_bits() {
        let mut s = Shard::default();
        s.insert(host("a", 1));
        s.insert(host("b", 1));
        s.set_traits(1, &[3, 130]);
        assert_eq!(s.trait_words, 3);
        assert_eq!(Shard::row_ids(s.trait_row(0)), vec![3]);
        assert_eq!(Shard::row_ids(s.trait_row(1)), vec![3, 130]);
    }

    #[test]
    fn usage_moves_free_both_ways_and_inventory_changes_keep_usage() {
        let mut s = Shard::default();
        s.insert(host("a", 4)); // capacity 8
        assert!(s.fits(0, ClassId::VCPU, 8));
        s.add_usage(0, ClassId::VCPU, 6);
        assert!(!s.fits(0, ClassId::VCPU, 3));
        s.set_inventories(0, &[(ClassId::VCPU, Inventory::new(2))]);
        assert_eq!(
            s.free[0][0], -4,
            "capacity lowered under usage goes negative"
        );
        s.sub_usage(0, ClassId::VCPU, 6);
        assert_eq!(s.free[0][0], 2);
        assert!(!s.fits(0, ClassId::MEMORY_MB, 1), "no inventory, no fit");
    }
}
