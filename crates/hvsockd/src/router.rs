//! The address semantics of DESIGN.md as pure functions: which partition a connect reaches,
//! whether a crossing is allowed, which listener takes it, and which binds are refused.
//!
//! [`decide`] is the one function that answers a connect; [`check_bind`] answers a bind.
//! Neither does I/O or reads a clock, so the tables below test every row of both.
//!
//! Connector C connects to `(vm, svc)`:
//!
//! | vm | reaches |
//! | --- | --- |
//! | LOOPBACK, or C's own id | C |
//! | PARENT | C's parent; refused in the root |
//! | ZERO / WILDCARD | C's parent; refused in the root |
//! | a child's id | that child |
//! | anything else | refused as unreachable, the same for unknown and unreachable ids |
//!
//! A listener in P bound to `(vm, svc)` accepts C when vm is ZERO and C may reach P (C is P,
//! a child of P, or P's parent); CHILDREN and C is a child of P; LOOPBACK and C is P; PARENT
//! and C is P's parent; an id X and C is X. The most specific accepting pattern wins: an exact
//! id, then LOOPBACK/PARENT, then CHILDREN, then ZERO.
//!
//! # Service policy
//!
//! A registered service may carry a [`Policy`] (Hyper-V keeps one per VM and service); it
//! applies only to connections that cross a partition boundary, never to loopback:
//!
//! | rule | refuses |
//! | --- | --- |
//! | `connect: [ids]` | a crossing connect from a partition not in the list |
//! | `bind: [ids]` | a bind in a partition not in the list (but LOOPBACK, which no other partition reaches) |
//! | `wildcard_bind: false` | a ZERO / WILDCARD bind |
//!
//! An absent list allows every partition; an empty list allows none. [`decide_with_policy`]
//! checks the connect rule after the service's state and the bind rules against the listeners
//! that would take the connection, so a policy changed after a listener was bound applies to
//! the next connect; [`check_bind_policy`] refuses a bind at once.

use std::collections::HashMap;

use hvsock::{SockAddrHv, VmId};
use serde::{Deserialize, Serialize};

/// The partition tree: the root and every other partition's parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    root: VmId,
    parents: HashMap<VmId, VmId>,
}

impl Topology {
    /// A tree holding only the root.
    pub fn new(root: VmId) -> Topology {
        Topology {
            root,
            parents: HashMap::new(),
        }
    }

    /// The root partition (the host).
    pub fn root(&self) -> VmId {
        self.root
    }

    /// Adds (or moves) `child` under `parent`.
    pub fn insert(&mut self, child: VmId, parent: VmId) {
        self.parents.insert(child, parent);
    }

    /// Removes a partition.
    pub fn remove(&mut self, id: VmId) {
        self.parents.remove(&id);
    }

    /// Whether the partition exists.
    pub fn contains(&self, id: VmId) -> bool {
        id == self.root || self.parents.contains_key(&id)
    }

    /// A partition's parent; `None` for the root and unknown ids.
    pub fn parent(&self, id: VmId) -> Option<VmId> {
        self.parents.get(&id).copied()
    }

    /// The direct children of a partition.
    pub fn children(&self, id: VmId) -> impl Iterator<Item = VmId> + '_ {
        self.parents
            .iter()
            .filter(move |&(_, &p)| p == id)
            .map(|(&c, _)| c)
    }

    fn is_child_of(&self, child: VmId, parent: VmId) -> bool {
        self.parent(child) == Some(parent)
    }
}

/// Which partition a connector in `from` reaches by addressing `vm`, if any.
pub fn destination(topo: &Topology, from: VmId, vm: VmId) -> Option<VmId> {
    if vm == VmId::LOOPBACK || vm == from {
        return Some(from);
    }
    if vm == VmId::PARENT || vm == VmId::ZERO {
        return topo.parent(from);
    }
    if !vm.is_well_known() && topo.is_child_of(vm, from) {
        return Some(vm);
    }
    None
}

/// Whether a listener in `partition` bound to `pattern` accepts a connector in `from`.
pub fn accepts(topo: &Topology, partition: VmId, pattern: VmId, from: VmId) -> bool {
    if pattern == VmId::ZERO {
        from == partition || topo.is_child_of(from, partition) || topo.is_child_of(partition, from)
    } else if pattern == VmId::CHILDREN {
        topo.is_child_of(from, partition)
    } else if pattern == VmId::LOOPBACK {
        from == partition
    } else if pattern == VmId::PARENT {
        topo.is_child_of(partition, from)
    } else if pattern == VmId::BROADCAST || pattern == VmId::SILOHOST {
        false
    } else {
        from == pattern
    }
}

/// How specific a bound pattern is; the most specific accepting listener wins.
pub fn specificity(pattern: VmId) -> u8 {
    if pattern == VmId::ZERO {
        0
    } else if pattern == VmId::CHILDREN {
        1
    } else if pattern == VmId::LOOPBACK || pattern == VmId::PARENT {
        2
    } else {
        3
    }
}

/// Why a bind is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefusal {
    /// BROADCAST cannot be bound.
    Broadcast,
    /// PARENT cannot be bound in the root, which has no parent.
    ParentInRoot,
    /// SILOHOST: hvsock has no silos.
    Silohost,
}

/// Whether a listener in `partition` may bind `pattern`.
pub fn check_bind(topo: &Topology, partition: VmId, pattern: VmId) -> Result<(), BindRefusal> {
    if pattern == VmId::BROADCAST {
        Err(BindRefusal::Broadcast)
    } else if pattern == VmId::SILOHOST {
        Err(BindRefusal::Silohost)
    } else if pattern == VmId::PARENT && partition == topo.root() {
        Err(BindRefusal::ParentInRoot)
    } else {
        Ok(())
    }
}

/// A service's access policy: who may connect to it and who may serve it across partition
/// boundaries. The default allows everything, as an unconfigured Hyper-V service does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Partitions that may connect to the service from another partition; `None`: any.
    #[serde(default)]
    pub connect: Option<Vec<VmId>>,
    /// Partitions that may bind the service for connections from other partitions; `None`:
    /// any.
    #[serde(default)]
    pub bind: Option<Vec<VmId>>,
    /// Whether the service may be bound with the wildcard (ZERO) pattern.
    #[serde(default = "yes")]
    pub wildcard_bind: bool,
}

fn yes() -> bool {
    true
}

/// The policy that allows everything: [`Policy::default`], as a value to borrow.
pub static ALLOW_ALL: Policy = Policy {
    connect: None,
    bind: None,
    wildcard_bind: true,
};

impl Default for Policy {
    fn default() -> Policy {
        ALLOW_ALL.clone()
    }
}

impl Policy {
    /// Whether the policy allows everything (the default).
    pub fn allows_all(&self) -> bool {
        *self == Policy::default()
    }

    /// Every partition the policy names.
    pub fn partitions(&self) -> impl Iterator<Item = VmId> + '_ {
        self.connect
            .iter()
            .flatten()
            .chain(self.bind.iter().flatten())
            .copied()
    }

    /// The policy without `id` in its lists (a list that loses its last entry stays, empty,
    /// and so allows no partition: removing a partition never widens a policy).
    pub fn without(&self, id: VmId) -> Policy {
        let strip = |list: &Option<Vec<VmId>>| {
            list.as_ref()
                .map(|l| l.iter().copied().filter(|&p| p != id).collect())
        };
        Policy {
            connect: strip(&self.connect),
            bind: strip(&self.bind),
            wildcard_bind: self.wildcard_bind,
        }
    }

    /// The policy with `from` read as `to` in its lists.
    pub fn mapped(&self, from: VmId, to: VmId) -> Policy {
        let map = |list: &Option<Vec<VmId>>| {
            list.as_ref()
                .map(|l| l.iter().map(|&p| if p == from { to } else { p }).collect())
        };
        Policy {
            connect: map(&self.connect),
            bind: map(&self.bind),
            wildcard_bind: self.wildcard_bind,
        }
    }
}

impl Policy {
    /// A list of the policy for people: `any`, or `[a, b]` with partitions named by `name`.
    fn list_text(list: &Option<Vec<VmId>>, name: &impl Fn(VmId) -> String) -> String {
        match list {
            None => "any".to_owned(),
            Some(ids) => format!(
                "[{}]",
                ids.iter()
                    .map(|&id| name(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// One rule for people, as a refusal quotes it: `policy connect: [a, b]`,
    /// `policy bind: any`, `policy wildcard_bind: false`.
    pub fn rule_text(&self, rule: PolicyRule, name: impl Fn(VmId) -> String) -> String {
        match rule {
            PolicyRule::Connect => {
                format!(
                    "policy connect: {}",
                    Policy::list_text(&self.connect, &name)
                )
            }
            PolicyRule::Bind => format!("policy bind: {}", Policy::list_text(&self.bind, &name)),
            PolicyRule::WildcardBind => "policy wildcard_bind: false".to_owned(),
        }
    }

    /// The whole policy for people: `connect [a, b]; bind any; wildcard_bind yes`.
    pub fn describe(&self, name: impl Fn(VmId) -> String) -> String {
        format!(
            "connect {}; bind {}; wildcard_bind {}",
            Policy::list_text(&self.connect, &name),
            Policy::list_text(&self.bind, &name),
            if self.wildcard_bind { "yes" } else { "no" }
        )
    }
}

/// Which rule of a [`Policy`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRule {
    /// `connect`: the connector's partition is not in the list.
    Connect,
    /// `bind`: the listener's partition is not in the list.
    Bind,
    /// `wildcard_bind: false`: the listener is bound to ZERO.
    WildcardBind,
}

fn listed(list: &Option<Vec<VmId>>, id: VmId) -> bool {
    list.as_ref().is_none_or(|l| l.contains(&id))
}

/// Whether the policy lets `from` connect to the service across a partition boundary.
pub fn check_connect_policy(policy: &Policy, from: VmId) -> Result<(), PolicyRule> {
    if listed(&policy.connect, from) {
        Ok(())
    } else {
        Err(PolicyRule::Connect)
    }
}

/// Whether the policy lets a listener in `partition` bind the service to `pattern`. LOOPBACK,
/// which only `partition` itself reaches, is always allowed.
pub fn check_bind_policy(
    policy: &Policy,
    partition: VmId,
    pattern: VmId,
) -> Result<(), PolicyRule> {
    if pattern == VmId::LOOPBACK {
        return Ok(());
    }
    if !listed(&policy.bind, partition) {
        return Err(PolicyRule::Bind);
    }
    if pattern == VmId::ZERO && !policy.wildcard_bind {
        return Err(PolicyRule::WildcardBind);
    }
    Ok(())
}

/// What the router knows of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Not in the registry.
    Unregistered,
    /// Registered and enabled.
    Enabled,
    /// Registered and disabled.
    Disabled,
}

/// Why a connect is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No partition by that address is reachable from the connector.
    Unreachable,
    /// The connection crosses a partition boundary and the service is not registered.
    NotRegistered,
    /// The connection crosses a partition boundary and the service is disabled.
    Disabled,
    /// No listener in the destination accepts this connector.
    NothingListens,
    /// The service's policy refuses the connection across a partition boundary: the
    /// connector may not connect, or every listener that would take it may not serve it.
    Policy(PolicyRule),
}

/// Where a connect goes: the destination partition, and the index of the listener (in the
/// destination's bindings for the service) that takes it, if the destination has bindings to
/// choose from. Destinations reached through a VM attachment have none: their guest decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The partition the connection reaches.
    pub dest: VmId,
    /// The listener chosen among the destination's bindings.
    pub listener: Option<usize>,
}

/// Decides a connect from `from` to `target` for a service with the default policy (see
/// [`decide_with_policy`]).
pub fn decide<'a>(
    topo: &Topology,
    from: VmId,
    target: SockAddrHv,
    service: ServiceState,
    bindings: impl FnOnce(VmId) -> Option<&'a [VmId]>,
) -> Result<Route, Refusal> {
    decide_with_policy(topo, from, target, service, &Policy::default(), bindings)
}

/// Decides a connect from `from` to `target`.
///
/// `service` says what the registry knows of `target.service_id` and `policy` is its policy
/// (the default for unregistered services); `bindings` gives, for a destination partition, the
/// patterns bound for the service there, or `None` when the destination's listeners are not
/// known here (a VM whose guest decides).
///
/// In order: the destination must be reachable; a crossing needs the service registered and
/// enabled, and the connector allowed by the policy's `connect` rule; then the most specific
/// accepting listener that the policy's bind rules allow takes it (for a crossing). When
/// listeners accept but the policy allows none of them, the refusal names the rule that
/// refused the most specific one.
pub fn decide_with_policy<'a>(
    topo: &Topology,
    from: VmId,
    target: SockAddrHv,
    service: ServiceState,
    policy: &Policy,
    bindings: impl FnOnce(VmId) -> Option<&'a [VmId]>,
) -> Result<Route, Refusal> {
    let dest = destination(topo, from, target.vm_id).ok_or(Refusal::Unreachable)?;
    let crossing = dest != from;
    if crossing {
        match service {
            ServiceState::Enabled => {}
            ServiceState::Unregistered => return Err(Refusal::NotRegistered),
            ServiceState::Disabled => return Err(Refusal::Disabled),
        }
        check_connect_policy(policy, from).map_err(Refusal::Policy)?;
    }
    let Some(patterns) = bindings(dest) else {
        return Ok(Route {
            dest,
            listener: None,
        });
    };
    let mut accepting: Vec<(usize, VmId)> = patterns
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, pattern)| accepts(topo, dest, pattern, from))
        .collect();
    // Most specific first; among equals, the first bound.
    accepting.sort_by_key(|&(index, pattern)| (std::cmp::Reverse(specificity(pattern)), index));
    let mut refused_by = None;
    for (index, pattern) in accepting {
        let allowed = if crossing {
            check_bind_policy(policy, dest, pattern)
        } else {
            Ok(())
        };
        match allowed {
            Ok(()) => {
                return Ok(Route {
                    dest,
                    listener: Some(index),
                });
            }
            Err(rule) => {
                refused_by.get_or_insert(rule);
            }
        }
    }
    Err(refused_by.map_or(Refusal::NothingListens, Refusal::Policy))
}

#[cfg(test)]
mod tests;
