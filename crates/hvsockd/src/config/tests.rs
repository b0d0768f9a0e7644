//! The configuration: the file, the declared entries against a registry, `--check`.

use std::path::Path;
use std::time::Duration;

use hvsock::dirs::Dirs;
use hvsock::{ServiceId, VmId};

use super::*;
use crate::registry::Registry;

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Loaded::parse(Path::new("test.toml"), text)
}

fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::open(&dir.path().join("registry.db")).expect("open");
    (dir, reg)
}

const FULL: &str = r#"
dir = "/srv/hv"
log_format = "json"

[limits]
handshake_timeout = "2s"
max_sessions_per_partition = 8
max_outstanding_connects = 4

[default_policy]
wildcard_bind = false

[[partition]]
name = "web"
id = "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11"

[[partition]]
name = "web-child"
parent = "web"

[[service]]
name = "echo"
port = 2761

[[service]]
name = "agent"
enabled = false
[service.policy]
connect = ["web", "host"]
"#;

#[test]
fn a_full_file_parses() {
    let c = parse(FULL).expect("parses");
    assert_eq!(c.dirs, Some(Dirs::under("/srv/hv")));
    assert_eq!(c.log_format, Some(LogFormat::Json));
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_sessions_per_partition, 8);
    assert_eq!(c.limits.max_outstanding_connects, 4);
    assert_eq!(c.declared.partitions.len(), 2);
    assert_eq!(c.declared.services[1].enabled, Some(false));
    assert_eq!(
        c.declared.services[1]
            .policy
            .as_ref()
            .and_then(|p| p.connect.clone()),
        Some(vec!["web".to_owned(), "host".to_owned()])
    );
    let c = parse("[limits]\nhandshake_timeout = 0.5\n").expect("seconds");
    assert_eq!(c.limits.handshake_timeout, Duration::from_millis(500));
    assert!(parse("").expect("empty").declared.is_empty());
}

#[test]
fn unknown_keys_and_bad_values_say_where() {
    let err = parse("dir = \"/x\"\n[limits]\nmax_sessions = 3\n").expect_err("unknown");
    let text = err.to_string();
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains("max_sessions"), "{text}");
    let err = parse("[[service]]\nname = \"x\"\nid = \"nope\"\n").expect_err("bad guid");
    assert!(err.to_string().contains("line 3"), "{err}");
    for (text, needle) in [
        (
            "[limits]\nhandshake_timeout = \"forever\"\n",
            "not a duration",
        ),
        ("[limits]\nhandshake_timeout = 0\n", "out of range"),
        ("[limits]\nmax_outstanding_connects = 0\n", "at least 1"),
        ("dir = \"/a\"\nrun_dir = \"/b\"\n", "not both"),
        ("state_dir = \"/a\"\n", "go together"),
        ("[[service]]\nname = \"2761\"\n", "all digits"),
        (
            "[[service]]\nname = \"a\"\nport = 1\nid = \"00000001-facb-11e6-bd58-64006a7986d3\"\n",
            "either id or port",
        ),
        (
            "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\n",
            "comes twice",
        ),
        ("[[partition]]\nname = \"host\"\n", "root partition"),
        ("[[partition]]\nname = \"parent\"\n", "keyword"),
        (
            "[[partition]]\nname = \"vm\"\nhybrid_vsock = \"fc.sock\"\n",
            "absolute path",
        ),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        let err = parse(text).expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn apply_ensures_entries_idempotently() {
    let (_dir, mut reg) = registry();
    let c = parse(FULL).expect("parses");
    let (plan, _) = c.declared.plan(&reg).expect("plan");
    assert_eq!(plan.services.created, 2);
    assert_eq!(plan.partitions.created, 2);
    assert!(
        reg.services().expect("list").is_empty(),
        "plan changed nothing"
    );
    let (report, default) = c.declared.apply(&mut reg).expect("apply");
    assert_eq!(report.services.created, 2);
    assert!(!default.wildcard_bind);
    let web = VmId::parse("c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11").expect("guid");
    let parts = reg.partitions().expect("list");
    assert!(
        parts
            .iter()
            .any(|p| p.name == "web-child" && p.parent == Some(web))
    );
    let agent = reg
        .services()
        .expect("list")
        .into_iter()
        .find(|s| s.name == "agent")
        .expect("agent");
    assert!(!agent.enabled);
    assert_eq!(
        agent.policy.and_then(|p| p.connect),
        Some(vec![web, reg.root()])
    );
    // Again: nothing changes (random ids were matched by name).
    let (again, _) = c.declared.apply(&mut reg).expect("again");
    assert!(!again.changed(), "{again:?}");
    // Enabled by hand; an entry without `enabled` leaves it so.
    let echo = ServiceId::from_vsock_port(2761);
    reg.set_service_enabled(echo, false).expect("disable");
    c.declared.apply(&mut reg).expect("again");
    assert!(!reg.service(echo).expect("read").expect("echo").enabled);
}

#[test]
fn clashes_name_the_entry_and_change_nothing() {
    let (_dir, mut reg) = registry();
    reg.add_service(ServiceId::from_vsock_port(1), "echo", true)
        .expect("echo");
    let c = parse("[[service]]\nname = \"echo\"\nport = 2761\n").expect("parses");
    let err = c.declared.apply(&mut reg).expect_err("clash");
    let text = err.to_string();
    assert!(text.contains("[[service]] #1 \"echo\""), "{text}");
    assert!(text.contains("registered with the id 00000001-"), "{text}");
    let c = parse("[[service]]\nname = \"other\"\nport = 1\n").expect("parses");
    let text = c.declared.apply(&mut reg).expect_err("clash").to_string();
    assert!(text.contains("registered as service \"echo\""), "{text}");
    let c = parse("[[partition]]\nname = \"a\"\nparent = \"nope\"\n").expect("parses");
    let text = c.declared.apply(&mut reg).expect_err("parent").to_string();
    assert!(text.contains("parent \"nope\""), "{text}");
    let c = parse("[default_policy]\nconnect = [\"ghost\"]\n").expect("parses");
    let text = c.declared.apply(&mut reg).expect_err("policy").to_string();
    assert!(
        text.contains("[default_policy]") && text.contains("ghost"),
        "{text}"
    );
    assert_eq!(reg.services().expect("list").len(), 1);
    assert_eq!(reg.partitions().expect("list").len(), 1);
}

#[test]
fn a_moved_partition_is_a_clash() {
    let (_dir, mut reg) = registry();
    let c = parse("[[partition]]\nname = \"a\"\n[[partition]]\nname = \"b\"\n").expect("ok");
    c.declared.apply(&mut reg).expect("apply");
    let c = parse("[[partition]]\nname = \"a\"\n[[partition]]\nname = \"b\"\nparent = \"a\"\n")
        .expect("ok");
    let text = c.declared.apply(&mut reg).expect_err("moved").to_string();
    assert!(
        text.contains("registered under host, the file puts it under a"),
        "{text}"
    );
}

#[test]
fn check_reports_the_plan_with_names_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[[partition]]\nname = \"w\"\n[default_policy]\nconnect = [\"w\", \"host\"]\n";
    let loaded = parse(text).expect("parses");
    let mut config = crate::Config::new(Dirs::under(dir.path().join("hv")));
    config.declared = loaded.declared;
    let (report, result) = check(&config, Some(Path::new("test.toml")));
    assert_eq!(result, Ok(()), "{report}");
    assert!(
        report.contains("default policy: connect [w, host]; bind any; wildcard_bind yes\n"),
        "{report}"
    );
    assert!(report.contains("  partition \"w\" created\n"), "{report}");
    assert!(report.ends_with("ok\n"), "{report}");
    assert!(!dir.path().join("hv").exists());
    config.declared.default_policy = Some(PolicyEntry {
        bind: Some(vec!["nope".into()]),
        ..PolicyEntry::default()
    });
    let (_, result) = check(&config, None);
    assert!(result.expect_err("unknown").contains("\"nope\""));
}
