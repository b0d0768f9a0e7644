//! The host's side of `hvsock-time` (protocol: [`hvsock_agent::time`]): the agent says Hello,
//! then asks the host's clock (Request, answered at once with the host's `CLOCK_REALTIME`
//! read on receipt and on answer) and tells what it measured (Report, kept in [`Guests`] as the
//! partition's last offset).
//!
//! A connection ends on anything out of place (a frame over [`MAX_FRAME`], a malformed body,
//! an unknown kind), when it says nothing for [`IDLE`], or when a newer connection of the
//! partition replaces it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hvsock::ServiceId;
use hvsock_agent::services::TIME;
use hvsock_agent::time::{self, Report};

use super::conn::Conn;
use super::guests::Guests;
use super::{Incoming, Served, Serving};

/// The largest frame taken (a Request or a Report is under 100 bytes).
pub const MAX_FRAME: usize = 1024;

/// A connection silent this long ends (the agent asks every 5 s).
pub const IDLE: Duration = Duration::from_secs(30);

/// The time service, keeping reports in `guests`.
#[derive(Debug)]
pub struct Time {
    /// Where the last offsets go.
    pub guests: Arc<Guests>,
}

/// The host's time, in nanoseconds since the epoch.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Served for Time {
    fn id(&self) -> ServiceId {
        TIME.id()
    }

    fn name(&self) -> &'static str {
        TIME.name
    }

    fn forget(&self, vm: hvsock::VmId) {
        self.guests.forget(vm);
    }

    fn serve(self: Arc<Self>, conn: Incoming) -> Serving {
        Box::pin(async move {
            let Incoming {
                partition,
                stream,
                ended,
                ..
            } = conn;
            let mut conn = Conn::new(stream, MAX_FRAME);
            if conn
                .welcome_unless(time::SERVICE, time::VERSIONS, &ended)
                .await?
                .is_none()
            {
                return Ok(());
            }
            let expected = format!("the agent asks every {} s", time::POLL.as_secs());
            let result = loop {
                let frame = match conn.next_within(IDLE, &ended, &expected).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                if frame.kind == time::REPORT {
                    match frame.parse::<Report>() {
                        Ok(report) => self.guests.time_report(partition, &report),
                        Err(e) => break Err(e),
                    }
                    continue;
                }
                let t2 = now_ns();
                let reply = match time::answer(&frame, t2, now_ns()) {
                    Ok(reply) => reply,
                    Err(e) => break Err(e),
                };
                if let Err(e) = conn.write([reply]).await {
                    break Err(e);
                }
            };
            if let Err(e) = &result {
                conn.send_error(e).await;
            }
            result
        })
    }
}
