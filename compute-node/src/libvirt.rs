//! `LibvirtHypervisor`: the [`Hypervisor`] contract over libvirt (the `virt` crate).
//!
//! Each action reads the domain's state, checks it against the shared
//! [`transition`] table (so refusals and no-ops match the fake exactly), then calls libvirt:
//!
//! | action        | libvirt calls                                                        |
//! |---------------|----------------------------------------------------------------------|
//! | spawn         | `defineXML` + `create`; `undefine` again if the boot fails           |
//! | stop          | `shutdown`, wait up to `shutdown_timeout`, then `destroy`             |
//! | start         | `create`                                                             |
//! | reboot soft   | `reboot`                                                             |
//! | reboot hard   | `destroy` if active, drop any managed save, `create`                 |
//! | pause/unpause | `suspend` / `resume` (libvirt's names for pausing vCPUs)             |
//! | suspend       | `managedSave` (memory to disk, domain off)                           |
//! | resume        | `create` (restores the managed save), `resume` if it came back paused |
//! | snapshot      | `snapshotCreateXML` (internal snapshot; `Unsupported` where libvirt cannot) |
//! | rebuild       | `destroy` if active, `defineXML` with the new spec, `create` unless it was off |
//! | delete        | `destroy` if active, `undefineFlags(managed save + snapshot metadata)` |
//!
//! State mapping: `RUNNING`, `BLOCKED` and `SHUTDOWN` (guest still going down) are Running;
//! `SHUTOFF` with a managed-save image is Suspended, without one Shutoff; `PMSUSPENDED` is
//! Suspended; `PAUSED` and `CRASHED` map to themselves.
//!
//! Against libvirt's test driver (`test:///default` or a node file from [`crate::testnode`])
//! every action above works and completes synchronously: `shutdown` powers off at once,
//! `reboot` leaves the domain running, `managedSave` and snapshots are kept in memory. What
//! it does not do: run guests (nothing boots, so there is no console, network or disk I/O),
//! migrate (`migrateToURI` answers "argument unsupported"), or keep anything across
//! connections to a node file (each connection starts from the file; `test:///default` is
//! shared by all connections in one process and reset when the last one closes).
//!
//! # Real QEMU/KVM (`qemu:///system`)
//!
//! Checked on libvirt 9.0 with QEMU 7.2 (Debian 12) by `compute-node/examples/kvm_smoke.rs`
//! and `scripts/kvm-check.sh`, with the diskless guest [`crate::domain_xml`] writes:
//!
//! - Domain type: `kvm` when libvirt's domain capabilities offer KVM for the host's
//!   architecture (read from the connection, so remote URIs work), else `qemu` (TCG);
//!   [`LibvirtHypervisor::with_domain_type`] overrides it. libvirt's capabilities say
//!   nothing about whether the QEMU user (`libvirt-qemu`) may open `/dev/kvm`: when it may
//!   not, `spawn` fails with a `Driver` error naming `/dev/kvm` (fix the device's group and
//!   mode, or use `qemu`).
//! - spawn, pause/unpause, start, hard reboot, suspend/resume (managed save into libvirt's
//!   save directory, `/var/lib/libvirt/qemu/save`), rebuild, delete and list all work.
//! - stop: a guest with no OS ignores the ACPI power button, so `stop` takes
//!   `shutdown_timeout` and then `destroy`s (keep the timeout short where guests have no OS).
//! - soft reboot: libvirt sends the ACPI power button and answers at once; the domain stays
//!   Running whether or not the guest reboots (it does not, with no OS).
//! - snapshot: libvirt's internal snapshots need every disk to be qcow2, and a domain with no
//!   disk at all is refused ("internal and full system snapshots require all disks to be
//!   selected" while running, "nothing selected for snapshot" when off), so `snapshot` answers
//!   `Unsupported` for Berth's diskless domains and nothing is recorded. (An external
//!   memory-only snapshot would be accepted while running, but libvirt 9.0 can neither revert
//!   to it nor delete it, so it is not offered.)
//! - live migration: not implemented, so [`Hypervisor::live_migration_supported`] is `false`.

use std::sync::Once;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::error::{Error as VirtError, ErrorNumber};

use crate::domain_xml::{self, DomainType};
use crate::hypervisor::{
    ActionKind, DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState,
    Result, Transition, transition,
};

/// The URI used when none is configured: libvirt's in-process test driver.
pub const DEFAULT_URI: &str = "test:///default";

/// How to reach and describe the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LibvirtOptions {
    /// libvirt connection URI, e.g. `qemu:///system` or `test:///default`.
    pub uri: String,
    /// Instance disk in GiB, reported in [`NodeInfo::disk_gb`] (libvirt does not know it).
    pub disk_gb: u64,
    /// How long `stop` waits for a clean guest shutdown before pulling the plug (a guest
    /// without an OS, or one that ignores ACPI, always takes this long to stop).
    pub shutdown_timeout: Duration,
}

impl Default for LibvirtOptions {
    fn default() -> Self {
        Self {
            uri: DEFAULT_URI.into(),
            disk_gb: 0,
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}

/// A host driven through libvirt.
pub struct LibvirtHypervisor {
    options: LibvirtOptions,
    domain_type: DomainType,
    /// The host's architecture as libvirt names it (`x86_64`), written into QEMU domains;
    /// `None` for the test driver, whose domains keep libvirt's default.
    arch: Option<String>,
    /// Replaced when libvirtd went away and came back. An `RwLock` because every call only
    /// clones the handle (a refcount bump) under the read lock; the write lock is taken only
    /// to reconnect. `parking_lot`: nothing awaits while it is held.
    conn: RwLock<Connect>,
}

impl std::fmt::Debug for LibvirtHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtHypervisor")
            .field("options", &self.options)
            .field("domain_type", &self.domain_type)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

/// libvirt's default error handler prints every error to stderr, including the ones this
/// driver expects and handles (a lookup of a deleted domain): silence it once per process.
fn silence_libvirt_stderr() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

fn driver_err(context: &str, e: &VirtError) -> HypervisorError {
    HypervisorError::Driver(format!("{context}: {}", e.message()))
}

/// `NotFound` for libvirt's "no domain", `Driver` for anything else.
fn not_found_or_driver(uuid: Uuid, context: &str, e: &VirtError) -> HypervisorError {
    if code_is(e, ErrorNumber::NoDomain) {
        HypervisorError::NotFound { uuid }
    } else {
        driver_err(context, e)
    }
}

fn code_is(e: &VirtError, code: ErrorNumber) -> bool {
    e.code() == Enum::Known(code)
}

/// Whether libvirt offers KVM for `arch` (its domain capabilities for virt type `kvm`
/// answer). This is what QEMU and libvirt probed, not a check that the QEMU user may open
/// `/dev/kvm` today.
fn kvm_offered(conn: &Connect, arch: &str) -> bool {
    match conn.domain_capabilities(None, Some(arch), None, Some("kvm"), 0) {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(arch, error = %e.message(), "KVM not offered; using TCG (type qemu)");
            false
        }
    }
}

/// A hint for errors that come from QEMU failing to open `/dev/kvm`.
fn kvm_hint(e: &VirtError) -> &'static str {
    let m = e.message().to_ascii_lowercase();
    if m.contains("kvm") && (m.contains("permission denied") || m.contains("failed to initialize"))
    {
        " (the QEMU user cannot use /dev/kvm: `chgrp kvm /dev/kvm && chmod 0660 /dev/kvm`, \
         or run with domain type qemu)"
    } else {
        ""
    }
}

/// libvirt's power state in Nova's vocabulary (see the module docs).
fn power_state(state: DomainState, has_managed_save: bool) -> PowerState {
    match state {
        DomainState::Running | DomainState::Blocked | DomainState::Shutdown => PowerState::Running,
        DomainState::Paused => PowerState::Paused,
        DomainState::Shutoff if has_managed_save => PowerState::Suspended,
        DomainState::Shutoff => PowerState::Shutoff,
        DomainState::Crashed => PowerState::Crashed,
        DomainState::PMSuspended => PowerState::Suspended,
        DomainState::NoState => PowerState::NoState,
    }
}

impl LibvirtHypervisor {
    /// Opens a read-write connection to `options.uri`.
    ///
    /// For QEMU URIs the domain type is `kvm` when libvirt offers KVM for the host's
    /// architecture, else `qemu` (see the module docs); the architecture is the host's, as
    /// libvirt reports it.
    ///
    /// # Errors
    /// `Driver` when libvirt cannot open the URI or, for QEMU, report the host.
    pub fn connect(options: LibvirtOptions) -> Result<Self> {
        silence_libvirt_stderr();
        let conn = Connect::open(Some(&options.uri))
            .map_err(|e| driver_err(&format!("cannot open {}", options.uri), &e))?;
        let (domain_type, arch) = if DomainType::for_uri(&options.uri, false) == DomainType::Test {
            (DomainType::Test, None)
        } else {
            let arch = conn
                .node_info()
                .map_err(|e| driver_err("node info", &e))?
                .model;
            let kvm = kvm_offered(&conn, &arch);
            (DomainType::for_uri(&options.uri, kvm), Some(arch))
        };
        tracing::info!(
            uri = %options.uri,
            domain_type = domain_type.as_str(),
            arch = arch.as_deref().unwrap_or("(default)"),
            "libvirt connected"
        );
        Ok(Self {
            domain_type,
            arch,
            options,
            conn: RwLock::new(conn),
        })
    }

    /// Forces the domain `type` written into new and rebuilt domains, e.g. `qemu` (TCG) on a
    /// host whose `/dev/kvm` the QEMU user cannot open (Nova's `[libvirt] virt_type`).
    /// Domains already defined keep their type until rebuilt.
    ///
    /// # Errors
    /// `InvalidSpec` when asking for `Test` on a QEMU connection or a QEMU type on the test
    /// driver: libvirt would refuse every domain.
    pub fn with_domain_type(mut self, domain_type: DomainType) -> Result<Self> {
        if (domain_type == DomainType::Test) != (self.domain_type == DomainType::Test) {
            return Err(HypervisorError::InvalidSpec(format!(
                "domain type {} does not suit {}",
                domain_type.as_str(),
                self.options.uri
            )));
        }
        self.domain_type = domain_type;
        Ok(self)
    }

    /// The host architecture written into domains (`None` on the test driver).
    pub fn arch(&self) -> Option<&str> {
        self.arch.as_deref()
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.options.uri
    }

    /// The domain `type` this driver writes into domain XML.
    pub fn domain_type(&self) -> DomainType {
        self.domain_type
    }

    /// A live connection: the current one, or a fresh one if libvirtd dropped it.
    fn conn(&self) -> Result<Connect> {
        {
            let conn = self.conn.read();
            if conn.is_alive().unwrap_or(false) {
                return Ok(conn.clone());
            }
        }
        let mut conn = self.conn.write();
        // Another caller may have reconnected while this one waited for the write lock.
        if !conn.is_alive().unwrap_or(false) {
            tracing::warn!(uri = %self.options.uri, "libvirt connection lost; reconnecting");
            *conn = Connect::open(Some(&self.options.uri))
                .map_err(|e| driver_err(&format!("cannot reopen {}", self.options.uri), &e))?;
        }
        Ok(conn.clone())
    }

    /// The domain with `uuid`, or `NotFound`.
    fn lookup(&self, uuid: Uuid) -> Result<Domain> {
        self.conn()?
            .lookup_domain_by_uuid(uuid)
            .map_err(|e| not_found_or_driver(uuid, "lookup", &e))
    }

    /// The domain's state, in the contract's terms.
    fn state_of(&self, dom: &Domain, uuid: Uuid) -> Result<PowerState> {
        let info = dom
            .info()
            .map_err(|e| not_found_or_driver(uuid, "domain info", &e))?;
        let state = match info.state {
            Enum::Known(s) => s,
            Enum::Unknown(_) => return Ok(PowerState::NoState),
        };
        let saved = state == DomainState::Shutoff
            && dom
                .has_managed_save(0)
                .map_err(|e| not_found_or_driver(uuid, "managed save check", &e))?;
        Ok(power_state(state, saved))
    }

    /// Maps a libvirt error met while doing `action` on `uuid`.
    fn map_err(uuid: Uuid, action: ActionKind, context: &str, e: &VirtError) -> HypervisorError {
        match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => HypervisorError::NotFound { uuid },
            Enum::Known(ErrorNumber::DomExist) => HypervisorError::AlreadyExists {
                what: e.message().to_string(),
            },
            Enum::Known(
                ErrorNumber::NoSupport
                | ErrorNumber::OperationUnsupported
                | ErrorNumber::ArgumentUnsupported,
            ) => HypervisorError::Unsupported(action),
            Enum::Known(ErrorNumber::XmlError | ErrorNumber::XmlDetail) => {
                HypervisorError::InvalidSpec(e.message().to_string())
            }
            _ => driver_err(context, e),
        }
    }

    /// Looks the domain up, checks the table and, if the action applies, runs `f`.
    fn act(
        &self,
        uuid: Uuid,
        action: ActionKind,
        f: impl FnOnce(&Domain, PowerState) -> Result<()>,
    ) -> Result<()> {
        let dom = self.lookup(uuid)?;
        let state = self.state_of(&dom, uuid)?;
        match transition(state, action)? {
            Transition::AlreadyDone => Ok(()),
            Transition::Apply => {
                tracing::debug!(%uuid, %action, %state, "libvirt action");
                f(&dom, state)
            }
        }
    }

    /// Powers the domain off hard, tolerating "not running" (it went down meanwhile).
    fn destroy_if_active(&self, dom: &Domain, uuid: Uuid, action: ActionKind) -> Result<()> {
        if dom.is_active().unwrap_or(true)
            && let Err(e) = dom.destroy()
            && !code_is(&e, ErrorNumber::OperationInvalid)
        {
            return Err(Self::map_err(uuid, action, "destroy", &e));
        }
        Ok(())
    }

    /// `create`, mapping errors for `action`.
    fn create(&self, dom: &Domain, uuid: Uuid, action: ActionKind) -> Result<()> {
        dom.create().map_err(|e| {
            let context = format!("create{}", kvm_hint(&e));
            Self::map_err(uuid, action, &context, &e)
        })
    }

    fn domain_xml(&self, spec: &InstanceSpec) -> Result<String> {
        domain_xml::domain_xml_for(spec, self.domain_type, self.arch.as_deref())
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn node_info(&self) -> Result<NodeInfo> {
        let conn = self.conn()?;
        let info = conn.node_info().map_err(|e| driver_err("node info", &e))?;
        let hypervisor_type = conn
            .driver_type()
            .map_err(|e| driver_err("driver type", &e))?;
        let hypervisor_version = conn
            .hyp_version()
            .map_err(|e| driver_err("hypervisor version", &e))?;
        Ok(NodeInfo {
            vcpus: info.cpus,
            memory_mb: info.memory / 1024,
            disk_gb: self.options.disk_gb,
            arch: info.model,
            hypervisor_type,
            hypervisor_version: u64::from(hypervisor_version),
        })
    }

    fn list_domains(&self) -> Result<Vec<DomainStatus>> {
        let domains = self
            .conn()?
            .list_all_domains(0)
            .map_err(|e| driver_err("list domains", &e))?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in domains {
            let uuid = dom.uuid().map_err(|e| driver_err("domain uuid", &e))?;
            // A domain deleted between the listing and these calls is simply not reported.
            let Ok(name) = dom.name() else { continue };
            match self.state_of(&dom, uuid) {
                Ok(state) => out.push(DomainStatus { uuid, name, state }),
                Err(HypervisorError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<()> {
        let xml = self.domain_xml(spec)?;
        let conn = self.conn()?;
        let uuid = spec.uuid;
        if conn.lookup_domain_by_uuid(uuid).is_ok() {
            return Err(HypervisorError::AlreadyExists {
                what: format!("uuid {uuid}"),
            });
        }
        if conn.lookup_domain_by_name(&spec.name).is_ok() {
            return Err(HypervisorError::AlreadyExists {
                what: format!("name {:?}", spec.name),
            });
        }
        let dom = conn
            .define_domain_xml(&xml)
            .map_err(|e| Self::map_err(uuid, ActionKind::Spawn, "define", &e))?;
        if let Err(err) = self.create(&dom, uuid, ActionKind::Spawn) {
            // The contract: a failed spawn leaves nothing behind.
            if let Err(u) = dom.undefine() {
                tracing::warn!(%uuid, error = %u, "could not undefine a domain whose boot failed");
            }
            return Err(err);
        }
        tracing::info!(%uuid, name = %spec.name, "spawned");
        Ok(())
    }

    fn stop(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Stop, |dom, state| {
            if state == PowerState::Running {
                // Ask the guest first; a guest that ignores ACPI is powered off below.
                if dom.shutdown().is_ok() {
                    let deadline = Instant::now() + self.options.shutdown_timeout;
                    while dom.is_active().unwrap_or(false) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            self.destroy_if_active(dom, uuid, ActionKind::Stop)
        })
    }

    fn start(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Start, |dom, _| {
            // A crashed domain kept by on_crash=preserve is still active: clear it first.
            self.destroy_if_active(dom, uuid, ActionKind::Start)?;
            self.create(dom, uuid, ActionKind::Start)
        })
    }

    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()> {
        if !hard {
            return self.act(uuid, ActionKind::SoftReboot, |dom, _| {
                dom.reboot(0)
                    .map_err(|e| Self::map_err(uuid, ActionKind::SoftReboot, "reboot", &e))
            });
        }
        self.act(uuid, ActionKind::HardReboot, |dom, state| {
            self.destroy_if_active(dom, uuid, ActionKind::HardReboot)?;
            if state == PowerState::Suspended {
                dom.managed_save_remove(0).map_err(|e| {
                    Self::map_err(uuid, ActionKind::HardReboot, "drop managed save", &e)
                })?;
            }
            self.create(dom, uuid, ActionKind::HardReboot)
        })
    }

    fn pause(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Pause, |dom, _| {
            dom.suspend()
                .map_err(|e| Self::map_err(uuid, ActionKind::Pause, "suspend (pause)", &e))
        })
    }

    fn unpause(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Unpause, |dom, _| {
            dom.resume()
                .map_err(|e| Self::map_err(uuid, ActionKind::Unpause, "resume (unpause)", &e))
        })
    }

    fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Suspend, |dom, _| {
            dom.managed_save(0)
                .map_err(|e| Self::map_err(uuid, ActionKind::Suspend, "managed save", &e))
        })
    }

    fn resume(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Resume, |dom, _| {
            self.create(dom, uuid, ActionKind::Resume)?;
            // A domain saved while paused comes back paused; the contract says Running.
            if self.state_of(dom, uuid)? == PowerState::Paused {
                dom.resume()
                    .map_err(|e| Self::map_err(uuid, ActionKind::Resume, "resume", &e))?;
            }
            Ok(())
        })
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String> {
        let xml = domain_xml::snapshot_xml(name)?;
        let mut id = String::new();
        self.act(uuid, ActionKind::Snapshot, |dom, _| {
            if Domain::lookup_snapshot_by_name(dom, name, 0).is_ok() {
                return Err(HypervisorError::AlreadyExists {
                    what: format!("snapshot {name:?}"),
                });
            }
            let snap = dom.create_snapshot_xml(&xml, 0).map_err(|e| {
                // QEMU refuses internal snapshots of domains without (qcow2) disks with
                // "unsupported configuration": this domain cannot be snapshotted at all.
                if code_is(&e, ErrorNumber::ConfigUnsupported) {
                    tracing::info!(%uuid, error = %e.message(), "snapshot unsupported");
                    HypervisorError::Unsupported(ActionKind::Snapshot)
                } else {
                    Self::map_err(uuid, ActionKind::Snapshot, "snapshot", &e)
                }
            })?;
            id = snap.name().map_err(|e| driver_err("snapshot name", &e))?;
            Ok(())
        })?;
        Ok(id)
    }

    fn rebuild(&self, spec: &InstanceSpec) -> Result<()> {
        let xml = self.domain_xml(spec)?;
        let uuid = spec.uuid;
        self.act(uuid, ActionKind::Rebuild, |dom, state| {
            let name = dom.name().map_err(|e| driver_err("domain name", &e))?;
            if name != spec.name {
                return Err(HypervisorError::InvalidSpec(format!(
                    "rebuild cannot rename {name:?} to {:?}",
                    spec.name
                )));
            }
            self.destroy_if_active(dom, uuid, ActionKind::Rebuild)?;
            let conn = self.conn()?;
            let dom = conn
                .define_domain_xml(&xml)
                .map_err(|e| Self::map_err(uuid, ActionKind::Rebuild, "redefine", &e))?;
            if state != PowerState::Shutoff {
                self.create(&dom, uuid, ActionKind::Rebuild)?;
            }
            Ok(())
        })
    }

    fn delete(&self, uuid: Uuid) -> Result<()> {
        let dom = match self.lookup(uuid) {
            Ok(dom) => dom,
            Err(HypervisorError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.destroy_if_active(&dom, uuid, ActionKind::Delete)?;
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        match dom.undefine_flags(flags) {
            Ok(()) => {
                tracing::info!(%uuid, "deleted");
                Ok(())
            }
            // Deleted by someone else in the meantime: the goal is reached.
            Err(e) if code_is(&e, ErrorNumber::NoDomain) => Ok(()),
            Err(e) => Err(Self::map_err(uuid, ActionKind::Delete, "undefine", &e)),
        }
    }

    fn live_migration_supported(&self) -> bool {
        // The test driver cannot migrate, and this driver has no migrate action yet: QEMU could
        // (given shared or copied storage), but nothing here drives it, so no host offers it.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_states_map_to_nova_power_states() {
        use DomainState as D;
        let cases = [
            (D::Running, false, PowerState::Running),
            (D::Blocked, false, PowerState::Running),
            (D::Shutdown, false, PowerState::Running),
            (D::Paused, false, PowerState::Paused),
            (D::Shutoff, false, PowerState::Shutoff),
            (D::Shutoff, true, PowerState::Suspended),
            (D::Crashed, false, PowerState::Crashed),
            (D::PMSuspended, false, PowerState::Suspended),
            (D::NoState, false, PowerState::NoState),
        ];
        for (d, saved, want) in cases {
            assert_eq!(power_state(d, saved), want, "{d:?} saved={saved}");
        }
    }
}
