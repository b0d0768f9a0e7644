//! Fixtures shared by the unit tests: a small world behind a broker, and helpers to bind
//! listeners in it.
//!
//! ```text
//!  host (root) ─┬─ box  (sandbox)
//!               ├─ vm   (VM, hybrid vsock at a path where nothing listens)
//!               └─ bare (VM without an attachment)
//!  services: echo (port 2761, enabled), off (port 7, disabled), guid (a GUID, enabled)
//! ```

#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hvsock::{Guid, ServiceId, SockAddrHv, VmId};
use hvsock_proto::WireAddr;

use crate::broker::Broker;
use crate::listeners::{Listener, Sink, Undeliverable};
use crate::metrics::{ConnectStats, Metrics};
use crate::registry::{PartitionKind, Registry};
use crate::world::{self, World};

/// The fixture.
#[derive(Debug)]
pub struct Fixture {
    pub broker: Arc<Broker>,
    pub root: VmId,
    pub sandbox: VmId,
    pub vm: VmId,
    pub bare: VmId,
    pub echo: ServiceId,
    pub off: ServiceId,
    pub guid: ServiceId,
}

pub fn fixture() -> Fixture {
    let mut reg = Registry::open_in_memory().unwrap();
    let root = reg.root();
    let id = |n| VmId(Guid::from_bytes([n; 16]));
    let (sandbox, vm, bare) = (id(1), id(2), id(3));
    reg.add_partition(sandbox, "box", root, PartitionKind::Sandbox, None)
        .unwrap();
    reg.add_partition(
        vm,
        "vm",
        root,
        PartitionKind::Vm,
        Some(Path::new("/nonexistent-hvsock-test/vm.vsock")),
    )
    .unwrap();
    reg.add_partition(bare, "bare", root, PartitionKind::Vm, None)
        .unwrap();
    let echo = ServiceId::from_vsock_port(2761);
    let off = ServiceId::from_vsock_port(7);
    let guid = ServiceId(Guid::from_bytes([0x42; 16]));
    reg.add_service(echo, "echo", true).unwrap();
    reg.add_service(off, "off", false).unwrap();
    reg.add_service(guid, "guid", true).unwrap();
    let world = world::Shared::new(World::load(&reg).unwrap());
    Fixture {
        broker: Arc::new(Broker::new(world, Arc::new(Metrics::default()))),
        root,
        sandbox,
        vm,
        bare,
        echo,
        off,
        guid,
    }
}

/// A sink that keeps what it is given.
#[derive(Debug, Default)]
pub struct Keep(pub Mutex<Vec<OwnedFd>>);

impl Sink for Keep {
    fn deliver(&self, _: WireAddr, _: WireAddr, fd: OwnedFd) -> Result<(), Undeliverable> {
        self.0.lock().unwrap().push(fd);
        Ok(())
    }
}

impl Fixture {
    /// Binds `(vm, service)` in `partition` with a [`Keep`] sink.
    pub fn bind(
        &self,
        partition: VmId,
        vm: VmId,
        service: ServiceId,
        backlog: u32,
    ) -> (Arc<Listener>, Arc<Keep>) {
        let keep = Arc::new(Keep::default());
        let listener = self
            .broker
            .world()
            .lock()
            .bind(
                partition,
                SockAddrHv::new(vm, service),
                backlog,
                None,
                keep.clone(),
            )
            .unwrap();
        (listener, keep)
    }

    /// The counters of connects from `from` to `service` (by name).
    pub fn counts(&self, from: &str, service: &str) -> Option<ConnectStats> {
        let world = self.broker.world().lock();
        self.broker
            .metrics()
            .stats(&world)
            .connections
            .into_iter()
            .find(|c| c.partition == from && c.service == service)
    }
}
