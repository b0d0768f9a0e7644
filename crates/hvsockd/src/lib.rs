//! hvsockd, the hvsock provider: on a Linux host it plays the hypervisor's part for Hyper-V
//! sockets. It authorises and routes connections between partitions (the host, its sandboxes
//! and VMs), then hands each end a kernel socket and gets out of the way: it relays no bytes
//! and keeps no data-path descriptor, so established connections outlive it.
//!
//! A sandbox partition is reached through its endpoint socket. A VM partition is reached
//! through its VMM's hybrid-vsock socket (Firecracker, Cloud Hypervisor, vhost-device-vsock for
//! QEMU): hvsockd connects into the guest through it, and listens on `PATH_<port>` exactly while
//! a host listener the guest may reach exists; the guest itself needs no daemon, only the
//! crate's vsock transport. Only vsock-template services (ports) cross into a guest. See
//! [`attach`] and `docs/vms.md`; `docs/architecture.md` follows one connect and one admin
//! change through the modules below.
//!
//! # Modules, from the process down
//!
//! - [`daemon`]: the process (`main` only parses flags): logging, runtime, signals, readiness;
//! - [`server`]: start-up ([`Server::bind`]) wires the parts below together; shutdown;
//! - [`config`]: [`Config`] and its [`Limits`], the TOML file (`--config`) merged with the
//!   flags, the services and partitions it ensures at start, `--check`;
//! - [`admin`]: the HTTP + JSON admin API on `admin.sock`: parse → [`control`] → view, with the
//!   JSON types of the `hvsock-api` crate;
//! - [`control`]: the only code that changes the registry and the world; it waits for what
//!   follows from a change;
//! - [`reconcile`]: what follows from the world (endpoints, VM guest ports), brought in line
//!   on every change by one task that watches the world's change signal;
//! - [`endpoint`]: the endpoint sockets (`host.sock`, `partitions/<vmid>/endpoint.sock`) and their
//!   accept loops; a client's partition is the endpoint it came through;
//! - [`handover`]: continuity: every socket hvsockd holds, named with its state, kept in the
//!   service manager's descriptor store and handed to a new hvsockd on `SIGUSR2`;
//! - [`session`]: one client's control connection, a state machine over `hvsock-proto` frames
//!   behind a small frame-I/O trait;
//! - [`attach`]: VM attachments over hybrid vsock: the host-to-guest handshake (a state
//!   machine, with retries), the pure choice of guest ports, and the `PATH_<port>` sockets;
//! - [`broker`]: the one connect path (route → offer → delivered / refused / waiting →
//!   counted), for sessions, guest ports and whatever comes next;
//! - [`kvp`]: the key-value exchange's pools (host pools mirrored from the registry, guest
//!   pools as agents send them);
//! - [`world`]: the in-memory world (registry mirror and live listeners) that turns router
//!   decisions into answers, and raises the change signal;
//! - [`listeners`]: a bound listener and its backlog, in front of a sink;
//! - [`router`]: the address semantics as pure functions (which partition a connect reaches,
//!   which listener takes it, which binds are refused), tested row by row; policies;
//! - [`registry`]: services and partitions in SQLite;
//! - [`metrics`]: the counters behind `/metrics` and `/v1/stats`;
//! - [`sys`]: every system call hvsockd makes itself (listening sockets created with their
//!   mode, accept, the lock, rlimit, peer credentials), and systemd's protocols;
//! - [`manual`]: the manual page and shell completions of the `hvsockd` binary.

pub mod admin;
pub mod attach;
pub mod broker;
pub mod config;
pub mod control;
pub mod daemon;
pub mod endpoint;
pub mod handover;
pub mod kvp;
pub mod listeners;
pub mod manual;
pub mod metrics;
pub mod reconcile;
pub mod registry;
pub mod router;
pub mod server;
pub mod session;
pub mod sys;
pub mod world;

#[cfg(test)]
mod testing;

pub use config::{Config, Limits};
pub use server::{ServeError, Server};
