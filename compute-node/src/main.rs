//! `berth-node`: the compute-node daemon. Parses flags, sets up logging, opens libvirt and
//! prints what the node would register. Connecting to the engine arrives with the Nodes
//! stream.

use std::process::ExitCode;

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
    let report =
        host::open_hypervisor(&cfg).and_then(|hypervisor| host::describe(&cfg, &hypervisor));
    match report {
        Ok(text) => print!("{text}"),
        Err(e) => return fail(&e.to_string()),
    }
    if cli.once {
        return ExitCode::SUCCESS;
    }
    let engine = cfg.engine.as_deref().unwrap_or("(no --engine given)");
    fail(&format!(
        "connecting to the engine {engine} arrives with the Nodes stream (not implemented yet); \
         use --once to print this node's inventory and domains"
    ))
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
