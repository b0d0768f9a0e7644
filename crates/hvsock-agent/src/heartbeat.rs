//! The heartbeat service (`hvsock-heartbeat`, vsock port 50003): the agent tells the host it is
//! alive, and what it runs on. The host (hvsockd) serves it; the agent connects.
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"heartbeat"`), agent to host only:
//!
//! | kind | name | body |
//! | --- | --- | --- |
//! | `0x50` | Facts | JSON [`Facts`]: first, and again whenever they change |
//! | `0x51` | Beat | JSON [`Beat`]: every [`INTERVAL`] |
//!
//! The host's [`Tracker`] turns what it hears into a [`GuestState`]: `no_contact` until the
//! first Facts, `ok` while beats come, `lost` once the connection ends or no beat came for
//! [`LOST_AFTER`] (three missed beats and a margin). Beats must count up; Facts strings are
//! at most 256 bytes.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::wire::{Frame, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "heartbeat";
/// Facts (agent → host).
pub const FACTS: u8 = 0x50;
/// Beat (agent → host).
pub const BEAT: u8 = 0x51;
/// How often the agent beats.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long without a beat before the host calls the guest lost.
pub const LOST_AFTER: Duration = Duration::from_secs(7);
/// The longest Facts string.
pub const MAX_FACT: usize = 256;

/// What the agent runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The agent's version.
    pub agent: String,
    /// The guest OS (`PRETTY_NAME` of os-release).
    pub os: String,
    /// The kernel release.
    pub kernel: String,
    /// The hostname.
    pub hostname: String,
}

/// One beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// Counts up from 1 on each connection.
    pub seq: u64,
}

/// What the host knows of a guest's agent: the admin API's type, so that the state the
/// [`Tracker`] decides is the one `hvsock vm show` and `/metrics` name.
pub use hvsock_api::GuestState;

/// The host's view of one guest's heartbeat, fed by what arrives (sans I/O: the host's server
/// reads the frames and calls it).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    facts: Option<Facts>,
    connected: bool,
    last_beat: Option<(Instant, SystemTime)>,
    last_seq: u64,
}

impl Tracker {
    /// A new connection from the agent: beats count afresh.
    pub fn on_connect(&mut self) {
        self.connected = true;
        self.last_seq = 0;
    }

    /// The connection ended.
    pub fn on_disconnect(&mut self) {
        self.connected = false;
    }

    /// One frame from the agent (after the Welcome); an error ends the connection.
    pub fn on_frame(&mut self, frame: &Frame, now: Instant) -> Result<(), WireError> {
        match frame.kind {
            FACTS => {
                let facts: Facts = frame.parse()?;
                for s in [&facts.agent, &facts.os, &facts.kernel, &facts.hostname] {
                    if s.len() > MAX_FACT {
                        return Err(WireError::Invalid(format!(
                            "a fact of {} bytes is over the limit of {MAX_FACT}",
                            s.len()
                        )));
                    }
                }
                self.facts = Some(facts);
                self.last_beat = Some((now, SystemTime::now()));
                Ok(())
            }
            BEAT => {
                if self.facts.is_none() {
                    return Err(WireError::Invalid("a Beat before Facts".into()));
                }
                let beat: Beat = frame.parse()?;
                if beat.seq <= self.last_seq {
                    return Err(WireError::Invalid(format!(
                        "beat {} after beat {}: beats count up",
                        beat.seq, self.last_seq
                    )));
                }
                self.last_seq = beat.seq;
                self.last_beat = Some((now, SystemTime::now()));
                Ok(())
            }
            kind => Err(WireError::Unexpected {
                kind,
                state: "from the agent on the heartbeat service",
            }),
        }
    }

    /// The guest's state at `now`.
    pub fn state(&self, now: Instant) -> GuestState {
        match (&self.facts, self.last_beat) {
            (None, _) => GuestState::NoContact,
            (Some(_), Some((at, _))) if self.connected && now.duration_since(at) < LOST_AFTER => {
                GuestState::Ok
            }
            _ => GuestState::Lost,
        }
    }

    /// What the agent said about itself, if it did.
    pub fn facts(&self) -> Option<&Facts> {
        self.facts.as_ref()
    }

    /// When the last beat (or Facts) came, as wall time.
    pub fn last_heartbeat(&self) -> Option<SystemTime> {
        self.last_beat.map(|(_, wall)| wall)
    }
}

/// The facts of the system this runs on.
#[cfg(target_os = "linux")]
pub fn gather() -> Facts {
    let uname = rustix::system::uname();
    let clip = |s: String| s.chars().take(MAX_FACT / 4).collect::<String>();
    let os = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "Linux".into());
    Facts {
        agent: clip(crate::wire::SOFTWARE_VERSION.to_owned()),
        os: clip(os),
        kernel: clip(uname.release().to_string_lossy().into_owned()),
        hostname: clip(uname.nodename().to_string_lossy().into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn states_follow_facts_beats_and_the_connection() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        assert_eq!(t.state(t0), GuestState::NoContact);
        t.on_connect();
        t.on_frame(&facts(), t0).expect("facts");
        assert_eq!(t.state(t0), GuestState::Ok);
        t.on_frame(&Frame::json(BEAT, &Beat { seq: 1 }), t0 + INTERVAL)
            .expect("beat");
        assert_eq!(t.state(t0 + INTERVAL * 2), GuestState::Ok);
        assert_eq!(t.state(t0 + INTERVAL + LOST_AFTER), GuestState::Lost);
        t.on_disconnect();
        assert_eq!(t.state(t0 + INTERVAL), GuestState::Lost);
        t.on_connect();
        t.on_frame(&Frame::json(BEAT, &Beat { seq: 1 }), t0 + LOST_AFTER * 3)
            .expect("beats count afresh on a new connection");
        assert_eq!(t.state(t0 + LOST_AFTER * 3), GuestState::Ok);
    }

    #[test]
    fn out_of_order_or_oversized_messages_are_errors() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.on_connect();
        assert!(
            t.on_frame(&Frame::json(BEAT, &Beat { seq: 1 }), now)
                .is_err()
        );
        t.on_frame(&facts(), now).expect("facts");
        t.on_frame(&Frame::json(BEAT, &Beat { seq: 5 }), now)
            .expect("beat");
        assert!(
            t.on_frame(&Frame::json(BEAT, &Beat { seq: 5 }), now)
                .is_err()
        );
        let big = Facts {
            hostname: "h".repeat(MAX_FACT + 1),
            ..Facts::default()
        };
        assert!(t.on_frame(&Frame::json(FACTS, &big), now).is_err());
        assert!(
            t.on_frame(
                &Frame {
                    kind: 0x99,
                    body: vec![]
                },
                now
            )
            .is_err()
        );
    }
}
