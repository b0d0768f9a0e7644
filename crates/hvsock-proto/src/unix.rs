//! Frames over `AF_UNIX` `SOCK_SEQPACKET` sockets, with file descriptors passed by `SCM_RIGHTS`.
//!
//! Every socket is created with `SOCK_CLOEXEC` and received descriptors with `MSG_CMSG_CLOEXEC`,
//! so none leaks into a child process. Sends use `MSG_NOSIGNAL`: a peer that went away is an
//! `EPIPE` error, never a `SIGPIPE`.
//!
//! [`recv_frame`] enforces the frame rules a daemon must not trust a client with: a frame longer
//! than [`MAX_FRAME`] is an error (not silently cut), every passed descriptor is owned at once so
//! that it is closed whatever happens, and a frame carries exactly the descriptors its kind
//! calls for.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::frame::{DecodeError, Frame, MAX_FRAME};

/// Most descriptors [`recv_frame`] takes from one message; more are closed by the kernel and the
/// frame is refused.
const MAX_FDS: usize = 4;

/// Why no frame could be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The `recvmsg` call failed (including `WouldBlock` on a non-blocking socket).
    #[error("receiving a frame: {0}")]
    Io(#[source] io::Error),
    /// The message was longer than [`MAX_FRAME`].
    #[error("received a message longer than the {MAX_FRAME}-byte frame limit")]
    Oversized,
    /// The message is not a valid frame.
    #[error("received an invalid frame: {0}")]
    Decode(#[from] DecodeError),
    /// The frame came with the wrong number of file descriptors.
    #[error("a {kind} frame came with {got} file descriptor(s), expected {expected}")]
    Fds {
        /// The frame kind.
        kind: &'static str,
        /// Descriptors received.
        got: usize,
        /// Descriptors this kind carries.
        expected: usize,
    },
    /// More descriptors than fit were sent; the kernel closed the rest.
    #[error("a message came with more than {MAX_FDS} file descriptors")]
    FdsTruncated,
}

impl RecvError {
    /// Whether this is `WouldBlock` on a non-blocking socket: try again when readable.
    pub fn is_would_block(&self) -> bool {
        matches!(self, RecvError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the connection is gone (closed or reset) rather than misused.
    pub fn is_disconnect(&self) -> bool {
        match self {
            RecvError::Closed => true,
            RecvError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// A received frame and the descriptor it carried, if its kind carries one.
#[derive(Debug)]
pub struct Received {
    /// The frame.
    pub frame: Frame,
    /// The descriptor ([`Frame::carries_fd`]).
    pub fd: Option<OwnedFd>,
}

/// Receives one frame. With `dontwait`, returns `WouldBlock` (see [`RecvError::is_would_block`])
/// instead of waiting.
pub fn recv_frame(sock: impl AsFd, dontwait: bool) -> Result<Received, RecvError> {
    let mut buf = [0u8; MAX_FRAME];
    let Message {
        len,
        mut fds,
        truncated,
        fds_truncated,
    } = recv_message(sock, &mut buf, dontwait).map_err(RecvError::Io)?;
    if fds_truncated {
        return Err(RecvError::FdsTruncated);
    }
    if truncated {
        return Err(RecvError::Oversized);
    }
    if len == 0 && fds.is_empty() {
        return Err(RecvError::Closed);
    }
    let frame = Frame::decode(&buf[..len])?;
    let expected = usize::from(frame.carries_fd());
    if fds.len() != expected {
        return Err(RecvError::Fds {
            kind: frame.kind_name(),
            got: fds.len(),
            expected,
        });
    }
    Ok(Received {
        frame,
        fd: fds.pop(),
    })
}

/// Sends one frame, with `fd` attached if given. With `dontwait`, returns `WouldBlock` instead
/// of waiting for buffer space.
pub fn send_frame(
    sock: impl AsFd,
    frame: &Frame,
    fd: Option<BorrowedFd<'_>>,
    dontwait: bool,
) -> io::Result<()> {
    let bytes = frame.encode();
    let sent = send_message(sock, &bytes, fd, dontwait)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} frame bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// One message as [`recv_message`] received it.
#[derive(Debug)]
pub struct Message {
    /// Bytes received into the buffer.
    pub len: usize,
    /// Every descriptor that came with it, owned (closed when dropped).
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer (`MSG_TRUNC`); the rest is lost.
    pub truncated: bool,
    /// More descriptors came than fit (`MSG_CTRUNC`); the kernel closed the rest.
    pub fds_truncated: bool,
}

/// Receives one message into `buf` with up to four passed descriptors (`MSG_CMSG_CLOEXEC`),
/// retrying `EINTR`. The building block of [`recv_frame`], for other message protocols over
/// `SOCK_SEQPACKET` (the benchmark's control channel).
pub fn recv_message(sock: impl AsFd, buf: &mut [u8], dontwait: bool) -> io::Result<Message> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if dontwait {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = loop {
        match rustix::net::recvmsg(
            sock.as_fd(),
            &mut [IoSliceMut::new(buf)],
            &mut control,
            flags,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Own every descriptor at once, so that each is closed whatever the caller does next.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(Message {
        len: msg.bytes.min(buf.len()),
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Sends `bytes` as one message with `fd` attached if given, with `MSG_NOSIGNAL`, retrying
/// `EINTR`; returns the bytes sent. With `dontwait`, returns `WouldBlock` instead of waiting.
pub fn send_message(
    sock: impl AsFd,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
    dontwait: bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other(
                "control buffer too small for one descriptor",
            ));
        }
    }
    let mut flags = SendFlags::NOSIGNAL;
    if dontwait {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match rustix::net::sendmsg(sock.as_fd(), &[IoSlice::new(bytes)], &mut control, flags) {
            Ok(sent) => return Ok(sent),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects a new `SOCK_SEQPACKET` socket to the endpoint at `path`.
pub fn connect_endpoint(path: &Path, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => Ok(sock),
        Err(e) => Err(e.into()),
    }
}

/// A connected pair of `SOCK_STREAM` Unix sockets: the data path of one connection.
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, for tests and in-process sessions.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorCode, WireAddr};
    use std::io::{Read, Write};

    #[test]
    fn frame_with_fd_round_trips_and_the_fd_works() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        let (x, y) = stream_pair().expect("socketpair");
        let frame = Frame::Incoming {
            local: WireAddr::default(),
            peer: WireAddr {
                vm: [1; 16],
                service: [2; 16],
            },
        };
        send_frame(&a, &frame, Some(x.as_fd()), false).expect("send");
        drop(x);
        let got = recv_frame(&b, false).expect("recv");
        assert_eq!(got.frame, frame);
        let mut passed = std::os::unix::net::UnixStream::from(got.fd.expect("an fd"));
        let mut other = std::os::unix::net::UnixStream::from(y);
        passed.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        other.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn a_frame_with_an_unexpected_fd_is_refused_and_the_fd_closed() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        let (x, y) = stream_pair().expect("socketpair");
        send_frame(&a, &Frame::Ack { count: 1 }, Some(x.as_fd()), false).expect("send");
        drop(x);
        match recv_frame(&b, false) {
            Err(RecvError::Fds {
                kind: "Ack",
                got: 1,
                expected: 0,
            }) => {}
            other => panic!("{other:?}"),
        }
        // The passed descriptor was closed: its peer reads EOF.
        let mut other = std::os::unix::net::UnixStream::from(y);
        let mut buf = [0u8; 1];
        assert_eq!(other.read(&mut buf).expect("read"), 0);
    }

    #[test]
    fn a_frame_missing_its_fd_is_refused() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        let frame = Frame::Connected {
            req: 1,
            local: WireAddr::default(),
            peer: WireAddr::default(),
        };
        send_frame(&a, &frame, None, false).expect("send");
        assert!(matches!(
            recv_frame(&b, false),
            Err(RecvError::Fds {
                got: 0,
                expected: 1,
                ..
            })
        ));
    }

    #[test]
    fn oversized_and_garbage_messages_are_errors_and_eof_is_closed() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        rustix::net::send(&a, &vec![b'h'; MAX_FRAME + 100], SendFlags::NOSIGNAL).expect("send");
        assert!(matches!(recv_frame(&b, false), Err(RecvError::Oversized)));
        rustix::net::send(&a, b"garbage!garbage!", SendFlags::NOSIGNAL).expect("send");
        assert!(matches!(
            recv_frame(&b, false),
            Err(RecvError::Decode(DecodeError::Magic(_)))
        ));
        assert!(recv_frame(&b, true).expect_err("empty").is_would_block());
        let err = Frame::Error {
            req: 3,
            code: ErrorCode::Refused,
            message: "nothing listens".into(),
        };
        send_frame(&a, &err, None, false).expect("send");
        assert_eq!(recv_frame(&b, false).expect("recv").frame, err);
        drop(a);
        assert!(recv_frame(&b, false).expect_err("eof").is_disconnect());
    }
}
