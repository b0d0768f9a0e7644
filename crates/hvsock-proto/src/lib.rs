//! The wire format between the `hvsock` library and `hvsockd`.
//!
//! - [`frame`]: the frame layout, the codec and its validation (pure, no I/O; fuzzed);
//! - [`hybrid`]: the `CONNECT`/`OK` lines hvsockd exchanges with a VMM's hybrid-vsock socket
//!   (pure, no I/O; fuzzed);
//! - [`unix`] (Unix only): frames over `SOCK_SEQPACKET` sockets with file descriptors passed by
//!   `SCM_RIGHTS`, and the socket constructors both sides use.
//!
//! See [`frame`] for the protocol primer.

pub mod frame;
pub mod hybrid;
#[cfg(unix)]
pub mod unix;

pub use frame::{DecodeError, ErrorCode, Frame, WireAddr};
