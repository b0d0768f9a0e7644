//! The async half of the Unix socket I/O: the crate's own [`Socket`] and [`sys::Listener`]
//! registered with tokio's reactor in an [`AsyncFd`], for the async types (`crate::tokio`).
//! Every read, write and accept is the sync half's own call, made when the reactor says the
//! descriptor is ready.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use ::tokio::io::ReadBuf;
use ::tokio::io::unix::AsyncFd;

use crate::addr::SockAddrHv;
use crate::sys::{self, Established, Socket};

/// A type that owns exactly one open descriptor for its whole life and always returns that
/// one from `as_raw_fd`: what [`AsyncFd::register`] requires.
pub(crate) trait OwnsOneFd: AsRawFd {}

impl OwnsOneFd for OwnedFd {}
impl OwnsOneFd for Socket {}

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
///
/// The runtime watches a *duplicate* of the listener's descriptor, not the descriptor itself:
/// when a provider listener binds again after hvsockd came back, the new session is put on
/// the listener's own descriptor number (`dup3`), which an epoll registration does not
/// survive. So after a re-bind a new duplicate is registered, and the old registration is
/// dropped with the last accept that still waits on it. Accepts waiting while the listener
/// binds again are woken when that ends.
#[derive(Debug)]
pub(crate) struct ListenerIo {
    listener: sys::Listener,
    watched: Mutex<Watched>,
}

#[derive(Debug)]
struct Watched {
    /// The listener's generation that `afd` watches a duplicate of.
    generation: u64,
    afd: Arc<AsyncFd<OwnedFd>>,
}

impl ListenerIo {
    /// Registers `listener`, putting it in non-blocking mode.
    pub(crate) fn new(listener: sys::Listener) -> io::Result<ListenerIo> {
        listener.set_nonblocking(true)?;
        let watched = Watched {
            generation: listener.generation(),
            afd: Arc::new(register(sys::unix::dup(listener.as_fd())?)?),
        };
        Ok(ListenerIo {
            listener,
            watched: Mutex::new(watched),
        })
    }

    /// Deregisters the listener and gives it back (still non-blocking).
    pub(crate) fn into_listener(self) -> io::Result<sys::Listener> {
        Ok(self.listener)
    }

    /// The registration to wait on, renewed if the listener moved onto a new session.
    fn watched(&self) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
        self.listener.catch_up()?;
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.listener.generation();
        if watched.generation != generation {
            *watched = Watched {
                generation,
                afd: Arc::new(register(sys::unix::dup(self.listener.as_fd())?)?),
            };
        }
        Ok(watched.afd.clone())
    }

    /// Waits for the next connection. Cancellation safe: a connection is taken only in the
    /// poll that returns it.
    pub(crate) async fn accept(&self) -> io::Result<Established> {
        self.listener.flush();
        loop {
            let afd = self.watched()?;
            let mut guard = afd.readable().await?;
            match guard.try_io(|_| self.listener.accept()) {
                Ok(result) => return result,
                Err(_would_block) => {
                    // Binding again: wait for it to end instead of for the dead session.
                    std::future::poll_fn(|cx| {
                        if self.listener.wake_when_rebound(cx.waker()) {
                            Poll::Pending
                        } else {
                            Poll::Ready(())
                        }
                    })
                    .await;
                }
            }
        }
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Established>> {
        self.listener.flush();
        loop {
            let afd = self.watched()?;
            let mut guard = ready!(afd.poll_read_ready(cx))?;
            match guard.try_io(|_| self.listener.accept()) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {
                    if self.listener.wake_when_rebound(cx.waker()) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.listener.local_addr()
    }

    pub(crate) fn listener(&self) -> &sys::Listener {
        &self.listener
    }
}

impl AsFd for ListenerIo {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}
