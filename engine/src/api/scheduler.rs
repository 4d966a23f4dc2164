//! `berth.v1.Scheduler`: SelectDestinations (claims), Release, moves and Explain.

use std::sync::Arc;
use std::time::Instant;

use berth_proto::v1 as pb;
use berth_proto::v1::scheduler_server::Scheduler;
use tonic::{Request, Response, Status};

use super::convert::{request_spec, selection_pb, uuid};
use super::scope;
use super::status::{invalid, to_status};
use crate::Engine;
use crate::auth::Scope;

/// Hosts `Explain` ranks at most.
const EXPLAIN_LIMIT: usize = 50;

/// The Scheduler service.
pub struct SchedulerApi {
    pub(crate) engine: Arc<Engine>,
    /// `berth_decision_seconds{op}` for select, move and explain, registered once (with the
    /// recorder installed when the service is built) rather than looked up per call.
    decision_seconds: [metrics::Histogram; 3],
}

impl SchedulerApi {
    /// The service over `engine`, as [`serve`](super::serve) mounts it; fuzzers and
    /// in-process tests call its handlers directly.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            decision_seconds: [SELECT, MOVE, EXPLAIN]
                .map(|op| metrics::histogram!("berth_decision_seconds", "op" => OPS[op])),
        }
    }

    fn observe(&self, start: Instant, op: usize) {
        self.decision_seconds[op].record(start.elapsed().as_secs_f64());
    }
}

/// The `op` labels of `berth_decision_seconds`, indexed by [`SELECT`], [`MOVE`], [`EXPLAIN`].
const OPS: [&str; 3] = ["select", "move", "explain"];
const SELECT: usize = 0;
const MOVE: usize = 1;
const EXPLAIN: usize = 2;

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Scheduler for SchedulerApi {
    async fn select_destinations(
        &self,
        req: Request<pb::SelectDestinationsRequest>,
    ) -> R<pb::SelectDestinationsResponse> {
        scope::spec(&self.engine, Scope::of(&req), req.get_ref().spec.as_ref())?;
        let spec = request_spec(req.into_inner().spec)?;
        let start = Instant::now();
        let result = self.engine.select_destinations(&spec);
        self.observe(start, SELECT);
        match result {
            Ok(sels) => {
                for s in &sels {
                    tracing::debug!(consumer = %s.consumer, host = %s.host.name, weight = s.weight, "claimed");
                }
                Ok(Response::new(pb::SelectDestinationsResponse {
                    selections: sels.into_iter().map(selection_pb).collect(),
                }))
            }
            Err(e) => {
                tracing::info!(error = %e, "no valid host");
                Err(to_status(e))
            }
        }
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> R<pb::ReleaseResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        scope::consumer(&self.engine, Scope::of(&req), &c)?;
        self.engine.release(&c).map_err(to_status)?;
        tracing::debug!(consumer = %c, "released");
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn move_claim(&self, req: Request<pb::MoveClaimRequest>) -> R<pb::MoveClaimResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        scope::consumer(&self.engine, Scope::of(&req), &c)?;
        scope::spec(&self.engine, Scope::of(&req), req.get_ref().spec.as_ref())?;
        let r = req.into_inner();
        // The contract: a move is for the one consumer named.
        if let Some(s) = &r.spec {
            if s.num_instances > 1 {
                return Err(invalid(
                    "spec.num_instances",
                    format!(
                        "is {}; a move places one instance (0 or 1)",
                        s.num_instances
                    ),
                ));
            }
            if s.instance_uuids
                .iter()
                .any(|u| uuid("spec.instance_uuids", u).ok() != Some(c))
                || s.instance_uuids.len() > 1
            {
                return Err(invalid(
                    "spec.instance_uuids",
                    "must be empty or just consumer_uuid",
                ));
            }
        }
        let spec = request_spec(r.spec)?;
        let start = Instant::now();
        let result = self.engine.move_claim(&c, &spec, r.allow_same_host);
        self.observe(start, MOVE);
        let sel = result.map_err(to_status)?;
        tracing::info!(consumer = %c, host = %sel.host.name, "move claimed");
        Ok(Response::new(pb::MoveClaimResponse {
            selection: Some(selection_pb(sel)),
        }))
    }

    async fn confirm_move(
        &self,
        req: Request<pb::ConfirmMoveRequest>,
    ) -> R<pb::ConfirmMoveResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        scope::consumer(&self.engine, Scope::of(&req), &c)?;
        self.engine.confirm_move(&c).map_err(to_status)?;
        tracing::info!(consumer = %c, "move confirmed");
        Ok(Response::new(pb::ConfirmMoveResponse {}))
    }

    async fn revert_move(&self, req: Request<pb::RevertMoveRequest>) -> R<pb::RevertMoveResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        scope::consumer(&self.engine, Scope::of(&req), &c)?;
        self.engine.revert_move(&c).map_err(to_status)?;
        tracing::info!(consumer = %c, "move reverted");
        Ok(Response::new(pb::RevertMoveResponse {}))
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> R<pb::ExplainResponse> {
        let spec = request_spec(req.into_inner().spec)?;
        let start = Instant::now();
        let e = self
            .engine
            .explain(&spec, EXPLAIN_LIMIT)
            .map_err(to_status)?;
        self.observe(start, EXPLAIN);
        Ok(Response::new(pb::ExplainResponse {
            hosts_considered: e.hosts,
            summary: e.summary(),
            rejections: e
                .rejections
                .iter()
                .map(|(f, n)| pb::FilterRejection {
                    filter: f.clone(),
                    hosts: *n,
                })
                .collect(),
            ranked_hosts: e
                .ranked
                .into_iter()
                .map(|h| pb::RankedHost {
                    host_uuid: h.host.uuid.to_string(),
                    host_name: h.host.name,
                    total_weight: h.weight,
                    contributions: h
                        .contributions
                        .into_iter()
                        .map(|c| pb::WeigherContribution {
                            weigher: c.weigher.to_string(),
                            raw: c.raw,
                            normalized: c.normalized,
                            weighted: c.weighted,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}
