//! Socket activation and readiness notification: hvsockd's side of systemd's `sd_listen_fds`
//! and `sd_notify` protocols, written out because each is a few lines.
//!
//! # Socket activation (`sd_listen_fds(3)`)
//!
//! A service manager that created hvsockd's listening sockets starts it with them open from
//! descriptor 3 up and says so in the environment:
//!
//! - `LISTEN_PID`: the pid the sockets are meant for (ours, or they are not for us);
//! - `LISTEN_FDS`: how many, starting at 3;
//! - `LISTEN_FDNAMES`: their names, `:`-separated (`FileDescriptorName=` in the socket unit).
//!
//! hvsockd takes up to two: `host` (`host.sock`, an `AF_UNIX` `SOCK_SEQPACKET` listening socket,
//! `ListenSequentialPacket=`) and `admin` (`admin.sock`, `AF_UNIX` `SOCK_STREAM`,
//! `ListenStream=`). A socket whose name is neither (systemd names them after the socket unit
//! when `FileDescriptorName=` is missing) is taken by its type. Each is checked (a socket,
//! `AF_UNIX`, listening, of the right type) before it is used, and marked close-on-exec.
//! The variables are removed once read, as `sd_listen_fds(1)` does, so that nothing hvsockd
//! might start believes the sockets are its own.
//!
//! A socket that comes from the service manager belongs to it: hvsockd neither sets its owner
//! or mode (that is `SocketGroup=` / `SocketMode=`) nor removes its file when it stops. That is
//! the point: the socket and its file outlive a restart of hvsockd, clients that connect
//! meanwhile wait in its backlog, and a `host.sock` bind-mounted somewhere stays valid.
//! Partition endpoints (`partitions/<vmid>.sock`) are created as partitions are added, so they
//! are never socket-activated.
//!
//! # Readiness (`sd_notify(3)`)
//!
//! With `NOTIFY_SOCKET` set (`Type=notify`), hvsockd sends `READY=1` once every socket is
//! open and `STOPPING=1` when it begins to stop: one datagram each on an `AF_UNIX`
//! `SOCK_DGRAM` socket to that path (or, for a leading `@`, that abstract name). The `sd-notify`
//! crate would do the same in more code; this needs only the standard library.

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, SocketType};

/// The first descriptor of the `sd_listen_fds` protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// The most descriptors hvsockd accepts from a service manager: socket activation's two, and
/// what its descriptor store keeps (see [`crate::handover`]).
const MAX_LISTEN_FDS: usize = 1 << 20;

/// The name of the root partition's endpoint socket (`FileDescriptorName=host`).
pub const HOST_FD_NAME: &str = "host";
/// The name of the admin API socket (`FileDescriptorName=admin`).
pub const ADMIN_FD_NAME: &str = "admin";

/// Why the sockets passed by a service manager cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable of the protocol does not parse.
    #[error("socket activation: {var}={value:?} {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A descriptor the service manager announced is not open.
    #[error("socket activation: descriptor {fd} (LISTEN_FDS={count}) is not open: {source}")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// How many were announced.
        count: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A descriptor could not be inspected or prepared.
    #[error("socket activation: {doing} descriptor {fd} ({name:?}): {source}")]
    Inspect {
        /// What was being done.
        doing: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A descriptor is not what hvsockd can serve.
    #[error("socket activation: descriptor {fd} ({name:?}) {problem}; {fix}")]
    Unusable {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong (`is a SOCK_STREAM socket, but host.sock must be SOCK_SEQPACKET`).
        problem: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// Two descriptors claim the same role.
    #[error(
        "socket activation: descriptors {first} and {second} are both the {role} socket; hvsockd takes one {role} socket"
    )]
    Duplicate {
        /// `host` or `admin`.
        role: &'static str,
        /// The first descriptor.
        first: RawFd,
        /// The second one.
        second: RawFd,
    },
}

impl From<ActivationError> for io::Error {
    fn from(e: ActivationError) -> io::Error {
        let kind = match &e {
            ActivationError::Env { .. } | ActivationError::Unusable { .. } => {
                io::ErrorKind::InvalidInput
            }
            ActivationError::Duplicate { .. } => io::ErrorKind::AlreadyExists,
            ActivationError::NotOpen { source, .. } | ActivationError::Inspect { source, .. } => {
                source.kind()
            }
        };
        io::Error::new(kind, e)
    }
}

/// The descriptors a service manager passed, with their names, not yet checked.
#[derive(Debug, Default)]
pub struct ListenFds {
    fds: Vec<(OwnedFd, String)>,
}

/// The sockets hvsockd takes from a service manager: the listening sockets it serves instead
/// of binding its own. Both `None` without socket activation.
#[derive(Debug, Default)]
pub struct Inherited {
    /// `host.sock`: `AF_UNIX`, `SOCK_SEQPACKET`, listening.
    pub host: Option<OwnedFd>,
    /// `admin.sock`: `AF_UNIX`, `SOCK_STREAM`, listening.
    pub admin: Option<OwnedFd>,
}

impl Inherited {
    /// Whether any socket came from a service manager.
    pub fn any(&self) -> bool {
        self.host.is_some() || self.admin.is_some()
    }
}

/// What the environment says about passed descriptors: how many, and their names (one per
/// descriptor, empty where none was given). The pure half of [`take_listen_fds`].
///
/// `None` when there is nothing for `my_pid` (no `LISTEN_PID`, another pid, `LISTEN_FDS=0`).
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Option<Vec<String>>, ActivationError> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::Env {
        var: "LISTEN_PID",
        value: pid.to_owned(),
        reason: "is not a process id",
    })?;
    if pid != my_pid {
        // Meant for another process (e.g. our parent's, inherited by mistake).
        return Ok(None);
    }
    let Some(count) = listen_fds else {
        return Ok(None);
    };
    let count: usize = count.trim().parse().map_err(|_| ActivationError::Env {
        var: "LISTEN_FDS",
        value: count.to_owned(),
        reason: "is not a number of descriptors",
    })?;
    if count == 0 {
        return Ok(None);
    }
    if count > MAX_LISTEN_FDS {
        return Err(ActivationError::Env {
            var: "LISTEN_FDS",
            value: count.to_string(),
            reason: "is more descriptors than hvsockd takes",
        });
    }
    let names: Vec<String> = match listen_fdnames {
        None | Some("") => vec![String::new(); count],
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ActivationError::Env {
                    var: "LISTEN_FDNAMES",
                    value: names.join(":"),
                    reason: "does not name as many descriptors as LISTEN_FDS says",
                });
            }
            names
        }
    };
    Ok(Some(names))
}

/// Takes the descriptors a service manager passed (the `sd_listen_fds` protocol) and removes
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// Without socket activation, returns an empty set. Each descriptor is marked close-on-exec
/// here; [`classify`] checks what they are.
///
/// # Safety
///
/// Call it once, first thing in `main`, while the process has one thread: it changes the
/// environment, and it takes ownership of descriptors 3 and up, which nothing else in the
/// process may own or use.
pub unsafe fn take_listen_fds() -> Result<ListenFds, ActivationError> {
    let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let (pid, count, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the caller runs this while the process has a single thread, so nothing
        // reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    let Some(names) = parse_listen_env(
        pid.as_deref(),
        count.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(ListenFds::default());
    };
    let count = names.len();
    let mut fds = Vec::with_capacity(count);
    for (i, name) in names.into_iter().enumerate() {
        let raw = LISTEN_FDS_START + i as RawFd;
        // SAFETY: the protocol (LISTEN_PID is ours) says `raw` is open and handed to this
        // process; if it is not, fcntl fails with EBADF and the descriptor is never owned.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let flags = rustix::io::fcntl_getfd(borrowed).map_err(|e| ActivationError::NotOpen {
            fd: raw,
            count,
            source: e.into(),
        })?;
        rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC).map_err(|e| {
            ActivationError::Inspect {
                doing: "marking close-on-exec",
                fd: raw,
                name: name.clone(),
                source: e.into(),
            }
        })?;
        // SAFETY: `raw` is open (fcntl succeeded) and, per the caller's contract, owned by
        // nothing else in this process: from here on the `OwnedFd` is its only owner.
        fds.push((unsafe { OwnedFd::from_raw_fd(raw) }, name));
    }
    Ok(ListenFds { fds })
}

impl ListenFds {
    /// How many descriptors were passed.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Descriptors from elsewhere (for tests and tools): each with its name.
    pub fn from_fds(fds: Vec<(OwnedFd, String)>) -> ListenFds {
        ListenFds { fds }
    }

    /// The descriptors, each with its name.
    pub fn into_fds(self) -> Vec<(OwnedFd, String)> {
        self.fds
    }
}

fn type_name(ty: SocketType) -> String {
    match ty {
        SocketType::STREAM => "SOCK_STREAM".into(),
        SocketType::DGRAM => "SOCK_DGRAM".into(),
        SocketType::SEQPACKET => "SOCK_SEQPACKET".into(),
        SocketType::RAW => "SOCK_RAW".into(),
        other => format!("type {}", other.as_raw()),
    }
}

/// The role a socket of `ty` named `name` plays, or why it has none.
fn role_of(name: &str, ty: SocketType) -> Result<&'static str, (String, &'static str)> {
    const HOST_FIX: &str = "declare host.sock with ListenSequentialPacket= and FileDescriptorName=host in the socket unit";
    const ADMIN_FIX: &str =
        "declare admin.sock with ListenStream= and FileDescriptorName=admin in the socket unit";
    match (name, ty) {
        (HOST_FD_NAME, SocketType::SEQPACKET) => Ok(HOST_FD_NAME),
        (HOST_FD_NAME, other) => Err((
            format!(
                "is a {} socket, but host.sock must be SOCK_SEQPACKET",
                type_name(other)
            ),
            HOST_FIX,
        )),
        (ADMIN_FD_NAME, SocketType::STREAM) => Ok(ADMIN_FD_NAME),
        (ADMIN_FD_NAME, other) => Err((
            format!(
                "is a {} socket, but admin.sock must be SOCK_STREAM",
                type_name(other)
            ),
            ADMIN_FIX,
        )),
        // Unnamed (or named after the unit): the type says which it is.
        (_, SocketType::SEQPACKET) => Ok(HOST_FD_NAME),
        (_, SocketType::STREAM) => Ok(ADMIN_FD_NAME),
        (_, other) => Err((
            format!(
                "is a {} socket; hvsockd takes a SOCK_SEQPACKET socket named \"host\" and a SOCK_STREAM socket named \"admin\"",
                type_name(other)
            ),
            "remove it from the socket unit",
        )),
    }
}

/// Checks each passed descriptor (a listening `AF_UNIX` socket of the type its name calls for)
/// and sorts them into `host` and `admin`.
pub fn classify(fds: ListenFds) -> Result<Inherited, ActivationError> {
    let mut inherited = Inherited::default();
    for (fd, name) in fds.fds {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let unusable = |problem: String, fix: &'static str| ActivationError::Unusable {
            fd: raw,
            name: name.clone(),
            problem,
            fix,
        };
        let inspect = |doing: &'static str, e: Errno| ActivationError::Inspect {
            doing,
            fd: raw,
            name: name.clone(),
            source: e.into(),
        };
        let ty = match rustix::net::sockopt::socket_type(&fd) {
            Ok(ty) => ty,
            Err(Errno::NOTSOCK) => {
                return Err(unusable(
                    "is not a socket".into(),
                    "pass only hvsockd's host and admin sockets",
                ));
            }
            Err(e) => return Err(inspect("reading the type of", e)),
        };
        let family = rustix::net::sockopt::socket_domain(&fd)
            .map_err(|e| inspect("reading the family of", e))?;
        if family != AddressFamily::UNIX {
            return Err(unusable(
                format!("is not an AF_UNIX socket (family {})", family.as_raw()),
                "hvsockd serves Unix sockets only: use a path in ListenSequentialPacket= / ListenStream=",
            ));
        }
        let role = role_of(&name, ty).map_err(|(problem, fix)| unusable(problem, fix))?;
        if !rustix::net::sockopt::socket_acceptconn(&fd)
            .map_err(|e| inspect("reading the state of", e))?
        {
            return Err(unusable(
                "is not listening".into(),
                "pass listening sockets (Accept=no in the socket unit)",
            ));
        }
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| inspect("making non-blocking", e))?;
        let slot = if role == HOST_FD_NAME {
            &mut inherited.host
        } else {
            &mut inherited.admin
        };
        if let Some(first) = slot {
            return Err(ActivationError::Duplicate {
                role,
                first: std::os::fd::AsRawFd::as_raw_fd(first),
                second: raw,
            });
        }
        *slot = Some(fd);
    }
    Ok(inherited)
}

/// The path a listening Unix socket is bound to, if it has one.
pub fn bound_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    let addr = rustix::net::getsockname(fd).ok()?;
    let unix = rustix::net::SocketAddrUnix::try_from(addr).ok()?;
    let path = unix.path()?;
    Some(PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
    ))
}

/// Where readiness goes: `NOTIFY_SOCKET`, if set.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: OsString,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or empty (not run by a service manager
    /// that waits for readiness).
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")
            .filter(|t| !t.is_empty())
            .map(|target| Notifier { target })
    }

    /// To `target` (a path, or `@name` for an abstract socket).
    pub fn new(target: impl Into<OsString>) -> Notifier {
        Notifier {
            target: target.into(),
        }
    }

    /// Sends one notification (`READY=1`, `STOPPING=1`, `STATUS=…`, newline-separated).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("notifying {:?}: {e}", self.target));
        let sock = UnixDatagram::unbound().map_err(context)?;
        let bytes = self.target.as_encoded_bytes();
        let sent = if let Some(name) = bytes.strip_prefix(b"@") {
            abstract_send(&sock, name, state.as_bytes())
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&self.target))
        };
        let sent = sent.map_err(context)?;
        if sent != state.len() {
            return Err(context(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was truncated",
            )));
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn abstract_send(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rustix::net::{SocketAddrUnix, SocketFlags};
    use std::os::fd::AsFd;

    /// `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`.
    type Env = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[test]
    fn the_environment_is_read_as_sd_listen_fds_does() {
        let me = 4242;
        let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) -> names, or None for "not activated"
        let ok: &[(Env, Option<Vec<String>>)] = &[
            ((None, None, None), None),
            ((None, Some("2"), Some("host:admin")), None),
            ((Some("1"), Some("2"), Some("host:admin")), None),
            ((Some("4242"), None, None), None),
            ((Some("4242"), Some("0"), None), None),
            (
                (Some("4242"), Some("2"), Some("host:admin")),
                names(&["host", "admin"]),
            ),
            ((Some("4242"), Some("1"), Some("admin")), names(&["admin"])),
            ((Some("4242"), Some("2"), None), names(&["", ""])),
            ((Some("4242"), Some("2"), Some("")), names(&["", ""])),
            ((Some(" 4242 "), Some("1"), Some("host")), names(&["host"])),
        ];
        for ((pid, fds, fdnames), want) in ok {
            let got = parse_listen_env(*pid, *fds, *fdnames, me)
                .unwrap_or_else(|e| panic!("{pid:?} {fds:?} {fdnames:?}: {e}"));
            assert_eq!(&got, want, "{pid:?} {fds:?} {fdnames:?}");
        }
        let bad: &[(Env, &str)] = &[
            ((Some("x"), Some("2"), None), "LISTEN_PID"),
            ((Some("4242"), Some("two"), None), "LISTEN_FDS"),
            ((Some("4242"), Some("-1"), None), "LISTEN_FDS"),
            ((Some("4242"), Some("10000000"), None), "LISTEN_FDS"),
            ((Some("4242"), Some("2"), Some("host")), "LISTEN_FDNAMES"),
            (
                (Some("4242"), Some("1"), Some("host:admin")),
                "LISTEN_FDNAMES",
            ),
        ];
        for ((pid, fds, fdnames), var) in bad {
            let err = parse_listen_env(*pid, *fds, *fdnames, me).expect_err(var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    fn listening(dir: &std::path::Path, name: &str, ty: SocketType) -> OwnedFd {
        let fd =
            rustix::net::socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None).unwrap();
        let addr = SocketAddrUnix::new(dir.join(name)).unwrap();
        rustix::net::bind(&fd, &addr).unwrap();
        if ty != SocketType::DGRAM {
            rustix::net::listen(&fd, 8).unwrap();
        }
        fd
    }

    #[test]
    fn sockets_are_sorted_by_name_and_else_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let host = listening(dir.path(), "h", SocketType::SEQPACKET);
        let admin = listening(dir.path(), "a", SocketType::STREAM);
        let (host_raw, admin_raw) = (
            std::os::fd::AsRawFd::as_raw_fd(&host),
            std::os::fd::AsRawFd::as_raw_fd(&admin),
        );
        let got = classify(ListenFds::from_fds(vec![
            (admin, "admin".into()),
            (host, "host".into()),
        ]))
        .unwrap();
        assert_eq!(
            got.host.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            Some(host_raw)
        );
        assert_eq!(
            got.admin.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            Some(admin_raw)
        );
        assert_eq!(
            bound_path(got.host.as_ref().unwrap().as_fd()),
            Some(dir.path().join("h"))
        );

        // Named after the unit (no FileDescriptorName=): by type.
        let got = classify(ListenFds::from_fds(vec![
            (
                listening(dir.path(), "h2", SocketType::SEQPACKET),
                "hvsockd.socket".into(),
            ),
            (
                listening(dir.path(), "a2", SocketType::STREAM),
                "hvsockd.socket".into(),
            ),
        ]))
        .unwrap();
        assert!(got.host.is_some() && got.admin.is_some());
    }

    #[test]
    fn wrong_sockets_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = |fds: Vec<(OwnedFd, &str)>| {
            classify(ListenFds::from_fds(
                fds.into_iter().map(|(f, n)| (f, n.to_owned())).collect(),
            ))
            .expect_err("refused")
            .to_string()
        };
        let e = err(vec![(
            listening(dir.path(), "s", SocketType::STREAM),
            "host",
        )]);
        assert!(
            e.contains("SOCK_STREAM") && e.contains("ListenSequentialPacket="),
            "{e}"
        );
        let e = err(vec![(
            listening(dir.path(), "q", SocketType::SEQPACKET),
            "admin",
        )]);
        assert!(e.contains("admin.sock must be SOCK_STREAM"), "{e}");
        let e = err(vec![(listening(dir.path(), "d", SocketType::DGRAM), "x")]);
        assert!(e.contains("SOCK_DGRAM"), "{e}");
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let e = err(vec![(a, "host")]);
        assert!(e.contains("is not listening"), "{e}");
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let e = err(vec![(r, "host")]);
        assert!(e.contains("is not a socket"), "{e}");
        let e = err(vec![
            (listening(dir.path(), "h1", SocketType::SEQPACKET), "host"),
            (listening(dir.path(), "h2", SocketType::SEQPACKET), "x"),
        ]);
        assert!(e.contains("both the host socket"), "{e}");
    }

    #[test]
    fn notifications_reach_a_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.as_os_str())
            .notify("READY=1\nSTATUS=ok")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("hvsockd-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            let rx = UnixDatagram::bind_addr(&addr).unwrap();
            Notifier::new(format!("@{name}"))
                .notify("STOPPING=1")
                .unwrap();
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"STOPPING=1");
        }

        let err = Notifier::new(dir.path().join("nobody"))
            .notify("READY=1")
            .expect_err("nobody listens");
        assert!(err.to_string().contains("nobody"), "{err}");
    }
}
