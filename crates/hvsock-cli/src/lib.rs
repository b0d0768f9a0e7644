//! `hvsock`: the command-line client of hvsockd, as a library under a thin `main.rs`, so that
//! other front ends (completions, man pages, tests) reuse the command tree and the admin client.
//!
//! ```text
//! hvsock service add NAME [--id GUID | --port N] [--disabled]   # prints the service GUID
//! hvsock service list | show ID|NAME | enable ID|NAME | disable ID|NAME
//! hvsock service remove [--if-exists] ID|NAME | rename ID|NAME NEW
//! hvsock service policy ID|NAME [--connect LIST|--connect-any] [--bind LIST|--bind-any]
//!                               [--wildcard-bind yes|no] [--default]
//! hvsock vm add NAME [--id GUID] [--parent ID|NAME] [--hybrid-vsock PATH]   # prints the VmId
//! hvsock vm list | show ID|NAME | children ID|NAME | rename ID|NAME NEW
//! hvsock vm remove [--if-exists] ID|NAME
//! hvsock registry export [--output FILE] | import FILE [--replace] [--dry-run]
//! hvsock listeners
//! hvsock listen [--as VM] [--keep] ADDR
//! hvsock connect [--as VM] [--timeout MS] ADDR
//! hvsock addr ADDR
//! hvsock stats
//! hvsock listen --keep --exec CMD ADDR
//! hvsock exec VM [--tty] [--env K=V]... [--cwd DIR] [--user USER] -- CMD [ARGS...]
//! hvsock shell VM [--user USER]
//! hvsock cp [-r] [-v] SRC DST                 # one side VM:/path
//! hvsock vm shutdown VM [--reboot] [--force] [--timeout SECS]
//! hvsock ssh-proxy HOST [PORT]                # OpenSSH ProxyCommand with ProxyUseFdpass
//! ```
//!
//! `exec`, `shell`, `cp` and `vm shutdown` talk to `hvsock-agent` in the partition; the
//! protocols and their host side are in the `hvsock_agent` crate, so those commands only
//! parse flags. `exec` and `shell` exit with the command's status (see [`cmd::exec`]).
//!
//! Every command takes `--dir DIR`; list, show, children, policy, addr, stats, listeners and
//! registry import take `--json`. Exit status: 0
//! on success, 1 on failure (the reason on stderr as `hvsock: <doing>: <why>`), 2 for a
//! malformed command line (clap's message). A closed stdout (`hvsock … | head`) ends the
//! command quietly.
//!
//! # Modules
//!
//! - [`cli`]: the whole command line ([`cli::Cli`]: `--dir` and one command) and its run;
//! - [`cmd`]: [`cmd::Command`] (one variant per command, with its help) and one module per
//!   command group, each with its own arguments (clap derive) and its [`cmd::Run`]; adding a
//!   command is one new file there plus its variant (see [`cmd`]);
//! - [`args`]: the arguments several commands share (`ADDR`, `ID|NAME`, `--json`), their
//!   checks, and the help texts about addresses and exit codes;
//! - [`error`]: [`error::CliError`], why a command failed; only `main.rs` turns it into an
//!   exit status;
//! - [`context`]: `--dir`, the directories, and the admin client made on first use;
//! - [`admin_client`]: HTTP/1.1 + JSON over `admin.sock` (hyper), with typed routes;
//! - [`api`]: the admin API's JSON objects as Rust types;
//! - [`resolve`]: `VM:SERVICE` to an address, `--as VM` to a transport;
//! - [`copy`]: the byte pumps between stdio and a connection (nc's half-close rules);
//! - [`output`]: tables, `key: value` fields and JSON;
//! - `hyperv_registry` (Windows): the Hyper-V host's registry of services, which
//!   `cmd::service::hyperv` manages there.
//!
//! The dependencies run one way: `cli` → `cmd` → (`args`, `resolve`, `context`, `output`,
//! `copy`, `admin_client`, `hyperv_registry`), with `error` naming the errors of those below it.
//!
//! # Windows
//!
//! There is no hvsockd on Windows: Hyper-V itself is the provider. `hvsock service
//! add|list|show|remove` manage the host's registry of services directly (see
//! `hyperv_registry`), `listen` and `connect` use `AF_HYPERV`, and SERVICE names in
//! addresses are looked up in that registry. `service enable|disable`, `vm …`, `stats`,
//! `--as` and `--dir` belong to hvsockd and fail with a message that says why.

// A command fails once, on its way out: the size of its error costs nothing measurable, and
// boxing every variant would only add noise (clippy 1.95 started to flag it).
#![allow(clippy::result_large_err)]

pub mod admin_client;
pub mod api;
pub mod args;
pub mod cli;
pub mod cmd;
pub mod context;
pub mod copy;
pub mod error;
#[cfg(any(windows, test))]
pub mod hyperv_registry;
pub mod output;
pub mod resolve;
