//! `hvsock listen --keep --exec CMD ADDR`: inetd for Hyper-V sockets (systemd's `Accept=yes`).
//! Each connection runs `sh -c CMD` with the socket as its stdin and stdout (stderr stays
//! hvsock's), and `HVSOCK_PEER` / `HVSOCK_LOCAL` naming both ends (`VMID:SERVICEID`). At most
//! `--max-connections` run at once; more wait in hvsockd's backlog. E.g. `hvsock listen --keep
//! --exec '/usr/sbin/sshd -i' wildcard:22` serves ssh over vsock port 22, as systemd's
//! `sshd-vsock.socket` does in a guest.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;

use hvsock::{HvListener, HvStream, SockAddrHv};

use super::CliError;
use super::serve::{Gate, tell};

/// Serves connections on `listener` with `command` until stopped.
pub fn serve(
    listener: &HvListener,
    command: &str,
    what: &str,
    max: u32,
    verbose: bool,
) -> Result<(), CliError> {
    let gate: Arc<Gate> = Gate::new(max);
    loop {
        let permit = gate.acquire();
        let (stream, peer) = listener.accept().map_err(|source| CliError::Socket {
            doing: format!("accepting on {what}"),
            source,
        })?;
        if verbose {
            tell(format_args!("connection from {peer}: running {command}"));
        }
        let mut child = match spawn(command, stream, peer) {
            Ok(child) => child,
            Err(e) => {
                tell(format_args!(
                    "connection from {peer}: cannot run {command}: {e}"
                ));
                continue;
            }
        };
        let command = command.to_owned();
        let spawned = thread::Builder::new()
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
        if let Err(e) = spawned {
            tell(format_args!("cannot wait for the command of {peer}: {e}"));
        }
    }
}

fn spawn(
    command: &str,
    stream: HvStream,
    peer: SockAddrHv,
) -> std::io::Result<std::process::Child> {
    let local = stream.local_addr()?;
    let socket: OwnedFd = stream.into();
    let stdin = socket.try_clone()?;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(socket))
        .env("HVSOCK_PEER", peer.to_string())
        .env("HVSOCK_LOCAL", local.to_string())
        .spawn()
}
