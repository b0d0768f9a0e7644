//! `connect`, blocking or not, and how a connect under way ends in a forked child.

use super::*;

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
pub(super) fn fork_safe() {
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
