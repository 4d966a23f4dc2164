//! `berth-load`: drives a Berth engine over gRPC with many concurrent clients and reports
//! throughput, latency percentiles, errors and a final audit. See `berth-load --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = berth_load::Args::parse();
    // Harness and engine share the machine: worker threads = cores (DESIGN.md).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-load: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(berth_load::run(args)) {
        Ok(report) => {
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("berth-load: {e}");
            ExitCode::from(1)
        }
    }
}
