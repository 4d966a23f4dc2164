//! `berth-node`: the per-host daemon that reports a host's capacity to the Berth engine and
//! runs its instances through libvirt.
//!
//! Module map (where each thing lives):
//! - [`hypervisor`]: the `Hypervisor` trait, its state machine and error type — the contract
//!   every driver honours. Start here.
//! - [`fake`]: `FakeHypervisor`, the in-memory reference implementation with fault injection
//!   (failing spawns, delays, lost domains), for tests and the load harness.
//! - [`libvirt`]: `LibvirtHypervisor`, the contract over libvirt (`virt` crate); also what the
//!   libvirt test driver does and does not support.
//! - [`domain_xml`]: libvirt domain XML from an `InstanceSpec`, with validation and escaping.
//! - [`testnode`]: node files for libvirt's test driver, simulating a host of any size.
//! - [`inventory`]: Placement inventory (totals, reserved, ratios) and the `Registration`
//!   the node sends.
//! - [`faulty`]: `FaultyHypervisor`, a decorator that makes any driver fail spawns and hold
//!   actions (`--fail-spawns`, `--action-delay-ms`, `--result-delay-ms`, for end-to-end tests
//!   over libvirt).
//! - [`durable`]: `DurableHypervisor`, a decorator that keeps a simulated host's domains in a
//!   file across restarts and counts driver calls (`--test-domains-file`, for tests).
//! - [`agent`]: the connection to the engine — `Register`, heartbeats, actions and reconnects
//!   over the Nodes stream; [`agent::run`] is what the daemon (and the load harness) runs.
//! - [`config`]: flags, environment and TOML settings, resolved into a `NodeConfig`.
//! - [`host`]: from `NodeConfig` to an open hypervisor and the `--once` report.
//! - [`error`]: `NodeError`, the daemon's fatal errors.

pub mod agent;
pub mod config;
pub mod domain_xml;
pub mod durable;
pub mod error;
pub mod fake;
pub mod faulty;
pub mod host;
pub mod hypervisor;
pub mod inventory;
pub mod libvirt;
pub mod testnode;

pub use error::NodeError;
pub use hypervisor::{
    ActionKind, DomainStatus, Hypervisor, HypervisorError, InstanceSpec, NodeInfo, PowerState,
};
