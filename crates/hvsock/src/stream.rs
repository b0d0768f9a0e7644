//! [`HvStream`]: a connected Hyper-V socket.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use crate::addr::{HVSOCKET_CONNECT_TIMEOUT_MAX, SockAddrHv};
use crate::sys::{self, Backend, Established};
use crate::transport::Transport;

/// The connect timeout when none is given, as on Windows.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected stream between two partitions.
///
/// It is a real kernel socket (a Unix socket handed over by hvsockd, or a vsock socket): it
/// works with `poll`/`epoll` through `AsRawFd`, and hvsockd relays no bytes of it. On Windows
/// it is an `AF_HYPERV` socket, with `AsSocket`/`AsRawSocket`.
#[derive(Debug)]
pub struct HvStream {
    pub(crate) inner: sys::Socket,
    pub(crate) local: SockAddrHv,
    pub(crate) peer: SockAddrHv,
}

impl HvStream {
    /// Connects to `addr` through the transport the environment chooses
    /// ([`Transport::from_env`]), waiting at most [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect(addr: SockAddrHv) -> io::Result<HvStream> {
        HvStream::connect_with(&Transport::from_env()?, addr, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects like [`HvStream::connect`], waiting at most `timeout` (like Windows'
    /// `HVSOCKET_CONNECT_TIMEOUT`; at most 300 s). A zero timeout is an error.
    pub fn connect_timeout(addr: SockAddrHv, timeout: Duration) -> io::Result<HvStream> {
        HvStream::connect_with(&Transport::from_env()?, addr, timeout)
    }

    /// Connects to `addr` through `transport`, waiting at most `timeout`.
    pub fn connect_with(
        transport: &Transport,
        addr: SockAddrHv,
        timeout: Duration,
    ) -> io::Result<HvStream> {
        let timeout = check_timeout(timeout)?;
        Backend::of(transport)?
            .connect(addr, timeout)
            .map(HvStream::from)
    }

    /// The address of this end: this partition's id and the service.
    pub fn local_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.local)
    }

    /// The address of the other end: its partition's id and the service.
    pub fn peer_addr(&self) -> io::Result<SockAddrHv> {
        Ok(self.peer)
    }

    /// Shuts down the read, write or both halves. `Shutdown::Write` sends EOF to the peer.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// A second handle to the same connection.
    pub fn try_clone(&self) -> io::Result<HvStream> {
        Ok(HvStream {
            inner: self.inner.try_clone()?,
            local: self.local,
            peer: self.peer,
        })
    }

    /// Sets the read timeout (`None`: block forever). A zero duration is an error.
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(dur)
    }

    /// Sets the write timeout (`None`: block forever). A zero duration is an error.
    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(dur)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.read_timeout()
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.write_timeout()
    }

    /// Moves the socket in or out of non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }

    /// Reads without consuming.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.peek(buf)
    }

    /// The pending socket error (`SO_ERROR`), if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Keeps the connection open while the VM at either end is suspended (Windows'
    /// `HVSOCKET_CONNECTED_SUSPEND`); by default Hyper-V resets it.
    ///
    /// Windows only (the `AF_HYPERV` transport): elsewhere this fails with `Unsupported`, as
    /// neither hvsockd nor `AF_VSOCK` has such an option.
    pub fn set_connected_suspend(&self, keep: bool) -> io::Result<()> {
        #[cfg(windows)]
        return self.inner.set_connected_suspend(keep);
        #[cfg(not(windows))]
        {
            let _ = keep;
            Err(connected_suspend_unsupported())
        }
    }

    /// Whether the connection is kept across a VM suspend
    /// ([`set_connected_suspend`](HvStream::set_connected_suspend)). Windows only; elsewhere
    /// `Unsupported`.
    pub fn connected_suspend(&self) -> io::Result<bool> {
        #[cfg(windows)]
        return self.inner.connected_suspend();
        #[cfg(not(windows))]
        Err(connected_suspend_unsupported())
    }
}

impl From<Established> for HvStream {
    fn from(est: Established) -> HvStream {
        HvStream {
            inner: est.socket,
            local: est.local,
            peer: est.peer,
        }
    }
}

#[cfg(not(windows))]
fn connected_suspend_unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "HVSOCKET_CONNECTED_SUSPEND is a Windows AF_HYPERV option; hvsockd and AF_VSOCK \
         connections have no equivalent",
    )
}

pub(crate) fn check_timeout(timeout: Duration) -> io::Result<Duration> {
    if timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero connect timeout is not allowed",
        ));
    }
    Ok(timeout.min(Duration::from_millis(HVSOCKET_CONNECT_TIMEOUT_MAX.into())))
}

impl Read for HvStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Read for &HvStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for HvStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &HvStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(windows))]
    use crate::guid::{ServiceId, VmId};

    #[cfg(not(windows))]
    const ADDR: SockAddrHv = SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(2761));

    /// Off Windows, asking for AF_HYPERV is a clear `Unsupported`, never a build failure.
    #[cfg(not(windows))]
    #[test]
    fn the_hyperv_transport_is_unsupported_off_windows() {
        let err = HvStream::connect_with(&Transport::HyperV, ADDR, Duration::from_secs(1))
            .expect_err("no AF_HYPERV here");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("Windows' AF_HYPERV"), "{err}");
        let err = crate::HvListener::bind_with(&Transport::HyperV, ADDR, 1)
            .expect_err("no AF_HYPERV here");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// HVSOCKET_CONNECTED_SUSPEND is one API everywhere: `Unsupported` off Windows.
    #[cfg(unix)]
    #[test]
    fn connected_suspend_is_unsupported_off_windows() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let stream = HvStream {
            inner: sys::Socket::from_fd(a.into()),
            local: ADDR,
            peer: ADDR,
        };
        for err in [
            stream.set_connected_suspend(true).expect_err("unsupported"),
            stream.connected_suspend().expect_err("unsupported"),
        ] {
            assert_eq!(err.kind(), io::ErrorKind::Unsupported);
            assert!(
                err.to_string().contains("HVSOCKET_CONNECTED_SUSPEND"),
                "{err}"
            );
        }
    }

    #[test]
    fn connect_timeouts_are_clamped_to_windows_maximum() {
        assert!(check_timeout(Duration::ZERO).is_err());
        assert_eq!(
            check_timeout(Duration::from_secs(600)).ok(),
            Some(Duration::from_millis(300_000))
        );
    }
}
