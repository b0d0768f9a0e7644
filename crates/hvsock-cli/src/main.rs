//! The `hvsock` binary: parses the command line, runs it (see the `hvsock_cli` library), and
//! turns the outcome into the exit status. The only place where the process ends.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use hvsock_cli::cli::Cli;
use hvsock_cli::error::CliError;

fn main() -> ExitCode {
    // Usage errors exit 2 here, --help and --version 0.
    let cli = Cli::parse();
    // Not locked for the whole run: `listen --keep` writes from one thread per connection.
    let mut out = io::stdout();
    let result = match cli.run(&mut out) {
        Ok(()) => out.flush().map_err(CliError::from),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// The exit status of a failed command, with the reason on stderr: 1, or a quiet 0 when the
/// failure is only that stdout was closed by its reader (`hvsock … | head`).
fn report(err: &CliError) -> ExitCode {
    if err.is_stdout_closed() {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(io::stderr(), "hvsock: {err}");
    ExitCode::FAILURE
}
