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
///
/// # When hvsockd goes away
///
/// If hvsockd stops, crashes or restarts with nothing holding its sockets, the session ends;
/// the listener then binds its address again, trying every few milliseconds (backing off to
/// 50 ms) for up to its *patience* ([`set_rebind_patience`](HvListener::set_rebind_patience);
/// 30 s by default, or `HVSOCK_REBIND_PATIENCE` seconds; 0 turns this off). The new session is
/// put on the **same descriptor number** (`dup3` over the old one), so
/// [`as_raw_fd`](std::os::fd::AsRawFd::as_raw_fd) never changes. A blocking
/// [`accept`](HvListener::accept) (and [`incoming`](HvListener::incoming)) just waits through
/// it: the application sees no error while hvsockd comes back within the patience; after it,
/// `accept` returns the error (the next call tries again). Connections already accepted are
/// not affected (they never pass through hvsockd). The async listener does the same.
///
/// **Programs that poll the raw descriptor** (a non-blocking listener in their own
/// `poll`/`epoll` loop): when the session ends, the descriptor reports hang-up and readable;
/// call `accept` as usual. It starts the re-bind on a thread of its own and says `WouldBlock`
/// (without spinning, since `poll` keeps reporting the hang-up until the re-bind ends: wait a
/// few milliseconds, e.g. `poll` with a 10 ms timeout, before calling again). The first
/// `accept` after the re-bind puts the new session on the descriptor. `poll` and `select`
/// need nothing more. **`epoll` drops a registration when the socket behind a descriptor is
/// replaced**, so an `epoll` user re-adds the descriptor (`EPOLL_CTL_ADD`, after a `DEL`
/// that may fail with `ENOENT`) whenever `accept` has returned `WouldBlock` after a hang-up
/// and [`rebind_generation`](HvListener::rebind_generation) has changed since it last
/// registered. A re-bind that ran out of patience is reported by the next `accept`.
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

    /// How long the listener keeps binding again after hvsockd went away (see
    /// [When hvsockd goes away](HvListener#when-hvsockd-goes-away)); shared with its
    /// clones. `Duration::ZERO` turns re-binding off: `accept` then fails at once with
    /// `ConnectionAborted` ("bind again"). Only the hvsockd transport re-binds; on the others
    /// this does nothing.
    #[cfg(unix)]
    pub fn set_rebind_patience(&self, patience: std::time::Duration) {
        self.inner.set_rebind_patience(patience);
    }

    /// The patience set by [`set_rebind_patience`](HvListener::set_rebind_patience).
    #[cfg(unix)]
    pub fn rebind_patience(&self) -> std::time::Duration {
        self.inner.rebind_patience()
    }

    /// How many times this descriptor has been moved onto a new session after hvsockd came
    /// back (0 until the first time): an `epoll` user re-registers the descriptor when it
    /// changes.
    #[cfg(unix)]
    pub fn rebind_generation(&self) -> u64 {
        let _ = self.inner.catch_up();
        self.inner.generation()
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
