//! VM attachments over hybrid vsock: how hvsockd reaches a guest through its VMM, and how a
//! guest reaches the host's listeners.
//!
//! # The hybrid-vsock protocol (Firecracker, Cloud Hypervisor, vhost-device-vsock)
//!
//! A VMM that offers "hybrid vsock" serves the guest's virtio-vsock device on the host as plain
//! Unix stream sockets around one path `PATH` (Firecracker `uds_path`, Cloud Hypervisor
//! `--vsock socket=PATH`, vhost-device-vsock `--uds-path PATH`):
//!
//! ```text
//!  host → guest                                  guest → host
//!  hvsockd ──connect──▶ PATH (the VMM listens)    guest connect(CID 2, port N)
//!  hvsockd ── "CONNECT N\n" ──▶ VMM                 VMM ──connect──▶ PATH_N (hvsockd listens)
//!  VMM ── "OK <hostport>\n" ──▶ hvsockd             from then on the socket is the guest's stream
//!  from then on the socket is the guest's stream
//! ```
//!
//! # Host to guest ([`connect_guest`])
//!
//! The handshake is the state machine [`Handshake`], moved by [`Event`]s:
//!
//! ```text
//!  Connecting ──Connected──▶ Sending ──Wrote(all)──▶ Reading ──Byte…'\n' = "OK <n>"──▶ Established
//!      │                        │                       │
//!      │ ENOENT/ECONNREFUSED     │ EPIPE/ECONNRESET      │ EOF/ECONNRESET before '\n'
//!      ▼                        ▼                       ▼
//!   Failed(NotServing)        Dropped ◀────────────────┘        anything else ─▶ Failed
//! ```
//!
//! The request goes out in one write and nothing else is sent before `OK`: vhost-device-vsock
//! reads the line once, non-blockingly, and may lose bytes sent with it. The reply is read one
//! byte at a time up to `\n` ([`ReplyReader`], at most [`MAX_REPLY_LEN`] bytes), so no byte of
//! the guest's stream is swallowed, and parsed by the pure [`parse_reply`] (in
//! `hvsock_proto::hybrid`, fuzzed). The number after `OK` is the VMM's host-side port, not
//! necessarily `N`. The handshake runs on a task of its own, counted against the session's
//! `max_outstanding_connects`, so the session serves other requests meanwhile.
//!
//! A `Dropped` handshake is retried with backoff (50 ms, doubling, at most 1 s apart) until the
//! connector's timeout: vhost-device-vsock sometimes closes a fresh connection before reading
//! the request. A guest with no listener on `N` is also a close before `OK`, so when the tries
//! run out the connector gets `ConnectionRefused` saying both possibilities. `TimedOut` means the
//! VMM took the request and the guest never answered; `HostUnreachable` that nothing serves
//! `PATH` (the VMM is not running). Once established, the socket is handed to the connector in
//! the `Connected` frame and hvsockd keeps no copy.
//!
//! # Guest to host ([`reconcile`])
//!
//! hvsockd listens on `PATH_<port>` exactly while the guest could be served there: a listener
//! in the VM's parent partition is bound to the vsock-template service of that port with a
//! pattern that accepts the VM, and the service is registered and enabled ([`wanted_ports`],
//! the same [`router::decide`] every connect goes through). So a guest connecting to a closed,
//! disabled or unregistered service meets no socket and is refused by its VMM, instead of being
//! accepted and dropped. [`reconcile`] opens and closes the sockets to match after every change
//! that can alter the set (bind, unbind, services, partitions, start-up). A socket accepted on
//! `PATH_<port>` is a connect from the VM to `(PARENT, port)`: it is routed again (the world
//! may have changed since) and offered to the listener as it is ([`Conn::Fd`]: no socket pair,
//! no relay), or closed. The VM is the attachment whose socket accepted it, never anything the
//! guest says. Only vsock-template services cross: a VM has ports, not GUIDs.
//!
//! `PATH_<port>` is created with mode 0660 and given the owner and group of `PATH`'s directory
//! (the VMM's, when hvsockd runs as root), so the VMM can connect and other users cannot speak
//! as the guest. Stale `PATH_<port>` sockets are removed at start; open ones at stop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::listeners::{Conn, Offer};
use crate::registry::PartitionKind;
use crate::router::{self, Policy, ServiceState, Topology};
use crate::server::Ctx;
use crate::state::{Refused, Target, World};

/// The reply parser is pure and lives with the other wire formats (fuzzed there, without
/// building hvsockd under the fuzzer).
pub use hvsock_proto::hybrid::{
    MAX_REPLY_LEN, ReplyError, ReplyReader, connect_request, parse_reply,
};

/// The first pause between handshake tries.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between handshake tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a guest's connection waits for a slot in a full listener backlog.
pub const GUEST_CONNECT_WAIT: Duration = hvsock::DEFAULT_CONNECT_TIMEOUT;
/// The longest hybrid-vsock path: `PATH_4294967295` must fit in a Unix socket address.
pub const MAX_PATH_LEN: usize = 107 - "_4294967295".len();

// ---------------------------------------------------------------------------------------------
// The host-to-guest handshake as a state machine.

/// Why a handshake cannot succeed by trying again.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Nothing serves the VMM's socket.
    #[error("nothing serves it: {0}")]
    NotServing(#[source] io::Error),
    /// The VMM answered something else than `OK <port>`.
    #[error("its answer was not `OK <port>`: {0}")]
    BadReply(#[source] ReplyError),
    /// A system call failed.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An event that makes no sense in the state (a bug; logged).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The state of one handshake attempt.
#[derive(Debug)]
pub enum Handshake {
    /// Connecting to `PATH`.
    Connecting,
    /// Connected; the request (`len` bytes) goes out in one write.
    Sending {
        /// The request's length.
        len: usize,
    },
    /// Request sent; reading the reply.
    Reading(ReplyReader),
    /// `OK <host_port>`: the socket is now the guest's stream.
    Established {
        /// The VMM's host-side port.
        host_port: u32,
    },
    /// Closed or reset before `OK`: no listener in the guest, or the VMM dropped the
    /// handshake. Worth another try.
    Dropped {
        /// What the VMM did.
        why: String,
    },
    /// Cannot succeed.
    Failed(Failure),
}

/// What happened on the socket.
#[derive(Debug)]
pub enum Event {
    /// `connect` to `PATH` succeeded.
    Connected,
    /// `connect` to `PATH` failed.
    ConnectFailed(io::Error),
    /// The one write of the request wrote this many bytes.
    Wrote(usize),
    /// The write failed.
    WriteFailed(io::Error),
    /// One byte of the reply.
    Byte(u8),
    /// End of file before the reply's newline.
    Eof,
    /// The read failed.
    ReadFailed(io::Error),
}

fn is_drop(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl Handshake {
    /// The state after `event`.
    pub fn on(self, event: Event, request_len: usize) -> Handshake {
        match (self, event) {
            (Handshake::Connecting, Event::Connected) => Handshake::Sending { len: request_len },
            (Handshake::Connecting, Event::ConnectFailed(e)) => match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    Handshake::Failed(Failure::NotServing(e))
                }
                // The VMM's listen backlog is full: it is busy, not gone.
                io::ErrorKind::WouldBlock => Handshake::Dropped {
                    why: "its listen backlog was full".into(),
                },
                _ => Handshake::Failed(Failure::Io {
                    doing: "connecting",
                    source: e,
                }),
            },
            (Handshake::Sending { len }, Event::Wrote(n)) if n == len => {
                Handshake::Reading(ReplyReader::default())
            }
            (Handshake::Sending { len }, Event::Wrote(n)) => Handshake::Dropped {
                why: format!("it took {n} of the {len} bytes of the request"),
            },
            (Handshake::Sending { .. }, Event::WriteFailed(e)) if is_drop(&e) => {
                Handshake::Dropped {
                    why: format!("it closed the connection before the request ({e})"),
                }
            }
            (Handshake::Sending { .. }, Event::WriteFailed(e)) => Handshake::Failed(Failure::Io {
                doing: "sending CONNECT",
                source: e,
            }),
            (Handshake::Reading(mut reader), Event::Byte(b)) => match reader.push(b) {
                None => Handshake::Reading(reader),
                Some(Ok(host_port)) => Handshake::Established { host_port },
                Some(Err(e)) => Handshake::Failed(Failure::BadReply(e)),
            },
            (Handshake::Reading(reader), Event::Eof) => Handshake::Dropped {
                why: if reader.so_far().is_empty() {
                    "it closed the connection without answering".into()
                } else {
                    format!(
                        "it closed the connection after {:?}",
                        String::from_utf8_lossy(reader.so_far())
                    )
                },
            },
            (Handshake::Reading(_), Event::ReadFailed(e)) if is_drop(&e) => Handshake::Dropped {
                why: format!("it reset the connection without answering ({e})"),
            },
            (Handshake::Reading(_), Event::ReadFailed(e)) => Handshake::Failed(Failure::Io {
                doing: "reading the answer",
                source: e,
            }),
            (state, event) => {
                tracing::error!(?state, ?event, "hybrid-vsock handshake: unexpected event");
                Handshake::Failed(Failure::Internal(format!(
                    "event {event:?} in state {state:?}"
                )))
            }
        }
    }

    /// Whether no more events can change it.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Handshake::Established { .. } | Handshake::Dropped { .. } | Handshake::Failed(_)
        )
    }
}

/// Runs the handshake on a connected `stream`: sends the request for `port` in one write,
/// then reads the reply byte by byte. Returns the final state.
pub async fn handshake<S>(stream: &mut S, port: u32) -> Handshake
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = connect_request(port);
    let mut state = Handshake::Connecting.on(Event::Connected, request.len());
    while !state.is_done() {
        let event = match &state {
            Handshake::Sending { .. } => match stream.write(&request).await {
                Ok(n) => Event::Wrote(n),
                Err(e) => Event::WriteFailed(e),
            },
            _ => {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte).await {
                    Ok(0) => Event::Eof,
                    Ok(_) => Event::Byte(byte[0]),
                    Err(e) => Event::ReadFailed(e),
                }
            }
        };
        state = state.on(event, request.len());
    }
    state
}

/// Why a connection into a guest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Nothing serves the VMM's socket: the VM is not running.
    #[error(
        "the VM is not running, or its VMM does not serve {path}: {source} (start the VMM, or fix the path with `hvsock vm remove` and `vm add --hybrid-vsock`)"
    )]
    NotServing {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every try was closed before `OK`.
    #[error(
        "the guest did not accept the connection on vsock port {port} ({tries} tries in {elapsed_ms} ms, last: the VMM {last}): either nothing in the guest listens on port {port}, or its VMM ({path}) dropped the handshake; from the host the two look the same"
    )]
    NotAccepted {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// Handshakes tried.
        tries: u32,
        /// How long they took.
        elapsed_ms: u128,
        /// What happened to the last.
        last: String,
    },
    /// The timeout passed while the VMM or the guest kept silent.
    #[error(
        "no answer to CONNECT {port} on {path} within {timeout_ms} ms ({tries} tries): is the guest up and its vsock driver loaded?"
    )]
    TimedOut {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// Handshakes tried.
        tries: u32,
        /// The timeout.
        timeout_ms: u128,
    },
    /// Anything else.
    #[error("talking to the VMM at {path}: {source}")]
    Failed {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: Failure,
    },
}

impl AttachError {
    /// The wire code and metrics reason of this error.
    pub fn code(&self) -> (ErrorCode, &'static str) {
        match self {
            AttachError::NotServing { .. } => (ErrorCode::Unreachable, "vm_not_running"),
            AttachError::NotAccepted { .. } => (ErrorCode::Refused, "vm_refused"),
            AttachError::TimedOut { .. } => (ErrorCode::TimedOut, "timed_out"),
            AttachError::Failed { .. } => (ErrorCode::Refused, "vm_failed"),
        }
    }
}

/// Makes a connection into the guest on `port` through the VMM's hybrid-vsock socket `path`,
/// retrying dropped handshakes until `timeout`. Returns the guest's stream, blocking, ready to
/// hand over.
pub async fn connect_guest(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<OwnedFd, AttachError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let attempt = async {
            let request_len = connect_request(port).len();
            match tokio::net::UnixStream::connect(path).await {
                Ok(mut stream) => {
                    let state = handshake(&mut stream, port).await;
                    (state, Some(stream))
                }
                Err(e) => (
                    Handshake::Connecting.on(Event::ConnectFailed(e), request_len),
                    None,
                ),
            }
        };
        let (state, stream) = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(done) => done,
            Err(_) => {
                return Err(AttachError::TimedOut {
                    path: path.to_owned(),
                    port,
                    tries,
                    timeout_ms: timeout.as_millis(),
                });
            }
        };
        match (state, stream) {
            (Handshake::Established { host_port }, Some(stream)) => {
                tracing::debug!(path = %path.display(), port, host_port, tries, "guest connection established");
                let std = stream.into_std().map_err(|source| AttachError::Failed {
                    path: path.to_owned(),
                    source: Failure::Io {
                        doing: "taking the socket from the runtime",
                        source,
                    },
                })?;
                // The connector's HvStream blocks unless asked otherwise.
                std.set_nonblocking(false)
                    .map_err(|source| AttachError::Failed {
                        path: path.to_owned(),
                        source: Failure::Io {
                            doing: "making the socket blocking",
                            source,
                        },
                    })?;
                return Ok(OwnedFd::from(std));
            }
            (Handshake::Dropped { why }, _) => {
                tracing::debug!(path = %path.display(), port, tries, "handshake dropped: the VMM {why}");
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(AttachError::NotAccepted {
                        path: path.to_owned(),
                        port,
                        tries,
                        elapsed_ms: started.elapsed().as_millis(),
                        last: why,
                    });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            (Handshake::Failed(Failure::NotServing(source)), _) => {
                return Err(AttachError::NotServing {
                    path: path.to_owned(),
                    source,
                });
            }
            (Handshake::Failed(source), _) => {
                return Err(AttachError::Failed {
                    path: path.to_owned(),
                    source,
                });
            }
            (state, _) => {
                return Err(AttachError::Failed {
                    path: path.to_owned(),
                    source: Failure::Internal(format!("the handshake ended in {state:?}")),
                });
            }
        }
    }
}

/// The refusal a connector gets for a service that cannot cross into a guest.
pub fn not_template(service: &str, vm: &str) -> Refused {
    Refused::new(
        ErrorCode::Unsupported,
        "not_template",
        format!(
            "service {service} cannot cross into VM {vm}: only vsock-template services (a vsock port; register one with `hvsock service add NAME --port N`) can cross into a Linux guest"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Guest to host: which PATH_<port> must be open.

/// The guest ports on which `vm` must be served: template services for which `router::decide`
/// finds a listener when `vm` connects to `(PARENT, service)`.
///
/// `bound` lists every live listener as `(partition, pattern, service)`; `state` says what the
/// registry knows of a service.
pub fn wanted_ports(
    topo: &Topology,
    vm: VmId,
    bound: &[(VmId, VmId, ServiceId)],
    state: impl Fn(ServiceId) -> ServiceState,
) -> BTreeSet<u32> {
    wanted_ports_with_policy(topo, vm, bound, state, |_| Policy::default())
}

/// [`wanted_ports`] with each service's policy (`router::decide_with_policy`): a port stays
/// closed when the policy would refuse `vm` (its `connect` rule) or every listener that would
/// take it (its `bind` and `wildcard_bind` rules).
pub fn wanted_ports_with_policy(
    topo: &Topology,
    vm: VmId,
    bound: &[(VmId, VmId, ServiceId)],
    state: impl Fn(ServiceId) -> ServiceState,
    policy: impl Fn(ServiceId) -> Policy,
) -> BTreeSet<u32> {
    let Some(parent) = topo.parent(vm) else {
        return BTreeSet::new();
    };
    let services: BTreeSet<ServiceId> = bound
        .iter()
        .filter(|(partition, _, _)| *partition == parent)
        .map(|&(_, _, service)| service)
        .filter(|service| service.vsock_port().is_some())
        .collect();
    let mut ports = BTreeSet::new();
    for service in services {
        let Some(port) = service.vsock_port() else {
            continue;
        };
        let patterns: Vec<VmId> = bound
            .iter()
            .filter(|&&(partition, _, s)| partition == parent && s == service)
            .map(|&(_, pattern, _)| pattern)
            .collect();
        let target = SockAddrHv::new(VmId::PARENT, service);
        let policy = policy(service);
        let route = router::decide_with_policy(topo, vm, target, state(service), &policy, |dest| {
            (dest == parent).then_some(patterns.as_slice())
        });
        if matches!(
            route,
            Ok(router::Route {
                listener: Some(_),
                ..
            })
        ) {
            ports.insert(port);
        }
    }
    ports
}

/// Every `(VM, port)` that must be open, with the VM's hybrid-vsock path.
pub fn wanted(world: &World) -> BTreeMap<(VmId, u32), PathBuf> {
    let vms: Vec<(VmId, PathBuf)> = world
        .partitions()
        .filter(|p| p.kind == PartitionKind::Vm)
        .filter_map(|p| Some((p.id, p.hybrid_vsock.clone()?)))
        .collect();
    let mut out = BTreeMap::new();
    if vms.is_empty() {
        return out;
    }
    let bound: Vec<(VmId, VmId, ServiceId)> = world
        .listeners()
        .map(|l| (l.partition, l.addr.vm_id, l.addr.service_id))
        .collect();
    let state = |service: ServiceId| world.service_state(service);
    for (vm, path) in vms {
        let policy = |service: ServiceId| world.effective_policy(service).clone();
        for port in wanted_ports_with_policy(world.topology(), vm, &bound, state, policy) {
            out.insert((vm, port), path.clone());
        }
    }
    out
}

/// `PATH_<port>`.
pub fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Checks a hybrid-vsock path given by a user: absolute, short enough for `PATH_<port>`, no NUL,
/// in an existing directory.
pub fn check_path(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() {
        return Err(format!(
            "the hybrid-vsock path {} must be absolute",
            path.display()
        ));
    }
    if bytes.contains(&0) {
        return Err("the hybrid-vsock path contains a NUL byte".into());
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(format!(
            "the hybrid-vsock path {} is {} bytes long; at most {MAX_PATH_LEN} fit, because hvsockd listens on PATH_<port> and a Unix socket path holds 107 bytes",
            path.display(),
            bytes.len()
        ));
    }
    if path.file_name().is_none() {
        return Err(format!(
            "the hybrid-vsock path {} names no file",
            path.display()
        ));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        _ => Err(format!(
            "the directory of the hybrid-vsock path {} does not exist: create it first (the VMM's socket and hvsockd's PATH_<port> sockets live there)",
            path.display()
        )),
    }
}

/// One open `PATH_<port>`.
#[derive(Debug)]
struct OpenPort {
    file: PathBuf,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    open: HashMap<(VmId, u32), OpenPort>,
    /// Some wanted socket could not be opened: try again later.
    failed: bool,
}

/// The guest-to-host sockets hvsockd has open.
#[derive(Debug, Default)]
pub struct Attachments {
    inner: Mutex<Inner>,
    /// Guest connections waiting for a listener's backlog, per VM.
    waiting: Mutex<HashMap<VmId, Arc<AtomicUsize>>>,
}

impl Attachments {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest ports open for `vm`.
    pub fn ports(&self, vm: VmId) -> Vec<u32> {
        let mut ports: Vec<u32> = self
            .lock()
            .open
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
}

/// Opens and closes `PATH_<port>` sockets to match [`wanted`]. Call after every change that can
/// alter it; cheap when nothing changed. Must run inside the runtime.
pub fn reconcile(ctx: &Arc<Ctx>) {
    // Lock order: attachments, then the world, so that two reconciles apply in order.
    let mut inner = ctx.attachments.lock();
    let wanted = wanted(&ctx.world());
    let stale: Vec<(VmId, u32)> = inner
        .open
        .iter()
        .filter(|(key, open)| {
            wanted.get(key).map(|p| port_path(p, key.1)) != Some(open.file.clone())
        })
        .map(|(key, _)| *key)
        .collect();
    for key in stale {
        if let Some(open) = inner.open.remove(&key) {
            close_port(&open);
            tracing::info!(vm = %ctx.label(key.0), port = key.1, file = %open.file.display(), "guest port closed");
        }
    }
    inner.failed = false;
    for ((vm, port), path) in wanted {
        if inner.open.contains_key(&(vm, port)) {
            continue;
        }
        let file = port_path(&path, port);
        match listen(&file, &path) {
            Ok(sock) => {
                let cancel = ctx.shutdown.child_token();
                tokio::spawn(serve_port(ctx.clone(), vm, port, sock, cancel.clone()));
                tracing::info!(vm = %ctx.label(vm), port, file = %file.display(), "guest port open");
                inner.open.insert((vm, port), OpenPort { file, cancel });
            }
            Err(e) => {
                tracing::warn!(
                    vm = %ctx.label(vm), port,
                    "cannot listen for the guest on {}: {e}; retrying every few seconds",
                    file.display()
                );
                inner.failed = true;
            }
        }
    }
}

/// Retries failed opens every `every` until hvsockd stops.
pub async fn retry_loop(ctx: Arc<Ctx>, every: Duration) {
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if ctx.attachments.lock().failed {
            reconcile(&ctx);
        }
    }
}

fn close_port(open: &OpenPort) {
    open.cancel.cancel();
    if let Err(e) = std::fs::remove_file(&open.file) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", open.file.display());
        }
    }
}

/// Closes every guest socket (on shutdown).
pub fn close_all(ctx: &Ctx) {
    for (_, open) in ctx.attachments.lock().open.drain() {
        close_port(&open);
    }
}

/// Removes `PATH_<digits>` sockets left by an hvsockd that did not stop cleanly.
pub fn remove_stale(path: &Path) {
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
    let context = |doing: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{doing} {}: {e}", file.display()))
    };
    match std::fs::symlink_metadata(file) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(file).map_err(|e| context("removing the stale socket", e))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: hvsockd will not replace it; remove it",
                    file.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context("looking at", e)),
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(file).map_err(|e| context("naming", e.into()))?;
    rustix::net::bind(&sock, &addr).map_err(|e| context("binding", e.into()))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| context("setting the mode of", e))?;
    if let Some(dir) = path.parent() {
        if let Ok(meta) = std::fs::metadata(dir) {
            let (uid, gid) = (meta.uid(), meta.gid());
            if uid != rustix::process::geteuid().as_raw()
                || gid != rustix::process::getegid().as_raw()
            {
                if let Err(e) = std::os::unix::fs::chown(file, Some(uid), Some(gid)) {
                    tracing::warn!(
                        "cannot give {} to uid {uid} gid {gid} (the owner of {}): {e}; a VMM running as that user may not reach it",
                        file.display(),
                        dir.display()
                    );
                }
            }
        }
    }
    rustix::net::listen(&sock, 128).map_err(|e| context("listening on", e.into()))?;
    crate::endpoint::register(sock)
}

async fn serve_port(
    ctx: Arc<Ctx>,
    vm: VmId,
    port: u32,
    listener: AsyncFd<OwnedFd>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => {
                // Connections the kernel queued before the socket closed: route them (the
                // route no longer holds, so they are refused and counted) rather than let
                // them vanish with the socket.
                while let Ok(sock) =
                    rustix::net::accept_with(listener.get_ref(), SocketFlags::CLOEXEC)
                {
                    guest_connect(&ctx, vm, port, sock);
                }
                return;
            }
            // Blocking mode: the listener's client uses the socket as it is.
            accepted = crate::endpoint::accept(&listener, SocketFlags::empty()) => accepted,
        };
        match accepted {
            Ok(sock) => guest_connect(&ctx, vm, port, sock),
            Err(e) => {
                tracing::error!(vm = %ctx.label(vm), port, "accepting a guest connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A guest's connection accepted on `PATH_<port>`: a connect from `vm` to `(PARENT, port)`.
fn guest_connect(ctx: &Arc<Ctx>, vm: VmId, port: u32, sock: OwnedFd) {
    let started = Instant::now();
    let service = ServiceId::from_vsock_port(port);
    let target = SockAddrHv::new(VmId::PARENT, service);
    let routed = {
        let world = ctx.world();
        world
            .route(vm, target)
            .map_err(|refused| (world.service_key(service), refused))
    };
    let refuse = |key: Option<ServiceId>, refused: Refused| {
        ctx.metrics.refused(vm, key, refused.reason);
        tracing::debug!(from = %ctx.label(vm), port, "guest connection refused: {}", refused.message);
        // Dropping the socket closes it: the guest reads EOF (a reset, through its VMM).
    };
    let routed = match routed {
        Ok(routed) => routed,
        Err((key, refused)) => {
            refuse(key, refused);
            return;
        }
    };
    let Target::Listener(listener) = routed.target.clone() else {
        refuse(
            routed.service_key,
            Refused::new(
                ErrorCode::Unreachable,
                "vm_to_vm",
                "the VM's parent is itself a VM, which hvsockd does not serve",
            ),
        );
        return;
    };
    let waiting = ctx.attachments.waiting(vm);
    if waiting.load(Ordering::Acquire) >= ctx.limits.max_outstanding_connects {
        refuse(
            routed.service_key,
            Refused::new(
                ErrorCode::Busy,
                "busy",
                format!(
                    "{} of this VM's connections already wait for full backlogs",
                    ctx.limits.max_outstanding_connects
                ),
            ),
        );
        return;
    }
    match listener.offer(
        routed.listener.into(),
        routed.connector.into(),
        Conn::Fd(sock),
    ) {
        Offer::Delivered(_) => {
            ctx.metrics
                .established(vm, routed.service_key, started.elapsed());
        }
        Offer::Refused(why) => refuse(routed.service_key, Refused::listener_closed(why)),
        Offer::Waiting(answer) => {
            waiting.fetch_add(1, Ordering::AcqRel);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(GUEST_CONNECT_WAIT, answer).await {
                    Ok(Ok(Ok(_))) => {
                        ctx.metrics
                            .established(vm, routed.service_key, started.elapsed())
                    }
                    Ok(Ok(Err(_)) | Err(_)) => {
                        ctx.metrics
                            .refused(vm, routed.service_key, "listener_closed");
                    }
                    // Dropping the receiver gives up: the listener closes the socket when it
                    // finds the waiter abandoned.
                    Err(_) => ctx.metrics.refused(vm, routed.service_key, "timed_out"),
                }
                waiting.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hvsock::Guid;
    use tokio::io::AsyncReadExt;

    fn run(events: Vec<Event>) -> Handshake {
        let len = connect_request(5).len();
        let mut state = Handshake::Connecting;
        for e in events {
            state = state.on(e, len);
        }
        state
    }

    fn err(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "x")
    }

    #[test]
    fn state_machine_table() {
        let len = connect_request(5).len();
        let ok = |extra: &[u8]| {
            let mut v = vec![Event::Connected, Event::Wrote(len)];
            v.extend(extra.iter().map(|&b| Event::Byte(b)));
            v
        };
        assert!(matches!(
            run(ok(b"OK 77\n")),
            Handshake::Established { host_port: 77 }
        ));
        assert!(matches!(run(ok(b"OK 77")), Handshake::Reading(_)));
        assert!(matches!(
            run(ok(b"NO\n")),
            Handshake::Failed(Failure::BadReply(ReplyError::NotOk(_)))
        ));
        assert!(matches!(
            run(ok(&[b'7'; MAX_REPLY_LEN])),
            Handshake::Failed(Failure::BadReply(ReplyError::TooLong))
        ));
        // Dropped: retryable.
        let mut eof = ok(b"OK");
        eof.push(Event::Eof);
        assert!(matches!(run(eof), Handshake::Dropped { .. }));
        assert!(matches!(
            run(vec![
                Event::Connected,
                Event::WriteFailed(err(io::ErrorKind::BrokenPipe))
            ]),
            Handshake::Dropped { .. }
        ));
        let mut reset = ok(b"");
        reset.push(Event::ReadFailed(err(io::ErrorKind::ConnectionReset)));
        assert!(matches!(run(reset), Handshake::Dropped { .. }));
        assert!(matches!(
            run(vec![Event::Connected, Event::Wrote(len - 1)]),
            Handshake::Dropped { .. }
        ));
        assert!(matches!(
            run(vec![Event::ConnectFailed(err(io::ErrorKind::WouldBlock))]),
            Handshake::Dropped { .. }
        ));
        // Failed: not retryable.
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            assert!(matches!(
                run(vec![Event::ConnectFailed(err(kind))]),
                Handshake::Failed(Failure::NotServing(_))
            ));
        }
        assert!(matches!(
            run(vec![Event::ConnectFailed(err(
                io::ErrorKind::PermissionDenied
            ))]),
            Handshake::Failed(Failure::Io { .. })
        ));
        let mut other = ok(b"");
        other.push(Event::ReadFailed(err(io::ErrorKind::InvalidData)));
        assert!(matches!(run(other), Handshake::Failed(Failure::Io { .. })));
        // Out of order: a logged internal failure, not a panic.
        assert!(matches!(
            run(vec![Event::Byte(b'O')]),
            Handshake::Failed(Failure::Internal(_))
        ));
        assert!(matches!(
            run(vec![Event::Connected, Event::Eof]),
            Handshake::Failed(Failure::Internal(_))
        ));
    }

    /// A fake VMM on the other end of an in-memory pipe.
    async fn against(reply: &'static [u8], then_close: bool) -> (Handshake, Vec<u8>, Vec<u8>) {
        let (mut ours, mut vmm) = tokio::io::duplex(64);
        let vmm_side = tokio::spawn(async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while vmm.read(&mut b).await.unwrap() == 1 {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            vmm.write_all(reply).await.unwrap();
            if then_close {
                drop(vmm);
                return (line, None);
            }
            (line, Some(vmm))
        });
        let state = handshake(&mut ours, 2761).await;
        let (request, vmm) = vmm_side.await.unwrap();
        // What the handshake left unread stays for the connector.
        let mut rest = Vec::new();
        if let Some(vmm) = vmm {
            drop(vmm);
            ours.read_to_end(&mut rest).await.unwrap();
        }
        (state, request, rest)
    }

    #[tokio::test]
    async fn the_driver_sends_one_line_and_reads_no_further_than_ok() {
        let (state, request, rest) = against(b"OK 1025\nguest bytes", false).await;
        assert!(
            matches!(state, Handshake::Established { host_port: 1025 }),
            "{state:?}"
        );
        assert_eq!(request, b"CONNECT 2761\n");
        assert_eq!(rest, b"guest bytes");
    }

    #[tokio::test]
    async fn the_driver_reports_a_close_before_ok_as_dropped() {
        let (state, _, _) = against(b"", true).await;
        assert!(matches!(state, Handshake::Dropped { .. }), "{state:?}");
        let (state, _, _) = against(b"OK 1", true).await;
        assert!(matches!(state, Handshake::Dropped { .. }), "{state:?}");
    }

    #[tokio::test]
    async fn the_driver_refuses_a_bad_answer() {
        let (state, _, _) = against(b"FAIL\n", false).await;
        assert!(
            matches!(state, Handshake::Failed(Failure::BadReply(_))),
            "{state:?}"
        );
    }

    fn id(n: u8) -> VmId {
        VmId(Guid::from_bytes([n; 16]))
    }

    #[test]
    fn wanted_ports_follow_listeners_patterns_and_services() {
        // root ─┬─ vm1
        //       ├─ vm2
        //       └─ sandbox ── vm3
        let (root, vm1, vm2, sandbox, vm3) = (id(1), id(2), id(3), id(4), id(5));
        let mut topo = Topology::new(root);
        topo.insert(vm1, root);
        topo.insert(vm2, root);
        topo.insert(sandbox, root);
        topo.insert(vm3, sandbox);
        let p = ServiceId::from_vsock_port;
        let not_template = ServiceId(Guid::from_bytes([9; 16]));
        let enabled = |s: ServiceId| {
            if s == p(7) {
                ServiceState::Disabled
            } else if s == p(8) {
                ServiceState::Unregistered
            } else {
                ServiceState::Enabled
            }
        };
        let bound = [
            (root, VmId::ZERO, p(1)),         // any VM of root
            (root, vm1, p(2)),                // only vm1
            (root, VmId::CHILDREN, p(3)),     // children: vm1, vm2
            (root, VmId::LOOPBACK, p(4)),     // the root itself: no VM
            (root, sandbox, p(5)),            // the sandbox only: no VM
            (root, VmId::ZERO, p(7)),         // disabled
            (root, VmId::ZERO, p(8)),         // unregistered
            (root, VmId::ZERO, not_template), // not a port
            (sandbox, VmId::ZERO, p(6)),      // vm3's parent
            (vm2, VmId::ZERO, p(9)),          // inside a VM: not the parent of anyone
        ];
        let ports = |vm| wanted_ports(&topo, vm, &bound, enabled);
        assert_eq!(ports(vm1), BTreeSet::from([1, 2, 3]));
        assert_eq!(ports(vm2), BTreeSet::from([1, 3]));
        assert_eq!(ports(vm3), BTreeSet::from([6]));
        assert_eq!(ports(id(0x77)), BTreeSet::new()); // unknown partition
        assert_eq!(wanted_ports(&topo, vm1, &[], enabled), BTreeSet::new());
        // A more specific listener that refuses does not hide a wildcard that accepts: the
        // router picks among accepting patterns only.
        let both = [(root, vm1, p(1)), (root, VmId::ZERO, p(1))];
        assert_eq!(
            wanted_ports(&topo, vm2, &both, enabled),
            BTreeSet::from([1])
        );
    }

    #[test]
    fn wanted_ports_follow_the_services_policies() {
        let (root, vm1, vm2) = (id(1), id(2), id(3));
        let mut topo = Topology::new(root);
        topo.insert(vm1, root);
        topo.insert(vm2, root);
        let p = ServiceId::from_vsock_port;
        let enabled = |_| ServiceState::Enabled;
        let bound = [
            (root, VmId::ZERO, p(1)),
            (root, VmId::CHILDREN, p(2)),
            (root, VmId::ZERO, p(3)),
        ];
        let policy = |s: ServiceId| {
            if s == p(1) {
                // Only vm1 may connect.
                Policy {
                    connect: Some(vec![vm1]),
                    ..Policy::default()
                }
            } else if s == p(3) {
                // Its only listener is a wildcard, which the policy no longer allows.
                Policy {
                    wildcard_bind: false,
                    ..Policy::default()
                }
            } else {
                Policy::default()
            }
        };
        let ports = |vm| wanted_ports_with_policy(&topo, vm, &bound, enabled, policy);
        assert_eq!(ports(vm1), BTreeSet::from([1, 2]));
        assert_eq!(ports(vm2), BTreeSet::from([2]));
    }

    #[test]
    fn port_paths_and_path_checks() {
        assert_eq!(
            port_path(Path::new("/run/vm/fc.vsock"), 2761),
            PathBuf::from("/run/vm/fc.vsock_2761")
        );
        assert!(
            check_path(Path::new("relative/x.sock"))
                .unwrap_err()
                .contains("absolute")
        );
        let long = format!("/tmp/{}", "x".repeat(MAX_PATH_LEN));
        assert!(
            check_path(Path::new(&long))
                .unwrap_err()
                .contains("at most")
        );
        assert!(
            check_path(Path::new("/nonexistent-hvsock-dir/vm.vsock"))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            check_path(Path::new("/"))
                .unwrap_err()
                .contains("names no file")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_path(&dir.path().join("vm.vsock")), Ok(()));
    }

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
        remove_stale(&path);
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
