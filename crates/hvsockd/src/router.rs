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

use std::collections::HashMap;

use hvsock::{SockAddrHv, VmId};

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

/// Decides a connect from `from` to `target`.
///
/// `service` says what the registry knows of `target.service_id`; `bindings` gives, for a
/// destination partition, the patterns bound for the service there, or `None` when the
/// destination's listeners are not known here (a VM whose guest decides).
pub fn decide<'a>(
    topo: &Topology,
    from: VmId,
    target: SockAddrHv,
    service: ServiceState,
    bindings: impl FnOnce(VmId) -> Option<&'a [VmId]>,
) -> Result<Route, Refusal> {
    let dest = destination(topo, from, target.vm_id).ok_or(Refusal::Unreachable)?;
    if dest != from {
        match service {
            ServiceState::Enabled => {}
            ServiceState::Unregistered => return Err(Refusal::NotRegistered),
            ServiceState::Disabled => return Err(Refusal::Disabled),
        }
    }
    let Some(patterns) = bindings(dest) else {
        return Ok(Route {
            dest,
            listener: None,
        });
    };
    patterns
        .iter()
        .enumerate()
        .filter(|&(_, &pattern)| accepts(topo, dest, pattern, from))
        .max_by_key(|&(_, &pattern)| specificity(pattern))
        .map(|(index, _)| Route {
            dest,
            listener: Some(index),
        })
        .ok_or(Refusal::NothingListens)
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
}
