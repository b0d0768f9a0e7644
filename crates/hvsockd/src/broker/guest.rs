//! The ways into a VM's guest: a [`GuestTransport`] makes one host-to-guest connection and
//! hands back the guest's stream, or a refusal with its code.

use std::fmt::Debug;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use crate::attach::handshake::connect_guest;
use crate::world::Refused;

/// A guest transport's answer, to await.
pub type GuestConnect = Pin<Box<dyn Future<Output = Result<OwnedFd, Refused>> + Send>>;

/// A way into a VM's guest that answers each host-to-guest connect itself.
pub trait GuestTransport: Send + Sync + Debug {
    /// Connects to vsock `port` in the guest within `timeout`: the guest's stream, blocking,
    /// ready to hand to the connector; or why not (`TimedOut` when the time ran out).
    fn connect(&self, port: u32, timeout: Duration) -> GuestConnect;
}

/// A VM attached through its VMM's hybrid-vsock socket (see [`crate::attach`]).
#[derive(Debug, Clone)]
pub struct Hybrid {
    path: PathBuf,
    vm: String,
}

impl Hybrid {
    /// Through the VMM's socket `path`, for the VM named `vm` (for messages).
    pub fn new(path: &Path, vm: &str) -> Hybrid {
        Hybrid {
            path: path.to_owned(),
            vm: vm.to_owned(),
        }
    }
}

impl GuestTransport for Hybrid {
    fn connect(&self, port: u32, timeout: Duration) -> GuestConnect {
        let this = self.clone();
        Box::pin(async move {
            connect_guest(&this.path, port, timeout).await.map_err(|e| {
                let (code, reason) = e.code();
                Refused::new(
                    code,
                    reason,
                    format!("connecting to VM {} on vsock port {port}: {e}", this.vm),
                )
            })
        })
    }
}
