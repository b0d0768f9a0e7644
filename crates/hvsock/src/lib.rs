//! Hyper-V sockets for Rust: stream sockets between partitions (the host, its VMs and its
//! sandboxes), addressed by GUIDs instead of IP addresses, that never touch a network stack.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, VmId};
//!
//! # fn main() -> std::io::Result<()> {
//! let service = ServiceId::from_vsock_port(2761);
//! // In the host: accept from any partition that may reach it.
//! let listener = HvListener::bind(SockAddrHv::new(VmId::WILDCARD, service))?;
//! // In a child partition: connect to the parent.
//! let mut stream = HvStream::connect(SockAddrHv::new(VmId::PARENT, service))?;
//! stream.write_all(b"hello")?;
//! let (mut conn, peer) = listener.accept()?;
//! let mut buf = [0u8; 5];
//! conn.read_exact(&mut buf)?;
//! println!("{peer} says {}", String::from_utf8_lossy(&buf));
//! # Ok(())
//! # }
//! ```
//!
//! Inside a Linux guest of a VM attached to hvsockd (Firecracker, Cloud Hypervisor, QEMU with
//! vhost-device-vsock), the same program runs over `AF_VSOCK` with `HVSOCK_TRANSPORT=vsock`
//! (or [`Transport::Vsock`]): `PARENT` is the host, and services must be vsock ports
//! ([`ServiceId::from_vsock_port`]); see [`transport`] for the mapping.
//!
//! # Modules
//!
//! - [`guid`]: [`Guid`], [`VmId`], [`ServiceId`], the well-known VmIds and the vsock template;
//! - [`addr`]: [`SockAddrHv`] (byte-compatible with Windows `SOCKADDR_HV`) and `VM:SERVICE`
//!   strings;
//! - [`transport`]: how the crate reaches other partitions: through hvsockd (the provider), over
//!   `AF_VSOCK` inside a Linux guest, or `AF_HYPERV` on Windows; always chosen explicitly;
//! - [`HvStream`], [`HvListener`] (`stream`, `listener`): the std-style socket types;
//! - [`dirs`]: where hvsockd keeps its registry and sockets;
//! - `tokio` (feature `tokio`): async twins of the socket types, `tokio::HvListener`
//!   and `tokio::HvStream`;
//! - `sys` (private): every system call, by platform, under one transport dispatch
//!   (`sys::Backend`) that the std and the tokio types share. Each transport gives the same
//!   `Established` (the data socket and both addresses):
//!   - `sys::unix`: the stream socket of the Unix transports; `sys::unix::provider`, the
//!     client of hvsockd (`mux`: the std connect over one shared control connection); and
//!     `sys::unix::vsock`, `AF_VSOCK` inside a Linux guest;
//!   - `sys::windows`: `AF_HYPERV` through Winsock; `sys::hyperv`, its plain logic (tested
//!     on every platform);
//!   - the async halves, beside their sync halves: `sys::unix::tokio` and
//!     `sys::windows::tokio` (sockets and listeners registered with tokio's reactor),
//!     `sys::unix::provider::tokio` (the async client of hvsockd and its pool);
//! - `wire` (private, Unix): addresses to and from `hvsock-proto`'s wire form.
//!
//! No module below the socket types names them: `sys` gives `Established` and listeners,
//! and `HvStream`/`HvListener` (std and tokio) are built from those, so the dependencies run
//! one way, from the public types down to `sys`.
//!
//! # Errors
//!
//! Errors are `std::io::Error`s with the kinds a socket caller expects:
//! `ConnectionRefused` (nothing listens), `PermissionDenied` (the service is not registered,
//! disabled, or policy forbids it), `HostUnreachable` (no such partition is reachable from here;
//! unknown and unreachable partitions look the same), `AddrInUse`, `AddrNotAvailable`,
//! `TimedOut`, `Unsupported`; the message says which service and why.
//!
//! # When hvsockd restarts
//!
//! Through hvsockd, nothing the application holds breaks when hvsockd is killed and started
//! again: established connections never pass through it; a listener binds again by itself on
//! the same descriptor number, so `accept` (std and tokio) returns no error while hvsockd comes
//! back within the listener's patience (30 s by default; see
//! [`HvListener`](HvListener#when-hvsockd-goes-away), which also says what programs that poll
//! the raw descriptor must do); a connect that finds hvsockd away tries again within its
//! timeout. A sandbox whose partition *directory* is bind-mounted reaches the new hvsockd
//! through the same mount ([`dirs`]).

pub mod addr;
pub mod dirs;
pub mod guid;
mod listener;
mod stream;
mod sys;
pub mod transport;

#[cfg(feature = "tokio")]
pub mod tokio;

#[cfg(unix)]
mod wire;

pub use addr::{AddrSpec, ServiceSpec, SockAddrHv, VmSpec};
pub use guid::{Guid, ServiceId, VmId};
pub use listener::{DEFAULT_BACKLOG, HvListener, Incoming};
pub use stream::{DEFAULT_CONNECT_TIMEOUT, HvStream};
pub use transport::Transport;

#[cfg(unix)]
mod unix_impls {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

    use crate::{HvListener, HvStream};

    impl AsFd for HvStream {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.inner.as_fd()
        }
    }
    impl AsRawFd for HvStream {
        fn as_raw_fd(&self) -> RawFd {
            self.inner.as_raw_fd()
        }
    }
    impl From<HvStream> for OwnedFd {
        fn from(stream: HvStream) -> OwnedFd {
            stream.inner.into_fd()
        }
    }
    impl IntoRawFd for HvStream {
        fn into_raw_fd(self) -> RawFd {
            OwnedFd::from(self).into_raw_fd()
        }
    }
    impl AsFd for HvListener {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.inner.as_fd()
        }
    }
    impl AsRawFd for HvListener {
        fn as_raw_fd(&self) -> RawFd {
            self.inner.as_fd().as_raw_fd()
        }
    }
}

#[cfg(windows)]
mod windows_impls {
    use std::os::windows::io::{
        AsRawSocket, AsSocket, BorrowedSocket, IntoRawSocket, OwnedSocket, RawSocket,
    };

    use crate::{HvListener, HvStream};

    impl AsSocket for HvStream {
        fn as_socket(&self) -> BorrowedSocket<'_> {
            self.inner.as_socket()
        }
    }
    impl AsRawSocket for HvStream {
        fn as_raw_socket(&self) -> RawSocket {
            self.inner.as_raw_socket()
        }
    }
    impl From<HvStream> for OwnedSocket {
        fn from(stream: HvStream) -> OwnedSocket {
            stream.inner.into()
        }
    }
    impl IntoRawSocket for HvStream {
        fn into_raw_socket(self) -> RawSocket {
            OwnedSocket::from(self).into_raw_socket()
        }
    }
    impl AsSocket for HvListener {
        fn as_socket(&self) -> BorrowedSocket<'_> {
            self.inner.as_socket()
        }
    }
    impl AsRawSocket for HvListener {
        fn as_raw_socket(&self) -> RawSocket {
            self.inner.as_socket().as_raw_socket()
        }
    }
}
