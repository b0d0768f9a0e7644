//! Endpoint sockets: `host.sock` for the root and `partitions/<vmid>.sock` for each sandbox
//! partition. A client's partition is the endpoint it came through.
//!
//! Each endpoint is an `AF_UNIX` `SOCK_SEQPACKET` listening socket with an accept task; each
//! accepted client gets a [`session`](crate::session) task. Removing a partition cancels its
//! endpoint's token, which ends the accept task and every session of that partition, and
//! unlinks the socket file. A socket that came from a service manager
//! ([`SocketFile::Inherited`], socket activation) is served the same way, but its file is
//! the service manager's: hvsockd never removes it.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvsock::VmId;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::server::Ctx;

/// The `listen()` backlog of endpoint sockets.
const LISTEN_BACKLOG: i32 = 1024;

/// Who owns an endpoint's socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFile {
    /// hvsockd bound it and removes it when the endpoint closes.
    Owned,
    /// A service manager bound it (socket activation) and keeps it across restarts of
    /// hvsockd: never removed.
    Inherited,
}

#[derive(Debug)]
struct Open {
    path: PathBuf,
    file: SocketFile,
    /// Shared with the accept loop, so that [`rekey`] can serve it under another id.
    listener: Arc<AsyncFd<OwnedFd>>,
    cancel: CancellationToken,
    sessions: Arc<AtomicUsize>,
}

/// The open endpoints, by partition.
#[derive(Debug, Default)]
pub struct Endpoints {
    open: Mutex<HashMap<VmId, Open>>,
}

impl Endpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live sessions of a partition.
    pub fn sessions(&self, partition: VmId) -> usize {
        self.lock()
            .get(&partition)
            .map_or(0, |o| o.sessions.load(Ordering::Relaxed))
    }

    /// The endpoint path of a partition, if open.
    pub fn path(&self, partition: VmId) -> Option<PathBuf> {
        self.lock().get(&partition).map(|o| o.path.clone())
    }

    /// The partitions whose endpoints are open.
    pub fn open_partitions(&self) -> Vec<VmId> {
        self.lock().keys().copied().collect()
    }
}

/// Registers an owned socket with the tokio reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` holds one open descriptor for its whole life and `as_raw_fd`
    // always returns that descriptor; the `AsyncFd` owns it from here on.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// Creates the endpoint socket of `partition` at `path` (replacing a stale file) with `mode`,
/// and starts accepting on it.
pub fn open(ctx: &Arc<Ctx>, partition: VmId, path: &Path, mode: u32) -> io::Result<()> {
    let listener = listen(path, mode, None)?;
    serve(ctx, partition, path, listener, SocketFile::Owned)
}

/// Serves `listener`, a listening `SOCK_SEQPACKET` socket at `path`, as the endpoint of
/// `partition`: starts its accept loop and remembers who removes its file.
pub fn serve(
    ctx: &Arc<Ctx>,
    partition: VmId,
    path: &Path,
    listener: OwnedFd,
    file: SocketFile,
) -> io::Result<()> {
    let afd = Arc::new(register(listener)?);
    start(ctx, partition, path.to_owned(), afd, file);
    Ok(())
}

fn start(
    ctx: &Arc<Ctx>,
    partition: VmId,
    path: PathBuf,
    listener: Arc<AsyncFd<OwnedFd>>,
    file: SocketFile,
) {
    let cancel = ctx.shutdown.child_token();
    let sessions = Arc::new(AtomicUsize::new(0));
    let previous = ctx.endpoints.lock().insert(
        partition,
        Open {
            path,
            file,
            listener: listener.clone(),
            cancel: cancel.clone(),
            sessions: sessions.clone(),
        },
    );
    if let Some(previous) = previous {
        previous.cancel.cancel();
    }
    tokio::spawn(accept_loop(
        ctx.clone(),
        partition,
        listener,
        cancel,
        sessions,
    ));
}

/// Serves the endpoint of partition `from` as the endpoint of `to`, on the same socket and
/// file (an import gave the root another id): the sessions that came in as `from` end, new
/// ones are `to`'s. Returns whether `from` had an endpoint.
pub fn rekey(ctx: &Arc<Ctx>, from: VmId, to: VmId) -> bool {
    let Some(open) = ctx.endpoints.lock().remove(&from) else {
        return false;
    };
    open.cancel.cancel();
    start(ctx, to, open.path, open.listener, open.file);
    true
}

/// Closes the endpoint of `partition`: ends its sessions and removes its socket file.
pub fn close(ctx: &Ctx, partition: VmId) {
    if let Some(open) = ctx.endpoints.lock().remove(&partition) {
        open.cancel.cancel();
        if open.file == SocketFile::Inherited {
            return;
        }
        if let Err(e) = std::fs::remove_file(&open.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("removing endpoint {}: {e}", open.path.display());
            }
        }
    }
}

/// Removes every endpoint socket file that hvsockd owns (on shutdown).
pub fn remove_all(ctx: &Ctx) {
    for (_, open) in ctx.endpoints.lock().drain() {
        open.cancel.cancel();
        if open.file == SocketFile::Owned {
            let _ = std::fs::remove_file(&open.path);
        }
    }
}

/// Creates a listening endpoint socket at `path` (replacing a stale file) with `mode`, and
/// with `group` as its group if given, before it listens: a client can never reach it with
/// looser permissions.
pub fn listen(path: &Path, mode: u32, group: Option<u32>) -> io::Result<OwnedFd> {
    let context = |doing: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context("removing the stale socket", e)),
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path).map_err(|e| context("naming", e.into()))?;
    rustix::net::bind(&sock, &addr).map_err(|e| context("binding", e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| context("setting the mode of", e))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| context(&format!("giving gid {gid} to"), e))?;
    }
    rustix::net::listen(&sock, LISTEN_BACKLOG).map_err(|e| context("listening on", e.into()))?;
    Ok(sock)
}

/// The gid of group `name` (through NSS, so LDAP and systemd's dynamic groups count too), or
/// of a numeric gid as given.
pub fn lookup_group(name: &str) -> io::Result<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => return Ok(group.gid.as_raw()),
        Ok(None) => {}
        Err(e) => {
            return Err(io::Error::other(format!("looking up group {name:?}: {e}")));
        }
    }
    name.parse::<u32>().map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "there is no group {name:?}: create it (`systemd-sysusers`, or `groupadd --system {name}`) or name another"
            ),
        )
    })
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    partition: VmId,
    listener: Arc<AsyncFd<OwnedFd>>,
    cancel: CancellationToken,
    sessions: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = accept(&listener, SocketFlags::NONBLOCK) => accepted,
        };
        match accepted {
            Ok(fd) => {
                if sessions.load(Ordering::Acquire) >= ctx.limits.max_sessions_per_partition {
                    tracing::warn!(
                        partition = %ctx.label(partition),
                        "refusing a client: the partition has {} sessions already",
                        ctx.limits.max_sessions_per_partition
                    );
                    ctx.metrics.client_error(partition, "too_many_sessions");
                    continue; // dropping fd closes it
                }
                sessions.fetch_add(1, Ordering::AcqRel);
                let (ctx, cancel, sessions) = (ctx.clone(), cancel.child_token(), sessions.clone());
                tokio::spawn(async move {
                    crate::session::run(ctx, partition, fd, cancel).await;
                    sessions.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => {
                // EMFILE and friends: say so and back off rather than spin.
                tracing::error!(partition = %ctx.label(partition), "accepting a client: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accepts one connection on `listener`, close-on-exec and with `flags`, riding out
/// interruptions and connections aborted before they were taken.
pub(crate) async fn accept(listener: &AsyncFd<OwnedFd>, flags: SocketFlags) -> io::Result<OwnedFd> {
    loop {
        let mut guard = listener.readable().await?;
        match rustix::net::accept_with(guard.get_inner(), SocketFlags::CLOEXEC | flags) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
