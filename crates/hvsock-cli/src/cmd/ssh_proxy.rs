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

#[cfg(target_os = "linux")]
use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
#[cfg(target_os = "linux")]
use std::time::Duration;

use clap::Args;
#[cfg(target_os = "linux")]
use hvsock::{HvStream, ServiceId, SockAddrHv};

use super::Run;
use crate::context::Context;
#[cfg(target_os = "linux")]
use crate::copy;
use crate::error::CliError;
#[cfg(target_os = "linux")]
use crate::resolve::transport;

/// `hvsock ssh-proxy`.
#[derive(Debug, Args)]
pub struct SshProxyArgs {
    /// `hvsock/VM` (ssh's %h) or a partition's name or VmId.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The vsock port (ssh's %p).
    #[arg(value_name = "PORT", default_value_t = 22)]
    pub port: u32,
    /// How long to wait for the connection, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub timeout: u64,
}
impl Run for SshProxyArgs {
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn run(self, ctx: &Context, _out: &mut dyn std::io::Write) -> Result<(), CliError> {
        #[cfg(target_os = "linux")]
        return run(ctx, self);
        #[cfg(not(target_os = "linux"))]
        Err(CliError::unsupported(
            "`hvsock ssh-proxy`",
            "the integration services' clients (hvsock-agent's protocols) are built for Linux only",
        ))
    }
}

/// The partition named by ssh's host: `hvsock/VM`, `hvsock%VM` (for scp, which reads a `/`
/// before the colon as a local path) or `VM`.
pub fn vm_of_host(host: &str) -> &str {
    host.strip_prefix("hvsock/")
        .or_else(|| host.strip_prefix("hvsock%"))
        .unwrap_or(host)
}

#[cfg(target_os = "linux")]
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
