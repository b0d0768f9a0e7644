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

use std::ffi::OsString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

/// A connection to the service manager's store.
#[derive(Debug)]
pub struct FdStore {
    sock: OwnedFd,
    addr: SocketAddrUnix,
    target: OsString,
    /// How many descriptors the store takes (`FDSTORE`).
    pub max: usize,
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
        })
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
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
            SendFlags::NOSIGNAL,
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

    /// Stores `fd` under `name`.
    pub fn store(&self, fd: impl AsFd, name: &str) -> io::Result<()> {
        self.send(&format!("FDSTORE=1\nFDNAME={name}"), Some(fd.as_fd()))
    }

    /// Removes every descriptor stored under `name`.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), None)
    }
}
