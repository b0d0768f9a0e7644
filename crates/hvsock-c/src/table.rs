//! Which descriptors are `AF_HYPERV` sockets, and in what state.
//!
//! # Finding out fast that a descriptor is not ours
//!
//! Every `close`, `connect`, `setsockopt`... of the process passes through libhvsock when it is
//! linked or preloaded. [`Marks`] answers "is this one of ours?" with one atomic load and no
//! lock, so calls on other descriptors cost next to nothing and a `close` in a signal handler
//! never waits for a lock. Only marked descriptors go to the [`Table`] behind its mutex.
//!
//! # Staying right when descriptors change behind our back
//!
//! A program may close one of ours with a call libhvsock does not see (`close_range`,
//! `closefrom`, a raw system call, `dup2` over it, or plain `close` when libhvsock is only
//! `dlopen`ed, as from Python's ctypes). Each entry therefore remembers the identity (device,
//! inode) of the file it was made for, and [`Locked::lookup`] checks it with `fstat` before trusting the
//! entry: a stale entry is dropped, *forgetting* any descriptor it owned (that number belongs to
//! someone else now), and the call goes on as for any other descriptor.
//!
//! # Threads, recursion and fork
//!
//! - The table lock is never held while the `hvsock` crate works (connect, bind, accept): those
//!   calls are made with the lock released, and their result is put in place under the lock
//!   only if the entry is still the same one (its `serial`).
//! - The crate itself calls `socket`, `connect`, `accept4`, `close`... on its own descriptors,
//!   which come back through libhvsock's exported names; [`guarded`] marks the thread as
//!   "inside the crate" so that those calls go straight to libc ([`inside`]).
//! - `fork`: the lock is taken before the fork and released in both processes after it
//!   ([`hold_for_fork`] and the two after it, called by `ops`' `pthread_atfork` handlers), so a
//!   child never inherits it locked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use hvsock::{HvListener, SockAddrHv, Transport};

use crate::real::sys::{self, Ident};

/// How many descriptors one chunk of [`Marks`] covers.
const CHUNK_BITS: usize = 4096;
/// Chunks: descriptors up to 64 Mi, far above any `RLIMIT_NOFILE` Linux allows (2^30 is the
/// kernel's hard cap, but `nr_open` defaults to 2^20).
const CHUNKS: usize = 16384;

type Chunk = [AtomicU64; CHUNK_BITS / 64];

/// A lock-free set of descriptor numbers: a bit each, in chunks allocated when first needed
/// and never freed.
pub(crate) struct Marks {
    chunks: [AtomicPtr<Chunk>; CHUNKS],
}

impl Marks {
    const fn new() -> Marks {
        Marks {
            chunks: [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS],
        }
    }

    fn place(fd: RawFd) -> Option<(usize, usize, u64)> {
        let fd = usize::try_from(fd).ok()?;
        let chunk = fd / CHUNK_BITS;
        (chunk < CHUNKS).then_some((chunk, (fd % CHUNK_BITS) / 64, 1u64 << (fd % 64)))
    }

    /// Whether `fd` is marked. No lock, no allocation: safe in a signal handler.
    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        let Some((chunk, word, bit)) = Marks::place(fd) else {
            return false;
        };
        let p = self.chunks[chunk].load(Ordering::Acquire);
        if p.is_null() {
            return false;
        }
        // SAFETY: a non-null chunk pointer comes from a leaked Box that is never freed.
        let chunk = unsafe { &*p };
        chunk[word].load(Ordering::Acquire) & bit != 0
    }

    fn set(&self, fd: RawFd, on: bool) {
        let Some((chunk, word, bit)) = Marks::place(fd) else {
            return;
        };
        let mut p = self.chunks[chunk].load(Ordering::Acquire);
        if p.is_null() {
            if !on {
                return;
            }
            let fresh: *mut Chunk = Box::into_raw(Box::new([const { AtomicU64::new(0) }; 64]));
            p = match self.chunks[chunk].compare_exchange(
                std::ptr::null_mut(),
                fresh,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh,
                Err(existing) => {
                    // SAFETY: `fresh` was never shared; another thread installed its own.
                    drop(unsafe { Box::from_raw(fresh) });
                    existing
                }
            };
        }
        // SAFETY: as in `contains`.
        let chunk = unsafe { &*p };
        if on {
            chunk[word].fetch_or(bit, Ordering::AcqRel);
        } else {
            chunk[word].fetch_and(!bit, Ordering::AcqRel);
        }
    }
}

/// The descriptors that are `AF_HYPERV` sockets (see the module docs).
pub(crate) static MARKS: Marks = Marks::new();

/// A `SOL_SOCKET` option set before the kernel socket existed, to set again on it.
#[derive(Debug, Clone)]
pub(crate) struct SockOpt {
    pub(crate) level: i32,
    pub(crate) name: i32,
    pub(crate) value: Vec<u8>,
}

/// An epoll registration of a descriptor that libhvsock will replace: made again on the
/// replacement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    pub(crate) epfd: RawFd,
    /// The epoll instance's identity, so a reused number is not mistaken for it.
    pub(crate) epoll: Option<Ident>,
    pub(crate) event: libc::epoll_event,
}

/// A connect under way on a descriptor.
#[derive(Debug)]
pub(crate) struct Connecting {
    /// The connect's identity, to check that its result still belongs to this entry.
    pub(crate) job: Arc<()>,
    /// Non-blocking: the stand-in, set aside while the descriptor is the pipe's read end.
    pub(crate) standin: Option<OwnedFd>,
    /// Non-blocking: the pipe's write end, closed to wake `poll`/`select` when done.
    pub(crate) wake: Option<OwnedFd>,
}

/// An `AF_HYPERV` socket before its kernel socket exists.
#[derive(Debug)]
pub(crate) struct Unconnected {
    pub(crate) transport: Transport,
    pub(crate) bound: Option<SockAddrHv>,
    /// A failed non-blocking connect's errno and message, for `SO_ERROR`; 0 if none.
    pub(crate) error: (i32, String),
    pub(crate) connecting: Option<Connecting>,
    pub(crate) opts: Vec<SockOpt>,
    pub(crate) watches: Vec<Watch>,
}

/// What an `AF_HYPERV` descriptor is now.
#[derive(Debug)]
pub(crate) enum State {
    /// From `socket()` until `connect`/`listen` succeed: the descriptor is a stand-in.
    Unconnected(Box<Unconnected>),
    /// Listening: the descriptor is the listener's own (it owns it).
    Listening(Arc<HvListener>),
    /// Connected (by `connect` or `accept`): a plain kernel socket, with its Hyper-V addresses.
    Connected { local: SockAddrHv, peer: SockAddrHv },
}

/// One `AF_HYPERV` descriptor.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Unique per entry, so that a result computed with the lock released lands only on the
    /// entry it was meant for.
    pub(crate) serial: u64,
    /// The identity of the file the descriptor referred to when the entry was last updated.
    pub(crate) ident: Ident,
    /// The connect timeout (`HVSOCKET_CONNECT_TIMEOUT`).
    pub(crate) timeout: Duration,
    pub(crate) state: State,
}

/// Every `AF_HYPERV` descriptor of the process.
#[derive(Debug, Default)]
pub(crate) struct Table {
    entries: HashMap<RawFd, Entry>,
    next_serial: u64,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

thread_local! {
    /// Set while this thread runs code of the hvsock crate.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
    /// The table lock held across a fork (see `atfork_*`).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Option<Table>>>> =
        const { RefCell::new(None) };
}

/// Whether this thread is inside the hvsock crate, whose own socket calls must go to libc.
pub(crate) fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(true)
}

/// Runs `f` (code of the hvsock crate) with this thread marked [`inside`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = INSIDE.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INSIDE.try_with(|c| c.replace(true)).unwrap_or(true));
    f()
}

/// The locked table.
pub(crate) struct Locked(MutexGuard<'static, Option<Table>>);

/// Takes the table lock (resolving libc's functions the first time).
pub(crate) fn lock() -> Locked {
    static SETUP: Once = Once::new();
    SETUP.call_once(crate::real::resolve_all);
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    guard.get_or_insert_with(Table::default);
    Locked(guard)
}

/// Before a fork: takes the lock and keeps it in this thread (see `ops`' fork handlers).
pub(crate) fn hold_for_fork() {
    let guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let _ = FORK_GUARD.try_with(|g| *g.borrow_mut() = Some(guard));
}

/// After a fork, in the parent: releases the lock [`hold_for_fork`] took.
pub(crate) fn release_after_fork() {
    let _ = FORK_GUARD.try_with(|g| g.borrow_mut().take());
}

/// After a fork, in the child: the lock [`hold_for_fork`] took, still held, to fix the table up
/// with before releasing it.
pub(crate) fn held_after_fork() -> Option<Locked> {
    FORK_GUARD
        .try_with(|g| g.borrow_mut().take())
        .ok()
        .flatten()
        .map(Locked)
}

impl Locked {
    fn table(&mut self) -> &mut Table {
        self.0.get_or_insert_with(Table::default)
    }

    /// Records a new `AF_HYPERV` descriptor; returns its serial.
    pub(crate) fn insert(&mut self, fd: RawFd, ident: Ident, state: State) -> u64 {
        let table = self.table();
        table.next_serial += 1;
        let serial = table.next_serial;
        let entry = Entry {
            serial,
            ident,
            timeout: hvsock::DEFAULT_CONNECT_TIMEOUT,
            state,
        };
        if let Some(old) = table.entries.insert(fd, entry) {
            forget_owned(old);
        }
        MARKS.set(fd, true);
        serial
    }

    /// The entry of `fd`, if it is one of ours and still the file it was made for.
    pub(crate) fn lookup(&mut self, fd: RawFd) -> Option<&mut Entry> {
        let current = sys::ident(fd);
        let table = self.table();
        let stale = match table.entries.get(&fd) {
            None => return None,
            Some(entry) => current != Some(entry.ident),
        };
        if stale {
            if let Some(old) = table.entries.remove(&fd) {
                forget_owned(old);
            }
            MARKS.set(fd, false);
            return None;
        }
        table.entries.get_mut(&fd)
    }

    /// Takes `fd`'s entry out (on `close`); a stale one comes out with its descriptors forgotten.
    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<Entry> {
        let current = sys::ident(fd);
        let table = self.table();
        let entry = table.entries.remove(&fd)?;
        MARKS.set(fd, false);
        if current != Some(entry.ident) {
            forget_owned(entry);
            return None;
        }
        Some(entry)
    }

    /// Every entry (for the fork handler).
    pub(crate) fn entries(&mut self) -> impl Iterator<Item = (&RawFd, &mut Entry)> {
        self.table().entries.iter_mut()
    }
}

/// Drops a stale entry without closing descriptors it owned (their numbers are someone
/// else's now): a listener is leaked whole, a pending connect's stand-in and pipe end too.
fn forget_owned(entry: Entry) {
    match entry.state {
        State::Listening(listener) => std::mem::forget(listener),
        State::Unconnected(mut unc) => {
            if let Some(c) = unc.connecting.take() {
                std::mem::forget(c);
            }
        }
        State::Connected { .. } => {}
    }
}
