//! The provider transport: the library as a client of hvsockd's endpoint socket.
//!
//! # How a connection is made
//!
//! - **Connect.** The connector sends a `Connect` frame on a control connection (a session
//!   with hvsockd) and hvsockd answers `Connected` with the connector's end of the new
//!   connection (a kernel socket) or `Error`. The std client ([`mux`]) keeps one control
//!   connection per endpoint that every thread of the process shares; the async client
//!   ([`tokio`], feature `tokio`) takes one from a small pool per connect.
//! - **Listen.** Each listener is its own session: `Bind`, then one `Incoming` frame with the
//!   listener's end per connection. `accept` answers each with `Ack`, which frees a backlog
//!   slot in hvsockd. The session socket is what `HvListener` polls on, so `poll`/`epoll` and
//!   non-blocking accept work as on any listening socket. When the session ends because
//!   hvsockd went away, the listener binds again on the same descriptor ([`rebind`]).
//!
//! The frames, their answers and the errors they become are built by the small functions
//! below ([`connect_request`], [`bind_request`], [`answer_to`], [`established`]), which the
//! std and the async clients share; only the waiting differs.

pub(crate) mod mux;
pub(crate) mod rebind;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;

pub(crate) use mux::connect;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::Waker;
use std::time::Duration;

use hvsock_proto::unix::{Received, RecvError, connect_endpoint, recv_frame, send_frame};
use hvsock_proto::{ErrorCode, Frame};

use super::Socket;
use crate::addr::SockAddrHv;
use crate::sys::Established;

/// How long past its own timeout a connector waits for hvsockd's answer before giving up on
/// an unresponsive hvsockd.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// How long `bind` waits for hvsockd's answer.
pub(crate) const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// An error from hvsockd's `Error` frame, as the `io::Error` callers match on.
pub(crate) fn daemon_error(code: ErrorCode, message: String) -> io::Error {
    io::Error::new(code.io_kind(), message)
}

/// An error that says which endpoint could not be reached and what to do.
pub(crate) fn endpoint_error(path: &Path, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            "is hvsockd running? start it with `hvsockd --dir DIR` and point HVSOCK_DIR or HVSOCK_ENDPOINT at it"
        }
        io::ErrorKind::PermissionDenied => {
            "this user may not use that endpoint (host.sock is for root and the hvsock group)"
        }
        _ if e.raw_os_error() == Some(rustix::io::Errno::PROTOTYPE.raw_os_error()) => {
            "that socket is not an hvsockd endpoint"
        }
        _ => "",
    };
    let sep = if hint.is_empty() { "" } else { ": " };
    io::Error::new(
        e.kind(),
        format!("cannot reach hvsockd at {}: {e}{sep}{hint}", path.display()),
    )
}

pub(crate) fn session_lost(e: RecvError) -> io::Error {
    match e {
        RecvError::Io(e) if e.kind() != io::ErrorKind::ConnectionReset => e,
        RecvError::Closed | RecvError::Io(_) => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "hvsockd closed the control connection (it stopped or restarted)",
        ),
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hvsockd sent something this library does not understand: {other}"),
        ),
    }
}

/// The `Connect` request for `target`, with hvsockd's own timeout `timeout`.
pub(crate) fn connect_request(req: u32, target: SockAddrHv, timeout: Duration) -> Frame {
    Frame::Connect {
        req,
        target: target.into(),
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
    }
}

/// The `Bind` request of a listener session (its only request).
pub(crate) fn bind_request(addr: SockAddrHv, backlog: u32) -> Frame {
    Frame::Bind {
        req: 1,
        addr: addr.into(),
        backlog,
    }
}

/// What a frame read on a connector session means to the connect waiting for `req`.
#[derive(Debug)]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async client
pub(crate) enum Answer {
    /// The answer to `req` (`Connected` or `Error`): pass it to [`established`].
    Mine(Received),
    /// hvsockd ended the whole session (an `Error` with request id 0), with this reason.
    SessionEnded(io::Error),
    /// The answer to another request, or a frame a connector session does not expect: drop it
    /// (which closes any descriptor it carried).
    NotMine,
}

/// Sorts a frame read on a connector session (see [`Answer`]).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async client
pub(crate) fn answer_to(req: u32, received: Received) -> Answer {
    match &received.frame {
        Frame::Connected { req: r, .. } | Frame::Error { req: r, .. } if *r == req => {
            Answer::Mine(received)
        }
        Frame::Error {
            req: 0,
            code,
            message,
        } => Answer::SessionEnded(daemon_error(*code, message.clone())),
        _ => Answer::NotMine,
    }
}

pub(crate) fn established(received: Received) -> io::Result<Established> {
    match (received.frame, received.fd) {
        (Frame::Connected { local, peer, .. }, Some(fd))
        | (Frame::Incoming { local, peer }, Some(fd)) => Ok(Established {
            socket: Socket::from_fd(fd),
            local: local.into(),
            peer: peer.into(),
        }),
        (Frame::Error { code, message, .. }, _) => Err(daemon_error(code, message)),
        (frame, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "hvsockd answered with an unexpected {} frame",
                frame.kind_name()
            ),
        )),
    }
}

/// Opens a session with the hvsockd at `endpoint` and binds `addr` on it: the session and the
/// bound address.
pub(crate) fn bind_session(
    endpoint: &Path,
    addr: SockAddrHv,
    backlog: u32,
) -> io::Result<(OwnedFd, SockAddrHv)> {
    let sock = connect_endpoint(endpoint, false).map_err(|e| endpoint_error(endpoint, e))?;
    send_frame(&sock, &bind_request(addr, backlog), None, false)
        .map_err(|e| endpoint_error(endpoint, e))?;
    if !super::wait_readable(sock.as_fd(), Some(BIND_TIMEOUT))? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("hvsockd at {} did not answer the bind", endpoint.display()),
        ));
    }
    let received = recv_frame(&sock, false).map_err(session_lost)?;
    let local = bound_addr(received)?;
    Ok((sock, local))
}

/// The bound address in hvsockd's answer to `Bind`, or its error.
fn bound_addr(received: Received) -> io::Result<SockAddrHv> {
    match received.frame {
        Frame::Bound { local, .. } => Ok(local.into()),
        Frame::Error { code, message, .. } => Err(daemon_error(code, message)),
        frame => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "hvsockd answered Bind with an unexpected {} frame",
                frame.kind_name()
            ),
        )),
    }
}

/// A listener's session with hvsockd.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The session; after a re-bind, the new session on the same descriptor number.
    sock: OwnedFd,
    local: SockAddrHv,
    /// Accepts not yet acknowledged to hvsockd (an `Ack` that would have blocked).
    unacked: AtomicU32,
    /// How to bind again, shared with this listener's clones.
    session: Arc<rebind::Session>,
    /// The re-bind generation `sock` holds.
    generation: AtomicU64,
    nonblocking: AtomicBool,
}

impl Listener {
    /// Opens a session and binds `addr` with room for `backlog` unaccepted connections.
    pub(crate) fn bind(endpoint: &Path, addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
        let (sock, local) = bind_session(endpoint, addr, backlog)?;
        Ok(Self::with_session(sock, local, endpoint, addr, backlog))
    }

    /// The listener, given hvsockd's answer to binding `addr` through `endpoint` on `sock`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async client
    pub(crate) fn bound(
        sock: OwnedFd,
        received: Received,
        endpoint: &Path,
        addr: SockAddrHv,
        backlog: u32,
    ) -> io::Result<Listener> {
        let local = bound_addr(received)?;
        Ok(Self::with_session(sock, local, endpoint, addr, backlog))
    }

    fn with_session(
        sock: OwnedFd,
        local: SockAddrHv,
        endpoint: &Path,
        addr: SockAddrHv,
        backlog: u32,
    ) -> Listener {
        Listener {
            sock,
            local,
            unacked: AtomicU32::new(0),
            session: rebind::Session::new(endpoint, addr, backlog),
            generation: AtomicU64::new(0),
            nonblocking: AtomicBool::new(false),
        }
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.local
    }

    /// Takes the next connection. Blocks unless the session socket is non-blocking.
    ///
    /// A session that hvsockd ended is bound again (see [`rebind`]): a blocking accept waits
    /// for that, up to the patience; a non-blocking one starts it and says `WouldBlock`, and
    /// reports a re-bind that failed once.
    pub(crate) fn accept(&self) -> io::Result<Established> {
        let mut reset_seen = false;
        loop {
            self.catch_up()?;
            // `recv_frame` rides out EINTR itself.
            let received = match recv_frame(&self.sock, false) {
                Ok(received) => received,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(e);
                }
                // hvsockd died with our `Ack`s unread: the kernel reports that once, before
                // the `Incoming` frames still queued. Read those first: binding again now
                // would close the old session, and their connections with it.
                Err(RecvError::Io(e))
                    if e.kind() == io::ErrorKind::ConnectionReset && !reset_seen =>
                {
                    reset_seen = true;
                    continue;
                }
                Err(e) if e.is_disconnect() => {
                    self.session_ended()?;
                    continue;
                }
                Err(e) => return Err(session_lost(e)),
            };
            let established = established(received)?;
            self.ack();
            return Ok(established);
        }
    }

    /// The session ended: binds again (blocking), or starts that and says `WouldBlock`.
    fn session_ended(&self) -> io::Result<()> {
        if self.session.patience().is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "hvsockd closed this listener (it stopped, restarted, or the partition was removed): bind again",
            ));
        }
        let seen = self.generation.load(Ordering::Acquire);
        if self.nonblocking.load(Ordering::Relaxed) {
            if let Some(e) = self.session.take_failure() {
                return Err(e);
            }
            self.session.recover_in_background(seen)?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.session.recover_blocking(seen)
    }

    /// Moves this handle's descriptor onto the newest session, if a re-bind made one.
    pub(crate) fn catch_up(&self) -> io::Result<()> {
        let seen = self.generation.load(Ordering::Acquire);
        let now =
            self.session
                .catch_up(&self.sock, seen, self.nonblocking.load(Ordering::Relaxed))?;
        if now != seen {
            self.generation.store(now, Ordering::Release);
            // Acknowledgements owed to the old session mean nothing to the new one.
            self.unacked.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// The re-bind generation this handle's descriptor holds.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// If a re-bind runs, `waker` is woken when it ends (true).
    pub(crate) fn wake_when_rebound(&self, waker: &Waker) -> bool {
        self.session.wake_when_done(waker)
    }

    /// How long to keep binding again after hvsockd ended the session.
    pub(crate) fn set_rebind_patience(&self, patience: Duration) {
        self.session.set_patience(patience);
    }

    pub(crate) fn rebind_patience(&self) -> Duration {
        self.session.patience()
    }

    /// Tells hvsockd that one more connection was taken, with any that could not be told before.
    pub(crate) fn ack(&self) {
        self.unacked.fetch_add(1, Ordering::AcqRel);
        self.flush_acks();
    }

    /// Sends the acknowledgements not sent yet, if any, without waiting; those that still
    /// would block (the socket buffer is full, or the session is gone) stay for the next `ack`.
    pub(crate) fn flush_acks(&self) {
        let count = self.unacked.swap(0, Ordering::AcqRel);
        if count > 0 && send_frame(&self.sock, &Frame::Ack { count }, None, true).is_err() {
            self.unacked.fetch_add(count, Ordering::AcqRel);
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        super::set_nonblocking(self.sock.as_fd(), on)?;
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            sock: super::dup(self.sock.as_fd())?,
            local: self.local,
            unacked: AtomicU32::new(0),
            session: self.session.clone(),
            generation: AtomicU64::new(self.generation()),
            nonblocking: AtomicBool::new(self.nonblocking.load(Ordering::Relaxed)),
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Puts the session on `fd`, another descriptor of the same socket (checked by the caller).
    pub(crate) fn set_fd(&mut self, fd: OwnedFd) {
        self.sock = fd;
    }
}
