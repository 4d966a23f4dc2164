//! `FaultyHypervisor`: a decorator that injects failures into any driver, for end-to-end tests
//! that run real `berth-node` processes (`--fail-spawns N`).
//!
//! [`crate::fake::FakeHypervisor`] has richer fault injection of its own, but only for itself;
//! this wrapper lets a test make the libvirt driver fail too. A failed spawn follows the
//! [`Hypervisor`] contract: it returns `Driver` and leaves nothing behind (the inner driver is
//! never called).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use uuid::Uuid;

use crate::hypervisor::{
    DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState, Result,
};

/// Wraps a driver; the next `n` spawns fail with a driver error, then spawns reach the
/// driver again. Every other method is passed through unchanged.
pub struct FaultyHypervisor {
    inner: Arc<dyn Hypervisor>,
    /// Spawns still to fail. An atomic, not a lock: one counter, decremented by concurrent
    /// spawns of different instances.
    failing_spawns: AtomicU32,
}

impl FaultyHypervisor {
    /// Wraps `inner` so that its next `fail_spawns` spawns fail.
    pub fn new(inner: Arc<dyn Hypervisor>, fail_spawns: u32) -> Self {
        Self {
            inner,
            failing_spawns: AtomicU32::new(fail_spawns),
        }
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
}

impl std::fmt::Debug for FaultyHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyHypervisor")
            .field("failing_spawns", &self.failing_spawns())
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
        if self.take_failure() {
            return Err(HypervisorError::Driver(
                "injected fault: --fail-spawns".into(),
            ));
        }
        self.inner.spawn(spec)
    }

    fn stop(&self, uuid: Uuid) -> Result<()> {
        self.inner.stop(uuid)
    }

    fn start(&self, uuid: Uuid) -> Result<()> {
        self.inner.start(uuid)
    }

    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()> {
        self.inner.reboot(uuid, hard)
    }

    fn pause(&self, uuid: Uuid) -> Result<()> {
        self.inner.pause(uuid)
    }

    fn unpause(&self, uuid: Uuid) -> Result<()> {
        self.inner.unpause(uuid)
    }

    fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.inner.suspend(uuid)
    }

    fn resume(&self, uuid: Uuid) -> Result<()> {
        self.inner.resume(uuid)
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String> {
        self.inner.snapshot(uuid, name)
    }

    fn rebuild(&self, spec: &InstanceSpec) -> Result<()> {
        self.inner.rebuild(spec)
    }

    fn delete(&self, uuid: Uuid) -> Result<()> {
        self.inner.delete(uuid)
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
    fn zero_is_a_transparent_wrapper() {
        let h = FaultyHypervisor::new(Arc::new(FakeHypervisor::default()), 0);
        h.spawn(&spec("a")).unwrap();
        assert_eq!(h.node_info().unwrap().hypervisor_type, "FAKE");
        assert!(h.live_migration_supported());
    }
}
