//! `berth-engine`: the placement engine's gRPC server. Parses flags, loads `berth.toml`,
//! sets up logging and metrics, and calls `api::serve` until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::api::{self, BerthConfig};
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
        /// Provider shards (power of two; 0 = 4 × cores).
        #[arg(long, env = "BERTH_SHARDS")]
        shards: Option<usize>,
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
            shards,
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
            if let Some(v) = shards {
                cfg.engine.shards = v;
            }
            security.apply(&mut cfg.server);
            init_logging(&cfg.server.log);
            match serve(cfg) {
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

fn serve(cfg: BerthConfig) -> Result<(), String> {
    raise_open_file_limit();
    let engine =
        Arc::new(Engine::new(cfg.engine.clone()).map_err(|e| format!("configuration: {e}"))?);
    // Worker threads = cores: more runtimes or threads than cores only adds latency.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
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
                api::serve(engine, &server_cfg, &compute_cfg, listener, async {
                    let _ = stop_rx.await;
                })
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
