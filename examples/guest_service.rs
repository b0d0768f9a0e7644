//! The guest side of an integration service: step 3 of Hyper-V's "Make your own integration
//! services", written with the std API (`hvsock::HvStream`).
//!
//! It connects to `parent:<service>` (the partition's parent, the host) through whatever
//! transport the environment names: `HVSOCK_ENDPOINT` pointing at the partition's endpoint
//! socket (`DIR/partitions/<vmid>/endpoint.sock`, bind-mounted into a sandbox), or
//! `HVSOCK_TRANSPORT=vsock` inside a VM. It sends its arguments, or without arguments the
//! lines of stdin, one line at a time, prints each reply on stdout, and half-closes when done.
//!
//! ```text
//! guest_service [--service SERVICE] [LINE]...
//!   --service  a service GUID, or a vsock port for its template GUID (default 2761)
//!   LINE       lines to send; without any, stdin is read line by line
//! ```
//!
//! See `examples/host_service.rs` for the whole walk-through (hvsockd, registering the
//! service, adding a partition, the host side). The short form, once those run:
//!
//! ```text
//! HVSOCK_ENDPOINT=./demo/partitions/<vmid>/endpoint.sock target/debug/examples/guest_service hello world
//! host> hello
//! host> world
//! ```
//!
//! In a Windows VM it connects over `AF_HYPERV` with no setting (see `docs/windows.md`).
//!
//! Connection details go to stderr; stdout carries only the replies. A refused or failed
//! connect exits 1 with the reason.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hvsock::{HvStream, ServiceId, ServiceSpec, SockAddrHv, VmId};

/// Longest reply line accepted from the host, newline included.
const MAX_REPLY: u64 = 64 * 1024;

/// The guest side of an hvsock integration service: sends lines to the host, prints replies.
#[derive(Debug, Parser)]
#[command(
    name = "guest_service",
    override_usage = "guest_service [--service SERVICE] [LINE]..."
)]
struct Args {
    /// The service: a GUID, or a vsock port for its template GUID
    #[arg(short, long, default_value = "2761", value_parser = parse_service)]
    service: ServiceId,
    /// Lines to send; without any, stdin is read line by line
    lines: Vec<String>,
}

/// A GUID or a decimal vsock port; names need the registry, which this example does not ask.
fn parse_service(s: &str) -> Result<ServiceId, String> {
    let spec = ServiceSpec::parse(s).map_err(|e| e.to_string())?;
    spec.id().ok_or_else(|| {
        format!("{s:?} is not a service GUID or a vsock port (names are not resolved here)")
    })
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help
        Err(e) => {
            // The reason, then always the usage line, whatever the mistake was.
            let reason = e.to_string();
            eprintln!(
                "{}\n{}",
                reason.lines().next().unwrap_or("error: bad arguments"),
                Args::command().render_usage()
            );
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest_service: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let addr = SockAddrHv::new(VmId::PARENT, args.service);
    let stream = HvStream::connect(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("connecting to parent:{}: {e}", args.service),
        )
    })?;
    eprintln!(
        "connected to {} as {}",
        stream.peer_addr()?.vm_id,
        stream.local_addr()?.vm_id
    );
    let mut replies = BufReader::new(stream.try_clone()?);
    let mut stdout = io::stdout().lock();
    let mut exchange = |line: &str| -> io::Result<()> {
        (&stream).write_all(format!("{line}\n").as_bytes())?;
        let mut reply = Vec::new();
        (&mut replies)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut reply)?;
        if reply.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the host closed the connection without replying",
            ));
        }
        stdout.write_all(&reply)?;
        stdout.flush()
    };
    if args.lines.is_empty() {
        for line in io::stdin().lock().lines() {
            exchange(&line?)?;
        }
    } else {
        // An argument with newlines in it is several lines, each with its own reply.
        for line in args.lines.iter().flat_map(|arg| arg.lines()) {
            exchange(line)?;
        }
    }
    // Done: half-close, and wait for the host to close its side.
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    replies.take(MAX_REPLY).read_to_end(&mut rest)?;
    stdout.write_all(&rest)?;
    stdout.flush()
}
