//! The async half of the `AF_HYPERV` transport: the registration of its sockets with tokio's
//! reactor, for the async types (`crate::tokio`), and the async connect.
//!
//! tokio has no `AsyncFd` on Windows. Its reactor (mio) waits on sockets with AFD polling
//! (`IOCTL_AFD_POLL` on the socket's base handle), which works for any Winsock socket served by
//! AFD, `AF_HYPERV` included (Microsoft's OpenVMM polls its Hyper-V sockets the same way). The
//! one public door to that reactor for a socket is `tokio::net::TcpStream::from_std`, so the
//! socket, stream or listening, is registered as a `TcpStream` that serves **only** as the
//! registration: every call on the socket is this crate's own (`recv`, `send`, `accept`,
//! `shutdown`, `SO_ERROR`, through the parent module on a borrowed `socket2::SockRef`),
//! made inside `TcpStream::try_io`/`async_io` so that a `WouldBlock` re-arms the poll. No TCP
//! method (addresses, `nodelay`, …) is ever called on it.
//!
//! Readiness: AFD reports a pending connection on a listening socket as "receive/accept",
//! which mio maps to readable; a finished non-blocking connect as "send" (writable), a failed
//! one as "connect fail" (readable, writable and an error in `SO_ERROR`).

use std::io;
use std::net::Shutdown;
use std::os::windows::io::{AsSocket, BorrowedSocket};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ::tokio::io::{Interest, ReadBuf};
use ::tokio::net::TcpStream;
use socket2::SockRef;

use crate::addr::SockAddrHv;
use crate::guid::VmId;
use crate::sys::hyperv::{Op, op_error};
use crate::sys::{self, Established, Socket, windows};

/// How long past the connect timeout the async connect waits for Hyper-V to answer.
const CONNECT_GRACE: Duration = Duration::from_secs(1);

/// Registers a non-blocking socket with the current runtime (see the module docs).
fn register(sock: socket2::Socket) -> io::Result<TcpStream> {
    sock.set_nonblocking(true)?;
    TcpStream::from_std(std::net::TcpStream::from(sock))
}

/// Deregisters a socket and gives it back (still non-blocking).
fn deregister(io: TcpStream) -> io::Result<socket2::Socket> {
    Ok(socket2::Socket::from(io.into_std()?))
}

/// Connects to `addr` without blocking the runtime: a non-blocking `connect` with
/// `HVSOCKET_CONNECT_TIMEOUT` set, then the wait for writability and `SO_ERROR`. Hyper-V
/// enforces the timeout; the wait gives up [`CONNECT_GRACE`] later in any case. Dropping the
/// future closes the socket. The socket comes back deregistered, as every transport's
/// [`Established`] does; the async stream registers it again.
pub(crate) async fn connect(addr: SockAddrHv, timeout: Duration) -> io::Result<Established> {
    let sock = windows::new_socket(addr)?;
    windows::set_connect_timeout(&sock, addr, timeout)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&windows::sock_addr(addr)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(op_error(Op::Connect(timeout), addr, e)),
    }
    let io = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    let connected = async {
        io.writable().await?;
        match windows::take_error(&SockRef::from(&io))? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    match ::tokio::time::timeout(timeout + CONNECT_GRACE, connected).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(op_error(Op::Connect(timeout), addr, e)),
        Err(_elapsed) => {
            return Err(op_error(
                Op::Connect(timeout),
                addr,
                io::Error::from(io::ErrorKind::TimedOut),
            ));
        }
    }
    let (local, peer) = windows::addresses(
        &SockRef::from(&io),
        SockAddrHv::new(VmId::ZERO, addr.service_id),
        addr,
    );
    Ok(Established {
        socket: Socket::from_socket(deregister(io)?),
        local,
        peer,
    })
}

/// A connected `AF_HYPERV` socket registered with the runtime.
#[derive(Debug)]
pub(crate) struct StreamIo(TcpStream);

impl StreamIo {
    /// Registers `sock`, putting it in non-blocking mode.
    pub(crate) fn new(sock: Socket) -> io::Result<StreamIo> {
        Ok(StreamIo(register(sock.into_socket())?))
    }

    /// Deregisters the socket and gives it back (still non-blocking).
    pub(crate) fn into_socket(self) -> io::Result<Socket> {
        Ok(Socket::from_socket(deregister(self.0)?))
    }

    fn sock(&self) -> SockRef<'_> {
        SockRef::from(&self.0)
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self
                .0
                .try_io(Interest::READABLE, || windows::read(&self.sock(), unfilled))
            {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self
                .0
                .try_io(Interest::WRITABLE, || windows::write(&self.sock(), buf))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_io(Interest::WRITABLE, || {
                windows::write_vectored(&self.sock(), bufs)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        windows::shutdown(&self.sock(), how)
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        windows::take_error(&self.sock())
    }
}

impl AsSocket for StreamIo {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.0.as_socket()
    }
}

/// A listening `AF_HYPERV` socket registered with the runtime, and the address it was bound
/// to.
#[derive(Debug)]
pub(crate) struct ListenerIo {
    io: TcpStream,
    local: SockAddrHv,
}

impl ListenerIo {
    /// Registers `listener`, putting it in non-blocking mode.
    pub(crate) fn new(listener: sys::Listener) -> io::Result<ListenerIo> {
        let sys::Listener::HyperV(listener) = listener;
        let (sock, local) = listener.into_parts();
        Ok(ListenerIo {
            io: register(sock)?,
            local,
        })
    }

    /// Deregisters the listener and gives it back (still non-blocking).
    pub(crate) fn into_listener(self) -> io::Result<sys::Listener> {
        Ok(sys::Listener::HyperV(windows::Listener::from_parts(
            deregister(self.io)?,
            self.local,
        )))
    }

    fn accept_now(&self) -> io::Result<Established> {
        let (conn, local, peer) = windows::accept(&SockRef::from(&self.io), self.local)?;
        Ok(Established {
            socket: Socket::from_socket(conn),
            local,
            peer,
        })
    }

    /// Waits for the next connection. Cancellation safe: a connection is taken only by the
    /// `accept` call that returns it.
    pub(crate) async fn accept(&self) -> io::Result<Established> {
        self.io
            .async_io(Interest::READABLE, || self.accept_now())
            .await
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Established>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_io(Interest::READABLE, || self.accept_now()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.local
    }
}

impl AsSocket for ListenerIo {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.io.as_socket()
    }
}
