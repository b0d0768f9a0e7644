//! The service manager's file-descriptor store (`sd_notify(3)`, `FDSTORE=1`): each durable
//! socket is sent to `NOTIFY_SOCKET` as one datagram
//!
//! ```text
//!  FDSTORE=1\nFDNAME=<name>        with the descriptor attached (SCM_RIGHTS)
//!  FDSTOREREMOVE=1\nFDNAME=<name>  when it closes or its state (so its name) changes
//! ```
//!
//! as `sd_pid_notify_with_fds()` sends them. The manager keeps a duplicate of each until it is
//! removed, its peer hangs up (`POLLHUP`), or the service stops for good, and hands them all
//! back at the next start with `LISTEN_FDS`/`LISTEN_FDNAMES`. It keeps a descriptor once: a
//! socket whose name changes is removed and stored again, never stored twice.
//!
//! hvsockd uses the store when `FDSTORE` is set in its environment to the store's size (systemd
//! 254 and later set it from `FileDescriptorStoreMax=`; hvsockd's unit sets it for older ones)
//! and `NOTIFY_SOCKET` is set; it never stores more than that many, so that the manager never
//! has to refuse one.
//!
//! # Never waiting for the manager
//!
//! A datagram to a Unix socket blocks while the receiver's queue is full, and that queue is
//! short (`net.unix.max_dgram_qlen`, 10 by default, is fixed when the manager creates its
//! socket). hvsockd serves everything on one thread, so a blocking send would stop every
//! endpoint until the manager reads. Each message is therefore sent with `MSG_DONTWAIT`; one
//! that would block waits, in order, in a bounded queue that [`FdStore::retry`] sends on
//! (hvsockd calls it every few milliseconds, and before it stops); and a warning says so, at
//! most once every [`WARN_EVERY`] with the count of messages that waited meanwhile. Should the
//! queue fill (the manager stopped reading), further messages are dropped, counted in the same
//! warning: the sockets they were about are then not carried across a restart, and nothing
//! else suffers.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::Socket;

/// At most one warning about a manager that does not read, per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection to the service manager's store.
pub struct FdStore {
    sock: OwnedFd,
    addr: SocketAddrUnix,
    target: OsString,
    /// How many descriptors the store takes (`FDSTORE`).
    pub max: usize,
    waiting: Mutex<Waiting>,
}

impl std::fmt::Debug for FdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdStore")
            .field("target", &self.target)
            .field("max", &self.max)
            .field("waiting", &self.lock().queue.len())
            .finish()
    }
}

/// One message for the manager, with the socket it is about if it carries one.
struct Message {
    text: String,
    fd: Option<Socket>,
}

/// The messages the manager was not ready for, in order, and what the next warning reports.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<Message>,
    /// Messages that had to wait since the last warning.
    delayed: u64,
    /// Messages dropped (the queue full) since the last warning.
    dropped: u64,
    last_warning: Option<Instant>,
}

impl FdStore {
    /// From `NOTIFY_SOCKET` and `FDSTORE`; `None` without a store (either unset, or
    /// `FDSTORE=0`). An unusable value is an error that says which.
    pub fn from_env() -> io::Result<Option<FdStore>> {
        let Some(max) = std::env::var_os("FDSTORE") else {
            return Ok(None);
        };
        let max: usize = max
            .to_str()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("FDSTORE={max:?} is not a number of descriptors"),
                )
            })?;
        let target = std::env::var_os("NOTIFY_SOCKET").filter(|t| !t.is_empty());
        match (max, target) {
            (0, _) => Ok(None),
            (_, None) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "FDSTORE is set but NOTIFY_SOCKET is not: no service manager to keep the sockets (run hvsockd with Type=notify)",
            )),
            (max, Some(target)) => FdStore::new(target, max).map(Some),
        }
    }

    /// To `target` (a path, or `@name` for an abstract socket), keeping at most `max`.
    pub fn new(target: OsString, max: usize) -> io::Result<FdStore> {
        let bytes = target.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name),
            None => SocketAddrUnix::new(std::path::Path::new(&target)),
        }
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={target:?}: {e}"),
            )
        })?;
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(FdStore {
            sock,
            addr,
            target,
            max,
            waiting: Mutex::default(),
        })
    }

    /// The most messages that wait for the manager: every stored descriptor's removal and
    /// storing again, and some.
    fn queue_limit(&self) -> usize {
        self.max.saturating_mul(2).saturating_add(64)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One datagram, never waiting: `WouldBlock` when the manager's queue is full.
    fn send_now(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds = fd.map(|fd| [fd]);
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if let Some(fds) = &fds {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let iov = [IoSlice::new(message.as_bytes())];
        let sent = rustix::net::sendmsg_addr(
            &self.sock,
            &self.addr,
            &iov,
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("notifying {:?}: {e}", self.target),
            )
        })?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("notifying {:?}: the message was truncated", self.target),
            ));
        }
        Ok(())
    }

    /// Sends `message` now, or queues it behind those waiting already.
    fn send(&self, message: Message) -> io::Result<()> {
        let mut waiting = self.lock();
        if waiting.queue.is_empty() {
            match self.send_now(&message.text, message.fd.as_ref().map(|s| s.as_fd())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
        if waiting.queue.len() >= self.queue_limit() {
            waiting.dropped += 1;
        } else {
            waiting.queue.push_back(message);
            waiting.delayed += 1;
        }
        self.warn(&mut waiting);
        Ok(())
    }

    /// The warning about a manager that does not keep up, at most once per [`WARN_EVERY`].
    fn warn(&self, waiting: &mut Waiting) {
        let now = Instant::now();
        if waiting
            .last_warning
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        waiting.last_warning = Some(now);
        tracing::warn!(
            waiting = waiting.queue.len(),
            delayed = waiting.delayed,
            dropped = waiting.dropped,
            "the service manager ({:?}) does not read its notifications as fast as hvsockd sends them: they wait (dropped: when {} wait already; a dropped one's socket is not carried across a restart)",
            self.target,
            self.queue_limit(),
        );
        waiting.delayed = 0;
        waiting.dropped = 0;
    }

    /// Sends what waits, in order, as far as the manager takes it now; returns how many still
    /// wait.
    pub fn retry(&self) -> usize {
        let mut waiting = self.lock();
        while let Some(message) = waiting.queue.front() {
            match self.send_now(&message.text, message.fd.as_ref().map(|s| s.as_fd())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => tracing::warn!("{e}"),
                Ok(()) => {}
            }
            waiting.queue.pop_front();
        }
        waiting.queue.len()
    }

    /// Retries what waits until none does or `within` has passed (at stop, so that what
    /// hvsockd last stored is what the next start finds); returns how many still wait.
    pub fn flush(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let left = self.retry();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stores `fd` under `name`.
    pub fn store(&self, fd: Socket, name: &str) -> io::Result<()> {
        self.send(Message {
            text: format!("FDSTORE=1\nFDNAME={name}"),
            fd: Some(fd),
        })
    }

    /// Removes every descriptor stored under `name`.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.send(Message {
            text: format!("FDSTOREREMOVE=1\nFDNAME={name}"),
            fd: None,
        })
    }
}
