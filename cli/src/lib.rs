//! `berth`, the command-line client of the Berth placement engine.
//!
//! The binary is [`run`]; the pieces are testable on their own:
//! - [`args`]: the clap command tree and the parsers of `CLASS=TOTAL,ratio=X`-style values;
//! - [`auth`]: the token (--token, BERTH_TOKEN, or the local engine's admin.token), TLS
//!   (--ca-cert) and the hints for UNAUTHENTICATED / PERMISSION_DENIED;
//! - [`commands`]: what each command sends to the engine (Placement, Scheduler, Catalog,
//!   Servers), with request ids on every mutation of a server or host;
//! - [`output`]: stable view structs printed as tables or `-o json`;
//! - [`table`]: the aligned-column formatter;
//! - [`error`]: `error: <CODE>: <message>` and the exit codes (1 engine error, or a failure
//!   the engine reported inside an answer, 2 usage, 3 engine unreachable).

// The workspace warns on `unwrap` because on outside data it is a bug; in tests it is the
// assertion style (see the root Cargo.toml), so test builds allow it.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod args;
pub mod auth;
pub mod commands;
pub mod error;
pub mod output;
pub mod table;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::error::CliError;

/// Parses `argv`, runs the command, prints the result on stdout or the error on stderr,
/// and returns the process exit code.
pub fn run<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match args::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too, with exit code 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(error::EXIT_USAGE));
        }
    };
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(commands::execute(&cli)),
        Err(e) => Err(CliError::Output(e)),
    };
    let result = result.and_then(|out| {
        print_stdout(&out.render(cli.output))?;
        Ok(out.failure())
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        // The engine answered, but reported a failure inside the answer (a node action
        // that failed, a server that could not be built): printed above, an error here.
        Ok(Some(failure)) => {
            let _ = std::io::stderr().write_all(format!("error: {failure}\n").as_bytes());
            ExitCode::from(error::EXIT_RPC)
        }
        Err(e) => {
            let _ = std::io::stderr().write_all(e.render().as_bytes());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes to stdout; a closed pipe (`berth host list | head -1`) is not an error.
fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}
