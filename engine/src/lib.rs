//! The Berth placement engine: an in-memory, lock-sharded model of a cloud's resource
//! providers and a filter → weigh → claim scheduler over it. Where to find things:
//!
//! - [`model`]: the domain types (resource classes, inventories, providers, flavors,
//!   images, server groups, request specs) and their validation.
//! - [`state`]: the sharded state and its locks — providers in struct-of-arrays shards,
//!   consumers and allocations, server groups, the catalog.
//! - [`scheduler`]: the pipeline — request context, filters (one file each), weighers
//!   (one file each), selection and the atomic claim.
//! - [`lifecycle`]: servers and compute nodes — the conductor (create with retries, the
//!   actions, moves, evacuation) and the node hub (registration, heartbeats, dispatch).
//! - [`api`]: the gRPC services (tonic), the request-id layer and the server assembly.
//! - [`store`]: durability — the write-ahead log, snapshots and the start-up rebuild.
//! - [`auth`]: tokens, roles, the policy table, the authentication layer and TLS.
//! - [`config`]: every knob and its default.
//! - [`error`]: the one error type, with a stable code per variant.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod intern;
pub mod lifecycle;
pub mod model;
pub mod scheduler;
pub mod state;
pub mod store;

pub use config::{EngineConfig, SchedulerConfig};
pub use error::{EngineError, NoValidHost, Result};
pub use scheduler::{Explanation, HostChoice, RankedHost, Selection, WeigherContribution};
pub use state::consumers::{AllocationRequest, ConsumerAllocations, ProjectUsageReport};
pub use state::providers::{DISABLED_TRAIT, ProviderFilter};
pub use state::quotas::{LimitSource, QuotaLine, QuotaReport};
pub use state::summary::CloudSummary;
pub use state::{Engine, HostRef};
