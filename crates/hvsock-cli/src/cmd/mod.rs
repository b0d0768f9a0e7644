//! The commands: [`Command`], one variant per command with its help, and one module per
//! command group, each holding its arguments (clap derive) and what it does ([`Run`]).
//!
//! - [`service`]: `hvsock service add|list|show|enable|disable|remove|rename|policy` (on
//!   Windows, against Hyper-V's own registry: `service::hyperv`)
//! - [`vm`]: `hvsock vm add|list|show|remove|rename|children`
//! - [`registry`]: `hvsock registry export|import`
//! - [`kvp`]: `hvsock kvp list|get|set|delete`, the key-value exchange's pools
//! - [`net`]: `hvsock listen` and `hvsock connect`
//! - [`addr`]: `hvsock addr`
//! - [`stats`]: `hvsock stats` and `hvsock listeners`
//! - [`generate`]: `hvsock completions` and `hvsock man`, from the command tree itself
//! - [`exec`], [`cp`], [`vm_shutdown`] (with `agent`): the integration services' commands,
//!   talking to `hvsock-agent` in a partition; [`ssh_proxy`]: `hvsock ssh-proxy`
//!
//! Commands write their results to the `out` they are given (stdout in `main.rs`) and return
//! a [`CliError`] on failure; they never print errors themselves nor exit, so that every
//! failure looks the same (`hvsock: <what was being done>: <why>`, exit 1) and `main.rs` is
//! the only place that ends the process. What has no meaning on a platform (hvsockd's
//! commands on Windows) is decided by the command itself, as a [`CliError::Unsupported`].
//!
//! # Adding a command
//!
//! Write `cmd/NAME.rs` with the command's arguments (a clap `Args` struct, or a `Subcommand`
//! enum for a group) and `impl Run for` them, then add `mod NAME;` and one variant to
//! [`Command`] below: its doc comment is the command's help, and the variant is its dispatch
//! too (the `commands!` macro writes the `match`). Arguments that several commands take (`ADDR`,
//! `ID|NAME`, `--json`) are in [`crate::args`].

pub mod addr;
#[cfg(target_os = "linux")]
pub mod agent;
pub mod cp;
pub mod exec;
pub mod generate;
pub mod kvp;
pub mod net;
pub mod registry;
pub mod service;
pub mod ssh_proxy;
pub mod stats;
pub mod vm;
pub mod vm_shutdown;

use std::io::Write;

use clap::Subcommand;

use crate::admin_client::AdminClient;
use crate::args::ADDRESSES;
use crate::context::Context;
use crate::error::{CliError, Doing};

/// What a command does, given its parsed arguments.
pub trait Run {
    /// Runs the command, writing its results to `out`.
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError>;
}

/// Declares [`Command`] from its variants, each holding a type that implements [`Run`], and
/// the `Run` of `Command` that dispatches to them: a command is added in one place.
macro_rules! commands {
    ($( $(#[$attr:meta])* $name:ident($args:ty), )*) => {
        /// The commands.
        #[derive(Debug, Subcommand)]
        pub enum Command {
            $( $(#[$attr])* $name($args), )*
        }

        impl Run for Command {
            fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
                match self {
                    $( Command::$name(args) => args.run(ctx, out), )*
                }
            }
        }
    };
}

commands! {
    /// Register, list, switch and remove services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Add, list and remove partitions (sandboxes, and VMs attached by hybrid vsock).
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Listen on ADDR like `nc -l` (one connection, or --keep for many).
    ///
    /// Without --keep: accept one connection, stop listening, then copy the socket to stdout
    /// and stdin to the socket until both directions have ended (EOF on stdin half-closes the
    /// connection). With --keep: serve connections at once until stopped, send nothing, and
    /// write what each sends to stdout.
    #[command(after_help = ADDRESSES)]
    Listen(net::ListenArgs),
    /// Connect to ADDR like `nc`: stdin to the socket, the socket to stdout.
    ///
    /// EOF on stdin half-closes the connection; the peer's half-close ends the copy to stdout;
    /// the command exits 0 once both have happened. A refused or timed-out connect exits 1
    /// at once with the reason.
    #[command(after_help = ADDRESSES)]
    Connect(net::ConnectArgs),
    /// Print what ADDR resolves to: VM GUID, service GUID, vsock port.
    #[command(after_help = ADDRESSES)]
    Addr(addr::AddrArgs),
    /// Print hvsockd's counters.
    ///
    /// Connections established and refused (by reason) per connecting partition and service,
    /// with their connect latency, bound listeners per partition and service, binds refused,
    /// and clients dropped for protocol errors. The same counters are at hvsockd's `/metrics`
    /// in Prometheus text.
    Stats(stats::StatsArgs),
    /// List the live listeners: where each is bound, for which service, and its backlog.
    Listeners(stats::ListenersArgs),
    /// Print the completion script for SHELL.
    ///
    /// bash: `hvsock completions bash > /usr/share/bash-completion/completions/hvsock`;
    /// zsh: `hvsock completions zsh > /usr/share/zsh/vendor-completions/_hvsock`;
    /// fish: `hvsock completions fish > /usr/share/fish/vendor_completions.d/hvsock.fish`.
    Completions(generate::CompletionsArgs),
    /// Print the manual page hvsock(1), or write every page into DIR.
    ///
    /// With --output DIR: hvsock.1 and one page per command (hvsock-service.1,
    /// hvsock-service-add.1, ...), generated from the same definition as --help.
    Man(generate::ManArgs),
    /// Export or import the whole registry (services, policies, partitions).
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Run a command in a guest or sandbox through its hvsock-agent (VM session service).
    ///
    /// stdout and stderr are kept apart, stdin is streamed, Ctrl-C and SIGTERM are forwarded;
    /// --tty runs it on a pseudo-terminal. Exit status: the command's, 128+N for death by
    /// signal N, 127 not found, 126 not executable, 255 when hvsock itself failed.
    Exec(exec::ExecArgs),
    /// Open a login shell in a guest or sandbox on a terminal (hvsock exec --tty, the user's
    /// shell).
    Shell(exec::ShellArgs),
    /// Copy files and directories in and out of a guest or sandbox: one side is VM:/path.
    Cp(cp::CpArgs),
    /// Read and set the key-value pairs exchanged with a guest or sandbox's agent.
    ///
    /// The host pool is set here and read in the guest (`hvsock-agent kvp get --pool host
    /// KEY`, /run/hvsock-agent/kvp/host/KEY); the guest pool is filled by the agent
    /// (hostname, os, kernel, agent) and guest programs, and read here.
    #[command(subcommand)]
    Kvp(kvp::KvpCommand),
    /// OpenSSH ProxyCommand: connect to VM's vsock port and hand ssh the socket.
    ///
    /// In ssh_config: `Host hvsock/* hvsock%*`, `ProxyCommand hvsock ssh-proxy %h %p`,
    /// `ProxyUseFdpass yes` (packaging/ssh/hvsock.conf); then `ssh hvsock/VM`.
    SshProxy(ssh_proxy::SshProxyArgs),
}

/// An admin API client, or the error of not having one, said as `doing`.
pub fn admin(ctx: &Context, doing: impl FnOnce() -> String) -> Result<&AdminClient, CliError> {
    ctx.admin().doing(doing)
}
