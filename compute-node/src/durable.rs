//! `DurableHypervisor`: for tests, a decorator that keeps a simulated host's domains in a
//! file so that they outlive the `berth-node` process (`--test-domains-file PATH`).
//!
//! On a real host the domains belong to libvirtd: when the agent crashes and restarts, they
//! are still there and the agent reports them again. libvirt's test driver and the fake
//! driver live inside the agent's process and forget everything when it ends, so an
//! end-to-end test of "kill the node mid-action, restart it" would otherwise only ever see
//! an empty host. This wrapper gives them libvirtd's memory:
//!
//! - after every action that reaches the driver, the file is rewritten (atomically: a
//!   temporary file, then a rename) with each domain's spec and power state as the driver
//!   reports them, and with one more driver call counted for that action and instance;
//! - when opened, it re-creates every domain of the file in the (empty) driver — spawn, then
//!   the action that leads to its power state — without counting those calls.
//!
//! The counts are what a test reads to check that an action reached the host exactly once.
//! The file is TOML:
//!
//! ```toml
//! [power]                       # instance uuid → power state
//! 6f1c1c8e-… = "SHUTOFF"
//!
//! [calls]                       # "<action> <uuid>" → calls that reached the driver
//! "spawn 6f1c1c8e-…" = 1
//! "stop 6f1c1c8e-…" = 1
//!
//! [specs.6f1c1c8e-…]            # what to spawn it from
//! name = "instance-6f1c1c8e-…"
//! vcpus = 1
//! …
//! ```
//!
//! Limits, as befits a test harness: snapshots are not kept; a CRASHED or NOSTATE domain
//! comes back RUNNING; a process killed between a driver call and the file's rewrite loses
//! that call (the rewrite follows the call at once, so the window is microseconds — tests
//! that need a wider "done but unanswered" window use `--result-delay-ms`, which waits after
//! the rewrite).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::NodeError;
use crate::hypervisor::{
    ActionKind, DomainStatus, Hypervisor, InstanceSpec, NodeInfo, PowerState, Result,
};

/// The file's contents.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// Instance uuid → power state name (`PowerState::as_str`).
    #[serde(default)]
    power: BTreeMap<String, String>,
    /// `"<action> <uuid>"` → driver calls, whatever their outcome.
    #[serde(default)]
    calls: BTreeMap<String, u64>,
    /// Instance uuid → the spec it was spawned (or last rebuilt) from.
    #[serde(default)]
    specs: BTreeMap<String, SavedSpec>,
}

/// An [`InstanceSpec`] without its uuid (the table's key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedSpec {
    name: String,
    vcpus: u32,
    memory_mb: u64,
    disk_gb: u64,
    image_id: String,
    image_name: String,
    flavor_name: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl SavedSpec {
    fn of(spec: &InstanceSpec) -> Self {
        Self {
            name: spec.name.clone(),
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            disk_gb: spec.disk_gb,
            image_id: spec.image_id.clone(),
            image_name: spec.image_name.clone(),
            flavor_name: spec.flavor_name.clone(),
            metadata: spec.metadata.clone(),
        }
    }

    fn to_spec(&self, uuid: Uuid) -> InstanceSpec {
        InstanceSpec {
            uuid,
            name: self.name.clone(),
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            image_id: self.image_id.clone(),
            image_name: self.image_name.clone(),
            flavor_name: self.flavor_name.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// Wraps a driver and keeps its domains in a file; see the module doc.
pub struct DurableHypervisor {
    inner: Arc<dyn Hypervisor>,
    path: PathBuf,
    /// What the file holds. A sync lock: held to update the map and rewrite the small file,
    /// never across a driver call, so concurrent actions on different domains still overlap
    /// in the driver.
    saved: Mutex<Saved>,
}

impl std::fmt::Debug for DurableHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableHypervisor")
            .field("path", &self.path)
            .field("domains", &self.saved.lock().power.len())
            .finish_non_exhaustive()
    }
}

fn bad_file(path: &Path, why: impl std::fmt::Display) -> NodeError {
    NodeError::Config(format!("test domains file {}: {why}", path.display()))
}

impl DurableHypervisor {
    /// Wraps `inner` (which must not know any of the file's domains yet) and re-creates in
    /// it every domain kept in `path`; a missing file is an empty host.
    ///
    /// # Errors
    /// `Io` when the file cannot be read; `Config` when it is malformed or a kept domain
    /// cannot be re-created (the error names the domain and why).
    pub fn open(inner: Arc<dyn Hypervisor>, path: &Path) -> std::result::Result<Self, NodeError> {
        let saved = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str::<Saved>(&text).map_err(|e| bad_file(path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(source) => {
                return Err(NodeError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        for (key, power) in &saved.power {
            let uuid = Uuid::parse_str(key)
                .map_err(|e| bad_file(path, format!("domain {key:?} is not a uuid: {e}")))?;
            let spec = saved
                .specs
                .get(key)
                .ok_or_else(|| bad_file(path, format!("domain {key} has no [specs.{key}]")))?;
            restore(&*inner, &spec.to_spec(uuid), power)
                .map_err(|e| bad_file(path, format!("cannot re-create domain {key}: {e}")))?;
        }
        tracing::info!(path = %path.display(), domains = saved.power.len(),
            "testing: domains restored from the test domains file");
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            saved: Mutex::new(saved),
        })
    }

    /// Runs one action on `uuid`, then records the call and the domain's state as the
    /// driver now reports it, and rewrites the file. `spec` is kept for spawn and rebuild.
    fn recorded<T>(
        &self,
        action: ActionKind,
        uuid: Uuid,
        spec: Option<&InstanceSpec>,
        call: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let out = call();
        let state = self.inner.domain_state(uuid);
        let key = uuid.to_string();
        let mut saved = self.saved.lock();
        *saved.calls.entry(format!("{action} {key}")).or_default() += 1;
        match state {
            Ok(Some(s)) => {
                saved.power.insert(key.clone(), s.as_str().to_string());
                if let Some(spec) = spec.filter(|_| out.is_ok()) {
                    saved.specs.insert(key, SavedSpec::of(spec));
                }
            }
            Ok(None) => {
                saved.power.remove(&key);
                saved.specs.remove(&key);
            }
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e,
                    "testing: cannot read the domain's state to keep it; the file keeps the old one");
            }
        }
        if let Err(e) = write(&self.path, &saved) {
            tracing::error!(path = %self.path.display(), error = %e,
                "testing: cannot rewrite the test domains file; a restart will not see this change");
        }
        out
    }
}

/// Spawns `spec` in `hv` and brings it to the power state named `power`.
fn restore(hv: &dyn Hypervisor, spec: &InstanceSpec, power: &str) -> Result<()> {
    hv.spawn(spec)?;
    let uuid = spec.uuid;
    match power {
        "RUNNING" => Ok(()),
        "SHUTOFF" => hv.stop(uuid),
        "PAUSED" => hv.pause(uuid),
        "SUSPENDED" => hv.suspend(uuid),
        other => {
            tracing::warn!(instance = %uuid, power = other,
                "testing: a kept domain in this state cannot be re-created as it was; it runs");
            Ok(())
        }
    }
}

/// Writes `saved` to `path` through a temporary file beside it, so a reader (or a process
/// killed meanwhile) never sees half a file.
fn write(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let text = toml::to_string(saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl Hypervisor for DurableHypervisor {
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
        self.recorded(ActionKind::Spawn, spec.uuid, Some(spec), || {
            self.inner.spawn(spec)
        })
    }

    fn stop(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Stop, uuid, None, || self.inner.stop(uuid))
    }

    fn start(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Start, uuid, None, || self.inner.start(uuid))
    }

    fn reboot(&self, uuid: Uuid, hard: bool) -> Result<()> {
        let kind = if hard {
            ActionKind::HardReboot
        } else {
            ActionKind::SoftReboot
        };
        self.recorded(kind, uuid, None, || self.inner.reboot(uuid, hard))
    }

    fn pause(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Pause, uuid, None, || self.inner.pause(uuid))
    }

    fn unpause(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Unpause, uuid, None, || self.inner.unpause(uuid))
    }

    fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Suspend, uuid, None, || self.inner.suspend(uuid))
    }

    fn resume(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Resume, uuid, None, || self.inner.resume(uuid))
    }

    fn snapshot(&self, uuid: Uuid, name: &str) -> Result<String> {
        self.recorded(ActionKind::Snapshot, uuid, None, || {
            self.inner.snapshot(uuid, name)
        })
    }

    fn rebuild(&self, spec: &InstanceSpec) -> Result<()> {
        self.recorded(ActionKind::Rebuild, spec.uuid, Some(spec), || {
            self.inner.rebuild(spec)
        })
    }

    fn delete(&self, uuid: Uuid) -> Result<()> {
        self.recorded(ActionKind::Delete, uuid, None, || self.inner.delete(uuid))
    }

    fn live_migration_supported(&self) -> bool {
        self.inner.live_migration_supported()
    }
}

#[cfg(test)]
mod tests {
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
            image_name: "cirros \"quoted\"".into(),
            flavor_name: "tiny".into(),
            metadata: [("role".to_string(), "db = primary".to_string())].into(),
        }
    }

    fn states(h: &dyn Hypervisor) -> BTreeMap<Uuid, PowerState> {
        h.list_domains()
            .unwrap()
            .into_iter()
            .map(|d| (d.uuid, d.state))
            .collect()
    }

    #[test]
    fn domains_outlive_the_wrapper_and_calls_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("domains.toml");
        let (a, b, c, gone) = (spec("a"), spec("b"), spec("c"), spec("gone"));
        let before = {
            let h = DurableHypervisor::open(Arc::new(FakeHypervisor::default()), &path).unwrap();
            for s in [&a, &b, &c, &gone] {
                h.spawn(s).unwrap();
            }
            h.stop(a.uuid).unwrap();
            h.stop(a.uuid).unwrap(); // a no-op, but a call
            h.pause(b.uuid).unwrap();
            h.suspend(c.uuid).unwrap();
            h.delete(gone.uuid).unwrap();
            assert_eq!(h.start(gone.uuid).unwrap_err().code(), "NOT_FOUND");
            states(&h)
        };
        assert_eq!(before.len(), 3);

        // A new process: a fresh driver, the same file.
        let fresh = Arc::new(FakeHypervisor::default());
        let h = DurableHypervisor::open(fresh.clone(), &path).unwrap();
        assert_eq!(states(&h), before);
        let kept = fresh.domain(a.uuid).expect("a re-created");
        assert_eq!(kept.spec, a, "the whole spec, metadata and quotes included");
        let text = std::fs::read_to_string(&path).unwrap();
        let saved: Saved = toml::from_str(&text).unwrap();
        let calls = |action: &str, s: &InstanceSpec| {
            saved.calls.get(&format!("{action} {}", s.uuid)).copied()
        };
        assert_eq!(calls("spawn", &a), Some(1), "re-creating is not a call");
        assert_eq!(calls("stop", &a), Some(2));
        assert_eq!(calls("delete", &gone), Some(1));
        assert_eq!(calls("start", &gone), Some(1), "failed calls count too");
        assert!(!saved.specs.contains_key(&gone.uuid.to_string()));
        // Later calls add to the kept counts.
        h.start(a.uuid).unwrap();
        let saved: Saved = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(saved.calls.get(&format!("start {}", a.uuid)), Some(&1));
        assert_eq!(saved.power[&a.uuid.to_string()], "RUNNING");
    }

    #[test]
    fn a_missing_file_is_an_empty_host_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.toml");
        let h = DurableHypervisor::open(Arc::new(FakeHypervisor::default()), &path).unwrap();
        assert!(h.list_domains().unwrap().is_empty());
        assert!(!path.exists(), "nothing is written until an action");

        std::fs::write(&path, "[power]\nnot-a-uuid = \"RUNNING\"\n").unwrap();
        let err = DurableHypervisor::open(Arc::new(FakeHypervisor::default()), &path).unwrap_err();
        assert!(err.to_string().contains("not a uuid"), "{err}");

        let u = Uuid::new_v4();
        std::fs::write(&path, format!("[power]\n{u} = \"RUNNING\"\n")).unwrap();
        let err = DurableHypervisor::open(Arc::new(FakeHypervisor::default()), &path).unwrap_err();
        assert!(err.to_string().contains("has no [specs."), "{err}");

        std::fs::write(&path, "power = 3\n").unwrap();
        let err = DurableHypervisor::open(Arc::new(FakeHypervisor::default()), &path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
