//! The placement loops' scheduler calls, over berth-wire's client (the default on plain
//! text: the harness spends 10–11 µs per flat-1k claim) or tonic's (TLS, or `--client
//! tonic`: 42–45 µs). A benchmark's harness shares the machine with the engine, so what
//! the client costs is taken from the engine (README "Performance").

use berth_proto::v1 as pb;
use berth_proto::v1::scheduler_client::SchedulerClient;

use crate::Conn;

/// Which client the placement loops use (`--client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// berth-wire's unary client (plain text only; an https engine gets tonic's).
    Wire,
    /// tonic's (hyper + h2).
    Tonic,
}

/// One client's handle on the Scheduler API.
#[derive(Debug, Clone)]
pub enum Sched {
    /// berth-wire.
    Wire(berth_wire::client::Client),
    /// tonic.
    Tonic(SchedulerClient<Conn>),
}

fn status(s: berth_wire::client::Status) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(s.code), s.message)
}

impl Sched {
    /// SelectDestinations.
    pub async fn select(
        &mut self,
        spec: pb::RequestSpec,
    ) -> Result<pb::SelectDestinationsResponse, tonic::Status> {
        let req = pb::SelectDestinationsRequest { spec: Some(spec) };
        match self {
            Sched::Wire(c) => c
                .call("/berth.v1.Scheduler/SelectDestinations", &req)
                .await
                .map_err(status),
            Sched::Tonic(c) => c
                .select_destinations(req)
                .await
                .map(tonic::Response::into_inner),
        }
    }

    /// Release.
    pub async fn release(&mut self, consumer_uuid: String) -> Result<(), tonic::Status> {
        let req = pb::ReleaseRequest { consumer_uuid };
        match self {
            Sched::Wire(c) => c
                .call::<_, pb::ReleaseResponse>("/berth.v1.Scheduler/Release", &req)
                .await
                .map(drop)
                .map_err(status),
            Sched::Tonic(c) => c.release(req).await.map(drop),
        }
    }
}

/// `connections` scheduler handles on `url`: berth-wire clients for an http:// engine
/// when `kind` is Wire, tonic's on `channels` otherwise.
pub async fn connect(
    kind: ClientKind,
    url: &str,
    token: Option<&str>,
    channels: &[Conn],
) -> Result<Vec<Sched>, String> {
    let plain = url.strip_prefix("http://");
    match (kind, plain) {
        (ClientKind::Wire, Some(rest)) => {
            let authority = rest.trim_end_matches('/');
            let addr = tokio::net::lookup_host(authority)
                .await
                .map_err(|e| format!("engine URL {url:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("engine URL {url:?}: no address"))?;
            let mut out = Vec::with_capacity(channels.len());
            for _ in 0..channels.len() {
                let mut c = berth_wire::client::Client::connect(addr)
                    .await
                    .map_err(|e| format!("cannot reach the engine at {url}: {e}"))?;
                if let Some(t) = token {
                    c = c.with_metadata("authorization", &format!("Bearer {t}"));
                }
                out.push(Sched::Wire(c));
            }
            Ok(out)
        }
        _ => Ok(channels
            .iter()
            .map(|ch| Sched::Tonic(SchedulerClient::new(ch.clone())))
            .collect()),
    }
}
