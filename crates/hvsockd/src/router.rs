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
                ids.iter().map(|&id| name(id)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// One rule for people, as a refusal quotes it: `policy connect: [a, b]`,
    /// `policy bind: any`, `policy wildcard_bind: false`.
    pub fn rule_text(&self, rule: PolicyRule, name: impl Fn(VmId) -> String) -> String {
        match rule {
            PolicyRule::Connect => {
                format!("policy connect: {}", Policy::list_text(&self.connect, &name))
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
mod tests {
    use super::*;
    use hvsock::{Guid, ServiceId};

    fn id(n: u8) -> VmId {
        VmId(Guid::from_bytes([n; 16]))
    }

    // root ─┬─ a ─── a1
    //       └─ b
    const ROOT: u8 = 0x10;
    const A: u8 = 0x20;
    const A1: u8 = 0x21;
    const B: u8 = 0x30;
    const UNKNOWN: u8 = 0x77;

    fn topo() -> Topology {
        let mut t = Topology::new(id(ROOT));
        t.insert(id(A), id(ROOT));
        t.insert(id(A1), id(A));
        t.insert(id(B), id(ROOT));
        t
    }

    fn svc() -> ServiceId {
        ServiceId::from_vsock_port(2761)
    }

    #[test]
    fn address_table_every_row() {
        let t = topo();
        // (connector, vm addressed, partition reached)
        let rows: &[(u8, VmId, Option<u8>)] = &[
            // LOOPBACK, or C's own id: C
            (ROOT, VmId::LOOPBACK, Some(ROOT)),
            (A, VmId::LOOPBACK, Some(A)),
            (A1, VmId::LOOPBACK, Some(A1)),
            (ROOT, id(ROOT), Some(ROOT)),
            (A, id(A), Some(A)),
            // PARENT: C's parent; refused in the root
            (A, VmId::PARENT, Some(ROOT)),
            (A1, VmId::PARENT, Some(A)),
            (B, VmId::PARENT, Some(ROOT)),
            (ROOT, VmId::PARENT, None),
            // ZERO / WILDCARD: from a child, the parent; refused in the root
            (A, VmId::ZERO, Some(ROOT)),
            (A1, VmId::WILDCARD, Some(A)),
            (ROOT, VmId::ZERO, None),
            // a child's id: that child
            (ROOT, id(A), Some(A)),
            (ROOT, id(B), Some(B)),
            (A, id(A1), Some(A1)),
            // anything else: refused
            (A, id(B), None),             // a sibling
            (B, id(A), None),             // a sibling
            (ROOT, id(A1), None),         // a grandchild
            (A1, id(ROOT), None),         // a grandparent by id
            (A, id(ROOT), None),          // the parent by id: only PARENT/ZERO reach it
            (ROOT, id(UNKNOWN), None),    // unknown
            (A, id(UNKNOWN), None),       // unknown
            (ROOT, VmId::CHILDREN, None), // CHILDREN is a bind pattern, not a destination
            (A, VmId::CHILDREN, None),
            (ROOT, VmId::BROADCAST, None),
            (A, VmId::BROADCAST, None),
            (A, VmId::SILOHOST, None),
            (ROOT, VmId::SILOHOST, None),
        ];
        for &(from, vm, reached) in rows {
            assert_eq!(
                destination(&t, id(from), vm),
                reached.map(id),
                "connector {from:#x} addressing {vm:?}"
            );
        }
    }

    #[test]
    fn unknown_and_unreachable_partitions_give_the_same_refusal() {
        let t = topo();
        let sibling = decide(
            &t,
            id(A),
            SockAddrHv::new(id(B), svc()),
            ServiceState::Enabled,
            |_| Some(&[VmId::ZERO]),
        );
        let unknown = decide(
            &t,
            id(A),
            SockAddrHv::new(id(UNKNOWN), svc()),
            ServiceState::Enabled,
            |_| Some(&[VmId::ZERO]),
        );
        assert_eq!(sibling, Err(Refusal::Unreachable));
        assert_eq!(sibling, unknown);
    }

    #[test]
    fn listener_table_every_row() {
        let t = topo();
        // (listener partition, bound pattern, connector, accepted)
        let rows: &[(u8, VmId, u8, bool)] = &[
            // ZERO / WILDCARD: P itself, P's children, P's parent
            (A, VmId::ZERO, A, true),
            (A, VmId::ZERO, A1, true),
            (A, VmId::ZERO, ROOT, true),
            (A, VmId::ZERO, B, false),
            (ROOT, VmId::WILDCARD, A, true),
            (ROOT, VmId::WILDCARD, B, true),
            (ROOT, VmId::WILDCARD, A1, false),
            (ROOT, VmId::WILDCARD, ROOT, true),
            // CHILDREN: C is a child of P
            (ROOT, VmId::CHILDREN, A, true),
            (ROOT, VmId::CHILDREN, B, true),
            (ROOT, VmId::CHILDREN, ROOT, false),
            (ROOT, VmId::CHILDREN, A1, false),
            (A, VmId::CHILDREN, A1, true),
            (A, VmId::CHILDREN, ROOT, false),
            // LOOPBACK: C is P
            (A, VmId::LOOPBACK, A, true),
            (A, VmId::LOOPBACK, ROOT, false),
            (A, VmId::LOOPBACK, A1, false),
            // PARENT: C is P's parent
            (A, VmId::PARENT, ROOT, true),
            (A, VmId::PARENT, A, false),
            (A, VmId::PARENT, A1, false),
            (A1, VmId::PARENT, A, true),
            (A1, VmId::PARENT, ROOT, false),
            // a partition id X: C is X
            (ROOT, id(A), A, true),
            (ROOT, id(A), B, false),
            (ROOT, id(A), ROOT, false),
            (A, id(A), A, true),
            (A, id(A1), A1, true),
            (A, id(ROOT), ROOT, true),
            // BROADCAST and SILOHOST never accept (their binds are refused)
            (ROOT, VmId::BROADCAST, A, false),
            (ROOT, VmId::SILOHOST, A, false),
        ];
        for &(p, pattern, from, accepted) in rows {
            assert_eq!(
                accepts(&t, id(p), pattern, id(from)),
                accepted,
                "listener in {p:#x} bound {pattern:?}, connector {from:#x}"
            );
        }
    }

    #[test]
    fn bind_refusals() {
        let t = topo();
        assert_eq!(
            check_bind(&t, id(ROOT), VmId::BROADCAST),
            Err(BindRefusal::Broadcast)
        );
        assert_eq!(
            check_bind(&t, id(A), VmId::BROADCAST),
            Err(BindRefusal::Broadcast)
        );
        assert_eq!(
            check_bind(&t, id(ROOT), VmId::PARENT),
            Err(BindRefusal::ParentInRoot)
        );
        assert_eq!(check_bind(&t, id(A), VmId::PARENT), Ok(()));
        assert_eq!(
            check_bind(&t, id(A), VmId::SILOHOST),
            Err(BindRefusal::Silohost)
        );
        for pattern in [
            VmId::ZERO,
            VmId::CHILDREN,
            VmId::LOOPBACK,
            id(A),
            id(UNKNOWN),
        ] {
            assert_eq!(check_bind(&t, id(ROOT), pattern), Ok(()), "{pattern:?}");
        }
    }

    #[test]
    fn the_most_specific_listener_wins() {
        let t = topo();
        let all = [
            VmId::ZERO,
            VmId::CHILDREN,
            VmId::PARENT,
            VmId::LOOPBACK,
            id(ROOT),
        ];
        let pick = |from: u8, bound: &[VmId]| {
            decide(
                &t,
                id(from),
                SockAddrHv::new(if from == A { VmId::LOOPBACK } else { id(A) }, svc()),
                ServiceState::Enabled,
                |_| Some(bound),
            )
            .map(|r| r.listener.map(|i| bound[i]))
        };
        // The root reaching child A: exact id beats PARENT beats ZERO.
        assert_eq!(pick(ROOT, &all), Ok(Some(id(ROOT))));
        assert_eq!(pick(ROOT, &all[..3]), Ok(Some(VmId::PARENT)));
        assert_eq!(
            pick(ROOT, &[VmId::ZERO, VmId::CHILDREN]),
            Ok(Some(VmId::ZERO))
        );
        // A reaching itself: LOOPBACK beats ZERO; CHILDREN and PARENT do not accept it.
        assert_eq!(pick(A, &all), Ok(Some(VmId::LOOPBACK)));
        assert_eq!(
            pick(A, &[VmId::CHILDREN, VmId::PARENT]),
            Err(Refusal::NothingListens)
        );
        // A1 reaching its parent A: CHILDREN beats ZERO.
        let from_child = decide(
            &t,
            id(A1),
            SockAddrHv::new(VmId::PARENT, svc()),
            ServiceState::Enabled,
            |_| Some(&all[..2]),
        );
        assert_eq!(
            from_child,
            Ok(Route {
                dest: id(A),
                listener: Some(1)
            })
        );
    }

    #[test]
    fn crossing_needs_a_registered_enabled_service_and_loopback_does_not() {
        let t = topo();
        let bound = [VmId::ZERO];
        let connect = |from: u8, vm: VmId, state| {
            decide(&t, id(from), SockAddrHv::new(vm, svc()), state, |_| {
                Some(&bound[..])
            })
        };
        assert_eq!(
            connect(A, VmId::PARENT, ServiceState::Unregistered),
            Err(Refusal::NotRegistered)
        );
        assert_eq!(
            connect(A, VmId::PARENT, ServiceState::Disabled),
            Err(Refusal::Disabled)
        );
        assert_eq!(
            connect(ROOT, id(B), ServiceState::Disabled),
            Err(Refusal::Disabled)
        );
        let ok = Ok(Route {
            dest: id(ROOT),
            listener: Some(0),
        });
        assert_eq!(connect(A, VmId::PARENT, ServiceState::Enabled), ok);
        for state in [ServiceState::Unregistered, ServiceState::Disabled] {
            assert_eq!(
                connect(A, VmId::LOOPBACK, state),
                Ok(Route {
                    dest: id(A),
                    listener: Some(0)
                })
            );
            assert_eq!(connect(A, id(A), state).map(|r| r.dest), Ok(id(A)));
        }
        // Reachability is decided before the service, so an unregistered service does not
        // tell a sibling apart from a missing partition.
        assert_eq!(
            connect(A, id(B), ServiceState::Unregistered),
            Err(Refusal::Unreachable)
        );
    }

    #[test]
    fn nothing_listening_is_refused_and_unknown_listeners_route_to_the_guest() {
        let t = topo();
        let none: [VmId; 0] = [];
        assert_eq!(
            decide(
                &t,
                id(A),
                SockAddrHv::new(VmId::PARENT, svc()),
                ServiceState::Enabled,
                |_| { Some(&none[..]) }
            ),
            Err(Refusal::NothingListens)
        );
        assert_eq!(
            decide(
                &t,
                id(ROOT),
                SockAddrHv::new(id(B), svc()),
                ServiceState::Enabled,
                |_| None
            ),
            Ok(Route {
                dest: id(B),
                listener: None
            })
        );
    }

    fn policy(connect: Option<&[u8]>, bind: Option<&[u8]>, wildcard_bind: bool) -> Policy {
        let ids = |l: &[u8]| l.iter().map(|&n| id(n)).collect();
        Policy {
            connect: connect.map(ids),
            bind: bind.map(ids),
            wildcard_bind,
        }
    }

    #[test]
    fn policy_connect_rule_every_row() {
        let t = topo();
        let bound = [VmId::ZERO];
        // (policy connect list, connector, addressed vm, expected)
        type Row<'a> = (Option<&'a [u8]>, u8, VmId, Result<u8, Refusal>);
        let rows: &[Row] = &[
            // no list: any partition
            (None, A, VmId::PARENT, Ok(ROOT)),
            (None, ROOT, id(B), Ok(B)),
            // listed
            (Some(&[A]), A, VmId::PARENT, Ok(ROOT)),
            (Some(&[A, B]), B, VmId::ZERO, Ok(ROOT)),
            (Some(&[ROOT]), ROOT, id(A), Ok(A)),
            // not listed
            (
                Some(&[A]),
                B,
                VmId::PARENT,
                Err(Refusal::Policy(PolicyRule::Connect)),
            ),
            (
                Some(&[A]),
                ROOT,
                id(B),
                Err(Refusal::Policy(PolicyRule::Connect)),
            ),
            (
                Some(&[]),
                A,
                VmId::PARENT,
                Err(Refusal::Policy(PolicyRule::Connect)),
            ),
            // loopback is free of policy
            (Some(&[]), A, VmId::LOOPBACK, Ok(A)),
            (Some(&[B]), ROOT, id(ROOT), Ok(ROOT)),
            // reachability comes first: a refused sibling does not learn of the policy
            (Some(&[]), A, id(B), Err(Refusal::Unreachable)),
        ];
        for &(list, from, vm, expected) in rows {
            let p = policy(list, None, true);
            let got = decide_with_policy(
                &t,
                id(from),
                SockAddrHv::new(vm, svc()),
                ServiceState::Enabled,
                &p,
                |_| Some(&bound[..]),
            )
            .map(|r| r.dest);
            assert_eq!(
                got,
                expected.map(id),
                "connect {list:?}, from {from:#x} to {vm:?}"
            );
        }
    }

    #[test]
    fn policy_is_checked_after_registration_and_state() {
        let t = topo();
        let p = policy(Some(&[]), None, true);
        let connect = |state| {
            decide_with_policy(
                &t,
                id(A),
                SockAddrHv::new(VmId::PARENT, svc()),
                state,
                &p,
                |_| Some(&[VmId::ZERO][..]),
            )
        };
        assert_eq!(
            connect(ServiceState::Unregistered),
            Err(Refusal::NotRegistered)
        );
        assert_eq!(connect(ServiceState::Disabled), Err(Refusal::Disabled));
        assert_eq!(
            connect(ServiceState::Enabled),
            Err(Refusal::Policy(PolicyRule::Connect))
        );
        // Before the listeners: a denied connector does not learn whether anything listens.
        let nothing = decide_with_policy(
            &t,
            id(A),
            SockAddrHv::new(VmId::PARENT, svc()),
            ServiceState::Enabled,
            &p,
            |_| Some(&[][..]),
        );
        assert_eq!(nothing, Err(Refusal::Policy(PolicyRule::Connect)));
    }

    #[test]
    fn policy_bind_rules_every_row() {
        // (bind list, wildcard_bind, listener partition, pattern, expected)
        type Row<'a> = (Option<&'a [u8]>, bool, u8, VmId, Result<(), PolicyRule>);
        let rows: &[Row] = &[
            // the default allows every bind
            (None, true, ROOT, VmId::ZERO, Ok(())),
            (None, true, A, VmId::CHILDREN, Ok(())),
            // bind list
            (Some(&[ROOT]), true, ROOT, VmId::ZERO, Ok(())),
            (Some(&[ROOT]), true, A, VmId::ZERO, Err(PolicyRule::Bind)),
            (Some(&[ROOT]), true, A, VmId::PARENT, Err(PolicyRule::Bind)),
            (
                Some(&[ROOT]),
                true,
                A,
                VmId::CHILDREN,
                Err(PolicyRule::Bind),
            ),
            (Some(&[ROOT]), true, A, id(ROOT), Err(PolicyRule::Bind)),
            (Some(&[]), true, ROOT, VmId::CHILDREN, Err(PolicyRule::Bind)),
            // wildcard_bind: false refuses ZERO only
            (None, false, ROOT, VmId::ZERO, Err(PolicyRule::WildcardBind)),
            (
                None,
                false,
                ROOT,
                VmId::WILDCARD,
                Err(PolicyRule::WildcardBind),
            ),
            (None, false, ROOT, VmId::CHILDREN, Ok(())),
            (None, false, ROOT, id(A), Ok(())),
            (None, false, A, VmId::PARENT, Ok(())),
            // who comes before how
            (Some(&[ROOT]), false, A, VmId::ZERO, Err(PolicyRule::Bind)),
            (
                Some(&[ROOT]),
                false,
                ROOT,
                VmId::ZERO,
                Err(PolicyRule::WildcardBind),
            ),
            // LOOPBACK is free of policy
            (Some(&[]), false, A, VmId::LOOPBACK, Ok(())),
        ];
        for &(list, wildcard, partition, pattern, expected) in rows {
            let p = policy(None, list, wildcard);
            assert_eq!(
                check_bind_policy(&p, id(partition), pattern),
                expected,
                "bind {list:?} wildcard_bind {wildcard}, in {partition:#x} pattern {pattern:?}"
            );
        }
    }

    #[test]
    fn policy_bind_rules_pick_among_listeners_at_connect() {
        let t = topo();
        // Listeners in the root for the service: ZERO and CHILDREN.
        let bound = [VmId::ZERO, VmId::CHILDREN];
        let connect = |p: &Policy, bound: &[VmId]| {
            decide_with_policy(
                &t,
                id(A),
                SockAddrHv::new(VmId::PARENT, svc()),
                ServiceState::Enabled,
                p,
                |_| Some(bound),
            )
        };
        // CHILDREN is more specific and allowed.
        let no_wildcard = policy(None, None, false);
        assert_eq!(
            connect(&no_wildcard, &bound).map(|r| r.listener),
            Ok(Some(1))
        );
        // Only ZERO bound (before the policy changed): the policy refuses it at connect.
        assert_eq!(
            connect(&no_wildcard, &bound[..1]),
            Err(Refusal::Policy(PolicyRule::WildcardBind))
        );
        // The root may not serve the service at all.
        let not_root = policy(None, Some(&[A]), true);
        assert_eq!(
            connect(&not_root, &bound),
            Err(Refusal::Policy(PolicyRule::Bind))
        );
        // Nothing accepting is still "nothing listens", whatever the policy.
        assert_eq!(
            connect(&not_root, &[VmId::LOOPBACK]),
            Err(Refusal::NothingListens)
        );
        // Loopback connects ignore bind rules: A reaching its own ZERO listener.
        let none = policy(Some(&[]), Some(&[]), false);
        let own = decide_with_policy(
            &t,
            id(A),
            SockAddrHv::new(VmId::LOOPBACK, svc()),
            ServiceState::Unregistered,
            &none,
            |_| Some(&[VmId::ZERO][..]),
        );
        assert_eq!(own.map(|r| r.dest), Ok(id(A)));
    }

    #[test]
    fn policy_lists_shrink_and_map() {
        let p = policy(Some(&[A, B]), Some(&[A]), false);
        let q = p.without(id(A));
        assert_eq!(q.connect, Some(vec![id(B)]));
        assert_eq!(
            q.bind,
            Some(vec![]),
            "an emptied list allows none, never all"
        );
        assert!(!q.wildcard_bind);
        let r = p.mapped(id(A), id(ROOT));
        assert_eq!(r.connect, Some(vec![id(ROOT), id(B)]));
        assert!(Policy::default().allows_all());
        assert!(!policy(None, None, false).allows_all());
        assert_eq!(p.partitions().count(), 3);
    }

    #[test]
    fn policy_json_defaults_and_unknown_fields() {
        let p: Policy = serde_json::from_str("{}").expect("empty");
        assert_eq!(p, Policy::default());
        let p: Policy = serde_json::from_str(r#"{"wildcard_bind":false}"#).expect("one field");
        assert!(!p.wildcard_bind && p.connect.is_none());
        assert!(serde_json::from_str::<Policy>(r#"{"conect":[]}"#).is_err());
    }
}
