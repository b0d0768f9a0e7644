//! One client's control connection to an endpoint: a small state machine.
//!
//! ```text
//!  Fresh ──Connect──▶ Connector ──Connect──▶ Connector      (many requests may be outstanding)
//!    │
//!    └──Bind (ok)──▶ Listener ──Ack──▶ Listener              (hvsockd pushes Incoming frames)
//! ```
//!
//! A failed `Bind` leaves the session `Fresh`. Anything else (a frame that is not valid in the
//! state, garbage, an oversized frame, a frame with file descriptors, or a `Fresh` session that
//! sends nothing within the handshake timeout) is logged with the client's partition and pid,
//! counted, answered with a best-effort `Error` frame, and ends this session only.
//!
//! The partition is the endpoint's, never anything the client says.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hvsock::{SockAddrHv, VmId};
use hvsock_proto::frame::MAX_BACKLOG;
use hvsock_proto::unix::{Received, RecvError, recv_frame, send_frame};
use hvsock_proto::{ErrorCode, Frame, WireAddr};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::listeners::{Conn, Listener, Offer, Outcome};
use crate::server::Ctx;
use crate::state::{Refused, Routed, Target};

/// The session's state.
#[derive(Debug)]
enum State {
    /// Nothing asked yet.
    Fresh,
    /// Has sent `Connect`.
    Connector,
    /// Bound.
    Listener(Arc<Listener>),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Fresh => "fresh",
            State::Connector => "connector",
            State::Listener(_) => "listener",
        }
    }
}

/// Who is on the other end, for logs.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The endpoint's partition.
    pub partition: VmId,
    /// The client's pid, if the kernel told.
    pub pid: Option<u32>,
}

/// Serves one client session until it ends, the partition is removed or hvsockd stops.
pub async fn run(ctx: Arc<Ctx>, partition: VmId, fd: OwnedFd, cancel: CancellationToken) {
    let pid = rustix::net::sockopt::socket_peercred(&fd)
        .ok()
        .and_then(|cred| u32::try_from(cred.pid.as_raw_nonzero().get()).ok());
    let client = Client { partition, pid };
    let sock = match crate::endpoint::register(fd) {
        Ok(sock) => Arc::new(sock),
        Err(e) => {
            tracing::error!(?client, "cannot register a client socket: {e}");
            return;
        }
    };
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut state = State::Fresh;
    let handshake = tokio::time::sleep(ctx.limits.handshake_timeout);
    tokio::pin!(handshake);
    loop {
        let fresh = matches!(state, State::Fresh);
        let received = tokio::select! {
            () = cancel.cancelled() => break,
            () = &mut handshake, if fresh => {
                tracing::warn!(
                    partition = %ctx.label(partition), pid = ?client.pid,
                    "client sent nothing within {:?}; dropping it", ctx.limits.handshake_timeout
                );
                ctx.metrics.client_error(partition, "idle");
                break;
            }
            received = recv(&sock) => received,
        };
        let frame = match received {
            Ok(Received { frame, .. }) => frame,
            Err(e) if e.is_disconnect() => break,
            Err(e) => {
                let reason = match &e {
                    RecvError::Oversized => "oversized",
                    RecvError::Fds { .. } | RecvError::FdsTruncated => "fds",
                    RecvError::Decode(_) => "garbage",
                    _ => "io",
                };
                drop_client(&ctx, &sock, client, reason, &e.to_string()).await;
                break;
            }
        };
        state = match (state, frame) {
            (
                State::Fresh | State::Connector,
                Frame::Connect {
                    req,
                    target,
                    timeout_ms,
                },
            ) => {
                if outstanding.load(Ordering::Acquire) >= ctx.limits.max_outstanding_connects {
                    let message = format!(
                        "{} connects are already outstanding on this control connection",
                        ctx.limits.max_outstanding_connects
                    );
                    reply_error(&sock, req, ErrorCode::Busy, &message).await;
                } else {
                    connect(&ctx, &sock, &outstanding, client, req, target, timeout_ms).await;
                }
                State::Connector
            }
            (State::Fresh, Frame::Bind { req, addr, backlog }) => {
                match bind(&ctx, &sock, client, req, addr, backlog) {
                    Some(listener) => {
                        // A VM may now reach this listener: open its guest port.
                        crate::attach::reconcile(&ctx);
                        State::Listener(listener)
                    }
                    None => State::Fresh,
                }
            }
            (State::Listener(listener), Frame::Ack { count }) => {
                listener.ack(count);
                State::Listener(listener)
            }
            (state, frame) => {
                let why = format!(
                    "a {} frame is not valid in a {} session",
                    frame.kind_name(),
                    state.name()
                );
                if let State::Listener(listener) = &state {
                    close_listener(&ctx, listener);
                }
                drop_client(&ctx, &sock, client, "protocol", &why).await;
                return;
            }
        };
    }
    if let State::Listener(listener) = &state {
        close_listener(&ctx, listener);
    }
}

fn close_listener(ctx: &Arc<Ctx>, listener: &Listener) {
    ctx.world().unbind(listener);
    crate::attach::reconcile(ctx);
    listener.close();
    tracing::debug!(id = listener.id, addr = ?listener.addr, "listener closed");
}

async fn drop_client(
    ctx: &Ctx,
    sock: &AsyncFd<OwnedFd>,
    client: Client,
    reason: &'static str,
    why: &str,
) {
    tracing::warn!(
        partition = %ctx.label(client.partition), pid = ?client.pid, reason,
        "dropping client: {why}"
    );
    ctx.metrics.client_error(client.partition, reason);
    // Best effort: tell the client why, without waiting on a client that does not read.
    let frame = Frame::Error {
        req: 0,
        code: ErrorCode::Protocol,
        message: format!("hvsockd closed this connection: {why}"),
    };
    let _ = send_frame(sock.get_ref(), &frame, None, true);
}

/// Receives one frame, waiting for readability.
async fn recv(sock: &AsyncFd<OwnedFd>) -> Result<Received, RecvError> {
    loop {
        let mut guard = sock.readable().await.map_err(RecvError::Io)?;
        match recv_frame(guard.get_inner(), true) {
            Err(e) if e.is_would_block() => guard.clear_ready(),
            other => return other,
        }
    }
}

/// Sends one frame, waiting for buffer space.
async fn send(sock: &AsyncFd<OwnedFd>, frame: &Frame, fd: Option<&OwnedFd>) -> std::io::Result<()> {
    loop {
        match send_frame(sock.get_ref(), frame, fd.map(|f| f.as_fd()), true) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sock.writable().await?.clear_ready();
            }
            other => return other,
        }
    }
}

async fn reply_error(sock: &AsyncFd<OwnedFd>, req: u32, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        req,
        code,
        message: message.to_owned(),
    };
    let _ = send(sock, &frame, None).await;
}

fn bind(
    ctx: &Ctx,
    sock: &Arc<AsyncFd<OwnedFd>>,
    client: Client,
    req: u32,
    addr: WireAddr,
    backlog: u32,
) -> Option<Arc<Listener>> {
    let addr = SockAddrHv::from(addr);
    let refuse = |code, message: String| {
        let frame = Frame::Error { req, code, message };
        let _ = send_frame(sock.get_ref(), &frame, None, true);
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
    let mut world = ctx.world();
    match world.bind(client.partition, addr, backlog, client.pid, sock.clone()) {
        Ok(listener) => {
            let frame = Frame::Bound {
                req,
                local: addr.into(),
            };
            if let Err(e) = send_frame(sock.get_ref(), &frame, None, true) {
                world.unbind(&listener);
                tracing::debug!("client left before its bind was answered: {e}");
                return None;
            }
            tracing::debug!(
                partition = %world.partition_label(client.partition), pid = ?client.pid,
                addr = ?addr, backlog, "listener bound"
            );
            Some(listener)
        }
        Err(refused) => {
            let key = world.service_key(addr.service_id);
            drop(world);
            ctx.metrics
                .bind_refused(client.partition, key, refused.reason);
            refuse(refused.code, refused.message)
        }
    }
}

async fn connect(
    ctx: &Arc<Ctx>,
    sock: &Arc<AsyncFd<OwnedFd>>,
    outstanding: &Arc<AtomicUsize>,
    client: Client,
    req: u32,
    target: WireAddr,
    timeout_ms: u32,
) {
    let started = Instant::now();
    let target = SockAddrHv::from(target);
    if timeout_ms == 0 || timeout_ms > hvsock::addr::HVSOCKET_CONNECT_TIMEOUT_MAX {
        let message = format!(
            "connect timeout {timeout_ms} ms is out of range (1 to {})",
            hvsock::addr::HVSOCKET_CONNECT_TIMEOUT_MAX
        );
        reply_error(sock, req, ErrorCode::InvalidInput, &message).await;
        return;
    }
    let routed = {
        let world = ctx.world();
        world
            .route(client.partition, target)
            .map_err(|refused| (world.service_key(target.service_id), refused))
    };
    let routed = match routed {
        Ok(routed) => routed,
        Err((key, refused)) => {
            ctx.metrics.refused(client.partition, key, refused.reason);
            tracing::debug!(from = %ctx.label(client.partition), ?target, "refused: {}", refused.message);
            reply_error(sock, req, refused.code, &refused.message).await;
            return;
        }
    };
    let listener = match routed.target.clone() {
        Target::Listener(listener) => listener,
        Target::Vm {
            partition,
            hybrid_vsock,
        } => {
            into_guest(
                ctx,
                sock,
                outstanding,
                client,
                req,
                routed,
                started,
                timeout_ms,
                (partition, hybrid_vsock),
            )
            .await;
            return;
        }
    };
    match listener.offer(routed.listener.into(), routed.connector.into(), Conn::Pair) {
        Offer::Delivered(end) => {
            finish(ctx, sock, req, client, &routed, started, Ok(end)).await;
        }
        Offer::Refused(why) => {
            let refused = Refused::listener_closed(why);
            finish(ctx, sock, req, client, &routed, started, Err(refused)).await;
        }
        Offer::Waiting(answer) => {
            // Wait off the session's read loop, so that other requests go on meanwhile.
            outstanding.fetch_add(1, Ordering::AcqRel);
            let (ctx, sock, outstanding) = (ctx.clone(), sock.clone(), outstanding.clone());
            let timeout = std::time::Duration::from_millis(timeout_ms.into());
            tokio::spawn(async move {
                let result = match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(outcome)) => outcome_result(outcome),
                    Ok(Err(_)) => Err(Refused::listener_closed("the listener closed")),
                    Err(_) => Err(Refused::new(
                        ErrorCode::TimedOut,
                        "timed_out",
                        format!(
                            "the listener on {} accepted nothing within {timeout_ms} ms (its backlog is full)",
                            routed.listener
                        ),
                    )),
                };
                finish(&ctx, &sock, req, client, &routed, started, result).await;
                outstanding.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// A connect into a VM: through its VMM's hybrid-vsock socket, on a task of its own (the
/// handshake may be retried for the whole timeout), so the session goes on meanwhile.
#[allow(clippy::too_many_arguments)]
async fn into_guest(
    ctx: &Arc<Ctx>,
    sock: &Arc<AsyncFd<OwnedFd>>,
    outstanding: &Arc<AtomicUsize>,
    client: Client,
    req: u32,
    routed: Routed,
    started: Instant,
    timeout_ms: u32,
    (vm, path): (VmId, std::path::PathBuf),
) {
    let Some(port) = routed.listener.service_id.vsock_port() else {
        let service = ctx
            .world()
            .service(routed.listener.service_id)
            .map(|s| format!("{} ({})", s.name, s.id))
            .unwrap_or_else(|| routed.listener.service_id.to_string());
        let refused = crate::attach::not_template(&service, &ctx.label(vm));
        finish(ctx, sock, req, client, &routed, started, Err(refused)).await;
        return;
    };
    outstanding.fetch_add(1, Ordering::AcqRel);
    let (ctx, sock, outstanding) = (ctx.clone(), sock.clone(), outstanding.clone());
    let timeout = std::time::Duration::from_millis(timeout_ms.into());
    tokio::spawn(async move {
        let result = crate::attach::connect_guest(&path, port, timeout)
            .await
            .map(Some)
            .map_err(|e| {
                let (code, reason) = e.code();
                Refused::new(
                    code,
                    reason,
                    format!(
                        "connecting to VM {} on vsock port {port}: {e}",
                        ctx.label(vm)
                    ),
                )
            });
        finish(&ctx, &sock, req, client, &routed, started, result).await;
        outstanding.fetch_sub(1, Ordering::AcqRel);
    });
}

fn outcome_result(outcome: Outcome) -> Result<Option<OwnedFd>, Refused> {
    outcome.map_err(Refused::listener_closed)
}

/// Answers a connect and counts it.
async fn finish(
    ctx: &Ctx,
    sock: &AsyncFd<OwnedFd>,
    req: u32,
    client: Client,
    routed: &Routed,
    started: Instant,
    result: Result<Option<OwnedFd>, Refused>,
) {
    match result {
        Ok(end) => {
            let frame = Frame::Connected {
                req,
                local: routed.connector.into(),
                peer: routed.listener.into(),
            };
            match send(sock, &frame, end.as_ref()).await {
                Ok(()) => {
                    ctx.metrics
                        .established(client.partition, routed.service_key, started.elapsed())
                }
                Err(e) => tracing::debug!("connector left before its answer: {e}"),
            }
        }
        Err(refused) => {
            ctx.metrics
                .refused(client.partition, routed.service_key, refused.reason);
            reply_error(sock, req, refused.code, &refused.message).await;
        }
    }
}
