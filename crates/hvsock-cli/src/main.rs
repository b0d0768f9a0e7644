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
/// failure is only that stdout was closed by its reader (`hvsock … | head`), or the status of
/// a command run in a guest (`hvsock exec`).
fn report(err: &CliError) -> ExitCode {
    if err.is_stdout_closed() {
        return ExitCode::SUCCESS;
    }
    // `hvsock exec`: the guest command's own status.
    if let CliError::Exited { status, message } = err {
        if let Some(message) = message {
            let _ = writeln!(io::stderr(), "hvsock: {message}");
        }
        return ExitCode::from(*status);
    }
    let _ = writeln!(io::stderr(), "hvsock: {err}");
    ExitCode::FAILURE
}
