//! `berth-node`: the compute-node daemon. Parses flags, sets up logging, opens the hypervisor
//! and runs the agent against the engine until SIGINT or SIGTERM; with `--once` it prints
//! what the node would register instead.

use std::process::ExitCode;

use berth_node::agent::{self, AgentConfig};
use berth_node::config::{Cli, NodeConfig};
use berth_node::host;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match NodeConfig::load(&cli) {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e.to_string()),
    };
    init_logging(&cfg.log);
    let hypervisor = match host::open(&cfg) {
        Ok(hypervisor) => hypervisor,
        Err(e) => return fail(&e.to_string()),
    };
    if cli.once {
        return match host::describe(&cfg, &*hypervisor) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        };
    }
    // One thread is plenty for one stream and a heartbeat; hypervisor calls run on the
    // blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let agent_cfg = AgentConfig::from_node_config(&cfg);
    match runtime.block_on(agent::run(agent_cfg, hypervisor, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("berth-node: {msg}");
    ExitCode::from(2)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGINT or SIGTERM. A signal that cannot be watched is logged and ignored (the
/// other still works).
async fn shutdown_signal() {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGINT");
                std::future::pending().await
            }
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending().await
            }
        }
    };
    let signal = tokio::select! {
        s = interrupt => s,
        s = terminate => s,
    };
    tracing::info!(signal, "shutting down");
}
