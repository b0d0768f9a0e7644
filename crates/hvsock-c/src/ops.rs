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

/// `connect`: blocking, or `EINPROGRESS` and a helper thread on an `O_NONBLOCK` socket.
///
/// # Safety
///
/// As `connect(2)`.
pub(crate) unsafe fn connect(
    fd: RawFd,
    addr: *const sockaddr,
    len: socklen_t,
) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.lookup(fd)?;
    let serial = entry.serial;
    let timeout = entry.timeout;
    let started = (|| {
        let unc = unconnected(entry, "connect")?;
        if unc.connecting.is_some() {
            return Err(err(
                libc::EALREADY,
                "connect: a connect is already under way on this socket",
            ));
        }
        if unc.error.0 != 0 {
            // The earlier non-blocking connect failed and nobody read SO_ERROR: report it now,
            // as the kernel does for TCP.
            let (errno, message) = std::mem::take(&mut unc.error);
            return Err(err(errno, message));
        }
        // SAFETY: the caller's contract.
        let target = unsafe { read_addr("connect", addr, len) }?;
        let nonblocking = sys::fcntl_get(fd, libc::F_GETFL).map_err(|e| os("connect", e))?
            & libc::O_NONBLOCK
            != 0;
        let job = Arc::new(());
        let mut connecting = Connecting {
            job: job.clone(),
            standin: None,
            wake: None,
        };
        if nonblocking {
            let standin = sys::dup(fd).map_err(|e| os("connect", e))?;
            let (read, write) = sys::pipe().map_err(|e| os("connect", e))?;
            let ident = swap_in(fd, read, &unc.watches, true).map_err(|e| os("connect", e))?;
            connecting.standin = Some(standin);
            connecting.wake = Some(write);
            unc.connecting = Some(connecting);
            return Ok((target, unc.transport.clone(), job, true, Some(ident)));
        }
        unc.connecting = Some(connecting);
        Ok((target, unc.transport.clone(), job, false, None))
    })();
    let (target, transport, job, nonblocking, ident) = match started {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    if let Some(ident) = ident {
        entry.ident = ident;
    }
    drop(t);
    if nonblocking {
        let thread_job = job.clone();
        let spawned = std::thread::Builder::new()
            .name("hvsock-connect".into())
            .spawn(move || {
                let result = guarded(|| HvStream::connect_with(&transport, target, timeout));
                let _ = finish_connect(fd, serial, &thread_job, target, result);
            });
        return Some(match spawned {
            Ok(_) => Err(err(
                libc::EINPROGRESS,
                format!("connect to {target}: in progress"),
            )),
            // No thread: put the stand-in back, and say so now.
            Err(e) => finish_connect(fd, serial, &job, target, Err(e)),
        });
    }
    let result = guarded(|| HvStream::connect_with(&transport, target, timeout));
    Some(finish_connect(fd, serial, &job, target, result))
}

/// Puts a connect's result in place, if the descriptor is still the one it was made for.
fn finish_connect(
    fd: RawFd,
    serial: u64,
    job: &Arc<()>,
    target: SockAddrHv,
    result: std::io::Result<HvStream>,
) -> Result<c_int> {
    let mut t = table::lock();
    let entry = match t.lookup(fd) {
        Some(e) if e.serial == serial => e,
        _ => return Err(err(libc::EBADF, "connect: the socket was closed meanwhile")),
    };
    let State::Unconnected(unc) = &mut entry.state else {
        return Err(err(libc::EBADF, "connect: the socket changed meanwhile"));
    };
    let mine = unc
        .connecting
        .as_ref()
        .is_some_and(|c| Arc::ptr_eq(&c.job, job));
    let Some(Connecting { standin, wake, .. }) = unc.connecting.take().filter(|_| mine) else {
        return Err(err(libc::EBADF, "connect: the socket changed meanwhile"));
    };
    let (watches, opts) = (unc.watches.clone(), unc.opts.clone());
    let placed: Result<(State, sys::Ident)> = match result {
        Ok(stream) => (|| {
            let local = stream.local_addr().map_err(|e| os("connect", e))?;
            let peer = stream.peer_addr().map_err(|e| os("connect", e))?;
            let ident =
                swap_in(fd, OwnedFd::from(stream), &watches, true).map_err(|e| os("connect", e))?;
            replay(fd, &opts);
            Ok((State::Connected { local, peer }, ident))
        })(),
        Err(e) => Err(Error::io(&format!("connect to {target}"), &e)),
    };
    let outcome = match placed {
        Ok((state, ident)) => {
            if let Some(s) = standin {
                sys::close(s);
            }
            entry.state = state;
            entry.ident = ident;
            Ok(0)
        }
        Err(e) => {
            if let Some(s) = standin {
                // Non-blocking: the stand-in comes back, with the error for SO_ERROR.
                if let Ok(ident) = swap_in(fd, s, &watches, true) {
                    entry.ident = ident;
                }
                if let State::Unconnected(unc) = &mut entry.state {
                    unc.error = (e.errno, e.message.clone());
                }
            }
            Err(e)
        }
    };
    // Closing the pipe's write end wakes poll/select waiting on its read end; they look at the
    // descriptor again and find the result in place.
    if let Some(w) = wake {
        sys::close(w);
    }
    outcome
}

/// In a forked child: a non-blocking connect's thread stayed in the parent, so its result never
/// comes here; the stand-in comes back with `ECONNABORTED` (epoll instances are shared with the
/// parent and left alone).
pub(crate) fn end_connect_in_child(fd: RawFd, entry: &mut Entry) -> Result<()> {
    let State::Unconnected(unc) = &mut entry.state else {
        return Ok(());
    };
    let Some(Connecting { standin, wake, .. }) = unc.connecting.take() else {
        return Ok(());
    };
    let mut ident = None;
    if let Some(s) = standin {
        ident = Some(swap_in(fd, s, &unc.watches, false).map_err(|e| os("fork", e))?);
        unc.error = (
            libc::ECONNABORTED,
            "connect: the process forked while the connect was under way; it completes in the parent only".into(),
        );
    }
    if let Some(w) = wake {
        sys::close(w);
    }
    if let Some(ident) = ident {
        entry.ident = ident;
    }
    Ok(())
}

/// Registers the fork handlers, once (before the first `AF_HYPERV` socket exists).
fn fork_safe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are plain functions that live as long as the process (a linked
        // or preloaded libhvsock is never unloaded).
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_parent),
                Some(after_fork_child),
            )
        };
    });
}

unsafe extern "C" fn before_fork() {
    table::hold_for_fork();
}

unsafe extern "C" fn after_fork_parent() {
    table::release_after_fork();
}

/// In the child: the threads running non-blocking connects stayed in the parent, so those
/// connects end here ([`end_connect_in_child`]); then the lock is released.
unsafe extern "C" fn after_fork_child() {
    let Some(mut locked) = table::held_after_fork() else {
        return;
    };
    for (&fd, entry) in locked.entries() {
        let _ = end_connect_in_child(fd, entry);
    }
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

/// Reads an `int`-sized option value.
///
/// # Safety
///
/// `val` is null or points to `len` readable bytes.
unsafe fn read_int(call: &str, val: *const c_void, len: socklen_t) -> Result<u32> {
    if val.is_null() || (len as usize) < 4 {
        return Err(err(
            libc::EINVAL,
            format!("{call}: the option value must be a 4-byte integer"),
        ));
    }
    // SAFETY: 4 readable bytes (checked above).
    Ok(unsafe { val.cast::<u32>().read_unaligned() })
}

/// Writes an `int` option value the way the kernel does.
///
/// # Safety
///
/// `val` points to `*len` writable bytes; `len` is valid.
unsafe fn write_int(val: *mut c_void, len: *mut socklen_t, v: i32) -> Result<c_int> {
    if val.is_null() || len.is_null() {
        return Err(err(libc::EFAULT, "getsockopt: NULL value or length"));
    }
    let bytes = v.to_ne_bytes();
    // SAFETY: `len` is valid; `val` has `*len` writable bytes and we write at most that.
    unsafe {
        let n = (len.read() as usize).min(4);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), n);
        len.write(n as socklen_t);
    }
    Ok(0)
}

/// The descriptor that answers options for an unconnected socket: the stand-in (set aside
/// while a non-blocking connect runs).
fn standin_of(fd: RawFd, unc: &Unconnected) -> RawFd {
    unc.connecting
        .as_ref()
        .and_then(|c| c.standin.as_ref())
        .map_or(fd, AsRawFd::as_raw_fd)
}

/// `setsockopt`. At level `HV_PROTOCOL_RAW` (= `SOL_SOCKET` on Linux) option 1 is
/// `HVSOCKET_CONNECT_TIMEOUT` and option 4 `HVSOCKET_CONNECTED_SUSPEND` on an `AF_HYPERV`
/// socket (not `SO_DEBUG` and `SO_ERROR`, which have no meaning there).
///
/// # Safety
///
/// As `setsockopt(2)`.
pub(crate) unsafe fn setsockopt(
    fd: RawFd,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.lookup(fd)?;
    Some((|| {
        if level == HV_PROTOCOL_RAW && name == HVSOCKET_CONNECT_TIMEOUT {
            // SAFETY: the caller's contract.
            let ms = unsafe { read_int("setsockopt(HVSOCKET_CONNECT_TIMEOUT)", val, len) }?;
            if ms == 0 {
                return Err(err(
                    libc::EINVAL,
                    "setsockopt: HVSOCKET_CONNECT_TIMEOUT must be at least 1 ms",
                ));
            }
            let ms = ms.min(crate::types::HVSOCKET_CONNECT_TIMEOUT_MAX);
            entry.timeout = Duration::from_millis(ms.into());
            return Ok(0);
        }
        if level == HV_PROTOCOL_RAW && name == HVSOCKET_CONNECTED_SUSPEND {
            // SAFETY: the caller's contract.
            let on = unsafe { read_int("setsockopt(HVSOCKET_CONNECTED_SUSPEND)", val, len) }?;
            if on == 0 {
                return Ok(0); // the default, which is all there is here
            }
            return Err(err(
                libc::ENOPROTOOPT,
                "setsockopt: HVSOCKET_CONNECTED_SUSPEND is a Windows AF_HYPERV option; hvsockd and AF_VSOCK connections have no equivalent",
            ));
        }
        let target = match &entry.state {
            State::Unconnected(unc) => standin_of(fd, unc),
            _ => fd,
        };
        // SAFETY: the caller's contract, passed on.
        let r = unsafe { real::setsockopt(target, level, name, val, len) };
        if r != 0 {
            return Err(err(
                crate::error::errno(),
                format!("setsockopt({level}, {name}) failed"),
            ));
        }
        if let State::Unconnected(unc) = &mut entry.state {
            if level == libc::SOL_SOCKET && !val.is_null() {
                // SAFETY: the kernel just read `len` bytes there.
                let value =
                    unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }.to_vec();
                unc.opts.retain(|o| !(o.level == level && o.name == name));
                unc.opts.push(SockOpt { level, name, value });
            }
        }
        Ok(0)
    })())
}

/// `getsockopt`: `SO_ERROR` of a non-blocking connect, the socket's own `SO_DOMAIN`
/// (`AF_HYPERV`), `SO_PROTOCOL`, `SO_TYPE`, `SO_ACCEPTCONN`, the connect timeout; the rest from
/// the kernel socket (or the stand-in).
///
/// # Safety
///
/// As `getsockopt(2)`.
pub(crate) unsafe fn getsockopt(
    fd: RawFd,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.lookup(fd)?;
    let listening = matches!(entry.state, State::Listening(_));
    let own = if level != libc::SOL_SOCKET {
        None
    } else {
        match name {
            libc::SO_DOMAIN => Some(AF_HYPERV),
            libc::SO_PROTOCOL => Some(HV_PROTOCOL_RAW),
            libc::SO_TYPE => Some(libc::SOCK_STREAM),
            libc::SO_ACCEPTCONN => Some(i32::from(listening)),
            n if n == HVSOCKET_CONNECT_TIMEOUT => {
                Some(i32::try_from(entry.timeout.as_millis()).unwrap_or(i32::MAX))
            }
            libc::SO_ERROR => match &mut entry.state {
                State::Unconnected(unc) => {
                    let (errno, message) = std::mem::take(&mut unc.error);
                    if errno != 0 {
                        // The reason goes with the number, for hv_last_error().
                        crate::error::set(&Error::new(errno, message));
                    }
                    Some(errno)
                }
                _ => None,
            },
            _ => None,
        }
    };
    if let Some(v) = own {
        // SAFETY: the caller's contract.
        return Some(unsafe { write_int(val, len, v) });
    }
    let target = match &entry.state {
        State::Unconnected(unc) => standin_of(fd, unc),
        _ => fd,
    };
    // SAFETY: the caller's contract, passed on.
    let r = unsafe { real::getsockopt(target, level, name, val, len) };
    Some(if r == 0 {
        Ok(0)
    } else {
        Err(err(
            crate::error::errno(),
            format!("getsockopt({level}, {name}) failed"),
        ))
    })
}

/// `epoll_ctl`: passed on, and remembered while the descriptor may still be replaced.
///
/// # Safety
///
/// As `epoll_ctl(2)`.
pub(crate) unsafe fn epoll_ctl(
    epfd: RawFd,
    op: c_int,
    fd: RawFd,
    event: *mut libc::epoll_event,
) -> Option<Result<c_int>> {
    let mut t = table::lock();
    let entry = t.lookup(fd)?;
    // SAFETY: the caller's contract, passed on.
    let r = unsafe { real::epoll_ctl(epfd, op, fd, event) };
    if r != 0 {
        return Some(Err(err(crate::error::errno(), "epoll_ctl failed")));
    }
    if let State::Unconnected(unc) = &mut entry.state {
        unc.watches.retain(|w| w.epfd != epfd);
        if (op == libc::EPOLL_CTL_ADD || op == libc::EPOLL_CTL_MOD) && !event.is_null() {
            {
                unc.watches.push(Watch {
                    epfd,
                    epoll: sys::ident(epfd),
                    // SAFETY: non-null, and the kernel just read it.
                    event: unsafe { event.read_unaligned() },
                });
            }
        }
    }
    Some(Ok(0))
}
