//! `hvsockd`: the provider, in the foreground, logging to stderr. This file only reads the
//! command line; [`hvsockd::daemon::main`] does the rest.
//!
//! `hvsockd --check [--config FILE]` reads the configuration, says what a start would apply to
//! the registry, and exits 0 (usable) or 1 (not), without starting or writing anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use hvsockd::config::{LogFormat, Overrides};
use hvsockd::daemon::{self, Action};
use hvsockd::handover::{intake, reexec};
use hvsockd::sys::activation;

/// The hvsock provider: routes Hyper-V socket connections between the host, its sandboxes
/// and its VMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Read the configuration from FILE (TOML: directories, limits, logging, default policy,
    /// and services and partitions to ensure at start). Flags override it.
    #[arg(long, env = "HVSOCKD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and say what a start would apply, without starting or
    /// changing anything; exit 0 if it is usable, 1 if not.
    #[arg(long)]
    check: bool,
    /// Put the registry and every socket under DIR (default: the config file's, else
    /// /var/lib/hvsock and /run/hvsock for root, XDG state and runtime dirs otherwise).
    #[arg(long, env = "HVSOCK_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Log format: text, or json (one object per line with timestamp, level, message,
    /// target and the event's fields) [default: the config file's, else text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How long a new client may take to send its first frame, in seconds [default: the
    /// config file's, else 10].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    handshake_timeout: Option<Duration>,
    /// Also serve the admin API over HTTP on this loopback address (e.g. 127.0.0.1:8077), to
    /// clients that send `Authorization: Bearer TOKEN`, TOKEN being the content of
    /// DIR/admin-tcp.token (mode 0600, made anew at each start): for tests and tools that
    /// cannot use admin.sock. Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    admin_tcp: Option<SocketAddr>,
    /// Give host.sock to GROUP (mode 0660), so that its members may connect as the root
    /// partition; admin.sock stays owner-only. A GROUP that does not exist stops the start.
    /// Not applied to a socket-activated host.sock (SocketGroup= in the socket unit).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Print the completion script for SHELL and exit.
    #[arg(long, value_name = "SHELL", help_heading = "Packaging")]
    completions: Option<clap_complete::Shell>,
    /// Print the manual page (hvsockd.8, roff) and exit.
    #[arg(long, help_heading = "Packaging")]
    man: bool,
    /// Print the format in which this hvsockd takes sockets over (SIGUSR2, descriptor store)
    /// and exit: a running hvsockd asks its new binary this before it executes it.
    #[arg(long, help_heading = "Packaging")]
    handover_version: bool,
}

fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address such as 127.0.0.1:8077"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the admin API over TCP is plain HTTP, so it is only served on 127.0.0.1 or [::1]"
        ));
    }
    Ok(addr)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s} is out of range (0 to 3600 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    // SAFETY: first thing in main: one thread, and nothing owns descriptors 3 and up yet.
    let listen_fds = unsafe { activation::take_listen_fds() };
    // SAFETY: still one thread, and the hand-over's descriptors are distinct from the above.
    let handed = unsafe { intake::take_handed_over() };
    let listen_fds = listen_fds.map(|fds| {
        let mut fds = fds.into_fds();
        match handed {
            Ok(handed) => fds.extend(handed),
            Err(e) => eprintln!("hvsockd: not resuming the sockets handed over: {e}"),
        }
        activation::ListenFds::from_fds(fds)
    });
    let args = Args::parse();
    if args.handover_version {
        println!("{}", reexec::format_version());
        return ExitCode::SUCCESS;
    }
    let action = match (args.completions, args.man, args.check) {
        (Some(shell), _, _) => Action::Completions(shell),
        (None, true, _) => Action::Man,
        (None, false, true) => Action::Check,
        (None, false, false) => Action::Serve,
    };
    let overrides = Overrides {
        config: args.config,
        dir: args.dir,
        log_format: args.log_format,
        handshake_timeout: args.handshake_timeout,
        admin_tcp: args.admin_tcp,
        socket_group: args.socket_group,
    };
    daemon::main(action, overrides, listen_fds, Args::command())
}
