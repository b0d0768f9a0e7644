//! Endpoint sockets: `host.sock` for the root and `partitions/<vmid>/endpoint.sock` for each
//! sandbox partition. A client's partition is the endpoint it came through.
//!
//! A partition's endpoint lives in a directory of its own (mode 0755 inside the 0700
//! `partitions/`), so that a sandbox can be given the directory by a bind mount and keep
//! reaching hvsockd after a restart: the socket inside is re-created, the directory (and the
//! mount) stay. The old path `partitions/<vmid>.sock` is kept as a relative symbolic link to
//! `<vmid>/endpoint.sock`. On shutdown only the socket is removed; the directory and the link
//! go when the partition is removed.
//!
//! Each endpoint is an `AF_UNIX` `SOCK_SEQPACKET` listening socket with an accept task; each
//! accepted client gets a [`session`](crate::session) task. Which endpoints are open follows
//! the world: [`Endpoints::reconcile`] (run on every change, see [`crate::reconcile`]) opens the
//! endpoint of each sandbox partition that has none, closes those of partitions that are gone
//! (cancelling the accept task and every session of that partition, and unlinking the socket
//! file), and serves `host.sock` under the root's new id when an import changed it. A socket
//! that came from a service manager ([`SocketFile::Inherited`], socket activation) is served
//! the same way, but its file is the service manager's: hvsockd never removes it.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hvsock::VmId;
use hvsock::dirs::Dirs;
use rustix::net::{SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::Limits;
use crate::handover::{Hold, Kept, SessionRecord};
use crate::registry::PartitionKind;
use crate::sys::{self, Replace, SocketSpec};
use crate::world::World;

/// The `listen()` backlog of endpoint sockets.
const LISTEN_BACKLOG: i32 = 1024;

/// Mode of `host.sock`: the owner and its group (`--socket-group`; `hvsock` when packaged).
pub const HOST_SOCKET_MODE: u32 = 0o660;
/// Mode of a partition endpoint: open, because it is reached through a bind mount inside the
/// sandbox; the `partitions/` directory (0700) keeps other host users from reaching it.
pub const PARTITION_SOCKET_MODE: u32 = 0o666;

/// Who owns an endpoint's socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFile {
    /// hvsockd bound it and removes it when the endpoint closes.
    Owned,
    /// A service manager bound it (socket activation) and keeps it across restarts of
    /// hvsockd: never removed.
    Inherited,
}

/// Which partition an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The root's (`host.sock`): follows the root's id.
    Root,
    /// A sandbox partition's.
    Partition,
}

#[derive(Debug)]
struct Open {
    role: Role,
    path: PathBuf,
    file: SocketFile,
    /// Shared with the accept loop, so that a new root id can be served on the same socket.
    listener: Arc<AsyncFd<OwnedFd>>,
    cancel: CancellationToken,
    sessions: Arc<AtomicUsize>,
    /// Its entry in the hand-over's table.
    _hold: Hold,
}

/// The open endpoints, by partition.
#[derive(Debug)]
pub struct Endpoints {
    broker: Arc<Broker>,
    limits: Limits,
    dirs: Dirs,
    shutdown: CancellationToken,
    open: Mutex<HashMap<VmId, Open>>,
    /// Endpoints an hvsockd before this one held, to serve instead of binding new ones.
    kept: Mutex<HashMap<VmId, (OwnedFd, String)>>,
}

/// Creates a listening endpoint socket at `path` (replacing a stale file) with `mode`, and
/// with `group` as its group if given, before anyone can connect to it.
pub fn listen(path: &Path, mode: u32, group: Option<u32>) -> io::Result<OwnedFd> {
    sys::listen_unix(
        path,
        SocketSpec {
            ty: SocketType::SEQPACKET,
            mode,
            owner: group.map(|gid| (None, Some(gid))),
            replace: Replace::AnyFile,
            backlog: LISTEN_BACKLOG,
        },
    )
}

/// Mode of a partition's directory: searchable by everyone, as the socket in it is reached
/// through a bind mount inside the sandbox (by whatever uid its programs have); writable by
/// hvsockd only.
pub const PARTITION_DIR_MODE: u32 = 0o755;

/// Opens the endpoint of sandbox partition `id`: its directory (made if missing, with
/// [`PARTITION_DIR_MODE`]), the listening socket `endpoint.sock` in it (made with its mode
/// before it listens), and the old path `partitions/<vmid>.sock` as a link to it.
pub fn open_partition(dirs: &Dirs, id: VmId) -> io::Result<OwnedFd> {
    let dir = dirs.partition_dir(id);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a directory: hvsockd keeps the partition's endpoint in a directory there; remove it",
                    dir.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(PARTITION_DIR_MODE)
                .create(&dir)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
                })?;
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("looking at {}: {e}", dir.display()),
            ));
        }
    }
    // The umask may have narrowed it, or an older hvsockd made it otherwise.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(PARTITION_DIR_MODE)).map_err(
        |e| {
            io::Error::new(
                e.kind(),
                format!("setting the mode of {}: {e}", dir.display()),
            )
        },
    )?;
    let sock = listen(&dirs.partition_socket(id), PARTITION_SOCKET_MODE, None)?;
    link_legacy_path(dirs, id);
    Ok(sock)
}

/// Makes `partitions/<vmid>.sock` a relative link to `<vmid>/endpoint.sock`, replacing the
/// socket an older hvsockd left there; any other file is left alone with a warning (the new
/// path works regardless).
fn link_legacy_path(dirs: &Dirs, id: VmId) {
    use std::os::unix::fs::FileTypeExt;
    let legacy = dirs.legacy_partition_socket(id);
    let target = Path::new(&id.to_string()).join(hvsock::dirs::ENDPOINT_FILE);
    match std::fs::symlink_metadata(&legacy) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&legacy).ok().as_deref() == Some(target.as_path()) {
                return;
            }
            let _ = std::fs::remove_file(&legacy);
        }
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(&legacy);
        }
        Ok(_) => {
            tracing::warn!(
                "{} exists and is neither a socket nor a link: left alone (the endpoint is {})",
                legacy.display(),
                dirs.partition_socket(id).display()
            );
            return;
        }
        Err(_) => {}
    }
    if let Err(e) = std::os::unix::fs::symlink(&target, &legacy) {
        tracing::warn!(
            "linking the old endpoint path {} to {}: {e}",
            legacy.display(),
            target.display()
        );
    }
}

/// Removes what [`open_partition`] made besides the socket: the old path's link and the
/// directory (if empty: a sandbox may still have it mounted, which is harmless).
fn remove_partition_files(dirs: &Dirs, id: VmId) {
    let legacy = dirs.legacy_partition_socket(id);
    if std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.file_type().is_symlink()) {
        sys::remove_socket_file(&legacy);
    }
    let dir = dirs.partition_dir(id);
    if let Err(e) = std::fs::remove_dir(&dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

impl Endpoints {
    /// None open yet; everything ends with `shutdown`.
    pub fn new(
        broker: Arc<Broker>,
        limits: Limits,
        dirs: Dirs,
        shutdown: CancellationToken,
    ) -> Endpoints {
        Endpoints {
            broker,
            limits,
            dirs,
            shutdown,
            open: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// Serves these endpoints (kept by an hvsockd before this one, with their names) for
    /// their partitions rather than binding new sockets: their files stay the same inodes.
    pub fn adopt(&self, kept: HashMap<VmId, (OwnedFd, String)>) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(kept);
    }

    /// Closes the kept endpoints no partition took (their partitions are gone).
    pub fn drop_unused_kept(&self) {
        let unused: Vec<_> = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (id, (_fd, name)) in unused {
            tracing::info!(partition = %id, "a kept endpoint's partition is gone; closing it");
            self.broker.holder().discard(&name);
        }
    }

    /// Serves a session an hvsockd before this one served (see [`crate::handover`]) on its
    /// partition's endpoint; closes it if that partition is gone.
    pub fn resume_session(
        self: &Arc<Self>,
        fd: OwnedFd,
        name: String,
        n: u64,
        record: SessionRecord,
    ) {
        let open = self
            .lock()
            .get(&record.partition)
            .map(|o| (o.cancel.clone(), o.sessions.clone()));
        let Some((cancel, sessions)) = open else {
            tracing::info!(partition = %record.partition, "a kept session's partition is gone; closing it");
            self.broker.holder().discard(&name);
            return;
        };
        let (broker, limits, cancel) = (self.broker.clone(), self.limits, cancel.child_token());
        if let Some(serve) = crate::session::resume(broker, limits, fd, cancel, (n, record, name)) {
            sessions.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                serve.await;
                sessions.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<VmId, Open>> {
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

    /// Serves `listener`, a listening `SOCK_SEQPACKET` socket at `path`, as the root's
    /// endpoint (`host.sock`); `kept_as` is its name if an hvsockd before this one held it.
    pub fn serve_root(
        self: &Arc<Self>,
        root: VmId,
        path: &Path,
        listener: OwnedFd,
        file: SocketFile,
        kept_as: Option<String>,
    ) -> io::Result<()> {
        let afd = Arc::new(sys::register(listener)?);
        let holder = self.broker.holder();
        let hold = match (file, kept_as) {
            (SocketFile::Inherited, _) => holder.hold_activated(afd.clone(), "host"),
            (SocketFile::Owned, Some(name)) => holder.adopt(afd.clone(), Kept::Host, name),
            (SocketFile::Owned, None) => holder.hold(afd.clone(), Kept::Host),
        };
        self.start(root, Role::Root, path.to_owned(), afd, file, hold);
        Ok(())
    }

    fn start(
        self: &Arc<Self>,
        partition: VmId,
        role: Role,
        path: PathBuf,
        listener: Arc<AsyncFd<OwnedFd>>,
        file: SocketFile,
        hold: Hold,
    ) {
        let cancel = self.shutdown.child_token();
        let sessions = Arc::new(AtomicUsize::new(0));
        let previous = self.lock().insert(
            partition,
            Open {
                role,
                path,
                file,
                listener: listener.clone(),
                cancel: cancel.clone(),
                sessions: sessions.clone(),
                _hold: hold,
            },
        );
        if let Some(previous) = previous {
            previous.cancel.cancel();
        }
        tokio::spawn(
            self.clone()
                .accept_loop(partition, listener, cancel, sessions),
        );
    }

    /// Opens and closes endpoints to match `world`: returns the partitions whose endpoint could
    /// not be opened, with why. Must run inside the runtime, from one task at a time.
    pub fn reconcile(self: &Arc<Self>, world: &World) -> Vec<(VmId, String)> {
        let root = world.root();
        let sandboxes: Vec<VmId> = world
            .partitions()
            // A VM served by hvsock-vhost is such a partition (`vm add` without
            // --hybrid-vsock): its device reaches hvsockd through this endpoint.
            .filter(|p| p.kind == PartitionKind::Sandbox)
            .map(|p| p.id)
            .collect();
        // The root's endpoint follows the root's id (an import may change it): its clients
        // that came in under the old id are dropped; the socket and its file stay.
        let old_root = self
            .lock()
            .iter()
            .find(|(_, o)| o.role == Role::Root)
            .map(|(&id, _)| id);
        if let Some(old) = old_root.filter(|&old| old != root) {
            let open = self.lock().remove(&old);
            if let Some(open) = open {
                open.cancel.cancel();
                self.start(
                    root,
                    Role::Root,
                    open.path,
                    open.listener,
                    open.file,
                    open._hold,
                );
            }
        }
        let gone: Vec<VmId> = self
            .lock()
            .iter()
            .filter(|(id, o)| o.role == Role::Partition && !sandboxes.contains(id))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.close(id);
        }
        let mut failed = Vec::new();
        for id in sandboxes {
            if self.lock().contains_key(&id) {
                continue;
            }
            let path = self.dirs.partition_socket(id);
            match self.open_endpoint(id, &path) {
                Ok((afd, hold)) => {
                    self.start(id, Role::Partition, path, afd, SocketFile::Owned, hold);
                }
                Err(e) => {
                    tracing::error!(
                        "opening the endpoint of partition {}: {e}",
                        world.partition_label(id)
                    );
                    failed.push((id, e.to_string()));
                }
            }
        }
        failed
    }

    /// The listening socket of partition `id`'s endpoint at `path`: the one kept for it if its
    /// file is still there, else a new one.
    fn open_endpoint(&self, id: VmId, path: &Path) -> io::Result<(Arc<AsyncFd<OwnedFd>>, Hold)> {
        let holder = self.broker.holder();
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some((fd, name)) = kept {
            let there = std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
            if there {
                link_legacy_path(&self.dirs, id);
                let afd = Arc::new(sys::register(fd)?);
                let hold = holder.adopt(afd.clone(), Kept::Endpoint(id), name);
                return Ok((afd, hold));
            }
            tracing::warn!(
                "the kept endpoint of partition {id} has no file at {} any more; binding a new one",
                path.display()
            );
            holder.discard(&name);
        }
        let afd = Arc::new(sys::register(open_partition(&self.dirs, id)?)?);
        let hold = holder.hold(afd.clone(), Kept::Endpoint(id));
        Ok((afd, hold))
    }

    /// Closes the endpoint of `partition`: ends its sessions and removes its socket file, its
    /// directory and the old path's link.
    fn close(&self, partition: VmId) {
        if let Some(open) = self.lock().remove(&partition) {
            open.cancel.cancel();
            if open.file == SocketFile::Owned {
                sys::remove_socket_file(&open.path);
            }
            if open.role == Role::Partition {
                remove_partition_files(&self.dirs, partition);
            }
        }
    }

    /// Closes every endpoint and removes the socket files hvsockd owns (on shutdown).
    pub fn close_all(&self) {
        for (_, open) in self.lock().drain() {
            open.cancel.cancel();
            if open.file == SocketFile::Owned {
                let _ = std::fs::remove_file(&open.path);
            }
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        partition: VmId,
        listener: Arc<AsyncFd<OwnedFd>>,
        cancel: CancellationToken,
        sessions: Arc<AtomicUsize>,
    ) {
        let what = || {
            format!(
                "a client of partition {}",
                self.broker.world().label(partition)
            )
        };
        sys::accept_loop(&listener, SocketFlags::NONBLOCK, &cancel, what, |fd| {
            let limit = self.limits.max_sessions_per_partition;
            if sessions.load(Ordering::Acquire) >= limit {
                let metrics = self.broker.metrics();
                let label = || self.broker.world().label(partition);
                if metrics.warn_allowed(partition, "too_many_sessions", label) {
                    tracing::warn!(
                        partition = %label(),
                        "refusing a client: the partition has {limit} sessions already",
                    );
                }
                metrics.client_error(partition, "too_many_sessions");
                return; // dropping fd closes it
            }
            sessions.fetch_add(1, Ordering::AcqRel);
            let (broker, limits) = (self.broker.clone(), self.limits);
            let (cancel, sessions) = (cancel.child_token(), sessions.clone());
            tokio::spawn(async move {
                crate::session::run(broker, limits, partition, fd, cancel).await;
                sessions.fetch_sub(1, Ordering::AcqRel);
            });
        })
        .await;
    }
}
