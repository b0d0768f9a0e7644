//! The async [`HvStream`] and its owned halves.

use std::fmt;
use std::io;
use std::net::Shutdown;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
#[cfg(windows)]
use std::os::windows::io::{AsRawSocket, AsSocket, BorrowedSocket, RawSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::SockAddrHv;
use crate::stream::{DEFAULT_CONNECT_TIMEOUT, check_timeout};
use crate::sys::{Backend, Established, Socket, StreamIo};
use crate::transport::Transport;

/// A connected stream between two partitions, for tokio.
///
/// The async twin of [`crate::HvStream`]: the same kernel socket, registered with the
/// runtime. Reading returns 0 once the peer has shut down its write half; shutting down this
/// stream (`AsyncWriteExt::shutdown`) half-closes it, so the peer reads EOF while this end
/// can still read.
#[derive(Debug)]
pub struct HvStream {
    io: StreamIo,
    local: SockAddrHv,
    peer: SockAddrHv,
}

impl HvStream {
    /// Connects to `addr` through the transport the environment chooses
    /// ([`Transport::from_env`]), waiting at most [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(addr: SockAddrHv) -> io::Result<HvStream> {
        HvStream::connect_with(&Transport::from_env()?, addr, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Connects like [`HvStream::connect`], waiting at most `timeout` (at most 300 s; zero is
    /// an error).
    pub async fn connect_timeout(addr: SockAddrHv, timeout: Duration) -> io::Result<HvStream> {
        HvStream::connect_with(&Transport::from_env()?, addr, timeout).await
    }

    /// Connects to `addr` through `transport`, waiting at most `timeout` (at most 300 s; zero
    /// is an error). The errors are those of [`crate::HvStream::connect_with`].
    pub async fn connect_with(
        transport: &Transport,
        addr: SockAddrHv,
        timeout: Duration,
    ) -> io::Result<HvStream> {
        let timeout = check_timeout(timeout)?;
        let backend = Backend::of(transport)?;
        HvStream::established(backend.connect_async(addr, timeout).await?)
    }

    /// Registers a connected socket, putting it in non-blocking mode.
    pub(super) fn new(sock: Socket, local: SockAddrHv, peer: SockAddrHv) -> io::Result<HvStream> {
        Ok(HvStream {
            io: StreamIo::new(sock)?,
            local,
            peer,
        })
    }

    /// Registers what a transport's connect or accept gave.
    pub(super) fn established(est: Established) -> io::Result<HvStream> {
        HvStream::new(est.socket, est.local, est.peer)
    }

    /// Takes over a std [`crate::HvStream`], putting it in non-blocking mode.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with IO enabled, as tokio's own `from_std` functions.
    pub fn from_std(stream: crate::HvStream) -> io::Result<HvStream> {
        HvStream::new(stream.inner, stream.local, stream.peer)
    }

    /// Turns this back into a std [`crate::HvStream`]. As with tokio's `into_std`, the
    /// socket stays in non-blocking mode: call `set_nonblocking(false)` to block again.
    pub fn into_std(self) -> io::Result<crate::HvStream> {
        Ok(crate::HvStream {
            inner: self.io.into_socket()?,
            local: self.local,
            peer: self.peer,
        })
    }

    /// The address of this end: this partition's id and the service.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.local)
    }

    /// The address of the other end: its partition's id and the service.
    pub fn peer_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.peer)
    }

    /// The pending socket error (`SO_ERROR`), if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.take_error()
    }

    /// Splits the stream into a read half and a write half that can move to different tasks.
    /// Dropping the write half shuts the write direction down (the peer reads EOF), as with
    /// tokio's `UnixStream`; [`OwnedReadHalf::reunite`] puts them back together.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let stream = Arc::new(self);
        (
            OwnedReadHalf {
                stream: stream.clone(),
            },
            OwnedWriteHalf {
                stream,
                shutdown_on_drop: true,
            },
        )
    }

    fn poll_read_priv(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read(cx, buf)
    }

    fn poll_write_priv(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io.poll_write(cx, buf)
    }

    fn poll_write_vectored_priv(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.poll_write_vectored(cx, bufs)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.io.shutdown(Shutdown::Write)
    }
}

impl AsyncRead for HvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_priv(cx, buf)
    }
}

impl AsyncWrite for HvStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_priv(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored_priv(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Nothing is buffered: a no-op.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// `shutdown(Write)`: the peer reads EOF; this end can still read.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

#[cfg(unix)]
impl AsFd for HvStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

#[cfg(unix)]
impl AsRawFd for HvStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_fd().as_raw_fd()
    }
}

#[cfg(windows)]
impl AsSocket for HvStream {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.io.as_socket()
    }
}

#[cfg(windows)]
impl AsRawSocket for HvStream {
    fn as_raw_socket(&self) -> RawSocket {
        self.io.as_socket().as_raw_socket()
    }
}

impl TryFrom<crate::HvStream> for HvStream {
    type Error = io::Error;
    /// [`HvStream::from_std`].
    fn try_from(stream: crate::HvStream) -> io::Result<HvStream> {
        HvStream::from_std(stream)
    }
}

/// The read half of [`HvStream::into_split`].
#[derive(Debug)]
pub struct OwnedReadHalf {
    stream: Arc<HvStream>,
}

/// The write half of [`HvStream::into_split`]. Dropping it shuts the write direction down
/// unless [`forget`](OwnedWriteHalf::forget) was called.
#[derive(Debug)]
pub struct OwnedWriteHalf {
    stream: Arc<HvStream>,
    shutdown_on_drop: bool,
}

/// The halves given to [`OwnedReadHalf::reunite`] came from different streams; here they are
/// back.
#[derive(Debug)]
pub struct ReuniteError(pub OwnedReadHalf, pub OwnedWriteHalf);

impl fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tried to reunite halves that are not from the same HvStream")
    }
}

impl std::error::Error for ReuniteError {}

impl OwnedReadHalf {
    /// Puts the stream back together, if `write` is this half's other half.
    pub fn reunite(self, mut write: OwnedWriteHalf) -> Result<HvStream, ReuniteError> {
        if !Arc::ptr_eq(&self.stream, &write.stream) {
            return Err(ReuniteError(self, write));
        }
        write.shutdown_on_drop = false;
        drop(write);
        // The two halves held the only references (the Arc never leaves them) and the
        // write half is gone.
        Ok(Arc::try_unwrap(self.stream)
            .unwrap_or_else(|_| unreachable!("an HvStream half outlived its reunite")))
    }

    /// The address of this end.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        self.stream.local_addr()
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SockAddrHv> {
        self.stream.peer_addr()
    }
}

impl OwnedWriteHalf {
    /// Drops this half without shutting the write direction down.
    pub fn forget(mut self) {
        self.shutdown_on_drop = false;
    }

    /// The address of this end.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        self.stream.local_addr()
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SockAddrHv> {
        self.stream.peer_addr()
    }
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        if self.shutdown_on_drop {
            // The peer may be gone already; nothing to report from a drop.
            let _ = self.stream.shutdown_write();
        }
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream.poll_read_priv(cx, buf)
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream.poll_write_priv(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream.poll_write_vectored_priv(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// `shutdown(Write)`; the drop then does not do it again.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.stream.shutdown_write();
        if result.is_ok() {
            self.shutdown_on_drop = false;
        }
        Poll::Ready(result)
    }
}

#[cfg(unix)]
impl AsFd for OwnedReadHalf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(unix)]
impl AsFd for OwnedWriteHalf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(windows)]
impl AsSocket for OwnedReadHalf {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.stream.as_socket()
    }
}

#[cfg(windows)]
impl AsSocket for OwnedWriteHalf {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.stream.as_socket()
    }
}
