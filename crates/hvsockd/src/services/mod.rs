//! Services hvsockd serves itself: the host's side of the agent's host-served integration
//! services ([`hvsock_agent::services`]), one module per service.
//!
//! A served service is an ordinary listener in the root partition, bound by hvsockd with a
//! sink of its own ([`ChannelSink`]): the broker routes a guest's connection to it like to any
//! listener (a sandbox through its endpoint, a VM through its VMM's hybrid vsock `PATH_<port>`,
//! a VM device's connect), and each connection becomes a tokio task running the service's
//! [`Served::serve`].
//!
//! ```text
//!  registry/world ──generation──▶ runner (one per service) ──bind/unbind──▶ World
//!  broker ──offer──▶ Listener ──▶ ChannelSink ──▶ runner ──spawn──▶ Served::serve(Incoming)
//! ```
//!
//! # Rules
//!
//! - **Served while registered and enabled.** The runner follows the world's generation: it
//!   binds `CHILDREN:<service>` in the root while the service is registered and enabled, and
//!   unbinds (ending every live connection of it) when the service is disabled or removed.
//!   A disabled service refuses agents as any disabled service does (reason `disabled`).
//! - **Who wins a bind.** hvsockd's binding is an ordinary listener, so the ordinary rule
//!   holds: the first bound keeps the address. A program that bound the service in the root
//!   before hvsockd did (e.g. a listener session resumed after an upgrade) serves it, and
//!   hvsockd logs that once and binds as soon as that program unbinds. A program that binds
//!   it after hvsockd gets `addr_in_use`.
//! - **A removed partition** loses its live connection, and the service forgets it
//!   ([`Served::forget`]).
//! - **One connection per partition.** A newer connection of a partition to a service ends the
//!   older one ([`Incoming::ended`] fires), so a partition holds at most one connection per
//!   served service, whatever it tries.
//! - **A hostile connection ends alone.** Whatever [`Served::serve`] returns as an error ends
//!   that connection only, with one warning line, rate-limited per partition like every
//!   warning a partition causes ([`crate::metrics::warnings`]).
//! - **Across an upgrade or a restart** none of this is handed over ([`crate::handover`] keeps
//!   the sockets of clients, not these): the in-process listeners are bound afresh at start,
//!   the live connections close with the old process, and the agents reconnect.
//!
//! # Adding a served service
//!
//! Implement [`Served`] in a module of its own (its protocol's host side over the
//! [`Incoming`]'s stream; [`conn::Conn`] reads and writes the agent wire's frames and does the
//! Hello/Welcome), and add an `Arc` of it to the list [`crate::server::Server`] passes to
//! [`start`].

pub mod conn;
pub mod guests;
pub mod heartbeat;
pub mod kvp;
pub mod time;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_agent::wire::WireError;
use hvsock_proto::WireAddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::listeners::{Listener, Sink, Undeliverable};
use crate::router::ServiceState;

/// How many connections of one served service may wait for their task (the listener's
/// backlog, and its channel's room).
pub const BACKLOG: u32 = 64;

/// One connection to a served service.
#[derive(Debug)]
pub struct Incoming {
    /// The connecting partition.
    pub partition: VmId,
    /// Its name, for logs.
    pub label: String,
    /// Counts the connections of this service, from 1: a newer connection has a larger one.
    pub seq: u64,
    /// The connection.
    pub stream: tokio::net::UnixStream,
    /// Fires when the connection must end: a newer connection of the partition replaced it,
    /// the service stopped being served, or hvsockd is stopping.
    pub ended: CancellationToken,
}

/// What [`Served::serve`] returns.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), WireError>> + Send>>;

/// A service hvsockd serves itself.
pub trait Served: Send + Sync + std::fmt::Debug + 'static {
    /// Its ServiceId (what the runner binds).
    fn id(&self) -> ServiceId;
    /// Its friendly name, for logs.
    fn name(&self) -> &'static str;
    /// Serves one connection until it ends. `Ok` for an ordinary end (the peer closed,
    /// [`Incoming::ended`] fired); `Err` for what broke it, logged as a warning.
    fn serve(self: Arc<Self>, conn: Incoming) -> Serving;

    /// Partition `vm`, which connected before, was removed (its connection, if live, was
    /// ended): forget what the service keeps of it.
    fn forget(&self, _vm: VmId) {}
}

/// A listener's sink that hands each connection to its service's runner.
#[derive(Debug)]
pub struct ChannelSink(mpsc::Sender<(WireAddr, OwnedFd)>);

impl Sink for ChannelSink {
    fn deliver(&self, _local: WireAddr, peer: WireAddr, fd: OwnedFd) -> Result<(), Undeliverable> {
        match self.0.try_send((peer, fd)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full((_, fd))) => Err(Undeliverable::Full(fd)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Undeliverable::Gone(
                std::io::Error::other("the service stopped"),
            )),
        }
    }
}

/// Starts a runner per service in `served`, each until `shutdown`.
pub fn start(broker: Arc<Broker>, served: Vec<Arc<dyn Served>>, shutdown: CancellationToken) {
    for service in served {
        tokio::spawn(run(broker.clone(), service, shutdown.clone()));
    }
}

/// A binding of a served service.
struct Bound {
    listener: Arc<Listener>,
    incoming: mpsc::Receiver<(WireAddr, OwnedFd)>,
    /// Cancelled at unbind: ends every connection of the binding.
    connections: CancellationToken,
}

/// The live connection per partition: its seq and its token.
type Live = Arc<Mutex<HashMap<VmId, (u64, CancellationToken)>>>;

async fn run(broker: Arc<Broker>, service: Arc<dyn Served>, shutdown: CancellationToken) {
    let id = service.id();
    let name = service.name();
    let mut generation = broker.world().subscribe();
    let mut bound: Option<Bound> = None;
    // The last reason a bind failed, so that it is logged once, not on every change.
    let mut refused: Option<&'static str> = None;
    let live: Live = Arc::default();
    // Partitions that ever connected, to forget when they are removed.
    let mut known: HashSet<VmId> = HashSet::new();
    let mut seq = 0u64;
    loop {
        generation.borrow_and_update();
        let (wanted, gone) = {
            let world = broker.world().lock();
            let gone: Vec<VmId> = known
                .iter()
                .copied()
                .filter(|vm| world.partition(*vm).is_none())
                .collect();
            (world.service_state(id) == ServiceState::Enabled, gone)
        };
        for vm in gone {
            known.remove(&vm);
            let older = live.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm);
            if let Some((_, token)) = older {
                token.cancel();
            }
            service.forget(vm);
        }
        match (&bound, wanted) {
            (None, true) => match bind(&broker, id) {
                Ok(b) => {
                    tracing::info!(service = name, "serving {name} in hvsockd");
                    refused = None;
                    bound = Some(b);
                }
                Err(refusal) => {
                    if refused != Some(refusal.reason) {
                        tracing::warn!(
                            service = name,
                            "not serving {name} in hvsockd for now: {}; hvsockd binds it when that changes",
                            refusal.message
                        );
                        refused = Some(refusal.reason);
                    }
                }
            },
            (Some(_), false) => {
                if let Some(b) = bound.take() {
                    unbind(&broker, b);
                    tracing::info!(
                        service = name,
                        "{name} is disabled or unregistered: hvsockd no longer serves it"
                    );
                }
            }
            _ => {}
        }
        let next = async {
            match bound.as_mut() {
                Some(b) => b.incoming.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = generation.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            got = next => {
                let Some((peer, fd)) = got else { continue };
                let Some(b) = bound.as_ref() else { continue };
                b.listener.ack(1);
                seq += 1;
                known.insert(SockAddrHv::from(peer).vm_id);
                accept(&broker, &service, &live, b, peer, fd, seq);
            }
            () = shutdown.cancelled() => break,
        }
    }
    if let Some(b) = bound.take() {
        unbind(&broker, b);
    }
}

fn bind(broker: &Broker, id: ServiceId) -> Result<Bound, crate::world::Refused> {
    let (tx, rx) = mpsc::channel(BACKLOG as usize);
    let mut world = broker.world().lock();
    let root = world.root();
    let listener = world.bind(
        root,
        SockAddrHv::new(VmId::CHILDREN, id),
        BACKLOG,
        Some(std::process::id()),
        Arc::new(ChannelSink(tx)),
    )?;
    Ok(Bound {
        listener,
        incoming: rx,
        connections: CancellationToken::new(),
    })
}

fn unbind(broker: &Broker, b: Bound) {
    broker.world().lock().unbind(&b.listener);
    b.listener.close();
    b.connections.cancel();
}

fn accept(
    broker: &Arc<Broker>,
    service: &Arc<dyn Served>,
    live: &Live,
    b: &Bound,
    peer: WireAddr,
    fd: OwnedFd,
    seq: u64,
) {
    let partition = SockAddrHv::from(peer).vm_id;
    let label = broker.world().lock().partition_label(partition);
    let name = service.name();
    let stream = std::os::unix::net::UnixStream::from(fd);
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = name, partition = %label, "cannot serve a connection: {e}");
            return;
        }
    };
    let ended = b.connections.child_token();
    {
        let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, older)) = live.insert(partition, (seq, ended.clone())) {
            tracing::debug!(service = name, partition = %label, "a newer connection replaces the older");
            older.cancel();
        }
    }
    let conn = Incoming {
        partition,
        label: label.clone(),
        seq,
        stream,
        ended: ended.clone(),
    };
    let (broker, service, live) = (broker.clone(), service.clone(), live.clone());
    tokio::spawn(async move {
        let result = service.clone().serve(conn).await;
        {
            let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
            if live.get(&partition).is_some_and(|(s, _)| *s == seq) {
                live.remove(&partition);
            }
        }
        match result {
            Ok(()) => tracing::debug!(service = name, partition = %label, "connection ended"),
            Err(WireError::Closed(_) | WireError::Io(_)) if ended.is_cancelled() => {}
            Err(e) => {
                broker
                    .metrics()
                    .client_error(partition, "served_service_error");
                if broker
                    .metrics()
                    .warn_allowed(partition, "served_service_error", || label.clone())
                {
                    tracing::warn!(
                        service = name, partition = %label,
                        "{name}: ended the connection of partition {label}: {e}"
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests;
