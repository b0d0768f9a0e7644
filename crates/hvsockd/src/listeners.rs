//! Bound listeners and their backlog.
//!
//! A listener is a client session that sent `Bind`. hvsockd hands it each connection as an
//! `Incoming` frame carrying the listener's end; the frame sits in the session socket until the
//! client accepts it and answers `Ack`. At most `backlog` frames may be unacknowledged: further
//! connectors wait in `Queue::waiting` (in hvsockd's memory, bounded) until an `Ack` frees a
//! slot or their connect timeout passes, as a full `listen()` backlog makes a Unix-socket
//! connect wait.
//!
//! State of one listener, changed under its lock: `outstanding` counts delivered frames not
//! yet acknowledged; `stalled` is set when the session socket's buffer was full (the client
//! reads slower than frames arrive) and cleared by the next `Ack`; `closed` once the session
//! ended, after which every offer is refused.
//!
//! Where the connections go is the listener's [`Sink`]: a client session's socket
//! ([`crate::session`]), or anything else that takes a descriptor without waiting (a service
//! served inside hvsockd would hand it to its own task). The backlog does not know which.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hvsock::{SockAddrHv, VmId};
use hvsock_proto::WireAddr;
use hvsock_proto::unix::stream_pair;
use tokio::sync::oneshot;

/// Where a listener's connections go.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Hands over `fd`, the listener's end of a connection from `peer` reaching it as
    /// `local`, without waiting.
    fn deliver(&self, local: WireAddr, peer: WireAddr, fd: OwnedFd) -> Result<(), Undeliverable>;
}

/// Why a [`Sink`] took nothing.
#[derive(Debug)]
pub enum Undeliverable {
    /// It is full for now (the client reads slower than connections come): `fd` comes back,
    /// to try again after the next `Ack`.
    Full(OwnedFd),
    /// It is gone (the session ended or failed).
    Gone(io::Error),
}

/// How many connectors may wait for one listener's backlog beyond the backlog itself.
pub const MAX_WAITING: usize = 1024;

/// The connection a connector brings.
#[derive(Debug)]
pub enum Conn {
    /// A connector through an endpoint: hvsockd makes a socket pair and returns the
    /// connector's end.
    Pair,
    /// A socket hvsockd already holds (a VM's connection accepted on its hybrid-vsock
    /// socket): the listener gets it as it is.
    Fd(OwnedFd),
}

/// What came of an offer, or of a wait: the connector's end of the connection (`None` when
/// the connection was a [`Conn::Fd`]), or why it was refused.
pub type Outcome = Result<Option<OwnedFd>, String>;

/// What [`Listener::offer`] did.
#[derive(Debug)]
pub enum Offer {
    /// Delivered to the listener.
    Delivered(Option<OwnedFd>),
    /// The backlog is full; the answer comes when a slot frees or the listener closes. Drop the
    /// receiver to give up (on a connect timeout).
    Waiting(oneshot::Receiver<Outcome>),
    /// Refused, with the reason.
    Refused(String),
}

#[derive(Debug)]
struct Waiter {
    local: WireAddr,
    peer: WireAddr,
    conn: Conn,
    answer: oneshot::Sender<Outcome>,
}

#[derive(Debug, Default)]
struct Queue {
    outstanding: u32,
    stalled: bool,
    closed: bool,
    waiting: VecDeque<Waiter>,
}

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    /// Unique for the life of this hvsockd.
    pub id: u64,
    /// The partition it listens in.
    pub partition: VmId,
    /// The bound address: a pattern and a service.
    pub addr: SockAddrHv,
    /// The backlog it asked for.
    pub backlog: u32,
    /// The client's pid, if the kernel told.
    pub pid: Option<u32>,
    sink: Arc<dyn Sink>,
    queue: Mutex<Queue>,
    accepted: AtomicU64,
}

/// Why a delivery did not happen.
enum Undelivered {
    /// The session socket is full; try again after the next `Ack`.
    Full(Conn),
    /// The session is gone.
    Gone(io::Error),
}

impl Listener {
    /// A listener whose connections go to `sink`.
    pub fn new(
        id: u64,
        partition: VmId,
        addr: SockAddrHv,
        backlog: u32,
        pid: Option<u32>,
        sink: Arc<dyn Sink>,
    ) -> Listener {
        Listener {
            id,
            partition,
            addr,
            backlog,
            pid,
            sink,
            queue: Mutex::new(Queue::default()),
            accepted: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections delivered so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections delivered and not yet accepted, and connectors waiting for a slot.
    pub fn pending(&self) -> (u32, usize) {
        let q = self.queue();
        (q.outstanding, q.waiting.len())
    }

    /// Counts `n` connections as delivered and not yet acknowledged: those an hvsockd before
    /// a restart had delivered (see [`crate::handover`]).
    pub fn restore_outstanding(&self, n: u32) {
        self.queue().outstanding = n;
    }

    /// Offers a connection from `peer` reaching this listener as `local`.
    pub fn offer(&self, local: WireAddr, peer: WireAddr, conn: Conn) -> Offer {
        let mut q = self.queue();
        if q.closed {
            return Offer::Refused("the listener closed".into());
        }
        let mut conn = conn;
        if q.waiting.is_empty() && !q.stalled && q.outstanding < self.backlog {
            match self.deliver(local, peer, conn) {
                Ok(end) => {
                    q.outstanding += 1;
                    return Offer::Delivered(end);
                }
                Err(Undelivered::Full(back)) => {
                    q.stalled = true;
                    conn = back;
                }
                Err(Undelivered::Gone(e)) => {
                    q.closed = true;
                    return Offer::Refused(format!("the listener's session failed: {e}"));
                }
            }
        }
        if q.waiting.len() >= MAX_WAITING {
            return Offer::Refused(format!(
                "the listener's backlog of {} is full and {MAX_WAITING} more connectors wait",
                self.backlog
            ));
        }
        let (answer, rx) = oneshot::channel();
        q.waiting.push_back(Waiter {
            local,
            peer,
            conn,
            answer,
        });
        Offer::Waiting(rx)
    }

    /// The client accepted `count` connections: free their slots and serve waiting connectors.
    pub fn ack(&self, count: u32) {
        let mut q = self.queue();
        q.outstanding = q.outstanding.saturating_sub(count);
        q.stalled = false;
        while q.outstanding < self.backlog && !q.closed {
            let Some(waiter) = q.waiting.pop_front() else {
                break;
            };
            if waiter.answer.is_closed() {
                continue; // its connector gave up
            }
            match self.deliver(waiter.local, waiter.peer, waiter.conn) {
                Ok(end) => {
                    q.outstanding += 1;
                    // If the connector gave up in the meantime its end closes here, and the
                    // listener reads EOF on a connection nobody holds.
                    let _ = waiter.answer.send(Ok(end));
                }
                Err(Undelivered::Full(conn)) => {
                    q.stalled = true;
                    q.waiting.push_front(Waiter { conn, ..waiter });
                    break;
                }
                Err(Undelivered::Gone(e)) => {
                    q.closed = true;
                    let _ = waiter
                        .answer
                        .send(Err(format!("the listener's session failed: {e}")));
                }
            }
        }
        if q.closed {
            Self::refuse_all(&mut q, "the listener closed");
        }
    }

    /// The session ended: refuse everyone still waiting.
    pub fn close(&self) {
        let mut q = self.queue();
        q.closed = true;
        Self::refuse_all(&mut q, "the listener closed");
    }

    fn refuse_all(q: &mut Queue, why: &str) {
        for waiter in q.waiting.drain(..) {
            let _ = waiter.answer.send(Err(why.to_owned()));
        }
    }

    fn deliver(
        &self,
        local: WireAddr,
        peer: WireAddr,
        conn: Conn,
    ) -> Result<Option<OwnedFd>, Undelivered> {
        let (give, keep) = match conn {
            Conn::Pair => match stream_pair() {
                Ok((give, keep)) => (give, Some(keep)),
                Err(e) => return Err(Undelivered::Gone(e)),
            },
            Conn::Fd(fd) => (fd, None),
        };
        match self.sink.deliver(local, peer, give) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(keep)
            }
            Err(Undeliverable::Full(give)) => Err(Undelivered::Full(match keep {
                Some(_) => Conn::Pair,
                None => Conn::Fd(give),
            })),
            Err(Undeliverable::Gone(e)) => Err(Undelivered::Gone(e)),
        }
    }
}

#[cfg(test)]
mod tests;
