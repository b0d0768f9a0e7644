//! Every system call hvsockd makes on its own behalf, behind a small safe API: listening Unix
//! sockets (created with their final mode and owner before anyone can connect), accepting,
//! the directory lock, the open-file limit, peer credentials, group lookup; and the service
//! manager's protocols in [`activation`].
//!
//! # How a listening socket comes to be ([`listen_unix`])
//!
//! ```text
//!  mkdir DIR/.hvsockd-<pid>-<n>  (0700, fresh: nobody else can reach inside)
//!  socket(SOCK_CLOEXEC|SOCK_NONBLOCK) ─ bind(that dir/s) ─ chmod(mode) ─ chown(owner)
//!  listen() ─ rename(that dir/s → PATH) ─ rmdir(that dir)
//! ```
//!
//! A Unix socket takes connections only once it listens, and the path becomes visible only
//! through the rename, with its final mode and owner: there is no instant at which a client
//! could connect to it with looser permissions (a process-wide `umask` change would be racy in
//! a threaded process), and a stale socket at `PATH` is replaced atomically, so a client never
//! finds no file between the old socket and the new one. When `DIR/.hvsockd-…/s` would not fit
//! in a socket address (108 bytes), the socket is bound at `PATH` itself after the stale file
//! is removed: still not connectable before `listen`, which comes after `chmod` and `chown`.

pub mod activation;

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// The longest path a Unix socket address holds.
pub const MAX_SOCKET_PATH: usize = 107;

/// How a new listening socket is laid out on disk.
#[derive(Debug, Clone, Copy)]
pub struct SocketSpec {
    /// `SOCK_SEQPACKET` (endpoints) or `SOCK_STREAM` (admin API, guest ports).
    pub ty: SocketType,
    /// Its file mode.
    pub mode: u32,
    /// Its owner and group; `None` keeps hvsockd's (a `None` inside keeps that one).
    pub owner: Option<(Option<u32>, Option<u32>)>,
    /// What may be at the path already.
    pub replace: Replace,
    /// The `listen()` backlog.
    pub backlog: i32,
}

/// What [`listen_unix`] may replace at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Any file but a directory (a stale socket of an hvsockd that did not stop cleanly).
    AnyFile,
    /// Only a socket; any other file is an error (paths a user chose, such as a VM's).
    SocketOnly,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn context(doing: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Creates a listening Unix socket at `path` as `spec` says, non-blocking and close-on-exec;
/// never connectable with another mode or owner than `spec`'s (see the module docs).
pub fn listen_unix(path: &Path, spec: SocketSpec) -> io::Result<OwnedFd> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a directory: hvsockd will not replace it with a socket",
                    path.display()
                ),
            ));
        }
        Ok(meta) if spec.replace == Replace::SocketOnly && !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: hvsockd will not replace it; remove it",
                    path.display()
                ),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context("looking at", path, e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp_dir = dir.join(format!(
        ".hvsockd-{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = temp_dir.join("s");
    if temp.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        // No room for the detour: bind in place (still not connectable before listen).
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context("removing the stale socket", path, e)),
        }
        let sock = bound_socket(path, spec)?;
        rustix::net::listen(&sock, spec.backlog)
            .map_err(|e| context("listening on", path, e.into()))?;
        return Ok(sock);
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&temp_dir)
        .map_err(|e| context("creating the directory", &temp_dir, e))?;
    let result = (|| {
        let sock = bound_socket(&temp, spec)?;
        rustix::net::listen(&sock, spec.backlog)
            .map_err(|e| context("listening on", path, e.into()))?;
        std::fs::rename(&temp, path).map_err(|e| context("moving the socket to", path, e))?;
        Ok(sock)
    })();
    let _ = std::fs::remove_file(&temp);
    let _ = std::fs::remove_dir(&temp_dir);
    result
}

/// A socket bound at `at` with `spec`'s mode and owner, not yet listening.
fn bound_socket(at: &Path, spec: SocketSpec) -> io::Result<OwnedFd> {
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        spec.ty,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(at).map_err(|e| context("naming", at, e.into()))?;
    rustix::net::bind(&sock, &addr).map_err(|e| context("binding", at, e.into()))?;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(spec.mode))
        .map_err(|e| context("setting the mode of", at, e))?;
    if let Some((uid, gid)) = spec.owner {
        std::os::unix::fs::chown(at, uid, gid)
            .map_err(|e| context(&format!("giving uid {uid:?} gid {gid:?} to"), at, e))?;
    }
    Ok(sock)
}

/// Removes a socket file hvsockd made, saying so if that fails for another reason than that it
/// is gone.
pub fn remove_socket_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

/// The owner and group of `dir`, when they are not hvsockd's own.
pub fn foreign_owner(dir: &Path) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(dir).ok()?;
    let (uid, gid) = (meta.uid(), meta.gid());
    (uid != rustix::process::geteuid().as_raw() || gid != rustix::process::getegid().as_raw())
        .then_some((uid, gid))
}

/// Registers an owned socket with the tokio reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` holds one open descriptor for its whole life and `as_raw_fd`
    // always returns that descriptor; the `AsyncFd` owns it from here on.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// Accepts one connection on `listener`, close-on-exec and with `flags`, riding out
/// interruptions and connections aborted before they were taken.
pub async fn accept(listener: &AsyncFd<OwnedFd>, flags: SocketFlags) -> io::Result<OwnedFd> {
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

/// Accepts without waiting: the connections already queued, for a listener about to close.
pub fn accept_queued(listener: &AsyncFd<OwnedFd>, flags: SocketFlags) -> Option<OwnedFd> {
    rustix::net::accept_with(listener.get_ref(), SocketFlags::CLOEXEC | flags).ok()
}

/// The pause after a failed `accept` (EMFILE and friends), so that a loop says so and backs off
/// rather than spins.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The one accept loop: hands each connection accepted on `listener` (with `flags`) to
/// `handle`, logs and backs off on errors, until `cancel`. `on_cancel` sees the listener last
/// (e.g. to drain what the kernel queued).
pub async fn accept_loop(
    listener: &AsyncFd<OwnedFd>,
    flags: SocketFlags,
    cancel: &CancellationToken,
    what: impl Fn() -> String,
    mut handle: impl FnMut(OwnedFd),
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = accept(listener, flags) => accepted,
        };
        match accepted {
            Ok(fd) => handle(fd),
            Err(e) => {
                tracing::error!("accepting {}: {e}", what());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The pid of the process on the other end of a Unix socket, if the kernel tells.
pub fn peer_pid(fd: impl AsFd) -> Option<u32> {
    rustix::net::sockopt::socket_peercred(fd)
        .ok()
        .and_then(|cred| u32::try_from(cred.pid.as_raw_nonzero().get()).ok())
}

/// Who is on the other end of a Unix socket, as the kernel recorded it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    /// Its pid.
    pub pid: u32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid, then its supplementary groups (from `/proc/PID/status`, read once
    /// when the session starts; empty past the primary one if the process is already gone).
    pub groups: Vec<u32>,
}

/// The credentials of the process on the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_cred(fd: impl AsFd) -> Option<PeerCred> {
    let cred = rustix::net::sockopt::socket_peercred(fd).ok()?;
    let pid = u32::try_from(cred.pid.as_raw_nonzero().get()).ok()?;
    let mut groups = vec![cred.gid.as_raw()];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        groups.extend(supplementary_groups(&status));
    }
    Some(PeerCred {
        pid,
        uid: cred.uid.as_raw(),
        groups,
    })
}

/// The `Groups:` line of a `/proc/PID/status`.
pub fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Why the directory lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process holds it.
    #[error("{path} is locked by pid {pid}")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid written in it.
        pid: String,
    },
}

/// Takes the exclusive lock `path` (`flock`, released when the file closes, even by a crash)
/// and writes our pid into it.
pub fn lock_file(path: &Path) -> Result<File, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err)?;
    match rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(path).unwrap_or_default();
            return Err(LockError::Held {
                path: path.to_owned(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(e) => return Err(io_err(e.into())),
    }
    file.set_len(0).map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(file)
}

/// Raises the soft limit of open descriptors to the hard limit, as daemons that hold a socket
/// per client do: with the usual soft limit of 1024, the 1024 sessions one partition may open
/// would exhaust hvsockd's descriptors and starve every other partition. (systemd's default is
/// 1024 soft, 524288 hard.)
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return; // already unlimited
    };
    // `None` is unlimited; Linux caps the open-file limit at fs.nr_open anyway.
    let target = hard.unwrap_or(1 << 20);
    if soft >= target {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!("open-file limit raised from {soft} to {target}"),
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit from {soft} to {target} ({e}): a partition \
             that opens many sessions may exhaust hvsockd's descriptors; raise LimitNOFILE"
        ),
    }
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

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` is its `device:inode`.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

#[cfg(test)]
mod tests;
