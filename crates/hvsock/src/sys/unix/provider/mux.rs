//! The std client's connect: one control connection per endpoint (a [`Mux`]), shared by every
//! thread of the process.
//!
//! Each `HvStream::connect` sends a `Connect` frame on it; several threads may have requests
//! outstanding at once. One persistent connection saves hvsockd an accept and a session per
//! connect, which the perf notes measure at about a third of the broker's cost. The thread
//! waiting for an answer reads the socket itself and hands answers for other threads over
//! (leader/followers), so a lone connector pays no thread hand-off. A fork gets a fresh control
//! connection (the mux remembers its pid), and a control connection that hvsockd closed (a
//! restart) is replaced on the next connect; a connect that finds hvsockd away is tried again
//! within its timeout ([`connect`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hvsock_proto::Frame;
use hvsock_proto::unix::{Received, RecvError, connect_endpoint, recv_frame, send_frame};

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
        let mut received = recv_frame(&self.sock, true);
        if matches!(&received, Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset)
        {
            // hvsockd died with a request of ours unread: the kernel says so once, before the
            // answers still queued (each may carry a connection already offered): read on.
            received = recv_frame(&self.sock, true);
        }
        match received {
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
///
/// If hvsockd is away (its endpoint refuses: it was killed and is starting again; or its
/// endpoint is gone after this process had reached it: a clean stop and a restart), or its
/// control connection ends before the answer, the connect is tried again, with back-off, for
/// as long as its timeout allows: a connect issued during a restart succeeds if hvsockd is
/// back within it. Such a connect also tries again when the new hvsockd says nothing listens
/// (the listeners are binding again, see `rebind`), until its timeout.
pub(crate) fn connect(
    endpoint: &Path,
    target: SockAddrHv,
    timeout: Duration,
) -> io::Result<Established> {
    let start = Instant::now();
    let give_up = start + timeout;
    let mut fresh = false;
    let mut backoff = FIRST_BACKOFF;
    // This connect saw hvsockd go away: the new one may answer before the listeners it
    // expects have bound again (they do within MAX_BACKOFF of its return), so "nothing
    // listens" is tried again too, within the timeout.
    let mut saw_restart = false;
    loop {
        let mux = match Mux::get(endpoint, fresh) {
            Ok(mux) => mux,
            Err(e) if hvsockd_away(endpoint, &e) && Instant::now() + backoff < give_up => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                fresh = true;
                saw_restart = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        remember(endpoint);
        let req = mux.next_req();
        // hvsockd gets what is left of the timeout; the answer may take GRACE longer.
        let left = give_up.saturating_duration_since(Instant::now());
        let frame = connect_request(req, target, left.max(Duration::from_millis(1)));
        return match mux.call(req, &frame, Instant::now() + left + GRACE) {
            Ok(received) => match established(received) {
                Err(e)
                    if saw_restart
                        && e.kind() == io::ErrorKind::ConnectionRefused
                        && Instant::now() + backoff < give_up =>
                {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                other => other,
            },
            Err(CallError::NotSent(_)) if !fresh => {
                // The control connection died since the last call (hvsockd restarted): the
                // request never reached anyone, so trying on a new connection is safe.
                fresh = true;
                saw_restart = true;
                continue;
            }
            Err(CallError::NotSent(e) | CallError::Lost(e))
                if e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                // hvsockd went away with the request: if it had offered the connection, the
                // listener got a connection whose other end died with hvsockd (it reads EOF),
                // so asking the next hvsockd again is what the caller wants.
                if Instant::now() + backoff >= give_up {
                    return Err(endpoint_error(endpoint, e));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                fresh = true;
                saw_restart = true;
                continue;
            }
            Err(CallError::NotSent(e)) => Err(endpoint_error(endpoint, e)),
            Err(CallError::Lost(e)) => Err(e),
        };
    }
}

/// The first pause before trying a connect again while hvsockd is away; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Endpoints this process has reached (a missing one of these is hvsockd restarting, not a
/// wrong path).
fn reached() -> &'static Mutex<HashSet<PathBuf>> {
    static REACHED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    REACHED.get_or_init(Default::default)
}

pub(crate) fn remember(endpoint: &Path) {
    let mut reached = lock(reached());
    if !reached.contains(endpoint) {
        reached.insert(endpoint.to_owned());
    }
}

/// Whether `e`, from reaching `endpoint`, means hvsockd is away for now: the endpoint refuses
/// (nobody listens on the socket: hvsockd was killed), its backlog is full, or it is missing
/// but this process had reached it before.
pub(crate) fn hvsockd_away(endpoint: &Path, e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock => true,
        io::ErrorKind::NotFound => lock(reached()).contains(endpoint),
        _ => false,
    }
}
