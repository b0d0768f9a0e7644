//! The plain libc names, exported by the C library (feature `capi`, which cargo-c sets): a
//! program written for `AF_HYPERV` calls `socket`, `connect`, `close`... and gets libhvsock's,
//! which handle `AF_HYPERV` descriptors and pass every other call to the next definition
//! (libc's) untouched. Linked with `-lhvsock`, or loaded first with `LD_PRELOAD`.
//!
//! Each is the `hv_*` function of the same name (see [`crate::capi`]); `epoll_ctl` is here so
//! that registrations of a socket made before its connect completes follow it.

#![allow(clippy::missing_safety_doc)] // each has the contract of the libc function it replaces

use std::ffi::{c_int, c_void};

use libc::{sockaddr, socklen_t};

use crate::capi;

#[unsafe(no_mangle)]
pub extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    capi::hv_socket(domain, ty, protocol)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller's contract is bind(2)'s, which hv_bind has.
    unsafe { capi::hv_bind(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    capi::hv_listen(fd, backlog)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: as accept(2), which hv_accept has.
    unsafe { capi::hv_accept(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: as accept4(2), which hv_accept4 has.
    unsafe { capi::hv_accept4(fd, addr, len, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: as connect(2), which hv_connect has.
    unsafe { capi::hv_connect(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: as getsockname(2), which hv_getsockname has.
    unsafe { capi::hv_getsockname(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: as getpeername(2), which hv_getpeername has.
    unsafe { capi::hv_getpeername(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: as setsockopt(2), which hv_setsockopt has.
    unsafe { capi::hv_setsockopt(fd, level, name, val, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: as getsockopt(2), which hv_getsockopt has.
    unsafe { capi::hv_getsockopt(fd, level, name, val, len) }
}

#[unsafe(no_mangle)]
pub extern "C" fn close(fd: c_int) -> c_int {
    capi::hv_close(fd)
}

// In a fully static link with musl, whose libc.a defines epoll_ctl in one object with the rest of
// epoll, a program that uses epoll gets "multiple definition of epoll_ctl": link it with
// -Wl,--allow-multiple-definition (libhvsock.a before libc, so this one wins). docs/c.md says so.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> c_int {
    // SAFETY: as epoll_ctl(2), which hv_epoll_ctl has.
    unsafe { capi::hv_epoll_ctl(epfd, op, fd, event) }
}
