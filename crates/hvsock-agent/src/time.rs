//! The time sync service (`hvsock-time`, vsock port 50004): the agent reads the host's clock and
//! sets the guest's from it. The host (hvsockd) serves it; the agent connects.
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"time"`):
//!
//! | kind | name | direction | body |
//! | --- | --- | --- | --- |
//! | `0x60` | Request | agent → host | JSON [`Request`]: `seq`, `t1` (guest time sent) |
//! | `0x61` | Reply | host → agent | JSON [`Reply`]: `seq`, `t1` echoed, `t2` (host time received), `t3` (host time sent) |
//! | `0x62` | Report | agent → host | JSON [`Report`]: the offset measured and whether the clock was set |
//!
//! Times are nanoseconds since the Unix epoch (`CLOCK_REALTIME`). With `t4` the guest's time
//! the Reply came, the guest is behind by `offset = ((t2 - t1) + (t3 - t4)) / 2`, measured to
//! within half the round trip `delay = (t4 - t1) - (t3 - t2)` (NTP's arithmetic). One request
//! at a time; a Reply that does not answer it is an error.
//!
//! # The bound
//!
//! The agent measures at start and every [`POLL`] (5 s); a guest clock more than
//! [`STEP_ABOVE`] (50 ms) off is stepped to the host's. So, between polls, the guest is within
//! 50 ms plus half a round trip (well under a millisecond over vsock) of the host, plus what
//! its clock drifts in 5 s; after a pause/resume (or a wrong clock at boot) it is right again
//! within 5 s. Inside a sandbox (the provider transport) the clock is the host kernel's own:
//! the agent then only measures and reports, never sets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::{Frame, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "time";
/// Request (agent → host).
pub const REQUEST: u8 = 0x60;
/// Reply (host → agent).
pub const REPLY: u8 = 0x61;
/// Report (agent → host).
pub const REPORT: u8 = 0x62;
/// How often the agent measures.
pub const POLL: Duration = Duration::from_secs(5);
/// How far off the guest clock may be before the agent steps it.
pub const STEP_ABOVE: Duration = Duration::from_millis(50);
/// A round trip longer than this is not a measurement (a host that stalled).
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Counts up.
    pub seq: u64,
    /// The guest's time at sending.
    pub t1: i64,
}

/// Reply's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's.
    pub seq: u64,
    /// The request's `t1`.
    pub t1: i64,
    /// The host's time at receiving.
    pub t2: i64,
    /// The host's time at answering.
    pub t3: i64,
}

/// Report's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// How far the guest was behind the host, in nanoseconds (negative: ahead).
    pub offset_ns: i64,
    /// The round trip, in nanoseconds.
    pub delay_ns: i64,
    /// Whether the agent stepped the clock.
    pub stepped: bool,
}

/// The host's answer to a Request (its clock read twice around its work).
pub fn answer(frame: &Frame, t2: i64, t3: i64) -> Result<Frame, WireError> {
    if frame.kind != REQUEST {
        return Err(WireError::Unexpected {
            kind: frame.kind,
            state: "from the agent on the time service",
        });
    }
    let req: Request = frame.parse()?;
    Ok(Frame::json(
        REPLY,
        &Reply {
            seq: req.seq,
            t1: req.t1,
            t2,
            t3,
        },
    ))
}

/// `(offset, delay)` in nanoseconds from the four times, or why they are no measurement.
pub fn measure(req: &Request, reply: &Reply, t4: i64) -> Result<(i64, i64), WireError> {
    if reply.seq != req.seq || reply.t1 != req.t1 {
        return Err(WireError::Invalid(format!(
            "the Reply (seq {}) does not answer Request {}",
            reply.seq, req.seq
        )));
    }
    let (t1, t2, t3, t4) = (
        i128::from(req.t1),
        i128::from(reply.t2),
        i128::from(reply.t3),
        i128::from(t4),
    );
    let delay = (t4 - t1) - (t3 - t2);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let max = i128::try_from(MAX_DELAY.as_nanos()).unwrap_or(i128::MAX);
    if t3 < t2 || !(0..=max).contains(&delay) {
        return Err(WireError::Invalid(format!(
            "the host's times ({t2}, {t3}) and the round trip ({delay} ns) make no measurement"
        )));
    }
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    Ok((clamp(offset), clamp(delay)))
}

/// Whether an offset calls for stepping the clock.
pub fn should_step(offset_ns: i64) -> bool {
    offset_ns.unsigned_abs() > u64::try_from(STEP_ABOVE.as_nanos()).unwrap_or(u64::MAX)
}

/// The realtime clock, in nanoseconds since the epoch.
#[cfg(target_os = "linux")]
pub fn now_ns() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// Moves the realtime clock by `offset_ns`.
#[cfg(target_os = "linux")]
pub fn step(offset_ns: i64) -> std::io::Result<()> {
    let target = now_ns().saturating_add(offset_ns);
    let ts = rustix::time::Timespec {
        tv_sec: target.div_euclid(1_000_000_000),
        tv_nsec: target.rem_euclid(1_000_000_000),
    };
    Ok(rustix::time::clock_settime(
        rustix::time::ClockId::Realtime,
        ts,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_ntps_and_bad_replies_are_refused() {
        // Guest 10 s behind, 2 ms each way, 1 ms at the host.
        let s = 1_000_000_000i64;
        let req = Request {
            seq: 1,
            t1: 100 * s,
        };
        let reply = Reply {
            seq: 1,
            t1: req.t1,
            t2: 110 * s + 2_000_000,
            t3: 110 * s + 3_000_000,
        };
        let (offset, delay) = measure(&req, &reply, 100 * s + 5_000_000).expect("valid");
        assert_eq!(offset, 10 * s);
        assert_eq!(delay, 4_000_000);
        assert!(should_step(offset));
        assert!(!should_step(10_000_000));
        assert!(measure(&req, &Reply { seq: 2, ..reply }, 100 * s).is_err());
        let backwards = Reply {
            t3: reply.t2 - 1,
            ..reply
        };
        assert!(measure(&req, &backwards, 100 * s + 5_000_000).is_err());
        assert!(
            measure(&req, &reply, 100 * s + 3 * s).is_err(),
            "a 3 s round trip"
        );
    }

    #[test]
    fn the_host_answers_requests_only() {
        let req = Frame::json(REQUEST, &Request { seq: 4, t1: 7 });
        let reply: Reply = answer(&req, 8, 9).expect("answer").parse().expect("json");
        assert_eq!((reply.seq, reply.t1, reply.t2, reply.t3), (4, 7, 8, 9));
        assert!(answer(&Frame::json(REPORT, &()), 1, 2).is_err());
    }
}
