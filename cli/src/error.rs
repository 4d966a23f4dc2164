//! Errors the CLI reports, how they are printed (`error: <CODE>: <message>`) and the exit
//! code each maps to.

use std::error::Error as _;
use std::fmt::Write as _;

use berth_proto::v1::NoValidHostDetail;
use prost::Message as _;
use tonic::{Code, Status};

/// Exit code for a bad command line (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for an error returned by the engine.
pub const EXIT_RPC: u8 = 1;
/// Exit code when the engine could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Everything that can make a command fail.
#[derive(Debug)]
pub enum CliError {
    /// The command line was well-formed for clap but still unusable (exit 2).
    Usage(String),
    /// The engine answered with an error status (exit 1).
    Rpc(Status),
    /// No connection to the engine (exit 3).
    Unreachable {
        /// The endpoint that was tried.
        url: String,
        /// What went wrong, from the transport's error chain.
        reason: String,
    },
    /// Writing the output failed (exit 1).
    Output(std::io::Error),
    /// Another error with advice for what to do next, printed after it as `hint: ...`
    /// (same exit code as the error).
    Hinted {
        /// The error itself.
        error: Box<CliError>,
        /// The advice, one line.
        hint: String,
    },
}

impl CliError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Rpc(_) | CliError::Output(_) => EXIT_RPC,
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Hinted { error, .. } => error.exit_code(),
        }
    }

    /// The text printed on stderr, ending in a newline: `error: <CODE>: <message>`, then
    /// for a "no valid host" the per-filter rejections, or a hint when unreachable.
    pub fn render(&self) -> String {
        match self {
            CliError::Usage(msg) => format!("error: {msg}\n"),
            CliError::Output(e) => format!("error: writing output: {e}\n"),
            CliError::Unreachable { url, reason } => format!(
                "error: UNAVAILABLE: cannot reach the engine at {url}: {reason}\n\
                 hint: is berth-engine running at {url}? (set --engine or BERTH_ENGINE)\n"
            ),
            CliError::Rpc(status) => render_status(status),
            CliError::Hinted { error, hint } => format!("{}hint: {hint}\n", error.render()),
        }
    }

    /// Classifies a failed call: transport failures (the status was made on this side from
    /// a connection error, not sent by the engine) count as unreachable. A call that ran
    /// out of `--timeout` is not one: the engine was reached and is slow to answer, so it is
    /// DEADLINE_EXCEEDED (exit 1).
    pub fn from_status(status: Status, url: &str) -> Self {
        if has_source::<tonic::TimeoutExpired>(status.source()) {
            return CliError::Rpc(Status::deadline_exceeded(
                "the engine did not answer within --timeout (raise it for slow builds and moves)",
            ));
        }
        let local_transport_failure = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ) && is_transport_error(status.source());
        if local_transport_failure {
            CliError::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&status),
            }
        } else {
            CliError::Rpc(status)
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

impl std::error::Error for CliError {}

/// True if the chain holds an error of type `E`.
fn has_source<E: std::error::Error + 'static>(
    mut err: Option<&(dyn std::error::Error + 'static)>,
) -> bool {
    while let Some(e) = err {
        if e.is::<E>() {
            return true;
        }
        err = e.source();
    }
    false
}

/// True if the chain holds a connection-level error (tonic transport or I/O).
fn is_transport_error(mut err: Option<&(dyn std::error::Error + 'static)>) -> bool {
    while let Some(e) = err {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        err = e.source();
    }
    false
}

/// The canonical upper-case name of a gRPC status code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `CODE: message`; an empty message is replaced by the code's description.
pub fn status_line(status: &Status) -> String {
    let code = code_name(status.code());
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    format!("{code}: {message}")
}

/// `error: CODE: message`, plus the NoValidHostDetail breakdown when the status carries
/// one. An empty message is replaced by the code's description.
pub fn render_status(status: &Status) -> String {
    let mut out = format!("error: {}\n", status_line(status));
    if status.code() == Code::ResourceExhausted
        && let Some(detail) = no_valid_host_detail(status)
    {
        let _ = writeln!(out, "  hosts considered: {}", detail.hosts_considered);
        let w = detail
            .rejections
            .iter()
            .map(|r| r.filter.chars().count())
            .max()
            .unwrap_or(0);
        for r in &detail.rejections {
            let _ = writeln!(out, "  rejected by {:<w$}  {}", r.filter, r.hosts);
        }
        if !detail.detail.is_empty() {
            let _ = writeln!(out, "  {}", detail.detail);
        }
    }
    out
}

/// Decodes the `NoValidHostDetail` a RESOURCE_EXHAUSTED status carries, if any.
pub fn no_valid_host_detail(status: &Status) -> Option<NoValidHostDetail> {
    if status.details().is_empty() {
        return None;
    }
    NoValidHostDetail::decode(status.details()).ok()
}

/// A status's message followed by its source chain, duplicates dropped:
/// `transport error: tcp connect error: Connection refused (os error 111)`.
pub fn error_chain(status: &Status) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    };
    push(status.message().to_owned());
    let mut src = status.source();
    while let Some(e) = src {
        push(e.to_string());
        src = e.source();
    }
    parts.join(": ")
}

/// Like [`error_chain`] for any error.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        src = e.source();
    }
    parts.join(": ")
}

impl From<Status> for CliError {
    fn from(s: Status) -> Self {
        CliError::Rpc(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::FilterRejection;

    #[test]
    fn status_renders_with_canonical_code_name() {
        let s = Status::not_found("resource provider 42 not found");
        assert_eq!(
            render_status(&s),
            "error: NOT_FOUND: resource provider 42 not found\n"
        );
        let s = Status::new(Code::Aborted, "");
        assert_eq!(
            render_status(&s),
            "error: ABORTED: The operation was aborted\n"
        );
        assert_eq!(CliError::Rpc(s).exit_code(), 1);
    }

    #[test]
    fn no_valid_host_lists_rejections() {
        let detail = NoValidHostDetail {
            hosts_considered: 10,
            rejections: vec![
                FilterRejection {
                    filter: "Capacity(MEMORY_MB)".into(),
                    hosts: 7,
                },
                FilterRejection {
                    filter: "AvailabilityZoneFilter".into(),
                    hosts: 3,
                },
            ],
            detail: "instance 2 of 3".into(),
        };
        let s = Status::with_details(
            Code::ResourceExhausted,
            "no valid host among 10: 7 Capacity(MEMORY_MB), 3 AvailabilityZoneFilter",
            detail.encode_to_vec().into(),
        );
        assert_eq!(
            render_status(&s),
            "error: RESOURCE_EXHAUSTED: no valid host among 10: 7 Capacity(MEMORY_MB), 3 AvailabilityZoneFilter\n\
             \x20 hosts considered: 10\n\
             \x20 rejected by Capacity(MEMORY_MB)     7\n\
             \x20 rejected by AvailabilityZoneFilter  3\n\
             \x20 instance 2 of 3\n"
        );
    }

    #[test]
    fn garbage_details_are_ignored() {
        let s = Status::with_details(Code::ResourceExhausted, "nope", vec![0xff, 0xff].into());
        assert_eq!(render_status(&s), "error: RESOURCE_EXHAUSTED: nope\n");
    }

    #[test]
    fn server_statuses_are_rpc_errors_even_if_unavailable() {
        // A status sent by the engine has no local source: it is the engine talking.
        let e = CliError::from_status(Status::unavailable("draining"), "http://x:1");
        assert_eq!(e.exit_code(), EXIT_RPC);
    }

    #[test]
    fn locally_made_transport_statuses_are_unreachable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = Status::from_error(Box::new(io));
        assert!(s.source().is_some());
        let e = CliError::from_status(s, "http://x:1");
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let text = e.render();
        assert!(text.starts_with("error: UNAVAILABLE: cannot reach the engine at http://x:1: "));
        assert!(text.contains("hint: is berth-engine running at http://x:1?"));
    }

    /// Stands in for tonic's transport error, which cannot be built outside tonic.
    #[derive(Debug)]
    struct Wrapped(tonic::TimeoutExpired);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_call_out_of_time_is_deadline_exceeded_not_unreachable() {
        let s = Status::from_error(Box::new(Wrapped(tonic::TimeoutExpired(()))));
        let e = CliError::from_status(s, "http://x:1");
        assert_eq!(e.exit_code(), EXIT_RPC);
        assert_eq!(
            e.render(),
            "error: DEADLINE_EXCEEDED: the engine did not answer within --timeout \
             (raise it for slow builds and moves)\n"
        );
    }

    #[test]
    fn hints_follow_the_error_and_keep_its_exit_code() {
        let e = CliError::Hinted {
            error: Box::new(CliError::Rpc(Status::deadline_exceeded("late"))),
            hint: "retry with --request-id r".into(),
        };
        assert_eq!(e.exit_code(), EXIT_RPC);
        assert_eq!(
            e.render(),
            "error: DEADLINE_EXCEEDED: late\nhint: retry with --request-id r\n"
        );
        assert_eq!(
            status_line(&Status::new(Code::NotFound, "")),
            "NOT_FOUND: Some requested entity was not found"
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = CliError::Usage("--max-per-host needs --policy anti-affinity".into());
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.render(),
            "error: --max-per-host needs --policy anti-affinity\n"
        );
    }
}
