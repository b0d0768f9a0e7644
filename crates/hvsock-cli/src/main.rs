//! The `hvsock` binary: parses the command line and runs it (see the `hvsock_cli` library).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use hvsock_cli::cmd::{self, CliError};
use hvsock_cli::{cli::Cli, exit_with};

fn main() -> ExitCode {
    // Usage errors exit 2 here, --help and --version 0.
    let cli = Cli::parse();
    // Not locked for the whole run: `listen --keep` writes from one thread per connection.
    let mut out = io::stdout();
    let result = match cmd::run(cli, &mut out) {
        Ok(()) => out.flush().map_err(CliError::from),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit_with(&err),
    }
}
