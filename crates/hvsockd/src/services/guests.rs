//! What hvsockd knows of each partition's guest agent, from the heartbeat and time services:
//! the guest state (`no_contact`, `ok`, `lost`, see [`hvsock_agent::heartbeat::Tracker`]), the
//! last heartbeat, the agent's facts, and the last time offset the agent reported.
//!
//! In memory only: after a restart every guest is `no_contact` until its agent reconnects
//! (within a few seconds: the agent retries with a short backoff). One connection per
//! partition feeds it (the newer replaces the older), so only the connection whose `seq` is
//! the current one may mark the guest disconnected.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use hvsock::VmId;
use hvsock_agent::heartbeat::{Facts, GuestState, Tracker};
use hvsock_agent::time::Report;
use hvsock_agent::wire::{Frame, WireError};

use crate::world::World;

/// The last offset the agent reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeReport {
    /// How far the guest was behind the host, in nanoseconds (negative: ahead).
    pub offset_ns: i64,
    /// The round trip, in nanoseconds.
    pub delay_ns: i64,
    /// Whether the agent stepped the guest's clock.
    pub stepped: bool,
    /// When it came.
    pub at: SystemTime,
}

/// One guest as known now.
#[derive(Debug, Clone, PartialEq)]
pub struct Guest {
    /// Its state.
    pub state: GuestState,
    /// When the last beat (or Facts) came.
    pub last_heartbeat: Option<SystemTime>,
    /// How long ago, in seconds (from the monotonic clock).
    pub heartbeat_age_secs: Option<f64>,
    /// What the agent said about itself.
    pub facts: Option<Facts>,
    /// The last time report.
    pub time: Option<TimeReport>,
}

impl Guest {
    /// A guest never heard from.
    pub fn no_contact() -> Guest {
        Guest {
            state: GuestState::NoContact,
            last_heartbeat: None,
            heartbeat_age_secs: None,
            facts: None,
            time: None,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    tracker: Tracker,
    /// The connection that feeds the tracker now.
    heartbeat_seq: Option<u64>,
    last_beat: Option<Instant>,
    time: Option<TimeReport>,
}

/// Every partition's guest.
#[derive(Debug, Default)]
pub struct Guests {
    entries: Mutex<HashMap<VmId, Entry>>,
}

impl Guests {
    fn lock(&self) -> MutexGuard<'_, HashMap<VmId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Heartbeat connection `seq` of `vm` is up (it replaces any older one).
    pub fn connect(&self, vm: VmId, seq: u64) {
        let mut entries = self.lock();
        let entry = entries.entry(vm).or_default();
        entry.tracker.on_connect();
        entry.heartbeat_seq = Some(seq);
    }

    /// Heartbeat connection `seq` of `vm` ended; nothing changes if a newer one took over.
    pub fn disconnect(&self, vm: VmId, seq: u64) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&vm) {
            if entry.heartbeat_seq == Some(seq) {
                entry.tracker.on_disconnect();
                entry.heartbeat_seq = None;
            }
        }
    }

    /// A heartbeat frame from connection `seq` of `vm`; an error ends that connection.
    pub fn heartbeat(&self, vm: VmId, seq: u64, frame: &Frame) -> Result<(), WireError> {
        let now = Instant::now();
        let mut entries = self.lock();
        let entry = entries.entry(vm).or_default();
        if entry.heartbeat_seq != Some(seq) {
            return Err(WireError::Invalid(
                "a newer heartbeat connection of this partition took over".into(),
            ));
        }
        entry.tracker.on_frame(frame, now)?;
        entry.last_beat = Some(now);
        Ok(())
    }

    /// A time report from `vm`'s agent.
    pub fn time_report(&self, vm: VmId, report: &Report) {
        self.lock().entry(vm).or_default().time = Some(TimeReport {
            offset_ns: report.offset_ns,
            delay_ns: report.delay_ns,
            stepped: report.stepped,
            at: SystemTime::now(),
        });
    }

    /// `vm`'s guest now.
    pub fn get(&self, vm: VmId) -> Guest {
        let now = Instant::now();
        match self.lock().get(&vm) {
            None => Guest::no_contact(),
            Some(e) => Guest {
                state: e.tracker.state(now),
                last_heartbeat: e.tracker.last_heartbeat(),
                heartbeat_age_secs: e.last_beat.map(|at| now.duration_since(at).as_secs_f64()),
                facts: e.tracker.facts().cloned(),
                time: e.time,
            },
        }
    }

    /// The guests' lines of `/metrics`, for every partition but the root of `world`:
    ///
    /// - `hvsock_guest_state{partition,state}`: 1 for the guest's state, 0 for the others;
    /// - `hvsock_guest_heartbeat_age_seconds{partition}`: since the last heartbeat (guests
    ///   heard from);
    /// - `hvsock_guest_time_offset_seconds{partition}`: the last offset the agent reported
    ///   (how far the guest was behind the host).
    pub fn render(&self, world: &World) -> String {
        use std::fmt::Write as _;
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let mut guests: Vec<(String, Guest)> = world
            .partitions()
            .filter(|p| p.parent.is_some())
            .map(|p| (esc(&world.partition_label(p.id)), self.get(p.id)))
            .collect();
        guests.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hvsock_guest_state The guest agent's state per partition (heartbeat): no_contact, ok or lost.\n# TYPE hvsock_guest_state gauge"
        );
        for (name, g) in &guests {
            for state in [GuestState::NoContact, GuestState::Ok, GuestState::Lost] {
                let _ = writeln!(
                    out,
                    "hvsock_guest_state{{partition=\"{name}\",state=\"{}\"}} {}",
                    state.as_str(),
                    u8::from(g.state == state)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP hvsock_guest_heartbeat_age_seconds Seconds since the guest agent's last heartbeat.\n# TYPE hvsock_guest_heartbeat_age_seconds gauge"
        );
        for (name, g) in &guests {
            if let Some(age) = g.heartbeat_age_secs {
                let _ = writeln!(
                    out,
                    "hvsock_guest_heartbeat_age_seconds{{partition=\"{name}\"}} {age:.3}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP hvsock_guest_time_offset_seconds The last clock offset the guest agent reported: how far the guest was behind the host.\n# TYPE hvsock_guest_time_offset_seconds gauge"
        );
        for (name, g) in &guests {
            if let Some(t) = g.time {
                let _ = writeln!(
                    out,
                    "hvsock_guest_time_offset_seconds{{partition=\"{name}\"}} {:.9}",
                    t.offset_ns as f64 / 1e9
                );
            }
        }
        out
    }

    /// Forgets a removed partition's guest.
    pub fn forget(&self, vm: VmId) {
        self.lock().remove(&vm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvsock_agent::heartbeat::{BEAT, Beat, FACTS};

    fn facts() -> Frame {
        Frame::json(
            FACTS,
            &Facts {
                agent: "0.1.0".into(),
                os: "Debian".into(),
                kernel: "6.1".into(),
                hostname: "g".into(),
            },
        )
    }

    #[test]
    fn a_replaced_connection_neither_feeds_nor_disconnects_the_guest() {
        let g = Guests::default();
        let vm = VmId(hvsock::Guid::new_random());
        assert_eq!(g.get(vm).state, GuestState::NoContact);
        g.connect(vm, 1);
        g.heartbeat(vm, 1, &facts()).expect("facts");
        assert_eq!(g.get(vm).state, GuestState::Ok);
        g.connect(vm, 2);
        assert!(
            g.heartbeat(vm, 1, &Frame::json(BEAT, &Beat { seq: 1 }))
                .is_err()
        );
        g.disconnect(vm, 1);
        assert_eq!(
            g.get(vm).state,
            GuestState::Ok,
            "the older's end does not count"
        );
        g.heartbeat(vm, 2, &Frame::json(BEAT, &Beat { seq: 1 }))
            .expect("beat");
        g.disconnect(vm, 2);
        let guest = g.get(vm);
        assert_eq!(guest.state, GuestState::Lost);
        assert_eq!(guest.facts.expect("facts").hostname, "g");
        assert!(guest.heartbeat_age_secs.expect("age") < 5.0);
        g.forget(vm);
        assert_eq!(g.get(vm).state, GuestState::NoContact);
    }
}
