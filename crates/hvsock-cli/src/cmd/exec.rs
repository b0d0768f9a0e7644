//! `hvsock exec VM [--tty] [--env K=V]... [--cwd DIR] [--user USER] -- CMD [ARGS...]` and
//! `hvsock shell VM`: run a command in a guest or sandbox through its agent's VM session
//! service (`hvsock_agent::session`), PowerShell Direct for Linux guests.
//!
//! The command's stdout and stderr come out on ours, kept apart; our stdin is its stdin;
//! Ctrl-C, `SIGTERM`, `SIGHUP` and `SIGQUIT` are forwarded, and with `--tty` (always for
//! `shell`) it runs on a pseudo-terminal that follows this terminal's size. Exit status: the
//! command's own, 128 + N if signal N killed it (as a shell reports), 127 if it was not found,
//! 126 if it may not run, and 255 if hvsock itself failed (the reason on stderr), as ssh does.

use std::io::{self, Write};

use crate::agent_args::{ExecArgs, ShellArgs};
use hvsock_agent::services::SESSION;
use hvsock_agent::session::{self, Start, client};

use super::CliError;
use crate::context::Context;

/// Runs `exec`; exits with the command's status.
pub fn exec(ctx: &Context, args: ExecArgs) -> Result<(), CliError> {
    let start = Start {
        argv: args.command,
        env: args.env,
        cwd: args.cwd,
        user: args.user,
        tty: args.tty.then(client::tty_request),
        login: false,
    };
    run(ctx, &args.vm, start)
}

/// Runs `shell`; exits with the shell's status.
pub fn shell(ctx: &Context, args: ShellArgs) -> Result<(), CliError> {
    let start = Start {
        user: args.user,
        tty: Some(client::tty_request()),
        login: true,
        ..Start::default()
    };
    run(ctx, &args.vm, start)
}

fn run(ctx: &Context, vm: &str, start: Start) -> Result<(), CliError> {
    if let Err(e) = start.validate() {
        return Err(CliError::Socket {
            doing: "checking the command".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        });
    }
    let stream = match super::agent::connect(ctx, vm, SESSION) {
        Ok(s) => s,
        Err(e) => finish(255, Some(&e.to_string())),
    };
    match session::client::run(stream, start) {
        Ok(exit) => finish(exit.shell_status(), None),
        Err(e) => finish(e.exit_status(), Some(&format!("in {vm}: {e}"))),
    }
}

/// Ends the process with `status`, after the message if any (the terminal is restored by now).
fn finish(status: i32, message: Option<&str>) -> ! {
    let _ = io::stdout().flush();
    if let Some(m) = message {
        let _ = writeln!(io::stderr(), "hvsock: {m}");
    }
    std::process::exit(status)
}
