//! [`HvListener`]: a bound Hyper-V socket that accepts connections.

use std::io;

use crate::addr::SockAddrHv;
use crate::stream::HvStream;
use crate::sys::{self, Backend};
use crate::transport::Transport;

/// How many connections may wait to be accepted when no backlog is given.
pub const DEFAULT_BACKLOG: u32 = 128;

/// A listener bound to a `(vm, service)` address in this partition.
///
/// The VM part says whom it accepts from: [`VmId::WILDCARD`](crate::VmId::WILDCARD) any
/// partition that may reach this one, [`VmId::CHILDREN`](crate::VmId::CHILDREN) child
/// partitions, [`VmId::LOOPBACK`](crate::VmId::LOOPBACK) this partition,
/// [`VmId::PARENT`](crate::VmId::PARENT) the parent, or one partition's id.
///
/// Through hvsockd, the listener is a session with the daemon: dropping it unbinds the address,
/// and it is readable (for `poll`/`epoll`) when a connection waits.
#[derive(Debug)]
pub struct HvListener {
    pub(crate) inner: sys::Listener,
}

impl HvListener {
    /// Binds `addr` through the transport the environment chooses ([`Transport::from_env`]).
    pub fn bind(addr: SockAddrHv) -> io::Result<HvListener> {
        HvListener::bind_with(&Transport::from_env()?, addr, DEFAULT_BACKLOG)
    }

    /// Binds `addr` through `transport`, with room for `backlog` unaccepted connections
    /// (1 to 4096).
    pub fn bind_with(
        transport: &Transport,
        addr: SockAddrHv,
        backlog: u32,
    ) -> io::Result<HvListener> {
        check_backlog(backlog)?;
        Ok(HvListener {
            inner: Backend::of(transport)?.bind(addr, backlog)?,
        })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<(HvStream, SockAddrHv)> {
        let stream = HvStream::from(self.inner.accept()?);
        let peer = stream.peer;
        Ok((stream, peer))
    }

    /// An endless iterator of connections, as [`std::net::TcpListener::incoming`].
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.inner.local_addr())
    }

    /// Moves the listener in or out of non-blocking mode: `accept` then fails with
    /// `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }

    /// A second handle to the same listener.
    pub fn try_clone(&self) -> io::Result<HvListener> {
        Ok(HvListener {
            inner: self.inner.try_clone()?,
        })
    }

    /// Moves the listener onto `fd`, another descriptor of the same socket (a `dup` of
    /// [`as_raw_fd`](std::os::fd::AsRawFd::as_raw_fd), e.g. put by `dup2` at a number a program
    /// already holds); the descriptor it had is closed. libhvsock uses it to give a C program's
    /// `socket(AF_HYPERV, ...)` descriptor its listener in place.
    ///
    /// Fails with `InvalidInput`, leaving the listener as it was, if `fd` is not the same socket.
    #[cfg(unix)]
    pub fn replace_fd(&mut self, fd: std::os::fd::OwnedFd) -> io::Result<()> {
        self.inner.replace_fd(fd)
    }
}

/// Most connections that may wait unaccepted (hvsockd's limit too).
const MAX_BACKLOG: u32 = 4096;

/// Refuses a backlog out of 1 to [`MAX_BACKLOG`].
pub(crate) fn check_backlog(backlog: u32) -> io::Result<()> {
    if backlog == 0 || backlog > MAX_BACKLOG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("backlog {backlog} is out of range (1 to {MAX_BACKLOG})"),
        ));
    }
    Ok(())
}

/// The iterator of [`HvListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a HvListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<HvStream>;
    fn next(&mut self) -> Option<io::Result<HvStream>> {
        Some(self.listener.accept().map(|(stream, _)| stream))
    }
}
