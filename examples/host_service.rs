//! The host side of an integration service: step 2 of Hyper-V's "Make your own integration
//! services", written with `hvsock::tokio`.
//!
//! It binds `wildcard:<service>` in the host (through hvsockd's `host.sock`), so any partition
//! that may reach the host can connect (its children: VMs and sandboxes), serves many guests at
//! once, logs who connected (the peer's VmId) to stderr, and answers every line a guest sends
//! with `host> <line>`. A guest ends its session by half-closing (EOF); the host then closes.
//!
//! ```text
//! host_service [--dir DIR] [SERVICE]
//!   SERVICE   a service GUID, or a vsock port for its template GUID (default 2761)
//!   --dir     the directory hvsockd serves (default: HVSOCK_ENDPOINT, HVSOCK_DIR, or the
//!             default runtime directory)
//! ```
//!
//! # Step by step, against an hvsockd on `./demo`
//!
//! ```text
//! cargo build --bins --examples
//!
//! # The provider, in its own terminal.
//! target/debug/hvsockd --dir ./demo
//!
//! # Step 1: register (and enable) the service. Only registered services cross a partition
//! # boundary. With the CLI:
//! target/debug/hvsock --dir ./demo service add greeter --port 2761
//! # or with the admin API:
//! curl -s --unix-socket ./demo/admin.sock -H 'Content-Type: application/json' \
//!      -d '{"name":"greeter","port":2761}' http://hvsockd/v1/services
//!
//! # A partition for the guest (a sandbox); note the VmId it prints ("id" in the JSON).
//! target/debug/hvsock --dir ./demo vm add sandbox1
//! curl -s --unix-socket ./demo/admin.sock -H 'Content-Type: application/json' \
//!      -d '{"name":"sandbox1"}' http://hvsockd/v1/partitions
//!
//! # Step 2: this program, on the host. It prints "listening on ..." once bound.
//! target/debug/examples/host_service --dir ./demo 2761
//!
//! # Step 3: the guest side, from inside the partition: its endpoint socket is the partition.
//! HVSOCK_ENDPOINT=./demo/partitions/<vmid>/endpoint.sock target/debug/examples/guest_service hello world
//! ```
//!
//! Inside a real VM the guest side needs no hvsockd: run it with `HVSOCK_TRANSPORT=vsock`
//! (the service must then be a vsock port).
//!
//! On a Windows Hyper-V host, run it without `--dir`: it binds `AF_HYPERV` (register the service
//! first, see `docs/windows.md`).

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use hvsock::tokio::{HvListener, HvStream};
use hvsock::{DEFAULT_BACKLOG, ServiceId, ServiceSpec, SockAddrHv, Transport, VmId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest line a guest may send, newline included; a longer one ends its session.
const MAX_LINE: usize = 4096;

/// The host side of an hvsock integration service: answers each line with "host> LINE".
#[derive(Debug, Parser)]
#[command(
    name = "host_service",
    override_usage = "host_service [--dir DIR] [SERVICE]"
)]
struct Args {
    /// The service: a GUID, or a vsock port for its template GUID
    #[arg(default_value = "2761", value_parser = parse_service)]
    service: ServiceId,
    /// The directory hvsockd serves (default: HVSOCK_ENDPOINT, HVSOCK_DIR, or the default
    /// runtime directory)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A GUID or a decimal vsock port; names need the registry, which this example does not ask.
fn parse_service(s: &str) -> Result<ServiceId, String> {
    let spec = ServiceSpec::parse(s).map_err(|e| e.to_string())?;
    spec.id().ok_or_else(|| {
        format!("{s:?} is not a service GUID or a vsock port (names are not resolved here)")
    })
}

#[tokio::main]
async fn main() -> ExitCode {
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
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host_service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> io::Result<()> {
    let transport = match &args.dir {
        Some(dir) => Transport::provider_in(dir),
        None => Transport::from_env()?,
    };
    let addr = SockAddrHv::new(VmId::WILDCARD, args.service);
    let listener = HvListener::bind_with(&transport, addr, DEFAULT_BACKLOG)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("binding wildcard:{}: {e}", args.service)))?;
    match args.service.vsock_port() {
        Some(port) => println!("listening on wildcard:{} (vsock port {port})", args.service),
        None => println!("listening on wildcard:{}", args.service),
    }
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                eprintln!("{} connected", peer.vm_id);
                tokio::spawn(async move {
                    match serve(stream).await {
                        Ok(lines) => eprintln!("{} left after {lines} line(s)", peer.vm_id),
                        Err(e) => eprintln!("{}: {e}", peer.vm_id),
                    }
                });
            }
            // hvsockd stopped or unbound us: nothing more will come.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return Err(e),
            // Anything else concerns one connection (e.g. out of descriptors): go on, gently.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers each line of one guest until it half-closes; returns how many lines it sent.
async fn serve(stream: HvStream) -> io::Result<usize> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    let mut lines = 0;
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
        if (&mut rd).take(limit).read_until(b'\n', &mut line).await? == 0 {
            break; // the guest half-closed
        }
        if line.len() == MAX_LINE && line.last() != Some(&b'\n') {
            wr.write_all(format!("error: lines are at most {MAX_LINE} bytes\n").as_bytes())
                .await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sent a line longer than {MAX_LINE} bytes; closed"),
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        wr.write_all(format!("host> {text}\n").as_bytes()).await?;
        lines += 1;
    }
    wr.shutdown().await?;
    Ok(lines)
}
