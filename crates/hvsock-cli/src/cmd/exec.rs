//! `hvsock exec VM [--tty] [--env K=V]... [--cwd DIR] [--user USER] -- CMD [ARGS...]` and
//! `hvsock shell VM`: run a command in a guest or sandbox through its agent's VM session
//! service (`hvsock_agent::session`), PowerShell Direct for Linux guests.
//!
//! The command's stdout and stderr come out on ours, kept apart; our stdin is its stdin;
//! Ctrl-C, `SIGTERM`, `SIGHUP` and `SIGQUIT` are forwarded, and with `--tty` (always for
//! `shell`) it runs on a pseudo-terminal that follows this terminal's size. Exit status: the
//! command's own, 128 + N if signal N killed it (as a shell reports), 127 if it was not found,
//! 126 if it may not run, and 255 if hvsock itself failed (the reason on stderr), as ssh does.

#[cfg(target_os = "linux")]
use std::io;
use std::io::Write;

use clap::Args;
#[cfg(target_os = "linux")]
use hvsock_agent::services::SESSION;
#[cfg(target_os = "linux")]
use hvsock_agent::session::{self, Start, client};

use super::Run;
use crate::context::Context;
use crate::error::CliError;

/// `hvsock exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Run it on a pseudo-terminal (interactive programs, Ctrl-C as a key, window size).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for it; repeatable.
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Its working directory [default: the user's home].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// The guest user to run it as [default: the agent's, root].
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(value_name = "CMD", last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `hvsock shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The guest user whose login shell to run [default: the agent's, root].
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

impl Run for ExecArgs {
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn run(self, ctx: &Context, _out: &mut dyn Write) -> Result<(), CliError> {
        #[cfg(target_os = "linux")]
        return exec(ctx, self);
        #[cfg(not(target_os = "linux"))]
        Err(CliError::unsupported(
            "`hvsock exec`",
            "the integration services' clients (hvsock-agent's protocols) are built for Linux only",
        ))
    }
}

impl Run for ShellArgs {
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn run(self, ctx: &Context, _out: &mut dyn Write) -> Result<(), CliError> {
        #[cfg(target_os = "linux")]
        return shell(ctx, self);
        #[cfg(not(target_os = "linux"))]
        Err(CliError::unsupported(
            "`hvsock shell`",
            "the integration services' clients (hvsock-agent's protocols) are built for Linux only",
        ))
    }
}

#[cfg(target_os = "linux")]
/// Runs `exec`; ends with the command's status.
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

#[cfg(target_os = "linux")]
/// Runs `shell`; ends with the shell's status.
pub fn shell(ctx: &Context, args: ShellArgs) -> Result<(), CliError> {
    let start = Start {
        user: args.user,
        tty: Some(client::tty_request()),
        login: true,
        ..Start::default()
    };
    run(ctx, &args.vm, start)
}

#[cfg(target_os = "linux")]
fn run(ctx: &Context, vm: &str, start: Start) -> Result<(), CliError> {
    if let Err(e) = start.validate() {
        return Err(CliError::Socket {
            doing: "checking the command".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        });
    }
    let stream = match super::agent::connect(ctx, vm, SESSION) {
        Ok(s) => s,
        Err(e) => return Err(CliError::exited(255, Some(e.to_string()))),
    };
    // The terminal is back to its mode by the time `run` returns.
    match session::client::run(stream, start) {
        Ok(exit) => match exit.shell_status() {
            0 => Ok(()),
            status => Err(CliError::exited(status, None)),
        },
        Err(e) => Err(CliError::exited(
            e.exit_status(),
            Some(format!("in {vm}: {e}")),
        )),
    }
}
