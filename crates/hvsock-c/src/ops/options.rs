//! Socket options and `epoll_ctl` on `AF_HYPERV` descriptors.

use super::*;

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
