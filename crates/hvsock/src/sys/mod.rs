//! Every OS-specific line of the crate, chosen by `cfg`; the types above this module are safe
//! and portable, and this module never names them.
//!
//! - [`Backend`]: the one transport dispatch. A [`Transport`] resolves to the backend this
//!   platform has for it (or an `Unsupported` error that says what to use instead), and the
//!   backend connects and binds, blocking (`connect`, `bind`) for the std types or awaiting
//!   (`connect_async`, `bind_async`) for the tokio types. Every transport gives the same
//!   [`Established`] (the data socket and both addresses) and a [`Listener`] variant.
//! - `unix`: the stream [`Socket`] of Unix transports; `unix::provider`, the client of hvsockd's
//!   endpoint; `unix::vsock` (Linux), `AF_VSOCK` inside a guest;
//! - `windows`: the native `AF_HYPERV` transport and its [`Socket`];
//! - `hyperv`: the plain logic of `AF_HYPERV` (`SOCKADDR_HV` conversion, the Winsock error
//!   table), compiled on Windows and in tests everywhere.
//!
//! The async halves live beside their sync halves, in the `tokio` submodules (feature
//! `tokio`): `unix::tokio` and `windows::tokio` register a [`Socket`] or a [`Listener`] with
//! the runtime ([`StreamIo`], [`ListenerIo`]); `unix::provider::tokio` is the async client of
//! hvsockd.

#[cfg(unix)]
pub(crate) mod unix;

#[cfg(unix)]
pub(crate) use unix::Socket;
#[cfg(all(unix, feature = "tokio"))]
pub(crate) use unix::tokio::{ListenerIo, StreamIo};

#[cfg(windows)]
pub(crate) mod windows;

#[cfg(windows)]
pub(crate) use windows::Socket;
#[cfg(all(windows, feature = "tokio"))]
pub(crate) use windows::tokio::{ListenerIo, StreamIo};

#[cfg(any(windows, test))]
#[cfg_attr(not(windows), allow(dead_code))] // elsewhere, only its tests use it
pub(crate) mod hyperv;

use std::io;
#[cfg(unix)]
use std::path::Path;
use std::time::Duration;

use crate::addr::SockAddrHv;
use crate::transport::Transport;

/// What every transport's `connect` and `accept` give: the data socket and both addresses.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) socket: Socket,
    pub(crate) local: SockAddrHv,
    pub(crate) peer: SockAddrHv,
}

/// A transport that this platform has: what a [`Transport`] resolves to, for the std and the
/// tokio types alike.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend<'t> {
    /// Through the hvsockd endpoint at this path.
    #[cfg(unix)]
    Provider(&'t Path),
    /// `AF_VSOCK`, inside a Linux guest.
    #[cfg(target_os = "linux")]
    Vsock,
    /// `AF_HYPERV`, on Windows (the lifetime is the provider's endpoint path, which Windows
    /// has none of).
    #[cfg(windows)]
    HyperV(std::marker::PhantomData<&'t ()>),
}

impl<'t> Backend<'t> {
    /// The backend of `transport` on this platform; `Unsupported` (saying what to use instead)
    /// for a transport this platform does not have.
    pub(crate) fn of(transport: &'t Transport) -> io::Result<Backend<'t>> {
        match transport {
            #[cfg(unix)]
            Transport::Provider(endpoint) => Ok(Backend::Provider(endpoint)),
            #[cfg(target_os = "linux")]
            Transport::Vsock => Ok(Backend::Vsock),
            #[cfg(windows)]
            Transport::HyperV => Ok(Backend::HyperV(std::marker::PhantomData)),
            other => Err(other.unsupported()),
        }
    }

    /// Connects to `addr`, blocking for at most about `timeout` (already checked).
    pub(crate) fn connect(self, addr: SockAddrHv, timeout: Duration) -> io::Result<Established> {
        match self {
            #[cfg(unix)]
            Backend::Provider(endpoint) => unix::provider::connect(endpoint, addr, timeout),
            #[cfg(target_os = "linux")]
            Backend::Vsock => unix::vsock::connect(addr, timeout),
            #[cfg(windows)]
            Backend::HyperV(_) => windows::connect(addr, timeout),
        }
    }

    /// Binds `addr` with room for `backlog` (already checked) unaccepted connections.
    pub(crate) fn bind(self, addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
        match self {
            #[cfg(unix)]
            Backend::Provider(endpoint) => Ok(Listener::Provider(unix::provider::Listener::bind(
                endpoint, addr, backlog,
            )?)),
            #[cfg(target_os = "linux")]
            Backend::Vsock => Ok(Listener::Vsock(unix::vsock::Listener::bind(addr, backlog)?)),
            #[cfg(windows)]
            Backend::HyperV(_) => Ok(Listener::HyperV(windows::Listener::bind(addr, backlog)?)),
        }
    }

    /// [`connect`](Backend::connect) without blocking the runtime.
    #[cfg(feature = "tokio")]
    pub(crate) async fn connect_async(
        self,
        addr: SockAddrHv,
        timeout: Duration,
    ) -> io::Result<Established> {
        match self {
            #[cfg(unix)]
            Backend::Provider(endpoint) => {
                unix::provider::tokio::connect(endpoint, addr, timeout).await
            }
            #[cfg(target_os = "linux")]
            Backend::Vsock => unix::vsock::connect_async(addr, timeout).await,
            #[cfg(windows)]
            Backend::HyperV(_) => windows::tokio::connect(addr, timeout).await,
        }
    }

    /// [`bind`](Backend::bind) without blocking the runtime: only hvsockd's answer is waited
    /// for; binding a vsock or `AF_HYPERV` socket never waits.
    #[cfg(feature = "tokio")]
    pub(crate) async fn bind_async(self, addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
        match self {
            #[cfg(unix)]
            Backend::Provider(endpoint) => Ok(Listener::Provider(
                unix::provider::tokio::bind(endpoint, addr, backlog).await?,
            )),
            #[cfg(any(target_os = "linux", windows))]
            other => other.bind(addr, backlog),
        }
    }
}

/// A listener of any transport.
///
/// The async listener wraps this enum in its runtime registration ([`ListenerIo`]): every
/// variant must own exactly one descriptor for its whole life (the one `as_fd` returns), that
/// descriptor must become readable when a connection waits, and `accept` on a non-blocking
/// listener must return `WouldBlock` when none does.
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
    /// Takes the next connection. Blocks unless the listener is non-blocking.
    pub(crate) fn accept(&self) -> io::Result<Established> {
        match self {
            #[cfg(unix)]
            Listener::Provider(l) => l.accept(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.accept(),
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
    /// Moves this handle's descriptor onto the newest session, if the provider listener bound
    /// again after hvsockd came back (a no-op for other transports).
    pub(crate) fn catch_up(&self) -> io::Result<()> {
        match self {
            Listener::Provider(l) => l.catch_up(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => Ok(()),
        }
    }

    /// Which session the descriptor holds: changes when a provider listener bound again.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Listener::Provider(l) => l.generation(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => 0,
        }
    }

    /// If the listener is binding again, keeps `waker` to be woken when that ends (true).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async listener
    pub(crate) fn wake_when_rebound(&self, waker: &std::task::Waker) -> bool {
        match self {
            Listener::Provider(l) => l.wake_when_rebound(waker),
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => false,
        }
    }

    /// How long a provider listener keeps binding again after hvsockd went away.
    pub(crate) fn set_rebind_patience(&self, patience: Duration) {
        match self {
            Listener::Provider(l) => l.set_rebind_patience(patience),
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => {}
        }
    }

    pub(crate) fn rebind_patience(&self) -> Duration {
        match self {
            Listener::Provider(l) => l.rebind_patience(),
            #[cfg(target_os = "linux")]
            Listener::Vsock(_) => Duration::ZERO,
        }
    }

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
