//! Moving bytes between stdio and a connection, with nc's half-close rules.
//!
//! [`duplex`] (`connect`, `listen`) runs two directions at once, with std blocking I/O on two
//! threads (the stream is a kernel socket; nothing is relayed through hvsockd):
//!
//! - stdin to the socket: at EOF on stdin, `shutdown(Write)` tells the peer; if the peer
//!   closes the connection entirely first (`POLLHUP` on the socket), there is no one left to
//!   send to and this direction ends too, without waiting for stdin.
//! - the socket to stdout: ends at the peer's half-close (EOF). If stdout is closed (a reader
//!   such as `head` went away), the rest is not wanted: the socket's read side is shut and
//!   this direction ends.
//!
//! The connection is over when both directions have ended. Failures (a reset, a peer that
//! closed before taking all of stdin) are errors, so that a script sees a non-zero exit when
//! bytes were lost.
//!
//! On Windows a thread cannot wait on stdin (a console or a pipe) and a socket at once, so the
//! stdin direction only reads stdin: a peer that closes the connection entirely is noticed at
//! the next send or at stdin's EOF, not while stdin is idle.
//!
//! [`drain`] (`listen --keep`) is one direction only: what a peer sends goes to stdout, each
//! chunk written whole under the stdout lock, so that concurrent connections never interleave
//! mid-chunk.

use std::io::{self, Read, Write};
use std::net::Shutdown;
#[cfg(unix)]
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;

use hvsock::HvStream;
#[cfg(unix)]
use rustix::event::{PollFd, PollFlags, poll};

/// The size of one read.
pub const CHUNK: usize = 128 * 1024;

/// Why copying failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading stdin failed.
    #[error("reading stdin: {0}")]
    Stdin(#[source] io::Error),
    /// Writing stdout failed.
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
    /// Waiting for stdin or the socket failed.
    #[error("waiting for stdin: {0}")]
    Poll(#[source] io::Error),
    /// The peer went away while stdin still had bytes for it.
    #[error("the peer closed the connection before all of stdin was sent ({0})")]
    PeerClosed(#[source] io::Error),
    /// Sending failed otherwise.
    #[error("sending to the peer: {0}")]
    Send(#[source] io::Error),
    /// Receiving failed.
    #[error("receiving from the peer: {0}")]
    Recv(#[source] io::Error),
    /// Setting up the two directions failed.
    #[error("setting up the copy: {0}")]
    Setup(#[source] io::Error),
}

impl CopyError {
    /// Whether this is stdout going away (a closed pipe), which callers may treat as the end
    /// of wanted output rather than a failure.
    pub fn is_stdout_closed(&self) -> bool {
        matches!(self, CopyError::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Copies stdin to `stream` and `stream` to stdout until both directions have ended.
pub fn duplex(stream: HvStream) -> Result<(), CopyError> {
    let sender = stream.try_clone().map_err(CopyError::Setup)?;
    let (done_tx, done_rx) = mpsc::channel();
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let result = send_stdin(&sender);
            if result.is_err() {
                // Wake the other direction: the connection is over.
                let _ = sender.shutdown(Shutdown::Both);
            }
            let _ = done_tx.send(result);
        })
        .map_err(CopyError::Setup)?;
    recv_to_stdout(&stream)?;
    match done_rx.recv() {
        Ok(result) => result,
        Err(_) => Err(CopyError::Setup(io::Error::other(
            "the stdin thread ended without a result",
        ))),
    }
}

/// The socket to stdout until the peer's half-close (or stdout closes).
fn recv_to_stdout(stream: &HvStream) -> Result<(), CopyError> {
    let mut buf = vec![0u8; CHUNK];
    let mut reader = stream;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Recv(e)),
        };
        let mut out = io::stdout().lock();
        match out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                let _ = stream.shutdown(Shutdown::Read);
                return Ok(());
            }
            Err(e) => return Err(CopyError::Stdout(e)),
        }
    }
}

/// What woke the stdin direction.
#[cfg(unix)]
enum Ready {
    /// stdin has bytes or EOF.
    Stdin,
    /// The peer closed the connection entirely.
    PeerGone,
}

#[cfg(unix)]
fn wait_for_stdin(stdin: &impl AsFd, stream: &HvStream) -> Result<Ready, CopyError> {
    loop {
        let mut fds = [
            PollFd::new(stdin, PollFlags::IN),
            PollFd::new(stream, PollFlags::empty()),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(CopyError::Poll(e.into())),
        }
        if fds[1].revents().intersects(PollFlags::HUP | PollFlags::ERR) {
            return Ok(Ready::PeerGone);
        }
        if !fds[0].revents().is_empty() {
            return Ok(Ready::Stdin);
        }
    }
}

/// stdin to the socket until EOF (then half-close) or the peer's full close.
#[cfg(unix)]
fn send_stdin(stream: &HvStream) -> Result<(), CopyError> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if let Ready::PeerGone = wait_for_stdin(&fd, stream)? {
            return Ok(());
        }
        let n = match rustix::io::read(fd, &mut buf[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            // No stdin at all (`<&-`): nothing to send.
            Err(rustix::io::Errno::BADF) => 0,
            Err(e) => return Err(CopyError::Stdin(e.into())),
        };
        if n == 0 {
            return half_close(stream);
        }
        send(stream, &buf[..n])?;
    }
}

/// stdin to the socket until EOF (then half-close), with blocking reads (see the module docs).
#[cfg(not(unix))]
fn send_stdin(stream: &HvStream) -> Result<(), CopyError> {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The writer of a pipe went away: that is its end.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
            Err(e) => return Err(CopyError::Stdin(e)),
        };
        if n == 0 {
            return half_close(stream);
        }
        send(stream, &buf[..n])?;
    }
}

/// stdin's EOF: `shutdown(Write)`, so that the peer reads EOF.
fn half_close(stream: &HvStream) -> Result<(), CopyError> {
    match stream.shutdown(Shutdown::Write) {
        Ok(()) => Ok(()),
        // The peer is gone entirely: there is nothing left to tell.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(CopyError::Send(e)),
    }
}

/// One chunk of stdin to the peer.
fn send(stream: &HvStream, chunk: &[u8]) -> Result<(), CopyError> {
    let mut writer = stream;
    writer.write_all(chunk).map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => CopyError::PeerClosed(e),
        _ => CopyError::Send(e),
    })
}

/// What a peer sends, to stdout in whole chunks, until its half-close; then the connection is
/// closed (dropped).
pub fn drain(stream: HvStream) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut reader = &stream;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Recv(e)),
        };
        let mut out = io::stdout().lock();
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(CopyError::Stdout)?;
        total += n as u64;
    }
}
