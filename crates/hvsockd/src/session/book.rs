//! A session's state as the [hand-over](crate::handover) sees it: kept in the
//! [`Holder`](crate::handover::Holder) under the session's name, so that the service manager's
//! store (and a `SIGUSR2` hand-over) always has what a restarted hvsockd needs to resume it.

use std::sync::{Arc, Mutex};

use hvsock::VmId;
use hvsock_proto::WireAddr;

use crate::broker::Broker;
use crate::handover::{Hold, Kept, SessionRecord, SessionState, Socket, WaitingConnect};
use crate::listeners::Listener;

/// One session's entry in the holder.
#[derive(Debug)]
pub struct Book {
    hold: Hold,
    n: u64,
    partition: VmId,
    state: Mutex<(SessionState, Option<Arc<Listener>>)>,
}

impl Book {
    /// A fresh session's, on `sock`.
    pub fn new(broker: &Broker, partition: VmId, sock: Socket) -> Book {
        let n = broker.holder().session_number();
        let state = SessionState::Fresh;
        let record = SessionRecord {
            partition,
            state: state.clone(),
        };
        Book {
            hold: broker.holder().hold(sock, Kept::Session(n, record)),
            n,
            partition,
            state: Mutex::new((state, None)),
        }
    }

    /// A resumed session's: `hold` came back under its old name.
    pub fn resumed(hold: Hold, n: u64, partition: VmId, state: SessionState) -> Book {
        Book {
            hold,
            n,
            partition,
            state: Mutex::new((state, None)),
        }
    }

    fn change(&self, f: impl FnOnce(&mut (SessionState, Option<Arc<Listener>>))) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state);
        let record = SessionRecord {
            partition: self.partition,
            state: state.0.clone(),
        };
        self.hold
            .set(Kept::Session(self.n, record), state.1.clone());
    }

    /// It sent its first `Connect`.
    pub fn connector(&self) {
        self.change(|s| {
            if matches!(s.0, SessionState::Fresh) {
                s.0 = SessionState::Connector(Vec::new());
            }
        });
    }

    /// A connect waits for its answer.
    pub fn waiting(&self, connect: WaitingConnect) {
        self.change(|s| match &mut s.0 {
            SessionState::Connector(waiting) => waiting.push(connect),
            other => *other = SessionState::Connector(vec![connect]),
        });
    }

    /// The connect `req` was answered.
    pub fn answered(&self, req: u32) {
        self.change(|s| {
            if let SessionState::Connector(waiting) = &mut s.0 {
                waiting.retain(|w| w.req != req);
            }
        });
    }

    /// It is its VM's gateway.
    pub fn gateway(&self) {
        self.change(|s| *s = (SessionState::Gateway, None));
    }

    /// It is bound.
    pub fn listener(&self, addr: WireAddr, backlog: u32, listener: Arc<Listener>) {
        self.change(|s| {
            *s = (
                SessionState::Listener {
                    addr,
                    backlog,
                    outstanding: 0,
                },
                Some(listener),
            );
        });
    }
}
