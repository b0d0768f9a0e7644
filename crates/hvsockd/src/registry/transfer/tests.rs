use super::*;

fn open() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::open(&dir.path().join("registry.db")).expect("open");
    (dir, reg)
}

fn vm(n: u8) -> VmId {
    VmId(Guid::from_bytes([n; 16]))
}

/// A registry with two services (one with a policy) and a small tree.
fn populated() -> (tempfile::TempDir, Registry) {
    let (dir, mut reg) = open();
    let root = reg.root();
    reg.add_partition(vm(1), "a", root, PartitionKind::Sandbox, None)
        .expect("a");
    reg.add_partition(vm(2), "a1", vm(1), PartitionKind::Sandbox, None)
        .expect("a1");
    reg.add_partition(vm(3), "b", root, PartitionKind::Sandbox, None)
        .expect("b");
    let echo = ServiceId::from_vsock_port(2761);
    reg.add_service(echo, "echo", true).expect("echo");
    reg.add_service(ServiceId::from_vsock_port(9), "off", false)
        .expect("off");
    let policy = Policy {
        connect: Some(vec![vm(1), root]),
        bind: Some(vec![root]),
        wildcard_bind: false,
    };
    reg.set_service_policy(echo, Some(&policy)).expect("policy");
    (dir, reg)
}

#[test]
fn export_is_stable_and_parents_come_first() {
    let (_dir, reg) = populated();
    let doc = reg.export().expect("export");
    assert_eq!(doc, reg.export().expect("again"));
    let names: Vec<&str> = doc.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "a1"]);
    let names: Vec<&str> = doc.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["echo", "off"]);
    assert_eq!(doc.root, reg.root());
}

#[test]
fn import_into_a_fresh_registry_gives_the_same_registry_and_root() {
    let (_dir, reg) = populated();
    let doc = reg.export().expect("export");
    let (_dir2, mut fresh) = open();
    let report = fresh
        .import(&doc, ImportMode::Merge, false)
        .expect("import");
    assert!(report.root_adopted);
    assert_eq!(report.services.created, 2);
    assert_eq!(report.partitions.created, 3);
    assert_eq!(fresh.root(), reg.root());
    assert_eq!(fresh.export().expect("export"), doc);
    // Again: nothing to do.
    let again = fresh.import(&doc, ImportMode::Merge, false).expect("again");
    assert!(!again.changed(), "{again:?}");
    assert_eq!(again.services.unchanged, 2);
    // The root survives reopening.
    let path = fresh.path().to_owned();
    drop(fresh);
    assert_eq!(Registry::open(&path).expect("reopen").root(), reg.root());
}

#[test]
fn merge_into_a_used_registry_keeps_its_root_and_maps_the_documents() {
    let (_dir, reg) = populated();
    let doc = reg.export().expect("export");
    let (_dir2, mut other) = open();
    other
        .add_service(ServiceId::from_vsock_port(5), "local", true)
        .expect("local");
    let root = other.root();
    // A partition holds the root's id (services without a policy do not: a first start's
    // integration services leave a registry fresh).
    other
        .add_partition(
            VmId(Guid::new_random()),
            "local-sandbox",
            root,
            PartitionKind::Sandbox,
            None,
        )
        .expect("local partition");
    let report = other.import(&doc, ImportMode::Merge, false).expect("merge");
    assert!(!report.root_adopted);
    assert_eq!(other.root(), root);
    let echo = other
        .service(ServiceId::from_vsock_port(2761))
        .expect("read")
        .expect("echo");
    let policy = echo.policy.expect("policy");
    assert_eq!(policy.connect, Some(vec![vm(1), root]));
    assert_eq!(policy.bind, Some(vec![root]));
    let a = other.partitions().expect("list");
    assert!(a.iter().any(|p| p.name == "a" && p.parent == Some(root)));
    assert_eq!(other.services().expect("list").len(), 3, "local stays");
}

#[test]
fn conflicts_are_listed_and_change_nothing() {
    let (_dir, reg) = populated();
    let doc = reg.export().expect("export");
    let (_dir2, mut other) = open();
    other
        .add_service(ServiceId::from_vsock_port(2761), "not-echo", true)
        .expect("clash by id");
    other
        .add_service(ServiceId::from_vsock_port(77), "off", true)
        .expect("clash by name");
    let root = other.root();
    other
        .add_partition(vm(1), "not-a", root, PartitionKind::Sandbox, None)
        .expect("clash");
    let before = other.export().expect("before");
    let err = other
        .import(&doc, ImportMode::Merge, false)
        .expect_err("conflicts");
    let RegistryError::Conflicts(list) = &err else {
        panic!("{err}");
    };
    assert_eq!(list.len(), 3, "{list:?}");
    let text = err.to_string();
    assert!(text.contains("\"not-echo\""), "{text}");
    assert!(text.contains("service name \"off\""), "{text}");
    assert!(text.contains("named \"not-a\""), "{text}");
    assert_eq!(other.export().expect("after"), before);
    // Replace makes it equal to the document instead.
    let report = other
        .import(&doc, ImportMode::Replace, false)
        .expect("replace");
    assert!(report.root_adopted);
    assert_eq!(report.services.removed, 1);
    assert_eq!(other.export().expect("after"), doc);
}

#[test]
fn merge_updates_enabled_and_policy_and_dry_run_writes_nothing() {
    let (_dir, mut reg) = populated();
    let mut doc = reg.export().expect("export");
    doc.services[1].enabled = true;
    doc.services[0].policy = None;
    let dry = reg.import(&doc, ImportMode::Merge, true).expect("dry");
    assert_eq!(dry.services.updated, 2);
    assert!(dry.dry_run);
    assert_ne!(
        reg.export().expect("export"),
        doc,
        "dry run changed nothing"
    );
    reg.import(&doc, ImportMode::Merge, false).expect("merge");
    assert_eq!(reg.export().expect("export"), doc);
}

#[test]
fn invalid_documents_are_refused_with_the_reason() {
    let (_dir, reg) = populated();
    let good = reg.export().expect("export");
    type Change = Box<dyn Fn(&mut Export)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|d| d.version = 9), "version 9"),
        (
            Box::new(|d| d.services[1].name = "echo".into()),
            "two services",
        ),
        (
            Box::new(|d| d.partitions[1].name = "host".into()),
            "used twice",
        ),
        (
            Box::new(|d| d.partitions[0].parent = vm(99)),
            "neither the root",
        ),
        (
            Box::new(|d| {
                d.partitions[0].parent = vm(2);
            }),
            "its own ancestor",
        ),
        (
            Box::new(|d| {
                d.services[0].policy = Some(Policy {
                    connect: Some(vec![vm(42)]),
                    ..Policy::default()
                })
            }),
            "not in the document",
        ),
        (
            Box::new(|d| d.partitions[0].kind = PartitionKind::Vm),
            "no hybrid_vsock",
        ),
        (
            Box::new(|d| d.partitions[0].id = VmId::PARENT),
            "well-known",
        ),
    ];
    for (change, needle) in cases {
        let mut doc = good.clone();
        change(&mut doc);
        let (_d, mut fresh) = open();
        let err = fresh
            .import(&doc, ImportMode::Merge, false)
            .expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(fresh.services().expect("list").is_empty());
    }
}

#[test]
fn removing_a_partition_removes_it_from_policies_without_widening_them() {
    let (_dir, mut reg) = populated();
    let root = reg.root();
    reg.remove_partition(vm(2)).expect("a1");
    reg.remove_partition(vm(1)).expect("a");
    let echo = reg
        .service(ServiceId::from_vsock_port(2761))
        .expect("read")
        .expect("echo");
    let policy = echo.policy.expect("policy");
    assert_eq!(policy.connect, Some(vec![root]));
    let only_a = Policy {
        connect: Some(vec![vm(3)]),
        ..Policy::default()
    };
    reg.set_service_policy(echo.id, Some(&only_a)).expect("set");
    reg.remove_partition(vm(3)).expect("b");
    let policy = reg
        .service(echo.id)
        .expect("read")
        .expect("echo")
        .policy
        .expect("policy");
    assert_eq!(policy.connect, Some(vec![]), "empty, not any");
}
