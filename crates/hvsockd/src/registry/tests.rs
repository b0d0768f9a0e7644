use super::*;

fn open() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::open(&dir.path().join("registry.db")).expect("open");
    (dir, reg)
}

#[test]
fn first_open_creates_a_root_that_survives_reopening() {
    let (dir, reg) = open();
    let root = reg.root();
    let parts = reg.partitions().expect("list");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].name, ROOT_NAME);
    assert_eq!(parts[0].kind, PartitionKind::Root);
    drop(reg);
    let again = Registry::open(&dir.path().join("registry.db")).expect("reopen");
    assert_eq!(again.root(), root);
}

#[test]
fn services_add_idempotently_and_clash_clearly() {
    let (_dir, mut reg) = open();
    let id = ServiceId::from_vsock_port(2761);
    assert_eq!(
        reg.add_service(id, "echo", true).expect("add").1,
        Added::Created
    );
    assert_eq!(
        reg.add_service(id, "echo", false).expect("again").1,
        Added::Existing
    );
    let err = reg.add_service(id, "other", true).expect_err("id taken");
    assert!(
        err.to_string().contains("already registered as \"echo\""),
        "{err}"
    );
    let err = reg
        .add_service(ServiceId::from_vsock_port(1), "echo", true)
        .expect_err("name taken");
    assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
    reg.set_service_enabled(id, false).expect("disable");
    assert!(!reg.services().expect("list")[0].enabled);
    reg.remove_service(id).expect("remove");
    assert!(matches!(
        reg.remove_service(id),
        Err(RegistryError::NotFound { .. })
    ));
    assert!(reg.services().expect("list").is_empty());
}

#[test]
fn partitions_form_a_tree_and_keep_their_children() {
    let (_dir, mut reg) = open();
    let root = reg.root();
    let a = VmId(Guid::new_random());
    let a1 = VmId(Guid::new_random());
    reg.add_partition(a, "a", root, PartitionKind::Sandbox, None)
        .expect("a");
    reg.add_partition(a1, "a1", a, PartitionKind::Sandbox, None)
        .expect("a1");
    assert_eq!(
        reg.add_partition(a1, "a1", a, PartitionKind::Sandbox, None)
            .expect("again")
            .1,
        Added::Existing
    );
    let missing = VmId(Guid::new_random());
    assert!(matches!(
        reg.add_partition(
            VmId(Guid::new_random()),
            "x",
            missing,
            PartitionKind::Sandbox,
            None
        ),
        Err(RegistryError::NotFound { .. })
    ));
    let err = reg.remove_partition(a).expect_err("has children");
    assert!(err.to_string().contains("(a1)"), "{err}");
    assert!(matches!(
        reg.remove_partition(root),
        Err(RegistryError::Root)
    ));
    reg.remove_partition(a1).expect("a1");
    reg.remove_partition(a).expect("a");
    assert_eq!(reg.partitions().expect("list").len(), 1);
}

#[test]
fn a_registry_from_a_newer_hvsockd_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    drop(Registry::open(&path).expect("create"));
    let conn = Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    let err = Registry::open(&path).expect_err("too new");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn a_v1_registry_reads_its_default_policy_column_as_no_policy() {
    // Rows written before policies existed hold the column's default, '{}'.
    let (_dir, mut reg) = open();
    reg.conn
        .execute(
            "INSERT INTO services (id, name, enabled, created_at) VALUES (?1, 'old', 1, 0)",
            [ServiceId::from_vsock_port(1).to_string()],
        )
        .expect("insert as v1 did");
    let old = &reg.services().expect("list")[0];
    assert_eq!(old.policy, None);
    // An own policy that allows everything is not "no policy", and survives a round trip.
    let all = Policy::default();
    reg.set_service_policy(old.id, Some(&all)).expect("set");
    assert_eq!(reg.services().expect("list")[0].policy, Some(all));
    reg.set_service_policy(old.id, None).expect("clear");
    assert_eq!(reg.services().expect("list")[0].policy, None);
    // A column hvsockd cannot read is reported, not guessed.
    reg.conn
        .execute("UPDATE services SET policy = '{\"conect\":[]}'", [])
        .expect("corrupt");
    let err = reg.services().expect_err("corrupt");
    assert!(
        err.to_string().contains("unreadable service policy"),
        "{err}"
    );
}

#[test]
fn update_service_is_one_transaction() {
    let (_dir, mut reg) = open();
    let a = ServiceId::from_vsock_port(1);
    reg.add_service(a, "a", true).expect("a");
    reg.add_service(ServiceId::from_vsock_port(2), "b", true)
        .expect("b");
    let policy = Policy {
        connect: Some(vec![reg.root()]),
        ..Policy::default()
    };
    // The rename clashes: neither the switch nor the policy happen.
    let err = reg
        .update_service(a, Some("b"), Some(false), Some(Some(&policy)))
        .expect_err("name taken");
    assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
    let unknown = Policy {
        bind: Some(vec![VmId(Guid::new_random())]),
        ..Policy::default()
    };
    let err = reg
        .update_service(a, Some("c"), None, Some(Some(&unknown)))
        .expect_err("unknown partition");
    assert!(
        matches!(err, RegistryError::UnknownPolicyPartition { .. }),
        "{err}"
    );
    let s = reg.service(a).expect("read").expect("a");
    assert_eq!((s.name.as_str(), s.enabled, s.policy), ("a", true, None));
    let s = reg
        .update_service(a, Some("c"), Some(false), Some(Some(&policy)))
        .expect("update");
    assert_eq!(reg.service(a).expect("read"), Some(s));
}

#[test]
fn a_version_1_registry_is_read_as_is_and_upgraded_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    let conn = Connection::open(&path).expect("raw open");
    conn.execute_batch(SCHEMA_V1).expect("v1");
    conn.execute(
        "INSERT INTO partitions (id, name, parent, kind, created_at) VALUES (?1, 'host', NULL, 'root', 0)",
        [Guid::new_random().to_string()],
    )
    .expect("root");
    conn.execute(
        "INSERT INTO services (id, name, enabled, created_at) VALUES (?1, 'old', 1, 0)",
        [ServiceId::from_vsock_port(1).to_string()],
    )
    .expect("service");
    conn.pragma_update(None, "user_version", 1).expect("v1");
    drop(conn);
    // Read only (hvsockd --check): readable, nothing written.
    let ro = Registry::open_read_only(&path).expect("read only");
    assert_eq!(ro.services().expect("list")[0].access, None);
    drop(ro);
    let version = |path: &Path| -> i64 {
        Connection::open(path)
            .expect("raw")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version")
    };
    assert_eq!(version(&path), 1);
    // Opened: upgraded, not created (no integration services are added to it).
    let mut reg = Registry::open(&path).expect("upgrade");
    assert!(!reg.created());
    assert_eq!(version(&path), SCHEMA_VERSION);
    let id = ServiceId::from_vsock_port(1);
    reg.set_service_access(
        id,
        Some(&Access {
            users: vec![1000],
            groups: vec![],
        }),
    )
    .expect("access");
    drop(reg);
    let reg = Registry::open(&path).expect("reopen");
    assert_eq!(
        reg.service(id)
            .expect("read")
            .expect("old")
            .access
            .expect("kept")
            .users,
        [1000]
    );
}

#[test]
fn host_kvp_pools_persist_are_bounded_and_go_with_their_partition() {
    let (dir, mut reg) = open();
    let root = reg.root();
    let a = VmId(Guid::new_random());
    let b = VmId(Guid::new_random());
    reg.add_partition(a, "a", root, PartitionKind::Sandbox, None)
        .expect("a");
    reg.add_partition(b, "b", root, PartitionKind::Sandbox, None)
        .expect("b");
    assert_eq!(reg.kvp_set(a, "k", "v").expect("set"), KvpSet::Created);
    assert_eq!(reg.kvp_set(a, "k", "w").expect("set"), KvpSet::Replaced);
    reg.kvp_set(b, "k", "other").expect("set b");
    // Refusals, each with its own message.
    let err = reg.kvp_set(a, "../x", "v").expect_err("bad key");
    assert!(err.to_string().contains("is not a key"), "{err}");
    let err = reg
        .kvp_set(a, "big", &"v".repeat(hvsock_agent::kvp::MAX_VALUE + 1))
        .expect_err("big value");
    assert!(err.to_string().contains("over the limit"), "{err}");
    let err = reg.kvp_set(root, "k", "v").expect_err("root");
    assert!(err.to_string().contains("root partition"), "{err}");
    let missing = VmId(Guid::new_random());
    assert!(matches!(
        reg.kvp_set(missing, "k", "v"),
        Err(RegistryError::NotFound { .. })
    ));
    drop(reg);
    let mut reg = Registry::open(&dir.path().join("registry.db")).expect("reopen");
    let pools = reg.kvp_pools().expect("pools");
    assert_eq!(pools[&a]["k"], "w");
    assert_eq!(pools[&b]["k"], "other");
    // The bound: a new key past it is refused, an existing one may still change.
    for i in 1..hvsock_agent::kvp::MAX_PAIRS {
        reg.kvp_set(a, &format!("k{i}"), "v").expect("fill");
    }
    let err = reg.kvp_set(a, "one-more", "v").expect_err("full");
    assert!(matches!(err, RegistryError::KvpFull { max: 1024 }), "{err}");
    assert!(err.to_string().contains("1024 keys"), "{err}");
    reg.kvp_set(a, "k", "x").expect("replace in a full pool");
    assert!(reg.kvp_delete(a, "k").expect("delete"));
    assert!(!reg.kvp_delete(a, "k").expect("delete again"));
    reg.kvp_set(a, "one-more", "v").expect("room again");
    // Removing a partition removes its pool, not the others'.
    reg.remove_partition(a).expect("remove");
    let pools = reg.kvp_pools().expect("pools");
    assert!(!pools.contains_key(&a));
    assert_eq!(pools[&b].len(), 1);
}

#[test]
fn version_1_and_2_registries_gain_the_kvp_table_in_place() {
    for from in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.db");
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(SCHEMA_V1).expect("v1");
        if from >= 2 {
            conn.execute_batch(SCHEMA_V2).expect("v2");
        }
        let root = Guid::new_random();
        let sandbox = Guid::new_random();
        conn.execute(
            "INSERT INTO partitions (id, name, parent, kind, created_at) VALUES (?1, 'host', NULL, 'root', 0)",
            [root.to_string()],
        )
        .expect("root");
        conn.execute(
            "INSERT INTO partitions (id, name, parent, kind, created_at) VALUES (?1, 'sb', ?2, 'sandbox', 0)",
            [sandbox.to_string(), root.to_string()],
        )
        .expect("sandbox");
        conn.pragma_update(None, "user_version", from)
            .expect("version");
        drop(conn);
        // Read only: an empty pool, nothing written.
        let ro = Registry::open_read_only(&path).expect("read only");
        assert!(ro.kvp_pools().expect("pools").is_empty());
        drop(ro);
        let mut reg = Registry::open(&path).expect("upgrade");
        assert!(!reg.created());
        assert_eq!(reg.partitions().expect("kept").len(), 2);
        reg.kvp_set(VmId(sandbox), "k", "v").expect("set");
        drop(reg);
        let reg = Registry::open(&path).expect("reopen");
        assert_eq!(reg.kvp_pools().expect("pools")[&VmId(sandbox)]["k"], "v");
        let version: i64 = Connection::open(&path)
            .expect("raw")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }
}
