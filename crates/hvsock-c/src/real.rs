//! The next definitions of the calls libhvsock takes over, and the system calls it makes for
//! itself.
//!
//! When libhvsock exports `connect` (the C library), its own `connect` must reach libc's: the
//! next definition after libhvsock in the loader's search order, `dlsym(RTLD_NEXT, "connect")`.
//! That keeps any other interposer (a sanitizer, another preloaded library) in the chain. A
//! program linked fully statically has no loader and `dlsym` finds nothing; the raw system call
//! stands in then. Each lookup is made once and cached.
//!
//! Everything libhvsock does to descriptors for itself (`dup3`, `fcntl`, `fstat`, `pipe2`, and
//! the `close`/`epoll_ctl` of its own bookkeeping) goes through [`sys`] below, never through the
//! exported names, so it never re-enters libhvsock.

use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{sockaddr, socklen_t};

/// A cached `dlsym(RTLD_NEXT, name)`: 0 not looked up yet, 1 looked up and absent.
struct Next {
    name: &'static CStr,
    slot: AtomicUsize,
}

impl Next {
    const fn new(name: &'static CStr) -> Next {
        Next {
            name,
            slot: AtomicUsize::new(0),
        }
    }

    fn get(&self) -> Option<usize> {
        match self.slot.load(Ordering::Acquire) {
            1 => None,
            0 => {
                // SAFETY: `name` is a NUL-terminated string that lives forever; RTLD_NEXT asks
                // for the definition after this object's, which is what an interposer wants.
                let f = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
                self.slot
                    .store(if f == 0 { 1 } else { f }, Ordering::Release);
                (f != 0).then_some(f)
            }
            f => Some(f),
        }
    }
}

macro_rules! next_fns {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $sys:expr;
    )*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            ///
            /// The same as the libc function of that name: pointers valid for what it reads
            /// and writes.
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static NEXT: Next = Next::new(
                    match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                        Ok(name) => name,
                        Err(_) => panic!("symbol name"),
                    },
                );
                match NEXT.get() {
                    Some(f) => {
                        let f: unsafe extern "C" fn($($ty),*) -> $ret =
                            // SAFETY: `f` is the address dlsym gave for this very libc
                            // function, whose C signature is the one spelled here.
                            unsafe { std::mem::transmute::<usize, _>(f) };
                        // SAFETY: the caller upholds the function's contract.
                        unsafe { f($($arg),*) }
                    }
                    // The raw system call (its own SAFETY note is in `syscall_int!`).
                    None => $sys,
                }
            }
        )*
    };
}

/// A raw system call returning an `int` the libc way (-1 and errno on failure).
macro_rules! syscall_int {
    ($nr:expr $(, $arg:expr)*) => {{
        // SAFETY: the raw system call with the caller's own arguments (used only where no
        // libc definition exists); the kernel checks descriptors and pointers itself.
        let r = unsafe { libc::syscall($nr $(, $arg)*) };
        r as c_int
    }};
}

next_fns! {
    /// libc's `socket`.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int =
        syscall_int!(libc::SYS_socket, domain, ty, protocol);
    /// libc's `bind`.
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int =
        syscall_int!(libc::SYS_bind, fd, addr, len);
    /// libc's `listen`.
    fn listen(fd: c_int, backlog: c_int) -> c_int =
        syscall_int!(libc::SYS_listen, fd, backlog);
    /// libc's `accept`.
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int =
        syscall_int!(libc::SYS_accept4, fd, addr, len, 0);
    /// libc's `accept4`.
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int =
        syscall_int!(libc::SYS_accept4, fd, addr, len, flags);
    /// libc's `connect`.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int =
        syscall_int!(libc::SYS_connect, fd, addr, len);
    /// libc's `getsockname`.
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int =
        syscall_int!(libc::SYS_getsockname, fd, addr, len);
    /// libc's `getpeername`.
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int =
        syscall_int!(libc::SYS_getpeername, fd, addr, len);
    /// libc's `setsockopt`.
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int =
        syscall_int!(libc::SYS_setsockopt, fd, level, name, val, len);
    /// libc's `getsockopt`.
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int =
        syscall_int!(libc::SYS_getsockopt, fd, level, name, val, len);
    /// libc's `close`.
    fn close(fd: c_int) -> c_int =
        syscall_int!(libc::SYS_close, fd);
    /// libc's `epoll_ctl`.
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int =
        syscall_int!(libc::SYS_epoll_ctl, epfd, op, fd, event);
}

/// Resolves every next definition now (called once the first `AF_HYPERV` socket exists), so
/// that later calls, e.g. a `close` in a signal handler, never enter the dynamic loader.
pub fn resolve_all() {
    // SAFETY: invalid descriptors and null pointers: each call only fails with EBADF/EFAULT,
    // and the point is the lookup it makes on the way.
    unsafe {
        let errno = crate::error::errno();
        let _ = listen(-1, 0);
        let _ = bind(-1, std::ptr::null(), 0);
        let _ = accept(-1, std::ptr::null_mut(), std::ptr::null_mut());
        let _ = accept4(-1, std::ptr::null_mut(), std::ptr::null_mut(), 0);
        let _ = connect(-1, std::ptr::null(), 0);
        let _ = getsockname(-1, std::ptr::null_mut(), std::ptr::null_mut());
        let _ = getpeername(-1, std::ptr::null_mut(), std::ptr::null_mut());
        let _ = setsockopt(-1, 0, 0, std::ptr::null(), 0);
        let _ = getsockopt(-1, 0, 0, std::ptr::null_mut(), std::ptr::null_mut());
        let _ = close(-1);
        let _ = epoll_ctl(-1, 0, -1, std::ptr::null_mut());
        crate::error::set_errno(errno);
    }
}

/// libhvsock's own system calls on descriptors: libc functions it never exports, or the next
/// definitions of the ones it does.
pub mod sys {
    use std::ffi::c_int;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    fn check(r: c_int) -> io::Result<c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// The identity of the file a descriptor refers to: (device, inode).
    pub type Ident = (u64, u64);

    /// What `fd` refers to, or `None` if it is not open.
    pub fn ident(fd: RawFd) -> Option<Ident> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is writable storage for one `struct stat`.
        let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        // SAFETY: fstat succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Some((st.st_dev, st.st_ino))
    }

    /// `fcntl(fd, cmd)` for the commands without an argument.
    pub fn fcntl_get(fd: RawFd, cmd: c_int) -> io::Result<c_int> {
        // SAFETY: F_GETFD/F_GETFL take no argument and touch no memory.
        check(unsafe { libc::fcntl(fd, cmd) })
    }

    /// `fcntl(fd, cmd, arg)` for the commands with an `int` argument.
    pub fn fcntl_set(fd: RawFd, cmd: c_int, arg: c_int) -> io::Result<c_int> {
        // SAFETY: F_SETFD/F_SETFL/F_DUPFD_CLOEXEC take an int and touch no memory.
        check(unsafe { libc::fcntl(fd, cmd, arg) })
    }

    /// A new descriptor of the same file, close-on-exec.
    pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
        let new = fcntl_set(fd, libc::F_DUPFD_CLOEXEC, 0)?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }

    /// `dup3(from, to, flags)`: `to` now refers to `from`'s file (whatever it was is closed).
    pub fn dup3(from: RawFd, to: RawFd, flags: c_int) -> io::Result<()> {
        // SAFETY: only descriptors change; the caller owns `to` (it is the number it replaces).
        check(unsafe { libc::dup3(from, to, flags) }).map(drop)
    }

    /// A close-on-exec pipe: (read end, write end).
    pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// An unconnected `AF_UNIX` stream socket with these `SOCK_NONBLOCK`/`SOCK_CLOEXEC` flags
    /// (libhvsock's stand-in before the real socket exists).
    pub fn standin(flags: c_int) -> io::Result<OwnedFd> {
        // SAFETY: plain socket creation; the next definition of `socket`, not libhvsock's.
        let fd = check(unsafe { super::socket(libc::AF_UNIX, libc::SOCK_STREAM | flags, 0) })?;
        // SAFETY: socket returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Closes `fd` through the next `close`, never libhvsock's.
    pub fn close(fd: OwnedFd) {
        use std::os::fd::IntoRawFd;
        // SAFETY: the descriptor was owned and is given up here; its number is not used again.
        unsafe { super::close(fd.into_raw_fd()) };
    }

    /// Sets or clears `O_NONBLOCK` on the file of `fd`.
    pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
        let flags = fcntl_get(fd, libc::F_GETFL)?;
        let want = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if want != flags {
            fcntl_set(fd, libc::F_SETFL, want)?;
        }
        Ok(())
    }
}
