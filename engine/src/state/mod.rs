//! The engine's in-memory state: sharded resource providers, consumers and their
//! allocations, server groups, the catalog, and the interned names they all use.
//!
//! Locks, and the order in which they may nest (outermost first):
//! 1. a consumer's `DashMap` entry (`consumers`), held for the whole of a claim or release
//!    of that consumer so two writers of one consumer serialise;
//! 2. a server group's `Mutex` (`GroupState`), so two concurrent anti-affine claims cannot
//!    both see a host as free of members;
//! 3. provider shards' `RwLock`s, several only in ascending shard index;
//! 4. leaf maps (`index`, `names`, `projects`) and the interners, never held while taking
//!    any lock above.
//!
//! Nothing here awaits, and every critical section is short (microseconds), so the locks
//! are `parking_lot`'s synchronous ones.

pub(crate) mod catalog;
pub(crate) mod consumers;
pub(crate) mod groups;
pub mod persist;
pub(crate) mod providers;
pub mod quotas;
pub(crate) mod shard;
pub mod summary;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use crate::config::EngineConfig;
use crate::error::Result;
use crate::intern::Interner;
use crate::model::{Flavor, Image, STANDARD_CLASSES};
use crate::scheduler::{filters::Filter, weighers::Weigher};
use consumers::{Consumer, ProjectUsage};
use groups::GroupState;
use shard::Shard;

/// Where a provider lives: shard index and slot within the shard. Stable while the provider
/// exists; a provider with allocations cannot be deleted, so allocations may hold one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostRef {
    /// Shard index.
    pub shard: u32,
    /// Slot in the shard.
    pub slot: u32,
}

/// Counters the operator surface exports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful claims (one per instance).
    pub claims: AtomicU64,
    /// Releases of a consumer's allocations.
    pub releases: AtomicU64,
    /// Claims that lost a race at the re-check and fell to another host.
    pub conflicts: AtomicU64,
    /// Requests answered "no valid host".
    pub no_valid_host: AtomicU64,
}

/// The placement engine. Cheap to share (`Arc<Engine>`); every method takes `&self` and is
/// safe to call from any number of threads.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) filters: Vec<Box<dyn Filter>>,
    pub(crate) weighers: Vec<Box<dyn Weigher>>,
    /// Provider shards. `RwLock`: scans (reads) vastly outnumber writes, and a write (one
    /// claim) holds it for well under a microsecond. Cache-padded so neighbouring shards'
    /// lock words do not share a line.
    pub(crate) shards: Box<[CachePadded<RwLock<Shard>>]>,
    /// uuid → location.
    pub(crate) index: DashMap<Uuid, HostRef>,
    /// provider name → uuid (names are unique).
    pub(crate) names: DashMap<Arc<str>, Uuid>,
    /// Resource classes: ids 0..4 are the standard ones.
    pub(crate) classes: RwLock<Interner>,
    /// Trait names.
    pub(crate) traits: RwLock<Interner>,
    /// Aggregate names.
    pub(crate) aggregates: RwLock<Interner>,
    /// Availability zones.
    pub(crate) azs: RwLock<Interner>,
    /// Architectures and hypervisor types (id 0 is "unknown").
    pub(crate) labels: RwLock<Interner>,
    /// Aggregate metadata (for `AggregateInstanceExtraSpecs`), by aggregate id.
    pub(crate) agg_metadata: RwLock<HashMap<u32, BTreeMap<String, String>>>,
    /// Consumers (instances) and their allocations.
    pub(crate) consumers: DashMap<Uuid, Consumer>,
    /// Usage and own quota limits per project. A quota check and the usage update it
    /// guards happen under one entry (see `quotas`).
    pub(crate) projects: DashMap<Arc<str>, ProjectUsage>,
    /// `[engine] default_quota`, resolved.
    pub(crate) quota_default: quotas::DefaultQuota,
    /// Server groups, each behind its own lock (see the module doc).
    pub(crate) groups: DashMap<Uuid, Arc<Mutex<GroupState>>>,
    /// group name → id.
    pub(crate) group_names: DashMap<String, Uuid>,
    /// Flavors by id.
    pub(crate) flavors: DashMap<String, Arc<Flavor>>,
    /// flavor name → id.
    pub(crate) flavor_names: DashMap<String, String>,
    /// Images by id.
    pub(crate) images: DashMap<Uuid, Arc<Image>>,
    /// image name → id.
    pub(crate) image_names: DashMap<String, Uuid>,
    pub(crate) isolated_hosts: HashSet<String>,
    pub(crate) isolated_images: HashSet<String>,
    /// Counters.
    pub stats: Stats,
    /// Where changes are logged (none: an ephemeral engine).
    pub(crate) store: OnceLock<Arc<crate::store::Store>>,
}

impl Engine {
    /// An empty engine with `config` (validated).
    pub fn new(config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let filters = crate::scheduler::filters::build(&config.scheduler)?;
        let weighers = crate::scheduler::weighers::build(&config.scheduler)?;
        let n = config.shard_count();
        let mut azs = Interner::default();
        azs.intern(&config.default_availability_zone);
        Ok(Self {
            filters,
            weighers,
            shards: (0..n)
                .map(|_| CachePadded::new(RwLock::new(Shard::default())))
                .collect(),
            index: DashMap::new(),
            names: DashMap::new(),
            classes: RwLock::new(Interner::with(&STANDARD_CLASSES)),
            traits: RwLock::new(Interner::default()),
            aggregates: RwLock::new(Interner::default()),
            azs: RwLock::new(azs),
            labels: RwLock::new(Interner::with(&[""])),
            agg_metadata: RwLock::new(HashMap::new()),
            consumers: DashMap::new(),
            projects: DashMap::new(),
            quota_default: quotas::DefaultQuota::new(&config.default_quota),
            groups: DashMap::new(),
            group_names: DashMap::new(),
            flavors: DashMap::new(),
            flavor_names: DashMap::new(),
            images: DashMap::new(),
            image_names: DashMap::new(),
            isolated_hosts: config.scheduler.isolated_hosts.iter().cloned().collect(),
            isolated_images: config.scheduler.isolated_images.iter().cloned().collect(),
            stats: Stats::default(),
            store: OnceLock::new(),
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Live providers.
    pub fn provider_count(&self) -> usize {
        self.index.len()
    }

    /// Consumers holding allocations.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Approximate bytes of provider state per host (hot and cold columns, names, bit rows).
    pub fn bytes_per_host(&self) -> f64 {
        let (bytes, hosts) = self.shards.iter().fold((0usize, 0usize), |(b, h), s| {
            let s = s.read();
            (b + s.heap_bytes(), h + s.live())
        });
        let index = self.index.len() * (16 + 8 + 16) + self.names.len() * (16 + 16 + 16);
        (bytes + index) as f64 / hosts.max(1) as f64
    }

    /// The shard a provider uuid belongs to.
    #[inline]
    pub(crate) fn shard_of(&self, uuid: &Uuid) -> usize {
        let v = uuid.as_u128();
        let h = ((v as u64) ^ ((v >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.shards.len() - 1)
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Name of a resource class id.
    pub(crate) fn class_name(&self, id: crate::model::ClassId) -> String {
        self.classes.read().name(id.0).to_string()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.shards.len())
            .field("providers", &self.index.len())
            .field("consumers", &self.consumers.len())
            .finish_non_exhaustive()
    }
}
