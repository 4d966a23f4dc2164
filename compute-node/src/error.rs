//! `NodeError`: what can stop the daemon from starting or reporting (configuration, I/O,
//! the hypervisor). Hypervisor action failures are [`HypervisorError`]s and stay separate:
//! they are reported to the engine, not fatal.

use std::path::PathBuf;

use crate::hypervisor::HypervisorError;

/// A fatal daemon error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is missing, malformed or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The hypervisor could not be reached or described.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
}
