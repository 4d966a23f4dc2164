//! `berth.v1.Nodes`: the compute-node stream. The protocol (register first, heartbeats,
//! actions and their results) is the hub's business ([`crate::lifecycle::hub`]); this
//! adapter hands it the inbound stream and serves the outbound queue the hub fills.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::nodes_server::Nodes;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, Proof};
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
    /// with INVALID_ARGUMENT naming the problem. A node (by certificate or `node` token)
    /// may register only under its own name: another is PERMISSION_DENIED. Since the hub
    /// sends a host's actions only to the stream that registered as that host, actions for
    /// host A never reach a stream authenticated as host B.
    async fn connect(
        &self,
        req: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = req.remote_addr();
        let caller = req.extensions().get::<Caller>().cloned();
        let mut inbound = req.into_inner();
        let first = inbound.next().await;
        if let (
            Some(caller),
            Some(Ok(pb::NodeMessage {
                body: Some(pb::node_message::Body::Register(r)),
            })),
        ) = (&caller, &first)
        {
            check_name(caller, &r.name).inspect_err(|s| {
                tracing::warn!(?peer, "node stream refused: {}", s.message());
            })?;
        }
        // The hub reads the first message itself: hand it back in front of the rest.
        let inbound = tokio_stream::iter(first).chain(inbound);
        let outbound = self.hub.connect(inbound).await.inspect_err(|s| {
            tracing::info!(?peer, code = ?s.code(), "node stream refused: {}", s.message());
        })?;
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}

/// Whether `caller` may register as `name`: admins as any node, a node only as itself.
fn check_name(caller: &Caller, name: &str) -> Result<(), Status> {
    match caller.node_name() {
        Some(own) if own != name => {
            let by = match caller.proof {
                Proof::Certificate => "certificate",
                _ => "token",
            };
            Err(Status::permission_denied(format!(
                "this node's {by} is for node {own:?}; it may not register as {name:?}"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_node_registers_only_as_itself() {
        let node = Caller::node_certificate("a".into());
        assert!(check_name(&node, "a").is_ok());
        let e = check_name(&node, "b").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("certificate") && e.message().contains("\"b\""));
        let admin = Caller {
            roles: vec![Role::Admin],
            ..Caller::node_certificate("ops".into())
        };
        assert!(check_name(&admin, "anything").is_ok());
    }
}
