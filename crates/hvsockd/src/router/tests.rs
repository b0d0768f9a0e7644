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
