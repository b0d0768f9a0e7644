//! Every OS-specific line of the crate, chosen by `cfg`; the types above this module are safe
//! and portable.
//!
//! - `unix`: stream socket I/O, and the provider transport (hvsockd's endpoint);
//! - `unix::vsock` (Linux): the `AF_VSOCK` transport for use inside a guest;
//! - `windows`: the native `AF_HYPERV` transport;
//! - `hyperv`: its plain logic (`SOCKADDR_HV` conversion, the Winsock error table), compiled on
//!   Windows and in tests everywhere.

#[cfg(unix)]
pub(crate) mod unix;

#[cfg(unix)]
pub(crate) use unix::Socket;

#[cfg(windows)]
pub(crate) mod windows;

#[cfg(windows)]
pub(crate) use windows::Socket;

#[cfg(any(windows, test))]
#[cfg_attr(not(windows), allow(dead_code))] // elsewhere, only its tests use it
pub(crate) mod hyperv;

use std::io;
use std::time::Duration;

use crate::addr::SockAddrHv;
use crate::stream::HvStream;
use crate::transport::Transport;

/// Connects through `transport`.
pub(crate) fn connect(
    transport: &Transport,
    addr: SockAddrHv,
    timeout: Duration,
) -> io::Result<HvStream> {
    match transport {
        #[cfg(unix)]
        Transport::Provider(endpoint) => {
            unix::provider::connect(endpoint, addr, timeout).map(HvStream::from)
        }
        #[cfg(target_os = "linux")]
        Transport::Vsock => unix::vsock::connect(addr, timeout).map(HvStream::from),
        #[cfg(windows)]
        Transport::HyperV => windows::connect(addr, timeout),
        other => Err(other.unsupported()),
    }
}

/// A listener of any transport.
///
/// The async listener (`crate::tokio`) wraps this enum in an `AsyncFd`: every variant must own
/// exactly one descriptor for its whole life (the one `as_fd` returns), that descriptor must
/// become readable when a connection waits, and `accept` on a non-blocking listener must
/// return `WouldBlock` when none does.
#[derive(Debug)]
pub(crate) enum Listener {
    #[cfg(unix)]
    Provider(unix::provider::Listener),
    #[cfg(target_os = "linux")]
    Vsock(unix::vsock::Listener),
    #[cfg(windows)]
    HyperV(windows::Listener),
}

impl Listener {
    pub(crate) fn bind(
        transport: &Transport,
        addr: SockAddrHv,
        backlog: u32,
    ) -> io::Result<Listener> {
        match transport {
            #[cfg(unix)]
            Transport::Provider(endpoint) => Ok(Listener::Provider(
                unix::provider::Listener::bind(endpoint, addr, backlog)?,
            )),
            #[cfg(target_os = "linux")]
            Transport::Vsock => Ok(Listener::Vsock(unix::vsock::Listener::bind(addr, backlog)?)),
            #[cfg(windows)]
            Transport::HyperV => Ok(Listener::HyperV(windows::Listener::bind(addr, backlog)?)),
            other => Err(other.unsupported()),
        }
    }

    pub(crate) fn accept(&self) -> io::Result<HvStream> {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => l.accept().map(HvStream::from),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.accept().map(HvStream::from),
            #[cfg(windows)]
            Listener::HyperV(l) => l.accept(),
        }
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => l.local_addr(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.local_addr(),
            #[cfg(windows)]
            Listener::HyperV(l) => l.local_addr(),
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => l.set_nonblocking(on),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.set_nonblocking(on),
            #[cfg(windows)]
            Listener::HyperV(l) => l.set_nonblocking(on),
        }
    }

    /// Sends what the transport still owes the other side for earlier accepts (hvsockd's
    /// `Ack`s that would have blocked); never waits.
    #[cfg_attr(any(windows, not(feature = "tokio")), allow(dead_code))] // used by the async client
    pub(crate) fn flush(&self) {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => l.flush_acks(),
            // A vsock listener owes nobody anything.
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => {}
            // Winsock owes nobody anything.
            #[cfg(windows)]
            Listener::HyperV(_) => {}
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Listener> {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => Ok(Listener::Provider(l.try_clone()?)),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => Ok(Listener::Vsock(l.try_clone()?)),
            #[cfg(windows)]
            Listener::HyperV(l) => Ok(Listener::HyperV(l.try_clone()?)),
        }
    }
}

#[cfg(unix)]
impl Listener {
    /// Moves the listener onto `fd`, which must be another descriptor of the same socket (same
    /// device and inode); its old descriptor is closed. Otherwise `InvalidInput`, unchanged.
    pub(crate) fn replace_fd(&mut self, fd: std::os::fd::OwnedFd) -> io::Result<()> {
        use std::os::fd::AsFd;
        let now = rustix::fs::fstat(self.as_fd())?;
        let new = rustix::fs::fstat(&fd)?;
        if (now.st_dev, now.st_ino) != (new.st_dev, new.st_ino) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "replace_fd: the new descriptor is not the listener's socket (dup it first)",
            ));
        }
        match self {
            Listener::Provider(l) => l.set_fd(fd),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.set_fd(fd),
        }
        Ok(())
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Provider(l) => l.fd(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.fd(),
        }
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(self).as_raw_fd()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Listener {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        match self {
            Listener::HyperV(l) => l.socket(),
        }
    }
}
