//! What the store writes: one protobuf message per change, each the *whole* new state of one
//! object (or its deletion). Replaying records in log order therefore ends in the state the
//! engine had, whatever state a fuzzy snapshot caught an object in (see `store`).
//!
//! The messages are defined here with prost's derive rather than in `proto/`: they are the
//! engine's private disk format, not a contract with clients. Tags are never reused; a new
//! field gets a new tag, so an older log stays readable.

use std::collections::BTreeMap;

/// One logged change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// The change.
    #[prost(
        oneof = "Change",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16"
    )]
    pub change: Option<Change>,
}

/// The kinds of change. (A record lives for one append or one replay step, so the size of
/// its largest variant does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    /// A provider as it now is.
    #[prost(message, tag = "1")]
    Provider(ProviderRec),
    /// A provider was deleted (its uuid).
    #[prost(bytes = "vec", tag = "2")]
    ProviderDeleted(Vec<u8>),
    /// A consumer's allocations as they now are.
    #[prost(message, tag = "3")]
    Consumer(ConsumerRec),
    /// A consumer released everything.
    #[prost(message, tag = "4")]
    ConsumerDeleted(ConsumerGone),
    /// A server group.
    #[prost(message, tag = "5")]
    Group(GroupRec),
    /// A group was deleted (its uuid).
    #[prost(bytes = "vec", tag = "6")]
    GroupDeleted(Vec<u8>),
    /// A flavor.
    #[prost(message, tag = "7")]
    Flavor(FlavorRec),
    /// A flavor was deleted (its id).
    #[prost(string, tag = "8")]
    FlavorDeleted(String),
    /// An image.
    #[prost(message, tag = "9")]
    Image(ImageRec),
    /// An image was deleted (its uuid).
    #[prost(bytes = "vec", tag = "10")]
    ImageDeleted(Vec<u8>),
    /// A custom resource class was created.
    #[prost(string, tag = "11")]
    ResourceClass(String),
    /// An aggregate's metadata.
    #[prost(message, tag = "12")]
    AggregateMetadata(AggregateMetadataRec),
    /// A server as it now is.
    #[prost(message, tag = "13")]
    Server(ServerRec),
    /// A server was deleted (its uuid).
    #[prost(bytes = "vec", tag = "14")]
    ServerDeleted(Vec<u8>),
    /// What the conductor still remembers of a deleted server.
    #[prost(message, tag = "15")]
    DeletedServer(DeletedServerRec),
    /// A project's own quota limits, all of them (none: the project has no limits of its
    /// own any more).
    #[prost(message, tag = "16")]
    Quota(QuotaRec),
}

/// An inventory of one class.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InventoryRec {
    /// Resource class name.
    #[prost(string, tag = "1")]
    pub class: String,
    /// Physical amount.
    #[prost(uint64, tag = "2")]
    pub total: u64,
    /// Reserved.
    #[prost(uint64, tag = "3")]
    pub reserved: u64,
    /// Smallest allocation.
    #[prost(uint64, tag = "4")]
    pub min_unit: u64,
    /// Largest allocation.
    #[prost(uint64, tag = "5")]
    pub max_unit: u64,
    /// Step.
    #[prost(uint64, tag = "6")]
    pub step_size: u64,
    /// Overcommit ratio.
    #[prost(double, tag = "7")]
    pub allocation_ratio: f64,
}

/// A resource provider's definition (its usage is the sum of the consumers' allocations,
/// so it is not stored).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProviderRec {
    /// 16-byte uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Generation.
    #[prost(uint64, tag = "3")]
    pub generation: u64,
    /// Availability zone.
    #[prost(string, tag = "4")]
    pub availability_zone: String,
    /// Traits.
    #[prost(string, repeated, tag = "5")]
    pub traits: Vec<String>,
    /// Aggregates.
    #[prost(string, repeated, tag = "6")]
    pub aggregates: Vec<String>,
    /// Inventories.
    #[prost(message, repeated, tag = "7")]
    pub inventories: Vec<InventoryRec>,
    /// Capabilities.
    #[prost(btree_map = "string, string", tag = "8")]
    pub capabilities: BTreeMap<String, String>,
    /// Architecture.
    #[prost(string, optional, tag = "9")]
    pub arch: Option<String>,
    /// Hypervisor type.
    #[prost(string, optional, tag = "10")]
    pub hypervisor_type: Option<String>,
    /// Hypervisor version.
    #[prost(string, optional, tag = "11")]
    pub hypervisor_version: Option<String>,
}

/// Amounts of one consumer on one provider.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocationRec {
    /// Provider uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub provider: Vec<u8>,
    /// Class names, parallel to `amounts`.
    #[prost(string, repeated, tag = "2")]
    pub classes: Vec<String>,
    /// Amounts.
    #[prost(uint64, repeated, tag = "3")]
    pub amounts: Vec<u64>,
}

/// A provider's generation after a change of allocations (claims bump it, and a client
/// holding it must not see it go back after a restart).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProviderGeneration {
    /// Provider uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub provider: Vec<u8>,
    /// Its generation.
    #[prost(uint64, tag = "2")]
    pub generation: u64,
}

/// A consumer and everything it holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsumerRec {
    /// Consumer uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Project.
    #[prost(string, tag = "2")]
    pub project: String,
    /// User.
    #[prost(string, tag = "3")]
    pub user: String,
    /// Consumer generation.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
    /// Allocations.
    #[prost(message, repeated, tag = "5")]
    pub allocations: Vec<AllocationRec>,
    /// Destination of a move in progress.
    #[prost(message, repeated, tag = "6")]
    pub moving: Vec<AllocationRec>,
    /// Server group uuid (empty: none).
    #[prost(bytes = "vec", tag = "7")]
    pub group: Vec<u8>,
    /// Generations of the providers involved, after the change.
    #[prost(message, repeated, tag = "8")]
    pub provider_generations: Vec<ProviderGeneration>,
}

/// A consumer that released everything.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsumerGone {
    /// Consumer uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Generations of the providers it left.
    #[prost(message, repeated, tag = "2")]
    pub provider_generations: Vec<ProviderGeneration>,
}

/// A server group's definition (membership follows from the consumers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupRec {
    /// Uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Policy, Nova's spelling (`anti-affinity`, ...).
    #[prost(string, tag = "3")]
    pub policy: String,
    /// max_server_per_host (anti-affinity only; 0 = unset).
    #[prost(uint32, tag = "4")]
    pub max_server_per_host: u32,
    /// Project.
    #[prost(string, tag = "5")]
    pub project: String,
}

/// A flavor as created.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FlavorRec {
    /// Id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// vCPUs.
    #[prost(uint64, tag = "3")]
    pub vcpus: u64,
    /// RAM.
    #[prost(uint64, tag = "4")]
    pub ram_mb: u64,
    /// Disk.
    #[prost(uint64, tag = "5")]
    pub disk_gb: u64,
    /// Extra specs.
    #[prost(btree_map = "string, string", tag = "6")]
    pub extra_specs: BTreeMap<String, String>,
}

/// An image as created.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageRec {
    /// Uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Properties.
    #[prost(btree_map = "string, string", tag = "3")]
    pub properties: BTreeMap<String, String>,
}

/// An aggregate's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregateMetadataRec {
    /// Aggregate name.
    #[prost(string, tag = "1")]
    pub aggregate: String,
    /// Metadata.
    #[prost(btree_map = "string, string", tag = "2")]
    pub metadata: BTreeMap<String, String>,
}

/// One entry of a server's action history.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionRec {
    /// Action name.
    #[prost(string, tag = "1")]
    pub action: String,
    /// Request id.
    #[prost(string, tag = "2")]
    pub request_id: String,
    /// Start (ms).
    #[prost(uint64, tag = "3")]
    pub started_at_ms: u64,
    /// End (ms, 0 = running).
    #[prost(uint64, tag = "4")]
    pub finished_at_ms: u64,
    /// Success.
    #[prost(bool, tag = "5")]
    pub ok: bool,
    /// Message.
    #[prost(string, tag = "6")]
    pub message: String,
}

/// A host as a server refers to it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HostRec {
    /// Provider uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// A server (instance) and the conductor's bookkeeping that must survive a restart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerRec {
    /// Uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// Creation sequence.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Project.
    #[prost(string, tag = "4")]
    pub project_id: String,
    /// User.
    #[prost(string, tag = "5")]
    pub user_id: String,
    /// Current flavor (by value: a flavor may be deleted while servers use it).
    #[prost(message, optional, tag = "6")]
    pub flavor: Option<FlavorRec>,
    /// Image (by value).
    #[prost(message, optional, tag = "7")]
    pub image: Option<ImageRec>,
    /// vm_state (the contract's enum number).
    #[prost(int32, tag = "8")]
    pub vm_state: i32,
    /// task_state (the contract's enum number).
    #[prost(int32, tag = "9")]
    pub task_state: i32,
    /// Power state.
    #[prost(string, tag = "10")]
    pub power_state: String,
    /// Host.
    #[prost(message, optional, tag = "11")]
    pub host: Option<HostRec>,
    /// Zone.
    #[prost(string, tag = "12")]
    pub availability_zone: String,
    /// Group uuid (empty: none).
    #[prost(bytes = "vec", tag = "13")]
    pub group: Vec<u8>,
    /// Metadata.
    #[prost(btree_map = "string, string", tag = "14")]
    pub metadata: BTreeMap<String, String>,
    /// Locked.
    #[prost(bool, tag = "15")]
    pub locked: bool,
    /// Lock reason.
    #[prost(string, tag = "16")]
    pub locked_reason: String,
    /// Last fault.
    #[prost(string, tag = "17")]
    pub fault: String,
    /// Created (ms).
    #[prost(uint64, tag = "18")]
    pub created_at_ms: u64,
    /// Updated (ms).
    #[prost(uint64, tag = "19")]
    pub updated_at_ms: u64,
    /// While RESIZED: the source host.
    #[prost(message, optional, tag = "20")]
    pub resize_source: Option<HostRec>,
    /// While RESIZED: the old flavor.
    #[prost(message, optional, tag = "21")]
    pub resize_old_flavor: Option<FlavorRec>,
    /// While RESIZED: it was stopped before the move.
    #[prost(bool, tag = "22")]
    pub resize_was_stopped: bool,
    /// Action history.
    #[prost(message, repeated, tag = "23")]
    pub actions: Vec<ActionRec>,
    /// The zone the create asked for.
    #[prost(string, optional, tag = "24")]
    pub requested_az: Option<String>,
}

/// A deleted server the conductor still remembers, as it now is: the request id of the
/// DeleteServer that deleted it (a repeat with that id succeeds again rather than failing
/// NOT_FOUND) and, for a server deleted while its host's node was away, that host (whose
/// domain for it is deleted when the node registers again). Both empty: forgotten.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeletedServerRec {
    /// Server uuid.
    #[prost(bytes = "vec", tag = "1")]
    pub uuid: Vec<u8>,
    /// The delete's request id (empty: none, or no longer remembered).
    #[prost(string, tag = "2")]
    pub request_id: String,
    /// Host uuid whose node must still delete the domain (empty: none).
    #[prost(bytes = "vec", tag = "3")]
    pub local_host: Vec<u8>,
}

/// One limit of a project's quota.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuotaLimitRec {
    /// `instances` or a resource class.
    #[prost(string, tag = "1")]
    pub resource: String,
    /// The limit; absent: unlimited (overriding a default).
    #[prost(uint64, optional, tag = "2")]
    pub limit: Option<u64>,
}

/// A project's own quota limits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuotaRec {
    /// Project.
    #[prost(string, tag = "1")]
    pub project: String,
    /// Its limits (every one it has).
    #[prost(message, repeated, tag = "2")]
    pub limits: Vec<QuotaLimitRec>,
}
