//! `hvsock listen` and `hvsock connect`: nc for Hyper-V sockets.
//!
//! - `connect ADDR`: connects (within `--timeout`, default 2 s), then stdin to the socket and
//!   the socket to stdout ([`crate::copy::duplex`]); exits 0 once both directions have ended.
//! - `listen ADDR`: binds, accepts exactly one connection, stops listening, then the same as
//!   `connect`.
//! - `listen --keep ADDR`: binds and serves connections at once, each on its own thread, until
//!   killed: it sends nothing, writes what each peer sends to stdout in whole chunks, and closes
//!   each connection when its peer half-closes. At most `--max-connections` are served at once;
//!   more wait in hvsockd's backlog. Accepting runs on a thread of its own, and the command's
//!   thread waits for the first failure that ends it: an accept that fails, or stdout that
//!   fails (no connection can be served without it; a closed stdout ends the command quietly,
//!   as everywhere). If hvsockd goes away (killed, crashed, restarted), the listener binds
//!   again by itself on the same descriptor and serving goes on (the library's re-bind; see
//!   `hvsock::HvListener`): an accept fails only if hvsockd is not back within 30 s
//!   (`HVSOCK_REBIND_PATIENCE` seconds), and connections being served are not affected.
//!
//! The partition acted from is `--as VM`'s (through its endpoint), else the root's through the
//! `--dir` given, else the one the environment names (`HVSOCK_ENDPOINT`, `HVSOCK_DIR`, …). A
//! refused, timed-out or failed connect or bind ends the command at once, exit 1, with the
//! library's message prefixed by what was being done.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use clap::Args;
use hvsock::{HvListener, HvStream, SockAddrHv, Transport};

use super::Run;
use crate::args::{AddrArg, parse_addr};
use crate::context::Context;
use crate::copy;
use crate::error::CliError;
use crate::resolve::{resolve, transport};

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
    /// With --keep: run CMD (with `sh -c`) for each connection, the socket as its stdin and
    /// stdout, like inetd or systemd's Accept=yes (HVSOCK_PEER and HVSOCK_LOCAL name the
    /// ends).
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

/// Why `--as` means nothing on Windows.
const AS_VM: &str = "it acts through an hvsockd partition endpoint; on Windows a program acts \
     from the partition it runs in (run hvsock inside the VM to act from the VM)";

impl Run for ListenArgs {
    fn run(self, ctx: &Context, _out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) && self.as_vm.is_some() {
            return Err(CliError::unsupported("--as", AS_VM));
        }
        listen(ctx, self)
    }
}

impl Run for ConnectArgs {
    fn run(self, ctx: &Context, _out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) && self.as_vm.is_some() {
            return Err(CliError::unsupported("--as", AS_VM));
        }
        connect(ctx, self)
    }
}

/// How many unaccepted connections `listen --keep` lets hvsockd queue.
const KEEP_BACKLOG: u32 = hvsock::DEFAULT_BACKLOG;

/// Says something on stderr (`-v`).
fn tell(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "hvsock: {message}");
}

/// `ADDR (GUID:GUID)` or just `ADDR` when it was typed as GUIDs, and ` as VM` if acting from
/// another partition.
fn describe(addr: &AddrArg, resolved: SockAddrHv, as_vm: Option<&str>) -> String {
    let mut text = addr.raw.clone();
    if resolved.to_string() != addr.raw {
        text.push_str(&format!(" ({resolved})"));
    }
    if let Some(vm) = as_vm {
        text.push_str(&format!(" as {vm}"));
    }
    text
}

fn setup(
    ctx: &Context,
    addr: &AddrArg,
    as_vm: Option<&str>,
) -> Result<(SockAddrHv, Transport, String), CliError> {
    let resolved = resolve(ctx, &addr.raw, &addr.spec)?.addr;
    let transport = transport(ctx, as_vm)?;
    Ok((resolved, transport, describe(addr, resolved, as_vm)))
}

/// Runs `connect`.
fn connect(ctx: &Context, args: ConnectArgs) -> Result<(), CliError> {
    let (addr, transport, what) = setup(ctx, &args.addr, args.as_vm.as_deref())?;
    let timeout = Duration::from_millis(args.timeout);
    let stream =
        HvStream::connect_with(&transport, addr, timeout).map_err(|source| CliError::Socket {
            doing: format!("connecting to {what}"),
            source,
        })?;
    if args.verbose {
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tell(format_args!("connected to {what} from {local}"));
    }
    Ok(copy::duplex(stream)?)
}

/// Runs `listen`.
fn listen(ctx: &Context, args: ListenArgs) -> Result<(), CliError> {
    let (addr, transport, what) = setup(ctx, &args.addr, args.as_vm.as_deref())?;
    let backlog = if args.keep { KEEP_BACKLOG } else { 1 };
    let listener =
        HvListener::bind_with(&transport, addr, backlog).map_err(|source| CliError::Socket {
            doing: format!("listening on {what}"),
            source,
        })?;
    if args.verbose {
        tell(format_args!("listening on {what}"));
    }
    let accept = |listener: &HvListener| {
        listener.accept().map_err(|source| CliError::Socket {
            doing: format!("accepting on {what}"),
            source,
        })
    };
    if !args.keep {
        let (stream, peer) = accept(&listener)?;
        // Exactly one connection: stop listening before serving it.
        drop(listener);
        if args.verbose {
            tell(format_args!("connection from {peer}"));
        }
        return Ok(copy::duplex(stream)?);
    }
    if let Some(command) = args.exec {
        return keep_exec(
            &listener,
            &command,
            &what,
            args.max_connections,
            args.verbose,
        );
    }
    keep(listener, what, args.max_connections, args.verbose)
}

/// `listen --keep --exec CMD`: inetd for Hyper-V sockets (systemd's `Accept=yes`). Each
/// connection runs `sh -c CMD` with the socket as its stdin and stdout (stderr stays ours) and
/// `HVSOCK_PEER` / `HVSOCK_LOCAL` naming both ends, at most `max` at once, until an accept
/// fails. E.g. `--exec '/usr/sbin/sshd -i' wildcard:22` serves ssh over vsock port 22, as
/// systemd's `sshd-vsock.socket` does in a guest.
#[cfg(unix)]
fn keep_exec(
    listener: &HvListener,
    command: &str,
    what: &str,
    max: u32,
    verbose: bool,
) -> Result<(), CliError> {
    let gate = Gate::new(max);
    loop {
        let permit = gate.acquire();
        let (stream, peer) = listener.accept().map_err(|source| CliError::Socket {
            doing: format!("accepting on {what}"),
            source,
        })?;
        if verbose {
            tell(format_args!("connection from {peer}: running {command}"));
        }
        let mut child = match spawn_for(command, stream, peer) {
            Ok(child) => child,
            Err(e) => {
                tell(format_args!(
                    "connection from {peer}: cannot run {command}: {e}"
                ));
                continue;
            }
        };
        let command = command.to_owned();
        let waiter = thread::Builder::new()
            .name(format!("exec {peer}"))
            .spawn(move || {
                let status = child.wait();
                drop(permit);
                match status {
                    Ok(s) if verbose || !s.success() => {
                        tell(format_args!("connection from {peer}: {command}: {s}"))
                    }
                    Ok(_) => {}
                    Err(e) => tell(format_args!("connection from {peer}: waiting: {e}")),
                }
            });
        if let Err(e) = waiter {
            tell(format_args!("cannot wait for the command of {peer}: {e}"));
        }
    }
}

#[cfg(not(unix))]
fn keep_exec(_: &HvListener, _: &str, _: &str, _: u32, _: bool) -> Result<(), CliError> {
    Err(CliError::unsupported(
        "--exec",
        "it hands the socket to a command as its stdin and stdout, which needs Unix descriptors",
    ))
}

/// `sh -c command` on the connection.
#[cfg(unix)]
fn spawn_for(command: &str, stream: HvStream, peer: SockAddrHv) -> io::Result<std::process::Child> {
    use std::process::{Command as Process, Stdio};
    let local = stream.local_addr()?;
    let socket: std::os::fd::OwnedFd = stream.into();
    let stdin = socket.try_clone()?;
    Process::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(socket))
        .env("HVSOCK_PEER", peer.to_string())
        .env("HVSOCK_LOCAL", local.to_string())
        .spawn()
}

/// `listen --keep`: serves connections until an accept or stdout fails, and returns that
/// failure (see the module docs).
fn keep(listener: HvListener, what: String, max: u32, verbose: bool) -> Result<(), CliError> {
    let (failed, failure) = mpsc::channel();
    let accepting = format!("accepting on {what}");
    let acceptor = move || {
        let gate = Gate::new(max);
        let err = loop {
            let permit = gate.acquire();
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(source) => {
                    break CliError::Socket {
                        doing: accepting,
                        source,
                    };
                }
            };
            if verbose {
                tell(format_args!("connection from {peer}"));
            }
            let failed = failed.clone();
            let spawned = thread::Builder::new()
                .name(format!("conn {peer}"))
                .spawn(move || serve_one(stream, peer, verbose, permit, &failed));
            if let Err(e) = spawned {
                // The connection is dropped (closed) with the failed closure.
                tell(format_args!("dropping the connection from {peer}: {e}"));
            }
        };
        let _ = failed.send(err);
    };
    thread::Builder::new()
        .name("accept".to_owned())
        .spawn(acceptor)
        .map_err(|source| CliError::Socket {
            doing: "starting the thread that accepts connections".to_owned(),
            source,
        })?;
    // The acceptor and the connections hold the only senders: this waits for the first
    // failure (every sender gone would mean the acceptor died without saying why).
    Err(failure.recv().unwrap_or_else(|_| CliError::Socket {
        doing: format!("accepting on {what}"),
        source: io::Error::other("the thread that accepts connections ended"),
    }))
}

/// One `--keep` connection: its bytes to stdout until its half-close, then close it. A
/// failure of stdout goes to `failed`: it ends the command.
fn serve_one(
    stream: HvStream,
    peer: SockAddrHv,
    verbose: bool,
    permit: Permit,
    failed: &mpsc::Sender<CliError>,
) {
    let result = copy::drain(stream);
    drop(permit);
    match result {
        Ok(bytes) if verbose => tell(format_args!("{peer} sent {bytes} bytes and closed")),
        Ok(_) => {}
        Err(e @ copy::CopyError::Stdout(_)) => {
            let _ = failed.send(e.into());
        }
        Err(e) => tell(format_args!(
            "connection from {peer}: {}",
            CliError::from(e)
        )),
    }
}

/// Bounds the connections `--keep` serves at once.
#[derive(Debug)]
struct Gate {
    free: Mutex<u32>,
    freed: Condvar,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
struct Permit(Arc<Gate>);

impl Gate {
    fn new(max: u32) -> Arc<Gate> {
        Arc::new(Gate {
            free: Mutex::new(max),
            freed: Condvar::new(),
        })
    }

    fn acquire(self: &Arc<Gate>) -> Permit {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_at_most_max_and_reopens() {
        let gate = Gate::new(2);
        let a = gate.acquire();
        let _b = gate.acquire();
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || drop(gate.acquire()))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third permit was given out");
        drop(a);
        waiter
            .join()
            .expect("the waiter ends once a permit is back");
    }

    #[test]
    fn descriptions_show_what_was_typed_and_what_it_means() {
        let spec = hvsock::AddrSpec::parse("parent:2761").expect("parses");
        let arg = AddrArg {
            raw: "parent:2761".into(),
            spec,
        };
        let addr = SockAddrHv::new(
            hvsock::VmId::PARENT,
            hvsock::ServiceId::from_vsock_port(2761),
        );
        assert_eq!(
            describe(&arg, addr, Some("a")),
            "parent:2761 (a42e7cda-d03f-480c-9cc2-a4de20abb878:00000ac9-facb-11e6-bd58-64006a7986d3) as a"
        );
    }
}
