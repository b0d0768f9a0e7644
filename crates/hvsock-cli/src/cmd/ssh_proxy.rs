//! `hvsock ssh-proxy HOST [PORT]`: an OpenSSH `ProxyCommand` that connects to a partition's
//! vsock port (22 by default, systemd's `sshd-vsock.socket` convention) and hands ssh the
//! connected kernel socket (`ProxyUseFdpass yes`), so that ssh talks to the guest's sshd with
//! nothing in between. HOST is `hvsock/VM`, `hvsock%VM` (scp reads a `/` before the colon as a
//! local path) or just VM. Without fd passing (stdout is not a
//! Unix socket) it copies bytes like `hvsock connect`.
//!
//! The shipped `packaging/ssh/hvsock.conf` (install it as
//! `/etc/ssh/ssh_config.d/20-hvsock.conf`) makes `ssh hvsock/VM`, `scp FILE hvsock%VM:PATH`
//! and `rsync -e ssh` work:
//!
//! ```text
//! Host hvsock/* hvsock%*
//!     ProxyCommand hvsock ssh-proxy %h %p
//!     ProxyUseFdpass yes
//!     CheckHostIP no
//! ```

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use crate::agent_args::SshProxyArgs;
use hvsock::{HvStream, ServiceId, SockAddrHv};

use super::CliError;
use crate::context::Context;
use crate::copy;
use crate::resolve::transport;

/// The partition named by ssh's host: `hvsock/VM`, `hvsock%VM` (for scp, which reads a `/`
/// before the colon as a local path) or `VM`.
pub fn vm_of_host(host: &str) -> &str {
    host.strip_prefix("hvsock/")
        .or_else(|| host.strip_prefix("hvsock%"))
        .unwrap_or(host)
}

/// Runs `ssh-proxy`.
pub fn run(ctx: &Context, args: SshProxyArgs) -> Result<(), CliError> {
    let vm = vm_of_host(&args.host);
    let id = super::agent::vm_id(ctx, vm)?;
    let addr = SockAddrHv::new(id, ServiceId::from_vsock_port(args.port));
    let stream = HvStream::connect_with(
        &transport(ctx, None)?,
        addr,
        Duration::from_millis(args.timeout),
    )
    .map_err(|source| CliError::Socket {
        doing: format!("connecting to {vm}:{} for ssh", args.port),
        source,
    })?;
    let stdout = io::stdout();
    let is_socket = rustix::fs::fstat(stdout.as_fd())
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .unwrap_or(false);
    if !is_socket {
        return Ok(copy::duplex(stream)?);
    }
    // ProxyUseFdpass: one byte carrying the descriptor, as ssh's mm_receive_fd expects.
    hvsock_proto::unix::send_message(stdout.as_fd(), &[0], Some(stream.as_fd()), false).map_err(
        |source| CliError::Socket {
            doing: "handing the connection to ssh (ProxyUseFdpass)".into(),
            source,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_hosts_name_partitions() {
        assert_eq!(vm_of_host("hvsock/vm1"), "vm1");
        assert_eq!(vm_of_host("hvsock%vm1"), "vm1");
        assert_eq!(vm_of_host("vm1"), "vm1");
    }
}
