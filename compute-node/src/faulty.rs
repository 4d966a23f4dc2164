//! `FaultyHypervisor`: a decorator that injects failures and delays into any driver, for
//! end-to-end tests that run real `berth-node` processes (`--fail-spawns N`,
//! `--action-delay-ms N`, `--result-delay-ms N`).
//!
//! [`crate::fake::FakeHypervisor`] has richer fault injection of its own, but only for itself;
//! this wrapper lets a test make the libvirt driver fail too. A failed spawn follows the
//! [`Hypervisor`] contract: it returns `Driver` and leaves nothing behind (the inner driver is
//! never called).
//!
//! The delays open windows for a test to kill the node in: before the driver runs an action
//! (the action is lost with the process, as if never sent) or after it ran but before it is
//! answered (the action is done, its answer lost). Each delay is logged at `info` when it
//! starts, naming the action and the instance, so a test knows the window is open. Reads
//! (node info, domain listing and state) are never delayed, so registration and heartbeats
//! go on meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use uuid::Uuid;

use crate::hypervisor::{
    ActionKind, DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState,
    Result,
};

/// Wraps a driver; the next `n` spawns fail with a driver error, then spawns reach the
/// driver again; every action may be held before and after the driver runs it. Reads are
/// passed through unchanged.
pub struct FaultyHypervisor {
    inner: Arc<dyn Hypervisor>,
    /// Spawns still to fail. An atomic, not a lock: one counter, decremented by concurrent
    /// spawns of different instances.
    failing_spawns: AtomicU32,
    /// Sleep before each action reaches the driver.
    before: Duration,
    /// Sleep after each action returned from the driver.
    after: Duration,
}

impl FaultyHypervisor {
    /// Wraps `inner` so that its next `fail_spawns` spawns fail.
    pub fn new(inner: Arc<dyn Hypervisor>, fail_spawns: u32) -> Self {
        Self {
            inner,
            failing_spawns: AtomicU32::new(fail_spawns),
            before: Duration::ZERO,
            after: Duration::ZERO,
        }
    }

    /// Holds every action `before` ahead of the driver and its result `after` it (the calls
    /// block their thread, as a slow libvirt call would; the agent runs them on the blocking
    /// pool).
    #[must_use]
    pub fn with_delays(mut self, before: Duration, after: Duration) -> Self {
        self.before = before;
        self.after = after;
        self
    }

    /// Spawns that will still fail.
    pub fn failing_spawns(&self) -> u32 {
        self.failing_spawns.load(Ordering::Relaxed)
    }

    /// Takes one armed failure, if any is left.
    fn take_failure(&self) -> bool {
        self.failing_spawns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Runs `call` (one action on `uuid`) between the configured delays.
    fn held<T>(
        &self,
        action: ActionKind,
        uuid: Uuid,
        call: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.before.is_zero() {
            tracing::info!(%action, instance = %uuid, delay_ms = self.before.as_millis(),
                "testing: holding {action} of {uuid} before the driver runs it");
            std::thread::sleep(self.before);
        }
        let out = call();
        if !self.after.is_zero() {
            tracing::info!(%action, instance = %uuid, delay_ms = self.after.as_millis(),
                ok = out.is_ok(), "testing: holding the result of {action} of {uuid} after the driver ran it");
            std::thread::sleep(self.after);
        }
        out
    }
}

impl std::fmt::Debug for FaultyHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyHypervisor")
            .field("failing_spawns", &self.failing_spawns())
            .field("before", &self.before)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Hypervisor for FaultyHypervisor {
    fn node_info(&self) -> Result<NodeInfo> {
        self.inner.node_info()
    }

    fn list_domains(&self) -> Result<Vec<DomainStatus>> {
        self.inner.list_domains()
    }

    fn domain_state(&self, uuid: Uuid) -> Result<Option<PowerState>> {
        self.inner.domain_state(uuid)
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<()> {
        self.held(ActionKind::Spawn, spec.uuid, || {
            if self.take_failure() {
                return Err(HypervisorError::Driver(
                    "injected fault: --fail-spawns".into(),
                ));
            }
            self.inner.spawn(spec)
        })
    }

    fn stop(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Stop, uuid, || self.inner.stop(uuid))
    }

    fn start(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Start, uuid, || self.inner.start(uuid))
    }

    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()> {
        let kind = if hard {
            ActionKind::HardReboot
        } else {
            ActionKind::SoftReboot
        };
        self.held(kind, uuid, || self.inner.reboot(uuid, hard))
    }

    fn pause(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Pause, uuid, || self.inner.pause(uuid))
    }

    fn unpause(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Unpause, uuid, || self.inner.unpause(uuid))
    }

    fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Suspend, uuid, || self.inner.suspend(uuid))
    }

    fn resume(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Resume, uuid, || self.inner.resume(uuid))
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String> {
        self.held(ActionKind::Snapshot, uuid, || {
            self.inner.snapshot(uuid, name)
        })
    }

    fn rebuild(&self, spec: &InstanceSpec) -> Result<()> {
        self.held(ActionKind::Rebuild, spec.uuid, || self.inner.rebuild(spec))
    }

    fn delete(&self, uuid: Uuid) -> Result<()> {
        self.held(ActionKind::Delete, uuid, || self.inner.delete(uuid))
    }

    fn live_migration_supported(&self) -> bool {
        self.inner.live_migration_supported()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fake::FakeHypervisor;

    fn spec(name: &str) -> InstanceSpec {
        InstanceSpec {
            uuid: Uuid::new_v4(),
            name: name.into(),
            vcpus: 1,
            memory_mb: 128,
            disk_gb: 1,
            image_id: "img".into(),
            image_name: "img".into(),
            flavor_name: "tiny".into(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn fails_exactly_n_spawns_without_reaching_the_driver() {
        let fake = Arc::new(FakeHypervisor::default());
        let h = FaultyHypervisor::new(fake.clone(), 2);
        for i in 0..2 {
            let err = h.spawn(&spec(&format!("vm-{i}"))).unwrap_err();
            assert_eq!(err.code(), "DRIVER");
        }
        assert!(
            fake.calls().is_empty(),
            "failed spawns never reach the driver"
        );
        assert_eq!(h.failing_spawns(), 0);
        let s = spec("vm-ok");
        h.spawn(&s).unwrap();
        assert_eq!(h.domain_state(s.uuid).unwrap(), Some(PowerState::Running));
        h.stop(s.uuid).unwrap();
        assert_eq!(h.list_domains().unwrap()[0].state, PowerState::Shutoff);
    }

    #[test]
    fn delays_hold_actions_but_not_reads() {
        let fake = Arc::new(FakeHypervisor::default());
        let h = FaultyHypervisor::new(fake.clone(), 0)
            .with_delays(Duration::from_millis(30), Duration::from_millis(20));
        let s = spec("slow");
        let started = std::time::Instant::now();
        h.spawn(&s).unwrap();
        h.stop(s.uuid).unwrap();
        // Two actions, each held 30 + 20 ms: a lower bound, so a loaded machine cannot
        // make it fail.
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(h.domain_state(s.uuid).unwrap(), Some(PowerState::Shutoff));
        assert_eq!(fake.calls().len(), 2, "each action reached the driver once");
    }

    #[test]
    fn zero_is_a_transparent_wrapper() {
        let h = FaultyHypervisor::new(Arc::new(FakeHypervisor::default()), 0);
        h.spawn(&spec("a")).unwrap();
        assert_eq!(h.node_info().unwrap().hypervisor_type, "FAKE");
        assert!(h.live_migration_supported());
    }
}
