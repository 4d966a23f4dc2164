//! `berth-engine`: the placement engine's gRPC server. Parses flags, loads `berth.toml`,
//! sets up logging and metrics, and calls `api::serve` until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::api::{self, BerthConfig, Restored};
use berth_engine::store::{Store, StoreConfig};
use berth_engine::{Engine, auth};
use clap::{Parser, Subcommand};

// mimalloc instead of glibc malloc: a gRPC call allocates dozens of small buffers (headers,
// frames, messages), and under callgrind glibc's malloc/free were ~20% of the engine's
// instructions on the loopback claim benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Berth placement engine: decides where virtual machines go and claims their resources.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the gRPC API (Placement, Scheduler, Catalog, Servers, the compute nodes' Nodes
    /// stream, health, reflection).
    ///
    /// Example: berth-engine serve --listen 0.0.0.0:50051 --config /etc/berth/berth.toml
    Serve {
        /// Configuration file (TOML; see berth.toml in the repository for every setting).
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address [default: 127.0.0.1:50051, or [server] listen].
        #[arg(long, env = "BERTH_LISTEN")]
        listen: Option<String>,
        /// Prometheus /metrics address; "" disables [default: 127.0.0.1:9090].
        #[arg(long, env = "BERTH_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// Log filter, e.g. "info" or "berth_engine=debug" [default: info].
        #[arg(long, env = "BERTH_LOG")]
        log: Option<String>,
        /// Threads serving gRPC, each owning a share of the connections (0 = one per core).
        #[arg(long, env = "BERTH_THREADS")]
        threads: Option<usize>,
        /// HTTP/2 implementation serving gRPC: berth (berth-wire, the
        /// cheaper) or tonic (hyper + h2) [default: berth].
        #[arg(long, env = "BERTH_TRANSPORT", value_enum)]
        transport: Option<berth_engine::api::Transport>,
        /// Provider shards (power of two; 0 = one per core).
        #[arg(long, env = "BERTH_SHARDS")]
        shards: Option<usize>,
        /// Data directory: every acknowledged change is kept here and survives a crash;
        /// the token signing key and the admin token (<data-dir>/admin.token, mode 0600,
        /// which the berth CLI reads) live here too [default: ./berth-data, or [store]
        /// data_dir].
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Keep no engine state on disk (a pure in-memory engine; everything is gone when it
        /// stops). The data directory still holds the token key and admin token unless
        /// --insecure.
        #[arg(long, env = "BERTH_EPHEMERAL", conflicts_with = "recover")]
        ephemeral: bool,
        /// Start even if the data directory is damaged: load every record whose checksum
        /// verifies, move the damaged files to <data-dir>/damaged-<time>/ and report what
        /// was lost. Without it, damage stops the start (a torn last record — a write cut
        /// by a crash, never acknowledged — is always dropped with a warning).
        #[arg(long)]
        recover: bool,
        #[command(flatten)]
        security: auth::cli::SecurityArgs,
    },
    /// Print the default configuration as TOML.
    DefaultConfig,
    /// Bearer tokens for callers (see `token issue --help`).
    #[command(subcommand)]
    Token(auth::cli::TokenCommand),
    /// Certificates for TLS and node mTLS (see `cert init --help`).
    #[command(subcommand)]
    Cert(auth::cli::CertCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DefaultConfig => {
            print!("{}", include_str!("../../berth.toml"));
            ExitCode::SUCCESS
        }
        Command::Token(cmd) => done(auth::cli::run_token(cmd)),
        Command::Cert(cmd) => done(auth::cli::run_cert(cmd)),
        Command::Serve {
            config,
            listen,
            metrics_listen,
            log,
            threads,
            transport,
            shards,
            data_dir,
            ephemeral,
            recover,
            security,
        } => {
            let mut cfg = match &config {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => match BerthConfig::from_toml(&text) {
                        Ok(c) => c,
                        Err(e) => return fail(&format!("{}: {e}", path.display())),
                    },
                    Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
                },
                None => BerthConfig::default(),
            };
            if let Some(v) = listen {
                cfg.server.listen = v;
            }
            if let Some(v) = metrics_listen {
                cfg.server.metrics_listen = v;
            }
            if let Some(v) = log {
                cfg.server.log = v;
            }
            if let Some(v) = threads {
                cfg.server.threads = v;
            }
            if let Some(v) = transport {
                cfg.server.transport = v;
            }
            if let Some(v) = shards {
                cfg.engine.shards = v;
            }
            if let Some(v) = data_dir {
                cfg.store.data_dir = v;
            }
            if ephemeral {
                cfg.store.ephemeral = true;
            }
            security.apply(&mut cfg.server);
            // One data directory: the store's, which also keeps the token files.
            cfg.server.data_dir = cfg.store.data_dir.clone();
            init_logging(&cfg.server.log);
            match serve(cfg, recover) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

fn done(r: Result<(), String>) -> ExitCode {
    r.map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("berth-engine: {msg}");
    ExitCode::from(1)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or journald gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// Raises the soft open-file limit to the hard one: every compute node holds a connection
/// (10,000 nodes need 10,000 descriptors), and the usual soft default is 1,024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let before = lim.current;
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => tracing::debug!(?before, now = ?lim.current, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    if let Some(n) = lim.current.filter(|&n| n < 4096) {
        tracing::warn!(
            limit = n,
            "open-file limit is low: each compute node needs one; raise it (ulimit -n / LimitNOFILE)"
        );
    }
}

/// Opens the data directory and rebuilds the engine from it, saying what it found.
fn open_store(engine: &Engine, cfg: &StoreConfig, recover: bool) -> Result<Restored, String> {
    let dir = cfg.data_dir.display().to_string();
    tracing::info!(data_dir = %dir, "opening the data directory");
    let progress = |what: &str, done: u64, total: u64| {
        tracing::info!("reading {what}: {done} of {total}");
    };
    let (store, state, report) = Store::open(cfg, recover, &progress)?;
    if let Some((path, records)) = &report.snapshot {
        tracing::info!(records, "snapshot {} loaded", path.display());
    }
    if let Some((path, offset, bytes)) = &report.torn_tail {
        tracing::warn!(
            "{}: dropped a torn record at byte {offset} ({bytes} bytes): a write cut by the last stop, never acknowledged",
            path.display()
        );
    }
    for d in &report.damage {
        tracing::error!("damaged: {d}");
    }
    if let Some(to) = &report.moved_to {
        tracing::error!(
            "recovered what verified; the damaged files are kept in {}",
            to.display()
        );
    }
    let started = std::time::Instant::now();
    let restored = engine.restore(&state);
    for s in &restored.skipped {
        tracing::error!("not restored: {s}");
    }
    tracing::info!(
        read_ms = report.elapsed.as_millis() as u64,
        rebuild_ms = started.elapsed().as_millis() as u64,
        log_records = report.records,
        "state restored from {dir}: {}",
        state.summary()
    );
    engine.attach_store(store);
    Ok(Restored {
        state,
        snapshot_now: report.moved_to.is_some(),
    })
}

fn serve(cfg: BerthConfig, recover: bool) -> Result<(), String> {
    // Refuse an exposed listener before a start-up that may take seconds (checked again,
    // with the files, once the port is bound).
    if let Ok(addr) = cfg.server.listen.parse::<SocketAddr>() {
        cfg.server.security().check(addr)?;
    }
    raise_open_file_limit();
    let engine =
        Arc::new(Engine::new(cfg.engine.clone()).map_err(|e| format!("configuration: {e}"))?);
    let restored = if cfg.store.ephemeral {
        tracing::warn!(
            "ephemeral: nothing is written to disk; everything is lost when the engine stops"
        );
        None
    } else {
        Some(open_store(&engine, &cfg.store, recover)?)
    };
    // The gRPC calls run on their own threads (`[server] threads`, api::serve); this one
    // accepts connections and runs the timers, the signal handlers and the exporter.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        ignore_file_size_signal();
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
        if !cfg.server.metrics_listen.is_empty() {
            let addr: SocketAddr = cfg
                .server
                .metrics_listen
                .parse()
                .map_err(|e| format!("metrics_listen {:?}: {e}", cfg.server.metrics_listen))?;
            api::install_metrics(addr)?;
            tracing::info!(%addr, "Prometheus metrics at /metrics");
        }
        api::spawn_gauges(engine.clone(), Duration::from_secs(5));
        let grace = Duration::from_secs(cfg.server.shutdown_grace_seconds);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let engine = engine.clone();
            let server_cfg = cfg.server.clone();
            let compute_cfg = cfg.compute.clone();
            async move {
                api::serve_restored(
                    engine,
                    &server_cfg,
                    &compute_cfg,
                    listener,
                    async {
                        let _ = stop_rx.await;
                    },
                    restored,
                )
                .await
                .map_err(|e| e.to_string())
            }
        });
        let mut server = server;
        tokio::select! {
            _ = shutdown_signal() => {}
            // The server stopped on its own: it could not start (security settings, TLS
            // files), so say why now rather than at SIGTERM.
            r = &mut server => return r.map_err(|e| format!("server task failed: {e}"))?,
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(grace, server).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("server task failed: {e}")),
            Err(_) => Err(format!(
                "in-flight calls did not finish within {}s",
                grace.as_secs()
            )),
        }
    })
}

/// A write past RLIMIT_FSIZE raises SIGXFSZ, which kills the process by default; handled,
/// the write fails with EFBIG instead, and the store refuses changes and keeps serving
/// reads, as for a full disk.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        const SIGXFSZ: i32 = 25;
        if let Ok(mut s) = signal(SignalKind::from_raw(SIGXFSZ)) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::warn!("SIGXFSZ: a write went past the file-size limit");
                }
            });
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
