//! Unix system calls of the crate: socket I/O on a connected stream descriptor ([`Socket`]),
//! and the transports: `provider` (the client of hvsockd's endpoint) and `vsock` (`AF_VSOCK`
//! inside a Linux guest). `tokio` (feature `tokio`) is the async half of [`Socket`]: the
//! registration of sockets and listeners with tokio's reactor.

pub(crate) mod provider;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;
#[cfg(target_os = "linux")]
pub(crate) mod vsock;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::net::{RecvFlags, SendFlags, Shutdown, sockopt};

/// A connected stream socket: a Unix socket handed over by hvsockd, or a vsock socket.
#[derive(Debug)]
pub(crate) struct Socket(OwnedFd);

impl Socket {
    pub(crate) fn from_fd(fd: OwnedFd) -> Socket {
        Socket(fd)
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_eintr(|| rustix::net::recv(&self.0, &mut *buf, RecvFlags::empty())).map(|(n, _)| n)
    }

    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::net::recv(&self.0, buf, RecvFlags::PEEK)?.0)
    }

    /// `send` with `MSG_NOSIGNAL`: writing to a closed peer is `EPIPE`, never `SIGPIPE`.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        retry_eintr(|| rustix::net::send(&self.0, buf, SendFlags::NOSIGNAL))
    }

    pub(crate) fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        retry_eintr(|| rustix::net::sendmsg(&self.0, bufs, &mut control, SendFlags::NOSIGNAL))
    }

    pub(crate) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => Shutdown::Read,
            std::net::Shutdown::Write => Shutdown::Write,
            std::net::Shutdown::Both => Shutdown::Both,
        };
        Ok(rustix::net::shutdown(&self.0, how)?)
    }

    pub(crate) fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.set_timeout(sockopt::Timeout::Recv, dur)
    }

    pub(crate) fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.set_timeout(sockopt::Timeout::Send, dur)
    }

    pub(crate) fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(sockopt::socket_timeout(&self.0, sockopt::Timeout::Recv)?)
    }

    pub(crate) fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(sockopt::socket_timeout(&self.0, sockopt::Timeout::Send)?)
    }

    fn set_timeout(&self, kind: sockopt::Timeout, dur: Option<Duration>) -> io::Result<()> {
        if dur == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a zero timeout is not allowed (use None for no timeout)",
            ));
        }
        Ok(sockopt::set_socket_timeout(&self.0, kind, dur)?)
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.0.as_fd(), on)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket(dup(self.0.as_fd())?))
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(sockopt::socket_error(&self.0)?.err().map(io::Error::from))
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(fd, on)?)
}

pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ts = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    retry_eintr(|| rustix::event::poll(&mut fds, ts.as_ref())).map(|n| n > 0)
}

/// Runs the system call `f` again for as long as a signal interrupts it (`EINTR`).
fn retry_eintr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}
