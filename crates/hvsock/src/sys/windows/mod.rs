//! The native `AF_HYPERV` transport (Windows): Hyper-V sockets through Winsock.
//!
//! Sockets come from `socket2`, which creates them with
//! `WSASocketW(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW, …, WSA_FLAG_OVERLAPPED |
//! WSA_FLAG_NO_HANDLE_INHERIT)` (so child processes do not inherit them, and they can be
//! registered with an I/O completion port or polled by an async runtime), accepts with
//! inheritance off too, and has the standard library start Winsock (`WSAStartup`) once before
//! the first socket. The Hyper-V options (`HVSOCKET_CONNECT_TIMEOUT`,
//! `HVSOCKET_CONNECTED_SUSPEND`, at level `HV_PROTOCOL_RAW`) are set with `windows-sys`'s
//! `setsockopt`. Addresses are `windows-sys`'s `SOCKADDR_HV`, converted by
//! [`super::hyperv`], whose logic is tested on every platform.
//!
//! The functions take `&socket2::Socket`, so that the async half (`tokio`, feature `tokio`),
//! which owns the socket through its runtime registration, runs them on a borrowed
//! `socket2::SockRef`.

#[cfg(feature = "tokio")]
pub(crate) mod tokio;

use std::io::{self, Read, Write};
use std::mem::{MaybeUninit, size_of};
use std::net::Shutdown;
use std::os::windows::io::{AsRawSocket, AsSocket, BorrowedSocket, OwnedSocket, RawSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Type, socklen_t};
use windows_sys::Win32::Networking::WinSock as ws;
use windows_sys::Win32::System::Hypervisor::{
    HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT, HVSOCKET_CONNECTED_SUSPEND, SOCKADDR_HV,
};

use super::hyperv::{self, Op, normalize, op_error};
use crate::addr::{AF_HYPERV, SockAddrHv};
use crate::sys::Established;

/// A new, unbound `AF_HYPERV` stream socket (non-inheritable, overlapped-capable).
pub(crate) fn new_socket(addr: SockAddrHv) -> io::Result<socket2::Socket> {
    socket2::Socket::new(
        Domain::from(i32::from(AF_HYPERV)),
        Type::STREAM,
        Some(Protocol::from(HV_PROTOCOL_RAW as i32)),
    )
    .map_err(|e| op_error(Op::Socket, addr, e))
}

/// `addr` as the address argument of Winsock calls.
pub(crate) fn sock_addr(addr: SockAddrHv) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `SOCKADDR_HV` is one of this platform's `sockaddr_*` types, 36 bytes with
    // alignment 4, so it fits in and is aligned for the 128-byte, 8-aligned storage
    // (`view_as` asserts the size too).
    unsafe { *storage.view_as::<SOCKADDR_HV>() = hyperv::to_raw(addr) };
    // SAFETY: the storage holds a complete `SOCKADDR_HV` (family AF_HYPERV) and the length is
    // its size.
    unsafe { SockAddr::new(storage, size_of::<SOCKADDR_HV>() as socklen_t) }
}

/// The Hyper-V address in a `SockAddr` that Winsock filled in, if it is one.
pub(crate) fn parse_sock_addr(addr: &SockAddr) -> Option<SockAddrHv> {
    if addr.family() != AF_HYPERV || (addr.len() as usize) < size_of::<SOCKADDR_HV>() {
        return None;
    }
    // SAFETY: the storage is at least `size_of::<SOCKADDR_HV>()` bytes (it is a whole
    // SOCKADDR_STORAGE), Winsock initialised `len` ≥ 36 of them, and `read_unaligned` has no
    // alignment requirement; every bit pattern is a valid `SOCKADDR_HV` (integers only).
    let raw = unsafe { addr.as_ptr().cast::<SOCKADDR_HV>().read_unaligned() };
    hyperv::from_raw(&raw).ok()
}

/// Sets a `u32` socket option at level `HV_PROTOCOL_RAW`.
fn set_hv_option(sock: &socket2::Socket, name: u32, value: u32) -> io::Result<()> {
    // SAFETY: the socket is open for the borrow; the option value is a live `u32` and the
    // length says 4 bytes; Winsock copies it before returning.
    let rc = unsafe {
        ws::setsockopt(
            sock.as_raw_socket() as ws::SOCKET,
            HV_PROTOCOL_RAW as i32,
            name as i32,
            (&raw const value).cast(),
            size_of::<u32>() as i32,
        )
    };
    if rc == ws::SOCKET_ERROR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a `u32` socket option at level `HV_PROTOCOL_RAW`.
fn hv_option(sock: &socket2::Socket, name: u32) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = size_of::<u32>() as i32;
    // SAFETY: the socket is open for the borrow; Winsock writes at most `len` (4) bytes to the
    // live `value` and the actual length to `len`.
    let rc = unsafe {
        ws::getsockopt(
            sock.as_raw_socket() as ws::SOCKET,
            HV_PROTOCOL_RAW as i32,
            name as i32,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == ws::SOCKET_ERROR {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets `HVSOCKET_CONNECT_TIMEOUT` (whole milliseconds, at most 5 minutes).
pub(crate) fn set_connect_timeout(
    sock: &socket2::Socket,
    addr: SockAddrHv,
    timeout: Duration,
) -> io::Result<()> {
    set_hv_option(
        sock,
        HVSOCKET_CONNECT_TIMEOUT,
        hyperv::connect_timeout_ms(timeout),
    )
    .map_err(|e| op_error(Op::Configure, addr, e))
}

/// The addresses of a connected socket as Windows reports them, each falling back to `local`
/// or `peer` when Windows reports nothing usable.
pub(crate) fn addresses(
    sock: &socket2::Socket,
    local: SockAddrHv,
    peer: SockAddrHv,
) -> (SockAddrHv, SockAddrHv) {
    let local = sock
        .local_addr()
        .ok()
        .as_ref()
        .and_then(parse_sock_addr)
        .unwrap_or(local);
    let peer = sock
        .peer_addr()
        .ok()
        .as_ref()
        .and_then(parse_sock_addr)
        .unwrap_or(peer);
    (local, peer)
}

/// Connects to `addr`, with `HVSOCKET_CONNECT_TIMEOUT` set to `timeout` (Hyper-V enforces it).
pub(crate) fn connect(addr: SockAddrHv, timeout: Duration) -> io::Result<Established> {
    let sock = new_socket(addr)?;
    set_connect_timeout(&sock, addr, timeout)?;
    sock.connect(&sock_addr(addr))
        .map_err(|e| op_error(Op::Connect(timeout), addr, e))?;
    let (local, peer) = addresses(
        &sock,
        SockAddrHv::new(crate::VmId::ZERO, addr.service_id),
        addr,
    );
    Ok(Established {
        socket: Socket(sock),
        local,
        peer,
    })
}

/// Binds `addr` and listens with room for `backlog` connections.
pub(crate) fn bind(addr: SockAddrHv, backlog: u32) -> io::Result<socket2::Socket> {
    let sock = new_socket(addr)?;
    sock.bind(&sock_addr(addr))
        .map_err(|e| op_error(Op::Bind, addr, e))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    sock.listen(backlog)
        .map_err(|e| op_error(Op::Listen, addr, e))?;
    Ok(sock)
}

/// Accepts one connection on the listening socket `sock` bound to `local`. The new socket is
/// non-inheritable; it inherits the listener's blocking mode (the caller decides).
pub(crate) fn accept(
    sock: &socket2::Socket,
    local: SockAddrHv,
) -> io::Result<(socket2::Socket, SockAddrHv, SockAddrHv)> {
    let (conn, peer) = sock.accept().map_err(normalize)?;
    let peer = parse_sock_addr(&peer);
    let (local, peer) = addresses(
        &conn,
        local,
        peer.unwrap_or(SockAddrHv::new(crate::VmId::ZERO, local.service_id)),
    );
    Ok((conn, local, peer))
}

pub(crate) fn read(sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<usize> {
    // `recv`; `WSAESHUTDOWN` after our own `shutdown(Read)` reads as EOF, as on Linux.
    let mut sock = sock;
    sock.read(buf).map_err(normalize)
}

pub(crate) fn peek(sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `recv` only writes initialised bytes into the buffer, so viewing initialised
    // bytes as `MaybeUninit<u8>` (same layout) for the call never de-initialises any.
    let uninit = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) };
    sock.peek(uninit).map_err(normalize)
}

pub(crate) fn write(sock: &socket2::Socket, buf: &[u8]) -> io::Result<usize> {
    let mut sock = sock;
    sock.write(buf).map_err(normalize)
}

pub(crate) fn write_vectored(
    sock: &socket2::Socket,
    bufs: &[io::IoSlice<'_>],
) -> io::Result<usize> {
    sock.send_vectored(bufs).map_err(normalize)
}

pub(crate) fn shutdown(sock: &socket2::Socket, how: Shutdown) -> io::Result<()> {
    sock.shutdown(how).map_err(normalize)
}

pub(crate) fn take_error(sock: &socket2::Socket) -> io::Result<Option<io::Error>> {
    Ok(sock.take_error()?.map(normalize))
}

/// A connected `AF_HYPERV` stream socket.
#[derive(Debug)]
pub(crate) struct Socket(socket2::Socket);

impl Socket {
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async types
    pub(crate) fn from_socket(sock: socket2::Socket) -> Socket {
        Socket(sock)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async types
    pub(crate) fn into_socket(self) -> socket2::Socket {
        self.0
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.0, buf)
    }

    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        peek(&self.0, buf)
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        write(&self.0, buf)
    }

    pub(crate) fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        write_vectored(&self.0, bufs)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        shutdown(&self.0, how)
    }

    pub(crate) fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        check_io_timeout(dur)?;
        self.0.set_read_timeout(dur)
    }

    pub(crate) fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        check_io_timeout(dur)?;
        self.0.set_write_timeout(dur)
    }

    pub(crate) fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.0.read_timeout()
    }

    pub(crate) fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.0.write_timeout()
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.0.set_nonblocking(on)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket(self.0.try_clone()?))
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        take_error(&self.0)
    }

    pub(crate) fn set_connected_suspend(&self, on: bool) -> io::Result<()> {
        set_hv_option(&self.0, HVSOCKET_CONNECTED_SUSPEND, u32::from(on)).map_err(normalize)
    }

    pub(crate) fn connected_suspend(&self) -> io::Result<bool> {
        Ok(hv_option(&self.0, HVSOCKET_CONNECTED_SUSPEND).map_err(normalize)? != 0)
    }
}

/// Winsock reads a zero timeout as "none"; refuse it, as the Unix transports do.
fn check_io_timeout(dur: Option<Duration>) -> io::Result<()> {
    if dur == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero timeout is not allowed (use None for no timeout)",
        ));
    }
    Ok(())
}

impl AsSocket for Socket {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.0.as_socket()
    }
}

impl AsRawSocket for Socket {
    fn as_raw_socket(&self) -> RawSocket {
        self.0.as_raw_socket()
    }
}

impl From<Socket> for OwnedSocket {
    fn from(sock: Socket) -> OwnedSocket {
        sock.0.into()
    }
}

/// A listening `AF_HYPERV` socket and the address it was bound to.
#[derive(Debug)]
pub(crate) struct Listener {
    sock: socket2::Socket,
    local: SockAddrHv,
}

impl Listener {
    pub(crate) fn bind(addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
        Ok(Listener {
            sock: bind(addr, backlog)?,
            local: addr,
        })
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async types
    pub(crate) fn from_parts(sock: socket2::Socket, local: SockAddrHv) -> Listener {
        Listener { sock, local }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async types
    pub(crate) fn into_parts(self) -> (socket2::Socket, SockAddrHv) {
        (self.sock, self.local)
    }

    /// Accepts one connection, as a blocking stream whatever the listener's mode.
    pub(crate) fn accept(&self) -> io::Result<Established> {
        let (conn, local, peer) = accept(&self.sock, self.local)?;
        conn.set_nonblocking(false)?;
        Ok(Established {
            socket: Socket(conn),
            local,
            peer,
        })
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.local
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            sock: self.sock.try_clone()?,
            local: self.local,
        })
    }

    pub(crate) fn socket(&self) -> BorrowedSocket<'_> {
        self.sock.as_socket()
    }
}

/// Run on Windows only (the project's checks compile them for Windows; there is no Windows
/// machine in its test runs). The loopback tests need Hyper-V sockets (a Hyper-V host or
/// guest) and say so and pass when the system has none.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::guid::{ServiceId, VmId};
    use crate::{HvListener, HvStream, Transport};

    #[test]
    fn sock_addr_round_trips_through_winsock_storage() {
        let addr = SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(2761));
        let sa = sock_addr(addr);
        assert_eq!(sa.family(), AF_HYPERV);
        assert_eq!(sa.len() as usize, 36);
        assert_eq!(parse_sock_addr(&sa), Some(addr));
        // SAFETY: the storage holds `len` (36) initialised bytes of a SOCKADDR_HV.
        let bytes = unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), 36) };
        assert_eq!(bytes, addr.to_bytes());
    }

    /// A listener on `loopback:<port>`, or `None` when this Windows has no Hyper-V sockets.
    fn loopback_listener(port: u32) -> Option<(HvListener, SockAddrHv)> {
        let addr = SockAddrHv::new(VmId::LOOPBACK, ServiceId::from_vsock_port(port));
        match HvListener::bind_with(&Transport::HyperV, addr, 4) {
            Ok(listener) => Some((listener, addr)),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                eprintln!("skipped: no Hyper-V sockets here ({e})");
                None
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }

    #[test]
    fn loopback_connect_echo_and_half_close() {
        let Some((listener, addr)) = loopback_listener(0x6876_0001) else {
            return;
        };
        let client = std::thread::spawn(move || {
            let mut s =
                HvStream::connect_with(&Transport::HyperV, addr, Duration::from_secs(5)).unwrap();
            s.write_all(b"ping").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            back
        });
        let (mut conn, _peer) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        conn.write_all(b"pong").unwrap();
        drop(conn);
        assert_eq!(client.join().unwrap(), b"pong");
    }

    #[test]
    fn connected_suspend_is_a_stream_option() {
        let Some((listener, addr)) = loopback_listener(0x6876_0002) else {
            return;
        };
        let s = HvStream::connect_with(&Transport::HyperV, addr, Duration::from_secs(5)).unwrap();
        let _conn = listener.accept().unwrap();
        s.set_connected_suspend(true).unwrap();
        assert!(s.connected_suspend().unwrap());
        s.set_connected_suspend(false).unwrap();
        assert!(!s.connected_suspend().unwrap());
    }

    #[test]
    fn nothing_listening_is_refused_or_times_out() {
        if loopback_listener(0x6876_0003).is_none() {
            return;
        }
        let addr = SockAddrHv::new(VmId::LOOPBACK, ServiceId::from_vsock_port(0x6876_0004));
        let err = HvStream::connect_with(&Transport::HyperV, addr, Duration::from_millis(300))
            .expect_err("nothing listens");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert!(err.to_string().contains("loopback:"), "{err}");
    }

    // `crate`: this module's glob import brings in the sibling `tokio` module (the async
    // half), which the macro's own `tokio::` paths would otherwise resolve to.
    #[cfg(feature = "tokio")]
    #[::tokio::test(crate = "::tokio")]
    async fn async_loopback_echo() {
        use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some((listener, addr)) = loopback_listener(0x6876_0005) else {
            return;
        };
        let listener = crate::tokio::HvListener::from_std(listener).unwrap();
        let server = ::tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = conn.into_split();
            ::tokio::io::copy(&mut rd, &mut wr).await.unwrap();
        });
        let mut s =
            crate::tokio::HvStream::connect_with(&Transport::HyperV, addr, Duration::from_secs(5))
                .await
                .unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        server.await.unwrap();
    }
}
