//! The in-memory world: the registry's services and partitions (mirrored, so that a connect
//! never touches SQLite) and the bound listeners. It turns the router's pure decisions into
//! answers with the names and reasons a person reads ([`refusal`]).
//!
//! # The change signal
//!
//! The world lives in a [`Shared`] cell. Every method that changes it marks it changed, and
//! when the lock ([`WorldGuard`]) is released after a change, the cell's generation goes up by
//! one on a `tokio::sync::watch` channel. Whatever follows from the world (which endpoints are
//! open, which guest ports a VM's VMM can reach) is reconciled by a task that watches that one
//! signal ([`crate::reconcile`]); no caller has to remember to ask for it.

pub mod access;
pub mod refusal;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;
use tokio::sync::watch;

use crate::listeners::{Listener, Sink};
use crate::registry::{PartitionKind, PartitionRecord, Registry, RegistryError, ServiceRecord};
use crate::router::{self, Policy, ServiceState, Topology};

pub use refusal::Refused;

/// Most listeners one partition may have bound at once.
pub const MAX_LISTENERS_PER_PARTITION: usize = 4096;

/// Where a routed connect goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A listener known to hvsockd.
    Listener(Arc<Listener>),
    /// A VM: hvsockd keeps no listeners for it; its guest decides, reached through the VM's
    /// transport (see [`crate::broker`]).
    Guest {
        /// The VM partition.
        partition: VmId,
        /// Its name, for messages.
        name: String,
        /// The VMM's hybrid-vsock socket, if it has one.
        hybrid_vsock: Option<PathBuf>,
    },
}

/// A routed connect.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Where it goes.
    pub target: Target,
    /// The connector's address: its partition and the service.
    pub connector: SockAddrHv,
    /// The listener's address: the destination partition and the service.
    pub listener: SockAddrHv,
    /// The service as counted ([`World::service_key`]).
    pub service_key: Option<ServiceId>,
}

/// The registry mirror and the live listeners.
#[derive(Debug)]
pub struct World {
    topo: Topology,
    partitions: HashMap<VmId, PartitionRecord>,
    services: HashMap<ServiceId, ServiceRecord>,
    bindings: HashMap<(VmId, ServiceId), Vec<Arc<Listener>>>,
    next_listener: u64,
    default_policy: Policy,
    /// Changed since the lock was taken.
    changed: bool,
}

/// The world behind its lock, with the change signal.
#[derive(Debug)]
pub struct Shared {
    world: Mutex<World>,
    generation: watch::Sender<u64>,
}

/// The locked world. Hold it briefly and never across an `.await`; releasing it after a
/// change raises the generation.
#[derive(Debug)]
pub struct WorldGuard<'a> {
    world: MutexGuard<'a, World>,
    generation: &'a watch::Sender<u64>,
}

impl Shared {
    /// A cell around `world`, at generation 0.
    pub fn new(world: World) -> Arc<Shared> {
        Arc::new(Shared {
            world: Mutex::new(world),
            generation: watch::Sender::new(0),
        })
    }

    /// The world, locked.
    pub fn lock(&self) -> WorldGuard<'_> {
        WorldGuard {
            world: self.world.lock().unwrap_or_else(|p| p.into_inner()),
            generation: &self.generation,
        }
    }

    /// The generation: how many times the world changed (or [`Shared::kick`] was called).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The change signal.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Raises the generation without a change, so that what follows from the world is
    /// reconciled again (e.g. to retry what failed); returns the new generation.
    pub fn kick(&self) -> u64 {
        let mut now = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            now = *g;
        });
        now
    }

    /// A partition's name for logs.
    pub fn label(&self, id: VmId) -> String {
        self.lock().partition_label(id)
    }
}

impl Deref for WorldGuard<'_> {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl DerefMut for WorldGuard<'_> {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl Drop for WorldGuard<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.world.changed) {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

impl World {
    /// The world as the registry has it, with no listeners.
    pub fn load(registry: &Registry) -> Result<World, RegistryError> {
        let mut world = World {
            topo: Topology::new(registry.root()),
            partitions: HashMap::new(),
            services: HashMap::new(),
            bindings: HashMap::new(),
            next_listener: 1,
            default_policy: Policy::default(),
            changed: false,
        };
        for p in registry.partitions()? {
            world.put_partition(p);
        }
        for s in registry.services()? {
            world.put_service(s);
        }
        Ok(world)
    }

    /// Reads services and partitions again from the registry (after an import), keeping the
    /// listeners of partitions that are still there; returns the others, which the caller
    /// closes. A root whose id changed counts as gone.
    pub fn reload(&mut self, registry: &Registry) -> Result<Vec<Arc<Listener>>, RegistryError> {
        self.changed = true;
        let partitions = registry.partitions()?;
        let services = registry.services()?;
        // The default policy follows the root to its new id and loses partitions that are gone.
        let mut default_policy = self.default_policy.mapped(self.root(), registry.root());
        for id in default_policy.partitions().collect::<Vec<_>>() {
            if !partitions.iter().any(|p| p.id == id) {
                default_policy = default_policy.without(id);
            }
        }
        self.default_policy = default_policy;
        self.topo = Topology::new(registry.root());
        self.partitions.clear();
        self.services.clear();
        for p in partitions {
            self.put_partition(p);
        }
        for s in services {
            self.put_service(s);
        }
        let gone: Vec<(VmId, ServiceId)> = self
            .bindings
            .keys()
            .filter(|(p, _)| !self.partitions.contains_key(p))
            .copied()
            .collect();
        Ok(gone
            .into_iter()
            .filter_map(|k| self.bindings.remove(&k))
            .flatten()
            .collect())
    }

    /// The policy of services that have none of their own.
    pub fn default_policy(&self) -> &Policy {
        &self.default_policy
    }

    /// Sets the policy of services that have none of their own.
    pub fn set_default_policy(&mut self, policy: Policy) {
        self.changed = true;
        self.default_policy = policy;
    }

    /// The policy that applies to a service: its own, else the default; the default policy
    /// that allows everything for unregistered services (only loopback reaches them).
    pub fn effective_policy(&self, id: ServiceId) -> &Policy {
        match self.services.get(&id) {
            Some(s) => s.policy.as_ref().unwrap_or(&self.default_policy),
            None => &router::ALLOW_ALL,
        }
    }

    /// The root partition.
    pub fn root(&self) -> VmId {
        self.topo.root()
    }

    /// The partition tree.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// A partition.
    pub fn partition(&self, id: VmId) -> Option<&PartitionRecord> {
        self.partitions.get(&id)
    }

    /// Every partition.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionRecord> {
        self.partitions.values()
    }

    /// A service.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceRecord> {
        self.services.get(&id)
    }

    /// Every service.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    /// A service by id or name.
    pub fn find_service(&self, key: &str) -> Option<&ServiceRecord> {
        match ServiceId::parse(key) {
            Ok(id) => self.services.get(&id),
            Err(_) => self.services.values().find(|s| s.name == key),
        }
    }

    /// A partition by id or name.
    pub fn find_partition(&self, key: &str) -> Option<&PartitionRecord> {
        match VmId::parse(key) {
            Ok(id) => self.partitions.get(&id),
            Err(_) => self.partitions.values().find(|p| p.name == key),
        }
    }

    /// What the registry says of a service, as the router needs it.
    pub fn service_state(&self, id: ServiceId) -> ServiceState {
        match self.services.get(&id) {
            None => ServiceState::Unregistered,
            Some(s) if s.enabled => ServiceState::Enabled,
            Some(_) => ServiceState::Disabled,
        }
    }

    /// The key a service is counted under: its id if registered.
    pub fn service_key(&self, id: ServiceId) -> Option<ServiceId> {
        self.services.contains_key(&id).then_some(id)
    }

    /// A partition's name for people: its name, or its id if it is gone.
    pub fn partition_label(&self, id: VmId) -> String {
        self.partitions
            .get(&id)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    fn service_label(&self, id: ServiceId) -> String {
        match self.services.get(&id) {
            Some(s) => format!("{} ({id})", s.name),
            None => id.to_string(),
        }
    }

    /// Adds or replaces a partition.
    pub fn put_partition(&mut self, p: PartitionRecord) {
        self.changed = true;
        if let Some(parent) = p.parent {
            self.topo.insert(p.id, parent);
        }
        self.partitions.insert(p.id, p);
    }

    /// Removes a partition, from the policies too (as the registry does); returns its
    /// listeners, which the caller closes.
    pub fn remove_partition(&mut self, id: VmId) -> Vec<Arc<Listener>> {
        self.changed = true;
        self.topo.remove(id);
        self.partitions.remove(&id);
        for service in self.services.values_mut() {
            if let Some(policy) = &mut service.policy {
                *policy = policy.without(id);
            }
        }
        self.default_policy = self.default_policy.without(id);
        let keys: Vec<_> = self
            .bindings
            .keys()
            .filter(|(p, _)| *p == id)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.bindings.remove(&k))
            .flatten()
            .collect()
    }

    /// Adds or replaces a service.
    pub fn put_service(&mut self, s: ServiceRecord) {
        self.changed = true;
        self.services.insert(s.id, s);
    }

    /// Removes a service.
    pub fn remove_service(&mut self, id: ServiceId) {
        self.changed = true;
        self.services.remove(&id);
    }

    /// Every bound listener.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.bindings.values().flatten()
    }

    /// Decides a connect from partition `from` to `target`.
    pub fn route(&self, from: VmId, target: SockAddrHv) -> Result<Routed, Refused> {
        self.route_served(from, target, |_| false)
    }

    /// Like [`World::route`], where the partitions for which `served` says yes have a device
    /// that answers connects into them (a VM's hvsock-vhost): they are guests, like a VM.
    pub fn route_served(
        &self,
        from: VmId,
        target: SockAddrHv,
        served: impl Fn(VmId) -> bool,
    ) -> Result<Routed, Refused> {
        let service = target.service_id;
        let state = self.service_state(service);
        let bound = |dest: VmId| -> Option<Vec<VmId>> {
            match self.partitions.get(&dest).map(|p| p.kind) {
                Some(PartitionKind::Vm) => None,
                _ if served(dest) => None,
                _ => Some(
                    self.bindings
                        .get(&(dest, service))
                        .map(|ls| ls.iter().map(|l| l.addr.vm_id).collect())
                        .unwrap_or_default(),
                ),
            }
        };
        let policy = self.effective_policy(service);
        // The router takes a slice; keep the patterns alive across the call.
        let mut patterns: Option<Vec<VmId>> = None;
        let decision =
            router::decide_with_policy(&self.topo, from, target, state, policy, |dest| {
                patterns = bound(dest);
                patterns.as_deref()
            });
        let route = decision.map_err(|refusal| self.refusal(from, target, refusal))?;
        let connector = SockAddrHv::new(from, service);
        let listener = SockAddrHv::new(route.dest, service);
        let target = match route.listener {
            Some(index) => Target::Listener(self.bindings[&(route.dest, service)][index].clone()),
            None => {
                let vm = &self.partitions[&route.dest];
                Target::Guest {
                    partition: vm.id,
                    name: vm.name.clone(),
                    hybrid_vsock: vm.hybrid_vsock.clone(),
                }
            }
        };
        Ok(Routed {
            target,
            connector,
            listener,
            service_key: self.service_key(service),
        })
    }

    /// Binds `addr` in `partition`; connections go to `sink`.
    pub fn bind(
        &mut self,
        partition: VmId,
        addr: SockAddrHv,
        backlog: u32,
        pid: Option<u32>,
        sink: Arc<dyn Sink>,
    ) -> Result<Arc<Listener>, Refused> {
        router::check_bind(&self.topo, partition, addr.vm_id).map_err(refusal::bind)?;
        if self.services.contains_key(&addr.service_id) {
            let policy = self.effective_policy(addr.service_id);
            router::check_bind_policy(policy, partition, addr.vm_id)
                .map_err(|rule| self.bind_policy_refusal(partition, addr.service_id, rule))?;
        }
        let in_partition: usize = self
            .bindings
            .iter()
            .filter(|((p, _), _)| *p == partition)
            .map(|(_, ls)| ls.len())
            .sum();
        if in_partition >= MAX_LISTENERS_PER_PARTITION {
            return Err(Refused::new(
                ErrorCode::Busy,
                "too_many_listeners",
                format!(
                    "partition {} already has {MAX_LISTENERS_PER_PARTITION} listeners",
                    self.partition_label(partition)
                ),
            ));
        }
        let taken = self
            .bindings
            .get(&(partition, addr.service_id))
            .is_some_and(|bound| bound.iter().any(|l| l.addr.vm_id == addr.vm_id));
        if taken {
            let vm = addr
                .vm_id
                .keyword()
                .map(str::to_owned)
                .unwrap_or_else(|| addr.vm_id.to_string());
            return Err(Refused::new(
                ErrorCode::AddrInUse,
                "addr_in_use",
                format!(
                    "{vm}:{} is already bound in partition {}",
                    addr.service_id,
                    self.partition_label(partition)
                ),
            ));
        }
        let listener = Arc::new(Listener::new(
            self.next_listener,
            partition,
            addr,
            backlog,
            pid,
            sink,
        ));
        self.next_listener += 1;
        self.changed = true;
        self.bindings
            .entry((partition, addr.service_id))
            .or_default()
            .push(listener.clone());
        Ok(listener)
    }

    /// Removes a listener's binding.
    pub fn unbind(&mut self, listener: &Listener) {
        self.changed = true;
        let key = (listener.partition, listener.addr.service_id);
        if let Some(bound) = self.bindings.get_mut(&key) {
            bound.retain(|l| l.id != listener.id);
            if bound.is_empty() {
                self.bindings.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Export, ImportMode};
    use hvsock::Guid;

    #[test]
    fn a_reload_moves_the_default_policy_with_the_root_and_drops_gone_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(&dir.path().join("registry.db")).expect("open");
        let root = reg.root();
        let a = VmId(Guid::from_bytes([1; 16]));
        reg.add_partition(a, "a", root, PartitionKind::Sandbox, None)
            .expect("a");
        let mut world = World::load(&reg).expect("world");
        world.set_default_policy(Policy {
            connect: Some(vec![root, a]),
            ..Policy::default()
        });
        let new_root = VmId(Guid::from_bytes([9; 16]));
        let doc = Export {
            version: crate::registry::EXPORT_VERSION,
            root: new_root,
            services: Vec::new(),
            partitions: Vec::new(),
        };
        reg.import(&doc, ImportMode::Replace, false)
            .expect("replace");
        let closed = world.reload(&reg).expect("reload");
        assert!(closed.is_empty());
        assert_eq!(world.root(), new_root);
        assert_eq!(world.default_policy().connect, Some(vec![new_root]));
        assert!(world.partition(a).is_none());
    }
}
