//! The device's session with hvsockd: the VM's gateway.
//!
//! A thread of its own resolves the VM's name to its id (admin API), connects to the VM's
//! partition endpoint, sends `Gateway` and waits for `Bound`; then it reads hvsockd's frames
//! (`GuestConnect`, and the answers to the device's `Connect`s) and queues them as
//! [`FromHvsockd`] for the device's worker, which it wakes through an eventfd. When the session
//! ends (hvsockd stopped or restarted), it queues [`FromHvsockd::Down`] and tries again with
//! backoff (50 ms doubling to 2 s), so that a restarted hvsockd finds its device again within
//! about two seconds. The worker sends its requests with [`Link::send`], on the live session or
//! not at all.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvsock::VmId;
use hvsock::dirs::Dirs;
use hvsock_proto::unix::{connect_endpoint, recv_frame, send_frame};
use hvsock_proto::{ErrorCode, Frame};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::muxer::ToHvsockd;

/// Longest pause between two attempts to reach hvsockd.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait for hvsockd's answer to `Gateway`.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// What hvsockd told the device.
#[derive(Debug)]
pub enum FromHvsockd {
    /// The session is up: the device is the VM's gateway.
    Up,
    /// The session ended.
    Down,
    /// Connect to the guest's `port`, splicing `fd`.
    GuestConnect {
        /// hvsockd's request id.
        req: u32,
        /// The guest's port.
        port: u32,
        /// The host end.
        fd: OwnedFd,
    },
    /// The answer to the device's `Connect` `req`.
    Answer {
        /// The device's request id.
        req: u32,
        /// The host end, or why not.
        result: Result<OwnedFd, (ErrorCode, String)>,
    },
}

/// Where the device finds hvsockd and which VM it serves.
#[derive(Debug, Clone)]
pub struct Target {
    /// hvsockd's directories.
    pub dirs: Dirs,
    /// The VM, by name or id.
    pub vm: String,
}

/// The session with hvsockd, shared by its thread and the device's worker.
#[derive(Debug)]
pub struct Link {
    sock: Mutex<Option<Arc<OwnedFd>>>,
    events: Mutex<VecDeque<FromHvsockd>>,
    wake: EventFd,
}

impl Link {
    /// Starts the link's thread for `target`.
    pub fn start(target: Target) -> io::Result<Arc<Link>> {
        let link = Arc::new(Link {
            sock: Mutex::new(None),
            events: Mutex::new(VecDeque::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        let worker = link.clone();
        std::thread::Builder::new()
            .name("hvsockd-link".into())
            .spawn(move || worker.run(target))?;
        Ok(link)
    }

    /// Readable when [`Link::drain`] has something.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// What hvsockd said since the last call.
    pub fn drain(&self) -> Vec<FromHvsockd> {
        let _ = self.wake.read();
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// Whether the session is up.
    pub fn is_up(&self) -> bool {
        self.sock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Sends a request on the live session, without waiting (`WouldBlock` if hvsockd does not
    /// read).
    pub fn send(&self, request: &ToHvsockd) -> io::Result<()> {
        let sock = self
            .sock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "hvsockd is away"))?;
        let frame = match request {
            ToHvsockd::Connect { req, port } => Frame::Connect {
                req: *req,
                target: hvsock::SockAddrHv::new(
                    VmId::PARENT,
                    hvsock::ServiceId::from_vsock_port(*port),
                )
                .into(),
                timeout_ms: crate::muxer::CONNECT_TIMEOUT_MS,
            },
            ToHvsockd::Accepted { req } => Frame::Accepted { req: *req },
            ToHvsockd::Rejected { req, code, message } => Frame::Rejected {
                req: *req,
                code: *code,
                message: message.clone(),
            },
        };
        // Never wait: the caller is the worker that carries the VM's data. A full socket means
        // hvsockd is not reading; the request fails (a connect is refused) instead.
        send_frame(&*sock, &frame, None, true)
    }

    fn push(&self, event: FromHvsockd) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(event);
        let _ = self.wake.write(1);
    }

    fn run(&self, target: Target) {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        loop {
            match open(&target) {
                Ok((sock, vm)) => {
                    tracing::info!(vm = %target.vm, id = %vm, "serving as the VM's gateway in hvsockd");
                    last_error.clear();
                    backoff = FIRST_BACKOFF;
                    let sock = Arc::new(sock);
                    *self.sock.lock().unwrap_or_else(|p| p.into_inner()) = Some(sock.clone());
                    self.push(FromHvsockd::Up);
                    let why = self.serve(&sock);
                    *self.sock.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    self.push(FromHvsockd::Down);
                    tracing::warn!(
                        "the session with hvsockd ended ({why}); new connects are refused until it is back"
                    );
                }
                Err(e) => {
                    let e = e.to_string();
                    if e != last_error {
                        tracing::warn!(
                            "cannot reach hvsockd as VM {}'s gateway: {e} (retrying)",
                            target.vm
                        );
                        last_error = e;
                    }
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads hvsockd's frames until the session ends; why it ended.
    fn serve(&self, sock: &OwnedFd) -> String {
        loop {
            let received = match recv_frame(sock, false) {
                Ok(r) => r,
                Err(e) => return e.to_string(),
            };
            let event = match (received.frame, received.fd) {
                (Frame::GuestConnect { req, port }, Some(fd)) => {
                    FromHvsockd::GuestConnect { req, port, fd }
                }
                (Frame::Connected { req, .. }, Some(fd)) => FromHvsockd::Answer {
                    req,
                    result: Ok(fd),
                },
                (
                    Frame::Error {
                        req: 0, message, ..
                    },
                    _,
                ) => {
                    return format!("hvsockd closed the session: {message}");
                }
                (Frame::Error { req, code, message }, _) => FromHvsockd::Answer {
                    req,
                    result: Err((code, message)),
                },
                (frame, _) => {
                    return format!("hvsockd sent an unexpected {} frame", frame.kind_name());
                }
            };
            self.push(event);
        }
    }
}

/// Opens a gateway session: the socket and the VM's id.
fn open(target: &Target) -> io::Result<(OwnedFd, VmId)> {
    let vm = resolve(target)?;
    let path: PathBuf = target.dirs.partition_socket(vm);
    let sock = connect_endpoint(&path, false)
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display())))?;
    rustix::net::sockopt::set_socket_timeout(
        &sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(HANDSHAKE),
    )?;
    send_frame(&sock, &Frame::Gateway { req: 1 }, None, false)?;
    let answer = recv_frame(&sock, false)
        .map_err(|e| io::Error::other(format!("waiting for hvsockd's answer: {e}")))?;
    rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, None)?;
    match answer.frame {
        Frame::Bound { req: 1, .. } => Ok((sock.as_fd().try_clone_to_owned()?, vm)),
        Frame::Error { message, .. } => Err(io::Error::other(message)),
        other => Err(io::Error::other(format!(
            "hvsockd answered Gateway with {}",
            other.kind_name()
        ))),
    }
}

/// The VM's id: a GUID as it is, a name through the admin API.
fn resolve(target: &Target) -> io::Result<VmId> {
    if let Ok(id) = target.vm.parse::<hvsock::Guid>() {
        return Ok(VmId(id));
    }
    let client =
        hvsock_cli::admin_client::AdminClient::new(target.dirs.admin_socket(), "hvsockd --dir DIR");
    client
        .partition(&target.vm)
        .map(|reply| reply.value.id)
        .map_err(|e| io::Error::other(format!("looking up VM {}: {e}", target.vm)))
}

#[cfg(test)]
mod tests;
