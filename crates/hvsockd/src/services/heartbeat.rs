//! The host's side of `hvsock-heartbeat` (protocol: [`hvsock_agent::heartbeat`]): the agent
//! says Hello, then Facts and a Beat every 2 s; each feeds the partition's entry in
//! [`Guests`]. The guest is `lost` once the connection ends or no beat came for
//! [`LOST_AFTER`](hvsock_agent::heartbeat::LOST_AFTER) (7 s).
//!
//! A connection ends on anything out of place (a frame over [`MAX_FRAME`], a malformed or
//! oversized Facts, a Beat before Facts or counting down, an unknown kind), when it says
//! nothing for [`IDLE`], or when a newer connection of the partition replaces it.

use std::sync::Arc;
use std::time::Duration;

use hvsock::ServiceId;
use hvsock_agent::heartbeat;
use hvsock_agent::services::HEARTBEAT;

use super::conn::Conn;
use super::guests::Guests;
use super::{Incoming, Served, Serving};

/// The largest frame taken: Facts of four strings of [`heartbeat::MAX_FACT`] bytes,
/// JSON-escaped (at most 6 bytes per byte), with room to spare.
pub const MAX_FRAME: usize = 8 * 1024;

/// A connection silent this long ends (the agent beats every 2 s).
pub const IDLE: Duration = Duration::from_secs(30);

/// The heartbeat service, feeding `guests`.
#[derive(Debug)]
pub struct Heartbeat {
    /// Where the guests' state goes.
    pub guests: Arc<Guests>,
}

impl Served for Heartbeat {
    fn id(&self) -> ServiceId {
        HEARTBEAT.id()
    }

    fn name(&self) -> &'static str {
        HEARTBEAT.name
    }

    fn forget(&self, vm: hvsock::VmId) {
        self.guests.forget(vm);
    }

    fn serve(self: Arc<Self>, conn: Incoming) -> Serving {
        Box::pin(async move {
            let Incoming {
                partition,
                seq,
                stream,
                ended,
                ..
            } = conn;
            let mut conn = Conn::new(stream, MAX_FRAME);
            if conn
                .welcome_unless(heartbeat::SERVICE, heartbeat::VERSIONS, &ended)
                .await?
                .is_none()
            {
                return Ok(());
            }
            self.guests.connect(partition, seq);
            let expected = format!("the agent beats every {} s", heartbeat::INTERVAL.as_secs());
            let result = loop {
                let frame = match conn.next_within(IDLE, &ended, &expected).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                if let Err(e) = self.guests.heartbeat(partition, seq, &frame) {
                    break Err(e);
                }
            };
            self.guests.disconnect(partition, seq);
            if let Err(e) = &result {
                conn.send_error(e).await;
            }
            result
        })
    }
}
