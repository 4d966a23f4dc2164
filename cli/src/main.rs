//! `berth`: command-line client for the Berth placement engine. See the `berth_cli` library.

fn main() -> std::process::ExitCode {
    berth_cli::run(std::env::args_os())
}
