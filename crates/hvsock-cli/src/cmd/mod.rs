//! One module per command group; [`run`] dispatches a parsed command line to them.
//!
//! - [`service`]: `hvsock service add|list|show|enable|disable|remove`
//! - [`vm`]: `hvsock vm add|list|show|remove`
//! - [`net`]: `hvsock listen` and `hvsock connect`
//! - [`addr`]: `hvsock addr`
//! - [`stats`]: `hvsock stats`
//!
//! Commands write their results to the `out` they are given (stdout in `main.rs`) and return
//! a [`CliError`] on failure; they never print errors themselves, so that every failure looks
//! the same (`hvsock: <what was being done>: <why>`, exit 1).

pub mod addr;
pub mod net;
pub mod service;
pub mod stats;
pub mod vm;

use std::io::{self, Write};

use crate::admin_client::AdminError;
use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::copy::CopyError;
use crate::resolve::ResolveError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An admin API request failed.
    #[error("{doing}: {source}")]
    Admin {
        /// What was being done (`adding service "echo"`).
        doing: String,
        /// Why it failed.
        #[source]
        source: AdminError,
    },
    /// An address or partition could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// A socket operation failed.
    #[error("{doing}: {source}")]
    Socket {
        /// What was being done (`connecting to parent:echo`).
        doing: String,
        /// The library's error, written for people.
        #[source]
        source: io::Error,
    },
    /// Copying data failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Writing the command's output failed.
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    /// Whether the failure is only that stdout was closed by its reader (`hvsock … | head`),
    /// which is not worth a message.
    pub fn is_stdout_closed(&self) -> bool {
        match self {
            CliError::Output(e) => e.kind() == io::ErrorKind::BrokenPipe,
            CliError::Copy(e) => e.is_stdout_closed(),
            _ => false,
        }
    }
}

/// Adds what was being done to an admin API error.
pub trait Doing<T> {
    /// Wraps the error with `doing()`.
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T> Doing<T> for Result<T, AdminError> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|source| CliError::Admin {
            doing: doing(),
            source,
        })
    }
}

/// Runs the command, writing its output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let ctx = Context::new(cli.dir);
    match cli.command {
        Command::Service(cmd) => service::run(&ctx, cmd, out),
        Command::Vm(cmd) => vm::run(&ctx, cmd, out),
        Command::Listen(args) => net::listen(&ctx, args),
        Command::Connect(args) => net::connect(&ctx, args),
        Command::Addr(args) => addr::run(&ctx, args, out),
        Command::Stats(args) => stats::run(&ctx, args.json, out),
    }
}

/// An admin API client, or the error of not having one, said as `doing`.
pub fn admin(
    ctx: &Context,
    doing: impl FnOnce() -> String,
) -> Result<&crate::admin_client::AdminClient, CliError> {
    ctx.admin().doing(doing)
}
