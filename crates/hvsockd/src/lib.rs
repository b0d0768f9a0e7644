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
//! [`attach`] and `docs/vms.md`.
//!
//! # Modules
//!
//! - [`server`]: start-up ([`Server::bind`]), the shared context, shutdown;
//! - [`activation`]: systemd socket activation (`LISTEN_FDS`) and readiness (`NOTIFY_SOCKET`);
//! - [`config`]: the TOML configuration file (`--config`), and the services and partitions
//!   it ensures at start;
//! - [`endpoint`]: the endpoint sockets (`host.sock`, `partitions/<vmid>.sock`) and their
//!   accept loops; a client's partition is the endpoint it came through;
//! - [`session`]: one client's control connection, a state machine over `hvsock-proto` frames;
//! - [`attach`]: VM attachments over hybrid vsock: the host-to-guest handshake (a state
//!   machine, with retries), and the guest-to-host sockets `PATH_<port>`, reconciled with the
//!   listeners and services after every change;
//! - [`router`]: the address semantics as pure functions (which partition a connect reaches,
//!   which listener takes it, which binds are refused), tested row by row;
//! - [`state`]: the in-memory world (registry mirror and live listeners) that turns router
//!   decisions into answers;
//! - [`listeners`]: a bound listener and its backlog;
//! - [`registry`]: services and partitions in SQLite;
//! - [`admin`]: the HTTP + JSON admin API on `admin.sock`;
//! - [`metrics`]: the counters behind `/metrics` and `/v1/stats`;
//! - [`manual`]: the manual page and shell completions of the `hvsockd` binary.

pub mod activation;
pub mod admin;
pub mod attach;
pub mod config;
pub mod endpoint;
pub mod listeners;
pub mod manual;
pub mod metrics;
pub mod registry;
pub mod router;
pub mod server;
pub mod session;
pub mod state;

pub use server::{Config, Limits, ServeError, Server};
