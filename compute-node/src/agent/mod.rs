//! The agent: `berth-node`'s side of the engine's `Nodes/Connect` stream
//! (`proto/berth/v1/nodes.proto`).
//!
//! One [`run`] per node, until its shutdown future completes:
//!
//! 1. **Dial** the engine and open `Connect`; the first message sent is `Register` (identity,
//!    inventories from the hypervisor's node info under the configured [`ResourcePolicy`],
//!    every domain the hypervisor knows).
//! 2. **Wait for `Registered`** and log what the engine made of it (provider uuid, orphan and
//!    missing domains, warnings).
//! 3. **Heartbeat** every interval: a sequence number, every domain with its power state, and
//!    `healthy = false` with a reason when the hypervisor does not answer.
//! 4. **Run actions** as they arrive (the `actions` module): on the blocking pool, in order per
//!    instance, concurrently across instances, each answered with an `ActionResult`.
//! 5. When dialling, registering or the stream fails (including the engine's `ABORTED` when a
//!    newer connection of the same node replaced this one), **wait** a jittered exponential
//!    backoff and start again at 1. The backoff restarts once a connection has carried its
//!    first heartbeat, so a connection that breaks right after registering keeps backing off.
//!
//! The agent keeps no global state and installs no logger: a process may run thousands of
//! them (the load harness does, over `FakeHypervisor`s). Each costs one TCP connection and a
//! few tasks; its logs carry a `node` span field.

mod actions;
mod backoff;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::nodes_client::NodesClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument as _;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::hypervisor::{DomainStatus, Hypervisor};
use crate::inventory::{Registration, ResourcePolicy, inventories};

use self::actions::Executor;
use self::backoff::Backoff;

/// The daemon's version, sent as `Register.agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shortest heartbeat interval the protocol allows.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Messages queued for the engine before senders wait (action results) or skip (heartbeats).
const OUTBOUND_QUEUE: usize = 64;

/// Everything the agent needs, however it was configured (flags in the daemon, a struct
/// literal in the load harness and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Engine gRPC endpoint, an `http://` or (with `credentials.ca_cert`) `https://` URL.
    pub engine: String,
    /// Resource-provider name.
    pub name: String,
    /// Availability zone; `None` means the engine's default zone.
    pub availability_zone: Option<String>,
    /// Traits to report.
    pub traits: Vec<String>,
    /// Reserved amounts and allocation ratios applied to the hypervisor's totals.
    pub resources: ResourcePolicy,
    /// Time between heartbeats; at least [`MIN_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// Upper bound of the first reconnect delay; doubles per failed attempt.
    pub reconnect_backoff: Duration,
    /// Cap of the reconnect delay bound.
    pub reconnect_backoff_max: Duration,
    /// How long a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How long the engine may take to answer `Register` before the attempt counts as
    /// failed.
    pub register_timeout: Duration,
    /// How the node proves who it is and checks the engine's certificate.
    pub credentials: Credentials,
}

/// How a node authenticates to the engine: a client certificate over TLS (when the engine
/// requires node certificates; the certificate's name is the node's), or a bearer token (a
/// `node` token for this node's name, from `berth-engine token issue --role node`).
#[derive(Clone, Default, PartialEq)]
pub struct Credentials {
    /// Sent as `authorization: Bearer <token>` on the stream.
    pub token: Option<String>,
    /// PEM of the CA that signed the engine's certificate; needed for an `https://` engine.
    pub ca_cert: Option<Vec<u8>>,
    /// PEM certificate and key presented to the engine (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or the key: configurations end up in logs.
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl AgentConfig {
    /// A node called `name` reporting to `engine`, with the documented defaults: Nova's
    /// reserved memory and ratios, 10 s heartbeats, reconnects backing off from 200 ms to 10 s,
    /// 5 s to dial, 30 s to be registered.
    pub fn new(engine: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            engine: engine.into(),
            name: name.into(),
            availability_zone: None,
            traits: Vec::new(),
            resources: ResourcePolicy::default(),
            heartbeat_interval: Duration::from_secs(10),
            reconnect_backoff: Duration::from_millis(200),
            reconnect_backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(30),
            credentials: Credentials::default(),
        }
    }

    /// The agent settings of a resolved daemon configuration.
    pub fn from_node_config(cfg: &NodeConfig) -> Self {
        Self {
            availability_zone: cfg.availability_zone.clone(),
            traits: cfg.traits.clone(),
            resources: cfg.resources.clone(),
            heartbeat_interval: cfg.heartbeat_interval,
            reconnect_backoff: cfg.reconnect_backoff,
            reconnect_backoff_max: cfg.reconnect_backoff_max,
            credentials: cfg.credentials.clone(),
            ..Self::new(cfg.engine.clone(), cfg.name.clone())
        }
    }

    /// What this node registers: `hypervisor`'s totals under this policy. Blocks (asks the
    /// hypervisor).
    ///
    /// # Errors
    /// `Hypervisor` when node info cannot be read; `Config` when the policy does not fit the
    /// host (reserved beyond total).
    pub fn registration(&self, hypervisor: &dyn Hypervisor) -> Result<Registration, NodeError> {
        let node = hypervisor.node_info()?;
        let inventories = inventories(&node, &self.resources)?;
        Ok(Registration {
            name: self.name.clone(),
            availability_zone: self.availability_zone.clone(),
            traits: self.traits.clone(),
            node,
            inventories,
            live_migration: hypervisor.live_migration_supported(),
        })
    }

    /// The full `Register` message: the registration and every domain. Blocks.
    fn register_message(&self, hypervisor: &dyn Hypervisor) -> Result<pb::Register, NodeError> {
        let registration = self.registration(hypervisor)?;
        let mut domains = hypervisor.list_domains()?;
        domains.sort_unstable_by_key(|d| d.uuid);
        Ok(registration.to_register(&domains, self.heartbeat_interval, AGENT_VERSION))
    }

    /// Checks the settings and builds the engine endpoint.
    fn endpoint(&self) -> Result<Endpoint, NodeError> {
        let bad = |msg: String| NodeError::Config(msg);
        let https = self.engine.starts_with("https://");
        if !https && !self.engine.starts_with("http://") {
            return Err(bad(format!(
                "engine {:?} must be an http:// or https:// URL",
                self.engine
            )));
        }
        let creds = &self.credentials;
        if !https && (creds.ca_cert.is_some() || creds.identity.is_some()) {
            return Err(bad(format!(
                "engine {:?}: ca_cert, tls_cert and tls_key are for TLS; use an https:// URL",
                self.engine
            )));
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(bad(format!(
                "heartbeat_interval {:?} is below the protocol's minimum of 100 ms",
                self.heartbeat_interval
            )));
        }
        if self.reconnect_backoff.is_zero() || self.reconnect_backoff_max < self.reconnect_backoff {
            return Err(bad(format!(
                "reconnect backoff {:?} to {:?}: need 0 < reconnect_backoff <= reconnect_backoff_max",
                self.reconnect_backoff, self.reconnect_backoff_max
            )));
        }
        let mut endpoint = Endpoint::from_shared(self.engine.clone())
            .map_err(|e| bad(format!("engine {:?}: {e}", self.engine)))?;
        if https {
            let ca = creds.ca_cert.as_ref().ok_or_else(|| {
                bad(format!(
                    "engine {:?}: https (TLS) needs the CA that signed the engine's certificate (ca_cert, --ca-cert)",
                    self.engine
                ))
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &creds.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| bad(format!("engine {:?}: TLS settings: {e}", self.engine)))?;
        }
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Notices an engine that vanished without closing the connection (host crash,
            // partition) even while no action is running: heartbeats alone only fail once
            // the kernel gives up on the unacknowledged data.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true))
    }
}

/// Runs the node's side of the Nodes protocol against `config.engine` until `shutdown`
/// completes: register, heartbeat, run actions, and reconnect with backoff whenever the
/// connection fails. Needs a Tokio runtime (any flavour; hypervisor calls go to the blocking
/// pool).
///
/// On shutdown it stops sending, closes the stream and returns `Ok(())`. Hypervisor calls
/// already running finish in the background; their results are not sent.
///
/// # Errors
/// `Config` for settings that can never work (a malformed engine URL, a heartbeat interval
/// under 100 ms, a resource policy the host cannot satisfy). Connection and hypervisor
/// failures are not errors: they are logged and retried.
pub async fn run(
    config: AgentConfig,
    hypervisor: Arc<dyn Hypervisor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let endpoint = config.endpoint()?;
    let authorization = match &config.credentials.token {
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
            NodeError::Config("token: not a token (characters a header cannot carry)".into())
        })?),
        None => None,
    };
    let span = tracing::info_span!("agent", node = %config.name);
    let agent = Agent {
        config: Arc::new(config),
        endpoint,
        authorization,
        executor: Executor::new(Arc::clone(&hypervisor)),
        hypervisor,
    };
    agent.run(shutdown).instrument(span).await
}

/// One node's agent: what every connection attempt shares.
struct Agent {
    config: Arc<AgentConfig>,
    endpoint: Endpoint,
    /// `Bearer <token>`, sent when opening each stream.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    hypervisor: Arc<dyn Hypervisor>,
    /// Outlives connections, so actions on one instance stay ordered across reconnects.
    executor: Executor,
}

/// Why a connection ended. Every one is retried.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect: {0}")]
    Dial(#[source] tonic::transport::Error),
    #[error("cannot describe the host: {0}")]
    Host(#[source] NodeError),
    #[error("replaced by a newer connection of this node: {}", .0.message())]
    Replaced(tonic::Status),
    #[error("stream failed: {0}")]
    Rpc(#[source] tonic::Status),
    #[error("the engine closed the stream")]
    Closed,
    #[error("no Registered from the engine within {0:?}")]
    RegisterTimeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl From<tonic::Status> for SessionEnd {
    fn from(status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Aborted {
            Self::Replaced(status)
        } else {
            Self::Rpc(status)
        }
    }
}

impl Agent {
    async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        self.check_host().await?;
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(
            self.config.reconnect_backoff,
            self.config.reconnect_backoff_max,
        );
        loop {
            let ended = tokio::select! {
                biased;
                () = &mut shutdown => break,
                ended = self.session(&mut backoff) => ended,
            };
            let delay = backoff.next_delay();
            tracing::warn!(
                engine = %self.config.engine,
                error = %ended,
                attempt = backoff.attempts(),
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "engine connection failed; reconnecting"
            );
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Fails fast on a policy the host can never satisfy; a hypervisor that does not answer
    /// yet is only logged (registration retries until it does).
    async fn check_host(&self) -> Result<(), NodeError> {
        let (config, hypervisor) = (Arc::clone(&self.config), Arc::clone(&self.hypervisor));
        match tokio::task::spawn_blocking(move || config.registration(&*hypervisor)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e @ NodeError::Config(_))) => Err(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "hypervisor not ready; registering once it answers");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "describing the host did not complete");
                Ok(())
            }
        }
    }

    /// One connection, from dial to failure. Never returns success: a healthy connection
    /// lasts until it breaks or the caller drops it (shutdown).
    async fn session(&self, backoff: &mut Backoff) -> SessionEnd {
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return SessionEnd::Dial(e),
        };
        let register = {
            let (config, hypervisor) = (Arc::clone(&self.config), Arc::clone(&self.hypervisor));
            match tokio::task::spawn_blocking(move || config.register_message(&*hypervisor)).await {
                Ok(Ok(register)) => register,
                Ok(Err(e)) => return SessionEnd::Host(e),
                Err(e) => {
                    return SessionEnd::Host(NodeError::Hypervisor(
                        crate::HypervisorError::Driver(format!(
                            "describing the host did not complete: {e}"
                        )),
                    ));
                }
            }
        };
        let domains = register.domains.len();
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        // Queued before the stream opens, so it is the stream's first message.
        let _ = outbound.try_send(pb::NodeMessage {
            body: Some(pb::node_message::Body::Register(register)),
        });
        let mut client = NodesClient::new(channel);
        let handshake = async {
            let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
            if let Some(v) = &self.authorization {
                request.metadata_mut().insert("authorization", v.clone());
            }
            let mut inbound = client.connect(request).await?.into_inner();
            match inbound.message().await? {
                Some(pb::EngineMessage {
                    body: Some(pb::engine_message::Body::Registered(registered)),
                }) => Ok((inbound, registered)),
                Some(_) => Err(SessionEnd::Protocol(
                    "the engine's first message was not Registered",
                )),
                None => Err(SessionEnd::Closed),
            }
        };
        let (mut inbound, registered) =
            match tokio::time::timeout(self.config.register_timeout, handshake).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(end)) => return end,
                Err(_) => return SessionEnd::RegisterTimeout(self.config.register_timeout),
            };
        tracing::info!(
            engine = %self.config.engine,
            provider = %registered.provider_uuid,
            down_after_ms = registered.down_after_ms,
            domains,
            orphans = ?registered.orphans,
            missing = ?registered.missing,
            "registered"
        );
        for warning in &registered.warnings {
            tracing::warn!(%warning, "the engine did not apply all of the registration");
        }

        let interval = self.config.heartbeat_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The hypervisor probe for the next heartbeat, while it runs. At most one at a time:
        // a hung driver gets "not answering" heartbeats, not a pile of blocked threads.
        let mut probe: Option<JoinHandle<Probe>> = None;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(pb::EngineMessage { body: Some(body) })) => match body {
                        pb::engine_message::Body::Action(action) => {
                            self.executor.submit(action, outbound.clone());
                        }
                        pb::engine_message::Body::Registered(_) => {
                            tracing::warn!("ignoring a second Registered on one stream");
                        }
                    },
                    // A message of a newer protocol that this node does not know.
                    Ok(Some(pb::EngineMessage { body: None })) => {
                        tracing::debug!("ignoring an empty engine message");
                    }
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return status.into(),
                },
                _ = ticker.tick() => {
                    if probe.is_none() {
                        let hypervisor = Arc::clone(&self.hypervisor);
                        probe = Some(tokio::task::spawn_blocking(move || Probe::take(&*hypervisor)));
                    } else {
                        seq += 1;
                        let detail = format!(
                            "the hypervisor has not answered for over {} ms",
                            interval.as_millis()
                        );
                        send_heartbeat(&outbound, Probe::unhealthy(detail).heartbeat(seq));
                    }
                }
                answered = wait_for(&mut probe) => {
                    probe = None;
                    let taken = answered.unwrap_or_else(|e| {
                        Probe::unhealthy(format!("the hypervisor probe did not complete: {e}"))
                    });
                    seq += 1;
                    if send_heartbeat(&outbound, taken.heartbeat(seq)) {
                        backoff.reset();
                    }
                }
            }
        }
    }
}

/// Awaits the running probe; never completes when there is none.
async fn wait_for(probe: &mut Option<JoinHandle<Probe>>) -> Result<Probe, tokio::task::JoinError> {
    match probe {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Queues a heartbeat without waiting: when the engine does not keep up, skipping a
/// heartbeat beats stalling the stream. Returns whether it was queued.
fn send_heartbeat(outbound: &mpsc::Sender<pb::NodeMessage>, heartbeat: pb::Heartbeat) -> bool {
    let seq = heartbeat.seq;
    let healthy = heartbeat.healthy;
    match outbound.try_send(pb::NodeMessage {
        body: Some(pb::node_message::Body::Heartbeat(heartbeat)),
    }) {
        Ok(()) => {
            tracing::trace!(seq, healthy, "heartbeat");
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(seq, "the engine is not reading; heartbeat skipped");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// What a heartbeat reports about the hypervisor.
struct Probe {
    domains: Vec<DomainStatus>,
    /// Why the hypervisor is unhealthy; empty when healthy.
    problems: Vec<String>,
}

impl Probe {
    /// Asks the hypervisor for its node info (reachability) and domains. Blocks.
    fn take(hypervisor: &dyn Hypervisor) -> Self {
        let mut problems = Vec::new();
        if let Err(e) = hypervisor.node_info() {
            problems.push(format!("node info: {e}"));
        }
        let domains = match hypervisor.list_domains() {
            Ok(mut domains) => {
                domains.sort_unstable_by_key(|d| d.uuid);
                domains
            }
            Err(e) => {
                problems.push(format!("listing domains: {e}"));
                Vec::new()
            }
        };
        if !problems.is_empty() {
            tracing::warn!(problems = ?problems, "hypervisor unhealthy");
        }
        Self { domains, problems }
    }

    fn unhealthy(detail: String) -> Self {
        tracing::warn!(%detail, "hypervisor unhealthy");
        Self {
            domains: Vec::new(),
            problems: vec![detail],
        }
    }

    fn heartbeat(self, seq: u64) -> pb::Heartbeat {
        pb::Heartbeat {
            seq,
            domains: self.domains.iter().map(pb::DomainReport::from).collect(),
            healthy: self.problems.is_empty(),
            health_detail: self.problems.join("; "),
        }
    }
}
