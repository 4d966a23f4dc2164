//! String interning and small bitsets: names become dense integer ids once, at the edge, so
//! the hot scan compares integers and ANDs words instead of hashing strings per host.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

/// A name ↔ id table. Ids are dense, start at 0 and are never reused.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    /// A table pre-loaded with `names` (ids 0.. in order).
    pub fn with(names: &[&str]) -> Self {
        let mut t = Self::default();
        for n in names {
            t.intern(n);
        }
        t
    }

    /// The id of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, allocating one if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The name of `id` (empty for an id never handed out).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    /// Number of ids handed out.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no id was handed out.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// All names in id order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

/// A request-side bitset over interned ids (traits, aggregates).
pub type Bits = SmallVec<[u64; 4]>;

/// Sets bit `id` in `bits`, growing it as needed.
pub fn set_bit(bits: &mut Bits, id: u32) {
    let w = (id / 64) as usize;
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    bits[w] |= 1 << (id % 64);
}

/// Words needed for `n` ids.
pub fn words_for(n: usize) -> usize {
    n.div_ceil(64).max(1)
}

/// Whether `host` (a host's bit row) has every bit of `req`.
#[inline]
pub fn has_all(host: &[u64], req: &[u64]) -> bool {
    req.iter()
        .enumerate()
        .all(|(i, &r)| host.get(i).copied().unwrap_or(0) & r == r)
}

/// Whether `host` has any bit of `req`.
#[inline]
pub fn has_any(host: &[u64], req: &[u64]) -> bool {
    req.iter().zip(host).any(|(&r, &h)| r & h != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_is_dense_and_stable() {
        let mut t = Interner::with(&["A", "B"]);
        assert_eq!(t.intern("B"), 1);
        assert_eq!(t.intern("C"), 2);
        assert_eq!(t.get("C"), Some(2));
        assert_eq!(t.name(0), "A");
        assert_eq!(t.name(99), "");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn bit_ops_handle_uneven_lengths() {
        let mut req = Bits::new();
        set_bit(&mut req, 70);
        assert!(
            !has_all(&[u64::MAX], &req),
            "host row shorter than the request lacks bit 70"
        );
        assert!(has_all(&[0, 1 << 6], &req));
        assert!(has_any(&[0, 1 << 6], &req));
        assert!(!has_any(&[u64::MAX], &req));
        assert_eq!(words_for(0), 1);
        assert_eq!(words_for(65), 2);
    }
}
