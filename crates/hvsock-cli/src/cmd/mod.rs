//! One module per command group; [`run`] dispatches a parsed command line to them.
//!
//! - [`service`]: `hvsock service add|list|show|enable|disable|remove|rename|policy`
//! - [`vm`]: `hvsock vm add|list|show|remove|rename|children`
//! - [`registry`]: `hvsock registry export|import`
//! - [`net`]: `hvsock listen` and `hvsock connect`
//! - [`addr`]: `hvsock addr`
//! - [`stats`]: `hvsock stats` and `hvsock listeners`
//! - [`generate`]: `hvsock completions` and `hvsock man`, from the command tree itself
//! - [`exec`], [`cp`], [`vm_shutdown`] (with [`agent`]): the integration services' commands
//! - [`listen_exec`]: `hvsock listen --keep --exec`; [`ssh_proxy`]: `hvsock ssh-proxy`
//!
//! Commands write their results to the `out` they are given (stdout in `main.rs`) and return
//! a [`CliError`] on failure; they never print errors themselves, so that every failure looks
//! the same (`hvsock: <what was being done>: <why>`, exit 1).

pub mod addr;
#[cfg(unix)]
pub mod agent;
#[cfg(unix)]
pub mod cp;
#[cfg(unix)]
pub mod exec;
pub mod generate;
#[cfg(unix)]
pub mod listen_exec;
pub mod net;
pub mod registry;
pub mod serve;
pub mod service;
#[cfg(unix)]
pub mod ssh_proxy;
pub mod stats;
pub mod vm;
#[cfg(unix)]
pub mod vm_shutdown;

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
    /// The Hyper-V registry (Windows) refused or failed.
    #[cfg(any(windows, test))]
    #[error(transparent)]
    Registry(#[from] crate::hyperv_registry::RegistryError),
    /// A command or option that has no meaning on this platform.
    #[error("{what} is not available on {}: {why}", std::env::consts::OS)]
    Unsupported {
        /// The command or option.
        what: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// Writing a file failed.
    #[error("{doing} {}: {source}", path.display())]
    File {
        /// What was being done (`writing the manual page`).
        doing: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
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
#[cfg(not(windows))]
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let ctx = Context::new(cli.dir);
    match cli.command {
        Command::Service(cmd) => service::run(&ctx, cmd, out),
        Command::Vm(cmd) => vm::run(&ctx, cmd, out),
        Command::Listen(args) => net::listen(&ctx, args),
        Command::Connect(args) => net::connect(&ctx, args),
        Command::Addr(args) => addr::run(&ctx, args, out),
        Command::Stats(args) => stats::run(&ctx, args.json, out),
        Command::Listeners(args) => stats::listeners(&ctx, args.json, out),
        Command::Registry(cmd) => registry::run(&ctx, cmd, out),
        Command::Completions { shell } => generate::completions(shell, out),
        Command::Man { output } => generate::man(output.as_deref(), out),
        #[cfg(unix)]
        Command::Exec(args) => exec::exec(&ctx, args),
        #[cfg(unix)]
        Command::Shell(args) => exec::shell(&ctx, args),
        #[cfg(unix)]
        Command::Cp(args) => cp::run(&ctx, args),
        #[cfg(unix)]
        Command::SshProxy(args) => ssh_proxy::run(&ctx, args),
    }
}

/// Why `--as` means nothing on Windows.
#[cfg(windows)]
const AS_VM: &str = "it acts through an hvsockd partition endpoint; on Windows a program acts \
     from the partition it runs in (run hvsock inside the VM to act from the VM)";

/// Runs the command on Windows, where Hyper-V is the provider: services are in its registry,
/// connections are `AF_HYPERV`, and hvsockd's commands are errors that say why.
#[cfg(windows)]
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    use crate::hyperv_registry::unsupported;
    if cli.dir.is_some() {
        return Err(unsupported(
            "--dir",
            "it names an hvsockd directory, and hvsockd runs on Linux; on Windows services are \
             in the Hyper-V registry and connections use AF_HYPERV (a script for both platforms \
             can set HVSOCK_DIR for Linux instead)",
        ));
    }
    let ctx = Context::new(None);
    match cli.command {
        Command::Service(cmd) => crate::hyperv_registry::run(cmd, out),
        Command::Vm(_) => Err(unsupported(
            "`hvsock vm`",
            "it manages hvsockd's partitions; on Windows VMs are Hyper-V's (Hyper-V Manager, or \
             PowerShell: Get-VM; a VM's VmId is (Get-VM NAME).Id)",
        )),
        Command::Listen(args) if args.as_vm.is_some() => Err(unsupported("--as", AS_VM)),
        Command::Connect(args) if args.as_vm.is_some() => Err(unsupported("--as", AS_VM)),
        Command::Listen(args) => net::listen(&ctx, args),
        Command::Connect(args) => net::connect(&ctx, args),
        Command::Addr(args) => addr::run(&ctx, args, out),
        Command::Stats(_) => Err(unsupported(
            "`hvsock stats`",
            "it reads hvsockd's counters, and there is no hvsockd on Windows",
        )),
        Command::Listeners(_) => Err(unsupported(
            "`hvsock listeners`",
            "it lists hvsockd's listeners, and there is no hvsockd on Windows",
        )),
        Command::Registry(_) => Err(unsupported(
            "`hvsock registry`",
            "it exports and imports hvsockd's registry, and there is no hvsockd on Windows",
        )),
        Command::Completions { shell } => generate::completions(shell, out),
        Command::Man { output } => generate::man(output.as_deref(), out),
    }
}

/// An admin API client, or the error of not having one, said as `doing`.
pub fn admin(
    ctx: &Context,
    doing: impl FnOnce() -> String,
) -> Result<&crate::admin_client::AdminClient, CliError> {
    ctx.admin().doing(doing)
}
