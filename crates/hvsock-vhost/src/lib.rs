//! `hvsock-vhost`: a vhost-user vsock device for one QEMU VM, which makes the VM a partition
//! of hvsockd with stream semantics of its own (half-close, immediate refusals, credit-based
//! flow control), instead of the hybrid-vsock socket of an external device.
//!
//! QEMU runs the virtio-vsock device's queues in this process (`-device vhost-user-vsock-pci`
//! over the socket at `--socket`). The process holds the data path: each guest connection is
//! spliced to a host socket (a socket pair end that hvsockd hands over), and hvsockd only
//! routes, through the VM's partition endpoint, where the device is the VM's **gateway**
//! (see `crates/hvsockd/src/broker/gateway.rs`). Because the data path is here, established
//! connections outlive a restart of hvsockd; while it is away, new connects are refused at
//! once and the device reconnects with backoff.
//!
//! # Modules
//!
//! - [`packet`]: the virtio-vsock header, parsed and checked (fuzzed).
//! - [`conn`]: one connection's state machine and credit.
//! - [`muxer`]: the connection table, the host sockets' epoll set, what to ask hvsockd.
//! - [`queues`]: packets in and out of the virtqueues' descriptor chains (fuzzed).
//! - [`link`]: the session with hvsockd (registration, reconnection with backoff).
//! - [`backend`]: the vhost-user backend that ties queues, muxer and link together.
//! - [`cli`]: the command line.

pub mod backend;
pub mod cli;
pub mod conn;
pub mod link;
pub mod muxer;
pub mod packet;
pub mod queues;
