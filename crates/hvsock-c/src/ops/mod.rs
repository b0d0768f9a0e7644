//! The socket calls on `AF_HYPERV` descriptors.
//!
//! Each function returns `None` when the descriptor is not an `AF_HYPERV` one (the caller then
//! passes the call on to libc unchanged), else the call's result. The life of a descriptor:
//!
//! ```text
//! socket() ─► Unconnected (stand-in: an unconnected AF_UNIX stream socket)
//!   │  bind(): records the address (hvsockd checks it at listen())
//!   ├─ listen() ── hvsock HvListener::bind ──► Listening (the listener's session socket, in place)
//!   ├─ connect(), blocking ── HvStream::connect ──► Connected (the kernel socket, in place)
//!   │                                         └─ failure: stays Unconnected, -1 and errno
//!   └─ connect(), O_NONBLOCK ─► EINPROGRESS; the descriptor is a pipe's read end meanwhile
//!        helper thread ── HvStream::connect ──► Connected, or back to the stand-in with SO_ERROR set;
//!        either way the pipe's write end is closed, which wakes poll/select.
//! accept() on Listening ─► a new Connected descriptor
//! ```
//!
//! "In place" is [`swap_in`]: `dup3` onto the descriptor number, keeping its close-on-exec flag
//! and its file's `O_NONBLOCK`, setting again the `SOL_SOCKET` options set on the stand-in, and
//! moving the epoll registrations made on it (`epoll_ctl` is watched for descriptors in the
//! Unconnected state), so that an event loop that registered the socket before the connect
//! completed is told when it completes.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use hvsock::{HvListener, HvStream, SockAddrHv, Transport};
use libc::{sockaddr, socklen_t};

use crate::error::{Error, Result};
use crate::real::{self, sys};
use crate::table::{self, Connecting, Entry, SockOpt, State, Unconnected, Watch, guarded};
use crate::types::{
    AF_HYPERV, HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT, HVSOCKET_CONNECTED_SUSPEND,
};

mod connect;
mod options;

pub(crate) use connect::connect;
use connect::fork_safe;
pub(crate) use options::{epoll_ctl, getsockopt, setsockopt};

/// The largest backlog hvsockd takes.
const MAX_BACKLOG: c_int = 4096;

fn err(errno: c_int, message: impl Into<String>) -> Error {
    Error::new(errno, message)
}

fn os(call: &str, e: std::io::Error) -> Error {
    Error::io(call, &e)
}

/// `socket(AF_HYPERV, type, protocol)`; `None` for any other domain.
pub(crate) fn socket(domain: c_int, ty: c_int, protocol: c_int) -> Option<Result<c_int>> {
    if domain != AF_HYPERV {
        return None;
    }
    Some(new_socket(ty, protocol))
}

fn new_socket(ty: c_int, protocol: c_int) -> Result<c_int> {
    fork_safe();
    let flags = ty & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != libc::SOCK_STREAM {
        return Err(err(
            libc::ESOCKTNOSUPPORT,
            "socket: AF_HYPERV sockets are SOCK_STREAM only",
        ));
    }
    if protocol != 0 && protocol != HV_PROTOCOL_RAW {
        return Err(err(
            libc::EPROTONOSUPPORT,
            format!("socket: protocol {protocol} is not HV_PROTOCOL_RAW (1)"),
        ));
    }
    let transport = guarded(Transport::from_env).map_err(|e| {
        err(
            libc::EAFNOSUPPORT,
            format!("socket: AF_HYPERV is not available: {e}"),
        )
    })?;
    if transport == Transport::HyperV {
        return Err(err(
            libc::EAFNOSUPPORT,
            "socket: HVSOCK_TRANSPORT=hyperv is Windows' own AF_HYPERV; on Linux use the provider (hvsockd, the default) or, inside a guest, vsock",
        ));
    }
    let standin = sys::standin(flags).map_err(|e| os("socket", e))?;
    let ident = sys::ident(standin.as_raw_fd())
        .ok_or_else(|| err(libc::EBADF, "socket: the new descriptor vanished"))?;
    let fd = standin.into_raw_fd();
    table::lock().insert(
        fd,
        ident,
        State::Unconnected(Box::new(Unconnected {
            transport,
            bound: None,
            error: (0, String::new()),
            connecting: None,
            opts: Vec::new(),
            watches: Vec::new(),
        })),
    );
    Ok(fd)
}

/// Reads a `SOCKADDR_HV` from C: length, then family, then the reserved field.
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
unsafe fn read_addr(call: &str, addr: *const sockaddr, len: socklen_t) -> Result<SockAddrHv> {
    if addr.is_null() {
        return Err(err(libc::EFAULT, format!("{call}: the address is NULL")));
    }
    let len = usize::try_from(len).unwrap_or(0);
    if len < 2 {
        return Err(err(
            libc::EINVAL,
            format!("{call}: an address of {len} bytes is too short for SOCKADDR_HV (36)"),
        ));
    }
    // SAFETY: at least 2 readable bytes (checked above; the caller vouches for `len`).
    let family = unsafe { addr.cast::<u16>().read_unaligned() };
    if i32::from(family) != AF_HYPERV {
        return Err(err(
            libc::EAFNOSUPPORT,
            format!("{call}: address family {family} on an AF_HYPERV socket (want AF_HYPERV, 34)"),
        ));
    }
    if len < hvsock::SockAddrHv::LEN {
        return Err(err(
            libc::EINVAL,
            format!("{call}: an address of {len} bytes is shorter than SOCKADDR_HV (36)"),
        ));
    }
    // SAFETY: at least 36 readable bytes (checked above).
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), hvsock::SockAddrHv::LEN) };
    SockAddrHv::from_bytes(bytes).map_err(|e| err(libc::EINVAL, format!("{call}: {e}")))
}

/// Writes `a` as a `SOCKADDR_HV` the way the kernel does: at most `*len` bytes, and the full
/// size (36) into `*len`.
///
/// # Safety
///
/// `addr` is null or points to `*len` writable bytes; `len` is null or valid.
pub(crate) unsafe fn write_addr(
    call: &str,
    a: SockAddrHv,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<()> {
    if addr.is_null() {
        return Ok(());
    }
    if len.is_null() {
        return Err(err(
            libc::EFAULT,
            format!("{call}: the address length is NULL"),
        ));
    }
    let bytes = a.to_bytes();
    // SAFETY: `len` is valid (checked above).
    let room = usize::try_from(unsafe { len.read() }).unwrap_or(0);
    let n = room.min(bytes.len());
    // SAFETY: the caller gave `room` writable bytes at `addr`; n <= room.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), n);
        len.write(bytes.len() as socklen_t);
    }
    Ok(())
}

/// Puts `new` in place of the file `fd` refers to (see the module docs) and returns the
/// identity of `fd`'s file afterwards. `watches` are moved unless `move_watches` is false (in a
/// forked child, whose epoll instances are the parent's too).
fn swap_in(
    fd: RawFd,
    new: OwnedFd,
    watches: &[Watch],
    move_watches: bool,
) -> std::io::Result<sys::Ident> {
    let cloexec = sys::fcntl_get(fd, libc::F_GETFD)? & libc::FD_CLOEXEC != 0;
    let nonblocking = sys::fcntl_get(fd, libc::F_GETFL)? & libc::O_NONBLOCK != 0;
    sys::set_nonblocking(new.as_raw_fd(), nonblocking)?;
    let live: Vec<&Watch> = watches
        .iter()
        .filter(|w| move_watches && w.epoll.is_some() && sys::ident(w.epfd) == w.epoll)
        .collect();
    for w in &live {
        // SAFETY: deleting `fd` from an epoll instance the program registered it in.
        unsafe { real::epoll_ctl(w.epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }
    sys::dup3(
        new.as_raw_fd(),
        fd,
        if cloexec { libc::O_CLOEXEC } else { 0 },
    )?;
    sys::close(new);
    for w in &live {
        let mut event = w.event;
        // SAFETY: registering `fd` (now the new file) with the program's own event data.
        unsafe { real::epoll_ctl(w.epfd, libc::EPOLL_CTL_ADD, fd, &mut event) };
    }
    sys::ident(fd).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
}

/// Sets the options recorded on the stand-in again on the kernel socket now at `fd`; those that
/// do not apply to it (e.g. `SO_REUSEADDR` on hvsockd's socket) are dropped.
fn replay(fd: RawFd, opts: &[SockOpt]) {
    for o in opts {
        // SAFETY: `value` holds `len` bytes, read by the kernel only.
        unsafe {
            real::setsockopt(
                fd,
                o.level,
                o.name,
                o.value.as_ptr().cast(),
                o.value.len() as socklen_t,
            );
        }
    }
}

fn unconnected<'a>(entry: &'a mut Entry, call: &str) -> Result<&'a mut Unconnected> {
    match &mut entry.state {
        State::Unconnected(unc) => Ok(unc),
        State::Listening(_) => Err(err(
            libc::EINVAL,
            format!("{call}: the socket is listening"),
        )),
        State::Connected { .. } => Err(err(
            libc::EISCONN,
            format!("{call}: the socket is connected"),
        )),
    }
}

/// `bind`: checks and records the address; hvsockd sees it at `listen`.
///
/// # Safety
///
/// As `bind(2)`.
pub(crate) unsafe fn bind(
    fd: RawFd,
    addr: *const sockaddr,
    len: socklen_t,
) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.lookup(fd)?;
    Some((|| {
        let unc = unconnected(entry, "bind")?;
        if unc.connecting.is_some() {
            return Err(err(
                libc::EINVAL,
                "bind: a connect is under way on this socket",
            ));
        }
        if unc.bound.is_some() {
            return Err(err(libc::EINVAL, "bind: the socket is already bound"));
        }
        // SAFETY: the caller's contract.
        let a = unsafe { read_addr("bind", addr, len) }?;
        unc.bound = Some(a);
        Ok(0)
    })())
}

/// `listen`: binds the recorded address through hvsockd (or vsock) and puts the listener in
/// place.
pub(crate) fn listen(fd: RawFd, backlog: c_int) -> Option<Result<c_int>> {
    let (serial, job, transport, addr) = {
        let mut t = table::lock();
        let entry = t.lookup(fd)?;
        let serial = entry.serial;
        let unc = match &mut entry.state {
            State::Listening(_) => return Some(Ok(0)),
            State::Connected { .. } => {
                return Some(Err(err(libc::EINVAL, "listen: the socket is connected")));
            }
            State::Unconnected(unc) => unc,
        };
        if unc.connecting.is_some() {
            return Some(Err(err(
                libc::EINVAL,
                "listen: a connect is under way on this socket",
            )));
        }
        let Some(addr) = unc.bound else {
            return Some(Err(err(
                libc::EINVAL,
                "listen: bind the socket to a SOCKADDR_HV first",
            )));
        };
        let job = Arc::new(());
        unc.connecting = Some(Connecting {
            job: job.clone(),
            standin: None,
            wake: None,
        });
        (serial, job, unc.transport.clone(), addr)
    };
    let backlog = u32::try_from(backlog.clamp(1, MAX_BACKLOG)).unwrap_or(1);
    let bound = guarded(|| HvListener::bind_with(&transport, addr, backlog));
    let mut t = table::lock();
    let entry = match t.lookup(fd) {
        Some(e) if e.serial == serial => e,
        // Closed (or replaced) while hvsockd answered: the listener goes with it.
        _ => {
            return Some(Err(err(
                libc::EBADF,
                "listen: the socket was closed meanwhile",
            )));
        }
    };
    let State::Unconnected(unc) = &mut entry.state else {
        return Some(Err(err(
            libc::EBADF,
            "listen: the socket changed meanwhile",
        )));
    };
    if !unc
        .connecting
        .as_ref()
        .is_some_and(|c| Arc::ptr_eq(&c.job, &job))
    {
        return Some(Err(err(
            libc::EBADF,
            "listen: the socket changed meanwhile",
        )));
    }
    unc.connecting = None;
    let (watches, opts) = (unc.watches.clone(), unc.opts.clone());
    let mut listener = match bound {
        Ok(l) => l,
        Err(e) => return Some(Err(Error::io(&format!("listen on {addr}"), &e))),
    };
    let placed = (|| {
        let session = sys::dup(listener.as_raw_fd()).map_err(|e| os("listen", e))?;
        let ident = swap_in(fd, session, &watches, true).map_err(|e| os("listen", e))?;
        if sys::ident(listener.as_raw_fd()) != Some(ident) {
            return Err(err(
                libc::EIO,
                "listen: the descriptor is not the listener's after dup3",
            ));
        }
        // SAFETY: `fd` now refers to the listener's socket (checked just above); from here the
        // listener owns that number, and the entry owns the listener.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        listener.replace_fd(owned).map_err(|e| os("listen", e))?;
        replay(fd, &opts);
        Ok(ident)
    })();
    Some(placed.map(|ident| {
        entry.ident = ident;
        entry.state = State::Listening(Arc::new(listener));
        0
    }))
}

/// `accept4` (and `accept`, with no flags).
///
/// # Safety
///
/// As `accept4(2)`.
pub(crate) unsafe fn accept4(
    fd: RawFd,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Option<Result<c_int>> {
    let listener = {
        let mut t = table::lock();
        let entry = t.lookup(fd)?;
        match &entry.state {
            State::Listening(l) => l.clone(),
            _ => {
                return Some(Err(err(
                    libc::EINVAL,
                    "accept: the socket is not listening",
                )));
            }
        }
    };
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Some(Err(err(
            libc::EINVAL,
            format!("accept4: unknown flags {flags:#x}"),
        )));
    }
    let accepted = guarded(|| listener.accept());
    drop(listener);
    let (stream, peer) = match accepted {
        Ok(got) => got,
        Err(e) => return Some(Err(Error::io("accept", &e))),
    };
    Some((|| {
        let local = stream.local_addr().map_err(|e| os("accept", e))?;
        if flags & libc::SOCK_NONBLOCK != 0 {
            stream.set_nonblocking(true).map_err(|e| os("accept", e))?;
        }
        let owned = OwnedFd::from(stream);
        if flags & libc::SOCK_CLOEXEC == 0 {
            sys::fcntl_set(owned.as_raw_fd(), libc::F_SETFD, 0).map_err(|e| os("accept", e))?;
        }
        let ident = sys::ident(owned.as_raw_fd())
            .ok_or_else(|| err(libc::EBADF, "accept: the new descriptor vanished"))?;
        // SAFETY: the caller's contract.
        unsafe { write_addr("accept", peer, addr, len) }?;
        let newfd = owned.into_raw_fd();
        table::lock().insert(newfd, ident, State::Connected { local, peer });
        Ok(newfd)
    })())
}

/// `close`.
pub(crate) fn close(fd: RawFd) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.remove(fd)?;
    match entry.state {
        State::Listening(listener) => {
            drop(t);
            // The listener owns the descriptor: dropping it closes it (and ends the session,
            // which unbinds the address), once no accept is using it any more.
            drop(listener);
            Some(Ok(0))
        }
        State::Unconnected(unc) => {
            // SAFETY: closing the program's own descriptor, as it asked.
            let r = unsafe { real::close(fd) };
            let errno = crate::error::errno();
            if let Some(c) = unc.connecting {
                if let Some(s) = c.standin {
                    sys::close(s);
                }
                if let Some(w) = c.wake {
                    sys::close(w);
                }
            }
            Some(if r == 0 {
                Ok(0)
            } else {
                Err(err(errno, "close failed"))
            })
        }
        State::Connected { .. } => {
            // SAFETY: as above.
            let r = unsafe { real::close(fd) };
            let errno = crate::error::errno();
            Some(if r == 0 {
                Ok(0)
            } else {
                Err(err(errno, "close failed"))
            })
        }
    }
}

/// `getsockname` (`peer` false) or `getpeername` (`peer` true).
///
/// # Safety
///
/// As `getsockname(2)`.
pub(crate) unsafe fn name(
    fd: RawFd,
    peer: bool,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<Result<c_int>> {
    let call = if peer { "getpeername" } else { "getsockname" };
    let a = {
        let mut t = table::lock();
        let entry = t.lookup(fd)?;
        match (&entry.state, peer) {
            (State::Connected { local, .. }, false) => *local,
            (State::Connected { peer, .. }, true) => *peer,
            (State::Listening(l), false) => match l.local_addr() {
                Ok(a) => a,
                Err(e) => return Some(Err(os(call, e))),
            },
            (State::Unconnected(unc), false) => unc.bound.unwrap_or_default(),
            (_, true) => {
                return Some(Err(err(
                    libc::ENOTCONN,
                    "getpeername: the socket is not connected",
                )));
            }
        }
    };
    // SAFETY: the caller's contract.
    Some(unsafe { write_addr(call, a, addr, len) }.map(|()| 0))
}
