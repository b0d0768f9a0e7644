//! The guest-to-host sockets `PATH_<port>`: opened and closed to match [`super::ports::wanted`]
//! by [`GuestPorts::reconcile`], and served by an accept task each. A socket accepted on
//! `PATH_<port>` is a connect from the VM to `(PARENT, port)`, made through the
//! [broker](crate::broker) with the accepted socket as the connection.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;
use rustix::net::{SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::ports::port_path;
use crate::broker::{Broker, Connecting, Settled};
use crate::config::Limits;
use crate::handover::{Hold, Kept};
use crate::listeners::Conn;
use crate::sys::{self, Replace, SocketSpec};
use crate::world::Refused;

/// How long a guest's connection waits for a slot in a full listener backlog.
pub const GUEST_CONNECT_WAIT: Duration = hvsock::DEFAULT_CONNECT_TIMEOUT;

/// Mode of `PATH_<port>`: the VMM's user and group (given the directory's owner).
pub const GUEST_PORT_MODE: u32 = 0o660;

/// One open `PATH_<port>`.
#[derive(Debug)]
struct OpenPort {
    file: PathBuf,
    cancel: CancellationToken,
    /// Its entry in the hand-over's table.
    _hold: Hold,
}

/// The guest-to-host sockets hvsockd has open.
#[derive(Debug)]
pub struct GuestPorts {
    broker: Arc<Broker>,
    limits: Limits,
    shutdown: CancellationToken,
    open: Mutex<HashMap<(VmId, u32), OpenPort>>,
    /// Guest connections waiting for a listener's backlog, per VM.
    waiting: Mutex<HashMap<VmId, Arc<AtomicUsize>>>,
    /// Guest ports an hvsockd before this one held, to serve instead of binding new ones.
    kept: Mutex<HashMap<(VmId, u32), (OwnedFd, String)>>,
}

impl GuestPorts {
    /// None open yet; the accept tasks end with `shutdown`.
    pub fn new(broker: Arc<Broker>, limits: Limits, shutdown: CancellationToken) -> GuestPorts {
        GuestPorts {
            broker,
            limits,
            shutdown,
            open: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// Serves these guest ports (kept by an hvsockd before this one, with their names) when
    /// they are wanted, rather than binding new sockets: the VM's connections that wait in
    /// their backlogs are served.
    pub fn adopt(&self, kept: HashMap<(VmId, u32), (OwnedFd, String)>) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(kept);
    }

    /// Whether no kept guest port waits to be adopted.
    pub fn ports_kept_empty(&self) -> bool {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Closes the kept guest ports that are not wanted any more.
    pub fn drop_unused_kept(&self) {
        let unused: Vec<_> = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for ((vm, port), (_fd, name)) in unused {
            tracing::info!(vm = %self.label(vm), port, "a kept guest port is not wanted any more; closing it");
            self.broker.holder().discard(&name);
        }
    }

    /// The listening socket for `(vm, port)` at `file`: the kept one if its file is still
    /// there, else a new one.
    fn open_port(
        &self,
        vm: VmId,
        port: u32,
        file: &Path,
        path: &Path,
    ) -> io::Result<(AsyncFd<OwnedFd>, Hold)> {
        let holder = self.broker.holder();
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(vm, port));
        if let Some((fd, name)) = kept {
            if std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_socket()) {
                let dup = Arc::new(fd.try_clone()?);
                let afd = sys::register(fd)?;
                return Ok((afd, holder.adopt(dup, Kept::GuestPort { vm, port }, name)));
            }
            holder.discard(&name);
        }
        let afd = listen(file, path)?;
        let dup = Arc::new(afd.get_ref().try_clone()?);
        Ok((afd, holder.hold(dup, Kept::GuestPort { vm, port })))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(VmId, u32), OpenPort>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest ports open for `vm`.
    pub fn ports(&self, vm: VmId) -> Vec<u32> {
        let mut ports: Vec<u32> = self
            .lock()
            .keys()
            .filter(|(v, _)| *v == vm)
            .map(|&(_, port)| port)
            .collect();
        ports.sort_unstable();
        ports
    }

    fn waiting(&self, vm: VmId) -> Arc<AtomicUsize> {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vm)
            .or_default()
            .clone()
    }

    /// Opens and closes `PATH_<port>` sockets to match `wanted` ([`super::ports::wanted`]);
    /// cheap when nothing changed. Returns whether every wanted socket is open (if not, call
    /// again later). Must run inside the runtime, from one task at a time.
    pub fn reconcile(self: &Arc<Self>, wanted: BTreeMap<(VmId, u32), PathBuf>) -> bool {
        let mut open = self.lock();
        let stale: Vec<(VmId, u32)> = open
            .iter()
            .filter(|(key, o)| wanted.get(key).map(|p| port_path(p, key.1)) != Some(o.file.clone()))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            if let Some(o) = open.remove(&key) {
                close_port(&o);
                tracing::info!(vm = %self.label(key.0), port = key.1, file = %o.file.display(), "guest port closed");
            }
        }
        let mut complete = true;
        for ((vm, port), path) in wanted {
            if open.contains_key(&(vm, port)) {
                continue;
            }
            let file = port_path(&path, port);
            match self.open_port(vm, port, &file, &path) {
                Ok((sock, hold)) => {
                    let cancel = self.shutdown.child_token();
                    tokio::spawn(self.clone().serve_port(vm, port, sock, cancel.clone()));
                    tracing::info!(vm = %self.label(vm), port, file = %file.display(), "guest port open");
                    open.insert(
                        (vm, port),
                        OpenPort {
                            file,
                            cancel,
                            _hold: hold,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        vm = %self.label(vm), port,
                        "cannot listen for the guest on {}: {e}; retrying every few seconds",
                        file.display()
                    );
                    complete = false;
                }
            }
        }
        complete
    }

    fn label(&self, vm: VmId) -> String {
        self.broker.world().label(vm)
    }

    /// Closes every guest socket (on shutdown).
    pub fn close_all(&self) {
        for (_, open) in self.lock().drain() {
            close_port(&open);
        }
    }

    async fn serve_port(
        self: Arc<Self>,
        vm: VmId,
        port: u32,
        listener: AsyncFd<OwnedFd>,
        cancel: CancellationToken,
    ) {
        // Blocking mode: the listener's client uses the socket as it is.
        let what = || format!("a guest connection of VM {} on port {port}", self.label(vm));
        sys::accept_loop(&listener, SocketFlags::empty(), &cancel, what, |sock| {
            self.guest_connect(vm, port, sock)
        })
        .await;
        // Connections the kernel queued before the socket closed: route them (the route no
        // longer holds, so they are refused and counted) rather than let them vanish with it.
        while let Some(sock) = sys::accept_queued(&listener, SocketFlags::empty()) {
            self.guest_connect(vm, port, sock);
        }
    }

    /// A guest's connection accepted on `PATH_<port>`: a connect from `vm` to
    /// `(PARENT, port)`. Dropping the socket on a refusal closes it: the guest reads EOF (a
    /// reset, through its VMM).
    fn guest_connect(&self, vm: VmId, port: u32, sock: OwnedFd) {
        let started = Instant::now();
        let target = SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(port));
        let Ok(routed) = self.broker.route(vm, target) else {
            return;
        };
        let waiting = self.waiting(vm);
        if waiting.load(Ordering::Acquire) >= self.limits.max_outstanding_connects {
            let busy = Refused::new(
                ErrorCode::Busy,
                "busy",
                format!(
                    "{} of this VM's connections already wait for full backlogs",
                    self.limits.max_outstanding_connects
                ),
            );
            self.broker.refuse(&routed, busy, started);
            return;
        }
        match self
            .broker
            .offer(routed, Conn::Fd(sock), GUEST_CONNECT_WAIT, started)
        {
            Connecting::Now(settled) => self.settled(&settled),
            Connecting::Later(answer) => {
                waiting.fetch_add(1, Ordering::AcqRel);
                let broker = self.broker.clone();
                tokio::spawn(async move {
                    let settled = answer.await;
                    if settled.result.is_ok() {
                        broker.established(&settled);
                    }
                    waiting.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }

    fn settled(&self, settled: &Settled) {
        match &settled.result {
            Ok(_) => self.broker.established(settled),
            Err(refused) => tracing::debug!(
                from = %self.label(settled.from),
                "guest connection refused: {}", refused.message
            ),
        }
    }
}

fn close_port(open: &OpenPort) {
    open.cancel.cancel();
    sys::remove_socket_file(&open.file);
}

/// Removes `PATH_<digits>` sockets left by an hvsockd that did not stop cleanly, but those of
/// the ports for which `kept` says yes (their sockets were handed over, see
/// [`crate::handover`]).
pub fn remove_stale(path: &Path, kept: impl Fn(u32) -> bool) {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut prefix = base.to_owned();
    prefix.push("_");
    let prefix = prefix.to_string_lossy().into_owned();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digits) = name.strip_prefix(&prefix) else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if digits.parse().is_ok_and(&kept) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!("removed stale guest socket {}", entry.path().display()),
                Err(e) => tracing::warn!("removing stale {}: {e}", entry.path().display()),
            }
        }
    }
}

/// Creates the listening socket `file` (replacing a stale socket, never another kind of file),
/// mode 0660, owned like the directory of the VMM's socket `path`.
fn listen(file: &Path, path: &Path) -> io::Result<AsyncFd<OwnedFd>> {
    let owner = path.parent().and_then(sys::foreign_owner);
    let spec = SocketSpec {
        ty: SocketType::STREAM,
        mode: GUEST_PORT_MODE,
        owner: owner.map(|(uid, gid)| (Some(uid), Some(gid))),
        replace: Replace::SocketOnly,
        backlog: 128,
    };
    let sock = match sys::listen_unix(file, spec) {
        Err(e) if owner.is_some() && e.kind() == io::ErrorKind::PermissionDenied => {
            // Not allowed to give it away (hvsockd is not root): keep it ours, as before.
            let (uid, gid) = owner.unwrap_or_default();
            tracing::warn!(
                "cannot give {} to uid {uid} gid {gid} (the owner of its directory): {e}; a VMM running as that user may not reach it",
                file.display(),
            );
            sys::listen_unix(
                file,
                SocketSpec {
                    owner: None,
                    ..spec
                },
            )?
        }
        other => other?,
    };
    sys::register(sock)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stale_guest_sockets_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let sock = |name: &str| {
            std::os::unix::net::UnixListener::bind(dir.path().join(name)).unwrap();
        };
        sock("vm.vsock"); // the VMM's own socket
        sock("vm.vsock_2761");
        sock("vm.vsock_5");
        sock("vm.vsock_x1");
        sock("other.vsock_5");
        std::fs::write(dir.path().join("vm.vsock_7"), b"a file").unwrap();
        remove_stale(&path, |port| port == 5);
        assert!(dir.path().join("vm.vsock_5").exists(), "a kept port stays");
        remove_stale(&path, |_| false);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["other.vsock_5", "vm.vsock", "vm.vsock_7", "vm.vsock_x1"]
        );
    }
}
