//! libhvsock: the Hyper-V socket API of the Microsoft document "Make your own integration
//! services" for C (and every language with a C FFI) on Linux, over the `hvsock` crate.
//!
//! Two ways to call it, one implementation:
//!
//! - **explicit**: `hv_socket`, `hv_bind`, `hv_listen`, `hv_accept`, `hv_accept4`, `hv_connect`,
//!   `hv_getsockname`, `hv_getpeername`, `hv_setsockopt`, `hv_getsockopt`, `hv_close` (and
//!   `hv_epoll_ctl`), declared in `<hvsocket.h>`. Each is a drop-in for the libc call of the same
//!   name: it handles `AF_HYPERV` descriptors and passes every other one to libc.
//! - **unchanged programs**: the C library (built by cargo-c with the `capi` feature) also
//!   exports the plain names (`socket`, `bind`, `connect`, `close`, ...), so a program written
//!   for `AF_HYPERV` works when linked with `-lhvsock` or run under `LD_PRELOAD`; everything
//!   that is not `AF_HYPERV` goes on to the next definition (libc) untouched.
//!
//! `docs/c.md` in the repository is the user's guide (building, linking, preloading, the errno
//! table, what differs from Windows). How a descriptor works:
//!
//! - `socket(AF_HYPERV, ...)` returns a real descriptor at once: a *stand-in*, an unconnected
//!   `AF_UNIX` stream socket, so that `fcntl`, `poll`, `close`, `dup` and `setsockopt` work on
//!   it from the start.
//! - `connect` and `listen` make the real socket through the `hvsock` crate (hvsockd's socket,
//!   or `AF_VSOCK` in a guest) and put it *in place* of the stand-in with `dup3`, keeping the
//!   descriptor number, its flags, the options set so far and its epoll registrations. From then
//!   on the descriptor is a plain kernel socket: `send`/`recv`/`poll`/`epoll`/`shutdown` are the
//!   kernel's own, untouched.
//! - A non-blocking `connect` returns `EINPROGRESS`, runs on a helper thread, and meanwhile the
//!   descriptor is the read end of an empty pipe (neither readable nor writable); when it is done
//!   the result is put in place and the pipe's other end is closed, which wakes `poll`/`select`;
//!   the result is in `SO_ERROR`.
//!
//! # Modules
//!
//! - [`types`]: the C types and constants of `<hvsocket.h>` (`GUID`, `SOCKADDR_HV`, `AF_HYPERV`,
//!   ...), and their conversion to the crate's types;
//! - [`error`]: the errno of every failure and the thread-local message (`hv_last_error`);
//! - [`real`]: the next definitions of the libc calls (`dlsym(RTLD_NEXT)`, else the raw system
//!   call), and the system calls libhvsock makes for itself;
//! - `table`: which descriptors are `AF_HYPERV` and in what state, thread- and fork-safe;
//! - `ops`: the socket calls on `AF_HYPERV` descriptors;
//! - [`capi`]: the exported `hv_*` functions and helpers; `interpose` (feature `capi`): the
//!   exported plain names.

pub mod capi;
pub mod error;
#[cfg(feature = "capi")]
mod interpose;
mod ops;
pub mod real;
mod table;
pub mod types;
