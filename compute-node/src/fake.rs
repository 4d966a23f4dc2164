//! `FakeHypervisor`: an in-memory host that follows the [`Hypervisor`] contract to the letter,
//! with fault injection for tests and the load harness (Nova's fake driver pattern).
//!
//! It is the executable reference of the state machine in [`crate::hypervisor`]: it takes its
//! rules from the same [`transition`] table as the libvirt driver and validates specs with the
//! same [`domain_xml::validate_spec`], so a test that passes against the fake describes what a
//! real host does.
//!
//! Faults, all off by default:
//! - [`fail_next`](FakeHypervisor::fail_next) / [`fail_next_spawns`](FakeHypervisor::fail_next_spawns):
//!   the next N calls of an action fail with `Driver` and change nothing;
//! - [`fail_spawns_named`](FakeHypervisor::fail_spawns_named): every spawn whose name contains
//!   a pattern fails (a "bad image" that never builds);
//! - [`set_delay`](FakeHypervisor::set_delay): each call of an action sleeps first (the
//!   thread blocks, as a libvirt call would; callers use `spawn_blocking`);
//! - [`lose`](FakeHypervisor::lose): a domain vanishes, as after a host crash;
//! - [`crash`](FakeHypervisor::crash): a domain goes Crashed.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::domain_xml;
use crate::hypervisor::{
    ActionKind, DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState,
    Result, Transition, transition,
};

/// A domain of the fake host, as tests inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDomain {
    /// The spec it was spawned (or last rebuilt) from.
    pub spec: InstanceSpec,
    /// Current power state.
    pub state: PowerState,
    /// Snapshot names, oldest first.
    pub snapshots: Vec<String>,
    /// Times the guest has booted (spawn, start, reboot, rebuild with boot): lets tests tell
    /// a reboot from a no-op.
    pub boots: u64,
}

/// Fault-injection settings.
#[derive(Debug, Default)]
struct Faults {
    fail_next: HashMap<ActionKind, u32>,
    fail_spawn_patterns: Vec<String>,
    delays: HashMap<ActionKind, Duration>,
}

/// Domains and the record of calls. One lock: every critical section is a few map operations
/// and nothing sleeps or blocks while it is held (delays run before taking it).
#[derive(Debug, Default)]
struct Host {
    domains: HashMap<Uuid, FakeDomain>,
    calls: Vec<(ActionKind, Uuid)>,
}

/// An in-memory hypervisor. Cheap to create; share it behind an `Arc`.
#[derive(Debug)]
pub struct FakeHypervisor {
    node: NodeInfo,
    live_migration: bool,
    host: Mutex<Host>,
    /// Separate from `host` so tests can arm faults while actions sleep in a delay.
    faults: Mutex<Faults>,
}

impl Default for FakeHypervisor {
    /// A 16-vCPU, 64 GiB, 1 TB `x86_64` host.
    fn default() -> Self {
        Self::new(NodeInfo {
            vcpus: 16,
            memory_mb: 64 * 1024,
            disk_gb: 1000,
            arch: "x86_64".into(),
            hypervisor_type: "FAKE".into(),
            hypervisor_version: 1_000_000,
        })
    }
}

impl FakeHypervisor {
    /// A host that reports `node` and runs nothing yet.
    pub fn new(node: NodeInfo) -> Self {
        Self {
            node,
            live_migration: true,
            host: Mutex::new(Host::default()),
            faults: Mutex::new(Faults::default()),
        }
    }

    /// Sets what [`Hypervisor::live_migration_supported`] answers (default `true`).
    #[must_use]
    pub fn with_live_migration(mut self, supported: bool) -> Self {
        self.live_migration = supported;
        self
    }

    /// The next `n` calls of `action` fail with `Driver("injected fault")` and change nothing
    /// (adds to any count already armed).
    pub fn fail_next(&self, action: ActionKind, n: u32) {
        *self.faults.lock().fail_next.entry(action).or_default() += n;
    }

    /// Shorthand for `fail_next(ActionKind::Spawn, n)`.
    pub fn fail_next_spawns(&self, n: u32) {
        self.fail_next(ActionKind::Spawn, n);
    }

    /// Every later spawn whose name contains `pattern` fails, until [`clear_faults`](Self::clear_faults).
    pub fn fail_spawns_named(&self, pattern: impl Into<String>) {
        self.faults.lock().fail_spawn_patterns.push(pattern.into());
    }

    /// Every later call of `action` sleeps `delay` before doing anything (`Duration::ZERO`
    /// removes it).
    pub fn set_delay(&self, action: ActionKind, delay: Duration) {
        let mut f = self.faults.lock();
        if delay.is_zero() {
            f.delays.remove(&action);
        } else {
            f.delays.insert(action, delay);
        }
    }

    /// Removes every armed failure and delay.
    pub fn clear_faults(&self) {
        *self.faults.lock() = Faults::default();
    }

    /// Makes the domain vanish without any action, as if the host had crashed and lost it.
    /// Returns whether it existed.
    pub fn lose(&self, uuid: Uuid) -> bool {
        self.host.lock().domains.remove(&uuid).is_some()
    }

    /// Puts the domain in Crashed (the guest died). Returns whether it existed.
    pub fn crash(&self, uuid: Uuid) -> bool {
        match self.host.lock().domains.get_mut(&uuid) {
            Some(d) => {
                d.state = PowerState::Crashed;
                true
            }
            None => false,
        }
    }

    /// A copy of one domain, for assertions.
    pub fn domain(&self, uuid: Uuid) -> Option<FakeDomain> {
        self.host.lock().domains.get(&uuid).cloned()
    }

    /// Every action call so far, in order, whether it succeeded or not.
    pub fn calls(&self) -> Vec<(ActionKind, Uuid)> {
        self.host.lock().calls.clone()
    }

    /// Records the call, sleeps its delay, and consumes an armed failure. The delay runs
    /// before any lock on the host is taken.
    fn enter(&self, action: ActionKind, uuid: Uuid, name: Option<&str>) -> Result<()> {
        self.host.lock().calls.push((action, uuid));
        let delay = self.faults.lock().delays.get(&action).copied();
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut f = self.faults.lock();
        if let Some(n) = f.fail_next.get_mut(&action).filter(|n| **n > 0) {
            *n -= 1;
            return Err(HypervisorError::Driver(format!("injected fault: {action}")));
        }
        if let Some(name) = name
            && let Some(p) = f
                .fail_spawn_patterns
                .iter()
                .find(|p| name.contains(p.as_str()))
        {
            return Err(HypervisorError::Driver(format!(
                "injected fault: spawns named like {p:?} fail"
            )));
        }
        Ok(())
    }

    /// The common shape of a state-changing action: check the table, then apply `f`.
    fn act(&self, uuid: Uuid, action: ActionKind, f: impl FnOnce(&mut FakeDomain)) -> Result<()> {
        self.enter(action, uuid, None)?;
        let mut host = self.host.lock();
        let dom = host
            .domains
            .get_mut(&uuid)
            .ok_or(HypervisorError::NotFound { uuid })?;
        if transition(dom.state, action)? == Transition::Apply {
            f(dom);
        }
        Ok(())
    }
}

fn boot(d: &mut FakeDomain) {
    d.state = PowerState::Running;
    d.boots += 1;
}

impl Hypervisor for FakeHypervisor {
    fn node_info(&self) -> Result<NodeInfo> {
        Ok(self.node.clone())
    }

    fn list_domains(&self) -> Result<Vec<DomainStatus>> {
        Ok(self
            .host
            .lock()
            .domains
            .iter()
            .map(|(&uuid, d)| DomainStatus {
                uuid,
                name: d.spec.name.clone(),
                state: d.state,
            })
            .collect())
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<()> {
        self.enter(ActionKind::Spawn, spec.uuid, Some(&spec.name))?;
        domain_xml::validate_spec(spec)?;
        let mut host = self.host.lock();
        if host.domains.contains_key(&spec.uuid) {
            return Err(HypervisorError::AlreadyExists {
                what: format!("uuid {}", spec.uuid),
            });
        }
        if host.domains.values().any(|d| d.spec.name == spec.name) {
            return Err(HypervisorError::AlreadyExists {
                what: format!("name {:?}", spec.name),
            });
        }
        host.domains.insert(
            spec.uuid,
            FakeDomain {
                spec: spec.clone(),
                state: PowerState::Running,
                snapshots: Vec::new(),
                boots: 1,
            },
        );
        Ok(())
    }

    fn stop(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Stop, |d| d.state = PowerState::Shutoff)
    }

    fn start(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Start, boot)
    }

    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()> {
        let action = if hard {
            ActionKind::HardReboot
        } else {
            ActionKind::SoftReboot
        };
        self.act(uuid, action, boot)
    }

    fn pause(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Pause, |d| d.state = PowerState::Paused)
    }

    fn unpause(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Unpause, |d| d.state = PowerState::Running)
    }

    fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.act(uuid, ActionKind::Suspend, |d| {
            d.state = PowerState::Suspended
        })
    }

    fn resume(&self, uuid: Uuid) -> Result<()> {
        // Restoring saved memory is not a boot: the guest carries on where it was.
        self.act(uuid, ActionKind::Resume, |d| d.state = PowerState::Running)
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String> {
        self.enter(ActionKind::Snapshot, uuid, None)?;
        domain_xml::validate_domain_name("snapshot name", name)?;
        let mut host = self.host.lock();
        let dom = host
            .domains
            .get_mut(&uuid)
            .ok_or(HypervisorError::NotFound { uuid })?;
        transition(dom.state, ActionKind::Snapshot)?;
        if dom.snapshots.iter().any(|s| s == name) {
            return Err(HypervisorError::AlreadyExists {
                what: format!("snapshot {name:?}"),
            });
        }
        dom.snapshots.push(name.to_string());
        Ok(name.to_string())
    }

    fn rebuild(&self, spec: &InstanceSpec) -> Result<()> {
        self.enter(ActionKind::Rebuild, spec.uuid, None)?;
        domain_xml::validate_spec(spec)?;
        let mut host = self.host.lock();
        let dom = host
            .domains
            .get_mut(&spec.uuid)
            .ok_or(HypervisorError::NotFound { uuid: spec.uuid })?;
        transition(dom.state, ActionKind::Rebuild)?;
        if dom.spec.name != spec.name {
            return Err(HypervisorError::InvalidSpec(format!(
                "rebuild cannot rename {:?} to {:?}",
                dom.spec.name, spec.name
            )));
        }
        dom.spec = spec.clone();
        if dom.state != PowerState::Shutoff {
            boot(dom);
        }
        Ok(())
    }

    fn delete(&self, uuid: Uuid) -> Result<()> {
        self.enter(ActionKind::Delete, uuid, None)?;
        self.host.lock().domains.remove(&uuid);
        Ok(())
    }

    fn live_migration_supported(&self) -> bool {
        self.live_migration
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use PowerState::{Crashed, Paused, Running, Shutoff, Suspended};

    fn spec(name: &str) -> InstanceSpec {
        InstanceSpec {
            uuid: Uuid::new_v4(),
            name: name.into(),
            vcpus: 1,
            memory_mb: 512,
            disk_gb: 1,
            image_id: "img-1".into(),
            image_name: "cirros".into(),
            flavor_name: "m1.tiny".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn state(h: &FakeHypervisor, uuid: Uuid) -> PowerState {
        h.domain(uuid).expect("domain exists").state
    }

    /// A host with one spawned domain, driven into `target` by ordinary actions.
    fn domain_in(target: PowerState) -> (FakeHypervisor, Uuid) {
        let h = FakeHypervisor::default();
        let s = spec("vm");
        h.spawn(&s).unwrap();
        match target {
            Running => {}
            Paused => h.pause(s.uuid).unwrap(),
            Suspended => h.suspend(s.uuid).unwrap(),
            Shutoff => h.stop(s.uuid).unwrap(),
            Crashed => assert!(h.crash(s.uuid)),
            PowerState::NoState => unreachable!("no action leads to NoState"),
        }
        assert_eq!(state(&h, s.uuid), target);
        (h, s.uuid)
    }

    fn run(h: &FakeHypervisor, uuid: Uuid, action: ActionKind) -> Result<()> {
        match action {
            ActionKind::Stop => h.stop(uuid),
            ActionKind::Start => h.start(uuid),
            ActionKind::SoftReboot => h.reboot(uuid, false),
            ActionKind::HardReboot => h.reboot(uuid, true),
            ActionKind::Pause => h.pause(uuid),
            ActionKind::Unpause => h.unpause(uuid),
            ActionKind::Suspend => h.suspend(uuid),
            ActionKind::Resume => h.resume(uuid),
            ActionKind::Snapshot => h.snapshot(uuid, "snap").map(drop),
            ActionKind::Rebuild => {
                let mut s = h.domain(uuid).unwrap().spec;
                s.image_id = "img-2".into();
                h.rebuild(&s)
            }
            ActionKind::Delete => h.delete(uuid),
            ActionKind::Spawn | ActionKind::LiveMigrate => unreachable!(),
        }
    }

    /// Expected outcome of an action from a state: `Some(end state)` (`None` = gone) or an
    /// `InvalidState` refusal. Written out by hand from the contract, not derived from the
    /// code's table.
    #[derive(Debug, PartialEq)]
    enum Want {
        Ends(Option<PowerState>),
        Refused,
    }

    #[test]
    fn state_machine_matches_the_contract_table() {
        use ActionKind as A;
        use Want::{Ends, Refused};
        let cases: &[(PowerState, ActionKind, Want)] = &[
            (Running, A::Stop, Ends(Some(Shutoff))),
            (Paused, A::Stop, Ends(Some(Shutoff))),
            (Crashed, A::Stop, Ends(Some(Shutoff))),
            (Shutoff, A::Stop, Ends(Some(Shutoff))),
            (Suspended, A::Stop, Refused),
            (Shutoff, A::Start, Ends(Some(Running))),
            (Crashed, A::Start, Ends(Some(Running))),
            (Running, A::Start, Ends(Some(Running))),
            (Paused, A::Start, Refused),
            (Suspended, A::Start, Refused),
            (Running, A::SoftReboot, Ends(Some(Running))),
            (Paused, A::SoftReboot, Refused),
            (Shutoff, A::SoftReboot, Refused),
            (Suspended, A::SoftReboot, Refused),
            (Crashed, A::SoftReboot, Refused),
            (Running, A::HardReboot, Ends(Some(Running))),
            (Paused, A::HardReboot, Ends(Some(Running))),
            (Shutoff, A::HardReboot, Ends(Some(Running))),
            (Suspended, A::HardReboot, Ends(Some(Running))),
            (Crashed, A::HardReboot, Ends(Some(Running))),
            (Running, A::Pause, Ends(Some(Paused))),
            (Paused, A::Pause, Ends(Some(Paused))),
            (Shutoff, A::Pause, Refused),
            (Suspended, A::Pause, Refused),
            (Crashed, A::Pause, Refused),
            (Paused, A::Unpause, Ends(Some(Running))),
            (Running, A::Unpause, Ends(Some(Running))),
            (Shutoff, A::Unpause, Refused),
            (Suspended, A::Unpause, Refused),
            (Crashed, A::Unpause, Refused),
            (Running, A::Suspend, Ends(Some(Suspended))),
            (Paused, A::Suspend, Ends(Some(Suspended))),
            (Suspended, A::Suspend, Ends(Some(Suspended))),
            (Shutoff, A::Suspend, Refused),
            (Crashed, A::Suspend, Refused),
            (Suspended, A::Resume, Ends(Some(Running))),
            (Running, A::Resume, Ends(Some(Running))),
            (Paused, A::Resume, Refused),
            (Shutoff, A::Resume, Refused),
            (Crashed, A::Resume, Refused),
            (Running, A::Snapshot, Ends(Some(Running))),
            (Paused, A::Snapshot, Ends(Some(Paused))),
            (Shutoff, A::Snapshot, Ends(Some(Shutoff))),
            (Suspended, A::Snapshot, Ends(Some(Suspended))),
            (Crashed, A::Snapshot, Refused),
            (Running, A::Rebuild, Ends(Some(Running))),
            (Shutoff, A::Rebuild, Ends(Some(Shutoff))),
            (Crashed, A::Rebuild, Ends(Some(Running))),
            (Paused, A::Rebuild, Refused),
            (Suspended, A::Rebuild, Refused),
            (Running, A::Delete, Ends(None)),
            (Paused, A::Delete, Ends(None)),
            (Shutoff, A::Delete, Ends(None)),
            (Suspended, A::Delete, Ends(None)),
            (Crashed, A::Delete, Ends(None)),
        ];
        // Every (state, action) pair is listed once, so a new state or action cannot slip
        // in untested.
        let states = [Running, Paused, Suspended, Shutoff, Crashed];
        let actions: Vec<_> = ActionKind::ALL
            .into_iter()
            .filter(|a| !matches!(a, A::Spawn | A::LiveMigrate))
            .collect();
        let listed: std::collections::HashSet<_> = cases.iter().map(|(s, a, _)| (*s, *a)).collect();
        assert_eq!(listed.len(), cases.len(), "a pair is listed twice");
        assert_eq!(
            listed.len(),
            states.len() * actions.len(),
            "a pair is missing"
        );
        for (from, action, want) in cases {
            let (h, uuid) = domain_in(*from);
            let before = h.domain(uuid);
            let got = match run(&h, uuid, *action) {
                Ok(()) => Ends(h.domain(uuid).map(|d| d.state)),
                Err(HypervisorError::InvalidState { state, action: a }) => {
                    assert_eq!((state, a), (*from, *action), "error names state and action");
                    assert_eq!(
                        h.domain(uuid),
                        before,
                        "a refused action changed the domain"
                    );
                    Refused
                }
                Err(e) => panic!("{from} --{action}--> unexpected error {e}"),
            };
            assert_eq!(&got, want, "{from} --{action}-->");
        }
    }

    #[test]
    fn reboots_boot_again_and_no_ops_do_not() {
        let (h, uuid) = domain_in(Running);
        assert_eq!(h.domain(uuid).unwrap().boots, 1);
        h.reboot(uuid, false).unwrap();
        h.reboot(uuid, true).unwrap();
        assert_eq!(h.domain(uuid).unwrap().boots, 3);
        h.start(uuid).unwrap(); // already running: no-op
        h.unpause(uuid).unwrap(); // already running: no-op
        assert_eq!(h.domain(uuid).unwrap().boots, 3);
        h.suspend(uuid).unwrap();
        h.resume(uuid).unwrap(); // restore, not a boot
        assert_eq!(h.domain(uuid).unwrap().boots, 3);
    }

    #[test]
    fn unknown_uuid_is_not_found_except_for_delete() {
        let h = FakeHypervisor::default();
        let ghost = Uuid::new_v4();
        for action in [
            ActionKind::Stop,
            ActionKind::Start,
            ActionKind::SoftReboot,
            ActionKind::HardReboot,
            ActionKind::Pause,
            ActionKind::Unpause,
            ActionKind::Suspend,
            ActionKind::Resume,
        ] {
            assert_eq!(
                run(&h, ghost, action),
                Err(HypervisorError::NotFound { uuid: ghost }),
                "{action}"
            );
        }
        assert_eq!(
            h.snapshot(ghost, "s"),
            Err(HypervisorError::NotFound { uuid: ghost })
        );
        let mut s = spec("ghost");
        s.uuid = ghost;
        assert_eq!(
            h.rebuild(&s),
            Err(HypervisorError::NotFound { uuid: ghost })
        );
        assert_eq!(h.delete(ghost), Ok(()));
    }

    #[test]
    fn spawn_refuses_duplicate_uuid_and_name_and_bad_specs() {
        let h = FakeHypervisor::default();
        let a = spec("a");
        h.spawn(&a).unwrap();
        assert!(
            matches!(h.spawn(&a), Err(HypervisorError::AlreadyExists { what }) if what.starts_with("uuid"))
        );
        let same_name = spec("a");
        assert!(
            matches!(h.spawn(&same_name), Err(HypervisorError::AlreadyExists { what }) if what.starts_with("name"))
        );
        let mut bad = spec("bad\u{0}");
        assert!(matches!(
            h.spawn(&bad),
            Err(HypervisorError::InvalidSpec(_))
        ));
        bad.name = "ok".into();
        bad.vcpus = 0;
        assert!(matches!(
            h.spawn(&bad),
            Err(HypervisorError::InvalidSpec(_))
        ));
        assert_eq!(h.list_domains().unwrap().len(), 1);
    }

    #[test]
    fn list_domains_reports_every_domain_with_its_state() {
        let h = FakeHypervisor::default();
        let (a, b) = (spec("a"), spec("b"));
        h.spawn(&a).unwrap();
        h.spawn(&b).unwrap();
        h.pause(b.uuid).unwrap();
        let mut listed = h.list_domains().unwrap();
        listed.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(
            listed,
            vec![
                DomainStatus {
                    uuid: a.uuid,
                    name: "a".into(),
                    state: Running
                },
                DomainStatus {
                    uuid: b.uuid,
                    name: "b".into(),
                    state: Paused
                },
            ]
        );
    }

    #[test]
    fn snapshots_keep_state_and_refuse_duplicates() {
        let (h, uuid) = domain_in(Paused);
        assert_eq!(
            h.snapshot(uuid, "before-upgrade"),
            Ok("before-upgrade".into())
        );
        assert_eq!(h.snapshot(uuid, "second"), Ok("second".into()));
        assert!(matches!(
            h.snapshot(uuid, "second"),
            Err(HypervisorError::AlreadyExists { .. })
        ));
        assert!(matches!(
            h.snapshot(uuid, ""),
            Err(HypervisorError::InvalidSpec(_))
        ));
        let d = h.domain(uuid).unwrap();
        assert_eq!(d.state, Paused);
        assert_eq!(d.snapshots, ["before-upgrade", "second"]);
    }

    #[test]
    fn rebuild_replaces_the_spec_keeps_stopped_stopped_and_refuses_renames() {
        let (h, uuid) = domain_in(Shutoff);
        let mut s = h.domain(uuid).unwrap().spec;
        s.image_id = "img-new".into();
        s.metadata.insert("rebuilt".into(), "yes".into());
        h.rebuild(&s).unwrap();
        let d = h.domain(uuid).unwrap();
        assert_eq!((d.state, d.spec.image_id.as_str()), (Shutoff, "img-new"));
        assert_eq!(d.boots, 1, "a stopped instance is not booted by rebuild");
        h.start(uuid).unwrap();
        h.rebuild(&s).unwrap();
        assert_eq!(h.domain(uuid).unwrap().boots, 3);
        let mut renamed = s.clone();
        renamed.name = "other".into();
        assert!(matches!(
            h.rebuild(&renamed),
            Err(HypervisorError::InvalidSpec(_))
        ));
        assert_eq!(h.domain(uuid).unwrap().spec.name, "vm");
    }

    #[test]
    fn delete_is_idempotent_and_frees_the_name() {
        let (h, uuid) = domain_in(Suspended);
        h.delete(uuid).unwrap();
        h.delete(uuid).unwrap();
        assert!(h.domain(uuid).is_none());
        h.spawn(&spec("vm")).unwrap();
    }

    #[test]
    fn fail_next_spawns_fails_exactly_n_and_leaves_nothing_behind() {
        let h = FakeHypervisor::default();
        h.fail_next_spawns(2);
        for _ in 0..2 {
            let s = spec("x");
            assert!(
                matches!(h.spawn(&s), Err(HypervisorError::Driver(m)) if m.contains("injected"))
            );
            assert!(h.domain(s.uuid).is_none());
        }
        assert!(h.list_domains().unwrap().is_empty());
        let s = spec("x");
        h.spawn(&s).unwrap();
        assert_eq!(state(&h, s.uuid), Running);
    }

    #[test]
    fn fail_spawns_named_fails_only_matching_names_until_cleared() {
        let h = FakeHypervisor::default();
        h.fail_spawns_named("bad-image");
        assert!(h.spawn(&spec("vm-bad-image-1")).is_err());
        assert!(h.spawn(&spec("vm-bad-image-2")).is_err());
        h.spawn(&spec("vm-good")).unwrap();
        h.clear_faults();
        h.spawn(&spec("vm-bad-image-3")).unwrap();
        assert_eq!(h.list_domains().unwrap().len(), 2);
    }

    #[test]
    fn fail_next_on_other_actions_changes_nothing() {
        let (h, uuid) = domain_in(Running);
        h.fail_next(ActionKind::Stop, 1);
        assert!(matches!(h.stop(uuid), Err(HypervisorError::Driver(_))));
        assert_eq!(state(&h, uuid), Running);
        h.stop(uuid).unwrap();
        assert_eq!(state(&h, uuid), Shutoff);
        h.fail_next(ActionKind::Delete, 1);
        assert!(h.delete(uuid).is_err());
        assert!(h.domain(uuid).is_some());
    }

    #[test]
    fn delay_applies_to_its_action_only_and_does_not_block_others() {
        let h = Arc::new(FakeHypervisor::default());
        let (slow, fast) = (spec("slow"), spec("fast"));
        h.spawn(&slow).unwrap();
        h.spawn(&fast).unwrap();
        h.set_delay(ActionKind::Stop, Duration::from_millis(300));
        let started = Instant::now();
        let stopper = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || h.stop(slow.uuid))
        };
        // While the stop sleeps, other actions go through at once.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        h.pause(fast.uuid).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "pause waited on the delayed stop"
        );
        stopper.join().unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(state(&h, slow.uuid), Shutoff);
        h.set_delay(ActionKind::Stop, Duration::ZERO);
        let t = Instant::now();
        h.stop(fast.uuid).unwrap();
        assert!(t.elapsed() < Duration::from_millis(150));
    }

    #[test]
    fn lost_domains_vanish_and_crashed_ones_recover_by_start() {
        let h = FakeHypervisor::default();
        let (a, b) = (spec("a"), spec("b"));
        h.spawn(&a).unwrap();
        h.spawn(&b).unwrap();
        assert!(h.lose(a.uuid));
        assert!(!h.lose(a.uuid));
        let listed: Vec<_> = h
            .list_domains()
            .unwrap()
            .into_iter()
            .map(|d| d.uuid)
            .collect();
        assert_eq!(listed, vec![b.uuid]);
        assert_eq!(
            h.stop(a.uuid),
            Err(HypervisorError::NotFound { uuid: a.uuid })
        );
        assert!(h.crash(b.uuid));
        assert_eq!(state(&h, b.uuid), Crashed);
        h.start(b.uuid).unwrap();
        assert_eq!(state(&h, b.uuid), Running);
    }

    #[test]
    fn calls_are_recorded_in_order_including_failures() {
        let (h, uuid) = domain_in(Running);
        let _ = h.resume(uuid);
        let _ = h.start(Uuid::nil());
        assert_eq!(
            h.calls(),
            vec![
                (ActionKind::Spawn, uuid),
                (ActionKind::Resume, uuid),
                (ActionKind::Start, Uuid::nil()),
            ]
        );
    }

    #[test]
    fn node_info_and_live_migration_are_as_configured() {
        let h = FakeHypervisor::default().with_live_migration(false);
        assert!(!h.live_migration_supported());
        assert_eq!(h.node_info().unwrap().vcpus, 16);
        assert!(FakeHypervisor::default().live_migration_supported());
    }

    #[test]
    fn concurrent_spawns_of_one_name_admit_exactly_one() {
        let h = Arc::new(FakeHypervisor::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || h.spawn(&spec("contended")).is_ok())
            })
            .collect();
        let ok = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(ok, 1);
        assert_eq!(h.list_domains().unwrap().len(), 1);
    }
}
