//! A listener that outlives hvsockd: when its session ends (hvsockd crashed, was killed or
//! restarted with nothing holding its sockets), the listener binds again, with back-off, for
//! up to its patience, and puts the new session on the *same descriptor number* (`dup3` over
//! the old one), so that a program polling that number keeps it.
//!
//! # States of one listener's session (shared by its clones)
//!
//! ```text
//!  Bound(gen) ── session ends ──▶ Rebinding ── Bound answer ──▶ Bound(gen + 1)
//!                                     │
//!                                     └── patience passed / bind refused ──▶ Failed(error)
//! ```
//!
//! `Rebinding` runs either inline, in a blocking `accept` (which waits for it), or on a thread
//! of its own for a non-blocking listener (whose `accept` says `WouldBlock` meanwhile, and whose
//! async twin is woken when it ends). Each handle (a listener and its `try_clone`s, each with
//! its own descriptor) remembers the generation its descriptor holds and catches up with the
//! newest session at its next call. `Failed` is reported once, by the next `accept`; the one
//! after it tries again.
//!
//! What counts as "hvsockd is coming back" (retried): the endpoint refuses or is missing
//! (hvsockd is down; a clean stop removes the socket), its backlog is full, the session ends
//! again before the answer. What does not (returned at once): hvsockd answers the bind with an
//! error (the address is taken, the partition is gone, policy).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::addr::SockAddrHv;

/// How long a listener keeps trying to bind again after its session ended, by default.
pub(crate) const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);
/// The first pause between two attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between two attempts: a restarted hvsockd is found within this.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// The environment variable that sets the default patience, in seconds (`0` turns re-binding
/// off: `accept` then fails as soon as the session ends).
pub const ENV_PATIENCE: &str = "HVSOCK_REBIND_PATIENCE";

/// The patience a new listener gets: `HVSOCK_REBIND_PATIENCE` if it is a number of seconds,
/// else [`DEFAULT_PATIENCE`].
fn default_patience() -> Duration {
    std::env::var(ENV_PATIENCE)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_PATIENCE, Duration::from_secs_f64)
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by each successful re-bind.
    generation: u64,
    /// A descriptor of the newest session (after a re-bind), for handles to catch up from.
    current: Option<OwnedFd>,
    /// A re-bind is under way.
    running: bool,
    /// How the last background re-bind failed, for the next `accept` to report.
    failed: Option<io::Error>,
    /// Async accepts waiting for the re-bind to end.
    wakers: Vec<Waker>,
}

/// What a listener needs to bind again, and its re-binding state; shared by its clones.
#[derive(Debug)]
pub(crate) struct Session {
    endpoint: PathBuf,
    addr: SockAddrHv,
    backlog: u32,
    patience_ms: AtomicU64,
    state: Mutex<State>,
    ended: Condvar,
}

impl Session {
    pub(crate) fn new(endpoint: &Path, addr: SockAddrHv, backlog: u32) -> Arc<Session> {
        Arc::new(Session {
            endpoint: endpoint.to_owned(),
            addr,
            backlog,
            patience_ms: AtomicU64::new(millis(default_patience())),
            state: Mutex::new(State::default()),
            ended: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn patience(&self) -> Duration {
        Duration::from_millis(self.patience_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_patience(&self, patience: Duration) {
        self.patience_ms.store(millis(patience), Ordering::Relaxed);
    }

    /// Puts the newest session on `fd` if `seen` (the generation `fd` holds) is older; sets
    /// its blocking mode to `nonblocking`. Returns the generation `fd` holds now.
    pub(crate) fn catch_up(&self, fd: &OwnedFd, seen: u64, nonblocking: bool) -> io::Result<u64> {
        let state = self.lock();
        let Some(current) = state.current.as_ref().filter(|_| state.generation > seen) else {
            return Ok(seen);
        };
        // SAFETY: `fd` stays open and owned by the caller's listener for this whole call; the
        // `ManuallyDrop` only lends its number to `dup3` and never closes it.
        let mut target = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) });
        rustix::io::dup3(current, &mut target, rustix::io::DupFlags::CLOEXEC)?;
        super::super::set_nonblocking(fd.as_fd(), nonblocking)?;
        Ok(state.generation)
    }

    /// Re-binds, waiting for it (the blocking `accept`): returns once a session newer than
    /// `seen` exists, or the error that ended the attempt.
    pub(crate) fn recover_blocking(&self, seen: u64) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.generation > seen {
                return Ok(());
            }
            if !state.running {
                break;
            }
            state = self.ended.wait(state).unwrap_or_else(|p| p.into_inner());
            if let Some(e) = state.failed.take() {
                return Err(e);
            }
        }
        state.running = true;
        drop(state);
        let result = rebind(&self.endpoint, self.addr, self.backlog, self.patience());
        match self.finish(result, false) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts re-binding on a thread of its own (the non-blocking `accept`), unless one runs
    /// or a session newer than `seen` exists.
    pub(crate) fn recover_in_background(self: &Arc<Self>, seen: u64) -> io::Result<()> {
        let mut state = self.lock();
        if state.running || state.generation > seen {
            return Ok(());
        }
        state.running = true;
        drop(state);
        let weak: Weak<Session> = Arc::downgrade(self);
        let (endpoint, addr, backlog, patience) = (
            self.endpoint.clone(),
            self.addr,
            self.backlog,
            self.patience(),
        );
        let spawned = std::thread::Builder::new()
            .name("hvsock-rebind".into())
            .spawn(move || {
                let result = rebind(&endpoint, addr, backlog, patience);
                // A listener dropped meanwhile: the new session closes here, unbinding it.
                if let Some(session) = weak.upgrade() {
                    session.finish(result, true);
                }
            });
        if let Err(e) = spawned {
            self.finish(Err(e), false);
        }
        Ok(())
    }

    /// Ends a re-bind with `result`; a failure is kept for the next `accept` if `keep`, else
    /// given back.
    fn finish(&self, result: io::Result<OwnedFd>, keep: bool) -> Option<io::Error> {
        let mut state = self.lock();
        state.running = false;
        let mut given_back = None;
        match result {
            Ok(fd) => {
                state.current = Some(fd);
                state.generation += 1;
                state.failed = None;
            }
            Err(e) if keep => state.failed = Some(e),
            Err(e) => given_back = Some(e),
        }
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
        self.ended.notify_all();
        given_back
    }

    /// The failure of the last background re-bind, once.
    pub(crate) fn take_failure(&self) -> Option<io::Error> {
        self.lock().failed.take()
    }

    /// If a re-bind runs, keeps `waker` to be woken when it ends and returns true.
    pub(crate) fn wake_when_done(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if !state.running {
            return false;
        }
        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
        }
        true
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a failed bind attempt means "hvsockd is not back yet".
fn coming_back(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::TimedOut
    )
}

/// Binds `addr` anew, trying again with back-off while hvsockd is not back, for at most
/// `patience`; the new session's descriptor.
fn rebind(
    endpoint: &Path,
    addr: SockAddrHv,
    backlog: u32,
    patience: Duration,
) -> io::Result<OwnedFd> {
    let deadline = Instant::now() + patience;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match super::bind_session(endpoint, addr, backlog) {
            Ok((fd, _local)) => return Ok(fd),
            Err(e) if coming_back(&e) && Instant::now() + backoff < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "hvsockd ended this listener's session and binding {addr} again failed \
                         (patience {patience:?}): {e}"
                    ),
                ));
            }
        }
    }
}
