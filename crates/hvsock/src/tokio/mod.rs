//! Async twins of [`crate::HvListener`] and [`crate::HvStream`] on tokio (feature `tokio`).
//!
//! ```no_run
//! use hvsock::tokio::{HvListener, HvStream};
//! use hvsock::{ServiceId, SockAddrHv, VmId};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let service = ServiceId::from_vsock_port(2761);
//! // In the host: serve every partition that may reach it.
//! let listener = HvListener::bind(SockAddrHv::new(VmId::WILDCARD, service)).await?;
//! tokio::spawn(async move {
//!     while let Ok((conn, peer)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let (mut rd, mut wr) = conn.into_split();
//!             let _ = tokio::io::copy(&mut rd, &mut wr).await; // echo until the peer's EOF
//!             println!("{} left", peer.vm_id);
//!         });
//!     }
//! });
//! // In a child partition: connect to the parent.
//! let mut stream = HvStream::connect(SockAddrHv::new(VmId::PARENT, service)).await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?; // half-close: the peer reads EOF, we can still read
//! let mut echoed = Vec::new();
//! stream.read_to_end(&mut echoed).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The types follow tokio's own sockets (and tokio-vsock): [`HvListener`] has
//! [`accept`](HvListener::accept) and [`poll_accept`](HvListener::poll_accept); [`HvStream`]
//! is `AsyncRead` + `AsyncWrite` (`poll_shutdown` is `shutdown(Write)`, a half-close), splits
//! into owned halves with [`into_split`](HvStream::into_split), and converts from and to the
//! std types with `from_std` / `into_std`. On Unix both are built on tokio's `AsyncFd`: the
//! data path is the same kernel socket as the std type's, with no task and no copy in between.
//!
//! # Windows
//!
//! The same types work over `AF_HYPERV` (connect, bind, accept, read, write, half-close,
//! split), on the same socket as the std types. tokio has no `AsyncFd` there; its reactor
//! (mio) polls sockets through AFD, which serves `AF_HYPERV` sockets as it serves TCP ones, and
//! the only public way in is `tokio::net::TcpStream::from_std`. So each socket is registered as
//! a `TcpStream` used for readiness alone, and every operation on it is this crate's own
//! Winsock call made through tokio's `try_io`/`async_io` (never a TCP method). The async
//! connect is a non-blocking `connect` with `HVSOCKET_CONNECT_TIMEOUT` set, awaited until the
//! socket is writable. This code is compiled and type-checked for Windows by the project's
//! checks, but there is no Windows machine in its test runs: treat it as untested there.
//!
//! # Runtime
//!
//! Everything here must run inside a tokio runtime with IO and time enabled (what
//! `#[tokio::main]` and `#[tokio::test]` give); like tokio's own `from_std`, the constructors
//! panic outside one. Nothing here spawns a task, so the types work in any number of runtimes,
//! one after the other or side by side, and a runtime's end leaves nothing half-done behind.
//!
//! # How an async connect reaches hvsockd
//!
//! The std [`crate::HvStream::connect`] sends its `Connect` over one control connection per
//! process that all threads share, and the thread that waits reads the answers for the others.
//! That cannot carry over as is: an `AsyncFd` belongs to the runtime that registered it, and a
//! task that reads answers for everybody would die with the runtime that spawned it (tests and
//! many programs build one runtime after another). So an async connect instead:
//!
//! 1. takes an idle control connection (a `SOCK_SEQPACKET` session with hvsockd, non-blocking)
//!    from a small process-wide pool of plain descriptors, or opens a new one;
//! 2. registers it with the current runtime, sends `Connect`, and awaits readability until
//!    `Connected` (with the new connection's descriptor) or `Error` arrives;
//! 3. deregisters it and puts it back in the pool (at most 16 idle per endpoint).
//!
//! One connect owns one control connection while it waits, so nothing is shared between
//! runtimes and there is no reader to hand answers over: concurrent connects use as many
//! control connections (each an hvsockd session, 1024 per partition at most), and the pool
//! keeps the common case of one connect after another at one round trip, without a new
//! session in hvsockd each time. The pool holds no runtime state, survives any runtime, is
//! dropped in a forked child (it checks the pid) and a pooled connection that hvsockd closed
//! (a restart) is replaced on first use. The price: a burst of N concurrent connects opens up
//! to N sessions, where the std mux uses one.
//!
//! Measured (release build, 2-vCPU VM under load, sequential connect + accept + one-byte round
//! trip, ratios within one run): the pooled async connect runs at about 0.7× the std mux's
//! rate (8–11k/s against 11–16k/s), a new control connection per connect at about 0.45×; the
//! rest of the gap is the reactor's registration and wake-up per connect.
//!
//! **Cancellation.** Dropping a `connect` future closes its control connection (it never goes
//! back to the pool with a request in flight). If hvsockd had already made the connection, the
//! listener accepts a stream that reads EOF at once, as after a std connect that timed out.
//! `accept` and `poll_accept` are cancellation safe: a connection is taken from hvsockd only in
//! the poll that returns it, so dropping an `accept` future loses none.
//!
//! **Timeouts.** hvsockd enforces the connect timeout (answering `TimedOut`); the library gives
//! an unresponsive hvsockd one more second, as the std connect does.

//!
//! # Where the code is
//!
//! This module holds the public types only: [`HvListener`] and [`HvStream`] with its halves.
//! They connect and bind through the same transport dispatch as the std types
//! (`crate::sys::Backend`, its `connect_async` and `bind_async`), and the async halves of the
//! transports live beside their sync halves under `crate::sys`: `sys::unix::tokio` and
//! `sys::windows::tokio` (the runtime registration of sockets and listeners, and the async
//! `AF_HYPERV` connect), `sys::unix::provider::tokio` (the async client of hvsockd and its
//! pool of control connections).

mod listener;
mod stream;

pub use listener::HvListener;
pub use stream::{HvStream, OwnedReadHalf, OwnedWriteHalf, ReuniteError};

#[cfg(all(test, unix))]
mod tests;
