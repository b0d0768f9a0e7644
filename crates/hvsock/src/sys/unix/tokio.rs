//! The async half of the Unix socket I/O: the crate's own [`Socket`] and [`sys::Listener`]
//! registered with tokio's reactor in an [`AsyncFd`], for the async types (`crate::tokio`).
//! Every read, write and accept is the sync half's own call, made when the reactor says the
//! descriptor is ready.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::task::{Context, Poll, ready};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{Interest, ReadBuf};

use crate::addr::SockAddrHv;
use crate::sys::{self, Established, Socket};

/// A type that owns exactly one open descriptor for its whole life and always returns that
/// one from `as_raw_fd`: what [`AsyncFd::register`] requires.
pub(crate) trait OwnsOneFd: AsRawFd {}

impl OwnsOneFd for OwnedFd {}
impl OwnsOneFd for Socket {}
impl OwnsOneFd for sys::Listener {}

/// Registers `io` with the current runtime's reactor. The descriptor must be non-blocking.
pub(crate) fn register<T: OwnsOneFd>(io: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T: OwnsOneFd` owns one open descriptor until it is dropped (an `OwnedFd`, or a
    // type wrapping exactly one `OwnedFd` that it never replaces), and `as_raw_fd` always
    // returns that descriptor; the `AsyncFd` owns `io` from here on, so the descriptor stays
    // open and the same for the registration's whole life.
    unsafe { AsyncFd::register(io) }.map_err(io::Error::from)
}

/// A connected stream socket registered with the runtime.
#[derive(Debug)]
pub(crate) struct StreamIo(AsyncFd<Socket>);

impl StreamIo {
    /// Registers `sock`, putting it in non-blocking mode.
    pub(crate) fn new(sock: Socket) -> io::Result<StreamIo> {
        sock.set_nonblocking(true)?;
        Ok(StreamIo(register(sock)?))
    }

    /// Deregisters the socket and gives it back (still non-blocking).
    pub(crate) fn into_socket(self) -> io::Result<Socket> {
        Ok(self.0.into_inner())
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|io| io.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|io| io.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|io| io.get_ref().write_vectored(bufs)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.0.get_ref().shutdown(how)
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.0.get_ref().take_error()
    }
}

impl AsFd for StreamIo {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// A listener of any transport registered with the runtime.
#[derive(Debug)]
pub(crate) struct ListenerIo(AsyncFd<sys::Listener>);

impl ListenerIo {
    /// Registers `listener`, putting it in non-blocking mode.
    pub(crate) fn new(listener: sys::Listener) -> io::Result<ListenerIo> {
        listener.set_nonblocking(true)?;
        Ok(ListenerIo(register(listener)?))
    }

    /// Deregisters the listener and gives it back (still non-blocking).
    pub(crate) fn into_listener(self) -> io::Result<sys::Listener> {
        Ok(self.0.into_inner())
    }

    /// Waits for the next connection. Cancellation safe: a connection is taken only in the
    /// poll that returns it.
    pub(crate) async fn accept(&self) -> io::Result<Established> {
        self.0.get_ref().flush();
        self.0
            .async_io(Interest::READABLE, |listener| listener.accept())
            .await
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Established>> {
        self.0.get_ref().flush();
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            match guard.try_io(|io| io.get_ref().accept()) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.0.get_ref().local_addr()
    }
}

impl AsFd for ListenerIo {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}
