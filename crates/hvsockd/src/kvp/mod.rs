//! The key-value exchange's pools as hvsockd holds them (see [`hvsock_agent::kvp`] for the
//! protocol):
//!
//! - **host pools**: what the host gives each partition's guest; the registry keeps them
//!   ([`crate::registry::Registry::kvp_set`]) and this module mirrors them, one
//!   `tokio::sync::watch` per partition, so that a guest's connection follows every change
//!   (the [control layer](crate::control) writes the registry, then this mirror, under one
//!   lock);
//! - **guest pools**: what each partition's agent sent, in memory only, with when it last sent
//!   something and whether it is connected now; what a disconnected agent sent last stays,
//!   shown as not connected. One connection per partition feeds it: a newer one replaces the
//!   older, whose [`GuestFeed::replaced`] fires.
//!
//! Both pools hold at most [`MAX_PAIRS`] pairs (the agent's own bound).
//! [`crate::services::kvp`] serves the agents' connections over them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use hvsock::VmId;
use hvsock_agent::kvp::{Mirror, Msg};
use hvsock_agent::wire::WireError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::registry::now;

pub use hvsock_agent::kvp::MAX_PAIRS;

/// One pool: key → value.
pub type Pool = BTreeMap<String, String>;

/// A guest pool as last known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestPool {
    /// The pairs (the last snapshot and changes; what was not yet confirmed by Synced
    /// included).
    pub pairs: Pool,
    /// Whether an agent is connected now.
    pub connected: bool,
    /// Whether the connected agent's first snapshot is complete.
    pub synced: bool,
    /// When the agent last sent something, seconds since the Unix epoch.
    pub updated_at: Option<i64>,
}

#[derive(Debug)]
struct Entry {
    host: watch::Sender<Pool>,
    guest: Mirror,
    updated_at: Option<i64>,
    /// The connection feeding the guest pool: its number and how to end it.
    feed: Option<(u64, CancellationToken)>,
}

impl Entry {
    fn new(host: Pool) -> Entry {
        Entry {
            host: watch::Sender::new(host),
            guest: Mirror::default(),
            updated_at: None,
            feed: None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<VmId, Entry>,
    next_feed: u64,
}

/// Every partition's pools.
#[derive(Debug, Default)]
pub struct Pools {
    inner: Mutex<Inner>,
}

impl Pools {
    /// The host pools as the registry holds them.
    pub fn new(host: HashMap<VmId, Pool>) -> Arc<Pools> {
        let entries = host
            .into_iter()
            .map(|(id, pool)| (id, Entry::new(pool)))
            .collect();
        Arc::new(Pools {
            inner: Mutex::new(Inner {
                entries,
                next_feed: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partition `id`'s host pool.
    pub fn host(&self, id: VmId) -> Pool {
        self.lock()
            .entries
            .get(&id)
            .map(|e| e.host.borrow().clone())
            .unwrap_or_default()
    }

    /// Follows partition `id`'s host pool: the receiver sees every change.
    pub fn watch_host(&self, id: VmId) -> watch::Receiver<Pool> {
        self.lock()
            .entries
            .entry(id)
            .or_insert_with(|| Entry::new(Pool::new()))
            .host
            .subscribe()
    }

    /// Sets `key` in partition `id`'s host pool (after the registry did).
    pub fn host_set(&self, id: VmId, key: &str, value: &str) {
        self.lock()
            .entries
            .entry(id)
            .or_insert_with(|| Entry::new(Pool::new()))
            .host
            .send_modify(|pool| {
                pool.insert(key.to_owned(), value.to_owned());
            });
    }

    /// Deletes `key` from partition `id`'s host pool (after the registry did).
    pub fn host_delete(&self, id: VmId, key: &str) {
        if let Some(e) = self.lock().entries.get(&id) {
            e.host.send_if_modified(|pool| pool.remove(key).is_some());
        }
    }

    /// Replaces every host pool (after an import), keeping guest pools of the partitions
    /// still there; partitions not in `present` are dropped.
    pub fn reload(&self, host: HashMap<VmId, Pool>, present: &[VmId]) {
        let mut inner = self.lock();
        inner.entries.retain(|id, e| {
            let keep = present.contains(id);
            if !keep {
                if let Some((_, token)) = e.feed.take() {
                    token.cancel();
                }
            }
            keep
        });
        for id in present {
            let pool = host.get(id).cloned().unwrap_or_default();
            let e = inner
                .entries
                .entry(*id)
                .or_insert_with(|| Entry::new(Pool::new()));
            e.host.send_if_modified(|old| {
                let changed = *old != pool;
                *old = pool;
                changed
            });
        }
    }

    /// Forgets partition `id` (removed): ends its guest connection.
    pub fn remove(&self, id: VmId) {
        if let Some(mut e) = self.lock().entries.remove(&id) {
            if let Some((_, token)) = e.feed.take() {
                token.cancel();
            }
            // Receivers see the sender gone.
        }
    }

    /// Partition `id`'s guest pool as last known.
    pub fn guest(&self, id: VmId) -> GuestPool {
        let inner = self.lock();
        let Some(e) = inner.entries.get(&id) else {
            return GuestPool::default();
        };
        GuestPool {
            pairs: e.guest.pairs.clone(),
            connected: e.feed.is_some(),
            synced: e.feed.is_some() && e.guest.synced,
            updated_at: e.updated_at,
        }
    }

    /// A new agent connection for partition `id`: it feeds the guest pool from now on, and
    /// the previous one (if any) is told to end.
    pub fn connect_guest(self: &Arc<Self>, id: VmId) -> GuestFeed {
        let mut inner = self.lock();
        inner.next_feed += 1;
        let n = inner.next_feed;
        let token = CancellationToken::new();
        let e = inner
            .entries
            .entry(id)
            .or_insert_with(|| Entry::new(Pool::new()));
        if let Some((_, old)) = e.feed.replace((n, token.clone())) {
            old.cancel();
        }
        e.guest.on_connect();
        e.updated_at = Some(now());
        GuestFeed {
            pools: self.clone(),
            id,
            n,
            token,
        }
    }
}

/// One agent connection's hold on its partition's guest pool; dropping it marks the pool
/// not connected (unless a newer connection took over).
#[derive(Debug)]
pub struct GuestFeed {
    pools: Arc<Pools>,
    id: VmId,
    n: u64,
    token: CancellationToken,
}

impl GuestFeed {
    /// Applies one message from the agent. An error (a pool over the bound, Synced twice)
    /// should end the connection.
    pub fn apply(&self, msg: Msg) -> Result<(), WireError> {
        let mut inner = self.pools.lock();
        let Some(e) = inner.entries.get_mut(&self.id) else {
            return Err(WireError::Invalid("the partition was removed".into()));
        };
        if e.feed.as_ref().map(|(n, _)| *n) != Some(self.n) {
            return Err(WireError::Invalid(
                "a newer connection of this partition took over".into(),
            ));
        }
        e.updated_at = Some(now());
        e.guest.apply(msg)
    }

    /// Fires when a newer connection replaces this one or the partition goes.
    pub fn replaced(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Drop for GuestFeed {
    fn drop(&mut self) {
        let mut inner = self.pools.lock();
        if let Some(e) = inner.entries.get_mut(&self.id) {
            if e.feed.as_ref().map(|(n, _)| *n) == Some(self.n) {
                e.feed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hvsock::Guid;
    use hvsock_agent::kvp::Pair;

    use super::*;

    fn set(k: &str, v: &str) -> Msg {
        Msg::Set(Pair {
            key: k.into(),
            value: v.into(),
        })
    }

    #[test]
    fn a_newer_guest_connection_replaces_the_older_and_the_pool_outlives_both() {
        let pools = Pools::new(HashMap::new());
        let id = VmId(Guid::new_random());
        let first = pools.connect_guest(id);
        first.apply(set("a", "1")).expect("set");
        first.apply(Msg::Synced).expect("synced");
        let g = pools.guest(id);
        assert!(g.connected && g.synced && g.updated_at.is_some());
        let second = pools.connect_guest(id);
        assert!(first.token.is_cancelled(), "the older is told to end");
        assert!(first.apply(set("b", "2")).is_err(), "and may not write");
        drop(first);
        assert!(pools.guest(id).connected, "the newer still holds it");
        second.apply(set("c", "3")).expect("set");
        second.apply(Msg::Synced).expect("synced");
        assert_eq!(pools.guest(id).pairs.keys().collect::<Vec<_>>(), ["c"]);
        drop(second);
        let g = pools.guest(id);
        assert!(!g.connected && !g.synced);
        assert_eq!(g.pairs.len(), 1, "the last known pool stays");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn host_changes_reach_watchers_and_removal_ends_the_feed() {
        let id = VmId(Guid::new_random());
        let pools = Pools::new(HashMap::from([(
            id,
            Pool::from([("k".into(), "v".into())]),
        )]));
        let mut rx = pools.watch_host(id);
        assert_eq!(rx.borrow_and_update()["k"], "v");
        pools.host_set(id, "k2", "v2");
        rx.changed().await.expect("changed");
        assert_eq!(rx.borrow_and_update().len(), 2);
        pools.host_delete(id, "missing");
        assert!(!rx.has_changed().expect("open"), "no change, no wake-up");
        pools.host_delete(id, "k");
        rx.changed().await.expect("changed");
        let feed = pools.connect_guest(id);
        pools.remove(id);
        feed.replaced().await;
        assert!(rx.changed().await.is_err(), "the sender is gone");
        assert!(pools.host(id).is_empty());
    }
}
