//! `berth.v1.Nodes`: the compute-node stream. The protocol (register first, heartbeats,
//! actions and their results) is the hub's business ([`crate::lifecycle::hub`]); this
//! adapter hands it the inbound stream and serves the outbound queue the hub fills.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::nodes_server::Nodes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::lifecycle::NodeHub;

/// The Nodes service.
pub struct NodesApi {
    hub: Arc<NodeHub>,
}

impl NodesApi {
    /// A service over `hub`.
    pub fn new(hub: Arc<NodeHub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Nodes for NodesApi {
    type ConnectStream = ReceiverStream<Result<pb::EngineMessage, Status>>;

    /// Waits for the stream's first message, which must be `Register`, and answers with
    /// the stream whose first message is `Registered`; a bad first message fails the call
    /// with INVALID_ARGUMENT naming the problem.
    async fn connect(
        &self,
        req: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = req.remote_addr();
        let outbound = self.hub.connect(req.into_inner()).await.inspect_err(|s| {
            tracing::info!(?peer, code = ?s.code(), "node stream refused: {}", s.message());
        })?;
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}
