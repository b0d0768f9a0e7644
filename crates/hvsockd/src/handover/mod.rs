//! Continuity: every socket hvsockd holds outlives hvsockd itself, so that a restarted or
//! upgraded hvsockd resumes where the old one stopped and no client sees a gap.
//!
//! # What is kept
//!
//! | socket | descriptor | how its state comes back |
//! | --- | --- | --- |
//! | `host.sock`, `admin.sock` | listening | none needed (a socket-activated one stays the socket unit's) |
//! | a partition's endpoint | listening `SOCK_SEQPACKET` | the partition id, in its name |
//! | a VM's guest port `PATH_<port>` | listening `SOCK_STREAM` | the VM and port, in its name |
//! | a listener session | connected `SOCK_SEQPACKET` | partition, bound address, backlog, unacknowledged `Incoming`s, in its name |
//! | a connector session whose connect waits | connected `SOCK_SEQPACKET` | partition, and per waiting connect its request id, target and deadline, in its name |
//! | a fresh session, an idle connector | connected `SOCK_SEQPACKET` | nothing to carry: a request it sent and hvsockd did not read yet waits in the socket |
//!
//! The state travels **with each descriptor, in its name** ([`names`]): `hv1.s<n>.<record>`, a
//! checksummed record of at most 255 printable characters, which is what systemd's store keeps
//! beside a descriptor (`FDNAME=`). A name and its descriptor are stored and removed together,
//! so no state file can disagree with the sockets after a crash at any instant. A record that
//! does not decode (damaged, another program's, another version's) is logged, and its socket
//! is closed; it never stops the start.
//!
//! # How it comes back
//!
//! The new hvsockd takes the sockets at start ([`intake`]) and, before it serves anything:
//! adopts the endpoints and guest ports instead of binding new ones (a bind-mounted endpoint
//! keeps its inode), and resumes each session in its state
//! ([`crate::session::resume`]): a listener is bound again in the world *without* a `Bound`
//! frame (the client's descriptor and its view never change), and each waiting connect is
//! asked again with what is left of its timeout, so that its connector gets the answer it was
//! waiting for. A guest port stays open throughout, and its VM's connections wait in its
//! backlog.
//!
//! The wire is unchanged (version 1): the library needs no new frame to live through a
//! restart or an upgrade, and every existing library keeps working. Frame kinds `0x07` and
//! `0x86` stay reserved for a later notice, should a restart ever need the client's help.
//!
//! # Two ways across
//!
//! - **The service manager's store** ([`store`], systemd's `FileDescriptorStoreMax=`): every
//!   durable socket is stored as it opens or changes state and removed as it closes, so a
//!   crash, `systemctl restart` or an upgrade under systemd loses nothing that was stored.
//!   What is not stored (a fresh session, a connect answered at once) is closed by a crash, and
//!   the library retries it. The shipped unit enables it (`FileDescriptorStoreMax=4096`, and
//!   `FDSTORE=4096` for systemd before 254); systemd keeps the store across a crash with
//!   `Restart=` and across `systemctl restart`, and empties it on `systemctl stop`
//!   (`tests/nested_vm_systemd.rs` checks all three under real systemd 252, `tests/fdstore.rs`
//!   and `benches/continuity.rs --mode store` with a manager they play). hvsockd never waits
//!   for the manager ([`store`]).
//! - **`SIGUSR2`**, without a service manager ([`reexec`]): hvsockd checks the binary at its
//!   own path, then executes it in place (same pid) with every socket it holds, fresh sessions
//!   included, listed in a memfd. If the binary is missing, not executable, or does not speak
//!   this hand-over format, hvsockd says why and keeps serving.
//!
//! [`Holder`] is the table of every socket held, with its current name; the parts that own
//! sockets ([`crate::endpoint`], [`crate::attach::sockets`], [`crate::session`]) put theirs in
//! it and keep a [`Hold`] whose drop takes it out.

pub mod intake;
pub mod names;
pub mod reexec;
pub mod store;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::listeners::Listener;

pub use names::{Kept, SessionRecord, SessionState, WaitingConnect};
pub use store::FdStore;

/// A socket held: anything with a descriptor, shared with its owner so that it stays open as
/// long as it is in the table.
pub type Socket = Arc<dyn AsFd + Send + Sync>;

#[derive(Debug)]
enum What {
    /// One of hvsockd's own.
    Kept(Kept),
    /// A socket-activated socket, by its name (`host`, `admin`): the socket unit's, never
    /// stored, handed over under the same name.
    Activated(&'static str),
}

struct Entry {
    socket: Socket,
    what: What,
    /// A listener session's listener, for its unacknowledged count at hand-over time.
    listener: Option<Arc<Listener>>,
    /// The name it is stored under, if stored.
    stored: Option<String>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    next_key: u64,
    frozen: bool,
    store_full_warned: bool,
}

/// Every socket hvsockd holds, and the service manager's store if it keeps one.
#[derive(Default)]
pub struct Holder {
    table: Mutex<Table>,
    store: OnceLock<FdStore>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("held", &self.lock().entries.len())
            .field("store", &self.store.get())
            .finish()
    }
}

/// One socket in the [`Holder`]; dropping it takes the socket out (and out of the store).
#[derive(Debug)]
pub struct Hold {
    holder: Arc<Holder>,
    key: u64,
}

impl Holder {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the durable sockets in `store` from now on (those held already are stored now).
    pub fn use_store(&self, store: FdStore) {
        if self.store.set(store).is_err() {
            return;
        }
        let mut table = self.lock();
        let keys: Vec<u64> = table.entries.keys().copied().collect();
        for key in keys {
            self.restore(&mut table, key);
        }
    }

    /// Whether a service manager keeps the sockets.
    pub fn has_store(&self) -> bool {
        self.store.get().is_some()
    }

    /// A session number no name in use has (`hv1.s<n>.…`).
    pub fn session_number(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Numbers new sessions above `n` (a resumed session's number).
    fn seen_session(&self, n: u64) {
        self.next_session
            .fetch_max(n.saturating_add(1), Ordering::Relaxed);
    }

    /// Holds `socket`, which is `kept`.
    pub fn hold(self: &Arc<Self>, socket: Socket, kept: Kept) -> Hold {
        self.insert(socket, What::Kept(kept), None)
    }

    /// Holds `socket`, which came back under `name` (from the store or a hand-over): if a
    /// store keeps it, it is there under that name already.
    pub fn adopt(self: &Arc<Self>, socket: Socket, kept: Kept, name: String) -> Hold {
        if let Kept::Session(n, _) = &kept {
            self.seen_session(*n);
        }
        let stored = (self.has_store() && kept.durable()).then_some(name);
        self.insert(socket, What::Kept(kept), stored)
    }

    /// Holds a socket-activated socket named `name`.
    pub fn hold_activated(self: &Arc<Self>, socket: Socket, name: &'static str) -> Hold {
        self.insert(socket, What::Activated(name), None)
    }

    fn insert(self: &Arc<Self>, socket: Socket, what: What, stored: Option<String>) -> Hold {
        let mut table = self.lock();
        let key = table.next_key;
        table.next_key += 1;
        table.entries.insert(
            key,
            Entry {
                socket,
                what,
                listener: None,
                stored,
            },
        );
        self.restore(&mut table, key);
        Hold {
            holder: self.clone(),
            key,
        }
    }

    /// A name that came back and is not used (its partition is gone, it did not decode):
    /// out of the store too.
    pub fn discard(&self, name: &str) {
        if let Some(store) = self.store.get() {
            if !self.lock().frozen {
                if let Err(e) = store.remove(name) {
                    tracing::warn!("{e}");
                }
            }
        }
    }

    /// Stops changing the store: hvsockd is stopping, and what is stored must stay for the
    /// next start. What the manager was not ready for yet is sent first, waiting at most
    /// `within`.
    pub fn freeze(&self, within: std::time::Duration) {
        self.lock().frozen = true;
        if let Some(store) = self.store.get() {
            let left = store.flush(within);
            if left > 0 {
                tracing::warn!(
                    "{left} notifications to the service manager were never sent: the sockets they were about may not survive this restart"
                );
            }
        }
    }

    /// Sends the store's messages that the manager was not ready for (see [`store`]); how
    /// many still wait.
    pub fn retry_store(&self) -> usize {
        self.store.get().map_or(0, FdStore::retry)
    }

    /// Brings the store in line with the entry `key`'s name.
    fn restore(&self, table: &mut Table, key: u64) {
        let Some(store) = self.store.get() else {
            return;
        };
        if table.frozen {
            return;
        }
        let stored_count = table
            .entries
            .values()
            .filter(|e| e.stored.is_some())
            .count();
        let full = stored_count >= store.max;
        let Some(entry) = table.entries.get_mut(&key) else {
            return;
        };
        let want = match &entry.what {
            What::Kept(kept) if kept.durable() => {
                Some(kept.name()).filter(|n| n.len() <= names::MAX_NAME)
            }
            _ => None,
        };
        if want == entry.stored {
            return;
        }
        if let Some(old) = entry.stored.take() {
            if let Err(e) = store.remove(&old) {
                tracing::warn!("{e}");
            }
        }
        let Some(name) = want else { return };
        if full {
            if !table.store_full_warned {
                table.store_full_warned = true;
                tracing::warn!(
                    "the service manager's descriptor store is full ({} descriptors, FileDescriptorStoreMax=): sockets opened from now on do not survive a crash or restart; raise FileDescriptorStoreMax= and FDSTORE= in the unit",
                    store.max
                );
            }
            return;
        }
        match store.store(entry.socket.clone(), &name) {
            Ok(()) => entry.stored = Some(name),
            Err(e) => tracing::warn!("storing a socket with the service manager: {e}"),
        }
    }

    /// Every socket held, with the name it is handed over under (for [`reexec`]).
    pub fn snapshot(&self) -> Vec<(Socket, String)> {
        let table = self.lock();
        table
            .entries
            .values()
            .map(|e| {
                let name = match &e.what {
                    What::Kept(Kept::Session(n, record)) => {
                        let mut record = record.clone();
                        if let (SessionState::Listener { outstanding, .. }, Some(l)) =
                            (&mut record.state, &e.listener)
                        {
                            *outstanding = l.pending().0;
                        }
                        Kept::Session(*n, record).name()
                    }
                    What::Kept(kept) => kept.name(),
                    What::Activated(name) => (*name).to_owned(),
                };
                (e.socket.clone(), name)
            })
            .collect()
    }

    /// How many sockets are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Hold {
    /// The socket is now `kept` (a session changed state); `listener` is a listener session's
    /// listener.
    pub fn set(&self, kept: Kept, listener: Option<Arc<Listener>>) {
        let mut table = self.holder.lock();
        if let Some(entry) = table.entries.get_mut(&self.key) {
            entry.what = What::Kept(kept);
            entry.listener = listener;
        }
        self.holder.restore(&mut table, self.key);
    }

    /// The descriptor number (for logs and tests).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.holder
            .lock()
            .entries
            .get(&self.key)
            .map(|e| e.socket.as_fd().as_raw_fd())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut table = self.holder.lock();
        let frozen = table.frozen;
        if let Some(entry) = table.entries.remove(&self.key) {
            if let (Some(name), Some(store), false) =
                (entry.stored, self.holder.store.get(), frozen)
            {
                if let Err(e) = store.remove(&name) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
}

/// Milliseconds of `CLOCK_MONOTONIC` now: the clock of connect deadlines that cross a
/// restart (one clock for every process of a boot).
pub fn monotonic_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

#[cfg(test)]
mod tests;
