//! The command line: every command, flag and argument, declared with clap's derive API.
//!
//! Arguments are checked here as far as they can be without hvsockd (GUIDs, ports, names,
//! the syntax of `VM:SERVICE`), so that a malformed command line is a usage error (exit 2,
//! clap's message) and never reaches the daemon. [`Cli::command`](clap::CommandFactory) is
//! the whole tree, for completions and man pages.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hvsock::addr::{AddrError, check_partition_name, check_service_name};
use hvsock::{AddrSpec, ServiceId, VmId};

macro_rules! address_help {
    () => {
        "\
Addresses (ADDR) are VM:SERVICE.
  VM       a GUID, a partition name (`host` is the root), or one of
           wildcard, zero, children, loopback, parent, broadcast, silohost
  SERVICE  a GUID, a registered service name, or a decimal vsock port
           (2761 is 00000ac9-facb-11e6-bd58-64006a7986d3)
Names are resolved through hvsockd's admin API; GUIDs, keywords and ports need no API."
    };
}

macro_rules! exit_status_help {
    () => {
        "\
Exit status: 0 on success, 1 when the command failed (the reason is on stderr),
2 for a malformed command line."
    };
}

/// What `VM:SERVICE` means: in `--help`, and the ADDRESSES section of the manual pages.
pub const ADDRESS_HELP: &str = address_help!();
/// The exit codes: in `--help`, and the EXIT STATUS section of the manual pages.
pub const EXIT_STATUS_HELP: &str = exit_status_help!();
/// The text after `--help` of commands that take an address.
pub const ADDRESSES: &str = concat!(address_help!(), "\n\n", exit_status_help!());

/// Manage hvsockd's services and partitions, and listen or connect like nc.
#[derive(Debug, Parser)]
#[command(
    name = "hvsock",
    version,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = ADDRESSES
)]
pub struct Cli {
    /// The directory of the hvsockd to use [default: $HVSOCK_DIR, else /run/hvsock for root,
    /// $XDG_RUNTIME_DIR/hvsock for other users]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, list, switch and remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Add, list and remove partitions (sandboxes, and VMs attached by hybrid vsock).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Listen on ADDR like `nc -l` (one connection, or --keep for many).
    ///
    /// Without --keep: accept one connection, stop listening, then copy the socket to stdout
    /// and stdin to the socket until both directions have ended (EOF on stdin half-closes the
    /// connection). With --keep: serve connections at once until stopped, send nothing, and
    /// write what each sends to stdout.
    #[command(after_help = ADDRESSES)]
    Listen(ListenArgs),
    /// Connect to ADDR like `nc`: stdin to the socket, the socket to stdout.
    ///
    /// EOF on stdin half-closes the connection; the peer's half-close ends the copy to stdout;
    /// the command exits 0 once both have happened. A refused or timed-out connect exits 1
    /// at once with the reason.
    #[command(after_help = ADDRESSES)]
    Connect(ConnectArgs),
    /// Print what ADDR resolves to: VM GUID, service GUID, vsock port.
    #[command(after_help = ADDRESSES)]
    Addr(AddrArgs),
    /// Print hvsockd's counters.
    ///
    /// Connections established and refused (by reason) per connecting partition and service,
    /// with their connect latency, bound listeners per partition and service, binds refused,
    /// and clients dropped for protocol errors. The same counters are at hvsockd's `/metrics`
    /// in Prometheus text.
    Stats(JsonFlag),
    /// List the live listeners: where each is bound, for which service, and its backlog.
    Listeners(JsonFlag),
    /// Print the completion script for SHELL.
    ///
    /// bash: `hvsock completions bash > /usr/share/bash-completion/completions/hvsock`;
    /// zsh: `hvsock completions zsh > /usr/share/zsh/vendor-completions/_hvsock`;
    /// fish: `hvsock completions fish > /usr/share/fish/vendor_completions.d/hvsock.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page hvsock(1), or write every page into DIR.
    ///
    /// With --output DIR: hvsock.1 and one page per command (hvsock-service.1,
    /// hvsock-service-add.1, ...), generated from the same definition as --help.
    Man {
        /// Write every page into DIR (created if missing) instead of hvsock.1 to stdout.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Export or import the whole registry (services, policies, partitions).
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Run a command in a guest or sandbox through its hvsock-agent (VM session service).
    ///
    /// stdout and stderr are kept apart, stdin is streamed, Ctrl-C and SIGTERM are forwarded;
    /// --tty runs it on a pseudo-terminal. Exit status: the command's, 128+N for death by
    /// signal N, 127 not found, 126 not executable, 255 when hvsock itself failed.
    #[cfg(unix)]
    Exec(crate::agent_args::ExecArgs),
    /// Open a login shell in a guest or sandbox on a terminal (hvsock exec --tty, the user's
    /// shell).
    #[cfg(unix)]
    Shell(crate::agent_args::ShellArgs),
    /// Copy files and directories in and out of a guest or sandbox: one side is VM:/path.
    #[cfg(unix)]
    Cp(crate::agent_args::CpArgs),
    /// OpenSSH ProxyCommand: connect to VM's vsock port and hand ssh the socket.
    ///
    /// In ssh_config: `Host hvsock/*`, `ProxyCommand hvsock ssh-proxy %h %p`,
    /// `ProxyUseFdpass yes` (packaging/ssh/hvsock.conf); then `ssh hvsock/VM`.
    #[cfg(unix)]
    SshProxy(crate::agent_args::SshProxyArgs),
}

/// `hvsock registry …`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Write the registry as JSON (stable order), to stdout or --output FILE.
    Export {
        /// Write to FILE (replaced atomically) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Import a registry written by `hvsock registry export`, in one transaction.
    ///
    /// Merge (the default) adds what is new and sets `enabled` and the policy of services
    /// already there; entries whose id or name clash are listed and nothing changes. A
    /// registry that holds only its root adopts the file's root id. Importing the same file
    /// twice changes nothing.
    Import {
        /// The file (`-` for stdin).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Make the registry equal to the file: remove what it does not name, adopt its root
        /// id (clients of host.sock are disconnected if the id changes).
        #[arg(long)]
        replace: bool,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the API's report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ID|NAME` of an item, with `--json`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Print the admin API's JSON object instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// `ID|NAME` of an item.
#[derive(Debug, Args)]
pub struct KeyArg {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
}

/// `hvsock service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register a service and print its GUID.
    ///
    /// The GUID is random unless --id or --port is given. Adding the same name and GUID again
    /// succeeds and changes nothing.
    Add {
        /// Its friendly name.
        #[arg(value_parser = parse_service_name)]
        name: String,
        /// Its GUID.
        #[arg(long, value_name = "GUID", value_parser = parse_service_id, conflicts_with = "port")]
        id: Option<ServiceId>,
        /// A vsock port: the service gets that port's template GUID (reachable from Linux
        /// guests).
        #[arg(long, value_name = "N")]
        port: Option<u32>,
        /// Register it disabled: nothing may reach it across a partition boundary until
        /// `hvsock service enable`.
        #[arg(long)]
        disabled: bool,
    },
    /// List the registered services.
    List(JsonFlag),
    /// Show one service (ID may also be its vsock port).
    Show(ShowArgs),
    /// Let connections across partitions reach a service.
    Enable(KeyArg),
    /// Refuse connections across partitions to a service (loopback still works).
    Disable(KeyArg),
    /// Unregister a service.
    Remove(RemoveArgs),
    /// Give a service a new friendly name (counters and listings show it at once).
    Rename(RenameArgs),
    /// Show a service's policy, or change it with the flags.
    ///
    /// The policy says which partitions may connect to the service across a partition
    /// boundary (--connect), which may bind it (--bind), and whether it may be bound with the
    /// wildcard (--wildcard-bind). Lists are partition names or ids, comma-separated; an empty
    /// list allows none. Flags not given leave their rule as it is. Loopback is never
    /// restricted.
    Policy(PolicyArgs),
}

/// `ID|NAME` of an item to remove.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Exit 0 (with a note on stderr) if it does not exist, so that scripts can rerun.
    #[arg(long)]
    pub if_exists: bool,
}

/// `hvsock service rename ID|NAME NEW`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The GUID, the current name or the vsock port.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// The new name.
    #[arg(value_name = "NEW", value_parser = parse_service_name)]
    pub name: String,
}

/// `hvsock vm rename ID|NAME NEW`.
#[derive(Debug, Args)]
pub struct VmRenameArgs {
    /// The VmId or the current name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// The new name.
    #[arg(value_name = "NEW", value_parser = parse_partition_name)]
    pub name: String,
}

/// `hvsock service policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The service: GUID, name or vsock port.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Only these partitions may connect across a boundary (comma-separated names or ids;
    /// empty: none).
    #[arg(long, value_name = "LIST", conflicts_with = "connect_any")]
    pub connect: Option<String>,
    /// Any partition may connect.
    #[arg(long)]
    pub connect_any: bool,
    /// Only listeners in these partitions may serve it (comma-separated; empty: none).
    #[arg(long, value_name = "LIST", conflicts_with = "bind_any")]
    pub bind: Option<String>,
    /// Listeners in any partition may serve it.
    #[arg(long)]
    pub bind_any: bool,
    /// Whether it may be bound with the wildcard (zero) pattern.
    #[arg(long, value_name = "yes|no", value_parser = parse_yes_no)]
    pub wildcard_bind: Option<bool>,
    /// Drop the service's own policy, so that hvsockd's default policy applies.
    #[arg(long, conflicts_with_all = ["connect", "connect_any", "bind", "bind_any", "wildcard_bind"])]
    pub default: bool,
    /// Print the service as the API's JSON.
    #[arg(long)]
    pub json: bool,
}

impl PolicyArgs {
    /// Whether any flag asks for a change.
    pub fn changes(&self) -> bool {
        self.connect.is_some()
            || self.connect_any
            || self.bind.is_some()
            || self.bind_any
            || self.wildcard_bind.is_some()
            || self.default
    }
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("{s:?} is neither yes nor no")),
    }
}

/// A comma-separated list of partitions; empty items are dropped, so `""` is the empty list.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `hvsock vm …`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Add a sandbox partition, or a VM with --hybrid-vsock, and print its VmId.
    ///
    /// A sandbox: hvsockd opens its endpoint socket at DIR/partitions/VMID.sock, to be
    /// bind-mounted into the sandbox.
    ///
    /// A VM (--hybrid-vsock PATH): PATH is the Unix socket its VMM serves for the guest's
    /// vsock device (Firecracker `uds_path`, Cloud Hypervisor `--vsock socket=PATH`,
    /// vhost-device-vsock `--uds-path PATH`); its directory must exist. hvsockd connects into
    /// the guest through PATH, and listens on PATH_N while a host listener the guest may
    /// reach exists for port N. Only vsock-template services (`hvsock service add NAME
    /// --port N`) cross into or out of a guest: a guest has ports, not GUIDs. The VM's
    /// identity is the attachment; nothing the guest says changes it.
    ///
    /// Adding the same name and VmId again succeeds and changes nothing.
    Add {
        /// Its name.
        #[arg(value_parser = parse_partition_name)]
        name: String,
        /// Its VmId (a random one if not given).
        #[arg(long, value_name = "GUID", value_parser = parse_vm_id)]
        id: Option<VmId>,
        /// Its parent partition (default: the root, `host`).
        #[arg(long, value_name = "ID|NAME")]
        parent: Option<String>,
        /// Attach a VM through its VMM's hybrid-vsock socket PATH (made absolute here).
        #[arg(long, value_name = "PATH")]
        hybrid_vsock: Option<PathBuf>,
    },
    /// List the partitions, the root first.
    List(JsonFlag),
    /// Show one partition.
    Show(ShowArgs),
    /// Remove a partition (it must have no children), its endpoint and its listeners.
    Remove(RemoveArgs),
    /// Give a partition a new name (not the root, `host`).
    Rename(VmRenameArgs),
    /// List a partition's direct children.
    Children(ShowArgs),
    /// Shut a guest down cleanly through its init (its hvsock-agent), and wait until it has
    /// gone.
    #[cfg(unix)]
    Shutdown(crate::agent_args::ShutdownArgs),
}

/// An address as typed and as parsed.
#[derive(Debug, Clone)]
pub struct AddrArg {
    /// What the user typed.
    pub raw: String,
    /// Its parts, names not yet resolved.
    pub spec: AddrSpec,
}

/// `hvsock listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Listen from inside this partition (a name, a VmId or `host`) through its endpoint.
    #[arg(long = "as", value_name = "VM")]
    pub as_vm: Option<String>,
    /// Serve connections at once until stopped; send nothing, write what each sends to
    /// stdout (whole chunks, never mixed mid-chunk), close each when its peer half-closes.
    #[arg(long)]
    pub keep: bool,
    /// With --keep: run CMD (with `sh -c`) for each connection, the socket as its stdin
    /// and stdout, like inetd or systemd's Accept=yes (HVSOCK_PEER names the peer).
    #[arg(long, value_name = "CMD", requires = "keep")]
    pub exec: Option<String>,
    /// With --keep: how many connections to serve at once; more wait in the backlog.
    #[arg(long, value_name = "N", default_value_t = 256, requires = "keep",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Tell on stderr when listening and where each connection comes from.
    #[arg(short, long)]
    pub verbose: bool,
    /// The address to bind: VM says whom to accept (wildcard: any partition that may reach
    /// this one; children; loopback; parent; a partition), SERVICE what to serve.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    pub addr: AddrArg,
}

/// `hvsock connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connect from inside this partition (a name, a VmId or `host`) through its endpoint.
    #[arg(long = "as", value_name = "VM")]
    pub as_vm: Option<String>,
    /// How long to wait for the connection, in milliseconds (1 to 300000).
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub timeout: u64,
    /// Tell on stderr when connected.
    #[arg(short, long)]
    pub verbose: bool,
    /// The address to connect to.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    pub addr: AddrArg,
}

/// `hvsock addr`.
#[derive(Debug, Args)]
pub struct AddrArgs {
    /// The address to resolve.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    pub addr: AddrArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_addr(s: &str) -> Result<AddrArg, AddrError> {
    Ok(AddrArg {
        raw: s.trim().to_owned(),
        spec: AddrSpec::parse(s)?,
    })
}

fn parse_service_name(s: &str) -> Result<String, String> {
    check_service_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_partition_name(s: &str) -> Result<String, String> {
    check_partition_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_service_id(s: &str) -> Result<ServiceId, String> {
    ServiceId::parse(s)
        .map_err(|e| format!("{e} (expected a GUID such as 00000ac9-facb-11e6-bd58-64006a7986d3)"))
}

fn parse_vm_id(s: &str) -> Result<VmId, String> {
    let id = VmId::parse(s).map_err(|e| {
        format!("{e} (expected a GUID such as c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11)")
    })?;
    match id.keyword() {
        Some(word) => Err(format!(
            "{id} is the well-known VmId {word:?} and cannot name a partition"
        )),
        None => Ok(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            vec!["hvsock", "service", "add", "x", "--id", "nope"],
            vec!["hvsock", "service", "add", "x", "--port", "-1"],
            vec![
                "hvsock",
                "service",
                "add",
                "x",
                "--port",
                "1",
                "--id",
                "00000ac9-facb-11e6-bd58-64006a7986d3",
            ],
            vec!["hvsock", "service", "add", "2761"],
            vec!["hvsock", "service", "add", "a:b"],
            vec!["hvsock", "vm", "add", "parent"],
            vec![
                "hvsock",
                "vm",
                "add",
                "x",
                "--id",
                "a42e7cda-d03f-480c-9cc2-a4de20abb878",
            ],
            vec!["hvsock", "connect", "parent"],
            vec!["hvsock", "connect", "parent:99999999999"],
            vec!["hvsock", "connect", "--timeout", "0", "parent:1"],
            vec!["hvsock", "listen", "--max-connections", "5", "parent:1"],
            vec!["hvsock", "service", "rename", "echo", "2761"],
            vec!["hvsock", "vm", "rename", "a", "parent"],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--wildcard-bind",
                "maybe",
            ],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--connect",
                "a",
                "--connect-any",
            ],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--default",
                "--bind",
                "a",
            ],
            vec!["hvsock", "registry", "import"],
            vec!["hvsock"],
        ] {
            let err = Cli::try_parse_from(&args).expect_err(&format!("{args:?}"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn lists_split_on_commas_and_empty_is_none() {
        assert_eq!(split_list("a, b,,c"), ["a", "b", "c"]);
        assert!(split_list("").is_empty());
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn dir_is_accepted_before_and_after_the_command() {
        let cli = Cli::try_parse_from(["hvsock", "--dir", "/a", "stats"]).expect("parses");
        assert_eq!(cli.dir, Some(PathBuf::from("/a")));
        let cli =
            Cli::try_parse_from(["hvsock", "service", "list", "--dir", "/b"]).expect("parses");
        assert_eq!(cli.dir, Some(PathBuf::from("/b")));
    }
}
