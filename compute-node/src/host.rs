//! From configuration to a described host: opens the hypervisor (libvirt, writing a simulated
//! node file first when asked, or the fake driver; wrapped for tests in the domains file of
//! `--test-domains-file` and the fault injector of `--fail-spawns` and the delays), sizes
//! instance disk, and builds the [`Registration`] the agent will send.
//! `berth-node --once` prints [`describe`]'s report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::AgentConfig;
use crate::config::{DEFAULT_TEST_NODE, DiskSource, HypervisorKind, NodeConfig};
use crate::durable::DurableHypervisor;
use crate::error::NodeError;
use crate::fake::FakeHypervisor;
use crate::faulty::FaultyHypervisor;
use crate::hypervisor::{Hypervisor, NodeInfo};
use crate::inventory::Registration;
use crate::libvirt::{LibvirtHypervisor, LibvirtOptions};

const GIB: u64 = 1024 * 1024 * 1024;

/// Size in GiB (rounded down) of the filesystem holding `dir`. A directory that does not exist
/// yet is measured at its nearest existing parent: that is where it will be created.
///
/// # Errors
/// `Io` when no ancestor can be measured.
pub fn filesystem_gb(dir: &Path) -> Result<u64, NodeError> {
    let mut probe: PathBuf = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => probe = parent.to_path_buf(),
            _ => {
                probe = PathBuf::from(".");
                break;
            }
        }
    }
    if probe != dir {
        tracing::warn!(
            dir = %dir.display(),
            measured = %probe.display(),
            "instances directory does not exist; sizing DISK_GB from its parent's filesystem"
        );
    }
    let st = rustix::fs::statvfs(&probe).map_err(|e| NodeError::Io {
        path: probe.clone(),
        source: e.into(),
    })?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize) / GIB)
}

/// Opens libvirt as `cfg` says: the configured URI, or a freshly written test-node file.
///
/// # Errors
/// `Io` when the node file cannot be written or the disk cannot be measured; `Hypervisor`
/// when libvirt cannot be opened.
pub fn open_hypervisor(cfg: &NodeConfig) -> Result<LibvirtHypervisor, NodeError> {
    let uri = match &cfg.test_node {
        Some(t) => t.node.write(&t.file).map_err(|source| NodeError::Io {
            path: t.file.clone(),
            source,
        })?,
        None => cfg.libvirt_uri.clone(),
    };
    let disk_gb = match &cfg.disk {
        DiskSource::Fixed(gb) => *gb,
        DiskSource::Filesystem(dir) => filesystem_gb(dir)?,
    };
    tracing::info!(%uri, disk_gb, "opening libvirt");
    Ok(LibvirtHypervisor::connect(LibvirtOptions {
        uri,
        disk_gb,
        shutdown_timeout: cfg.shutdown_timeout,
    })?)
}

/// The fake driver sized as `cfg` says: the test-node CPUs, memory and arch, and the
/// configured disk (`--disk-gb`, else the test node's).
pub fn fake_hypervisor(cfg: &NodeConfig) -> FakeHypervisor {
    let (default_vcpus, default_memory_mb, default_disk_gb) = DEFAULT_TEST_NODE;
    let (vcpus, memory_mb, arch) = match &cfg.test_node {
        Some(t) => (t.node.vcpus, t.node.memory_mb, t.node.arch.clone()),
        None => (default_vcpus, default_memory_mb, "x86_64".to_string()),
    };
    let disk_gb = match &cfg.disk {
        DiskSource::Fixed(gb) => *gb,
        DiskSource::Filesystem(_) => default_disk_gb,
    };
    FakeHypervisor::new(NodeInfo {
        vcpus,
        memory_mb,
        disk_gb,
        arch,
        hypervisor_type: "FAKE".into(),
        hypervisor_version: 1_000_000,
    })
}

/// Opens the configured driver (`hypervisor = "libvirt" | "fake"`); for tests, wrapped in a
/// [`DurableHypervisor`] when `test_domains_file` is set, then in a [`FaultyHypervisor`] when
/// `fail_spawns` or a delay is set. The fault injector is the outer layer, so a result delay
/// waits after the domains file was rewritten: a node killed in that window comes back with
/// the action done.
///
/// # Errors
/// As [`open_hypervisor`] for libvirt (the fake driver always opens); as
/// [`DurableHypervisor::open`] for the domains file.
pub fn open(cfg: &NodeConfig) -> Result<Arc<dyn Hypervisor>, NodeError> {
    let mut driver: Arc<dyn Hypervisor> = match cfg.hypervisor {
        HypervisorKind::Libvirt => Arc::new(open_hypervisor(cfg)?),
        HypervisorKind::Fake => {
            tracing::info!("using the fake hypervisor: nothing really runs");
            Arc::new(fake_hypervisor(cfg))
        }
    };
    if let Some(path) = &cfg.test_domains_file {
        tracing::warn!(path = %path.display(), "testing: domains are kept in a file across restarts");
        driver = Arc::new(DurableHypervisor::open(driver, path)?);
    }
    if cfg.fail_spawns == 0 && cfg.action_delay.is_zero() && cfg.result_delay.is_zero() {
        return Ok(driver);
    }
    tracing::warn!(
        fail_spawns = cfg.fail_spawns,
        action_delay_ms = cfg.action_delay.as_millis(),
        result_delay_ms = cfg.result_delay.as_millis(),
        "testing: injected spawn failures and action delays"
    );
    Ok(Arc::new(
        FaultyHypervisor::new(driver, cfg.fail_spawns)
            .with_delays(cfg.action_delay, cfg.result_delay),
    ))
}

/// What this node will register: `hypervisor`'s totals under `cfg`'s policy.
///
/// # Errors
/// `Hypervisor` when node info cannot be read; `Config` when the policy does not fit the host
/// (reserved beyond total).
pub fn registration(
    cfg: &NodeConfig,
    hypervisor: &dyn Hypervisor,
) -> Result<Registration, NodeError> {
    AgentConfig::from_node_config(cfg).registration(hypervisor)
}

/// The `--once` report: the registration, then every domain the hypervisor has.
///
/// # Errors
/// As [`registration`], and `Hypervisor` when domains cannot be listed.
pub fn describe(cfg: &NodeConfig, hypervisor: &dyn Hypervisor) -> Result<String, NodeError> {
    let mut out = registration(cfg, hypervisor)?.to_string();
    let mut domains = hypervisor.list_domains()?;
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    // Writing to a String cannot fail.
    let _ = writeln!(out, "domains: {}", domains.len());
    for d in &domains {
        let _ = writeln!(out, "  {} {:<9} {}", d.uuid, d.state.as_str(), d.name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::fake::FakeHypervisor;
    use crate::hypervisor::InstanceSpec;

    #[test]
    fn filesystem_size_is_measured_at_the_nearest_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let here = filesystem_gb(dir.path()).unwrap();
        let deeper = filesystem_gb(&dir.path().join("not/yet/created")).unwrap();
        assert_eq!(here, deeper);
        // Same filesystem as the temp dir's parent, so the same size.
        assert_eq!(here, filesystem_gb(dir.path().parent().unwrap()).unwrap());
    }

    #[test]
    fn describe_reports_inventory_and_domains_of_any_hypervisor() {
        let cfg = NodeConfig::resolve(
            Settings {
                traits: Some(vec!["CUSTOM_GPU".into()]),
                ..Settings::default()
            },
            || "fake-host".into(),
        )
        .unwrap();
        let fake = FakeHypervisor::default();
        let spec = InstanceSpec {
            uuid: uuid::Uuid::new_v4(),
            name: "vm-1".into(),
            vcpus: 1,
            memory_mb: 256,
            disk_gb: 1,
            image_id: "i".into(),
            image_name: "i".into(),
            flavor_name: "f".into(),
            metadata: Default::default(),
        };
        fake.spawn(&spec).unwrap();
        fake.pause(spec.uuid).unwrap();
        let text = describe(&cfg, &fake).unwrap();
        assert!(text.starts_with("node fake-host\n"), "{text}");
        assert!(text.contains("CUSTOM_GPU"));
        // FakeHypervisor::default() is 16 vCPUs × 4.0, 64 GiB − 512 MiB, 1000 GB.
        assert!(text.contains(" 64\n"), "{text}");
        assert!(text.contains(" 65024\n"), "{text}");
        assert!(text.contains("domains: 1\n"));
        assert!(
            text.contains(&format!("{} PAUSED    vm-1", spec.uuid)),
            "{text}"
        );
    }

    #[test]
    fn open_builds_the_configured_driver_and_fault_injector() {
        let cfg = NodeConfig::resolve(
            Settings {
                hypervisor: Some(HypervisorKind::Fake),
                test_node_vcpus: Some(3),
                fail_spawns: Some(1),
                ..Settings::default()
            },
            || "h".into(),
        )
        .unwrap();
        let h = open(&cfg).unwrap();
        let node = h.node_info().unwrap();
        assert_eq!((node.vcpus, node.hypervisor_type.as_str()), (3, "FAKE"));
        assert_eq!(node.disk_gb, DEFAULT_TEST_NODE.2);
        let spec = InstanceSpec {
            uuid: uuid::Uuid::new_v4(),
            name: "vm".into(),
            vcpus: 1,
            memory_mb: 64,
            disk_gb: 1,
            image_id: "i".into(),
            image_name: "i".into(),
            flavor_name: "f".into(),
            metadata: Default::default(),
        };
        assert_eq!(h.spawn(&spec).unwrap_err().code(), "DRIVER");
        h.spawn(&spec).unwrap();
        assert!(describe(&cfg, &*h).unwrap().contains("domains: 1"));
    }

    #[test]
    fn a_policy_that_does_not_fit_the_host_is_an_error() {
        let cfg = NodeConfig::resolve(
            Settings {
                reserved_vcpus: Some(17),
                ..Settings::default()
            },
            || "h".into(),
        )
        .unwrap();
        let err = registration(&cfg, &FakeHypervisor::default()).unwrap_err();
        assert!(err.to_string().contains("reserved_vcpus"), "{err}");
    }
}
