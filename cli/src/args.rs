//! The command line: clap definitions for every command and flag, and the value parsers for
//! the compact argument syntaxes (`CLASS=TOTAL,ratio=4.0`, `CLASS=N`, `key=value`).
//!
//! Everything here is pure; nothing talks to the engine. A value that fails to parse is a
//! usage error (exit code 2) whose message names the offending part.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Engine endpoint used when neither `--engine` nor `BERTH_ENGINE` is given.
pub const DEFAULT_ENGINE: &str = "http://127.0.0.1:50051";

const TOP_EXAMPLES: &str = "\
Examples:
  berth host create compute-1 --az az1 --inventory VCPU=64,ratio=4.0 --inventory MEMORY_MB=262144,reserved=4096
  berth host list
  berth flavor create m1.small --vcpus 1 --ram 2048 --disk 20
  berth schedule --flavor m1.small --count 3 --dry-run
  berth server create web-1 --flavor m1.small --image ubuntu-24.04
  berth server stop 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth --engine http://10.0.0.5:50051 -o json usage | jq '.[].usages'
  berth --engine https://engine:50051 --ca-cert pki/ca.pem --token \"$(cat member.token)\" server list

On the engine's machine the CLI sends the admin token the engine wrote to
./berth-data/admin.token (--data-dir); elsewhere give --token or BERTH_TOKEN.

Exit status: 0 success, 1 the engine returned an error, 2 bad command line,
3 the engine could not be reached.";

/// `berth`: command-line client for the Berth placement engine.
///
/// Talks to a running `berth-engine` over gRPC. Output is an aligned table for people by
/// default; `-o json` prints JSON on stdout for scripts. Errors go to stderr as
/// `error: <CODE>: <message>`.
#[derive(Debug, Parser)]
#[command(name = "berth", version, after_help = TOP_EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// gRPC endpoint of the engine, e.g. `http://127.0.0.1:50051` (`http://` is assumed when
    /// no scheme is given).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_ENGINE",
        default_value = DEFAULT_ENGINE,
        value_name = "URL"
    )]
    pub engine: String,

    /// Output format: `table` for people, `json` for scripts (stable field names).
    #[arg(
        short = 'o',
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// Seconds to wait for the connection and for each call before giving up.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_TIMEOUT",
        default_value_t = 30,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout: u64,

    /// Bearer token for the engine (berth-engine token issue prints one). Without it, for an
    /// engine on this machine, the admin token in <data-dir>/admin.token is used.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The engine's data directory, where it writes admin.token (read only for an engine on
    /// this machine, when no --token is given).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_DATA_DIR",
        default_value = "./berth-data",
        value_name = "DIR"
    )]
    pub data_dir: std::path::PathBuf,

    /// CA certificate (PEM) that signed the engine's certificate, for an https:// engine
    /// (berth-engine cert init writes ca.pem).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BERTH_CA_CERT",
        value_name = "FILE"
    )]
    pub ca_cert: Option<std::path::PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (lists) or `field: value` lines (single objects).
    Table,
    /// Pretty-printed JSON; lists are JSON arrays.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create servers (instances), act on them (stop, resize, migrate, ...), inspect, delete.
    #[command(subcommand, long_about = SERVER_ABOUT)]
    Server(ServerCommand),
    /// Manage hosts (Placement resource providers): list, disable, evacuate.
    #[command(subcommand)]
    Host(HostCommand),
    /// Show or replace a host's inventory (capacity per resource class).
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Show or replace a host's traits, or list every known trait.
    #[command(subcommand)]
    Trait(TraitCommand),
    /// Show or replace the aggregates a host is a member of.
    #[command(subcommand)]
    Aggregate(AggregateCommand),
    /// Manage flavors (instance sizes).
    #[command(subcommand)]
    Flavor(FlavorCommand),
    /// Manage image records (the metadata scheduling uses).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage server groups (affinity / anti-affinity).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Place instances: pick hosts and claim their resources (or explain with --dry-run).
    Schedule(ScheduleArgs),
    /// Show or delete the allocations a consumer (instance) holds.
    #[command(subcommand)]
    Allocation(AllocationCommand),
    /// Show resource usage per host, or a project's total usage.
    Usage(UsageArgs),
    /// Show or set a project's quota (limits on instances and resource classes).
    #[command(subcommand)]
    Quota(QuotaCommand),
}

// ---- host --------------------------------------------------------------------------------

/// `berth host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List hosts, optionally filtered (filters are ANDed): state (up or down, disabled),
    /// instance count, and each resource class as `used/capacity`.
    #[command(after_help = "\
Examples:
  berth host list
  berth host list --az az1 --trait HW_CPU_X86_AVX2
  berth host list --resource VCPU=8 --resource MEMORY_MB=16384   # hosts with that much free
  berth -o json host list | jq -r '.[].uuid'")]
    List(HostListArgs),
    /// Show one host: attributes, traits, aggregates, inventory and usage.
    #[command(after_help = "\
Examples:
  berth host show compute-1
  berth host show 6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a -o json")]
    Show {
        /// Host UUID or name.
        host: String,
    },
    /// Create a host (resource provider).
    #[command(after_help = "\
Examples:
  berth host create compute-1
  berth host create compute-2 --az az1 --trait HW_CPU_X86_AVX2 \\
      --inventory VCPU=64,ratio=4.0 --inventory MEMORY_MB=262144,reserved=4096,ratio=1.5 \\
      --inventory DISK_GB=2000 --arch x86_64 --hypervisor-type kvm --hypervisor-version 8.2.0")]
    Create(HostCreateArgs),
    /// Delete a host. Fails (FAILED_PRECONDITION) while any consumer holds allocations on it.
    #[command(after_help = "\
Examples:
  berth host delete compute-1")]
    Delete {
        /// Host UUID or name.
        host: String,
    },
    /// Disable a host: it keeps its servers but receives no new ones (adds the trait
    /// COMPUTE_STATUS_DISABLED). Harmless if already disabled.
    #[command(after_help = "\
Examples:
  berth host disable compute-1 --reason 'RAM replacement, ticket 4711'")]
    Disable {
        /// Host UUID or name.
        host: String,
        /// Why, recorded in the engine's log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Enable a disabled host for new servers again. Harmless if already enabled.
    #[command(after_help = "\
Examples:
  berth host enable compute-1")]
    Enable {
        /// Host UUID or name.
        host: String,
    },
    /// Evacuate a host that is down: rebuild each of its servers on another host.
    ///
    /// Each server moves with its allocations and ends ACTIVE (or STOPPED if it was
    /// stopped). Fails with FAILED_PRECONDITION while the host is up. Prints one line per
    /// server; exits 1 if any server could not be evacuated.
    #[command(after_help = "\
Examples:
  berth host evacuate compute-1
  berth host evacuate compute-1 --request-id evac-compute-1-2024-06-01   # safe to repeat")]
    Evacuate {
        /// Host UUID or name.
        host: String,
        /// Idempotency key.
        #[command(flatten)]
        request: RequestIdArg,
    },
}

/// Filters of `berth host list`.
#[derive(Debug, Args)]
pub struct HostListArgs {
    /// Only the host with exactly this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only hosts in this availability zone.
    #[arg(long, value_name = "ZONE")]
    pub az: Option<String>,
    /// Only hosts that have this trait; repeat for several (all required).
    #[arg(long = "trait", value_name = "TRAIT", value_parser = parse_trait)]
    pub traits: Vec<String>,
    /// Only hosts in at least one of these aggregates (UUIDs); repeatable.
    #[arg(long, value_name = "AGGREGATE")]
    pub member_of: Vec<String>,
    /// Only hosts with at least N free of CLASS, e.g. `VCPU=4`; repeatable.
    #[arg(long, value_name = "CLASS=N", value_parser = parse_resource)]
    pub resource: Vec<ResourceArg>,
}

/// Arguments of `berth host create`.
#[derive(Debug, Args)]
pub struct HostCreateArgs {
    /// Unique host name, 1 to 200 characters.
    pub name: String,
    /// UUID for the host; the engine generates one if omitted.
    #[arg(long, value_parser = parse_uuid)]
    pub uuid: Option<String>,
    /// Availability zone; the default zone if omitted.
    #[arg(long, value_name = "ZONE")]
    pub az: Option<String>,
    /// Initial trait; repeatable.
    #[arg(long = "trait", value_name = "TRAIT", value_parser = parse_trait)]
    pub traits: Vec<String>,
    /// Initial aggregate membership (aggregate UUID); repeatable.
    #[arg(long = "aggregate", value_name = "AGGREGATE")]
    pub aggregates: Vec<String>,
    /// Initial inventory of one class, same syntax as `berth inventory set`:
    /// `CLASS=TOTAL[,reserved=R][,ratio=X][,min=N][,max=N][,step=N]`; repeatable.
    #[arg(long = "inventory", value_name = "SPEC", value_parser = parse_inventory)]
    pub inventories: Vec<InventorySpec>,
    /// Host capability `KEY=VALUE` (matched by flavor extra specs `capabilities:KEY`);
    /// repeatable.
    #[arg(long = "capability", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub capabilities: Vec<(String, String)>,
    /// CPU architecture, e.g. `x86_64` (matched by image property `hw_architecture`).
    #[arg(long)]
    pub arch: Option<String>,
    /// Hypervisor type, e.g. `kvm` (matched by image property `img_hv_type`).
    #[arg(long)]
    pub hypervisor_type: Option<String>,
    /// Hypervisor version, e.g. `8.2.0` (compared with `img_hv_requested_version`).
    #[arg(long)]
    pub hypervisor_version: Option<String>,
}

// ---- server ------------------------------------------------------------------------------

const SERVER_ABOUT: &str = "\
Create servers (instances), act on them, inspect and delete them (the engine's Servers \
service).

Each call waits until the work is done (a build, a move) and prints the server as it then \
is; raise --timeout for slow builds and migrations. A node action that fails does not fail \
the call: the failure goes into the server's action history (and a failed build or move \
leaves the server in ERROR); the command prints the server, then the failure on stderr, and \
exits 1.

vm_state: BUILDING, ACTIVE, STOPPED, PAUSED, SUSPENDED, RESIZED (moved, waiting for \
confirm-resize or revert-resize), SHELVED, SHELVED_OFFLOADED (on no host), ERROR (see \
`fault`; delete, reboot --hard, rebuild or evacuate recover). task_state names the action \
in progress (`-` when idle). An action fails with FAILED_PRECONDITION when the vm_state does \
not allow it, while another task runs, or while the server is locked.

Every command that changes something sends a request id (a fresh UUID unless --request-id \
is given) in the request and as `x-request-id` metadata. Repeating a command with the same \
--request-id for the same server does not do the work twice: the engine answers as it did \
the first time. Use it to retry after a timeout or a lost connection.";

/// `berth server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Create servers: schedule, claim resources and spawn (ends ACTIVE, or ERROR with a
    /// fault). All or nothing if no host fits (RESOURCE_EXHAUSTED).
    ///
    /// A spawn that fails is retried on another host, up to the engine's max_attempts; a
    /// server that runs out of attempts is returned in ERROR with every attempt's reason in
    /// its fault, and the command exits 1. With --count N the servers are named NAME-1 ..
    /// NAME-N.
    #[command(after_help = "\
Examples:
  berth server create web-1 --flavor m1.small --image ubuntu-24.04
  berth server create web --flavor m1.small --image ubuntu-24.04 --count 3 --group web-ha
  berth server create db-1 --flavor m1.large --image ubuntu-24.04 --az az1 \\
      --meta role=db --meta tier=gold --trait HW_CPU_X86_AVX2 --project acme --user alice
  berth server create web-1 --flavor m1.small --image cirros --request-id web-1-create   # retry safely
  berth -o json server create web-1 --flavor m1.small --image cirros | jq -r '.[].uuid'")]
    Create(Box<ServerCreateArgs>),
    /// List servers in creation order, following every page; filters are ANDed.
    #[command(after_help = "\
Examples:
  berth server list
  berth server list --host compute-1
  berth server list --project acme --state error
  berth -o json server list | jq -r '.[] | select(.vm_state == \"ERROR\") | .uuid'")]
    List(ServerListArgs),
    /// Show one server: every field and its action history (oldest first).
    #[command(after_help = "\
Examples:
  berth server show 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth -o json server show 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 | jq .actions")]
    Show {
        /// Server UUID.
        #[arg(value_parser = parse_uuid)]
        uuid: String,
    },
    /// Delete servers: remove each domain, release its resources and group membership.
    /// Valid from every state unless locked.
    ///
    /// Every server is tried; the command exits 1 if any could not be deleted. One request
    /// id serves all of them (the engine keys idempotency by server and request id).
    #[command(after_help = "\
Examples:
  berth server delete 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth -o json server list --state error | jq -r '.[].uuid' | xargs berth server delete")]
    Delete(ServerDeleteArgs),
    /// The actions on one server (stop, resize, migrate, ...).
    #[command(flatten)]
    Action(ServerActionCommand),
}

/// `berth server <action> UUID`: one subcommand per `ServerAction` of the engine.
#[derive(Debug, Subcommand)]
pub enum ServerActionCommand {
    /// Power a server off (from ACTIVE or ERROR; ends STOPPED).
    #[command(after_help = "\
Examples:
  berth server stop 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Stop(ServerTarget),
    /// Power a server on (from STOPPED; ends ACTIVE).
    #[command(after_help = "\
Examples:
  berth server start 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Start(ServerTarget),
    /// Reboot a server: ask the guest (from ACTIVE), or with --hard power-cycle it (from
    /// ACTIVE, STOPPED, PAUSED, SUSPENDED or ERROR); ends ACTIVE.
    #[command(after_help = "\
Examples:
  berth server reboot 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth server reboot 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --hard   # also recovers ERROR")]
    Reboot(ServerRebootArgs),
    /// Freeze a server's vCPUs, keeping its memory (from ACTIVE; ends PAUSED).
    #[command(after_help = "\
Examples:
  berth server pause 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Pause(ServerTarget),
    /// Thaw a paused server (from PAUSED; ends ACTIVE).
    #[command(after_help = "\
Examples:
  berth server unpause 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Unpause(ServerTarget),
    /// Save a server's memory to disk and stop it (from ACTIVE or PAUSED; ends SUSPENDED).
    #[command(after_help = "\
Examples:
  berth server suspend 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Suspend(ServerTarget),
    /// Restore a suspended server (from SUSPENDED; ends ACTIVE).
    #[command(after_help = "\
Examples:
  berth server resume 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Resume(ServerTarget),
    /// Snapshot a server into a new image record (from ACTIVE, STOPPED, PAUSED or
    /// SUSPENDED; the state is unchanged). Prints the new image id.
    #[command(after_help = "\
Examples:
  berth server snapshot 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --name web-1-2024-06-01
  berth -o json server snapshot 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --name golden | jq -r .image_id")]
    Snapshot(ServerSnapshotArgs),
    /// Rebuild a server from an image on the same host (from ACTIVE, STOPPED or ERROR;
    /// ends ACTIVE, or STOPPED if it was stopped).
    #[command(after_help = "\
Examples:
  berth server rebuild 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10                 # same image
  berth server rebuild 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --image ubuntu-24.04")]
    Rebuild(ServerRebuildArgs),
    /// Shelve a server: stop it and snapshot it, still holding its host's resources (from
    /// ACTIVE, STOPPED, PAUSED or SUSPENDED; ends SHELVED).
    #[command(after_help = "\
Examples:
  berth server shelve 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Shelve(ServerTarget),
    /// Remove a shelved server from its host, releasing its resources (from SHELVED; ends
    /// SHELVED_OFFLOADED).
    #[command(after_help = "\
Examples:
  berth server shelve-offload 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    ShelveOffload(ServerTarget),
    /// Bring a shelved server back, scheduling it again if it was offloaded (from SHELVED
    /// or SHELVED_OFFLOADED; ends ACTIVE).
    #[command(after_help = "\
Examples:
  berth server unshelve 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Unshelve(ServerTarget),
    /// Change a server's flavor; it moves to a host the scheduler picks (from ACTIVE or
    /// STOPPED; ends RESIZED: then confirm-resize or revert-resize).
    #[command(after_help = "\
Examples:
  berth server resize 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --flavor m1.large
  berth server confirm-resize 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Resize(ServerResizeArgs),
    /// Keep a resize or cold migration: the old host's resources are released (from
    /// RESIZED; ends ACTIVE, or STOPPED if it was stopped).
    #[command(after_help = "\
Examples:
  berth server confirm-resize 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    ConfirmResize(ServerTarget),
    /// Undo a resize or cold migration: back on the old host with the old flavor (from
    /// RESIZED; ends ACTIVE, or STOPPED if it was stopped).
    #[command(after_help = "\
Examples:
  berth server revert-resize 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    RevertResize(ServerTarget),
    /// Cold-migrate a server to another host (from ACTIVE or STOPPED; ends RESIZED: then
    /// confirm-resize or revert-resize).
    #[command(after_help = "\
Examples:
  berth server migrate 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth server migrate 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --host compute-2")]
    Migrate(ServerMoveArgs),
    /// Live-migrate a running server to another host (from ACTIVE or PAUSED; the state is
    /// unchanged). FAILED_PRECONDITION if either host cannot.
    #[command(after_help = "\
Examples:
  berth server live-migrate 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth --timeout 600 server live-migrate 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --host compute-2")]
    LiveMigrate(ServerMoveArgs),
    /// Rebuild a server on another host because its host is down (from any state but
    /// BUILDING and SHELVED_OFFLOADED; ends ACTIVE, or STOPPED if it was stopped).
    #[command(after_help = "\
Examples:
  berth server evacuate 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth host evacuate compute-1      # every server of a down host")]
    Evacuate(ServerMoveArgs),
    /// Lock a server: every action but unlock is refused, delete included (any state).
    #[command(after_help = "\
Examples:
  berth server lock 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --reason 'legal hold'")]
    Lock(ServerLockArgs),
    /// Unlock a locked server (any state).
    #[command(after_help = "\
Examples:
  berth server unlock 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Unlock(ServerTarget),
}

/// `--request-id`, shared by every command that changes something.
#[derive(Debug, Clone, Args)]
pub struct RequestIdArg {
    /// Idempotency key (1 to 128 printable ASCII characters, no spaces); a fresh UUID if
    /// omitted. Repeat a command with the same id to retry it without doing the work twice.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    pub request_id: Option<String>,
}

/// The server an action applies to, and its request id.
#[derive(Debug, Args)]
pub struct ServerTarget {
    /// Server UUID.
    #[arg(value_parser = parse_uuid)]
    pub uuid: String,
    /// Idempotency key.
    #[command(flatten)]
    pub request: RequestIdArg,
}

/// Arguments of `berth server create`.
#[derive(Debug, Args)]
pub struct ServerCreateArgs {
    /// Display name, 1 to 255 characters (not unique). With --count N the servers are
    /// named NAME-1 .. NAME-N.
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: String,
    /// Flavor id or name.
    #[arg(long)]
    pub flavor: String,
    /// Image id or name.
    #[arg(long)]
    pub image: String,
    /// Server group UUID or name; the servers join it and its policy applies.
    #[arg(long)]
    pub group: Option<String>,
    /// Only hosts in this availability zone.
    #[arg(long, value_name = "ZONE")]
    pub az: Option<String>,
    /// Number of servers to create (all are placed, or none).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// User metadata `KEY=VALUE` (at most 128; keys 1 to 255 characters, values up to
    /// 255); repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Project that owns the servers.
    #[arg(long, env = "BERTH_PROJECT", default_value = "default")]
    pub project: String,
    /// User that owns the servers.
    #[arg(long, env = "BERTH_USER", default_value = "default")]
    pub user: String,
    /// A trait every chosen host must have; repeatable.
    #[arg(long = "trait", value_name = "TRAIT", value_parser = parse_trait)]
    pub traits: Vec<String>,
    /// A trait no chosen host may have; repeatable.
    #[arg(long, value_name = "TRAIT", value_parser = parse_trait)]
    pub forbid_trait: Vec<String>,
    /// Only consider this host (UUID or name); repeatable.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Idempotency key.
    #[command(flatten)]
    pub request: RequestIdArg,
}

/// Filters of `berth server list`.
#[derive(Debug, Args)]
pub struct ServerListArgs {
    /// Only servers on this host (UUID or name).
    #[arg(long)]
    pub host: Option<String>,
    /// Only this project's servers.
    #[arg(long)]
    pub project: Option<String>,
    /// Only servers in this vm_state (case does not matter).
    #[arg(long, value_enum, ignore_case = true)]
    pub state: Option<ServerState>,
}

/// A server's vm_state as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerState {
    /// Scheduled and spawning.
    Building,
    /// Running.
    Active,
    /// Powered off by an action.
    Stopped,
    /// vCPUs frozen.
    Paused,
    /// Memory saved to disk.
    Suspended,
    /// Moved, waiting for confirm-resize or revert-resize.
    Resized,
    /// Shelved, still on its host.
    Shelved,
    /// Shelved and on no host.
    #[value(alias = "shelved_offloaded")]
    ShelvedOffloaded,
    /// Something failed; see the fault.
    Error,
}

/// Arguments of `berth server delete`.
#[derive(Debug, Args)]
pub struct ServerDeleteArgs {
    /// Server UUIDs.
    #[arg(required = true, value_name = "UUID", value_parser = parse_uuid)]
    pub uuids: Vec<String>,
    /// Idempotency key.
    #[command(flatten)]
    pub request: RequestIdArg,
}

/// Arguments of `berth server reboot`.
#[derive(Debug, Args)]
pub struct ServerRebootArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// Power-cycle instead of asking the guest; also valid from STOPPED, PAUSED, SUSPENDED
    /// and ERROR.
    #[arg(long)]
    pub hard: bool,
}

/// Arguments of `berth server snapshot`.
#[derive(Debug, Args)]
pub struct ServerSnapshotArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// Name of the new image record, 1 to 255 characters, unique.
    #[arg(long, value_name = "IMAGE_NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: String,
}

/// Arguments of `berth server rebuild`.
#[derive(Debug, Args)]
pub struct ServerRebuildArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// Image id or name to rebuild from; the server's current image if omitted.
    #[arg(long)]
    pub image: Option<String>,
}

/// Arguments of `berth server resize`.
#[derive(Debug, Args)]
pub struct ServerResizeArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// New flavor id or name; must differ from the current one.
    #[arg(long)]
    pub flavor: String,
}

/// Arguments of `berth server migrate`, `live-migrate` and `evacuate`.
#[derive(Debug, Args)]
pub struct ServerMoveArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// Destination host (UUID or name); the scheduler chooses if omitted. A named host
    /// must still pass the filters.
    #[arg(long)]
    pub host: Option<String>,
}

/// Arguments of `berth server lock`.
#[derive(Debug, Args)]
pub struct ServerLockArgs {
    /// The server and request id.
    #[command(flatten)]
    pub target: ServerTarget,
    /// Why; shown by `berth server show`.
    #[arg(long)]
    pub reason: Option<String>,
}

// ---- inventory / trait / aggregate --------------------------------------------------------

/// `berth inventory ...`
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Replace a host's inventory. Without --amend, classes not named are REMOVED.
    ///
    /// Each SPEC is `CLASS=TOTAL` optionally followed by comma-separated settings:
    /// `reserved=R` (held back for the host, default 0), `ratio=X` (overcommit, default
    /// 1.0), `min=N`, `max=N`, `step=N` (per-allocation limits, defaults 1, TOTAL, 1).
    /// Capacity is `(TOTAL - reserved) * ratio`. The host's current generation is read
    /// first; on a generation conflict (a concurrent write) the command re-reads and
    /// retries, up to 3 attempts.
    #[command(after_help = "\
Examples:
  berth inventory set compute-1 VCPU=64,ratio=4.0 MEMORY_MB=262144,reserved=4096,ratio=1.5 DISK_GB=2000
  berth inventory set compute-1 --amend CUSTOM_GPU=4,max=2      # keep the other classes
  berth inventory set compute-1 VCPU=32,min=1,max=16,step=1")]
    Set(InventorySetArgs),
    /// Show a host's inventory with usage.
    #[command(after_help = "\
Examples:
  berth inventory show compute-1")]
    Show {
        /// Host UUID or name.
        host: String,
    },
}

/// Arguments of `berth inventory set`.
#[derive(Debug, Args)]
pub struct InventorySetArgs {
    /// Host UUID or name.
    pub host: String,
    /// Inventory per class: `CLASS=TOTAL[,reserved=R][,ratio=X][,min=N][,max=N][,step=N]`.
    #[arg(required = true, value_name = "SPEC", value_parser = parse_inventory)]
    pub specs: Vec<InventorySpec>,
    /// Keep the host's other classes; only the classes named are replaced (each wholly:
    /// settings not given take their defaults, not their old values).
    #[arg(long)]
    pub amend: bool,
}

/// `berth trait ...`
#[derive(Debug, Subcommand)]
pub enum TraitCommand {
    /// Replace a host's traits with exactly the ones given (custom traits start `CUSTOM_`).
    /// Retries on a generation conflict, up to 3 attempts.
    #[command(after_help = "\
Examples:
  berth trait set compute-1 HW_CPU_X86_AVX2 CUSTOM_GPU
  berth trait set compute-1 COMPUTE_STATUS_DISABLED   # take the host out of scheduling
  berth trait set compute-1 --clear")]
    Set {
        /// Host UUID or name.
        host: String,
        /// The complete new trait set.
        #[arg(value_name = "TRAIT", required_unless_present = "clear", value_parser = parse_trait)]
        traits: Vec<String>,
        /// Remove every trait from the host.
        #[arg(long, conflicts_with = "traits")]
        clear: bool,
    },
    /// Show a host's traits.
    #[command(after_help = "\
Examples:
  berth trait show compute-1")]
    Show {
        /// Host UUID or name.
        host: String,
    },
    /// List every trait the engine knows (standard and custom).
    #[command(after_help = "\
Examples:
  berth trait list
  berth trait list --prefix CUSTOM_")]
    List {
        /// Only traits starting with this prefix, e.g. `CUSTOM_` or `HW_CPU_`.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// `berth aggregate ...`
#[derive(Debug, Subcommand)]
pub enum AggregateCommand {
    /// Replace the aggregates a host is a member of (aggregate UUIDs). Retries on a
    /// generation conflict, up to 3 attempts.
    #[command(after_help = "\
Examples:
  berth aggregate set compute-1 2b0a0d7e-3c35-4a47-8f7e-1f4f2e0f9c11
  berth aggregate set compute-1 --clear")]
    Set {
        /// Host UUID or name.
        host: String,
        /// The complete new set of aggregate UUIDs.
        #[arg(value_name = "AGGREGATE", required_unless_present = "clear")]
        aggregates: Vec<String>,
        /// Remove the host from every aggregate.
        #[arg(long, conflicts_with = "aggregates")]
        clear: bool,
    },
    /// Show the aggregates a host is a member of.
    #[command(after_help = "\
Examples:
  berth aggregate show compute-1")]
    Show {
        /// Host UUID or name.
        host: String,
    },
}

// ---- catalog -----------------------------------------------------------------------------

/// `berth flavor ...`
#[derive(Debug, Subcommand)]
pub enum FlavorCommand {
    /// Create a flavor.
    ///
    /// Extra spec keys the scheduler understands: `resources:CLASS=N` (add or override a
    /// class; 0 removes it), `trait:NAME=required|forbidden`, `capabilities:KEY=VALUE`,
    /// `aggregate_instance_extra_specs:KEY=VALUE`.
    #[command(after_help = "\
Examples:
  berth flavor create m1.small --vcpus 1 --ram 2048 --disk 20
  berth flavor create gpu.large --vcpus 16 --ram 65536 --disk 100 \\
      --property resources:CUSTOM_GPU=1 --property trait:HW_CPU_X86_AVX2=required")]
    Create(FlavorCreateArgs),
    /// List flavors.
    #[command(after_help = "\
Examples:
  berth flavor list
  berth -o json flavor list | jq -r '.[].name'")]
    List,
    /// Show one flavor.
    #[command(after_help = "\
Examples:
  berth flavor show m1.small")]
    Show {
        /// Flavor id or name.
        flavor: String,
    },
    /// Delete a flavor (instances already placed with it are not affected).
    #[command(after_help = "\
Examples:
  berth flavor delete m1.small")]
    Delete {
        /// Flavor id or name.
        flavor: String,
    },
}

/// Arguments of `berth flavor create`.
#[derive(Debug, Args)]
pub struct FlavorCreateArgs {
    /// Unique flavor name.
    pub name: String,
    /// Virtual CPUs (resource class VCPU); at least 1.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub vcpus: u32,
    /// RAM in MiB (resource class MEMORY_MB); at least 1.
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..))]
    pub ram: u64,
    /// Root disk in GiB (resource class DISK_GB); 0 means no local disk.
    #[arg(long, value_name = "GiB", default_value_t = 0)]
    pub disk: u64,
    /// Extra spec `KEY=VALUE`; repeatable.
    #[arg(
        long = "property",
        visible_alias = "extra-spec",
        value_name = "KEY=VALUE",
        value_parser = parse_key_value
    )]
    pub properties: Vec<(String, String)>,
    /// Flavor id; the engine generates a UUID if omitted.
    #[arg(long)]
    pub id: Option<String>,
}

/// `berth image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Create an image record.
    ///
    /// Property keys the scheduler understands: `hw_architecture` (e.g. `x86_64`),
    /// `img_hv_type` (e.g. `kvm`), `img_hv_requested_version` (e.g. `>=8.0`) and
    /// `trait:NAME=required|forbidden`.
    #[command(after_help = "\
Examples:
  berth image create ubuntu-24.04 --property hw_architecture=x86_64 --property img_hv_type=kvm
  berth image create arm-image --property hw_architecture=aarch64")]
    Create(ImageCreateArgs),
    /// List images.
    #[command(after_help = "\
Examples:
  berth image list")]
    List,
    /// Show one image.
    #[command(after_help = "\
Examples:
  berth image show ubuntu-24.04")]
    Show {
        /// Image id or name.
        image: String,
    },
    /// Delete an image record.
    #[command(after_help = "\
Examples:
  berth image delete ubuntu-24.04")]
    Delete {
        /// Image id or name.
        image: String,
    },
}

/// Arguments of `berth image create`.
#[derive(Debug, Args)]
pub struct ImageCreateArgs {
    /// Unique image name.
    pub name: String,
    /// Image property `KEY=VALUE`; repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub properties: Vec<(String, String)>,
    /// Image id; the engine generates a UUID if omitted.
    #[arg(long)]
    pub id: Option<String>,
}

/// `berth group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a server group.
    #[command(after_help = "\
Examples:
  berth group create web --policy anti-affinity
  berth group create db --policy anti-affinity --max-per-host 2 --project acme
  berth group create batch --policy soft-affinity")]
    Create(GroupCreateArgs),
    /// List server groups.
    #[command(after_help = "\
Examples:
  berth group list")]
    List,
    /// Show one server group with its members and their hosts.
    #[command(after_help = "\
Examples:
  berth group show web")]
    Show {
        /// Server group UUID or name.
        group: String,
    },
    /// Delete a server group.
    #[command(after_help = "\
Examples:
  berth group delete web")]
    Delete {
        /// Server group UUID or name.
        group: String,
    },
}

/// Arguments of `berth group create`.
#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// Unique group name.
    pub name: String,
    /// Placement policy. Hard policies filter hosts; soft ones only weigh them.
    #[arg(long, value_enum)]
    pub policy: Policy,
    /// Most members on one host; only with `--policy anti-affinity` (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_host: Option<u32>,
    /// Project that owns the group.
    #[arg(long, env = "BERTH_PROJECT", default_value = "default")]
    pub project: String,
    /// Group UUID; the engine generates one if omitted.
    #[arg(long, value_parser = parse_uuid)]
    pub id: Option<String>,
}

/// Server-group policy as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Hard: every member on the same host.
    Affinity,
    /// Hard: at most --max-per-host members per host.
    AntiAffinity,
    /// Soft: prefer hosts already holding members.
    SoftAffinity,
    /// Soft: prefer hosts holding fewer members.
    SoftAntiAffinity,
}

// ---- schedule ----------------------------------------------------------------------------

/// Arguments of `berth schedule`.
#[derive(Debug, Args)]
#[command(
    long_about = "Place instances: pick a host for each and claim its resources \
(Scheduler.SelectDestinations). All or nothing: if one instance cannot be placed, nothing is \
claimed and the command fails with RESOURCE_EXHAUSTED and the per-filter rejection counts.\n\n\
With --dry-run nothing is claimed (Scheduler.Explain): it prints how many hosts each filter \
rejected and every passing host ranked, with each weigher's weighted contribution to its \
total weight. Only the first instance is explained.",
    after_help = "\
Examples:
  berth schedule --flavor m1.small
  berth schedule --flavor m1.small --count 3 --group web --project acme --user alice
  berth schedule --flavor m1.small --az az1 --image ubuntu-24.04 --dry-run
  berth schedule --resource VCPU=2 --resource MEMORY_MB=4096 --require-trait HW_CPU_X86_AVX2
  berth -o json schedule --flavor m1.small | jq -r '.[].host_name'"
)]
pub struct ScheduleArgs {
    /// Flavor id or name (required unless --resource is given).
    #[arg(long, required_unless_present = "resources")]
    pub flavor: Option<String>,
    /// Image id or name; its properties constrain the host.
    #[arg(long)]
    pub image: Option<String>,
    /// Only hosts in this availability zone.
    #[arg(long, value_name = "ZONE")]
    pub az: Option<String>,
    /// Server group UUID or name; the new instances join it and its policy applies.
    #[arg(long)]
    pub group: Option<String>,
    /// Number of instances to place (all or nothing).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Project that will own the allocations.
    #[arg(long, env = "BERTH_PROJECT", default_value = "default")]
    pub project: String,
    /// User that will own the allocations.
    #[arg(long, env = "BERTH_USER", default_value = "default")]
    pub user: String,
    /// Add or override a resource, `CLASS=N` (0 removes a flavor's class); repeatable.
    #[arg(long = "resource", value_name = "CLASS=N", value_parser = parse_resource)]
    pub resources: Vec<ResourceArg>,
    /// A trait every chosen host must have; repeatable.
    #[arg(long, value_name = "TRAIT", value_parser = parse_trait)]
    pub require_trait: Vec<String>,
    /// A trait no chosen host may have; repeatable.
    #[arg(long, value_name = "TRAIT", value_parser = parse_trait)]
    pub forbid_trait: Vec<String>,
    /// Aggregate constraint `A1[,A2...]`: the host must be in at least one of them. Repeat
    /// for several constraints (all must hold).
    #[arg(long, value_name = "AGG[,AGG...]", value_parser = parse_aggregate_set)]
    pub member_of: Vec<Vec<String>>,
    /// An aggregate no chosen host may be in; repeatable.
    #[arg(long, value_name = "AGGREGATE")]
    pub forbid_aggregate: Vec<String>,
    /// Only consider this host (UUID or name); repeatable.
    #[arg(long, value_name = "HOST")]
    pub force_host: Vec<String>,
    /// Never choose this host (UUID or name); repeatable.
    #[arg(long, value_name = "HOST")]
    pub ignore_host: Vec<String>,
    /// Consumer UUID for an instance, one per instance (the engine generates them if
    /// omitted); repeatable, must match --count when both are given.
    #[arg(long, value_name = "UUID", value_parser = parse_uuid)]
    pub instance_uuid: Vec<String>,
    /// Claim nothing: explain the decision (filters' rejections, ranked hosts, weighers).
    #[arg(long)]
    pub dry_run: bool,
}

// ---- allocation / usage ------------------------------------------------------------------

/// `berth allocation ...`
#[derive(Debug, Subcommand)]
pub enum AllocationCommand {
    /// Show the allocations a consumer (instance) holds, per host.
    #[command(after_help = "\
Examples:
  berth allocation show 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10")]
    Show {
        /// Consumer (instance) UUID.
        #[arg(value_parser = parse_uuid)]
        consumer: String,
    },
    /// Delete every allocation of a consumer, and the consumer.
    #[command(after_help = "\
Examples:
  berth allocation delete 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10
  berth allocation delete 0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10 --release")]
    Delete {
        /// Consumer (instance) UUID.
        #[arg(value_parser = parse_uuid)]
        consumer: String,
        /// Release through the scheduler (Scheduler.Release) instead of Placement: also
        /// takes the instance out of its server group. Use for instances placed by
        /// `berth schedule`.
        #[arg(long)]
        release: bool,
    },
}

/// Arguments of `berth usage`.
#[derive(Debug, Args)]
#[command(
    long_about = "Show resource usage. Without --project: one row per host, each class as \
`used / capacity (allocation ratio)`, e.g. `12 / 64 (4.0)`. With --project: that project's \
total allocations across all hosts.",
    after_help = "\
Examples:
  berth usage
  berth usage --project acme
  berth usage --project acme --user alice
  berth -o json usage | jq '.[] | select(.instances > 0) | .name'"
)]
pub struct UsageArgs {
    /// Show this project's total usage instead of the per-host table.
    #[arg(long)]
    pub project: Option<String>,
    /// With --project: only count this user's consumers.
    #[arg(long, requires = "project")]
    pub user: Option<String>,
}

// ---- quota -------------------------------------------------------------------------------

/// `berth quota ...`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a project's quota: `instances` and every resource class with a limit or usage,
    /// as `used / limit`, and where each limit comes from (`project`: set with `quota set`;
    /// `default`: `[engine] default_quota` in berth.toml; `none`: unlimited).
    #[command(after_help = "\
Examples:
  berth quota show --project acme
  berth -o json quota show --project acme | jq '.limits[] | select(.resource == \"VCPU\")'")]
    Show {
        /// The project (members and readers may only show their own).
        #[arg(long, env = "BERTH_PROJECT", default_value = "default")]
        project: String,
    },
    /// Set or remove limits of a project's quota (admin only); limits not named are left as
    /// they are. A claim (server create, schedule, resize or migrate) that would take the
    /// project over a limit fails RESOURCE_EXHAUSTED; lowering a limit below the usage evicts
    /// nothing. N = -1 (or `unlimited`) makes the resource unlimited for this project, even
    /// if the engine's default limits it; --unset removes the project's own limit, so the
    /// default (unlimited unless berth.toml sets one) applies again.
    #[command(after_help = "\
Examples:
  berth quota set --project acme --instances 20 --vcpu 64 --memory-mb 131072
  berth quota set --project acme --class CUSTOM_GPU=4 --class DISK_GB=2000
  berth quota set --project acme --vcpu -1            # unlimited VCPU for acme
  berth quota set --project acme --unset MEMORY_MB    # back to the default")]
    Set(QuotaSetArgs),
}

/// Arguments of `berth quota set`.
#[derive(Debug, Args)]
pub struct QuotaSetArgs {
    /// The project.
    #[arg(long, env = "BERTH_PROJECT")]
    pub project: String,
    /// Most instances (servers holding allocations); -1: unlimited.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_limit)]
    pub instances: Option<LimitArg>,
    /// Most VCPU; -1: unlimited.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_limit)]
    pub vcpu: Option<LimitArg>,
    /// Most MEMORY_MB; -1: unlimited.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_limit)]
    pub memory_mb: Option<LimitArg>,
    /// A limit on any resource class, `CLASS=N` (N = -1: unlimited); repeatable.
    #[arg(long = "class", value_name = "CLASS=N", value_parser = parse_class_limit)]
    pub classes: Vec<(String, LimitArg)>,
    /// Remove the project's own limit on RESOURCE (`instances` or a resource class): the
    /// engine's default applies again; repeatable.
    #[arg(long, value_name = "RESOURCE")]
    pub unset: Vec<String>,
}

/// A quota limit as typed: a number, or unlimited (`-1`, `unlimited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitArg(pub Option<u64>);

impl QuotaSetArgs {
    /// `(resource, limit)` for every limit given, in the order of the options.
    pub fn limits(&self) -> Vec<(String, Option<u64>)> {
        let named = [
            ("instances", self.instances),
            ("VCPU", self.vcpu),
            ("MEMORY_MB", self.memory_mb),
        ];
        named
            .into_iter()
            .filter_map(|(r, l)| l.map(|l| (r.to_string(), l.0)))
            .chain(self.classes.iter().map(|(c, l)| (c.clone(), l.0)))
            .collect()
    }
}

// ---- value parsers -----------------------------------------------------------------------

/// Parses a quota limit: a whole number, or `-1` / `unlimited`.
pub fn parse_limit(s: &str) -> Result<LimitArg, String> {
    match s {
        "-1" | "unlimited" => Ok(LimitArg(None)),
        _ => s
            .parse::<u64>()
            .map(|n| LimitArg(Some(n)))
            .map_err(|_| format!("'{s}' is not a limit: a whole number, or -1 (unlimited)")),
    }
}

/// Parses `CLASS=N` with a quota limit.
pub fn parse_class_limit(s: &str) -> Result<(String, LimitArg), String> {
    let (class, limit) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' should be CLASS=N, e.g. CUSTOM_GPU=4"))?;
    Ok((parse_class(class)?, parse_limit(limit)?))
}

/// One `CLASS=N` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceArg {
    /// Resource class name.
    pub class: String,
    /// Amount in the class's unit.
    pub amount: u64,
}

/// One parsed inventory argument, `CLASS=TOTAL[,reserved=R,ratio=X,min=N,max=N,step=N]`.
/// Settings not given are `None` and sent as 0, which the engine reads as its default.
#[derive(Debug, Clone, PartialEq)]
pub struct InventorySpec {
    /// Resource class name.
    pub class: String,
    /// Physical amount; at least 1.
    pub total: u64,
    /// Held back for the host.
    pub reserved: Option<u64>,
    /// Overcommit factor; finite and > 0.
    pub ratio: Option<f64>,
    /// Smallest single allocation.
    pub min_unit: Option<u64>,
    /// Largest single allocation.
    pub max_unit: Option<u64>,
    /// Allocation granularity.
    pub step_size: Option<u64>,
}

/// True for a non-empty string of `A-Z`, `0-9` and `_` (class and trait names).
fn is_upper_snake(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks a resource class name's shape (`VCPU`, `CUSTOM_GPU`, ...). Which classes exist
/// is for the engine to say.
pub fn parse_class(s: &str) -> Result<String, String> {
    if is_upper_snake(s) {
        Ok(s.to_owned())
    } else if s.is_empty() {
        Err("resource class is empty".to_owned())
    } else {
        Err(format!(
            "resource class '{s}' must be upper-case letters, digits and '_' \
             (e.g. VCPU, MEMORY_MB, DISK_GB, CUSTOM_GPU)"
        ))
    }
}

/// Checks a trait name's shape (`HW_CPU_X86_AVX2`, `CUSTOM_FOO`).
pub fn parse_trait(s: &str) -> Result<String, String> {
    if is_upper_snake(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "trait '{s}' must be upper-case letters, digits and '_' (e.g. HW_CPU_X86_AVX2, CUSTOM_GPU)"
        ))
    }
}

/// Checks a request id: 1 to 128 printable ASCII characters without spaces, so that it
/// fits the engine's `request_id` fields and an `x-request-id` metadata value alike.
pub fn parse_request_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 {
        return Err(format!(
            "request id must be 1 to 128 characters; this one has {}",
            s.chars().count()
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "request id '{s}' holds {c:?}; only printable ASCII without spaces is allowed"
        ));
    }
    Ok(s.to_owned())
}

/// Parses a UUID and returns it in the engine's form: lowercase, hyphenated.
pub fn parse_uuid(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| format!("'{s}' is not a UUID: {e}"))
}

fn parse_u64(what: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("{what} '{v}' is not a whole number"))
}

/// Parses `CLASS=N`.
pub fn parse_resource(s: &str) -> Result<ResourceArg, String> {
    let (class, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' should be CLASS=N, e.g. VCPU=4"))?;
    Ok(ResourceArg {
        class: parse_class(class)?,
        amount: parse_u64(&format!("amount of {class}"), amount)?,
    })
}

/// Parses `KEY=VALUE` (the value may itself contain `=`; it may be empty).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        Some(_) => Err(format!("'{s}' has an empty key; expected KEY=VALUE")),
        None => Err(format!("'{s}' should be KEY=VALUE")),
    }
}

/// Parses `A1[,A2...]` into a non-empty aggregate set.
pub fn parse_aggregate_set(s: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = s.split(',').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!(
            "'{s}' has an empty aggregate; expected AGGREGATE[,AGGREGATE...]"
        ));
    }
    Ok(parts)
}

/// Parses `CLASS=TOTAL[,reserved=R][,ratio=X][,min=N][,max=N][,step=N]`.
///
/// The proto names (`allocation_ratio`, `min_unit`, `max_unit`, `step_size`) are accepted
/// as synonyms. Every error names the part that is wrong.
pub fn parse_inventory(s: &str) -> Result<InventorySpec, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default();
    let (class, total) = head
        .split_once('=')
        .ok_or_else(|| format!("'{head}' should be CLASS=TOTAL, e.g. VCPU=64 (in '{s}')"))?;
    let class = parse_class(class)?;
    let total = parse_u64(&format!("total of {class}"), total)?;
    if total == 0 {
        return Err(format!("total of {class} must be at least 1"));
    }
    let mut spec = InventorySpec {
        class,
        total,
        reserved: None,
        ratio: None,
        min_unit: None,
        max_unit: None,
        step_size: None,
    };
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!("'{part}' should be KEY=VALUE with KEY one of reserved, ratio, min, max, step")
        })?;
        let duplicate = || format!("'{key}' is given twice in '{s}'");
        match key {
            "reserved" => {
                if spec.reserved.replace(parse_u64(key, value)?).is_some() {
                    return Err(duplicate());
                }
            }
            "ratio" | "allocation_ratio" => {
                let r: f64 = value
                    .parse()
                    .map_err(|_| format!("{key} '{value}' is not a number"))?;
                if !r.is_finite() || r <= 0.0 {
                    return Err(format!("{key} '{value}' must be a finite number above 0"));
                }
                if spec.ratio.replace(r).is_some() {
                    return Err(duplicate());
                }
            }
            "min" | "min_unit" => {
                if spec.min_unit.replace(parse_u64(key, value)?).is_some() {
                    return Err(duplicate());
                }
            }
            "max" | "max_unit" => {
                if spec.max_unit.replace(parse_u64(key, value)?).is_some() {
                    return Err(duplicate());
                }
            }
            "step" | "step_size" => {
                if spec.step_size.replace(parse_u64(key, value)?).is_some() {
                    return Err(duplicate());
                }
            }
            "" => return Err(format!("'{part}' has an empty key in '{s}'")),
            other => {
                return Err(format!(
                    "unknown setting '{other}' in '{part}'; expected reserved, ratio, min, max or step"
                ));
            }
        }
    }
    if let Some(r) = spec.reserved
        && r > spec.total
    {
        return Err(format!(
            "reserved={r} is more than the total {} of {}",
            spec.total, spec.class
        ));
    }
    if let (Some(min), Some(max)) = (spec.min_unit, spec.max_unit)
        && min > max
    {
        return Err(format!(
            "min={min} is more than max={max} for {}",
            spec.class
        ));
    }
    for (name, v) in [
        ("min", spec.min_unit),
        ("max", spec.max_unit),
        ("step", spec.step_size),
    ] {
        if v == Some(0) {
            return Err(format!(
                "{name}=0 for {}: omit it to get the default",
                spec.class
            ));
        }
    }
    Ok(spec)
}

/// Rejects a list of inventory specs naming a class twice.
pub fn check_distinct_classes(specs: &[InventorySpec]) -> Result<(), String> {
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| b.class == a.class) {
            return Err(format!("resource class {} is given twice", a.class));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn inventory_total_only() {
        let s = parse_inventory("VCPU=64").unwrap();
        assert_eq!(s.class, "VCPU");
        assert_eq!(s.total, 64);
        assert_eq!(s.ratio, None);
        assert_eq!(s.reserved, None);
    }

    #[test]
    fn inventory_all_settings() {
        let s =
            parse_inventory("MEMORY_MB=262144,reserved=4096,ratio=1.5,min=1,max=65536,step=256")
                .unwrap();
        assert_eq!(
            s,
            InventorySpec {
                class: "MEMORY_MB".into(),
                total: 262144,
                reserved: Some(4096),
                ratio: Some(1.5),
                min_unit: Some(1),
                max_unit: Some(65536),
                step_size: Some(256),
            }
        );
        let s =
            parse_inventory("CUSTOM_GPU=4,allocation_ratio=1.0,min_unit=1,max_unit=2,step_size=1")
                .unwrap();
        assert_eq!(s.ratio, Some(1.0));
        assert_eq!(s.max_unit, Some(2));
    }

    #[test]
    fn inventory_ratio_parses_as_float() {
        assert_eq!(
            parse_inventory("VCPU=8,ratio=4.0").unwrap().ratio,
            Some(4.0)
        );
        assert_eq!(
            parse_inventory("VCPU=8,ratio=16").unwrap().ratio,
            Some(16.0)
        );
    }

    #[track_caller]
    fn err_contains(spec: &str, needles: &[&str]) {
        let e = parse_inventory(spec).expect_err(spec);
        for n in needles {
            assert!(e.contains(n), "error for {spec:?} is {e:?}, lacks {n:?}");
        }
    }

    #[test]
    fn inventory_errors_name_the_bad_part() {
        err_contains("VCPU=64,ratio=abc", &["ratio", "'abc'", "not a number"]);
        err_contains("VCPU=64,ratio=0", &["ratio", "'0'", "above 0"]);
        err_contains("VCPU=64,ratio=inf", &["ratio", "'inf'"]);
        err_contains("VCPU=64,ratio=NaN", &["'NaN'"]);
        err_contains("VCPU=lots", &["total of VCPU", "'lots'", "whole number"]);
        err_contains("VCPU=-1", &["'-1'"]);
        err_contains("VCPU=0", &["total of VCPU", "at least 1"]);
        err_contains("VCPU", &["'VCPU'", "CLASS=TOTAL"]);
        err_contains("vcpu=4", &["'vcpu'", "upper-case"]);
        err_contains("=4", &["resource class is empty"]);
        err_contains("VCPU=64,foo=1", &["unknown setting 'foo'", "'foo=1'"]);
        err_contains("VCPU=64,reserved", &["'reserved'", "KEY=VALUE"]);
        err_contains("VCPU=64,reserved=x", &["reserved", "'x'"]);
        err_contains("VCPU=64,reserved=65", &["reserved=65", "total 64"]);
        err_contains("VCPU=64,min=8,max=4", &["min=8", "max=4"]);
        err_contains("VCPU=64,step=0", &["step=0"]);
        err_contains("VCPU=64,ratio=2,ratio=3", &["'ratio' is given twice"]);
        err_contains("VCPU=64,,ratio=2", &["''", "KEY=VALUE"]);
        err_contains("VCPU=64,=2", &["empty key"]);
    }

    #[test]
    fn duplicate_classes_are_rejected() {
        let specs = [
            parse_inventory("VCPU=1").unwrap(),
            parse_inventory("DISK_GB=1").unwrap(),
            parse_inventory("VCPU=2").unwrap(),
        ];
        assert_eq!(
            check_distinct_classes(&specs).unwrap_err(),
            "resource class VCPU is given twice"
        );
        assert!(check_distinct_classes(&specs[..2]).is_ok());
    }

    #[test]
    fn resource_and_key_value_parsers() {
        assert_eq!(
            parse_resource("VCPU=4").unwrap(),
            ResourceArg {
                class: "VCPU".into(),
                amount: 4
            }
        );
        assert!(parse_resource("VCPU").unwrap_err().contains("CLASS=N"));
        assert!(
            parse_resource("VCPU=x")
                .unwrap_err()
                .contains("amount of VCPU 'x'")
        );
        assert_eq!(
            parse_key_value("img_hv_requested_version=>=8.0").unwrap(),
            ("img_hv_requested_version".into(), ">=8.0".into())
        );
        assert_eq!(parse_key_value("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_key_value("=v").unwrap_err().contains("empty key"));
        assert!(parse_key_value("kv").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_aggregate_set("a,b").unwrap(), ["a", "b"]);
        assert!(parse_aggregate_set("a,").is_err());
    }

    #[test]
    fn uuids_are_normalised() {
        assert_eq!(
            parse_uuid("6F1C2A8E0D7B4C1E9A513B2F0E4D5C6A").unwrap(),
            "6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a"
        );
        assert!(
            parse_uuid("host-1")
                .unwrap_err()
                .contains("'host-1' is not a UUID")
        );
    }

    #[test]
    fn global_flags_work_before_and_after_the_subcommand() {
        let cli = parse(&["--engine", "http://h:1", "host", "list", "-o", "json"]).unwrap();
        assert_eq!(cli.engine, "http://h:1");
        assert_eq!(cli.output, OutputFormat::Json);
        assert!(matches!(cli.command, Command::Host(HostCommand::List(_))));
        let cli = parse(&["usage"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Table);
        assert_eq!(cli.timeout, 30);
    }

    #[test]
    fn inventory_set_collects_specs() {
        let cli = parse(&[
            "inventory",
            "set",
            "compute-1",
            "VCPU=64,ratio=4.0",
            "MEMORY_MB=1024",
            "--amend",
        ])
        .unwrap();
        let Command::Inventory(InventoryCommand::Set(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.host, "compute-1");
        assert!(a.amend);
        assert_eq!(a.specs.len(), 2);
        assert_eq!(a.specs[0].ratio, Some(4.0));
    }

    #[test]
    fn bad_inventory_is_a_usage_error_naming_the_part() {
        let e = parse(&["inventory", "set", "h", "VCPU=64,ratio=x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("VCPU=64,ratio=x"), "{msg}");
        assert!(msg.contains("ratio 'x' is not a number"), "{msg}");
        let e = parse(&["inventory", "set", "h"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn schedule_needs_a_flavor_or_resources() {
        assert!(parse(&["schedule"]).is_err());
        let cli = parse(&["schedule", "--resource", "VCPU=1"]).unwrap();
        let Command::Schedule(a) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.flavor, None);
        assert_eq!(a.count, 1);
        let cli = parse(&[
            "schedule",
            "--flavor",
            "m1",
            "--count",
            "3",
            "--dry-run",
            "--member-of",
            "a,b",
            "--member-of",
            "c",
        ])
        .unwrap();
        let Command::Schedule(a) = cli.command else {
            panic!("wrong command");
        };
        assert!(a.dry_run);
        assert_eq!(a.count, 3);
        assert_eq!(a.member_of, vec![vec!["a", "b"], vec!["c"]]);
        assert!(parse(&["schedule", "--flavor", "m1", "--count", "0"]).is_err());
    }

    #[test]
    fn trait_set_needs_traits_or_clear_not_both() {
        assert!(parse(&["trait", "set", "h"]).is_err());
        assert!(parse(&["trait", "set", "h", "--clear"]).is_ok());
        assert!(parse(&["trait", "set", "h", "A", "--clear"]).is_err());
        assert!(parse(&["trait", "set", "h", "lower"]).is_err());
        assert!(parse(&["aggregate", "set", "h"]).is_err());
        assert!(parse(&["aggregate", "set", "h", "--clear"]).is_ok());
    }

    #[test]
    fn group_policy_values() {
        let cli = parse(&["group", "create", "g", "--policy", "soft-anti-affinity"]).unwrap();
        let Command::Group(GroupCommand::Create(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.policy, Policy::SoftAntiAffinity);
        assert_eq!(a.max_per_host, None);
        assert!(parse(&["group", "create", "g", "--policy", "sideways"]).is_err());
        assert!(parse(&["group", "create", "g"]).is_err());
    }

    #[test]
    fn usage_user_requires_project() {
        assert!(parse(&["usage", "--user", "u"]).is_err());
        assert!(parse(&["usage", "--project", "p", "--user", "u"]).is_ok());
    }

    #[test]
    fn every_subcommand_has_help_with_examples() {
        fn walk(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.has_subcommands() {
                for sub in cmd.get_subcommands() {
                    if sub.get_name() != "help" {
                        walk(sub, &path);
                    }
                }
            } else {
                let help = cmd
                    .get_after_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert!(help.contains("Examples:"), "`{path}` has no examples");
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(arg.get_help().is_some(), "`{path}` flag {id} has no help");
                }
            }
        }
        walk(&Cli::command(), "");
    }

    const U: &str = "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10";

    #[test]
    fn server_create_defaults_and_flags() {
        let cli = parse(&[
            "server", "create", "web-1", "--flavor", "m1", "--image", "cirros",
        ])
        .unwrap();
        let Command::Server(ServerCommand::Create(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.name, "web-1");
        assert_eq!(a.count, 1);
        assert_eq!(a.group, None);
        assert!(a.metadata.is_empty() && a.traits.is_empty() && a.hosts.is_empty());
        assert_eq!(a.request.request_id, None);
        // Like `schedule`: BERTH_PROJECT / BERTH_USER, else "default".
        let env_or_default = |k: &str| std::env::var(k).unwrap_or_else(|_| "default".into());
        assert_eq!(a.project, env_or_default("BERTH_PROJECT"));
        assert_eq!(a.user, env_or_default("BERTH_USER"));

        let cli = parse(&[
            "server",
            "create",
            "web",
            "--flavor",
            "m1",
            "--image",
            "cirros",
            "--count",
            "2",
            "--meta",
            "k=v=w",
            "--trait",
            "HW_A",
            "--forbid-trait",
            "HW_B",
            "--host",
            "h1",
            "--request-id",
            "create-web",
        ])
        .unwrap();
        let Command::Server(ServerCommand::Create(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.count, 2);
        assert_eq!(a.metadata, [("k".to_string(), "v=w".to_string())]);
        assert_eq!(a.traits, ["HW_A"]);
        assert_eq!(a.forbid_trait, ["HW_B"]);
        assert_eq!(a.hosts, ["h1"]);
        assert_eq!(a.request.request_id.as_deref(), Some("create-web"));
    }

    #[test]
    fn server_create_rejects_bad_values() {
        let base = ["server", "create", "w", "--flavor", "f", "--image", "i"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend(extra);
            parse(&v)
        };
        assert!(with(&[]).is_ok());
        assert!(with(&["--count", "0"]).is_err());
        assert!(with(&["--meta", "novalue"]).is_err());
        assert!(with(&["--meta", "=v"]).is_err());
        assert!(with(&["--trait", "lower"]).is_err());
        assert!(with(&["--request-id", ""]).is_err());
        assert!(parse(&["server", "create", "w", "--image", "i"]).is_err());
        assert!(parse(&["server", "create", "w", "--flavor", "f"]).is_err());
        assert!(parse(&["server", "create", "", "--flavor", "f", "--image", "i"]).is_err());
    }

    #[test]
    fn server_list_states_ignore_case_and_accept_underscores() {
        let state = |s: &str| {
            let cli = parse(&["server", "list", "--state", s]).unwrap();
            let Command::Server(ServerCommand::List(a)) = cli.command else {
                panic!("wrong command");
            };
            a.state
        };
        assert_eq!(state("active"), Some(ServerState::Active));
        assert_eq!(state("ACTIVE"), Some(ServerState::Active));
        assert_eq!(
            state("shelved-offloaded"),
            Some(ServerState::ShelvedOffloaded)
        );
        assert_eq!(
            state("SHELVED_OFFLOADED"),
            Some(ServerState::ShelvedOffloaded)
        );
        assert!(parse(&["server", "list", "--state", "SHUTOFF"]).is_err());
        let cli = parse(&["server", "list", "--host", "compute-1", "--project", "p"]).unwrap();
        let Command::Server(ServerCommand::List(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.host.as_deref(), Some("compute-1"));
        assert_eq!(a.project.as_deref(), Some("p"));
        assert_eq!(a.state, None);
    }

    #[test]
    fn server_commands_take_uuids() {
        assert!(parse(&["server", "show", U]).is_ok());
        let e = parse(&["server", "show", "web-1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("'web-1' is not a UUID"), "{e}");
        assert!(parse(&["server", "stop"]).is_err());
        assert!(parse(&["server", "stop", "nope"]).is_err());
        assert!(parse(&["server", "delete"]).is_err());
        let cli = parse(&["server", "delete", U, &U.to_uppercase().replace('-', "")]).unwrap();
        let Command::Server(ServerCommand::Delete(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            a.uuids,
            [U, U],
            "normalised (the precheck rejects the repeat)"
        );
    }

    #[test]
    fn action_flags_parse() {
        let action = |args: &[&str]| {
            let mut v = vec!["server"];
            v.extend(args);
            match parse(&v).map(|c| c.command) {
                Ok(Command::Server(ServerCommand::Action(a))) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        let Ok(ServerActionCommand::Reboot(r)) = action(&["reboot", U, "--hard"]) else {
            panic!("reboot")
        };
        assert!(r.hard);
        assert_eq!(r.target.uuid, U);
        let Ok(ServerActionCommand::Snapshot(s)) = action(&["snapshot", U, "--name", "golden"])
        else {
            panic!("snapshot")
        };
        assert_eq!(s.name, "golden");
        assert!(action(&["snapshot", U]).is_err(), "--name is required");
        assert!(action(&["snapshot", U, "--name", ""]).is_err());
        assert!(action(&["resize", U]).is_err(), "--flavor is required");
        let Ok(ServerActionCommand::LiveMigrate(m)) = action(&[
            "live-migrate",
            U,
            "--host",
            "compute-2",
            "--request-id",
            "lm-1",
        ]) else {
            panic!("live-migrate")
        };
        assert_eq!(m.host.as_deref(), Some("compute-2"));
        assert_eq!(m.target.request.request_id.as_deref(), Some("lm-1"));
        let Ok(ServerActionCommand::Lock(l)) = action(&["lock", U, "--reason", "legal hold"])
        else {
            panic!("lock")
        };
        assert_eq!(l.reason.as_deref(), Some("legal hold"));
        assert!(action(&["unlock", U, "--reason", "x"]).is_err());
        assert!(action(&["stop", U, "--hard"]).is_err());
        assert!(action(&["frobnicate", U]).is_err());
    }

    #[test]
    fn request_ids_are_printable_ascii_up_to_128() {
        assert_eq!(parse_request_id("retry-1").unwrap(), "retry-1");
        assert!(parse_request_id(&"x".repeat(128)).is_ok());
        assert!(
            parse_request_id(&"x".repeat(129))
                .unwrap_err()
                .contains("1 to 128 characters; this one has 129")
        );
        assert!(parse_request_id("").is_err());
        assert!(parse_request_id("a b").unwrap_err().contains("' '"));
        assert!(parse_request_id("caf\u{e9}").is_err());
        let e = parse(&["server", "stop", U, "--request-id", "a b"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn host_lifecycle_commands_parse() {
        let cli = parse(&["host", "disable", "compute-1", "--reason", "RAM"]).unwrap();
        let Command::Host(HostCommand::Disable { host, reason }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            (host.as_str(), reason.as_deref()),
            ("compute-1", Some("RAM"))
        );
        assert!(matches!(
            parse(&["host", "enable", "compute-1"]).unwrap().command,
            Command::Host(HostCommand::Enable { .. })
        ));
        assert!(parse(&["host", "enable", "compute-1", "--reason", "x"]).is_err());
        let cli = parse(&["host", "evacuate", "compute-1", "--request-id", "ev-1"]).unwrap();
        let Command::Host(HostCommand::Evacuate { host, request }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(host, "compute-1");
        assert_eq!(request.request_id.as_deref(), Some("ev-1"));
        assert!(parse(&["host", "evacuate"]).is_err());
    }
}
