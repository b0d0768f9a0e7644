//! Failures as C sees them: an `errno` and, for people, a thread-local message
//! (`hv_last_error()`).
//!
//! [`errno_of`] is the one table from the crate's `io::Error`s to `errno`; `docs/c.md` prints it.
//! With `HVSOCK_C_LOG=1` in the environment every failure is also written to stderr, which is
//! how a program run under `LD_PRELOAD` (that cannot call `hv_last_error`) shows its reasons.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::sync::OnceLock;

/// A failed call: the errno to set and the message for `hv_last_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `errno` value.
    pub errno: c_int,
    /// What was being done and why it failed.
    pub message: String,
}

impl Error {
    /// An error with this errno and message.
    pub fn new(errno: c_int, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: message.into(),
        }
    }

    /// The error of `call` (e.g. `"connect"`), from the crate's `io::Error`.
    pub fn io(call: &str, e: &io::Error) -> Error {
        Error::new(errno_of(e), format!("{call}: {e}"))
    }
}

/// The result of a libhvsock operation.
pub type Result<T> = std::result::Result<T, Error>;

/// The errno of an `io::Error`: its OS error if it has one, else by kind (the table of
/// `docs/c.md`).
pub fn errno_of(e: &io::Error) -> c_int {
    if let Some(code) = e.raw_os_error() {
        return code;
    }
    errno_of_kind(e.kind())
}

/// The errno of an `io::ErrorKind`.
pub fn errno_of_kind(kind: io::ErrorKind) -> c_int {
    use io::ErrorKind as K;
    match kind {
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::PermissionDenied => libc::EACCES,
        K::HostUnreachable => libc::EHOSTUNREACH,
        K::NetworkUnreachable => libc::ENETUNREACH,
        K::AddrInUse => libc::EADDRINUSE,
        K::AddrNotAvailable => libc::EADDRNOTAVAIL,
        K::TimedOut => libc::ETIMEDOUT,
        K::Unsupported => libc::EOPNOTSUPP,
        K::InvalidInput => libc::EINVAL,
        K::NotFound => libc::ENOENT,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::NotConnected => libc::ENOTCONN,
        K::BrokenPipe => libc::EPIPE,
        K::WouldBlock => libc::EAGAIN,
        K::Interrupted => libc::EINTR,
        K::ResourceBusy => libc::ENOBUFS,
        K::OutOfMemory => libc::ENOMEM,
        K::InvalidData => libc::EPROTO,
        K::AlreadyExists => libc::EEXIST,
        _ => libc::EIO,
    }
}

thread_local! {
    static LAST: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Makes `e` this thread's last error (errno and message) and logs it if asked to.
pub fn set(e: &Error) {
    let text = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    if log_enabled() && e.errno != libc::EINPROGRESS {
        eprintln!("libhvsock: {}", e.message);
    }
    // A thread being torn down has no message slot any more; errno is still set.
    let _ = LAST.try_with(|last| *last.borrow_mut() = Some(text));
    // Last: allocating, reading the environment, writing to stderr and the thread-local's first
    // use may all change errno on the way (a fresh clone's test run saw EAGAIN instead of EINVAL).
    set_errno(e.errno);
}

/// The message of this thread's last failure, or an empty string; valid until this thread's
/// next failure.
pub fn last_message() -> *const c_char {
    static EMPTY: &CStr = c"";
    LAST.try_with(|last| match &*last.borrow() {
        // The CString stays in the thread-local until the next failure replaces it.
        Some(text) => text.as_ptr(),
        None => EMPTY.as_ptr(),
    })
    .unwrap_or(EMPTY.as_ptr())
}

/// This thread's last message as a Rust string (for the tests).
pub fn last_message_string() -> String {
    LAST.try_with(|last| {
        last.borrow()
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

fn log_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HVSOCK_C_LOG").is_some_and(|v| v != "0" && !v.is_empty()))
}

/// Sets `errno`.
pub fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() = code };
}

/// The current `errno`.
pub fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use io::ErrorKind as K;

    /// The table of docs/c.md, row by row.
    #[test]
    fn errno_table() {
        let rows = [
            (K::ConnectionRefused, libc::ECONNREFUSED),
            (K::PermissionDenied, libc::EACCES),
            (K::HostUnreachable, libc::EHOSTUNREACH),
            (K::AddrInUse, libc::EADDRINUSE),
            (K::AddrNotAvailable, libc::EADDRNOTAVAIL),
            (K::TimedOut, libc::ETIMEDOUT),
            (K::Unsupported, libc::EOPNOTSUPP),
            (K::InvalidInput, libc::EINVAL),
            (K::NotFound, libc::ENOENT),
            (K::ConnectionAborted, libc::ECONNABORTED),
            (K::WouldBlock, libc::EAGAIN),
            (K::ResourceBusy, libc::ENOBUFS),
            (K::InvalidData, libc::EPROTO),
            (K::Other, libc::EIO),
        ];
        for (kind, errno) in rows {
            assert_eq!(errno_of(&io::Error::new(kind, "x")), errno, "{kind:?}");
        }
        // An OS error keeps its own number.
        assert_eq!(
            errno_of(&io::Error::from_raw_os_error(libc::EMFILE)),
            libc::EMFILE
        );
    }

    #[test]
    fn the_message_is_per_thread() {
        set(&Error::new(libc::EINVAL, "first"));
        assert_eq!(errno(), libc::EINVAL);
        assert_eq!(last_message_string(), "first");
        std::thread::spawn(|| {
            assert_eq!(last_message_string(), "");
            set(&Error::new(libc::EACCES, "other thread"));
            assert_eq!(last_message_string(), "other thread");
        })
        .join()
        .expect("thread");
        assert_eq!(last_message_string(), "first");
        // SAFETY: the pointer is this thread's current message, NUL-terminated, and nothing
        // replaces it before it is read here.
        let text = unsafe { CStr::from_ptr(last_message()) };
        assert_eq!(text.to_str().ok(), Some("first"));
    }
}
