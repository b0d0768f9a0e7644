//! The `hvsock` binary: parses the command line and runs it (see the `hvsock_cli` library).

#![allow(clippy::result_large_err)] // see the library's root

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use hvsock_cli::{cli::Cli, cmd, exit_with};

fn main() -> ExitCode {
    // Usage errors exit 2 here, --help and --version 0.
    let cli = Cli::parse();
    // Not locked for the whole run: `listen --keep` writes from one thread per connection.
    let mut out = io::stdout();
    match cmd::run(cli, &mut out).and_then(|()| Ok(out.flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit_with(&err),
    }
}
