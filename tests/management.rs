//! The operator's side against a real hvsockd: every management verb through the CLI and the
//! raw admin API (idempotency, `--if-exists`, rename, policy, children), the policy rules end
//! to end through the library (refusal kinds and messages), the counters moving in `/metrics`
//! and `hvsock stats` under the friendly name, the configuration file applied at start (and
//! refused on a clash), `hvsockd --check`, registry export then import into a fresh hvsockd,
//! the OpenAPI document as served, and `--admin-tcp`.
//!
//! Every child process is bounded by a deadline and killed (by its pid) if it overstays.
//!
//! A table of tests, one per operator task, each standing alone on its own hvsockd: longer
//! than most files here, and read one test at a time.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, Transport, VmId};
use serde_json::{Value, json};
use support::{Daemon, Out, PORT_2761, bins, hv, wait_for};

/// How long one command may take (debug builds, a busy machine).
const QUICK: Duration = Duration::from_secs(30);

/// Runs `cmd` to its end (killed after [`QUICK`]) with `input` on stdin.
fn run(mut cmd: Command, input: &[u8]) -> Out {
    support::run(&mut cmd, input, QUICK)
}

/// `hvsockd ARGS…` (for --check and start failures), with no HVSOCK_DIR from outside.
fn hvsockd(args: &[&str]) -> Out {
    let mut cmd = Command::new(&bins().hvsockd);
    cmd.args(args)
        .env_remove("HVSOCK_DIR")
        .env_remove("HVSOCKD_CONFIG");
    run(cmd, b"")
}

/// The admin API's answer, asserting the status.
fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let body = body.map(|b| b.to_string());
    let (got, reply) = d.api(method, path, body.as_deref());
    assert_eq!(got, status, "{method} {path}: {reply}");
    reply
}

/// `/metrics` as text.
fn metrics(d: &Daemon) -> String {
    let (status, text) = support::http(&d.dirs().admin_socket(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    text
}

/// The value of the `/metrics` line that starts with `prefix` (labels included), if any.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const T: Duration = Duration::from_secs(2);

fn connect(t: &Transport, vm: VmId, svc: ServiceId) -> std::io::Result<HvStream> {
    HvStream::connect_with(t, SockAddrHv::new(vm, svc), T)
}

fn bind(t: &Transport, vm: VmId, svc: ServiceId) -> std::io::Result<HvListener> {
    HvListener::bind_with(t, SockAddrHv::new(vm, svc), 16)
}

/// Connects, has `listener` accept, and checks a byte each way.
fn roundtrip(t: &Transport, vm: VmId, svc: ServiceId, listener: &HvListener) {
    let mut c = connect(t, vm, svc).unwrap_or_else(|e| panic!("connect {vm:?}:{svc}: {e}"));
    let (mut a, _) = listener.accept().unwrap();
    c.write_all(b"?").unwrap();
    let mut buf = [0u8; 1];
    a.read_exact(&mut buf).unwrap();
    a.write_all(b"!").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"!");
}

/// Asserts a refusal of kind `kind` whose message holds `needle`.
fn refused<T: std::fmt::Debug>(result: std::io::Result<T>, kind: ErrorKind, needle: &str) {
    let err = result.expect_err(needle);
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in {err}"
    );
}

#[test]
fn service_verbs_are_idempotent_and_say_what_they_did() {
    let d = Daemon::start();
    assert_eq!(
        hv(&d, &["service", "add", "echo", "--port", "2761"]).ok(),
        format!("{PORT_2761}\n")
    );
    // Adding it again (by id or port) succeeds: the API says 200 instead of 201.
    hv(&d, &["service", "add", "echo", "--id", PORT_2761]).ok();
    api(
        &d,
        "POST",
        "/v1/services",
        Some(json!({"name": "echo", "port": 2761})),
        200,
    );
    let show = hv(&d, &["service", "show", "echo", "--json"]).json();
    assert_eq!(show["policy"], Value::Null, "no policy of its own");
    assert_eq!(show["effective_policy"]["connect"], Value::Null, "any");
    assert_eq!(show["effective_policy"]["wildcard_bind"], true);

    // Rename: by name, by port; the old name is gone, clashes are refused.
    assert_eq!(
        hv(&d, &["service", "rename", "echo", "ping"]).ok(),
        format!("service {PORT_2761} is now named \"ping\"\n")
    );
    hv(&d, &["service", "show", "echo"]).fails_with("no service \"echo\"");
    hv(&d, &["service", "add", "other", "--port", "7"]).ok();
    hv(&d, &["service", "rename", "2761", "other"])
        .fails_with("the service name \"other\" is already used by 00000007-");
    assert_eq!(
        hv(&d, &["service", "show", "2761", "--json"]).json()["name"],
        "ping"
    );
    // The same through the API, which also switches and checks what it is given.
    let s = api(
        &d,
        "PATCH",
        "/v1/services/ping",
        Some(json!({"name": "echo", "enabled": false})),
        200,
    );
    assert_eq!(
        (s["name"].as_str(), s["enabled"].as_bool()),
        (Some("echo"), Some(false))
    );
    let e = api(
        &d,
        "PATCH",
        "/v1/services/echo",
        Some(json!({"nmae": "x"})),
        422,
    );
    assert_eq!(e["error"]["code"], "invalid_json");
    let e = api(
        &d,
        "PATCH",
        "/v1/services/echo",
        Some(json!({"name": "a:b"})),
        400,
    );
    assert_eq!(e["error"]["code"], "invalid_name");
    assert_eq!(
        hv(&d, &["service", "enable", "echo"]).ok(),
        format!("service echo ({PORT_2761}) is enabled\n")
    );

    // Remove: an absent service fails, unless --if-exists; the API says 404 not_found.
    assert_eq!(
        hv(&d, &["service", "remove", "other"]).ok(),
        "service other (00000007-facb-11e6-bd58-64006a7986d3) removed\n"
    );
    hv(&d, &["service", "remove", "other"]).fails_with("no service \"other\" in the registry");
    let again = hv(&d, &["service", "remove", "--if-exists", "other"]);
    assert_eq!(again.ok(), "");
    assert!(
        again.stderr.contains("not registered; nothing to remove"),
        "{again:?}"
    );
    let e = api(&d, "DELETE", "/v1/services/other", None, 404);
    assert_eq!(e["error"]["code"], "not_found");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"other\"")
    );
}

#[test]
fn partition_verbs_children_rename_and_if_exists() {
    let d = Daemon::start();
    d.without_own_services();
    let a = hv(&d, &["vm", "add", "a"]).ok().trim().to_owned();
    hv(&d, &["vm", "add", "a1", "--parent", "a"]).ok();
    hv(&d, &["vm", "add", "a0", "--parent", a.as_str()]).ok();
    let children = hv(&d, &["vm", "children", "a"]);
    let names: Vec<&str> = children
        .ok()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["a0", "a1"], "{children:?}");
    let json = hv(&d, &["vm", "children", "host", "--json"]).json();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["name"], "a");
    api(&d, "GET", "/v1/partitions/nope/children", None, 404);

    assert_eq!(
        hv(&d, &["vm", "rename", "a1", "a2"]).ok(),
        format!(
            "partition {} is now named \"a2\"\n",
            hv(&d, &["vm", "show", "a2", "--json"]).json()["id"]
                .as_str()
                .unwrap()
        )
    );
    assert_eq!(
        hv(&d, &["vm", "show", "a2", "--json"]).json()["parent_name"],
        "a"
    );
    hv(&d, &["vm", "rename", "host", "root"]).fails_with("cannot be renamed");
    hv(&d, &["vm", "rename", "a2", "a0"]).fails_with("already used");
    let e = api(
        &d,
        "PATCH",
        "/v1/partitions/a2",
        Some(json!({"name": "parent"})),
        400,
    );
    assert_eq!(e["error"]["code"], "invalid_name");

    hv(&d, &["vm", "remove", "a"]).fails_with("has child partitions (a0, a2)");
    hv(&d, &["vm", "remove", "a2"]).ok();
    hv(&d, &["vm", "remove", "a2"]).fails_with("no partition \"a2\"");
    let again = hv(&d, &["vm", "remove", "--if-exists", "a2"]);
    assert_eq!(again.ok(), "");
    assert!(
        again.stderr.contains("does not exist; nothing to remove"),
        "{again:?}"
    );
    let e = api(&d, "DELETE", "/v1/partitions/a2", None, 404);
    assert_eq!(e["error"]["code"], "not_found");
    // Live state: listeners are listed with their names.
    let svc = d.add_service("echo", 2761);
    let _l = bind(&d.host(), VmId::CHILDREN, svc).unwrap();
    let listeners = api(&d, "GET", "/v1/listeners", None, 200);
    assert_eq!(listeners[0]["service_name"], "echo");
    assert_eq!(listeners[0]["vm_keyword"], "children");
    assert_eq!(listeners[0]["partition_name"], "host");
    let table = hv(&d, &["listeners"]);
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0][..4],
        ["ID", "PARTITION", "BOUND", "SERVICE"],
        "{table:?}"
    );
    assert_eq!(
        lines[1][1..8],
        ["host", "children", "echo", "16", "0", "0", "0"],
        "{table:?}"
    );
    assert_eq!(lines[1][8], std::process::id().to_string(), "{table:?}");
    assert_eq!(hv(&d, &["listeners", "--json"]).json(), listeners);
}

#[test]
fn policy_rules_end_to_end() {
    let d = Daemon::start();
    let a = d.add_partition("a", None);
    let b = d.add_partition("b", None);
    let svc = d.add_service("echo", 5001);
    let (ta, tb) = (d.partition(a), d.partition(b));
    let wildcard = bind(&d.host(), VmId::ZERO, svc).unwrap();

    // connect: [a] — b is refused with EACCES, naming the service, the partition, the rule.
    let out = hv(&d, &["service", "policy", "echo", "--connect", "a"]);
    assert!(
        out.ok()
            .contains("policy:   its own\nconnect:  a\nbind:     any\n"),
        "{out:?}"
    );
    roundtrip(&ta, VmId::PARENT, svc, &wildcard);
    refused(
        connect(&tb, VmId::PARENT, svc),
        ErrorKind::PermissionDenied,
        "service echo does not allow partition b to connect (policy connect: [a])",
    );
    // Loopback is free of policy.
    let own = bind(&tb, VmId::LOOPBACK, svc).unwrap();
    roundtrip(&tb, VmId::LOOPBACK, svc, &own);
    drop(own);

    // wildcard_bind: no — the ZERO listener bound before no longer serves crossings, a new
    // ZERO bind is refused at once, a CHILDREN listener serves.
    hv(
        &d,
        &[
            "service",
            "policy",
            "echo",
            "--connect-any",
            "--wildcard-bind",
            "no",
        ],
    )
    .ok();
    refused(
        connect(&ta, VmId::PARENT, svc),
        ErrorKind::PermissionDenied,
        "policy wildcard_bind: false",
    );
    drop(wildcard);
    refused(
        bind(&d.host(), VmId::ZERO, svc),
        ErrorKind::PermissionDenied,
        "service echo does not allow wildcard binds (policy wildcard_bind: false)",
    );
    let children = bind(&d.host(), VmId::CHILDREN, svc).unwrap();
    roundtrip(&tb, VmId::ZERO, svc, &children);

    // bind: [host] — a may not serve it across partitions, but may on loopback.
    hv(&d, &["service", "policy", "echo", "--bind", "host"]).ok();
    refused(
        bind(&ta, VmId::PARENT, svc),
        ErrorKind::PermissionDenied,
        "service echo does not allow partition a to bind it (policy bind: [host])",
    );
    bind(&ta, VmId::LOOPBACK, svc).unwrap();
    // The API shows the policy with names, and takes names or ids.
    let s = api(
        &d,
        "PATCH",
        "/v1/services/echo",
        Some(json!({"policy": {"connect": ["a", b.to_string()]}})),
        200,
    );
    assert_eq!(s["policy"]["connect"][1]["name"], "b");
    assert_eq!(s["policy"]["bind"][0]["name"], "host");
    assert_eq!(s["policy"]["wildcard_bind"], false);
    let e = api(
        &d,
        "PATCH",
        "/v1/services/echo",
        Some(json!({"policy": {"bind": ["ghost"]}})),
        400,
    );
    assert_eq!(e["error"]["code"], "unknown_partition");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"ghost\"")
    );

    // Removing a partition removes it from the policy; an emptied list allows none.
    drop(children);
    hv(&d, &["vm", "remove", "b"]).ok();
    let p = hv(&d, &["service", "policy", "echo", "--json"]).json();
    assert_eq!(p["policy"]["connect"].as_array().unwrap().len(), 1);
    hv(&d, &["service", "policy", "echo", "--connect", ""]).ok();
    let text = hv(&d, &["service", "policy", "echo"]);
    assert!(text.ok().contains("connect:  none\n"), "{text:?}");
    // --default: back to hvsockd's default policy (allow all).
    let text = hv(&d, &["service", "policy", "echo", "--default"]);
    assert!(
        text.ok().contains("policy:   default\nconnect:  any\n"),
        "{text:?}"
    );
    let _l = bind(&d.host(), VmId::ZERO, svc).unwrap();

    // The refusals were counted, by reason, binds apart.
    let stats = hv(&d, &["stats", "--json"]).json();
    let row = |partition: &str| -> Value {
        stats["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["partition"] == partition && c["service"] == "echo")
            .cloned()
            .unwrap_or_else(|| panic!("no row for {partition}: {stats}"))
    };
    // b is gone: its counters stay, under its id.
    assert_eq!(
        row(&b.to_string())["refused"]["policy_connect"],
        1,
        "{stats}"
    );
    assert_eq!(row("a")["refused"]["policy_wildcard_bind"], 1, "{stats}");
    let binds = stats["binds_refused"].as_array().unwrap();
    assert!(
        binds
            .iter()
            .any(|b| b["partition"] == "a" && b["refused"]["policy_bind"] == 1),
        "{stats}"
    );
    assert!(
        binds
            .iter()
            .any(|b| b["partition"] == "host" && b["refused"]["policy_wildcard_bind"] == 1),
        "{stats}"
    );
    let text = metrics(&d);
    assert!(
        text.contains("reason=\"policy_bind\"} 1"),
        "hvsock_binds_refused_total in:\n{text}"
    );
}

#[test]
fn counters_move_and_carry_the_friendly_name() {
    let d = Daemon::start();
    let a = d.add_partition("a", None);
    let svc = d.add_service("echo", 2761);
    let ta = d.partition(a);
    let established = "hvsock_connections_total{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"a\"}";
    assert_eq!(metric(&metrics(&d), established), None);

    let l = bind(&d.host(), VmId::ZERO, svc).unwrap();
    let text = metrics(&d);
    assert_eq!(
        metric(
            &text,
            "hvsock_listeners{service=\"echo\",partition=\"host\"}"
        ),
        Some(1.0),
        "{text}"
    );
    for n in 1..=3 {
        roundtrip(&ta, VmId::PARENT, svc, &l);
        assert_eq!(metric(&metrics(&d), established), Some(f64::from(n)));
    }
    let text = metrics(&d);
    let count = "hvsock_connect_duration_seconds_count{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"a\"}";
    assert_eq!(metric(&text, count), Some(3.0), "{text}");
    assert!(
        text.contains("hvsock_connect_duration_seconds_bucket{service=\"echo\",service_id=\"00000ac9-facb-11e6-bd58-64006a7986d3\",partition=\"a\",le=\"+Inf\"} 3"),
        "{text}"
    );

    // Refusals by reason: disabled, then nothing listening.
    d.set_enabled("echo", false);
    refused(
        connect(&ta, VmId::PARENT, svc),
        ErrorKind::PermissionDenied,
        "disabled",
    );
    d.set_enabled("echo", true);
    drop(l);
    refused(
        connect(&ta, VmId::PARENT, svc),
        ErrorKind::ConnectionRefused,
        "nothing in partition host listens",
    );
    let text = metrics(&d);
    for reason in ["disabled", "nothing_listens"] {
        let line = format!(
            "hvsock_connections_refused_total{{service=\"echo\",service_id=\"{PORT_2761}\",partition=\"a\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&text, &line), Some(1.0), "{line} in:\n{text}");
    }

    // A rename shows at once, in /metrics and in `hvsock stats`.
    hv(&d, &["service", "rename", "echo", "echo-v2"]).ok();
    let text = metrics(&d);
    assert!(!text.contains("service=\"echo\""), "{text}");
    assert_eq!(
        metric(&text, &established.replace("\"echo\"", "\"echo-v2\"")),
        Some(3.0),
        "{text}"
    );
    let table = hv(&d, &["stats"]);
    let row: Vec<&str> = table
        .ok()
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["a", "echo-v2", "3", "2"], "{table:?}");
    assert_eq!(row[4], "disabled=1,nothing_listens=1");
    assert!(row[5].parse::<f64>().unwrap() > 0.0, "{table:?}");
}

/// Writes `text` to `name` in a new temp dir and returns both.
fn config_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = support::tempdir("hvsock-mgmt-test-");
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const CONFIG: &str = r#"
log_format = "json"

[limits]
handshake_timeout = "300ms"

[default_policy]
wildcard_bind = false

[[partition]]
name = "web"
id = "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11"

[[partition]]
name = "worker"
parent = "web"

[[service]]
name = "echo"
port = 2761

[[service]]
name = "agent"
id = "3049197c-facb-11e6-bd58-64006a7986d4"
enabled = false
policy = { connect = ["worker"], bind = ["host"] }
"#;

#[test]
fn a_config_file_is_applied_at_start_and_a_clash_stops_hvsockd() {
    let (_cfg, path) = config_file("hvsockd.toml", CONFIG);
    let path_arg = path.to_str().unwrap();
    let mut d = Daemon::start_with(&["--config", path_arg]);
    let services = hv(&d, &["service", "list", "--json"]).json();
    // Without the integration services of the first start.
    let services: Vec<Value> = services
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["name"].as_str().unwrap().starts_with("hvsock-"))
        .cloned()
        .collect();
    let services = Value::Array(services);
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent", "echo"]);
    let agent = hv(&d, &["service", "show", "agent", "--json"]).json();
    assert_eq!(agent["enabled"], false);
    assert_eq!(agent["policy"]["connect"][0]["name"], "worker");
    assert_eq!(agent["policy"]["bind"][0]["name"], "host");
    // The default policy applies to echo, which has none of its own.
    let echo = hv(&d, &["service", "show", "echo", "--json"]).json();
    assert_eq!(echo["policy"], Value::Null);
    assert_eq!(echo["effective_policy"]["wildcard_bind"], false);
    assert_eq!(
        api(&d, "GET", "/v1/host", None, 200)["default_policy"]["wildcard_bind"],
        false
    );
    refused(
        bind(&d.host(), VmId::ZERO, ServiceId::from_vsock_port(2761)),
        ErrorKind::PermissionDenied,
        "does not allow wildcard binds",
    );
    // Given a policy of its own, echo starts from the default: one rule changes.
    let p = hv(
        &d,
        &["service", "policy", "echo", "--connect", "web", "--json"],
    )
    .json();
    assert_eq!(p["policy"]["connect"][0]["name"], "web");
    assert_eq!(p["policy"]["wildcard_bind"], false, "{p}");
    hv(&d, &["service", "policy", "echo", "--default"]).ok();
    let worker = hv(&d, &["vm", "show", "worker", "--json"]).json();
    assert_eq!(worker["parent_name"], "web");
    assert!(
        d.dirs()
            .partition_socket(VmId::parse(worker["id"].as_str().unwrap()).unwrap())
            .exists()
    );
    // The log is JSON, as the file says.
    assert!(d.log().lines().any(|l| l.starts_with('{')), "{}", d.log());

    // The handshake limit is in force: an idle client is dropped after ~300 ms, not 10 s.
    let started = Instant::now();
    let fd = hvsock_proto::unix::connect_endpoint(&d.dirs().host_socket(), false).unwrap();
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(8)),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::empty())
        .unwrap()
        .0;
    assert_eq!(n, 0, "hvsockd closed the idle session");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
    wait_for("the idle client to be counted", QUICK, || {
        metric(
            &metrics(&d),
            "hvsock_client_errors_total{partition=\"host\",reason=\"idle\"}",
        ) == Some(1.0)
    });

    // Started again with the same file: nothing changes (random ids are matched by name).
    let before = hv(&d, &["registry", "export"]).ok().to_owned();
    d.restart();
    assert_eq!(hv(&d, &["registry", "export"]).ok(), before);

    // A file that clashes with the registry stops hvsockd, naming the entry, changing nothing.
    assert!(d.stop());
    let (_bad, bad) = config_file(
        "bad.toml",
        "[[service]]\nname = \"ok\"\nport = 9\n[[service]]\nname = \"echo\"\nport = 2762\n",
    );
    let dir = d.dir().to_str().unwrap().to_owned();
    let out = hvsockd(&["--dir", &dir, "--config", bad.to_str().unwrap()]);
    out.fails_with("[[service]] #2 \"echo\": the name is registered with the id 00000ac9-");
    // --check says the same, without starting.
    let out = hvsockd(&["--check", "--dir", &dir, "--config", bad.to_str().unwrap()]);
    out.fails_with("[[service]] #2 \"echo\"");
    d.restart();
    assert_eq!(hv(&d, &["registry", "export"]).ok(), before);
}

#[test]
fn check_validates_a_config_without_touching_anything() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/hvsockd.example.toml");
    let empty = support::tempdir("hvsock-mgmt-test-");
    let dir = empty.path().join("hv");
    let dir = dir.to_str().unwrap();
    let out = hvsockd(&[
        "--check",
        "--config",
        example.to_str().unwrap(),
        "--dir",
        dir,
    ]);
    let text = out.ok();
    assert!(text.ends_with("ok\n"), "{out:?}");
    for needle in [
        "does not exist yet",
        "first start:\n  integration service hvsock-session registered (port 50000, disabled, root only on the host)\n",
        "  integration service hvsock-kvp registered (port 50005, enabled)\n",
        "  partition \"web\" created",
        "  partition \"web-worker\" created",
        "  service \"agent\" created",
        "limits: handshake_timeout 10s, max_sessions_per_partition 1024",
        "default policy: connect any; bind any; wildcard_bind yes",
    ] {
        assert!(text.contains(needle), "{needle:?} in {out:?}");
    }
    assert!(!Path::new(dir).exists(), "--check created {dir}");

    // Without a file: the defaults.
    let out = hvsockd(&["--check", "--dir", dir]);
    assert!(
        out.ok().contains("registry changes at start: none"),
        "{out:?}"
    );

    // Unknown keys and bad values: exit 1 with the line.
    let (_t, bad) = config_file(
        "bad.toml",
        "[limits]\nhandshake_timeout = \"1s\"\nmax_sesions = 4\n",
    );
    let out = hvsockd(&["--check", "--config", bad.to_str().unwrap(), "--dir", dir]);
    let err = out.fails_with("line 3");
    assert!(err.contains("max_sesions"), "{err}");
    let out = hvsockd(&["--check", "--config", "/nonexistent/hvsockd.toml"]);
    out.fails_with("reading the config file /nonexistent/hvsockd.toml");

    // Against a running hvsockd's registry: read only, and it plans against what is there.
    let d = Daemon::start();
    hv(&d, &["service", "add", "echo", "--port", "2761"]).ok();
    let (_t, cfg) = config_file(
        "ok.toml",
        "[[service]]\nname = \"echo\"\nport = 2761\n[[service]]\nname = \"new\"\n",
    );
    let out = hvsockd(&[
        "--check",
        "--config",
        cfg.to_str().unwrap(),
        "--dir",
        d.dir().to_str().unwrap(),
    ]);
    let text = out.ok();
    assert!(text.contains("(read only)"), "{out:?}");
    assert!(text.contains("  service \"new\" created\n"), "{out:?}");
    assert!(!text.contains("\"echo\""), "echo is there already: {out:?}");
    // Nothing written: echo and the six integration services of the first start.
    assert_eq!(
        hv(&d, &["service", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1 + hvsock_agent::services::ALL.len()
    );
}

#[test]
fn export_then_import_into_a_fresh_hvsockd_gives_the_same_registry() {
    let d1 = Daemon::start_bare();
    let a = d1.add_partition("a", None);
    d1.add_partition("a-child", Some("a"));
    d1.add_partition("b", None);
    hv(&d1, &["service", "add", "echo", "--port", "2761"]).ok();
    hv(&d1, &["service", "add", "off", "--port", "9", "--disabled"]).ok();
    hv(
        &d1,
        &[
            "service",
            "policy",
            "echo",
            "--connect",
            "a,host",
            "--wildcard-bind",
            "no",
        ],
    )
    .ok();
    let tmp = support::tempdir("hvsock-mgmt-test-");
    let file = tmp.path().join("registry.json");
    let file_arg = file.to_str().unwrap();
    let out = hv(&d1, &["registry", "export", "--output", file_arg]);
    assert_eq!(out.ok(), "");
    assert!(out.stderr.contains("2 services, 3 partitions"), "{out:?}");
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(hv(&d1, &["registry", "export"]).ok(), exported, "stable");

    // Into a fresh hvsockd: the same registry, root id included.
    let d2 = Daemon::start_bare();
    let dry = hv(&d2, &["registry", "import", file_arg, "--dry-run"]);
    assert!(dry.ok().contains("merge mode, would change:"), "{dry:?}");
    assert_eq!(hv(&d2, &["service", "list", "--json"]).json(), json!([]));
    let out = hv(&d2, &["registry", "import", file_arg]);
    let text = out.ok();
    assert!(text.contains("  service \"echo\" created\n"), "{out:?}");
    assert!(text.contains("(taken from the document)"), "{out:?}");
    assert_eq!(hv(&d2, &["registry", "export"]).ok(), exported);
    assert_eq!(d2.root_id(), d1.root_id());
    let again = hv(&d2, &["registry", "import", file_arg]);
    assert!(again.ok().starts_with("nothing to change"), "{again:?}");
    // It works: endpoints for the imported partitions, host.sock under the new root id,
    // and the imported policy is in force.
    let svc = ServiceId::from_vsock_port(2761);
    let l = bind(&d2.host(), VmId::CHILDREN, svc).unwrap();
    roundtrip(&d2.partition(a), VmId::PARENT, svc, &l);
    let b = VmId::parse(
        hv(&d2, &["vm", "show", "b", "--json"]).json()["id"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    refused(
        connect(&d2.partition(b), VmId::PARENT, svc),
        ErrorKind::PermissionDenied,
        "does not allow partition b to connect (policy connect: [a, host])",
    );

    // Into a used hvsockd: clashes are listed, one per line, and nothing changes; --replace
    // makes it equal to the file.
    let d3 = Daemon::start_bare();
    hv(&d3, &["service", "add", "echo", "--port", "2762"]).ok();
    hv(&d3, &["service", "add", "local", "--port", "9"]).ok();
    let before = hv(&d3, &["registry", "export"]).ok().to_owned();
    let out = hv(&d3, &["registry", "import", file_arg]);
    let err = out.fails_with("the import clashes with the registry (2 conflicts");
    assert!(
        err.contains("\n  - service 00000009-facb-11e6-bd58-64006a7986d3 is here named \"local\""),
        "{err}"
    );
    assert!(
        err.contains("\n  - service name \"echo\" is used here by 00000aca-"),
        "{err}"
    );
    assert_eq!(hv(&d3, &["registry", "export"]).ok(), before);
    let (status, body) = d3.api("POST", "/v1/registry", Some(&exported));
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(body["error"]["details"].as_array().unwrap().len(), 2);
    let out = hv(
        &d3,
        &["registry", "import", "--replace", "--json", file_arg],
    );
    let report = out.json();
    // echo on 2762 removed, echo on 2761 created, "local" (port 9) renamed to "off".
    assert_eq!(report["services"]["removed"], 1, "{report}");
    assert_eq!(report["services"]["created"], 1, "{report}");
    assert_eq!(report["services"]["updated"], 1, "{report}");
    assert_eq!(report["root_adopted"], true);
    assert_eq!(hv(&d3, &["registry", "export"]).ok(), exported);
    // From stdin too, and bad input says what it is.
    let mut cmd = d3.cli();
    cmd.args(["registry", "import", "-"]);
    assert!(
        run(cmd, exported.as_bytes())
            .ok()
            .starts_with("nothing to change")
    );
    let mut cmd = d3.cli();
    cmd.args(["registry", "import", "-"]);
    run(cmd, b"{not json").fails_with("reading stdin: not a registry document");
    let e = api(
        &d3,
        "POST",
        "/v1/registry",
        Some(json!({"version": 2, "root": PORT_2761, "services": [], "partitions": []})),
        400,
    );
    assert_eq!(e["error"]["code"], "invalid_registry");
}

#[test]
fn the_api_serves_its_openapi_document_and_answers_errors_as_json() {
    let d = Daemon::start();
    let served = api(&d, "GET", "/v1/openapi.json", None, 200);
    let file: Value = serde_json::from_str(include_str!("../crates/hvsockd/openapi.json")).unwrap();
    assert_eq!(served, file);
    // Every error is JSON with a code and a message, even those axum makes.
    for (method, path, body, status, code) in [
        ("GET", "/v2/nothing", None, 404, "no_route"),
        ("PUT", "/v1/services", None, 405, "method_not_allowed"),
        ("GET", "/v1/services/%FF%FE", None, 400, "invalid_request"),
        (
            "POST",
            "/v1/registry?mode=sideways",
            Some("{}"),
            400,
            "invalid_request",
        ),
        ("POST", "/v1/services", Some("{"), 400, "invalid_json"),
    ] {
        let (got, body) = d.api(method, path, body);
        assert_eq!(got, status, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[test]
fn admin_tcp_is_loopback_only_and_serves_the_same_api() {
    let out = hvsockd(&["--admin-tcp", "0.0.0.0:8077", "--dir", "/nonexistent"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("not a loopback address"), "{out:?}");
    let d = Daemon::start_with(&["--admin-tcp", "127.0.0.1:0"]);
    let mut port = None;
    wait_for("the admin TCP address in the log", QUICK, || {
        port = d
            .log()
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u16>().ok());
        port.is_some()
    });
    // The credential: a token only hvsockd's user (root) can read.
    let token_path = d.dir().join("admin-tcp.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let token = std::fs::read_to_string(&token_path).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    let get = |auth: &str| {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port.unwrap())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "GET /v1/host HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = get(&format!("Authorization: Bearer {token}\r\n"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(&d.root_id().to_string()), "{reply}");
    for wrong in [
        String::new(),
        "Authorization: Bearer nope\r\n".to_owned(),
        format!("Authorization: Basic {token}\r\n"),
    ] {
        let reply = get(&wrong);
        assert!(reply.starts_with("HTTP/1.1 401"), "{wrong:?}: {reply}");
        assert!(reply.contains("admin-tcp.token"), "{reply}");
    }
    // A non-root user cannot read it.
    support::require_root("reading the token as nobody");
    let out = run(
        {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("cat");
            cmd.arg(&token_path).uid(65534).gid(65534);
            cmd
        },
        b"",
    );
    assert!(!out.status.success(), "nobody read the token: {out:?}");
}

/// `curl`, which scripts/packaging-deps.sh installs (scripts/test runs it first).
fn curl(d: &Daemon, args: &[&str]) -> Out {
    let mut cmd = Command::new(support::require("curl"));
    cmd.args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(d.dirs().admin_socket())
        .args(args);
    run(cmd, b"")
}

#[test]
fn the_guides_curl_recipes_work() {
    let d = Daemon::start_bare();
    let json = ["-H", "Content-Type: application/json"];
    let add = |body: &str| {
        let mut args = json.to_vec();
        args.extend(["-d", body, "http://hvsockd/v1/services"]);
        curl(&d, &args)
    };
    let s: Value = serde_json::from_str(add(r#"{"name":"echo","port":2761}"#).ok()).unwrap();
    assert_eq!(s["id"], PORT_2761);
    d.add_partition("web", None);
    let mut args = vec!["-X", "PATCH"];
    args.extend(json);
    args.extend([
        "-d",
        r#"{"name":"echo-v2","policy":{"connect":["web"],"wildcard_bind":false}}"#,
        "http://hvsockd/v1/services/echo",
    ]);
    let s: Value = serde_json::from_str(curl(&d, &args).ok()).unwrap();
    assert_eq!(s["name"], "echo-v2");
    assert_eq!(s["policy"]["connect"][0]["name"], "web");
    let metrics = curl(&d, &["http://hvsockd/metrics"]);
    assert!(
        metrics
            .ok()
            .contains("hvsock_services{state=\"enabled\"} 1")
    );
    // DELETE of an absent service: 404 with a JSON body (and curl --fail exits 22).
    let out = curl(
        &d,
        &[
            "-X",
            "DELETE",
            "-w",
            "%{http_code}",
            "http://hvsockd/v1/services/nope",
        ],
    );
    assert!(out.ok().ends_with("404"), "{out:?}");
    assert!(out.stdout.contains("\"code\":\"not_found\""), "{out:?}");
    // Export with curl, import with curl --data-binary @file into a fresh hvsockd.
    let tmp = support::tempdir("hvsock-mgmt-test-");
    let file = tmp.path().join("registry.json");
    std::fs::write(&file, curl(&d, &["http://hvsockd/v1/registry"]).ok()).unwrap();
    let fresh = Daemon::start_bare();
    let data = format!("@{}", file.display());
    let mut args = json.to_vec();
    args.extend([
        "--data-binary",
        &data,
        "http://hvsockd/v1/registry?mode=merge&dry_run=false",
    ]);
    let report: Value = serde_json::from_str(curl(&fresh, &args).ok()).unwrap();
    assert_eq!(report["root_adopted"], true, "{report}");
    assert_eq!(
        curl(&fresh, &["http://hvsockd/v1/registry"]).ok(),
        curl(&d, &["http://hvsockd/v1/registry"]).ok()
    );
}

#[test]
fn attachments_show_guest_ports_and_follow_the_policy() {
    let d = Daemon::start();
    d.without_own_services();
    let vms = support::tempdir("hvsock-mgmt-test-");
    let path = vms.path().join("fc.vsock");
    let vm = d.add_vm("fc", &path);
    let svc = d.add_service("echo", 2761);
    let port_file = vms.path().join("fc.vsock_2761");
    assert_eq!(
        api(&d, "GET", "/v1/attachments", None, 200),
        json!([{"partition": vm.to_string(), "name": "fc", "parent": d.root_id().to_string(),
                "hybrid_vsock": path, "guest_ports": []}])
    );
    // A host listener the VM may reach opens PATH_2761 for its guest.
    let _l = bind(&d.host(), VmId::CHILDREN, svc).unwrap();
    wait_for("PATH_2761", QUICK, || port_file.exists());
    let a = api(&d, "GET", "/v1/attachments", None, 200);
    assert_eq!(a[0]["guest_ports"][0]["port"], 2761, "{a}");
    assert_eq!(a[0]["guest_ports"][0]["service_name"], "echo", "{a}");
    assert_eq!(a[0]["guest_ports"][0]["path"], json!(port_file), "{a}");
    // A policy that does not let the VM connect closes it; lifting it opens it again.
    hv(&d, &["service", "policy", "echo", "--connect", "host"]).ok();
    wait_for("PATH_2761 to close", QUICK, || !port_file.exists());
    assert_eq!(
        api(&d, "GET", "/v1/attachments", None, 200)[0]["guest_ports"],
        json!([])
    );
    hv(&d, &["service", "policy", "echo", "--connect-any"]).ok();
    wait_for("PATH_2761 again", QUICK, || port_file.exists());
    // VMs go through export and import like any partition.
    let doc = hv(&d, &["registry", "export"]).json();
    let fc = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fc")
        .unwrap();
    assert_eq!(
        (fc["kind"].as_str(), &fc["hybrid_vsock"]),
        (Some("vm"), &json!(path))
    );
}
