//! The key-value exchange (`hvsock-kvp`, vsock port 50005): two pools of string pairs, the
//! host's (set with `hvsock kvp set`, read in the guest) and the guest's (filled by the agent and
//! by guest programs, read on the host), as Hyper-V's KVP exchange has. The host (hvsockd)
//! serves it and keeps its pool in its registry, so it can be set while the guest is down; the
//! agent connects.
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"kvp"`), both sides send their whole
//! pool at once (Set for each pair, then Synced), then each change as it happens:
//!
//! | kind | name | direction | body |
//! | --- | --- | --- | --- |
//! | `0x70` | Set | either way | JSON [`Pair`] |
//! | `0x71` | Delete | either way | JSON `{"key": KEY}` |
//! | `0x72` | Synced | either way, once | `{}`: the pool so far is complete; what was not in it is gone |
//!
//! Keys are 1 to [`MAX_KEY`] bytes of `A-Z a-z 0-9 . _ - :`, not starting with `.` (so a key is
//! a safe file name); values at most [`MAX_VALUE`] bytes of UTF-8; a pool holds at most
//! [`MAX_PAIRS`] pairs. Anything else ends the connection with an Error.
//!
//! # In the guest
//!
//! The agent writes the host's pool as one file per key under `DIR/host/` (default
//! `/run/hvsock-agent/kvp`), and sends as the guest's pool what it knows (`hostname`, `os`,
//! `kernel`, `agent`) plus one pair per file that guest programs put in `DIR/guest/` (read every
//! 2 s). `hvsock-agent kvp list|get|set|delete` reads and writes those directories.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{Frame, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "kvp";
/// Set.
pub const SET: u8 = 0x70;
/// Delete.
pub const DELETE: u8 = 0x71;
/// Synced.
pub const SYNCED: u8 = 0x72;
/// The longest key, in bytes.
pub const MAX_KEY: usize = 512;
/// The longest value, in bytes.
pub const MAX_VALUE: usize = 2048;
/// The most pairs in a pool.
pub const MAX_PAIRS: usize = 1024;

/// Set's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// Delete's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The key.
    pub key: String,
}

/// Why a key or value is refused.
pub fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a key: 1 to {MAX_KEY} bytes of letters, digits, '.', '_', '-', ':', not starting with '.'"
        ))
    }
}

/// Why a value is refused.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "a value of {} bytes is over the limit of {MAX_VALUE}",
            value.len()
        ));
    }
    Ok(())
}

/// One parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Set.
    Set(Pair),
    /// Delete.
    Delete(String),
    /// Synced.
    Synced,
}

/// Parses and checks one frame.
pub fn parse(frame: &Frame) -> Result<Msg, WireError> {
    match frame.kind {
        SET => {
            let pair: Pair = frame.parse()?;
            check_key(&pair.key).map_err(WireError::Invalid)?;
            check_value(&pair.value).map_err(WireError::Invalid)?;
            Ok(Msg::Set(pair))
        }
        DELETE => {
            let key: Key = frame.parse()?;
            check_key(&key.key).map_err(WireError::Invalid)?;
            Ok(Msg::Delete(key.key))
        }
        SYNCED => Ok(Msg::Synced),
        kind => Err(WireError::Unexpected {
            kind,
            state: "on the key-value service",
        }),
    }
}

/// The frame of a message.
pub fn frame(msg: &Msg) -> Frame {
    match msg {
        Msg::Set(pair) => Frame::json(SET, pair),
        Msg::Delete(key) => Frame::json(DELETE, &Key { key: key.clone() }),
        Msg::Synced => Frame::json(SYNCED, &serde_json::json!({})),
    }
}

/// The messages that send a whole pool.
pub fn snapshot(pool: &BTreeMap<String, String>) -> Vec<Msg> {
    pool.iter()
        .map(|(k, v)| {
            Msg::Set(Pair {
                key: k.clone(),
                value: v.clone(),
            })
        })
        .chain(std::iter::once(Msg::Synced))
        .collect()
}

/// The messages that turn pool `old` into `new`.
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<Msg> {
    let mut out: Vec<Msg> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| Msg::Delete(k.clone()))
        .collect();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(Msg::Set(Pair {
                key: k.clone(),
                value: v.clone(),
            }));
        }
    }
    out
}

/// A pool as the other side sent it: pairs as they come, and at Synced whatever the snapshot
/// did not name is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    /// The pairs.
    pub pairs: BTreeMap<String, String>,
    /// Keys seen since the connection began, until Synced.
    pending: Option<Vec<String>>,
    /// Whether the first snapshot is complete.
    pub synced: bool,
}

impl Mirror {
    /// A new connection: its snapshot replaces what was there once it is complete.
    pub fn on_connect(&mut self) {
        self.pending = Some(Vec::new());
        self.synced = false;
    }

    /// Applies one message.
    pub fn apply(&mut self, msg: Msg) -> Result<(), WireError> {
        match msg {
            Msg::Set(pair) => {
                if !self.pairs.contains_key(&pair.key) && self.pairs.len() >= MAX_PAIRS {
                    return Err(WireError::Invalid(format!(
                        "a pool of more than {MAX_PAIRS} pairs"
                    )));
                }
                if let Some(seen) = &mut self.pending {
                    seen.push(pair.key.clone());
                }
                self.pairs.insert(pair.key, pair.value);
            }
            Msg::Delete(key) => {
                self.pairs.remove(&key);
            }
            Msg::Synced => {
                let Some(seen) = self.pending.take() else {
                    return Err(WireError::Invalid("Synced twice".into()));
                };
                self.pairs.retain(|k, _| seen.contains(k));
                self.synced = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_are_safe_file_names_and_values_bounded() {
        for ok in ["a", "hostname", "net.eth0:ipv4", "A-b_c"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"k".repeat(MAX_KEY + 1),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_value(&"v".repeat(MAX_VALUE)).is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE + 1)).is_err());
        assert!(
            parse(&Frame::json(
                SET,
                &Pair {
                    key: "../x".into(),
                    value: String::new()
                }
            ))
            .is_err()
        );
    }

    #[test]
    fn a_mirror_follows_snapshots_and_changes() {
        let mut m = Mirror::default();
        m.on_connect();
        for msg in snapshot(&pool(&[("a", "1"), ("b", "2")])) {
            m.apply(msg).expect("valid");
        }
        assert!(m.synced);
        assert_eq!(m.pairs, pool(&[("a", "1"), ("b", "2")]));
        for msg in diff(&m.pairs.clone(), &pool(&[("b", "3"), ("c", "4")])) {
            m.apply(msg).expect("valid");
        }
        assert_eq!(m.pairs, pool(&[("b", "3"), ("c", "4")]));
        // A reconnection's snapshot drops what it does not name.
        m.on_connect();
        for msg in snapshot(&pool(&[("c", "4")])) {
            m.apply(msg).expect("valid");
        }
        assert_eq!(m.pairs, pool(&[("c", "4")]));
        assert!(m.apply(Msg::Synced).is_err(), "Synced twice");
    }
}
