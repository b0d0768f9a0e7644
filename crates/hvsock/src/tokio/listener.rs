//! The async [`HvListener`].

use std::io;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
#[cfg(windows)]
use std::os::windows::io::{AsRawSocket, AsSocket, BorrowedSocket, RawSocket};
use std::task::{Context, Poll};

use super::stream::HvStream;
use crate::addr::SockAddrHv;
use crate::listener::{DEFAULT_BACKLOG, check_backlog};
use crate::sys::{Backend, Established, ListenerIo};
use crate::transport::Transport;

/// A listener bound to a `(vm, service)` address in this partition, for tokio.
///
/// The async twin of [`crate::HvListener`] (see there for what the VM part of the address
/// accepts). Through hvsockd it is a session with the daemon, registered with the runtime:
/// each accepted connection is acknowledged to hvsockd, which frees a backlog slot.
#[derive(Debug)]
pub struct HvListener {
    io: ListenerIo,
}

impl HvListener {
    /// Binds `addr` through the transport the environment chooses ([`Transport::from_env`]),
    /// with room for [`DEFAULT_BACKLOG`] unaccepted connections.
    pub async fn bind(addr: SockAddrHv) -> io::Result<HvListener> {
        HvListener::bind_with(&Transport::from_env()?, addr, DEFAULT_BACKLOG).await
    }

    /// Binds `addr` through `transport`, with room for `backlog` unaccepted connections
    /// (1 to 4096). The errors are those of [`crate::HvListener::bind_with`].
    pub async fn bind_with(
        transport: &Transport,
        addr: SockAddrHv,
        backlog: u32,
    ) -> io::Result<HvListener> {
        check_backlog(backlog)?;
        let listener = Backend::of(transport)?.bind_async(addr, backlog).await?;
        Ok(HvListener {
            io: ListenerIo::new(listener)?,
        })
    }

    /// Takes over a std [`crate::HvListener`], putting it in non-blocking mode.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with IO enabled, as tokio's own `from_std` functions.
    pub fn from_std(listener: crate::HvListener) -> io::Result<HvListener> {
        Ok(HvListener {
            io: ListenerIo::new(listener.inner)?,
        })
    }

    /// Turns this back into a std [`crate::HvListener`]. As with tokio's `into_std`, it stays
    /// in non-blocking mode: call `set_nonblocking(false)` to block again.
    pub fn into_std(self) -> io::Result<crate::HvListener> {
        Ok(crate::HvListener {
            inner: self.io.into_listener()?,
        })
    }

    /// Waits for the next connection; returns it and the connector's address.
    ///
    /// Cancellation safe: if the future is dropped before it completes, no connection is taken
    /// and the next `accept` gets it. Several tasks may wait on one listener at once.
    pub async fn accept(&self) -> io::Result<(HvStream, SockAddrHv)> {
        accepted(self.io.accept().await?)
    }

    /// Polls for the next connection. `Poll::Pending` registers `cx`'s waker to be woken when
    /// one waits; as with tokio's `poll_accept`, only the waker of the latest call is kept, so
    /// use [`accept`](HvListener::accept) when several tasks share the listener.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(HvStream, SockAddrHv)>> {
        self.io
            .poll_accept(cx)
            .map(|result| result.and_then(accepted))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.io.local_addr())
    }

    /// How long the listener keeps binding again after hvsockd went away, as
    /// [`crate::HvListener::set_rebind_patience`]: `accept` and `poll_accept` return no error
    /// while hvsockd comes back within it.
    #[cfg(unix)]
    pub fn set_rebind_patience(&self, patience: std::time::Duration) {
        self.io.listener().set_rebind_patience(patience);
    }
}

/// The async stream of an accepted connection, and its peer's address.
fn accepted(est: Established) -> io::Result<(HvStream, SockAddrHv)> {
    let peer = est.peer;
    Ok((HvStream::established(est)?, peer))
}

#[cfg(unix)]
impl AsFd for HvListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

#[cfg(unix)]
impl AsRawFd for HvListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_fd().as_raw_fd()
    }
}

#[cfg(windows)]
impl AsSocket for HvListener {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.io.as_socket()
    }
}

#[cfg(windows)]
impl AsRawSocket for HvListener {
    fn as_raw_socket(&self) -> RawSocket {
        self.io.as_socket().as_raw_socket()
    }
}

impl TryFrom<crate::HvListener> for HvListener {
    type Error = io::Error;
    /// [`HvListener::from_std`].
    fn try_from(listener: crate::HvListener) -> io::Result<HvListener> {
        HvListener::from_std(listener)
    }
}
