//! The std client's connect: one control connection per endpoint (a [`Mux`]), shared by every
//! thread of the process.
//!
//! Each `HvStream::connect` sends a `Connect` frame on it; several threads may have requests
//! outstanding at once. One persistent connection saves hvsockd an accept and a session per
//! connect, which the perf notes measure at about a third of the broker's cost. The thread
//! waiting for an answer reads the socket itself and hands answers for other threads over
//! (leader/followers), so a lone connector pays no thread hand-off. A fork gets a fresh control
//! connection (the mux remembers its pid), and a control connection that hvsockd closed (a
//! restart) is replaced on the next connect.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hvsock_proto::Frame;
use hvsock_proto::unix::{Received, connect_endpoint, recv_frame, send_frame};

use super::{GRACE, connect_request, endpoint_error, established, session_lost};
use crate::addr::SockAddrHv;
use crate::sys::Established;
use crate::sys::unix::wait_readable;

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
        if !wait_readable(self.sock.as_fd(), Some(timeout))? {
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
