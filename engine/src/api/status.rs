//! The one place engine errors become gRPC statuses. The mapping is a contract:
//! InvalidArgument → INVALID_ARGUMENT, NotFound → NOT_FOUND, AlreadyExists →
//! ALREADY_EXISTS, FailedPrecondition → FAILED_PRECONDITION, GenerationConflict → ABORTED,
//! NoValidHost → RESOURCE_EXHAUSTED with a `berth.v1.NoValidHostDetail` as details,
//! QuotaExceeded → RESOURCE_EXHAUSTED without details, Unavailable → UNAVAILABLE.

use berth_proto::v1::{FilterRejection, NoValidHostDetail};
use prost::Message;
use tonic::{Code, Status};

use crate::error::EngineError;

/// Converts an engine error to a status whose message says what was wrong.
pub fn to_status(e: EngineError) -> Status {
    let msg = e.to_string();
    match e {
        EngineError::InvalidArgument { .. } => Status::invalid_argument(msg),
        EngineError::NotFound { .. } => Status::not_found(msg),
        EngineError::AlreadyExists { .. } => Status::already_exists(msg),
        EngineError::FailedPrecondition(_) => Status::failed_precondition(msg),
        EngineError::GenerationConflict { .. } => Status::aborted(msg),
        EngineError::Unavailable(_) => Status::unavailable(msg),
        EngineError::QuotaExceeded(_) => Status::resource_exhausted(msg),
        EngineError::NoValidHost(nvh) => {
            for (filter, n) in &nvh.rejections {
                metrics::counter!("berth_filter_rejections_total", "filter" => filter.clone())
                    .increment(u64::from(*n));
            }
            let detail = NoValidHostDetail {
                hosts_considered: nvh.hosts,
                rejections: nvh
                    .rejections
                    .iter()
                    .map(|(f, n)| FilterRejection {
                        filter: f.clone(),
                        hosts: *n,
                    })
                    .collect(),
                detail: nvh.detail.clone(),
            };
            Status::with_details(Code::ResourceExhausted, msg, detail.encode_to_vec().into())
        }
    }
}

/// Shorthand for an INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NoValidHost;

    #[test]
    fn codes_and_details() {
        assert_eq!(
            to_status(EngineError::invalid("a.b", "bad")).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            to_status(EngineError::not_found("consumer", "x")).code(),
            Code::NotFound
        );
        assert_eq!(
            to_status(EngineError::exists("flavor", "x")).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            to_status(EngineError::FailedPrecondition("no".into())).code(),
            Code::FailedPrecondition
        );
        let g = EngineError::GenerationConflict {
            kind: "consumer",
            id: "c".into(),
            given: "1".into(),
            current: "2".into(),
        };
        let s = to_status(g);
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("current is 2"));
        let s = to_status(EngineError::NoValidHost(NoValidHost {
            hosts: 3,
            rejections: vec![("Capacity(VCPU)".into(), 3)],
            detail: String::new(),
        }));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let d = NoValidHostDetail::decode(s.details()).unwrap();
        assert_eq!(d.hosts_considered, 3);
        assert_eq!(d.rejections[0].filter, "Capacity(VCPU)");
    }
}
