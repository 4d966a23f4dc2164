//! Helpers for the integration tests in tests/tests/: start the real gRPC server in-process
//! on a loopback port, connect the clients, build common requests, and check statuses.
//!
//! The server runs as it does by default: with authentication on, its token key and admin
//! token in a temporary data directory. The clients send that admin token ([`AuthChannel`]);
//! [`TestServer::token`] issues others (roles, projects, nodes).
//!
//! ```no_run
//! # async fn demo() {
//! let server = berth_tests::TestServer::start().await;
//! let mut placement = server.placement.clone();
//! # let _ = &mut placement;
//! server.shutdown().await;
//! # }
//! ```

pub mod node;
pub mod proc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::api::ServerConfig;
use berth_engine::auth::{Role, TokenSpec};
use berth_engine::lifecycle::ComputeConfig;
use berth_engine::{Engine, EngineConfig};
use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_proto::v1::servers_client::ServersClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;

pub use berth_proto::v1;

/// How long a test waits for the server to start or stop before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The result of the server task.
pub type ServeResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A channel that sends a bearer token with every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every request (nothing for an empty token).
#[derive(Clone, Debug)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// The interceptor for `token`; an empty one sends no header.
    pub fn new(token: &str) -> Self {
        Self((!token.is_empty()).then(|| {
            format!("Bearer {token}")
                .parse()
                .expect("a token is header-safe")
        }))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// `channel` sending `token` with every call.
pub fn with_token(channel: Channel, token: &str) -> AuthChannel {
    InterceptedService::new(channel, Bearer::new(token))
}

/// A running in-process server and clients connected to it over loopback TCP.
///
/// Dropping it without [`TestServer::shutdown`] still stops the server (the shutdown
/// signal is sent on drop), but only `shutdown` checks that it stopped cleanly.
pub struct TestServer {
    /// Where the server listens (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    /// The engine behind the server, for tests that need to peek (they should not need to).
    pub engine: Arc<Engine>,
    /// One shared HTTP/2 connection, without a token; the clients below are clones over it
    /// (with the admin token).
    pub channel: Channel,
    /// The admin token the engine wrote to its data directory on start.
    pub admin_token: String,
    /// The engine's data directory (a temporary directory, removed on drop).
    pub data_dir: PathBuf,
    /// `berth.v1.Placement` client, as admin.
    pub placement: PlacementClient<AuthChannel>,
    /// `berth.v1.Scheduler` client, as admin.
    pub scheduler: SchedulerClient<AuthChannel>,
    /// `berth.v1.Catalog` client, as admin.
    pub catalog: CatalogClient<AuthChannel>,
    /// `berth.v1.Servers` client, as admin.
    pub servers: ServersClient<AuthChannel>,
    /// `grpc.health.v1.Health` client (health needs no token).
    pub health: HealthClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ServeResult>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with the default engine and server configuration.
    pub async fn start() -> Self {
        Self::start_with(EngineConfig::default(), ServerConfig::default()).await
    }

    /// Starts a server with the given configurations (`listen`, `metrics_listen` and
    /// `data_dir` are ignored: the server always gets a fresh 127.0.0.1 port, no metrics
    /// exporter and a fresh temporary data directory).
    pub async fn start_with(engine: EngineConfig, server: ServerConfig) -> Self {
        Self::start_full(engine, server, ComputeConfig::default()).await
    }

    /// Like [`TestServer::start_with`], with compute-node and lifecycle settings too.
    pub async fn start_full(
        engine: EngineConfig,
        server: ServerConfig,
        compute: ComputeConfig,
    ) -> Self {
        let data = tempfile::tempdir().expect("a temporary data directory");
        let server = ServerConfig {
            data_dir: data.path().to_path_buf(),
            ..server
        };
        // What the engine does on its first start, done here so that the admin token is
        // there before the first call (the serve task may not have run yet); the engine
        // then finds and keeps both. Under `insecure` there is none, and none is needed.
        if !server.insecure {
            let (key, _) = berth_engine::auth::files::load_key(data.path(), true)
                .expect("a token key in the data directory");
            berth_engine::auth::files::ensure_admin_token(data.path(), &key)
                .expect("an admin token in the data directory");
        }
        let engine = Arc::new(Engine::new(engine).expect("engine configuration is valid"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener has an address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let engine = engine.clone();
            async move {
                berth_engine::api::serve(engine, &server, &compute, listener, async {
                    let _ = rx.await;
                })
                .await
            }
        });
        // The listener is bound already, so connecting cannot race the server's start.
        let channel = tokio::time::timeout(DEADLINE, connect(addr))
            .await
            .expect("server accepts a connection before the deadline")
            .expect("connect to the test server");
        let admin_token = std::fs::read_to_string(data.path().join("admin.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        let authed = with_token(channel.clone(), &admin_token);
        Self {
            addr,
            engine,
            placement: PlacementClient::new(authed.clone()),
            scheduler: SchedulerClient::new(authed.clone()),
            catalog: CatalogClient::new(authed.clone()),
            servers: ServersClient::new(authed),
            health: HealthClient::new(channel.clone()),
            channel,
            admin_token,
            data_dir: data.path().to_path_buf(),
            shutdown: Some(tx),
            task: Some(task),
            _data: data,
        }
    }

    /// A new, separate HTTP/2 connection to the server (for tests that want many), sending
    /// the admin token.
    pub async fn connect(&self) -> AuthChannel {
        let channel = connect(self.addr)
            .await
            .expect("connect to the test server");
        with_token(channel, &self.admin_token)
    }

    /// A token signed with the server's key (read from its data directory).
    pub fn token(&self, roles: &[Role], project: &str, subject: &str, ttl: Duration) -> String {
        let (key, _) = berth_engine::auth::files::load_key(&self.data_dir, false)
            .expect("the server's token key");
        key.issue(&TokenSpec {
            subject: subject.into(),
            project: project.into(),
            roles: roles.to_vec(),
            ttl,
        })
        .expect("a valid token spec")
    }

    /// A one-hour `node` token for the node called `name`.
    pub fn node_token(&self, name: &str) -> String {
        self.token(&[Role::Node], "", name, Duration::from_secs(3600))
    }

    /// The shared connection with `token` (for clients acting as someone else).
    pub fn as_token(&self, token: &str) -> AuthChannel {
        with_token(self.channel.clone(), token)
    }

    /// A compute node in this process: registers `name` (zone `az1`, `vcpus` / `ram_mb` /
    /// `disk_gb`) over `Nodes/Connect` with a node token and carries out every action it is
    /// sent at once, reporting the power state the action leaves (so servers go ACTIVE,
    /// SHUTOFF, PAUSED, … on it). Its heartbeats are 10 minutes apart: it never goes down
    /// during a test.
    pub async fn fake_node(
        &self,
        name: &str,
        (vcpus, ram_mb, disk_gb): (u64, u64, u64),
    ) -> pb::Registered {
        use berth_proto::v1::nodes_client::NodesClient;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::NodeMessage>(256);
        let register = pb::Register {
            name: name.into(),
            availability_zone: "az1".into(),
            inventories: host_inventories(vcpus, ram_mb, disk_gb),
            live_migration: true,
            heartbeat_interval_ms: 600_000,
            agent_version: "berth-tests fake node".into(),
            ..Default::default()
        };
        tx.send(pb::NodeMessage {
            body: Some(pb::node_message::Body::Register(register)),
        })
        .await
        .expect("queue Register");
        let mut inbound = NodesClient::new(self.as_token(&self.node_token(name)))
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the node connects")
            .into_inner();
        let registered = match inbound.message().await {
            Ok(Some(pb::EngineMessage {
                body: Some(pb::engine_message::Body::Registered(r)),
            })) => r,
            other => panic!("expected Registered, got {other:?}"),
        };
        tokio::spawn(async move {
            use pb::ActionKind as K;
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(pb::engine_message::Body::Action(a)) = msg.body else {
                    continue;
                };
                let power = match K::try_from(a.kind) {
                    Ok(K::Stop) => "SHUTOFF",
                    Ok(K::Pause) => "PAUSED",
                    Ok(K::Suspend) => "SUSPENDED",
                    Ok(K::Delete) => "",
                    _ => "RUNNING",
                };
                let result = pb::ActionResult {
                    action_id: a.action_id,
                    ok: true,
                    power_state: power.into(),
                    snapshot_id: "snap-1".into(),
                    ..Default::default()
                };
                let reply = pb::NodeMessage {
                    body: Some(pb::node_message::Body::ActionResult(result)),
                };
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        registered
    }

    /// Sends the shutdown signal without waiting for the server to stop (see
    /// [`TestServer::shutdown`] for that).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits (with a deadline) for the server to stop; panics unless
    /// it returned `Ok`.
    pub async fn shutdown(mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server stops before the deadline")
                .expect("server task did not panic");
            if let Err(e) = res {
                panic!("server returned an error: {e}");
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Connects a channel to `addr` over plain-text HTTP/2.
pub async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
}

// ---- Request builders ---------------------------------------------------------------------

/// An inventory with only `total` set (everything else takes the server's defaults).
pub fn inv(class: &str, total: u64) -> pb::Inventory {
    pb::Inventory {
        resource_class: class.into(),
        total,
        ..Default::default()
    }
}

/// A `ResourceAmount`.
pub fn amount(class: &str, amount: u64) -> pb::ResourceAmount {
    pb::ResourceAmount {
        resource_class: class.into(),
        amount,
    }
}

/// The usual three inventories of a compute host.
pub fn host_inventories(vcpus: u64, ram_mb: u64, disk_gb: u64) -> Vec<pb::Inventory> {
    vec![
        inv("VCPU", vcpus),
        inv("MEMORY_MB", ram_mb),
        inv("DISK_GB", disk_gb),
    ]
}

/// A create request for a host named `name` with the given inventories.
pub fn provider_request(
    name: &str,
    inventories: Vec<pb::Inventory>,
) -> pb::CreateResourceProviderRequest {
    pb::CreateResourceProviderRequest {
        name: name.into(),
        inventories,
        ..Default::default()
    }
}

/// Creates a provider and returns it, panicking with the status on failure.
pub async fn create_provider(
    client: &mut PlacementClient<AuthChannel>,
    req: pb::CreateResourceProviderRequest,
) -> pb::ResourceProvider {
    let name = req.name.clone();
    client
        .create_resource_provider(req)
        .await
        .unwrap_or_else(|s| panic!("create provider {name}: {s:?}"))
        .into_inner()
        .provider
        .expect("CreateResourceProvider returns the provider")
}

/// A request spec for `resources`, owned by `project` (user `user-1`).
pub fn spec(resources: &[(&str, u64)], project: &str) -> pb::RequestSpec {
    pb::RequestSpec {
        resources: resources.iter().map(|(c, n)| amount(c, *n)).collect(),
        project_id: project.into(),
        user_id: "user-1".into(),
        ..Default::default()
    }
}

/// A new random uuid as a string.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---- Reads ----------------------------------------------------------------------------------

/// `GetResourceProvider`, panicking on failure.
pub async fn get_provider(
    client: &mut PlacementClient<AuthChannel>,
    uuid: &str,
) -> pb::ResourceProvider {
    client
        .get_resource_provider(pb::GetResourceProviderRequest { uuid: uuid.into() })
        .await
        .unwrap_or_else(|s| panic!("get provider {uuid}: {s:?}"))
        .into_inner()
        .provider
        .expect("GetResourceProvider returns the provider")
}

/// `GetProviderUsages`, panicking on failure.
pub async fn provider_usages(
    client: &mut PlacementClient<AuthChannel>,
    uuid: &str,
) -> pb::GetProviderUsagesResponse {
    client
        .get_provider_usages(pb::GetProviderUsagesRequest { uuid: uuid.into() })
        .await
        .unwrap_or_else(|s| panic!("usages of {uuid}: {s:?}"))
        .into_inner()
}

/// `GetAllocations`, panicking on failure.
pub async fn allocations(
    client: &mut PlacementClient<AuthChannel>,
    consumer: &str,
) -> pb::GetAllocationsResponse {
    client
        .get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: consumer.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("allocations of {consumer}: {s:?}"))
        .into_inner()
}

/// `GetProjectUsages` for a whole project, panicking on failure.
pub async fn project_usages(
    client: &mut PlacementClient<AuthChannel>,
    project: &str,
) -> pb::GetProjectUsagesResponse {
    client
        .get_project_usages(pb::GetProjectUsagesRequest {
            project_id: project.into(),
            user_id: None,
        })
        .await
        .unwrap_or_else(|s| panic!("usages of project {project}: {s:?}"))
        .into_inner()
}

/// `used` of `class` in a usage list (0 if the class is absent).
pub fn used_of(usages: &[pb::ProviderUsage], class: &str) -> u64 {
    usages
        .iter()
        .find(|u| u.resource_class == class)
        .map_or(0, |u| u.used)
}

// ---- Status checks --------------------------------------------------------------------------

/// Asserts that `res` failed with `code` and that the message contains every one of
/// `words`; returns the status for further checks.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(
    res: Result<tonic::Response<T>, Status>,
    code: Code,
    words: &[&str],
) -> Status {
    let status = match res {
        Ok(r) => panic!(
            "expected {code:?} containing {words:?}, got OK: {:?}",
            r.into_inner()
        ),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code (message: {:?})",
        status.message()
    );
    for w in words {
        assert!(
            status.message().contains(w),
            "{code:?} message {:?} should contain {w:?}",
            status.message()
        );
    }
    status
}

// ---- The real binary ------------------------------------------------------------------------

/// One built binary per test process: the first caller builds (or finds) it, the others
/// share the answer, a failure included.
type BinCell = std::sync::OnceLock<Result<std::path::PathBuf, String>>;

fn cached_binary(
    cell: &'static BinCell,
    env_override: &str,
    package: &str,
    bin_name: &str,
    crate_dirs: &[&str],
) -> std::path::PathBuf {
    cell.get_or_init(|| build_binary(env_override, package, bin_name, crate_dirs))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the `berth-engine` binary, built if needed with the running test's profile;
/// `BERTH_ENGINE_BIN` overrides it with a prebuilt binary.
pub fn berth_engine_binary() -> std::path::PathBuf {
    static BIN: BinCell = BinCell::new();
    let dirs = ["engine", "proto", "berth.toml"];
    cached_binary(
        &BIN,
        "BERTH_ENGINE_BIN",
        "berth-engine",
        "berth-engine",
        &dirs,
    )
}

/// Path of the `berth-node` compute-node binary, built if needed with the running test's
/// profile; `BERTH_NODE_BIN` overrides it with a prebuilt binary.
pub fn berth_node_binary() -> std::path::PathBuf {
    static BIN: BinCell = BinCell::new();
    let dirs = ["compute-node", "proto"];
    cached_binary(&BIN, "BERTH_NODE_BIN", "berth-node", "berth-node", &dirs)
}

/// Path of the `berth` CLI binary, built if needed with the running test's profile;
/// `BERTH_CLI_BIN` overrides it with a prebuilt binary.
pub fn berth_cli_binary() -> std::path::PathBuf {
    static BIN: BinCell = BinCell::new();
    cached_binary(
        &BIN,
        "BERTH_CLI_BIN",
        "berth-cli",
        "berth",
        &["cli", "proto"],
    )
}

/// How the `*_binary` functions find a workspace binary: built with the same profile as the
/// running test, into the same target directory, so it is never stale.
///
/// Cargo only builds a package's binaries for that package's own tests (and for
/// `cargo test --workspace`, where they are already fresh). Otherwise, when the binary is
/// missing or older than any source it is built from (its crate directories, `Cargo.lock`,
/// `Cargo.toml`), `cargo build -p PACKAGE --bin BIN` runs once per test process.
fn build_binary(
    env_override: &str,
    package: &str,
    bin_name: &str,
    crate_dirs: &[&str],
) -> Result<std::path::PathBuf, String> {
    if let Some(p) = (!env_override.is_empty())
        .then(|| std::env::var_os(env_override))
        .flatten()
    {
        return Ok(p.into());
    }
    // target/<profile dir>/deps/<this test> → target/<profile dir>
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("no target dir above {}", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "test".to_string(),
        Some(other) => other.to_string(),
        None => return Err(format!("odd profile dir {}", profile_dir.display())),
    };
    let bin = profile_dir.join(format!("{bin_name}{}", std::env::consts::EXE_SUFFIX));
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let sources: Vec<_> = crate_dirs
        .iter()
        .chain(&["Cargo.lock", "Cargo.toml"])
        .map(|p| root.join(p))
        .collect();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| sources.iter().all(|p| newest_mtime(p) <= Some(b))) {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "--manifest-path", manifest, "--profile"])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["-p", package, "--bin", bin_name])
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {bin_name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if !bin.is_file() {
        return Err(format!("{} missing after the build", bin.display()));
    }
    Ok(bin)
}

/// The newest modification time of a file, or of any file under a directory (skipping
/// `target` directories).
fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    let mut newest = own;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        if entry.file_name() == "target" {
            continue;
        }
        newest = newest.max(newest_mtime(&entry.path()));
    }
    newest
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process may take it before
/// the caller does, which the caller then sees as a bind failure).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
