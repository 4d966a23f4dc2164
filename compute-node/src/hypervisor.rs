//! The `Hypervisor` trait: what the compute-node agent asks of a host's virtualisation layer,
//! and the contract every driver (libvirt, fake) honours.
//!
//! Methods are synchronous because libvirt's calls block; the agent runs each one in
//! `tokio::task::spawn_blocking`. Drivers are `Send + Sync` so one instance serves concurrent
//! actions on different domains; actions on the *same* domain are serialised by the agent.
//!
//! # The state machine
//!
//! | action            | valid from                               | result          | no-op (`Ok`) from |
//! |-------------------|------------------------------------------|-----------------|-------------------|
//! | `spawn`           | (no such domain)                         | Running         | —                 |
//! | `stop`            | Running, Paused, Crashed                 | Shutoff         | Shutoff           |
//! | `start`           | Shutoff, Crashed                         | Running         | Running           |
//! | `reboot(false)`   | Running                                  | Running         | —                 |
//! | `reboot(true)`    | any state                                | Running         | —                 |
//! | `pause`           | Running                                  | Paused          | Paused            |
//! | `unpause`         | Paused                                   | Running         | Running           |
//! | `suspend`         | Running, Paused                          | Suspended       | Suspended         |
//! | `resume`          | Suspended                                | Running         | Running           |
//! | `snapshot`        | Running, Paused, Shutoff, Suspended      | (unchanged)     | —                 |
//! | `rebuild`         | Running, Shutoff, Crashed                | Running/Shutoff | —                 |
//! | `delete`          | any state                                | (gone)          | (no such domain)  |
//!
//! Any other (state, action) pair is [`HypervisorError::InvalidState`] and changes nothing.
//! An action on a uuid the hypervisor does not know is [`HypervisorError::NotFound`], except
//! `delete`, which is idempotent. The "no-op" column makes retries safe: an agent that lost the
//! reply to `stop` can send it again and get `Ok`.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

/// What the host offers, as the hypervisor reports it (before reserved amounts and ratios).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Usable host CPUs (libvirt's active CPUs).
    pub vcpus: u32,
    /// Host memory in MiB.
    pub memory_mb: u64,
    /// Disk for instances in GiB (libvirt does not report it: the driver is told, from
    /// configuration or the instances directory's filesystem).
    pub disk_gb: u64,
    /// CPU architecture, e.g. `x86_64` (`i686` on libvirt's default test node).
    pub arch: String,
    /// Hypervisor type as libvirt names it: `QEMU`, `TEST`, or `FAKE` for the fake driver.
    pub hypervisor_type: String,
    /// Hypervisor version as one integer, `major * 1_000_000 + minor * 1_000 + release`
    /// (libvirt's and Nova's encoding, so the image filter's version checks compare integers).
    pub hypervisor_version: u64,
}

/// Power state of a domain, in Nova's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// The hypervisor cannot say (libvirt's `NOSTATE`).
    NoState,
    /// Running (also libvirt's `BLOCKED`, and `SHUTDOWN` while the guest is still going down).
    Running,
    /// Paused in memory: vCPUs stopped, RAM still held.
    Paused,
    /// Memory saved to disk and the domain stopped (libvirt managed save, or guest S3/S4);
    /// `resume` restores it exactly.
    Suspended,
    /// Defined but not running.
    Shutoff,
    /// The guest crashed; it holds no CPU but its definition remains.
    Crashed,
}

impl PowerState {
    /// Stable upper-case name, as reported to the engine.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoState => "NOSTATE",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Suspended => "SUSPENDED",
            Self::Shutoff => "SHUTOFF",
            Self::Crashed => "CRASHED",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One domain the hypervisor knows, whoever created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    /// Domain uuid; for Berth's domains, the instance uuid.
    pub uuid: Uuid,
    /// Domain name.
    pub name: String,
    /// Current power state.
    pub state: PowerState,
}

/// The actions of the [`Hypervisor`] trait, named for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// [`Hypervisor::spawn`].
    Spawn,
    /// [`Hypervisor::stop`].
    Stop,
    /// [`Hypervisor::start`].
    Start,
    /// [`Hypervisor::reboot`] with `hard = false`.
    SoftReboot,
    /// [`Hypervisor::reboot`] with `hard = true`.
    HardReboot,
    /// [`Hypervisor::pause`].
    Pause,
    /// [`Hypervisor::unpause`].
    Unpause,
    /// [`Hypervisor::suspend`].
    Suspend,
    /// [`Hypervisor::resume`].
    Resume,
    /// [`Hypervisor::snapshot`].
    Snapshot,
    /// [`Hypervisor::rebuild`].
    Rebuild,
    /// [`Hypervisor::delete`].
    Delete,
    /// Live migration (see [`Hypervisor::live_migration_supported`]).
    LiveMigrate,
}

impl ActionKind {
    /// Every action, for tables and tests.
    pub const ALL: [ActionKind; 13] = [
        Self::Spawn,
        Self::Stop,
        Self::Start,
        Self::SoftReboot,
        Self::HardReboot,
        Self::Pause,
        Self::Unpause,
        Self::Suspend,
        Self::Resume,
        Self::Snapshot,
        Self::Rebuild,
        Self::Delete,
        Self::LiveMigrate,
    ];

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::Stop => "stop",
            Self::Start => "start",
            Self::SoftReboot => "soft_reboot",
            Self::HardReboot => "hard_reboot",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Snapshot => "snapshot",
            Self::Rebuild => "rebuild",
            Self::Delete => "delete",
            Self::LiveMigrate => "live_migrate",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to build: one instance's identity, size and image, as the engine dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Instance uuid; becomes the domain uuid, so the engine and libvirt name it alike.
    pub uuid: Uuid,
    /// Domain name. Must be unique on the host (libvirt refuses a second domain of the same
    /// name); the engine passes a host-unique name such as `instance-<uuid>`.
    pub name: String,
    /// Virtual CPUs (at least 1).
    pub vcpus: u32,
    /// Memory in MiB (at least 1).
    pub memory_mb: u64,
    /// Root disk in GiB (recorded in the domain metadata; disks arrive with image handling).
    pub disk_gb: u64,
    /// Image uuid or reference.
    pub image_id: String,
    /// Image name, for operators reading `virsh dumpxml`.
    pub image_name: String,
    /// Flavor name.
    pub flavor_name: String,
    /// User metadata, carried into the domain's `<metadata>` element.
    pub metadata: BTreeMap<String, String>,
}

/// Why a hypervisor action failed. Variants and their [`code`](Self::code)s are stable: the
/// agent maps them to the wire in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    /// No domain with this uuid.
    #[error("no domain with uuid {uuid}")]
    NotFound {
        /// The uuid asked for.
        uuid: Uuid,
    },
    /// A domain with this uuid or name already exists (`spawn` is not a silent no-op: a retried
    /// spawn that gets this can check the domain's state and treat it as done).
    #[error("a domain already exists with {what}")]
    AlreadyExists {
        /// `uuid <uuid>`, `name <name>` or `snapshot <name>`.
        what: String,
    },
    /// The action is not valid from the domain's current state; nothing changed.
    #[error("cannot {action} a domain that is {state}")]
    InvalidState {
        /// The domain's state when the action was refused.
        state: PowerState,
        /// The refused action.
        action: ActionKind,
    },
    /// The spec cannot be turned into a domain (empty name, control characters, zero vCPUs…).
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    /// This driver or host cannot do this action at all.
    #[error("{0} is not supported by this hypervisor")]
    Unsupported(ActionKind),
    /// The driver failed (libvirt error, injected fault, lost connection…).
    #[error("hypervisor driver error: {0}")]
    Driver(String),
}

impl HypervisorError {
    /// Stable machine-readable code for the wire and for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::InvalidState { .. } => "INVALID_STATE",
            Self::InvalidSpec(_) => "INVALID_SPEC",
            Self::Unsupported(_) => "UNSUPPORTED",
            Self::Driver(_) => "DRIVER",
        }
    }
}

/// Result of a hypervisor call.
pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// What an action does from a given state, per the [module's table](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Carry the action out.
    Apply,
    /// The domain is already where the action would take it: answer `Ok`, change nothing.
    AlreadyDone,
}

/// Looks up `action` from `state` in the module's table: the one place both drivers take
/// their rules from, so the fake and libvirt cannot drift apart. `Spawn`, `Delete` and
/// `LiveMigrate` depend on existence or capability, not state, and always `Apply` here.
///
/// # Errors
/// `InvalidState` for a pair the table does not allow.
pub fn transition(state: PowerState, action: ActionKind) -> Result<Transition> {
    use ActionKind as A;
    use PowerState as S;
    use Transition::{AlreadyDone, Apply};
    let verdict = match (action, state) {
        (A::Spawn | A::Delete | A::LiveMigrate | A::HardReboot, _) => Some(Apply),
        (A::Stop, S::Running | S::Paused | S::Crashed) => Some(Apply),
        (A::Stop, S::Shutoff) => Some(AlreadyDone),
        (A::Start, S::Shutoff | S::Crashed) => Some(Apply),
        (A::Start, S::Running) => Some(AlreadyDone),
        (A::SoftReboot, S::Running) => Some(Apply),
        (A::Pause, S::Running) => Some(Apply),
        (A::Pause, S::Paused) => Some(AlreadyDone),
        (A::Unpause, S::Paused) => Some(Apply),
        (A::Unpause, S::Running) => Some(AlreadyDone),
        (A::Suspend, S::Running | S::Paused) => Some(Apply),
        (A::Suspend, S::Suspended) => Some(AlreadyDone),
        (A::Resume, S::Suspended) => Some(Apply),
        (A::Resume, S::Running) => Some(AlreadyDone),
        (A::Snapshot, S::Running | S::Paused | S::Shutoff | S::Suspended) => Some(Apply),
        (A::Rebuild, S::Running | S::Shutoff | S::Crashed) => Some(Apply),
        _ => None,
    };
    verdict.ok_or(HypervisorError::InvalidState { state, action })
}

/// A host's virtualisation layer. See the [module docs](self) for the state machine every
/// implementation must follow; [`crate::fake::FakeHypervisor`] is its executable reference.
///
/// Every method may block (the agent calls them on the blocking pool). Errors never leave a
/// half-done action visible: a failed `spawn` leaves no domain behind, a refused action
/// changes nothing.
pub trait Hypervisor: Send + Sync {
    /// The host's totals and identity. Cheap enough to call once per heartbeat.
    ///
    /// Errors: `Driver` when the hypervisor cannot be reached.
    fn node_info(&self) -> Result<NodeInfo>;

    /// Every domain the hypervisor knows, running or not, including ones Berth did not
    /// create (the engine reconciles by uuid). Order is unspecified.
    ///
    /// Errors: `Driver` when the hypervisor cannot be reached.
    fn list_domains(&self) -> Result<Vec<DomainStatus>>;

    /// The power state of one domain, `None` when the hypervisor does not know it. The agent
    /// reports it after every action. The default looks the uuid up in
    /// [`list_domains`](Self::list_domains); drivers may answer more cheaply.
    ///
    /// Errors: `Driver` when the hypervisor cannot be reached.
    fn domain_state(&self, uuid: Uuid) -> Result<Option<PowerState>> {
        Ok(self
            .list_domains()?
            .into_iter()
            .find(|d| d.uuid == uuid)
            .map(|d| d.state))
    }

    /// Defines the domain from `spec` and boots it; ends Running.
    ///
    /// Errors: `AlreadyExists` if the uuid or the name is taken (nothing changes);
    /// `InvalidSpec` if the spec cannot be expressed; `Driver` otherwise, in which case no
    /// domain is left behind.
    fn spawn(&self, spec: &InstanceSpec) -> Result<()>;

    /// Powers the domain off (clean shutdown first where the driver can, then hard off);
    /// ends Shutoff. Idempotent: `Ok` on a Shutoff domain.
    ///
    /// Errors: `NotFound`; `InvalidState` from Suspended (stopping would drop the saved
    /// memory: resume or delete instead).
    fn stop(&self, uuid: Uuid) -> Result<()>;

    /// Boots a Shutoff or Crashed domain; ends Running. Idempotent: `Ok` on a Running domain.
    ///
    /// Errors: `NotFound`; `InvalidState` from Paused (use `unpause`) or Suspended (use
    /// `resume`).
    fn start(&self, uuid: Uuid) -> Result<()>;

    /// Reboots. Soft (`hard = false`) asks the guest and is valid only when Running. Hard
    /// power-cycles from any state (discarding a paused or saved memory image, as Nova's
    /// hard reboot does) and is the recovery action for a stuck instance. Ends Running.
    ///
    /// Errors: `NotFound`; `InvalidState` for a soft reboot not from Running.
    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()>;

    /// Freezes the vCPUs, keeping memory; ends Paused. Idempotent on Paused.
    ///
    /// Errors: `NotFound`; `InvalidState` unless Running or Paused.
    fn pause(&self, uuid: Uuid) -> Result<()>;

    /// Thaws a Paused domain; ends Running. Idempotent on Running.
    ///
    /// Errors: `NotFound`; `InvalidState` unless Paused or Running.
    fn unpause(&self, uuid: Uuid) -> Result<()>;

    /// Saves memory to disk and stops the domain (libvirt managed save); ends Suspended.
    /// Idempotent on Suspended.
    ///
    /// Errors: `NotFound`; `InvalidState` unless Running, Paused or Suspended.
    fn suspend(&self, uuid: Uuid) -> Result<()>;

    /// Restores a Suspended domain from its saved memory; ends Running (even if it was
    /// Paused when suspended). Idempotent on Running.
    ///
    /// Errors: `NotFound`; `InvalidState` unless Suspended or Running.
    fn resume(&self, uuid: Uuid) -> Result<()>;

    /// Takes a named snapshot; the domain's state does not change. Returns the snapshot's id
    /// (its name, which is unique per domain).
    ///
    /// Errors: `NotFound`; `AlreadyExists` if the domain has a snapshot of that name;
    /// `InvalidSpec` for an empty name or one with control characters; `InvalidState` from
    /// Crashed or NoState.
    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String>;

    /// Rebuilds the domain in place from `spec` (same uuid and name, new image or metadata):
    /// powers it off, redefines it, and boots it again unless it was Shutoff (Nova keeps a
    /// stopped instance stopped across rebuild). Ends Running, or Shutoff if it was.
    ///
    /// Errors: `NotFound`; `InvalidSpec` if `spec.name` differs from the domain's name or the
    /// spec cannot be expressed; `InvalidState` from Paused or Suspended (unpause or resume
    /// first).
    fn rebuild(&self, spec: &InstanceSpec) -> Result<()>;

    /// Powers off if needed and removes the domain with its saved memory and snapshots.
    /// Idempotent: `Ok` when no such domain exists.
    ///
    /// Errors: `Driver` only.
    fn delete(&self, uuid: Uuid) -> Result<()>;

    /// Whether this host can live-migrate domains. The engine's scheduler only picks
    /// live-migration sources and targets that say yes.
    fn live_migration_supported(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_distinct_and_stable() {
        let uuid = Uuid::nil();
        let errors = [
            HypervisorError::NotFound { uuid },
            HypervisorError::AlreadyExists { what: "x".into() },
            HypervisorError::InvalidState {
                state: PowerState::Paused,
                action: ActionKind::Start,
            },
            HypervisorError::InvalidSpec("x".into()),
            HypervisorError::Unsupported(ActionKind::LiveMigrate),
            HypervisorError::Driver("x".into()),
        ];
        let codes: Vec<_> = errors.iter().map(HypervisorError::code).collect();
        assert_eq!(
            codes,
            [
                "NOT_FOUND",
                "ALREADY_EXISTS",
                "INVALID_STATE",
                "INVALID_SPEC",
                "UNSUPPORTED",
                "DRIVER"
            ]
        );
    }

    #[test]
    fn invalid_state_message_names_action_and_state() {
        let e = HypervisorError::InvalidState {
            state: PowerState::Suspended,
            action: ActionKind::Stop,
        };
        assert_eq!(e.to_string(), "cannot stop a domain that is SUSPENDED");
    }

    #[test]
    fn action_names_are_unique() {
        let mut names: Vec<_> = ActionKind::ALL.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ActionKind::ALL.len());
    }
}
