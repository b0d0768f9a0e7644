//! Taking the kept sockets back at start, from either way across:
//!
//! - the service manager's store: they come with socket activation's, through `LISTEN_FDS`
//!   and `LISTEN_FDNAMES` ([`crate::sys::activation::take_listen_fds`]); [`sort`] tells
//!   hvsockd's own names (`hv1.…`) from the socket unit's (`host`, `admin`);
//! - a `SIGUSR2` hand-over ([`super::reexec`]): `HVSOCKD_HANDOVER=<pid>:<fd>` names a memfd
//!   that lists `<fd> <name>` per line ([`take_handed_over`]). The pid guards, as `LISTEN_PID`
//!   does, against a variable inherited by some other process.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use hvsock::VmId;
use rustix::io::FdFlags;

use super::names::{Kept, SessionRecord, is_kept_name};

/// The variable a hand-over sets.
pub const HANDOVER_VAR: &str = "HVSOCKD_HANDOVER";

/// The most sockets one hand-over carries (more than hvsockd's open-file limit could hold).
const MAX_HANDED: usize = 1 << 20;

/// Why the handed-over sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The variable does not parse.
    #[error("{HANDOVER_VAR}={0:?} is not <pid>:<descriptor>")]
    Var(String),
    /// The list could not be read.
    #[error("reading the hand-over list (descriptor {fd}): {source}")]
    Read {
        /// The memfd.
        fd: RawFd,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line of the list does not parse.
    #[error("the hand-over list's line {line} is not \"<descriptor> <name>\": {text:?}")]
    Line {
        /// Its number, from 1.
        line: usize,
        /// What it says.
        text: String,
    },
}

/// Takes the sockets of a `SIGUSR2` hand-over, if this process is one (and removes the
/// variable). Each descriptor is marked close-on-exec; one that is not open is skipped.
///
/// # Safety
///
/// Call it once, first thing in `main`, while the process has one thread: it changes the
/// environment and takes ownership of the descriptors the list names.
pub unsafe fn take_handed_over() -> Result<Vec<(OwnedFd, String)>, IntakeError> {
    let Some(value) = std::env::var_os(HANDOVER_VAR) else {
        return Ok(Vec::new());
    };
    // SAFETY: one thread (the caller's contract), so nothing reads the environment meanwhile.
    unsafe { std::env::remove_var(HANDOVER_VAR) };
    let value = value.to_string_lossy().into_owned();
    let (pid, fd) = value
        .split_once(':')
        .and_then(|(p, f)| Some((p.parse::<u32>().ok()?, f.parse::<RawFd>().ok()?)))
        .ok_or_else(|| IntakeError::Var(value.clone()))?;
    if pid != std::process::id() || fd < 3 {
        return Ok(Vec::new()); // not meant for this process
    }
    // SAFETY: the hand-over (its pid is ours) made `fd` the list's memfd and gave it to this
    // process alone; checked open first.
    let Some(list) = (unsafe { own(fd) }) else {
        return Err(IntakeError::Read {
            fd,
            source: io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error()),
        });
    };
    let mut text = String::new();
    std::fs::File::from(list)
        .read_to_string(&mut text)
        .map_err(|source| IntakeError::Read { fd, source })?;
    let entries = parse_list(&text)?;
    let mut fds = Vec::with_capacity(entries.len());
    for (raw, name) in entries {
        // SAFETY: listed by the hand-over as ours; each number appears once (parse_list).
        match unsafe { own(raw) } {
            Some(fd) => fds.push((fd, name)),
            None => eprintln!(
                "hvsockd: the hand-over listed descriptor {raw} ({name}), which is not open; skipped"
            ),
        }
    }
    Ok(fds)
}

/// Owns `raw` if it is open, marking it close-on-exec.
///
/// # Safety
///
/// `raw` must be owned by nothing else in this process.
unsafe fn own(raw: RawFd) -> Option<OwnedFd> {
    // SAFETY: only used for fcntl, which fails with EBADF if `raw` is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let flags = rustix::io::fcntl_getfd(borrowed).ok()?;
    let _ = rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC);
    // SAFETY: open (fcntl succeeded) and, by the caller's contract, owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The hand-over list: `<fd> <name>` per line, each descriptor (≥ 3) once.
pub fn parse_list(text: &str) -> Result<Vec<(RawFd, String)>, IntakeError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || IntakeError::Line {
            line: i + 1,
            text: line.chars().take(300).collect(),
        };
        let (fd, name) = line.split_once(' ').ok_or_else(bad)?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        if fd < 3 || name.is_empty() || !seen.insert(fd) || out.len() >= MAX_HANDED {
            return Err(bad());
        }
        out.push((fd, name.to_owned()));
    }
    Ok(out)
}

/// The kept sockets that came back, sorted by what they are.
#[derive(Debug, Default)]
pub struct Resumed {
    /// `host.sock`, bound by the hvsockd before (its file is hvsockd's).
    pub host: Option<(OwnedFd, String)>,
    /// `admin.sock`, likewise.
    pub admin: Option<(OwnedFd, String)>,
    /// Partition endpoints, by partition.
    pub endpoints: HashMap<VmId, (OwnedFd, String)>,
    /// Guest ports, by VM and port.
    pub guest_ports: HashMap<(VmId, u32), (OwnedFd, String)>,
    /// Client sessions, with their number and record.
    pub sessions: Vec<(OwnedFd, String, u64, SessionRecord)>,
    /// Names that were refused, with why (their sockets are closed).
    pub refused: Vec<(String, String)>,
}

impl Resumed {
    /// How many sockets came back.
    pub fn len(&self) -> usize {
        usize::from(self.host.is_some())
            + usize::from(self.admin.is_some())
            + self.endpoints.len()
            + self.guest_ports.len()
            + self.sessions.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits passed descriptors into hvsockd's kept sockets and the rest (socket activation's).
/// A kept name that does not decode, or a second socket of one kind, is refused and closed.
pub fn sort(fds: Vec<(OwnedFd, String)>) -> (Resumed, Vec<(OwnedFd, String)>) {
    let mut resumed = Resumed::default();
    let mut rest = Vec::new();
    for (fd, name) in fds {
        if !is_kept_name(&name) {
            rest.push((fd, name));
            continue;
        }
        let kept = match Kept::parse(&name) {
            Ok(kept) => kept,
            Err(e) => {
                resumed.refused.push((name, e.to_string()));
                continue;
            }
        };
        let duplicate = match kept {
            Kept::Host => resumed.host.replace((fd, name.clone())).is_some(),
            Kept::Admin => resumed.admin.replace((fd, name.clone())).is_some(),
            Kept::Endpoint(vm) => resumed.endpoints.insert(vm, (fd, name.clone())).is_some(),
            Kept::GuestPort { vm, port } => resumed
                .guest_ports
                .insert((vm, port), (fd, name.clone()))
                .is_some(),
            Kept::Session(n, record) => {
                resumed.sessions.push((fd, name.clone(), n, record));
                false
            }
        };
        if duplicate {
            resumed.refused.push((
                name,
                "two sockets under one name; the later one is kept".into(),
            ));
        }
    }
    (resumed, rest)
}
