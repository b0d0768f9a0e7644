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
//! # Host to guest ([`handshake::connect_guest`], through the broker's [`Hybrid`](crate::broker::guest::Hybrid) transport)
//!
//! The handshake is the state machine [`handshake::Handshake`], moved by [`handshake::Event`]s:
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
//! byte at a time up to `\n` ([`handshake::ReplyReader`], at most [`handshake::MAX_REPLY_LEN`] bytes), so no byte of
//! the guest's stream is swallowed, and parsed by the pure [`handshake::parse_reply`] (in
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
//! # Guest to host ([`sockets::GuestPorts`])
//!
//! hvsockd listens on `PATH_<port>` exactly while the guest could be served there: a listener
//! in the VM's parent partition is bound to the vsock-template service of that port with a
//! pattern that accepts the VM, and the service is registered and enabled ([`ports::wanted_ports`],
//! the same [`crate::router::decide`] every connect goes through). So a guest connecting to a closed,
//! disabled or unregistered service meets no socket and is refused by its VMM, instead of being
//! accepted and dropped. [`sockets::GuestPorts::reconcile`] opens and closes the sockets to match;
//! it runs whenever the world changes (bind, unbind, services, partitions, start-up), driven by
//! the world's change signal ([`crate::reconcile`]). A socket accepted on
//! `PATH_<port>` is a connect from the VM to `(PARENT, port)`: it is routed again (the world
//! may have changed since) by the [broker](crate::broker) and offered to the listener as it is
//! ([`Conn::Fd`](crate::listeners::Conn::Fd): no socket pair,
//! no relay), or closed. The VM is the attachment whose socket accepted it, never anything the
//! guest says. Only vsock-template services cross: a VM has ports, not GUIDs.
//!
//! `PATH_<port>` is created with mode 0660 and given the owner and group of `PATH`'s directory
//! (the VMM's, when hvsockd runs as root), so the VMM can connect and other users cannot speak
//! as the guest. Stale `PATH_<port>` sockets are removed at start; open ones at stop.

//!
//! # Modules
//!
//! - [`handshake`]: the host-to-guest handshake as a state machine, and its driver with retries;
//! - [`ports`]: the pure choice of the guest ports to open, and the checks of a user's path;
//! - [`sockets`]: the `PATH_<port>` sockets themselves: opening, closing, accepting.

pub mod handshake;
pub mod ports;
pub mod sockets;

pub use ports::{check_path, port_path};
