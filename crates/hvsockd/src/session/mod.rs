//! One client's control connection to an endpoint: a small state machine.
//!
//! ```text
//!  Fresh ──Connect──▶ Connector ──Connect──▶ Connector      (many requests may be outstanding)
//!    │
//!    ├──Bind (ok)──▶ Listener ──Ack──▶ Listener              (hvsockd pushes Incoming frames)
//!    │
//!    └──Gateway (ok)──▶ Gateway ──Connect / Accepted / Rejected──▶ Gateway
//! ```
//!
//! A `Gateway` session is a VM's device process (`hvsock-vhost`, see
//! [`crate::broker::gateway`]): any partition but the root that has no hybrid-vsock attachment
//! (`hvsock vm add NAME`) may have one, one at a time; while it lives, connects into the
//! partition go to the device (the partition is a guest, as a VM is). hvsockd pushes `GuestConnect` frames on it; the device connects for its
//! guest with `Connect` like any connector.
//!
//! [`transition`] is the table: what a frame means in a state. A failed `Bind` leaves the
//! session `Fresh`. Anything else (a frame that is not valid in the state, garbage, an oversized
//! frame, a frame with file descriptors, or a `Fresh` session that sends nothing within the
//! handshake timeout) is logged with the client's partition and pid, counted, answered with a
//! best-effort `Error` frame, and ends this session only.
//!
//! A `Connect` goes through the [broker](crate::broker); an answer that is not known at once
//! (a full backlog, a guest's handshake) is awaited on a task of its own, counted against
//! `max_outstanding_connects`, so that the session serves other requests meanwhile. A bound
//! listener's connections arrive as `Incoming` frames on the same socket
//! ([`io::SessionSink`]).
//!
//! The session runs over any [`io::FrameIo`]; the partition is the endpoint's, never anything
//! the client says.

pub mod book;
pub mod io;
mod resume;

pub use resume::resume;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hvsock::{SockAddrHv, VmId};
use hvsock_proto::frame::MAX_BACKLOG;
use hvsock_proto::unix::{Received, RecvError};
use hvsock_proto::{ErrorCode, Frame, WireAddr};
use tokio_util::sync::CancellationToken;

use self::book::Book;
use self::io::{FrameIo, SeqPacket, SessionSink};
use crate::broker::gateway::{self, Gateway};
use crate::broker::{Broker, Connecting, Settled};
use crate::config::Limits;
use crate::handover::{self, WaitingConnect};
use crate::listeners::{Conn, Listener};

/// The session's state.
#[derive(Debug)]
pub enum State {
    /// Nothing asked yet.
    Fresh,
    /// Has sent `Connect`.
    Connector,
    /// Bound.
    Listener(Arc<Listener>),
    /// A VM's device, serving its guest.
    Gateway(Arc<Gateway>),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Fresh => "fresh",
            State::Connector => "connector",
            State::Listener(_) => "listener",
            State::Gateway(_) => "gateway",
        }
    }
}

/// What a frame means in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A connect request: answer it; the session is a connector from now on.
    Connect,
    /// A bind request: answer it; the session is a listener if it succeeds.
    Bind,
    /// A listener accepted connections: free backlog slots.
    Ack,
    /// A device asks to serve its VM's guest.
    Gateway,
    /// A device answers a `GuestConnect`.
    Answer,
    /// Not valid here: the session ends.
    Invalid,
}

/// The table of the state machine.
pub fn transition(state: &State, frame: &Frame) -> Transition {
    match (state, frame) {
        (State::Fresh | State::Connector | State::Gateway(_), Frame::Connect { .. }) => {
            Transition::Connect
        }
        (State::Fresh, Frame::Bind { .. }) => Transition::Bind,
        (State::Listener(_), Frame::Ack { .. }) => Transition::Ack,
        (State::Fresh, Frame::Gateway { .. }) => Transition::Gateway,
        (State::Gateway(_), Frame::Accepted { .. } | Frame::Rejected { .. }) => Transition::Answer,
        _ => Transition::Invalid,
    }
}

/// Who is on the other end, for logs and the services' host-user rules.
#[derive(Debug, Clone)]
pub struct Client {
    /// The endpoint's partition.
    pub partition: VmId,
    /// The client's pid, if the kernel told.
    pub pid: Option<u32>,
    /// Its credentials, if the kernel told.
    pub cred: Option<crate::sys::PeerCred>,
}

/// Serves one client session on `fd` until it ends, the partition is removed or hvsockd stops.
pub async fn run(
    broker: Arc<Broker>,
    limits: Limits,
    partition: VmId,
    fd: OwnedFd,
    cancel: CancellationToken,
) {
    match SeqPacket::new(fd) {
        Ok(sock) => serve(broker, limits, partition, Arc::new(sock), cancel).await,
        Err(e) => tracing::error!(%partition, "cannot register a client socket: {e}"),
    }
}

/// Serves one client session over `sock`.
pub async fn serve<T: FrameIo>(
    broker: Arc<Broker>,
    limits: Limits,
    partition: VmId,
    sock: Arc<T>,
    cancel: CancellationToken,
) {
    let book = Arc::new(Book::new(&broker, partition, sock.clone()));
    let session = Session::new(broker, limits, partition, sock, book);
    session.run(cancel, State::Fresh).await;
}

struct Session<T> {
    client: Client,
    broker: Arc<Broker>,
    limits: Limits,
    sock: Arc<T>,
    /// Connects waiting for their answer off the read loop.
    outstanding: Arc<AtomicUsize>,
    /// Its state as the hand-over sees it.
    book: Arc<Book>,
}

impl<T: FrameIo> Session<T> {
    fn new(
        broker: Arc<Broker>,
        limits: Limits,
        partition: VmId,
        sock: Arc<T>,
        book: Arc<Book>,
    ) -> Session<T> {
        Session {
            client: Client {
                partition,
                pid: sock.peer_pid(),
                cred: sock.peer_cred(),
            },
            broker,
            limits,
            sock,
            outstanding: Arc::new(AtomicUsize::new(0)),
            book,
        }
    }

    /// Serves from `state` until the session ends, then unbinds its listener if it has one.
    async fn run(&self, cancel: CancellationToken, state: State) {
        let state = self.serve(cancel, state).await;
        match &state {
            State::Listener(listener) => self.close_listener(listener),
            State::Gateway(gateway) => {
                gateway.close();
                tracing::info!(partition = %self.label(), "the VM's device left");
            }
            _ => {}
        }
    }

    fn label(&self) -> String {
        self.broker.world().label(self.client.partition)
    }

    /// Runs the state machine until the session ends; returns the last state.
    async fn serve(&self, cancel: CancellationToken, state: State) -> State {
        let mut state = state;
        let handshake = tokio::time::sleep(self.limits.handshake_timeout);
        tokio::pin!(handshake);
        loop {
            let fresh = matches!(state, State::Fresh);
            let received = tokio::select! {
                () = cancel.cancelled() => return state,
                () = &mut handshake, if fresh => {
                    if self.broker.metrics().warn_allowed(self.client.partition, "idle", || self.label()) {
                        tracing::warn!(
                            partition = %self.label(), pid = ?self.client.pid,
                            "client sent nothing within {:?}; dropping it", self.limits.handshake_timeout
                        );
                    }
                    self.broker.metrics().client_error(self.client.partition, "idle");
                    return state;
                }
                received = self.sock.recv() => received,
            };
            let frame = match received {
                Ok(Received { frame, .. }) => frame,
                Err(e) if e.is_disconnect() => return state,
                Err(e) => {
                    let reason = match &e {
                        RecvError::Oversized => "oversized",
                        RecvError::Fds { .. } | RecvError::FdsTruncated => "fds",
                        RecvError::Decode(_) => "garbage",
                        _ => "io",
                    };
                    self.drop_client(reason, &e.to_string());
                    return state;
                }
            };
            state = match (transition(&state, &frame), frame) {
                (
                    Transition::Connect,
                    Frame::Connect {
                        req,
                        target,
                        timeout_ms,
                    },
                ) => {
                    if matches!(state, State::Fresh) {
                        self.book.connector();
                    }
                    self.connect(req, target, timeout_ms).await;
                    match state {
                        State::Gateway(g) => State::Gateway(g),
                        _ => State::Connector,
                    }
                }
                (Transition::Gateway, Frame::Gateway { req }) => match self.gateway(Some(req)) {
                    Some(gateway) => {
                        self.book.gateway();
                        State::Gateway(gateway)
                    }
                    None => State::Fresh,
                },
                (Transition::Answer, Frame::Accepted { req }) => {
                    if let State::Gateway(g) = &state {
                        g.answer(req, Ok(()));
                    }
                    state
                }
                (Transition::Answer, Frame::Rejected { req, code, message }) => {
                    if let State::Gateway(g) = &state {
                        g.answer(req, Err(gateway::rejected(code, message)));
                    }
                    state
                }
                (Transition::Bind, Frame::Bind { req, addr, backlog }) => {
                    match self.bind(req, addr, backlog) {
                        Some(listener) => {
                            self.book.listener(addr, backlog, listener.clone());
                            State::Listener(listener)
                        }
                        None => State::Fresh,
                    }
                }
                (Transition::Ack, Frame::Ack { count }) => {
                    if let State::Listener(listener) = &state {
                        listener.ack(count);
                    }
                    state
                }
                (_, frame) => {
                    let why = format!(
                        "a {} frame is not valid in a {} session",
                        frame.kind_name(),
                        state.name()
                    );
                    match &state {
                        State::Listener(listener) => self.close_listener(listener),
                        State::Gateway(gateway) => gateway.close(),
                        _ => {}
                    }
                    self.drop_client("protocol", &why);
                    return State::Fresh;
                }
            };
        }
    }

    fn close_listener(&self, listener: &Listener) {
        self.broker.world().lock().unbind(listener);
        listener.close();
        tracing::debug!(id = listener.id, addr = ?listener.addr, "listener closed");
    }

    fn drop_client(&self, reason: &'static str, why: &str) {
        if self
            .broker
            .metrics()
            .warn_allowed(self.client.partition, reason, || self.label())
        {
            tracing::warn!(
                partition = %self.label(), pid = ?self.client.pid, reason,
                "dropping client: {why}"
            );
        }
        self.broker
            .metrics()
            .client_error(self.client.partition, reason);
        // Best effort: tell the client why, without waiting on a client that does not read.
        let frame = Frame::Error {
            req: 0,
            code: ErrorCode::Protocol,
            message: format!("hvsockd closed this connection: {why}"),
        };
        let _ = self.sock.try_send(&frame, None);
    }

    /// Answers a bind; the listener if it is bound.
    fn bind(&self, req: u32, addr: WireAddr, backlog: u32) -> Option<Arc<Listener>> {
        let addr = SockAddrHv::from(addr);
        let refuse = |code, message: String| {
            let frame = Frame::Error { req, code, message };
            let _ = self.sock.try_send(&frame, None);
            None
        };
        if backlog == 0 || backlog > MAX_BACKLOG {
            return refuse(
                ErrorCode::InvalidInput,
                format!("backlog {backlog} is out of range (1 to {MAX_BACKLOG})"),
            );
        }
        // Bound goes out under the world lock, before any connector can find the listener, so
        // that the client reads Bound before any Incoming.
        let partition = self.client.partition;
        let sink = Arc::new(SessionSink(self.sock.clone()));
        let mut world = self.broker.world().lock();
        match world.bind(partition, addr, backlog, self.client.pid, sink) {
            Ok(listener) => {
                let frame = Frame::Bound {
                    req,
                    local: addr.into(),
                };
                if let Err(e) = self.sock.try_send(&frame, None) {
                    world.unbind(&listener);
                    tracing::debug!("client left before its bind was answered: {e}");
                    return None;
                }
                tracing::debug!(
                    partition = %world.partition_label(partition), pid = ?self.client.pid,
                    addr = ?addr, backlog, "listener bound"
                );
                Some(listener)
            }
            Err(refused) => {
                let key = world.service_key(addr.service_id);
                drop(world);
                self.broker
                    .metrics()
                    .bind_refused(partition, key, refused.reason);
                refuse(refused.code, refused.message)
            }
        }
    }

    /// Answers a `Gateway` request: the gateway if this session now serves its VM's guest.
    /// Without `req`, a resumed gateway (see [`crate::handover`]): its device is not told
    /// anything unless it is refused.
    fn gateway(&self, answer: Option<u32>) -> Option<Arc<Gateway>> {
        let req = answer.unwrap_or(0);
        let partition = self.client.partition;
        let refuse = |code, message: String| {
            let _ = self
                .sock
                .try_send(&Frame::Error { req, code, message }, None);
            None
        };
        let name = {
            let world = self.broker.world().lock();
            match world.partition(partition) {
                Some(p) if p.parent.is_none() => {
                    return refuse(
                        ErrorCode::Unsupported,
                        "the host partition cannot have a device gateway: register the VM with `hvsock vm add NAME` and run its device as that VM".into(),
                    );
                }
                Some(p) if p.hybrid_vsock.is_some() => {
                    return refuse(
                        ErrorCode::Unsupported,
                        format!(
                            "VM {} is attached through its VMM's hybrid-vsock socket; remove it and add it again without --hybrid-vsock to serve it with hvsock-vhost",
                            p.name
                        ),
                    );
                }
                Some(p) => p.name.clone(),
                None => {
                    return refuse(
                        ErrorCode::Unreachable,
                        format!("partition {partition} is not registered"),
                    );
                }
            }
        };
        let sock = self.sock.clone();
        let send: gateway::SendFrame = Box::new(move |frame, fd| sock.try_send(frame, Some(fd)));
        let gateway = Arc::new(Gateway::new(&name, send));
        if !self.broker.serve_guest_once(partition, gateway.clone()) {
            return refuse(
                ErrorCode::AddrInUse,
                format!("VM {name} already has a device (hvsock-vhost) connected; stop it first"),
            );
        }
        if answer.is_none() {
            tracing::info!(vm = %name, pid = ?self.client.pid, "the VM's device is its gateway again");
            return Some(gateway);
        }
        let bound = Frame::Bound {
            req,
            local: SockAddrHv::new(partition, hvsock::ServiceId(hvsock::Guid::NIL)).into(),
        };
        if let Err(e) = self.sock.try_send(&bound, None) {
            tracing::debug!("device left before its gateway was answered: {e}");
            return None;
        }
        tracing::info!(vm = %name, pid = ?self.client.pid, "the VM's device is its gateway");
        Some(gateway)
    }

    /// Answers a connect: at once, or from a task of its own when the answer comes later.
    async fn connect(&self, req: u32, target: WireAddr, timeout_ms: u32) {
        let started = Instant::now();
        if self.outstanding.load(Ordering::Acquire) >= self.limits.max_outstanding_connects {
            let message = format!(
                "{} connects are already outstanding on this control connection",
                self.limits.max_outstanding_connects
            );
            reply_error(&*self.sock, req, ErrorCode::Busy, &message).await;
            return;
        }
        if timeout_ms == 0 || timeout_ms > hvsock::addr::HVSOCKET_CONNECT_TIMEOUT_MAX {
            let message = format!(
                "connect timeout {timeout_ms} ms is out of range (1 to {})",
                hvsock::addr::HVSOCKET_CONNECT_TIMEOUT_MAX
            );
            reply_error(&*self.sock, req, ErrorCode::InvalidInput, &message).await;
            return;
        }
        let timeout = Duration::from_millis(timeout_ms.into());
        let target = SockAddrHv::from(target);
        let checked = {
            let world = self.broker.world().lock();
            world
                .check_user(self.client.partition, target, self.client.cred.as_ref())
                .map_err(|refused| (world.service_key(target.service_id), refused))
        };
        if let Err((key, refused)) = checked {
            self.broker
                .metrics()
                .refused(self.client.partition, key, refused.reason);
            tracing::info!(
                pid = ?self.client.pid, uid = ?self.client.cred.as_ref().map(|c| c.uid),
                "refused: {}", refused.message
            );
            reply_error(&*self.sock, req, refused.code, &refused.message).await;
            return;
        }
        match self
            .broker
            .connect(self.client.partition, target, Conn::Pair, timeout, started)
        {
            Connecting::Now(settled) => answer(&self.broker, &*self.sock, req, settled).await,
            Connecting::Later(pending) => {
                self.outstanding.fetch_add(1, Ordering::AcqRel);
                self.book.waiting(WaitingConnect {
                    req,
                    target: target.into(),
                    deadline_ms: handover::monotonic_ms() + u64::from(timeout_ms),
                });
                let (broker, sock) = (self.broker.clone(), self.sock.clone());
                let (outstanding, book) = (self.outstanding.clone(), self.book.clone());
                tokio::spawn(async move {
                    answer(&broker, &*sock, req, pending.await).await;
                    book.answered(req);
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }
}

async fn reply_error(sock: &impl FrameIo, req: u32, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        req,
        code,
        message: message.to_owned(),
    };
    let _ = sock.send(&frame, None).await;
}

/// Answers a settled connect; counts it as established once the connector has its end.
async fn answer(broker: &Broker, sock: &impl FrameIo, req: u32, settled: Settled) {
    match (&settled.result, settled.local, settled.peer) {
        (Ok(end), Some(local), Some(peer)) => {
            let frame = Frame::Connected {
                req,
                local: local.into(),
                peer: peer.into(),
            };
            match sock.send(&frame, end.as_ref().map(|e| e.as_fd())).await {
                Ok(()) => broker.established(&settled),
                Err(e) => tracing::debug!("connector left before its answer: {e}"),
            }
        }
        (Err(refused), _, _) => reply_error(sock, req, refused.code, &refused.message).await,
        (Ok(_), _, _) => {
            tracing::error!("a connect settled without addresses");
            reply_error(sock, req, ErrorCode::Internal, "internal error").await;
        }
    }
}

#[cfg(test)]
mod tests;
