//! The engine's one error type. Every variant maps to exactly one gRPC status code in
//! `api::status` (a stable contract for clients), and every message names what was wrong.

use std::fmt;

/// What went wrong, as the engine sees it. A *verdict* that a host does not fit is not an
/// error; `NoValidHost` is the error a whole request gets when no host fits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A field of the request breaks a rule. `field` is the path (`inventories[VCPU].total`).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Path of the offending field.
        field: String,
        /// The rule it broke, in words.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind of object (`resource provider`, `consumer`, …).
        kind: &'static str,
        /// The id or name that was looked up.
        id: String,
    },
    /// An object with that id or name exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// Kind of object.
        kind: &'static str,
        /// The id or name that clashed.
        id: String,
    },
    /// The request is well formed but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Optimistic concurrency: the caller's generation is stale.
    #[error("{kind} {id} generation conflict: request has {given}, current is {current}")]
    GenerationConflict {
        /// `resource provider` or `consumer`.
        kind: &'static str,
        /// The object's uuid.
        id: String,
        /// The generation the caller sent (`none` for "new").
        given: String,
        /// The generation now stored.
        current: String,
    },
    /// No host passes the filters (or every claim attempt lost its race).
    #[error("{0}")]
    NoValidHost(NoValidHost),
    /// The change cannot be made durable (the data directory refuses writes).
    #[error("{0}")]
    Unavailable(String),
    /// The request would take a project over its quota; the message names each limit with
    /// its usage and the amount requested.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl EngineError {
    /// Shorthand for an `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
    /// Shorthand for a `NotFound`.
    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }
    /// Shorthand for an `AlreadyExists`.
    pub fn exists(kind: &'static str, id: impl fmt::Display) -> Self {
        Self::AlreadyExists {
            kind,
            id: id.to_string(),
        }
    }
    /// A stable, machine-readable code for the variant.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::GenerationConflict { .. } => "generation_conflict",
            Self::NoValidHost(_) => "no_valid_host",
            Self::Unavailable(_) => "unavailable",
            Self::QuotaExceeded(_) => "quota_exceeded",
        }
    }
}

/// Why no host could take a request: how many were considered and how many each filter
/// eliminated, in pipeline order (the first filter to reject a host gets it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NoValidHost {
    /// Hosts considered (every live provider).
    pub hosts: u32,
    /// `(reason, hosts eliminated)` in the order the filters ran; zero counts left out.
    pub rejections: Vec<(String, u32)>,
    /// Extra words, e.g. "3 claim conflicts" or "instance 2 of 3".
    pub detail: String,
}

impl fmt::Display for NoValidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no valid host among {}", self.hosts)?;
        let mut sep = ": ";
        for (reason, n) in &self.rejections {
            write!(f, "{sep}{reason} {n}")?;
            sep = ", ";
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Result alias for engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_valid_host_message_lists_counts_in_order() {
        let e = NoValidHost {
            hosts: 10,
            rejections: vec![
                ("AvailabilityZone".into(), 7),
                ("Capacity(MEMORY_MB)".into(), 3),
            ],
            detail: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "no valid host among 10: AvailabilityZone 7, Capacity(MEMORY_MB) 3"
        );
    }
}
