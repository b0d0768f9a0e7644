//! The small frame I/O a session needs, as a trait ([`FrameIo`]), so that the session's state
//! machine runs over any socket (the tests use socket pairs); [`SeqPacket`] is the one over a
//! client's `SOCK_SEQPACKET` socket, and [`SessionSink`] delivers a listener's connections as
//! `Incoming` frames on it.

use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use hvsock_proto::unix::{Received, RecvError, recv_frame, send_frame};
use hvsock_proto::{Frame, WireAddr};
use tokio::io::unix::AsyncFd;

use crate::listeners::{Sink, Undeliverable};
use crate::sys;

/// Frames in and out of one client.
pub trait FrameIo: std::os::fd::AsFd + Send + Sync + std::fmt::Debug + 'static {
    /// Receives one frame, waiting for it.
    fn recv(&self) -> impl Future<Output = Result<Received, RecvError>> + Send;
    /// Sends one frame (with a descriptor, for frames that carry one), waiting for room.
    fn send(
        &self,
        frame: &Frame,
        fd: Option<BorrowedFd<'_>>,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Sends one frame without waiting: `WouldBlock` when the socket is full.
    fn try_send(&self, frame: &Frame, fd: Option<BorrowedFd<'_>>) -> io::Result<()>;
    /// The client's pid, if the kernel tells.
    fn peer_pid(&self) -> Option<u32>;
    /// The client's credentials, if the kernel tells (for the services' host-user rules).
    fn peer_cred(&self) -> Option<sys::PeerCred> {
        None
    }
}

/// A client's `SOCK_SEQPACKET` socket, registered with the runtime.
#[derive(Debug)]
pub struct SeqPacket(AsyncFd<OwnedFd>);

impl SeqPacket {
    /// Registers a non-blocking socket.
    pub fn new(fd: OwnedFd) -> io::Result<SeqPacket> {
        sys::register(fd).map(SeqPacket)
    }
}

impl std::os::fd::AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

impl FrameIo for SeqPacket {
    async fn recv(&self) -> Result<Received, RecvError> {
        loop {
            let mut guard = self.0.readable().await.map_err(RecvError::Io)?;
            match recv_frame(guard.get_inner(), true) {
                Err(e) if e.is_would_block() => guard.clear_ready(),
                other => return other,
            }
        }
    }

    async fn send(&self, frame: &Frame, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        loop {
            match send_frame(self.0.get_ref(), frame, fd, true) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.0.writable().await?.clear_ready();
                }
                other => return other,
            }
        }
    }

    fn try_send(&self, frame: &Frame, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        send_frame(self.0.get_ref(), frame, fd, true)
    }

    fn peer_pid(&self) -> Option<u32> {
        sys::peer_pid(self.0.get_ref())
    }

    fn peer_cred(&self) -> Option<sys::PeerCred> {
        sys::peer_cred(self.0.get_ref())
    }
}

/// A listener's connections as `Incoming` frames on its session.
#[derive(Debug)]
pub struct SessionSink<T>(pub Arc<T>);

impl<T: FrameIo> Sink for SessionSink<T> {
    fn deliver(&self, local: WireAddr, peer: WireAddr, fd: OwnedFd) -> Result<(), Undeliverable> {
        use std::os::fd::AsFd;
        let frame = Frame::Incoming { local, peer };
        match self.0.try_send(&frame, Some(fd.as_fd())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Undeliverable::Full(fd)),
            Err(e) => Err(Undeliverable::Gone(e)),
        }
    }
}
