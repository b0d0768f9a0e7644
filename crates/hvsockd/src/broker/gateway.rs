//! A VM's device process as its guest transport: the **gateway**.
//!
//! A device process that serves a VM's virtio-vsock device (`hvsock-vhost`) holds the data
//! path itself and asks hvsockd only to route. It connects to the VM's partition endpoint and
//! sends `Gateway`; the session (see [`crate::session`]) registers a [`Gateway`] with
//! [`Broker::serve_guest`](super::Broker::serve_guest), which serves that VM's host-to-guest
//! connects for as long as the session lives:
//!
//! ```text
//!  connector ──Connect──▶ broker ──Target::Guest──▶ Gateway::connect(port)
//!                                                     │ socket pair: one end in GuestConnect{req, port}
//!                                                     ▼ to the device, which sends REQUEST to the guest
//!  device ──Accepted{req}──▶ the other end to the connector
//!  device ──Rejected{req, code}──▶ the connector's refusal (RST from the guest: Refused, at once)
//! ```
//!
//! A device that does not answer within the connect's timeout gives `TimedOut`; a device that
//! goes away fails its outstanding connects at once. The guest's own connects come on the same
//! session as ordinary `Connect` frames from the VM's partition.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvsock_proto::unix::stream_pair;
use hvsock_proto::{ErrorCode, Frame};
use tokio::sync::oneshot;

use super::guest::{GuestConnect, GuestTransport};
use crate::world::Refused;

/// How a gateway sends a frame with a descriptor to its device, without waiting.
pub type SendFrame = Box<dyn Fn(&Frame, BorrowedFd<'_>) -> std::io::Result<()> + Send + Sync>;

type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<(), Refused>>>>>;

/// Most host-to-guest connects one device may have unanswered at once.
pub const MAX_PENDING: usize = 1024;

/// A VM's device process, answering host-to-guest connects.
pub struct Gateway {
    vm: String,
    send: SendFrame,
    next: AtomicU32,
    waiters: Waiters,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("vm", &self.vm)
            .field("pending", &self.pending())
            .finish()
    }
}

impl Gateway {
    /// The gateway of the VM named `vm` (for messages), sending through `send`.
    pub fn new(vm: &str, send: SendFrame) -> Gateway {
        Gateway {
            vm: vm.to_owned(),
            send,
            next: AtomicU32::new(1),
            waiters: Arc::default(),
        }
    }

    /// How many connects wait for the device's answer.
    pub fn pending(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The device's answer to `GuestConnect` `req`: `false` if no such connect waits (answered
    /// already, timed out, or never asked), which is not the device's fault when it raced a
    /// timeout.
    pub fn answer(&self, req: u32, result: Result<(), Refused>) -> bool {
        let waiter = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Fails every outstanding connect: the device went away.
    pub fn close(&self) {
        let waiters: Vec<_> = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in waiters {
            let _ = tx.send(Err(self.gone()));
        }
    }

    fn gone(&self) -> Refused {
        Refused::new(
            ErrorCode::Refused,
            "device_gone",
            format!("VM {}'s device (hvsock-vhost) went away", self.vm),
        )
    }
}

impl GuestTransport for Gateway {
    fn connect(&self, port: u32, timeout: Duration) -> GuestConnect {
        let vm = self.vm.clone();
        let busy = |why: String| -> GuestConnect {
            let refused = Refused::new(ErrorCode::Busy, "device_busy", why);
            Box::pin(async move { Err(refused) })
        };
        let (host_end, device_end): (OwnedFd, OwnedFd) = match stream_pair() {
            Ok(pair) => pair,
            Err(e) => return busy(format!("making a socket pair for VM {vm}: {e}")),
        };
        let (tx, rx) = oneshot::channel();
        let req = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if waiters.len() >= MAX_PENDING {
                return busy(format!(
                    "VM {vm}'s device already has {MAX_PENDING} connects waiting for the guest"
                ));
            }
            let mut req = self.next.fetch_add(1, Ordering::Relaxed);
            while req == 0 || waiters.contains_key(&req) {
                req = self.next.fetch_add(1, Ordering::Relaxed);
            }
            waiters.insert(req, tx);
            req
        };
        if let Err(e) = (self.send)(&Frame::GuestConnect { req, port }, device_end.as_fd()) {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req);
            return busy(format!("asking VM {vm}'s device to connect: {e}"));
        }
        drop(device_end);
        let waiters = self.waiters.clone();
        let gone = self.gone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(()))) => Ok(host_end),
                Ok(Ok(Err(refused))) => Err(refused),
                Ok(Err(_)) => Err(gone),
                Err(_) => {
                    waiters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&req);
                    Err(Refused::new(
                        ErrorCode::TimedOut,
                        "timed_out",
                        format!(
                            "the guest of VM {vm} did not answer a connect to vsock port {port} within {} ms",
                            timeout.as_millis()
                        ),
                    ))
                }
            }
        })
    }
}

/// The refusal a device's `Rejected` frame carries, with a reason label for the metrics.
pub fn rejected(code: ErrorCode, message: String) -> Refused {
    let reason = match code {
        ErrorCode::Refused => "guest_refused",
        ErrorCode::TimedOut => "timed_out",
        ErrorCode::Busy => "device_busy",
        _ => "device_rejected",
    };
    Refused::new(code, reason, message)
}

#[cfg(test)]
mod tests;
