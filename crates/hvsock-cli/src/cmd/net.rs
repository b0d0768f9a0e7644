//! `hvsock listen` and `hvsock connect`: nc for Hyper-V sockets.
//!
//! - `connect ADDR`: connects (within `--timeout`, default 2 s), then stdin to the socket and
//!   the socket to stdout ([`crate::copy::duplex`]); exits 0 once both directions have ended.
//! - `listen ADDR`: binds, accepts exactly one connection, stops listening, then the same as
//!   `connect`.
//! - `listen --keep ADDR`: binds and serves connections at once, each on its own thread, until
//!   killed: it sends nothing, writes what each peer sends to stdout in whole chunks, and closes
//!   each connection when its peer half-closes. At most `--max-connections` are served at once;
//!   more wait in hvsockd's backlog.
//!
//! The partition acted from is `--as VM`'s (through its endpoint), else the root's through the
//! `--dir` given, else the one the environment names (`HVSOCK_ENDPOINT`, `HVSOCK_DIR`, …). A
//! refused, timed-out or failed connect or bind ends the command at once, exit 1, with the
//! library's message prefixed by what was being done.

use std::thread;
use std::time::Duration;

use hvsock::{HvListener, HvStream, SockAddrHv, Transport};

use super::CliError;
use super::serve::{Gate, Permit, tell};
use crate::cli::{AddrArg, ConnectArgs, ListenArgs};
use crate::context::Context;
use crate::copy;
use crate::resolve::{resolve, transport};

/// How many unaccepted connections `listen --keep` lets hvsockd queue.
const KEEP_BACKLOG: u32 = hvsock::DEFAULT_BACKLOG;

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
pub fn connect(ctx: &Context, args: ConnectArgs) -> Result<(), CliError> {
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
pub fn listen(ctx: &Context, args: ListenArgs) -> Result<(), CliError> {
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
    #[cfg(unix)]
    if let Some(command) = &args.exec {
        return super::listen_exec::serve(
            &listener,
            command,
            &what,
            args.max_connections,
            args.verbose,
        );
    }
    let gate = Gate::new(args.max_connections);
    loop {
        let permit = gate.acquire();
        let (stream, peer) = accept(&listener)?;
        if args.verbose {
            tell(format_args!("connection from {peer}"));
        }
        let verbose = args.verbose;
        let spawned = thread::Builder::new()
            .name(format!("conn {peer}"))
            .spawn(move || serve_one(stream, peer, verbose, permit));
        if let Err(e) = spawned {
            // The connection is dropped (closed) with the failed closure.
            tell(format_args!("dropping the connection from {peer}: {e}"));
        }
    }
}

/// One `--keep` connection: its bytes to stdout until its half-close, then close it.
fn serve_one(stream: HvStream, peer: SockAddrHv, verbose: bool, permit: Permit) {
    let result = copy::drain(stream);
    drop(permit);
    match result {
        Ok(bytes) if verbose => tell(format_args!("{peer} sent {bytes} bytes and closed")),
        Ok(_) => {}
        // Stdout failed: no connection can be served any more. `exit_with` ends with 0 when
        // stdout was closed (nobody reads what is received), else with the error.
        Err(e @ copy::CopyError::Stdout(_)) => crate::exit_with(&e.into()),
        Err(e) => tell(format_args!(
            "connection from {peer}: {}",
            CliError::from(e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
