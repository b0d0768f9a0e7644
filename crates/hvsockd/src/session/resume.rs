//! A session that an hvsockd before this one served, taken back with its state (see
//! [`crate::handover`]): a listener is bound again without a `Bound` frame, so its client sees
//! nothing; each connect that was waiting is asked again with what is left of its timeout, so
//! its connector gets its answer; a VM's device is its VM's gateway again; a fresh session
//! reads the request that waits in its socket.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use hvsock::SockAddrHv;
use hvsock_proto::{ErrorCode, Frame, WireAddr};
use tokio_util::sync::CancellationToken;

use super::book::Book;
use super::io::{FrameIo, SeqPacket, SessionSink};
use super::{Session, State};
use crate::broker::Broker;
use crate::config::Limits;
use crate::handover::{self, Kept, SessionRecord, SessionState, WaitingConnect};
use crate::listeners::Listener;

/// Takes back a session on `fd`, kept under `name` as session `n` with `record`: binds its
/// listener again now, and returns what serves it (asking its waiting connects again first)
/// until it ends, its partition is removed or hvsockd stops; `None` if it cannot be resumed
/// (its client was told why). Must run inside the runtime.
pub fn resume(
    broker: Arc<Broker>,
    limits: Limits,
    fd: OwnedFd,
    cancel: CancellationToken,
    (n, record, name): (u64, SessionRecord, String),
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let sock = match SeqPacket::new(fd) {
        Ok(sock) => Arc::new(sock),
        Err(e) => {
            tracing::error!(partition = %record.partition, "cannot register a resumed client socket: {e}");
            broker.holder().discard(&name);
            return None;
        }
    };
    let partition = record.partition;
    let hold = broker
        .holder()
        .adopt(sock.clone(), Kept::Session(n, record.clone()), name);
    let book = Arc::new(Book::resumed(hold, n, partition, record.state.clone()));
    let session = Session::new(broker, limits, partition, sock, book);
    let (state, waiting) = match record.state {
        SessionState::Fresh => (State::Fresh, Vec::new()),
        SessionState::Gateway => (State::Gateway(session.gateway(None)?), Vec::new()),
        SessionState::Connector(waiting) => (State::Connector, waiting),
        SessionState::Listener {
            addr,
            backlog,
            outstanding,
        } => (
            State::Listener(session.rebind(addr, backlog, outstanding)?),
            Vec::new(),
        ),
    };
    Some(async move {
        for connect in waiting {
            session.reissue(connect).await;
        }
        session.run(cancel, state).await;
    })
}

impl Session<SeqPacket> {
    /// Binds a resumed listener again, as it was; tells its client and ends the session if
    /// that is no longer allowed.
    fn rebind(&self, addr: WireAddr, backlog: u32, outstanding: u32) -> Option<Arc<Listener>> {
        let partition = self.client.partition;
        let sink = Arc::new(SessionSink(self.sock.clone()));
        let bound = self.broker.world().lock().bind(
            partition,
            SockAddrHv::from(addr),
            backlog,
            self.client.pid,
            sink,
        );
        match bound {
            Ok(listener) => {
                listener.restore_outstanding(outstanding.min(backlog));
                self.book.listener(addr, backlog, listener.clone());
                tracing::debug!(
                    partition = %self.label(), pid = ?self.client.pid, addr = ?addr,
                    "listener resumed"
                );
                Some(listener)
            }
            Err(refused) => {
                tracing::warn!(
                    partition = %self.label(), pid = ?self.client.pid, addr = ?addr,
                    "a listener could not be resumed: {}", refused.message
                );
                let frame = Frame::Error {
                    req: 0,
                    code: refused.code,
                    message: format!(
                        "hvsockd restarted and could not bind this listener again: {}",
                        refused.message
                    ),
                };
                let _ = self.sock.try_send(&frame, None);
                None
            }
        }
    }

    /// Asks a connect that was waiting again, with what is left of its timeout.
    async fn reissue(&self, connect: WaitingConnect) {
        let left = connect.deadline_ms.saturating_sub(handover::monotonic_ms());
        let left = u32::try_from(left)
            .unwrap_or(u32::MAX)
            .min(hvsock::addr::HVSOCKET_CONNECT_TIMEOUT_MAX);
        if left == 0 {
            let frame = Frame::Error {
                req: connect.req,
                code: ErrorCode::TimedOut,
                message: "the connect timed out (while hvsockd restarted)".into(),
            };
            let _ = self.sock.send(&frame, None).await;
            return;
        }
        self.connect(connect.req, connect.target, left).await;
    }
}
