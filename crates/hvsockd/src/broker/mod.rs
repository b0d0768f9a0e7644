//! The broker: the one connect path. Every connection hvsockd makes goes through it, whoever
//! asked (a client session on an endpoint, a guest connecting through its VMM's `PATH_<port>`,
//! and later a VM device process or a service served inside hvsockd):
//!
//! ```text
//!  route (world: the router's decision, with names) ──refused──▶ Settled(Err), counted
//!    │
//!    ├─ Target::Listener ── offer to its backlog ─┬─ delivered ──▶ Settled(Ok)
//!    │                                             ├─ refused ────▶ Settled(Err), counted
//!    │                                             └─ waiting ────▶ Pending: answer or timeout
//!    └─ Target::Guest ──── its GuestTransport ────── Pending: the guest's stream or a refusal
//! ```
//!
//! [`Broker::connect`] returns [`Connecting::Now`] when the answer is known at once and
//! [`Connecting::Later`] (a future) otherwise, so that a caller that serves other requests
//! meanwhile (a session) waits off its read loop. Refusals are counted here, when they are
//! decided; a connection is counted as established by [`Broker::established`] once the caller
//! has handed it over, since only the caller knows that it got through.
//!
//! # Targets
//!
//! - A **listener** ([`crate::listeners::Listener`]) is a backlog in front of a
//!   [`Sink`](crate::listeners::Sink): today a client session's socket. A service that hvsockd
//!   serves itself is a listener bound with a sink of its own (a channel to its task): bind it
//!   with [`crate::world::World::bind`] and the broker routes to it like to any other.
//! - A **guest** is a VM partition, for which hvsockd keeps no listeners: the guest decides,
//!   reached through a [`GuestTransport`] that makes each host-to-guest connection itself and
//!   hands back a descriptor or a refusal. A VM attached over hybrid vsock uses its VMM's
//!   socket ([`guest::Hybrid`]); a process that serves a VM's device and answers connects
//!   itself registers its own transport with [`Broker::serve_guest`], which takes precedence
//!   for that VM while it lives.

pub mod gateway;
pub mod guest;

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;

use crate::handover::Holder;
use crate::listeners::{Conn, Offer};
use crate::metrics::Metrics;
use crate::world::{self, Refused, Routed, Target};

pub use guest::GuestTransport;

/// A connect's answer that comes later.
pub type Pending = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// What a connect came to.
#[derive(Debug)]
pub struct Settled {
    /// The connecting partition.
    pub from: VmId,
    /// The connector's address (its partition and the service); `None` if it was refused
    /// before it was routed.
    pub local: Option<SockAddrHv>,
    /// The listener's address (the destination partition and the service).
    pub peer: Option<SockAddrHv>,
    /// The service as counted.
    pub service_key: Option<ServiceId>,
    /// When the connect was asked for.
    pub started: Instant,
    /// The connector's end (`None` when the connection was a [`Conn::Fd`], which the listener
    /// got as it is), or why not.
    pub result: Result<Option<OwnedFd>, Refused>,
}

/// A connect being answered.
pub enum Connecting {
    /// The answer, now.
    Now(Settled),
    /// The answer comes when this resolves (a full backlog, a guest's handshake).
    Later(Pending),
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connecting::Now(s) => f.debug_tuple("Now").field(s).finish(),
            Connecting::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// The connect path.
#[derive(Debug)]
pub struct Broker {
    world: Arc<world::Shared>,
    metrics: Arc<Metrics>,
    /// Transports that serve a VM's guest in place of its hybrid-vsock socket.
    guests: Mutex<HashMap<VmId, Weak<dyn GuestTransport>>>,
    /// Every socket hvsockd holds, to hand over (see [`crate::handover`]).
    holder: Arc<Holder>,
}

impl Broker {
    /// A broker over `world`, counting in `metrics`.
    pub fn new(world: Arc<world::Shared>, metrics: Arc<Metrics>) -> Broker {
        Broker {
            world,
            metrics,
            guests: Mutex::new(HashMap::new()),
            holder: Arc::new(Holder::default()),
        }
    }

    /// The table of held sockets (see [`crate::handover`]).
    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    /// The world it routes in.
    pub fn world(&self) -> &Arc<world::Shared> {
        &self.world
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves the guest of VM `vm` through `transport` for as long as the returned `Arc` (kept
    /// by the caller, e.g. a device process's session) lives.
    pub fn serve_guest(
        &self,
        vm: VmId,
        transport: Arc<dyn GuestTransport>,
    ) -> Arc<dyn GuestTransport> {
        self.guests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm, Arc::downgrade(&transport));
        transport
    }

    /// Like [`Broker::serve_guest`], unless a transport registered that way still serves `vm`:
    /// `false` then, and nothing changes (one device per VM).
    pub fn serve_guest_once(&self, vm: VmId, transport: Arc<dyn GuestTransport>) -> bool {
        let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        if guests.get(&vm).is_some_and(|w| w.strong_count() > 0) {
            return false;
        }
        guests.insert(vm, Arc::downgrade(&transport));
        true
    }

    /// Whether a device process (registered with [`Broker::serve_guest`]) serves `vm` now.
    pub fn has_device(&self, vm: VmId) -> bool {
        self.guests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vm)
            .is_some_and(|w| w.strong_count() > 0)
    }

    fn guest_transport(
        &self,
        vm: VmId,
        name: &str,
        hybrid_vsock: Option<&std::path::Path>,
    ) -> Option<Arc<dyn GuestTransport>> {
        let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(weak) = guests.get(&vm) {
            match weak.upgrade() {
                Some(t) => return Some(t),
                None => {
                    guests.remove(&vm);
                }
            }
        }
        drop(guests);
        let path = hybrid_vsock?;
        Some(Arc::new(guest::Hybrid::new(path, name)))
    }

    /// Routes a connect from `from` to `target`; a refusal is counted and logged.
    pub fn route(&self, from: VmId, target: SockAddrHv) -> Result<Routed, Refused> {
        let routed = {
            let world = self.world.lock();
            world
                .route_served(from, target, |dest| self.has_device(dest))
                .map_err(|refused| (world.service_key(target.service_id), refused))
        };
        routed.map_err(|(key, refused)| {
            self.metrics.refused(from, key, refused.reason);
            tracing::debug!(from = %self.world.label(from), ?target, "refused: {}", refused.message);
            refused
        })
    }

    /// Refuses a routed connect (the caller's own limits), counted.
    pub fn refuse(&self, routed: &Routed, refused: Refused, started: Instant) -> Settled {
        settle(&self.metrics, routed, started, Err(refused))
    }

    /// The whole connect path: routes, then offers the connection `conn` to what the route
    /// found, waiting at most `timeout` for a full backlog or a guest's answer.
    pub fn connect(
        &self,
        from: VmId,
        target: SockAddrHv,
        conn: Conn,
        timeout: Duration,
        started: Instant,
    ) -> Connecting {
        match self.route(from, target) {
            Ok(routed) => self.offer(routed, conn, timeout, started),
            Err(refused) => Connecting::Now(Settled {
                from,
                local: None,
                peer: None,
                service_key: None,
                started,
                result: Err(refused),
            }),
        }
    }

    /// Offers a routed connect to its target.
    pub fn offer(
        &self,
        routed: Routed,
        conn: Conn,
        timeout: Duration,
        started: Instant,
    ) -> Connecting {
        let metrics = self.metrics.clone();
        match routed.target.clone() {
            Target::Listener(listener) => {
                match listener.offer(routed.listener.into(), routed.connector.into(), conn) {
                    Offer::Delivered(end) => {
                        Connecting::Now(settle(&metrics, &routed, started, Ok(end)))
                    }
                    Offer::Refused(why) => Connecting::Now(settle(
                        &metrics,
                        &routed,
                        started,
                        Err(Refused::listener_closed(why)),
                    )),
                    Offer::Waiting(answer) => Connecting::Later(Box::pin(async move {
                        let result = match tokio::time::timeout(timeout, answer).await {
                            Ok(Ok(outcome)) => outcome.map_err(Refused::listener_closed),
                            Ok(Err(_)) => Err(Refused::listener_closed("the listener closed")),
                            // Dropping the receiver gives up: the listener closes the
                            // connection when it finds the waiter abandoned.
                            Err(_) => Err(Refused::new(
                                ErrorCode::TimedOut,
                                "timed_out",
                                format!(
                                    "the listener on {} accepted nothing within {} ms (its backlog is full)",
                                    routed.listener,
                                    timeout.as_millis()
                                ),
                            )),
                        };
                        settle(&metrics, &routed, started, result)
                    })),
                }
            }
            Target::Guest {
                partition,
                name,
                hybrid_vsock,
            } => {
                if let Conn::Fd(_) = conn {
                    // A connection that came out of a VM, routed into a VM.
                    let refused = Refused::new(
                        ErrorCode::Unreachable,
                        "vm_to_vm",
                        "the VM's parent is itself a VM, which hvsockd does not serve",
                    );
                    return Connecting::Now(settle(&metrics, &routed, started, Err(refused)));
                }
                let Some(transport) =
                    self.guest_transport(partition, &name, hybrid_vsock.as_deref())
                else {
                    let refused = Refused::new(
                        ErrorCode::Refused,
                        "no_attachment",
                        format!(
                            "VM {name} has no device connected (start `hvsock-vhost --vm {name}` for it) and no hybrid-vsock attachment"
                        ),
                    );
                    return Connecting::Now(settle(&metrics, &routed, started, Err(refused)));
                };
                let service = routed.listener.service_id;
                let Some(port) = service.vsock_port() else {
                    let label = self
                        .world
                        .lock()
                        .service(service)
                        .map(|s| format!("{} ({})", s.name, s.id))
                        .unwrap_or_else(|| service.to_string());
                    let refused = not_template(&label, &name);
                    return Connecting::Now(settle(&metrics, &routed, started, Err(refused)));
                };
                Connecting::Later(Box::pin(async move {
                    let result = transport.connect(port, timeout).await.map(Some);
                    settle(&metrics, &routed, started, result)
                }))
            }
        }
    }

    /// Counts a connection as established, once the caller handed it over.
    pub fn established(&self, settled: &Settled) {
        self.metrics
            .established(settled.from, settled.service_key, settled.started.elapsed());
    }
}

/// The settled connect, its refusal counted.
fn settle(
    metrics: &Metrics,
    routed: &Routed,
    started: Instant,
    result: Result<Option<OwnedFd>, Refused>,
) -> Settled {
    let from = routed.connector.vm_id;
    if let Err(refused) = &result {
        metrics.refused(from, routed.service_key, refused.reason);
    }
    Settled {
        from,
        local: Some(routed.connector),
        peer: Some(routed.listener),
        service_key: routed.service_key,
        started,
        result,
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

#[cfg(test)]
mod tests;
