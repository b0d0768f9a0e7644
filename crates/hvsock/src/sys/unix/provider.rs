//! The provider transport: the library as a client of hvsockd's endpoint socket.
//!
//! # How a connection is made
//!
//! - **Connect.** The process keeps one control connection per endpoint (a [`Mux`]) and sends a
//!   `Connect` frame on it for each `HvStream::connect`; several threads may have requests
//!   outstanding at once. hvsockd answers `Connected` with the connector's end of the new
//!   connection (a kernel socket) or `Error`. One persistent connection saves hvsockd an
//!   accept and a session per connect, which the perf notes measure at about a third of the
//!   broker's cost. The thread waiting for an answer reads the socket itself and hands answers
//!   for other threads over (leader/followers), so a lone connector pays no thread hand-off.
//!   A fork gets a fresh control connection (the mux remembers its pid), and a control
//!   connection that hvsockd closed (a restart) is replaced on the next connect.
//! - **Listen.** Each listener is its own session: `Bind`, then one `Incoming` frame with the
//!   listener's end per connection. `accept` answers each with `Ack`, which frees a backlog
//!   slot in hvsockd. The session socket is what `HvListener` polls on, so `poll`/`epoll` and
//!   non-blocking accept work as on any listening socket.
//!
//! The frames, their answers and the errors they become are built by the small functions
//! below ([`connect_request`], [`bind_request`], [`answer_to`], [`established`]), which the
//! async twins (`crate::tokio`) share; only the waiting differs.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hvsock_proto::unix::{Received, RecvError, connect_endpoint, recv_frame, send_frame};
use hvsock_proto::{ErrorCode, Frame};

use super::Established;
use crate::addr::SockAddrHv;

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

/// One control connection, shared by every thread of the process that connects through it.
struct Mux {
    sock: OwnedFd,
    pid: u32,
    next_req: AtomicU32,
    dead: AtomicBool,
    state: Mutex<MuxState>,
    turn: Condvar,
}

#[derive(Default)]
struct MuxState {
    /// Some thread is inside `recv` on the socket.
    reading: bool,
    /// Requests whose answer has not arrived.
    waiting: HashSet<u32>,
    /// Answers read by one thread for another.
    answered: HashMap<u32, Received>,
}

/// The control connections of this process, by endpoint path.
fn muxes() -> &'static Mutex<HashMap<PathBuf, Arc<Mux>>> {
    static MUXES: OnceLock<Mutex<HashMap<PathBuf, Arc<Mux>>>> = OnceLock::new();
    MUXES.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mux {
    /// The live control connection to `endpoint`, made anew after a fork or a lost connection.
    fn get(endpoint: &Path, fresh: bool) -> io::Result<Arc<Mux>> {
        let pid = std::process::id();
        let mut all = lock(muxes());
        if !fresh {
            if let Some(mux) = all.get(endpoint) {
                if mux.pid == pid && !mux.dead.load(Ordering::Acquire) {
                    return Ok(mux.clone());
                }
            }
        }
        let sock = connect_endpoint(endpoint, false).map_err(|e| endpoint_error(endpoint, e))?;
        let mux = Arc::new(Mux {
            sock,
            pid,
            next_req: AtomicU32::new(1),
            dead: AtomicBool::new(false),
            state: Mutex::new(MuxState::default()),
            turn: Condvar::new(),
        });
        if let Some(old) = all.insert(endpoint.to_owned(), mux.clone()) {
            if old.pid != pid {
                forget_inherited(old);
            }
        }
        Ok(mux)
    }

    fn next_req(&self) -> u32 {
        loop {
            let req = self.next_req.fetch_add(1, Ordering::Relaxed);
            if req != 0 {
                return req;
            }
        }
    }

    /// Sends `frame` (whose request id is `req`) and waits for its answer until `deadline`.
    fn call(&self, req: u32, frame: &Frame, deadline: Instant) -> Result<Received, CallError> {
        lock(&self.state).waiting.insert(req);
        if let Err(e) = send_frame(&self.sock, frame, None, false) {
            lock(&self.state).waiting.remove(&req);
            self.dead.store(true, Ordering::Release);
            return Err(CallError::NotSent(e));
        }
        let mut state = lock(&self.state);
        loop {
            if let Some(answer) = state.answered.remove(&req) {
                state.waiting.remove(&req);
                return Ok(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                state.waiting.remove(&req);
                return Err(CallError::Lost(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "hvsockd did not answer in time",
                )));
            }
            if self.dead.load(Ordering::Acquire) {
                state.waiting.remove(&req);
                return Err(CallError::Lost(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "hvsockd closed the control connection (it stopped or restarted)",
                )));
            }
            if state.reading {
                state = self
                    .turn
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            // This thread reads until its own answer arrives or the deadline passes.
            state.reading = true;
            drop(state);
            let got = self.read_one(deadline - now);
            state = lock(&self.state);
            state.reading = false;
            self.turn.notify_all();
            match got {
                Ok(Some(received)) => {
                    let answered = match &received.frame {
                        Frame::Connected { req, .. } | Frame::Error { req, .. } => Some(*req),
                        _ => None,
                    };
                    match answered {
                        Some(r) if r == req => {
                            state.waiting.remove(&req);
                            return Ok(received);
                        }
                        Some(r) if state.waiting.contains(&r) => {
                            state.answered.insert(r, received);
                        }
                        // An answer nobody waits for any more (its connector timed out) or a
                        // session-wide error: drop it, which closes any descriptor it carried.
                        _ => {}
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.dead.store(true, Ordering::Release);
                    state.waiting.remove(&req);
                    return Err(CallError::Lost(e));
                }
            }
        }
    }

    /// Reads one frame, or `None` if `timeout` passes first.
    fn read_one(&self, timeout: Duration) -> io::Result<Option<Received>> {
        if !super::wait_readable(self.sock.as_fd(), Some(timeout))? {
            return Ok(None);
        }
        match recv_frame(&self.sock, true) {
            Ok(received) => Ok(Some(received)),
            Err(e) if e.is_would_block() => Ok(None),
            Err(e) => Err(session_lost(e)),
        }
    }
}

/// Drops a control connection made by the parent of a fork without closing its descriptor: the
/// child may have closed that number and opened something else under it (a daemon that closes
/// every descriptor after forking), which a close here would take away from it.
fn forget_inherited(mux: Arc<Mux>) {
    if let Ok(Mux { sock, .. }) = Arc::try_unwrap(mux) {
        std::mem::forget(sock);
    }
}

enum CallError {
    /// The request never left: safe to retry on a new control connection.
    NotSent(io::Error),
    /// The request was sent but its answer is lost.
    Lost(io::Error),
}

/// Connects to `target` through the hvsockd endpoint at `endpoint`.
pub(crate) fn connect(
    endpoint: &Path,
    target: SockAddrHv,
    timeout: Duration,
) -> io::Result<Established> {
    let deadline = Instant::now() + timeout + GRACE;
    let mut fresh = false;
    loop {
        let mux = Mux::get(endpoint, fresh)?;
        let req = mux.next_req();
        let frame = connect_request(req, target, timeout);
        return match mux.call(req, &frame, deadline) {
            Ok(received) => established(received),
            Err(CallError::NotSent(_)) if !fresh => {
                // The control connection died since the last call (hvsockd restarted): the
                // request never reached anyone, so one retry on a new connection is safe.
                fresh = true;
                continue;
            }
            Err(CallError::NotSent(e)) => Err(endpoint_error(endpoint, e)),
            Err(CallError::Lost(e)) => Err(e),
        };
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
            fd,
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

/// A listener's session with hvsockd.
#[derive(Debug)]
pub(crate) struct Listener {
    sock: OwnedFd,
    local: SockAddrHv,
    /// Accepts not yet acknowledged to hvsockd (an `Ack` that would have blocked).
    unacked: AtomicU32,
}

impl Listener {
    /// Opens a session and binds `addr` with room for `backlog` unaccepted connections.
    pub(crate) fn bind(endpoint: &Path, addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
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
        Self::bound(sock, received)
    }

    /// The listener, given hvsockd's answer to `Bind` on `sock`.
    pub(crate) fn bound(sock: OwnedFd, received: Received) -> io::Result<Listener> {
        match received.frame {
            Frame::Bound { local, .. } => Ok(Listener {
                sock,
                local: local.into(),
                unacked: AtomicU32::new(0),
            }),
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

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.local
    }

    /// Takes the next connection. Blocks unless the session socket is non-blocking.
    pub(crate) fn accept(&self) -> io::Result<Established> {
        // `recv_frame` rides out EINTR itself.
        let received = match recv_frame(&self.sock, false) {
            Ok(received) => received,
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) if e.is_disconnect() => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "hvsockd closed this listener (it stopped, restarted, or the partition was removed): bind again",
                ));
            }
            Err(e) => return Err(session_lost(e)),
        };
        let established = established(received)?;
        self.ack();
        Ok(established)
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
        super::set_nonblocking(self.sock.as_fd(), on)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            sock: super::dup(self.sock.as_fd())?,
            local: self.local,
            unacked: AtomicU32::new(0),
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
