//! The provider transport, async: control connections to hvsockd awaited on the runtime.
//!
//! The frames and their meaning are shared with the std client (the parent module and its
//! `mux`); only the waiting differs. See `crate::tokio` for why an async connect owns its
//! control connection while it waits, and the pool that reuses them.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ::tokio::io::unix::AsyncFd;
use ::tokio::time::{Instant, sleep, timeout_at};
use hvsock_proto::Frame;
use hvsock_proto::unix::{Received, connect_endpoint, recv_frame, send_frame};

use super::{self as shared, Answer, BIND_TIMEOUT, GRACE, endpoint_error, session_lost};
use crate::addr::SockAddrHv;
use crate::sys::Established;
use crate::sys::unix::tokio::register;

/// Most idle control connections kept per endpoint.
pub(crate) const MAX_IDLE: usize = 16;

/// Connects to `target` through the hvsockd endpoint at `endpoint`.
pub(crate) async fn connect(
    endpoint: &Path,
    target: SockAddrHv,
    timeout: Duration,
) -> io::Result<Established> {
    let deadline = Instant::now() + timeout + GRACE;
    match timeout_at(deadline, connect_until_answered(endpoint, target, timeout)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "hvsockd at {} did not answer the connect to {target} within {:?}",
                endpoint.display(),
                timeout + GRACE
            ),
        )),
    }
}

async fn connect_until_answered(
    endpoint: &Path,
    target: SockAddrHv,
    timeout: Duration,
) -> io::Result<Established> {
    static NEXT_REQ: AtomicU32 = AtomicU32::new(1);
    // As the std client: while hvsockd is away (restarting), try again within the timeout.
    let give_up = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(2);
    let mut saw_restart = false;
    let mut retry = |e: io::Error| {
        let wait = backoff;
        backoff = (backoff * 2).min(Duration::from_millis(50));
        if Instant::now() + wait < give_up {
            Ok(wait)
        } else {
            Err(e)
        }
    };
    loop {
        let (fd, pooled) = match pool::take(endpoint) {
            Some(fd) => (fd, true),
            None => match open_session(endpoint).await {
                Ok(fd) => (fd, false),
                Err(e) if super::mux::hvsockd_away(endpoint, &e) => {
                    saw_restart = true;
                    sleep(retry(e)?).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        super::mux::remember(endpoint);
        let session = register(fd)?;
        // Never 0: an `Error` with request id 0 is about the whole session.
        let req = NEXT_REQ.fetch_add(1, Ordering::Relaxed).max(1);
        let left = give_up.saturating_duration_since(Instant::now());
        let request = shared::connect_request(req, target, left.max(Duration::from_millis(1)));
        match send(&session, &request).await {
            Ok(()) => {}
            // hvsockd closed this idle connection (it restarted, or the partition went away
            // and came back): the request reached no one, so try the next one.
            Err(_) if pooled => {
                saw_restart = true;
                continue;
            }
            Err(e) => {
                sleep(retry(endpoint_error(endpoint, e))?).await;
                continue;
            }
        }
        let received = loop {
            match recv(&session).await {
                Ok(received) => match shared::answer_to(req, received) {
                    Answer::Mine(received) => break Some(received),
                    Answer::SessionEnded(e) => return Err(e),
                    Answer::NotMine => continue,
                },
                // hvsockd went away with the request: ask the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => break None,
                Err(e) => return Err(e),
            }
        };
        let Some(received) = received else {
            saw_restart = true;
            sleep(retry(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "hvsockd closed the control connection (it stopped or restarted)",
            ))?)
            .await;
            continue;
        };
        // The session answered and has nothing in flight: it can serve the next connect.
        pool::put(endpoint, session.into_inner());
        match shared::established(received) {
            // As the std client: the listeners of a restarted hvsockd are binding again.
            Err(e) if saw_restart && e.kind() == io::ErrorKind::ConnectionRefused => {
                sleep(retry(e)?).await;
            }
            other => return other,
        }
    }
}

/// Opens a listener session and binds `addr`.
pub(crate) async fn bind(
    endpoint: &Path,
    addr: SockAddrHv,
    backlog: u32,
) -> io::Result<shared::Listener> {
    let deadline = Instant::now() + BIND_TIMEOUT;
    let bound = async {
        let session = register(open_session(endpoint).await?)?;
        send(&session, &shared::bind_request(addr, backlog))
            .await
            .map_err(|e| endpoint_error(endpoint, e))?;
        let received = recv(&session).await?;
        // Incoming frames may already follow Bound: they wait in the socket for `accept`.
        shared::Listener::bound(session.into_inner(), received, endpoint, addr, backlog)
    };
    match timeout_at(deadline, bound).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("hvsockd at {} did not answer the bind", endpoint.display()),
        )),
    }
}

/// A new non-blocking control connection. A Unix socket connect does not wait: when the
/// endpoint's listen backlog is full it fails with `EAGAIN`, so retry with a short backoff
/// (the caller's deadline bounds it).
async fn open_session(endpoint: &Path) -> io::Result<OwnedFd> {
    let mut backoff = Duration::from_millis(1);
    loop {
        match connect_endpoint(endpoint, true) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(endpoint_error(endpoint, e)),
        }
    }
}

/// Sends one frame, waiting for buffer space.
async fn send(session: &AsyncFd<OwnedFd>, frame: &Frame) -> io::Result<()> {
    loop {
        let mut guard = session.writable().await?;
        match guard.try_io(|fd| send_frame(fd.get_ref(), frame, None, true)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Receives one frame, waiting for it.
async fn recv(session: &AsyncFd<OwnedFd>) -> io::Result<Received> {
    loop {
        let mut guard = session.readable().await?;
        match recv_frame(guard.get_inner(), true) {
            Ok(received) => return Ok(received),
            Err(e) if e.is_would_block() => guard.clear_ready(),
            Err(e) => return Err(session_lost(e)),
        }
    }
}

/// Idle control connections, as plain descriptors (no runtime state), by endpoint.
mod pool {
    use super::*;

    struct Idle {
        /// The process they were opened in: a forked child must not share them.
        pid: u32,
        by_endpoint: HashMap<PathBuf, Vec<OwnedFd>>,
    }

    fn idle() -> MutexGuard<'static, Idle> {
        static IDLE: OnceLock<Mutex<Idle>> = OnceLock::new();
        let mut idle = IDLE
            .get_or_init(|| {
                Mutex::new(Idle {
                    pid: std::process::id(),
                    by_endpoint: HashMap::new(),
                })
            })
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pid = std::process::id();
        if idle.pid != pid {
            // Closing the inherited copies leaves the parent's connections alone.
            idle.by_endpoint.clear();
            idle.pid = pid;
        }
        idle
    }

    /// An idle control connection to `endpoint`, if any.
    pub(super) fn take(endpoint: &Path) -> Option<OwnedFd> {
        idle().by_endpoint.get_mut(endpoint)?.pop()
    }

    /// Keeps `fd` for a later connect to `endpoint`, unless enough are kept already.
    pub(super) fn put(endpoint: &Path, fd: OwnedFd) {
        let mut idle = idle();
        let list = idle.by_endpoint.entry(endpoint.to_owned()).or_default();
        if list.len() < MAX_IDLE {
            list.push(fd);
        }
    }

    /// How many are kept for `endpoint` (for tests).
    #[cfg(test)]
    pub(crate) fn count(endpoint: &Path) -> usize {
        idle().by_endpoint.get(endpoint).map_or(0, Vec::len)
    }
}

#[cfg(test)]
pub(crate) use pool::count as idle_count;
