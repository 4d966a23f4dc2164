//! `berth-load`: drives a Berth engine over gRPC with many concurrent clients and reports
//! throughput, latency percentiles, errors and a final audit. See `berth-load --help`.

use std::process::ExitCode;

use clap::Parser;

// As in berth-engine: glibc's malloc/free (with consolidation) took ~17% of the harness's
// CPU per claim; the harness should cost the shared cores as little as it can.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = berth_load::Args::parse();
    // One thread: a single-threaded runtime spends about half the CPU per call of a
    // multi-threaded one (no hand-offs between workers), and the cores left over serve the
    // engine (a spawned engine gets --engine-threads = cores − 1; DESIGN.md: total threads
    // = cores).
    let rt = match tokio::runtime::Builder::new_current_thread()
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
