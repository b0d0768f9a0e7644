//! The in-memory world: the registry's services and partitions (mirrored, so that a connect
//! never touches SQLite) and the bound listeners. It turns the router's pure decisions into
//! answers with the names and reasons a person reads.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;
use tokio::io::unix::AsyncFd;

use crate::listeners::Listener;
use crate::registry::{PartitionKind, PartitionRecord, Registry, RegistryError, ServiceRecord};
use crate::router::{self, BindRefusal, Policy, PolicyRule, Refusal, ServiceState, Topology};

/// Most listeners one partition may have bound at once.
pub const MAX_LISTENERS_PER_PARTITION: usize = 4096;

/// A refused request: the code the client maps to an `io::ErrorKind`, what to tell the
/// person, and a short reason for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The wire code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
    /// A stable short reason (a metrics label).
    pub reason: &'static str,
}

impl Refused {
    /// A refusal.
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
            reason,
        }
    }

    /// The listener a connect was offered to closed (or its session failed) before it took
    /// the connection: `why` says which.
    pub fn listener_closed(why: impl Into<String>) -> Refused {
        Refused::new(ErrorCode::Refused, "listener_closed", why)
    }
}

/// Where a routed connect goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A listener known to hvsockd.
    Listener(Arc<Listener>),
    /// A VM, through its VMM's hybrid-vsock socket; its guest decides.
    Vm {
        /// The VM partition.
        partition: VmId,
        /// The VMM's socket.
        hybrid_vsock: PathBuf,
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

    /// A policy for people: `connect: [a, b]; bind: any; wildcard_bind: no`.
    fn policy_rule_text(&self, policy: &Policy, rule: PolicyRule) -> String {
        let list = |l: &Option<Vec<VmId>>| match l {
            None => "any".to_owned(),
            Some(ids) => format!(
                "[{}]",
                ids.iter()
                    .map(|&id| self.partition_label(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        match rule {
            PolicyRule::Connect => format!("policy connect: {}", list(&policy.connect)),
            PolicyRule::Bind => format!("policy bind: {}", list(&policy.bind)),
            PolicyRule::WildcardBind => "policy wildcard_bind: false".to_owned(),
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
        if let Some(parent) = p.parent {
            self.topo.insert(p.id, parent);
        }
        self.partitions.insert(p.id, p);
    }

    /// Removes a partition, from the policies too (as the registry does); returns its
    /// listeners, which the caller closes.
    pub fn remove_partition(&mut self, id: VmId) -> Vec<Arc<Listener>> {
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
        self.services.insert(s.id, s);
    }

    /// Removes a service.
    pub fn remove_service(&mut self, id: ServiceId) {
        self.services.remove(&id);
    }

    /// Every bound listener.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.bindings.values().flatten()
    }

    /// Decides a connect from partition `from` to `target`.
    pub fn route(&self, from: VmId, target: SockAddrHv) -> Result<Routed, Refused> {
        let service = target.service_id;
        let state = self.service_state(service);
        let bound = |dest: VmId| -> Option<Vec<VmId>> {
            match self.partitions.get(&dest).map(|p| p.kind) {
                Some(PartitionKind::Vm) => None,
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
                match &vm.hybrid_vsock {
                    Some(path) => Target::Vm {
                        partition: vm.id,
                        hybrid_vsock: path.clone(),
                    },
                    None => {
                        return Err(Refused::new(
                            ErrorCode::Refused,
                            "no_attachment",
                            format!("VM {} has no hybrid-vsock attachment", vm.name),
                        ));
                    }
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

    fn refusal(&self, from: VmId, target: SockAddrHv, refusal: Refusal) -> Refused {
        let service = target.service_id;
        let vm = target.vm_id;
        match refusal {
            Refusal::Unreachable => {
                let message = if from == self.root() && (vm == VmId::PARENT || vm == VmId::ZERO) {
                    format!(
                        "{} reaches the parent partition, and the root partition has none",
                        vm.keyword().unwrap_or("PARENT").to_uppercase()
                    )
                } else if let Some(word) = vm.keyword() {
                    format!(
                        "{} is not a partition one can connect to (use loopback, parent, zero or a child's id)",
                        word.to_uppercase()
                    )
                } else {
                    format!(
                        "no partition {vm} is reachable from {}: only itself, its parent and its children are",
                        self.partition_label(from)
                    )
                };
                Refused::new(ErrorCode::Unreachable, "unreachable", message)
            }
            Refusal::NotRegistered => Refused::new(
                ErrorCode::Denied,
                "not_registered",
                format!(
                    "service {service} is not registered, and connections across partitions need a registered, enabled service: register it with `hvsock service add NAME --id {service}`"
                ),
            ),
            Refusal::Disabled => {
                let name = self
                    .services
                    .get(&service)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                Refused::new(
                    ErrorCode::Denied,
                    "disabled",
                    format!(
                        "service {name} ({service}) is disabled: enable it with `hvsock service enable {name}`"
                    ),
                )
            }
            Refusal::Policy(rule) => {
                let policy = self.effective_policy(service);
                let name = self
                    .services
                    .get(&service)
                    .map(|s| s.name.clone())
                    .unwrap_or_else(|| service.to_string());
                let rule_text = self.policy_rule_text(policy, rule);
                let (reason, message) = match rule {
                    PolicyRule::Connect => (
                        "policy_connect",
                        format!(
                            "service {name} does not allow partition {} to connect ({rule_text})",
                            self.partition_label(from)
                        ),
                    ),
                    PolicyRule::Bind | PolicyRule::WildcardBind => {
                        let dest = router::destination(&self.topo, from, vm).unwrap_or(from);
                        let what = if rule == PolicyRule::Bind {
                            format!("partition {} may not serve it", self.partition_label(dest))
                        } else {
                            "its wildcard listeners may not serve it".to_owned()
                        };
                        let reason = if rule == PolicyRule::Bind {
                            "policy_bind"
                        } else {
                            "policy_wildcard_bind"
                        };
                        (
                            reason,
                            format!(
                                "service {name}: the listener that would take this connection from {} is not allowed by the policy: {what} ({rule_text})",
                                self.partition_label(from)
                            ),
                        )
                    }
                };
                Refused::new(ErrorCode::Denied, reason, message)
            }
            Refusal::NothingListens => {
                let dest = router::destination(&self.topo, from, vm).unwrap_or(from);
                Refused::new(
                    ErrorCode::Refused,
                    "nothing_listens",
                    format!(
                        "nothing in partition {} listens on service {} for connections from {}",
                        self.partition_label(dest),
                        self.service_label(service),
                        self.partition_label(from)
                    ),
                )
            }
        }
    }

    /// Binds `addr` in `partition` for the session `sock`.
    pub fn bind(
        &mut self,
        partition: VmId,
        addr: SockAddrHv,
        backlog: u32,
        pid: Option<u32>,
        sock: Arc<AsyncFd<OwnedFd>>,
    ) -> Result<Arc<Listener>, Refused> {
        router::check_bind(&self.topo, partition, addr.vm_id).map_err(|refusal| match refusal {
            BindRefusal::Broadcast => Refused::new(
                ErrorCode::AddrNotAvailable,
                "broadcast",
                "BROADCAST cannot be bound: bind wildcard, children, loopback, parent or a partition's id",
            ),
            BindRefusal::ParentInRoot => Refused::new(
                ErrorCode::Unsupported,
                "parent_in_root",
                "binding PARENT is not supported in the root partition, which has no parent",
            ),
            BindRefusal::Silohost => Refused::new(
                ErrorCode::Unsupported,
                "silohost",
                "binding SILOHOST is not supported: hvsock has no silos; a sandbox reaches its host through PARENT",
            ),
        })?;
        if let Some(record) = self.services.get(&addr.service_id) {
            let policy = self.effective_policy(addr.service_id);
            if let Err(rule) = router::check_bind_policy(policy, partition, addr.vm_id) {
                let rule_text = self.policy_rule_text(policy, rule);
                let (reason, message) = match rule {
                    PolicyRule::WildcardBind => (
                        "policy_wildcard_bind",
                        format!(
                            "service {} does not allow wildcard binds ({rule_text}): bind children, parent, loopback or a partition's id",
                            record.name
                        ),
                    ),
                    _ => (
                        "policy_bind",
                        format!(
                            "service {} does not allow partition {} to bind it ({rule_text})",
                            record.name,
                            self.partition_label(partition)
                        ),
                    ),
                };
                return Err(Refused::new(ErrorCode::Denied, reason, message));
            }
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
            sock,
        ));
        self.next_listener += 1;
        self.bindings
            .entry((partition, addr.service_id))
            .or_default()
            .push(listener.clone());
        Ok(listener)
    }

    /// Removes a listener's binding.
    pub fn unbind(&mut self, listener: &Listener) {
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
