//! The engine's network face: tonic services for `berth.v1.Placement`, `Scheduler` and
//! `Catalog`, plus `grpc.health.v1` and server reflection (v1 and v1alpha). The services
//! only convert and call the engine; errors become statuses in [`status`], in one place.

pub mod catalog;
pub mod convert;
pub mod layer;
pub mod nodes;
pub mod paging;
pub mod placement;
pub mod scheduler;
pub mod scope;
pub mod servers;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::catalog_server::CatalogServer;
use berth_proto::v1::nodes_server::NodesServer;
use berth_proto::v1::placement_server::PlacementServer;
use berth_proto::v1::scheduler_server::SchedulerServer;
use berth_proto::v1::servers_server::ServersServer;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::lifecycle::{ComputeConfig, Conductor, NodeHub};
use crate::{Engine, EngineConfig};

/// The server's own settings (`[server]` in `berth.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` listen address; empty disables the exporter.
    pub metrics_listen: String,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Log filter (`info`, `berth_engine=debug`, …), as for `RUST_LOG`.
    pub log: String,
    /// How long shutdown waits for in-flight calls, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Where the token signing key (`token.key`) and an admin token (`admin.token`), both
    /// mode 0600, are kept. Not a `berth.toml` key: the binary sets it to `[store]
    /// data_dir`, so one directory holds the state and the credentials.
    #[serde(skip)]
    pub data_dir: std::path::PathBuf,
    /// No authentication and no TLS; refused on a non-loopback address.
    pub insecure: bool,
    /// TLS certificate of the listener (PEM); empty serves plain text (loopback only).
    pub tls_cert: String,
    /// TLS key of the listener (PEM).
    pub tls_key: String,
    /// CA of node certificates (PEM): when set, compute nodes must present a certificate
    /// it signed, and may register only under the certificate's name.
    pub tls_client_ca: String,
    /// Threads serving gRPC, each a single-threaded runtime owning a share of the
    /// connections (handed out in turn); 0 = one per core.
    pub threads: usize,
    /// The HTTP/2 implementation serving gRPC: `berth` (berth-wire, one
    /// task per connection; a Health/Check costs the engine 12 µs of CPU against tonic's
    /// 17.6, flat-1k 52 against 66 µs per claim) or `tonic` (hyper + h2), TLS included.
    pub transport: Transport,
}

/// See [`ServerConfig::transport`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// berth-wire.
    #[default]
    Berth,
    /// tonic's server (hyper + h2).
    Tonic,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            max_message_bytes: 4 * 1024 * 1024,
            log: "info".into(),
            shutdown_grace_seconds: 30,
            data_dir: "./berth-data".into(),
            insecure: false,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            threads: 0,
            transport: Transport::Berth,
        }
    }
}

/// The whole `berth.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BerthConfig {
    /// Server settings.
    pub server: ServerConfig,
    /// Engine and scheduler settings.
    pub engine: EngineConfig,
    /// Compute nodes and the instance lifecycle.
    pub compute: crate::lifecycle::ComputeConfig,
    /// Durability: the data directory and snapshots.
    pub store: crate::store::StoreConfig,
}

impl ServerConfig {
    /// [`ServerConfig::threads`] resolved: 0 becomes the number of cores.
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The security settings among these.
    pub fn security(&self) -> crate::auth::SecuritySettings<'_> {
        crate::auth::SecuritySettings {
            data_dir: &self.data_dir,
            insecure: self.insecure,
            tls_cert: &self.tls_cert,
            tls_key: &self.tls_key,
            tls_client_ca: &self.tls_client_ca,
        }
    }
}

impl BerthConfig {
    /// Parses `berth.toml` text; the error names the key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Installs the Prometheus exporter on `addr` (serving `/metrics`). Call once per process.
pub fn install_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.1, 1.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Publishes the engine's gauges (hosts by state, capacity and usage per class, counters)
/// every `period` until the process ends.
pub fn spawn_gauges(engine: Arc<Engine>, period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let s = engine.cloud_summary();
            metrics::gauge!("berth_hosts", "state" => "up").set(s.hosts_up as f64);
            metrics::gauge!("berth_hosts", "state" => "down").set(s.hosts_down as f64);
            metrics::gauge!("berth_hosts", "state" => "disabled").set(s.hosts_disabled as f64);
            metrics::gauge!("berth_consumers").set(s.consumers as f64);
            for (class, cap, used) in &s.classes {
                metrics::gauge!("berth_capacity", "class" => class.clone()).set(*cap as f64);
                metrics::gauge!("berth_usage", "class" => class.clone()).set(*used as f64);
            }
            let st = &engine.stats;
            use std::sync::atomic::Ordering::Relaxed;
            metrics::counter!("berth_claims_total").absolute(st.claims.load(Relaxed));
            metrics::counter!("berth_releases_total").absolute(st.releases.load(Relaxed));
            metrics::counter!("berth_claim_conflicts_total").absolute(st.conflicts.load(Relaxed));
            metrics::counter!("berth_no_valid_host_total").absolute(st.no_valid_host.load(Relaxed));
        }
    });
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then stops accepting,
/// finishes in-flight calls and returns. Compute nodes connect to the same listener
/// (`berth.v1.Nodes`); `compute` sets their liveness and action timeouts.
pub async fn serve(
    engine: Arc<Engine>,
    config: &ServerConfig,
    compute: &ComputeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_restored(engine, config, compute, listener, shutdown, None).await
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything one serving thread needs to build its own router (all cheap clones of
/// shared state: every thread serves the same engine).
#[derive(Clone)]
struct Services {
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    placement: PlacementServer<placement::PlacementApi>,
    scheduler: SchedulerServer<scheduler::SchedulerApi>,
    catalog: CatalogServer<catalog::CatalogApi>,
    servers: ServersServer<servers::ServersApi>,
    nodes: NodesServer<nodes::NodesApi>,
    tls: Option<crate::auth::tls::ServerTls>,
    auth: crate::auth::AuthLayer,
    request_id: layer::RequestIdLayer,
    transport: Transport,
    max_message_bytes: usize,
}

/// Sets the health status of every `berth.v1` service.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    use tonic::server::NamedService;
    for name in [
        <PlacementServer<placement::PlacementApi> as NamedService>::NAME,
        <SchedulerServer<scheduler::SchedulerApi> as NamedService>::NAME,
        <CatalogServer<catalog::CatalogApi> as NamedService>::NAME,
        <ServersServer<servers::ServersApi> as NamedService>::NAME,
        <NodesServer<nodes::NodesApi> as NamedService>::NAME,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// Accepts connections and hands them to the serving threads in turn. Returns only if
/// every serving thread has gone (their receivers dropped).
async fn accept_loop(
    listener: TcpListener,
    senders: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
) {
    let mut next = 0usize;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: say so and let connections close before retrying,
                // rather than spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small request/response messages: without TCP_NODELAY, Nagle plus delayed ACKs
        // add ~40 ms to a call; keepalive finds peers that vanished.
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        let mut stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepted connection unusable: {e}");
                continue;
            }
        };
        // Round robin; a thread that has stopped is skipped.
        let mut tried = 0;
        loop {
            if tried == senders.len() {
                return;
            }
            let i = next % senders.len();
            next = next.wrapping_add(1);
            tried += 1;
            match senders[i].send(stream) {
                Ok(()) => break,
                Err(e) => stream = e.0,
            }
        }
    }
}

/// One serving thread: a single-threaded runtime serving the connections it is handed
/// until `stop` turns true, then finishing their in-flight calls. A call runs start to
/// end on the thread that owns its connection: no hand-offs between threads, which on
/// small calls cost about as much as the call (measured on a multi-threaded runtime: 37
/// against 17 µs of CPU per Health/Check; README "Performance").
fn serve_thread(
    services: Services,
    connections: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let routes = tonic::service::Routes::new(services.health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(services.placement)
            .add_service(services.scheduler)
            .add_service(services.catalog)
            .add_service(services.servers)
            .add_service(services.nodes);
        if services.transport == Transport::Berth {
            let service = tower::ServiceBuilder::new()
                .layer(services.request_id)
                .layer(services.auth)
                .service(routes);
            let tls = services
                .tls
                .map(|t| tokio_rustls::TlsAcceptor::from(t.rustls));
            serve_wire(service, services.max_message_bytes, tls, connections, stop).await;
            return Ok(());
        }
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(connections),
            tokio::net::TcpStream::from_std,
        );
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = services.tls {
            builder = builder.tls_config(tls.tonic)?;
        }
        builder
            .layer(services.request_id)
            .layer(services.auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    })
}

/// The service stack a serving thread runs on berth-wire: tonic's routes behind the
/// request-id and auth layers.
trait WireService:
    tower::Service<
        http::Request<berth_wire::server::RecvBody>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> WireService for S where
    S: tower::Service<
            http::Request<berth_wire::server::RecvBody>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// How long a client may take over its TLS handshake (tonic's server allows the same).
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves a thread's connections with berth-wire until `stop`, then lets each finish its
/// calls in flight (a GOAWAY tells the client to open no more streams).
async fn serve_wire<S: WireService>(
    service: S,
    max_message_bytes: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut connections: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let window = |bytes: usize| {
        u32::try_from(bytes)
            .unwrap_or(berth_wire::frame::MAX_WINDOW)
            .min(berth_wire::frame::MAX_WINDOW)
    };
    let config = berth_wire::server::Config {
        // A request's message (and its 5-byte prefix) fits in one stream window, so a
        // unary call never waits for a WINDOW_UPDATE; two fit in the connection's.
        stream_window: window(max_message_bytes.saturating_add(64)),
        connection_window: window(max_message_bytes.saturating_mul(2).saturating_add(128)),
        ..Default::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    let per_connection = stop.clone();
    loop {
        tokio::select! {
            c = connections.recv() => {
                let Some(std) = c else { break };
                let stream = match tokio::net::TcpStream::from_std(std) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accepted connection unusable: {e}");
                        continue;
                    }
                };
                let mut stop = per_connection.clone();
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                tasks.spawn(serve_connection(stream, tls.clone(), service.clone(), config.clone(), shutdown));
            }
            _ = stop.wait_for(|s| *s) => break,
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Err(e)) = r {
                    tracing::debug!("connection closed: {e}");
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One berth-wire connection: the TLS handshake first when the listener has TLS (in the
/// connection's own task, so a slow client holds up no one), then HTTP/2 until it closes.
/// Every request carries tonic's connect info: the peer's address and, with TLS, its
/// certificates (the auth layer reads a node's name from them).
async fn serve_connection<S: WireService>(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    config: berth_wire::server::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use tonic::transport::server::Connected;
    /// `berth_grpc_connections` counts this connection until it ends, however it ends.
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            metrics::gauge!("berth_grpc_connections").decrement(1.0);
        }
    }
    metrics::gauge!("berth_grpc_connections").increment(1.0);
    let _open = Open;
    let Some(acceptor) = tls else {
        let info = stream.connect_info();
        return berth_wire::server::serve(stream, service, config, info, shutdown).await;
    };
    let stream = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            metrics::counter!("berth_grpc_tls_handshake_failures_total").increment(1);
            return Ok(());
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            metrics::counter!("berth_grpc_tls_handshake_failures_total").increment(1);
            return Ok(());
        }
    };
    let info = stream.connect_info();
    berth_wire::server::serve(stream, service, config, info, shutdown).await
}

/// The snapshot source of a durable engine: the engine's objects, then the servers.
struct Everything {
    engine: Arc<Engine>,
    conductor: Arc<Conductor>,
}

impl crate::store::SnapshotSource for Everything {
    fn export(&self, out: &mut dyn FnMut(crate::store::record::Record)) {
        self.engine.export(out);
        self.conductor.export(out);
    }
}

/// What start-up read from the store, for [`serve_restored`].
#[derive(Debug)]
pub struct Restored {
    /// The state read (the engine was rebuilt from it already; the servers are next).
    pub state: crate::store::State,
    /// Take a snapshot at once (after `--recover` moved the damaged files aside).
    pub snapshot_now: bool,
}

/// [`serve`] for an engine rebuilt from its store (`engine.store()` set): restores the
/// servers, snapshots as the log grows, and answers each call only once its changes are
/// durable.
pub async fn serve_restored(
    engine: Arc<Engine>,
    config: &ServerConfig,
    compute: &ComputeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    restored: Option<Restored>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let max = config.max_message_bytes;
    let placement = PlacementServer::new(placement::PlacementApi {
        engine: engine.clone(),
    })
    .max_decoding_message_size(max);
    let scheduler = SchedulerServer::new(scheduler::SchedulerApi::new(engine.clone()))
        .max_decoding_message_size(max);
    let catalog = CatalogServer::new(catalog::CatalogApi {
        engine: engine.clone(),
    })
    .max_decoding_message_size(max);
    // The hub tells the conductor what nodes report; the conductor sends actions through
    // the hub.
    let hub = NodeHub::new(engine.clone(), compute.clone());
    let conductor = Conductor::new(engine.clone(), hub.clone(), compute.clone());
    if let Some(r) = &restored {
        let (n, skipped) = conductor.restore(&r.state);
        for s in &skipped {
            tracing::error!("not restored: {s}");
        }
        if n > 0 || !skipped.is_empty() {
            tracing::info!(servers = n, skipped = skipped.len(), "servers restored");
        }
    }
    let store = engine.store().cloned();
    if let Some(store) = &store {
        store.set_source(Arc::new(Everything {
            engine: engine.clone(),
            conductor: conductor.clone(),
        }));
        if restored.as_ref().is_some_and(|r| r.snapshot_now) {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.snapshot())
                .await
                .map_err(|e| format!("snapshot task: {e}"))??;
        }
    }
    // Freeing a million records takes a while; nobody needs to wait for it.
    if let Some(r) = restored {
        let _ = std::thread::Builder::new()
            .name("berth-free".into())
            .spawn(move || drop(r));
    }
    hub.set_reconciler(conductor.clone());
    let liveness = hub.spawn_liveness_monitor();
    let nodes = NodesServer::new(nodes::NodesApi::new(hub.clone())).max_decoding_message_size(max);
    let servers =
        ServersServer::new(servers::ServersApi::new(conductor)).max_decoding_message_size(max);

    let health_reporter = tonic_health::server::HealthReporter::new();
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
    );
    set_health(&health_reporter, tonic_health::ServingStatus::Serving).await;

    let addr = listener.local_addr()?;
    let security = crate::auth::Security::prepare(&config.security(), addr)?;
    let threads = config.serving_threads();
    tracing::info!(%addr, providers = engine.provider_count(), shards = engine.shard_count(), threads, tls = security.tls.is_some(), auth = security.authenticator.enforced(), "berth-engine serving gRPC");
    match &security.admin_token {
        Some(p) if security.admin_token_written => {
            tracing::info!(
                "wrote an admin token to {} (the berth CLI reads it)",
                p.display()
            );
        }
        Some(_) => {}
        None => tracing::warn!("--insecure: no authentication, every caller is an admin"),
    }
    let services = Services {
        health,
        placement,
        scheduler,
        catalog,
        servers,
        nodes,
        tls: security.tls,
        auth: crate::auth::AuthLayer::new(security.authenticator),
        request_id: layer::RequestIdLayer::new(store.clone()),
        transport: config.transport,
        max_message_bytes: config.max_message_bytes,
    };
    // Dropped (on return or if this future is dropped), it stops the serving threads.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (exited_tx, mut exited) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Result<(), BoxError>)>();
    let mut senders = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let services = services.clone();
        let stop = stop_rx.clone();
        let exited = exited_tx.clone();
        std::thread::Builder::new()
            .name(format!("berth-grpc-{i}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve_thread(services, rx, stop)
                }))
                .unwrap_or_else(|_| Err("panicked".into()));
                let _ = exited.send((i, r));
            })
            .map_err(|e| format!("cannot start serving thread {i}: {e}"))?;
        senders.push(tx);
    }
    drop((services, exited_tx));
    // Boxed so that dropping it closes the listener and the connection senders.
    let mut accept = Box::pin(accept_loop(listener, senders));
    let mut first_error: Option<BoxError> = None;
    let mut running = threads;
    tokio::select! {
        () = shutdown => {}
        () = &mut accept => {}
        // A serving thread that stops on its own (it could not start: TLS settings) stops
        // the engine rather than leaving it serving with fewer threads.
        Some((i, r)) = exited.recv() => {
            running -= 1;
            let e = r.err().unwrap_or_else(|| format!("serving thread {i} stopped").into());
            tracing::error!("serving thread {i}: {e}");
            first_error = Some(e);
        }
    }
    tracing::info!("shutting down: no new calls, finishing in-flight ones");
    hub.close_all("the engine is shutting down");
    set_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
    // Closes the listener and ends every thread's stream of connections: each thread stops
    // accepting, finishes its calls in flight and returns.
    drop(accept);
    let _ = stop_tx.send(true);
    while running > 0 {
        let Some((i, r)) = exited.recv().await else {
            break;
        };
        running -= 1;
        if let Err(e) = r {
            tracing::error!("serving thread {i}: {e}");
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        liveness.abort();
        return Err(e);
    }
    liveness.abort();
    if let Some(store) = store {
        // A snapshot now makes the next start read one file instead of the log.
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.snapshot()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("no snapshot at shutdown: {e}"),
            Err(e) => tracing::warn!("no snapshot at shutdown: {e}"),
        }
        store.close();
    }
    tracing::info!("berth-engine stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_documents_exactly_the_defaults() {
        let parsed = BerthConfig::from_toml(include_str!("../../../berth.toml")).unwrap();
        assert_eq!(
            parsed,
            BerthConfig::default(),
            "berth.toml and the code's defaults disagree"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = BerthConfig::from_toml("[server]\nlisten = 5\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        assert!(BerthConfig::from_toml("[engine]\nshardz = 1\n").is_err());
    }
}
