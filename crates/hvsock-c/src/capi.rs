//! The exported `hv_*` functions of `<hvsocket.h>`.
//!
//! Each socket call is a drop-in for the libc call of the same name: on an `AF_HYPERV`
//! descriptor it does the Hyper-V thing, on any other it calls libc's (so a program may even
//! `#define connect hv_connect`). Failures return -1 (or the documented value) with `errno`
//! set and a message for `hv_last_error()`. A panic never crosses into C: it becomes `EIO`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hvsock::{Guid, ServiceId, SockAddrHv};
use libc::{sockaddr, socklen_t};

use crate::error::{self, Error, Result};
use crate::table::{self, MARKS};
use crate::types::{GUID, HV_GUID_STRING_SIZE, SOCKADDR_HV};
use crate::{ops, real};

/// Runs `f` at the C boundary: its error (or a panic) becomes -1, errno and the message.
fn boundary(f: impl FnOnce() -> Result<c_int>) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::new(
            libc::EIO,
            "libhvsock: internal error (a panic); please report it",
        ))
    });
    match r {
        Ok(v) => v,
        Err(e) => {
            error::set(&e);
            -1
        }
    }
}

/// Whether a call on `fd` is libhvsock's to make (else it goes to libc as it is).
fn ours(fd: c_int) -> bool {
    MARKS.contains(fd) && !table::inside()
}

/// Runs an `AF_HYPERV` operation that may find `fd` is not one after all (`None`), in which
/// case `forward` makes the libc call.
fn dispatch(op: impl FnOnce() -> Option<Result<c_int>>, forward: impl FnOnce() -> c_int) -> c_int {
    let mut forward = Some(forward);
    let mut forwarded = None;
    let r = boundary(|| match op() {
        Some(r) => r,
        None => {
            forwarded = forward.take().map(|f| f());
            Ok(0)
        }
    });
    forwarded.unwrap_or(r)
}

/// The body of an `hv_*` call on a descriptor: libc's call for a descriptor that is not
/// `AF_HYPERV`, else libhvsock's (which may still find it is not, and call libc's).
macro_rules! on_fd {
    ($fd:expr, $op:expr, $real:expr) => {{
        if !ours($fd) {
            // SAFETY: the caller's contract is the libc function's; passed on unchanged.
            return unsafe { $real };
        }
        dispatch(
            // SAFETY: as above; libhvsock's version has the same contract.
            || unsafe { $op },
            // SAFETY: as above.
            || unsafe { $real },
        )
    }};
}

/// `socket(2)`: `AF_HYPERV` (`SOCK_STREAM`, protocol 0 or `HV_PROTOCOL_RAW`) makes a Hyper-V
/// socket; any other domain is libc's.
#[unsafe(no_mangle)]
pub extern "C" fn hv_socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    if domain != crate::types::AF_HYPERV || table::inside() {
        // SAFETY: libc's socket with the caller's own integer arguments.
        return unsafe { real::socket(domain, ty, protocol) };
    }
    dispatch(
        || ops::socket(domain, ty, protocol),
        // SAFETY: as above.
        || unsafe { real::socket(domain, ty, protocol) },
    )
}

/// `bind(2)`: on an `AF_HYPERV` socket, records a `SOCKADDR_HV`; hvsockd checks it at
/// `listen()`.
///
/// # Safety
///
/// As `bind(2)`: `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    on_fd!(fd, ops::bind(fd, addr, len), real::bind(fd, addr, len))
}

/// `listen(2)`: on an `AF_HYPERV` socket, binds its address through hvsockd (or vsock in a
/// guest) and starts taking connections (`backlog` 1 to 4096).
#[unsafe(no_mangle)]
pub extern "C" fn hv_listen(fd: c_int, backlog: c_int) -> c_int {
    if !ours(fd) {
        // SAFETY: libc's listen with the caller's integer arguments.
        return unsafe { real::listen(fd, backlog) };
    }
    dispatch(
        || ops::listen(fd, backlog),
        // SAFETY: as above.
        || unsafe { real::listen(fd, backlog) },
    )
}

/// `accept(2)`: on a listening `AF_HYPERV` socket, the next connection as a new descriptor
/// (a plain kernel socket) and the peer's `SOCKADDR_HV`.
///
/// # Safety
///
/// As `accept(2)`: `addr` is NULL or points to `*len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    on_fd!(
        fd,
        ops::accept4(fd, addr, len, 0),
        real::accept(fd, addr, len)
    )
}

/// `accept4(2)`: as `hv_accept`, with `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
///
/// # Safety
///
/// As `accept4(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    on_fd!(
        fd,
        ops::accept4(fd, addr, len, flags),
        real::accept4(fd, addr, len, flags)
    )
}

/// `connect(2)`: on an `AF_HYPERV` socket, connects to a `SOCKADDR_HV` (waiting at most
/// `HVSOCKET_CONNECT_TIMEOUT`); with `O_NONBLOCK`, -1/`EINPROGRESS`, then writable when done
/// with the result in `SO_ERROR`.
///
/// # Safety
///
/// As `connect(2)`: `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    on_fd!(
        fd,
        ops::connect(fd, addr, len),
        real::connect(fd, addr, len)
    )
}

/// `getsockname(2)`: on an `AF_HYPERV` socket, its `SOCKADDR_HV` (this partition's id and the
/// service once connected).
///
/// # Safety
///
/// As `getsockname(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_getsockname(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    on_fd!(
        fd,
        ops::name(fd, false, addr, len),
        real::getsockname(fd, addr, len)
    )
}

/// `getpeername(2)`: on a connected `AF_HYPERV` socket, the peer's `SOCKADDR_HV`.
///
/// # Safety
///
/// As `getpeername(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_getpeername(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    on_fd!(
        fd,
        ops::name(fd, true, addr, len),
        real::getpeername(fd, addr, len)
    )
}

/// `setsockopt(2)`: on an `AF_HYPERV` socket, level `HV_PROTOCOL_RAW` takes
/// `HVSOCKET_CONNECT_TIMEOUT` (milliseconds) and `HVSOCKET_CONNECTED_SUSPEND` (0 only); other
/// `SOL_SOCKET` options go to the kernel socket (set before `connect`, they are kept for it).
///
/// # Safety
///
/// As `setsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    on_fd!(
        fd,
        ops::setsockopt(fd, level, name, val, len),
        real::setsockopt(fd, level, name, val, len)
    )
}

/// `getsockopt(2)`: on an `AF_HYPERV` socket, `SO_ERROR` (a non-blocking connect's result),
/// `SO_DOMAIN` (`AF_HYPERV`), `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN`,
/// `HVSOCKET_CONNECT_TIMEOUT`; others from the kernel socket.
///
/// # Safety
///
/// As `getsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    on_fd!(
        fd,
        ops::getsockopt(fd, level, name, val, len),
        real::getsockopt(fd, level, name, val, len)
    )
}

/// `close(2)`: on an `AF_HYPERV` socket also forgets it (a listener stops listening at once,
/// a connect under way is abandoned).
#[unsafe(no_mangle)]
pub extern "C" fn hv_close(fd: c_int) -> c_int {
    if !ours(fd) {
        // SAFETY: libc's close of the caller's descriptor.
        return unsafe { real::close(fd) };
    }
    dispatch(
        || ops::close(fd),
        // SAFETY: as above.
        || unsafe { real::close(fd) },
    )
}

/// `epoll_ctl(2)`: as libc's; registrations of an `AF_HYPERV` socket made before it is
/// connected follow it when its kernel socket is put in place.
///
/// # Safety
///
/// As `epoll_ctl(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> c_int {
    on_fd!(
        fd,
        ops::epoll_ctl(epfd, op, fd, event),
        real::epoll_ctl(epfd, op, fd, event)
    )
}

/// The message of this thread's last failed libhvsock call ("" if none): what was being done
/// and why. Valid until this thread's next failure.
#[unsafe(no_mangle)]
pub extern "C" fn hv_last_error() -> *const c_char {
    error::last_message()
}

/// Reads `text` as a GUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, braces allowed) into
/// `*out`. Returns 0, or -1 with `EINVAL`.
///
/// # Safety
///
/// `text` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_guid_parse(text: *const c_char, out: *mut GUID) -> c_int {
    boundary(|| {
        if text.is_null() || out.is_null() {
            return Err(Error::new(libc::EFAULT, "hv_guid_parse: NULL argument"));
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        let g = Guid::parse(&text)
            .map_err(|e| Error::new(libc::EINVAL, format!("hv_guid_parse: {e}")))?;
        // SAFETY: `out` is writable (the caller's contract).
        unsafe { out.write(g.into()) };
        Ok(0)
    })
}

/// Writes `*guid` as text (36 characters, lowercase, and a NUL) into `buf` of `size` bytes
/// (at least `HV_GUID_STRING_SIZE`). Returns 0, or -1 with `ERANGE` if `buf` is too small.
///
/// # Safety
///
/// `guid` is NULL or readable; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_guid_format(guid: *const GUID, buf: *mut c_char, size: usize) -> c_int {
    boundary(|| {
        if guid.is_null() || buf.is_null() {
            return Err(Error::new(libc::EFAULT, "hv_guid_format: NULL argument"));
        }
        if size < HV_GUID_STRING_SIZE {
            return Err(Error::new(
                libc::ERANGE,
                format!(
                    "hv_guid_format: the buffer has {size} bytes, a GUID needs {HV_GUID_STRING_SIZE}"
                ),
            ));
        }
        // SAFETY: readable (the caller's contract).
        let g = Guid::from(unsafe { guid.read_unaligned() });
        let text = g.to_string();
        // SAFETY: 37 writable bytes at least (checked above); the text is 36 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            buf.add(text.len()).write(0);
        }
        Ok(0)
    })
}

/// The service GUID of vsock port `port`: the vsock template
/// (`00000000-facb-11e6-bd58-64006a7986d3`) with `Data1` = `port`. Only such services cross
/// into a Linux guest.
#[unsafe(no_mangle)]
pub extern "C" fn hv_guid_from_vsock_port(port: u32) -> GUID {
    ServiceId::from_vsock_port(port).0.into()
}

/// If `*guid` is a vsock-template GUID, stores its port in `*port` and returns 0; else -1
/// with `EINVAL`.
///
/// # Safety
///
/// `guid` is NULL or readable; `port` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_guid_vsock_port(guid: *const GUID, port: *mut u32) -> c_int {
    boundary(|| {
        if guid.is_null() || port.is_null() {
            return Err(Error::new(
                libc::EFAULT,
                "hv_guid_vsock_port: NULL argument",
            ));
        }
        // SAFETY: readable (the caller's contract).
        let g = Guid::from(unsafe { guid.read_unaligned() });
        match ServiceId(g).vsock_port() {
            Some(p) => {
                // SAFETY: writable (the caller's contract).
                unsafe { port.write(p) };
                Ok(0)
            }
            None => Err(Error::new(
                libc::EINVAL,
                format!(
                    "hv_guid_vsock_port: {g} is not a vsock-template GUID (xxxxxxxx-facb-11e6-bd58-64006a7986d3)"
                ),
            )),
        }
    })
}

/// Reads an address as the `hvsock` CLI writes it, `VM:SERVICE` (VM a GUID or `wildcard`,
/// `zero`, `children`, `loopback`, `parent`, `broadcast`, `silohost`; SERVICE a GUID or a
/// decimal vsock port), into `*out`. Returns 0, or -1 with `EINVAL`.
///
/// # Safety
///
/// `text` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hv_sockaddr_parse(text: *const c_char, out: *mut SOCKADDR_HV) -> c_int {
    boundary(|| {
        if text.is_null() || out.is_null() {
            return Err(Error::new(libc::EFAULT, "hv_sockaddr_parse: NULL argument"));
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        let a: SockAddrHv = text
            .parse()
            .map_err(|e| Error::new(libc::EINVAL, format!("hv_sockaddr_parse: {e}")))?;
        // SAFETY: `out` is writable (the caller's contract).
        unsafe { out.write(a.into()) };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn guid_text_round_trip_and_errors() {
        let text = CString::new("{A42E7CDA-D03F-480C-9CC2-A4DE20ABB878}").unwrap_or_default();
        let mut g = GUID::default();
        // SAFETY: valid string and output.
        assert_eq!(unsafe { hv_guid_parse(text.as_ptr(), &mut g) }, 0);
        assert_eq!(Guid::from(g), hvsock::VmId::PARENT.0);
        let mut buf = [0 as c_char; 37];
        // SAFETY: 37 writable bytes.
        let r = unsafe { hv_guid_format(&g, buf.as_mut_ptr(), buf.len()) };
        assert_eq!(r, 0);
        // SAFETY: hv_guid_format wrote a NUL-terminated string.
        let out = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(
            out.to_str().ok(),
            Some("a42e7cda-d03f-480c-9cc2-a4de20abb878")
        );
        // SAFETY: as above, 36 bytes only: refused before writing.
        assert_eq!(unsafe { hv_guid_format(&g, buf.as_mut_ptr(), 36) }, -1);
        assert_eq!(error::errno(), libc::ERANGE);
        let bad = CString::new("not-a-guid").unwrap_or_default();
        // SAFETY: valid string and output.
        assert_eq!(unsafe { hv_guid_parse(bad.as_ptr(), &mut g) }, -1);
        assert_eq!(error::errno(), libc::EINVAL);
        assert!(error::last_message_string().contains("not-a-guid"));
    }

    #[test]
    fn vsock_ports_and_templates() {
        let g = hv_guid_from_vsock_port(5000);
        assert_eq!(
            Guid::from(g).to_string(),
            "00001388-facb-11e6-bd58-64006a7986d3"
        );
        let mut port = 0;
        // SAFETY: valid pointers.
        assert_eq!(unsafe { hv_guid_vsock_port(&g, &mut port) }, 0);
        assert_eq!(port, 5000);
        let other = GUID::from(hvsock::VmId::PARENT.0);
        // SAFETY: valid pointers.
        assert_eq!(unsafe { hv_guid_vsock_port(&other, &mut port) }, -1);
        assert_eq!(error::errno(), libc::EINVAL);
    }

    #[test]
    fn addresses_parse_like_the_cli() {
        let mut a = SOCKADDR_HV::default();
        let text = CString::new("parent:5000").unwrap_or_default();
        // SAFETY: valid string and output.
        assert_eq!(unsafe { hv_sockaddr_parse(text.as_ptr(), &mut a) }, 0);
        assert_eq!(
            SockAddrHv::from(a),
            SockAddrHv::new(hvsock::VmId::PARENT, ServiceId::from_vsock_port(5000))
        );
        assert_eq!(i32::from(a.Family), crate::types::AF_HYPERV);
        let text = CString::new("parent").unwrap_or_default();
        // SAFETY: valid string and output.
        assert_eq!(unsafe { hv_sockaddr_parse(text.as_ptr(), &mut a) }, -1);
        assert_eq!(error::errno(), libc::EINVAL);
    }
}
