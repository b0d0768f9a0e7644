//! The `hvsock` CLI against a real hvsockd: management commands with and without `--json`,
//! address resolution, nc-style `listen` / `connect` across partitions (half-close, bulk data,
//! refusals), `listen --keep`, `stats`, and the exit codes and messages of failures.
//!
//! Every child process is bounded by a deadline and killed (by its pid) when its guard
//! (`support::Proc`, `support::Guard`) is dropped.
//!
//! A table of tests, one per behaviour of the CLI, each standing alone on its own hvsockd:
//! longer than most files here, and read one test at a time.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Daemon, Out, PORT_2761, Proc, QUICK, bins, hv, pattern};

/// A refusal must come well before the 2 s connect timeout.
const IMMEDIATE: Duration = Duration::from_millis(1500);

/// Runs a command to its end with `input` on stdin.
fn run_with(mut cmd: Command, input: &[u8]) -> Out {
    support::run(&mut cmd, input, QUICK)
}

/// `hvsock --dir DIR listen -v ARGS…`, returned once it is listening.
fn listener(d: &Daemon, args: &[&str]) -> Proc {
    let mut cmd = d.cli();
    cmd.arg("listen").arg("-v").args(args);
    let p = Proc::spawn(&mut cmd);
    p.wait_stderr("listening on");
    p
}

/// `hvsock --dir DIR connect ARGS…`, running.
fn connector(d: &Daemon, args: &[&str]) -> Proc {
    let mut cmd = d.cli();
    cmd.arg("connect").args(args);
    Proc::spawn(&mut cmd)
}

fn is_guid_line(s: &str) -> bool {
    let line = s.strip_suffix('\n').unwrap_or("");
    hvsock::Guid::parse(line).is_ok() && line.len() == 36 && !line.contains('\n')
}

#[test]
fn service_add_prints_only_the_guid_and_refuses_clashes() {
    let d = Daemon::start_bare();
    let out = hv(&d, &["service", "add", "echo", "--port", "2761"]);
    assert_eq!(out.ok(), format!("{PORT_2761}\n"));
    assert_eq!(out.stderr, "");
    // The same name and id again: success, same GUID.
    assert_eq!(
        hv(&d, &["service", "add", "echo", "--id", PORT_2761]).ok(),
        format!("{PORT_2761}\n")
    );
    assert_eq!(
        hv(&d, &["service", "add", "echo", "--port", "2761"]).ok(),
        format!("{PORT_2761}\n")
    );
    // A random GUID.
    let random = hv(&d, &["service", "add", "agent"]);
    assert!(is_guid_line(random.ok()), "{random:?}");
    // Clashes: the name with another id, the id with another name.
    hv(&d, &["service", "add", "echo", "--port", "2762"])
        .hvsock_fails_with("the service name \"echo\" is already used by 00000ac9-");
    hv(&d, &["service", "add", "other", "--port", "2761"]).hvsock_fails_with("echo");
    // Disabled from the start.
    let off = hv(
        &d,
        &["service", "add", "off", "--port", "4001", "--disabled"],
    );
    assert_eq!(off.ok(), "00000fa1-facb-11e6-bd58-64006a7986d3\n");
    assert!(
        hv(&d, &["service", "show", "off"])
            .ok()
            .contains("enabled:    no\n")
    );
    // Usage errors never reach hvsockd.
    for args in [
        &["service", "add", "x", "--id", PORT_2761, "--port", "1"][..],
        &["service", "add", "x", "--id", "not-a-guid"],
        &["service", "add", "2761"],
        &["service", "add", "a:b"],
        &["service", "add"],
    ] {
        let out = hv(&d, args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("error:"), "{out:?}");
    }
    let list = hv(&d, &["service", "list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

#[test]
fn service_list_show_enable_disable_remove() {
    let d = Daemon::start_bare();
    hv(&d, &["service", "add", "echo", "--port", "2761"]).ok();
    hv(
        &d,
        &[
            "service",
            "add",
            "zz-agent",
            "--id",
            "3049197c-facb-11e6-bd58-64006a7986d4",
        ],
    )
    .ok();

    let table = hv(&d, &["service", "list"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(lines[0].starts_with("NAME "), "{table:?}");
    for col in ["ID", "ENABLED", "PORT", "LISTENERS"] {
        assert!(lines[0].contains(col), "{table:?}");
    }
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells, ["echo", PORT_2761, "yes", "2761", "0"]);
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        cells[..4],
        [
            "zz-agent",
            "3049197c-facb-11e6-bd58-64006a7986d4",
            "yes",
            "-"
        ]
    );
    // Aligned: every column starts at the same offset on every line.
    let at = |line: &str, cell: &str| line.find(cell).unwrap();
    assert_eq!(at(lines[0], "ID"), at(lines[1], PORT_2761));
    assert_eq!(at(lines[0], "ENABLED"), at(lines[2], "yes"));

    let list = hv(&d, &["service", "list", "--json"]).json();
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["id"], PORT_2761);
    assert_eq!(list[0]["enabled"], true);
    assert_eq!(list[0]["vsock_port"], 2761);

    let show = hv(&d, &["service", "show", "echo"]);
    assert!(show.ok().starts_with(&format!(
        "name:       echo\nid:         {PORT_2761}\nenabled:    yes\nvsock_port: 2761\nlisteners:  0\ncreated:    "
    )), "{show:?}");
    // By GUID and by port, as JSON.
    for key in [PORT_2761, "2761"] {
        let json = hv(&d, &["service", "show", key, "--json"]).json();
        assert_eq!(json["name"], "echo", "{key}");
    }

    assert_eq!(
        hv(&d, &["service", "disable", "echo"]).ok(),
        format!("service echo ({PORT_2761}) is disabled\n")
    );
    assert_eq!(
        hv(&d, &["service", "show", "echo", "--json"]).json()["enabled"],
        false
    );
    assert_eq!(
        hv(&d, &["service", "enable", "2761"]).ok(),
        format!("service echo ({PORT_2761}) is enabled\n")
    );
    assert_eq!(
        hv(&d, &["service", "show", "echo", "--json"]).json()["enabled"],
        true
    );

    assert_eq!(
        hv(&d, &["service", "remove", "echo"]).ok(),
        format!("service echo ({PORT_2761}) removed\n")
    );
    hv(&d, &["service", "show", "echo"]).hvsock_fails_with("no service \"echo\"");
    hv(&d, &["service", "remove", "echo"]).hvsock_fails_with("removing service \"echo\"");
    hv(&d, &["service", "enable", "nope"]).hvsock_fails_with("enabling service \"nope\"");
    let list = hv(&d, &["service", "list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Names with characters that mean something in a URL still work.
    hv(&d, &["service", "add", "my svc/1?x#%", "--port", "7"]).ok();
    assert_eq!(
        hv(&d, &["service", "show", "my svc/1?x#%", "--json"]).json()["vsock_port"],
        7
    );
}

#[test]
fn vm_add_list_show_remove_with_parents() {
    let d = Daemon::start();
    let root = d.root_id().to_string();
    let a = hv(&d, &["vm", "add", "a"]);
    assert!(is_guid_line(a.ok()), "{a:?}");
    let a = a.stdout.trim().to_owned();
    let fixed = "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11";
    assert_eq!(
        hv(&d, &["vm", "add", "a1", "--id", fixed, "--parent", "a"]).ok(),
        format!("{fixed}\n")
    );
    // Again: success, same id.
    assert_eq!(
        hv(&d, &["vm", "add", "a1", "--id", fixed, "--parent", "a"]).ok(),
        format!("{fixed}\n")
    );
    let b = hv(&d, &["vm", "add", "b", "--parent", "host"]);
    let b = b.ok().trim().to_owned();
    // Its endpoint exists at once.
    assert!(
        d.dirs()
            .partition_socket(hvsock::VmId::parse(&b).unwrap())
            .exists()
    );
    hv(&d, &["vm", "add", "c", "--parent", "nope"]).hvsock_fails_with("no partition \"nope\"");
    hv(&d, &["vm", "add", "a", "--id", fixed]).hvsock_fails_with("adding partition \"a\"");
    assert_eq!(hv(&d, &["vm", "add", "parent"]).code(), Some(2));
    assert_eq!(
        hv(
            &d,
            &[
                "vm",
                "add",
                "x",
                "--id",
                "a42e7cda-d03f-480c-9cc2-a4de20abb878"
            ]
        )
        .code(),
        Some(2)
    );

    let table = hv(&d, &["vm", "list"]);
    let rows: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "ID",
            "KIND",
            "PARENT",
            "SESSIONS",
            "LISTENERS",
            "GUEST"
        ]
    );
    assert_eq!(rows[1][..4], ["host", root.as_str(), "root", "-"]);
    // No agent runs: the sandboxes' guests were never heard from; the root has none.
    assert_eq!(rows[1][6], "-");
    assert_eq!(rows[2][6], "no_contact");
    assert_eq!(rows[2][..4], ["a", a.as_str(), "sandbox", "host"]);
    assert_eq!(rows[3][..4], ["a1", fixed, "sandbox", "a"]);
    assert_eq!(rows[4][..4], ["b", b.as_str(), "sandbox", "host"]);
    assert_eq!(rows.len(), 5);

    let list = hv(&d, &["vm", "list", "--json"]).json();
    assert_eq!(list[0]["kind"], "root");
    assert_eq!(list[2]["parent"], a.as_str());

    let show = hv(&d, &["vm", "show", "a1"]);
    let text = show.ok();
    assert!(text.starts_with(&format!("name:         a1\nid:           {fixed}\nkind:         sandbox\nparent:       a ({a})\nchildren:     -\nendpoint:     ")), "{text}");
    assert!(text.contains("sessions:     0\n"), "{text}");
    // The endpoint lives in the partition's own directory, which is what to bind-mount; the
    // old path is a link to it.
    let fixed_id = hvsock::VmId::parse(fixed).unwrap();
    let dir = d.dirs().partition_dir(fixed_id);
    assert!(
        text.contains(&format!(
            "endpoint:     {}\nmount:        {}\n",
            dir.join("endpoint.sock").display(),
            dir.display()
        )),
        "{text}"
    );
    let legacy = d.dirs().legacy_partition_socket(fixed_id);
    assert_eq!(
        std::fs::read_link(&legacy).unwrap(),
        std::path::Path::new(fixed).join("endpoint.sock")
    );
    hvsock::HvListener::bind_with(
        &hvsock::Transport::provider(&legacy),
        hvsock::SockAddrHv::new(
            hvsock::VmId::LOOPBACK,
            hvsock::ServiceId::from_vsock_port(9),
        ),
        1,
    )
    .expect("the old path still reaches the partition");
    let show_a = hv(&d, &["vm", "show", &a]);
    assert!(show_a.ok().contains("children:     a1\n"), "{show_a:?}");
    let host = hv(&d, &["vm", "show", "host", "--json"]).json();
    assert_eq!(host["id"], root.as_str());
    assert_eq!(host["children"], serde_json::json!(["a", "b"]));

    hv(&d, &["vm", "remove", "a"]).hvsock_fails_with("a1");
    hv(&d, &["vm", "remove", "host"]).hvsock_fails_with("cannot be removed");
    assert_eq!(
        hv(&d, &["vm", "remove", fixed]).ok(),
        format!("partition a1 ({fixed}) removed\n")
    );
    assert!(!dir.exists() && std::fs::symlink_metadata(&legacy).is_err());
    assert_eq!(
        hv(&d, &["vm", "remove", "a"]).ok(),
        format!("partition a ({a}) removed\n")
    );
    hv(&d, &["vm", "show", "a"]).hvsock_fails_with("no partition \"a\"");
    assert_eq!(
        hv(&d, &["vm", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn addr_resolves_keywords_names_ports_and_guids() {
    let d = Daemon::start();
    let root = d.root_id().to_string();
    d.add_service("echo", 2761);
    let a = d.add_partition("a", None).to_string();
    assert_eq!(
        hv(&d, &["addr", "parent:echo"]).ok(),
        format!(
            "vm       a42e7cda-d03f-480c-9cc2-a4de20abb878 (parent)\nservice  {PORT_2761} (echo)\nport     2761\n"
        )
    );
    // A port that hvsockd knows is named; one it does not is not.
    assert_eq!(
        hv(&d, &["addr", "ZERO:2761"]).ok(),
        format!(
            "vm       00000000-0000-0000-0000-000000000000 (zero)\nservice  {PORT_2761} (echo)\nport     2761\n"
        )
    );
    assert_eq!(
        hv(&d, &["addr", "wildcard:9"]).ok(),
        "vm       00000000-0000-0000-0000-000000000000 (wildcard)\nservice  00000009-facb-11e6-bd58-64006a7986d3\nport     9\n"
    );
    // Partition names, `host`, and GUIDs named back.
    assert_eq!(
        hv(&d, &["addr", "a:echo"]).ok(),
        format!("vm       {a} (a)\nservice  {PORT_2761} (echo)\nport     2761\n")
    );
    assert!(
        hv(&d, &["addr", "host:1"])
            .ok()
            .starts_with(&format!("vm       {root} (host)\n"))
    );
    let guids = format!("{a}:3049197c-1111-11e6-bd58-64006a7986d3");
    assert_eq!(
        hv(&d, &["addr", &guids]).ok(),
        format!("vm       {a} (a)\nservice  3049197c-1111-11e6-bd58-64006a7986d3\n")
    );
    let json = hv(&d, &["addr", "children:echo", "--json"]).json();
    assert_eq!(json["vm_id"], "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd");
    assert_eq!(json["vm_keyword"], "children");
    assert_eq!(json["service_id"], PORT_2761);
    assert_eq!(json["service_name"], "echo");
    assert_eq!(json["vsock_port"], 2761);
    assert_eq!(
        json["address"],
        format!("90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd:{PORT_2761}")
    );
    let json = hv(&d, &["addr", &guids, "--json"]).json();
    assert_eq!(json["vsock_port"], Value::Null);
    assert_eq!(json["vm_name"], "a");

    // Names that resolve to nothing, and malformed addresses.
    hv(&d, &["addr", "nope:echo"]).hvsock_fails_with("no partition named \"nope\"");
    hv(&d, &["addr", "parent:nope"]).hvsock_fails_with("no service named \"nope\"");
    for bad in ["parent", "parent:", ":2761", "parent:4294967296"] {
        let out = hv(&d, &["addr", bad]);
        assert_eq!(out.code(), Some(2), "{bad}: {out:?}");
        assert!(out.stderr.contains("<ADDR>"), "{bad}: {out:?}");
    }
    let out = hv(&d, &["addr", "parent"]);
    assert!(out.stderr.contains("expected VM:SERVICE"), "{out:?}");
}

/// A command aimed at a partition's endpoint through the environment only, with no admin API
/// in reach (as inside a sandbox).
fn sandboxed(d: &Daemon, vm: hvsock::VmId, args: &[&str]) -> Command {
    let mut cmd = Command::new(&bins().hvsock);
    cmd.args(args)
        .env("HVSOCK_ENDPOINT", d.dirs().partition_socket(vm))
        .env("HVSOCK_DIR", d.dir().join("no-such-dir"))
        .env_remove("HVSOCK_TRANSPORT");
    cmd
}

#[test]
fn guids_keywords_and_ports_need_no_admin_api() {
    let d = Daemon::start();
    d.add_service("echo", 2761);
    let a = d.add_partition("a", None);
    let out = run_with(sandboxed(&d, a, &["addr", "parent:2761"]), b"");
    assert_eq!(
        out.ok(),
        format!(
            "vm       a42e7cda-d03f-480c-9cc2-a4de20abb878 (parent)\nservice  {PORT_2761}\nport     2761\n"
        )
    );
    let mut l = listener(&d, &["wildcard:echo"]);
    l.close_stdin();
    let out = run_with(
        sandboxed(&d, a, &["connect", "parent:2761"]),
        b"from the sandbox",
    );
    assert_eq!(out.ok(), "");
    assert!(l.wait(QUICK).success());
    assert_eq!(l.stdout(), b"from the sandbox");
    // A name needs the API, and says so.
    let out = run_with(sandboxed(&d, a, &["connect", "parent:echo"]), b"");
    out.hvsock_fails_with(
        "the service name \"echo\" can only be resolved through hvsockd's admin API",
    );
    assert!(out.stderr.contains("hvsockd is not running at"), "{out:?}");
}

#[test]
fn listen_and_connect_across_partitions_half_close_both_ways() {
    let d = Daemon::start();
    d.add_service("echo", 2761);
    d.add_partition("a", None);

    // The connector half-closes first: the listener sees EOF and can still reply.
    let mut l = listener(&d, &["wildcard:echo"]);
    let mut c = connector(&d, &["--as", "a", "parent:echo"]);
    c.write(b"ping");
    c.close_stdin();
    l.wait_stdout("the listener to get ping", |b| b == b"ping");
    thread::sleep(Duration::from_millis(100));
    assert!(c.is_running(), "connect ended before the peer's half-close");
    assert!(l.is_running(), "listen ended before its stdin did");
    l.write(b"pong");
    c.wait_stdout("the connector to get pong", |b| b == b"pong");
    assert!(c.is_running());
    l.close_stdin();
    assert!(c.wait(QUICK).success(), "{}", c.stderr());
    assert!(l.wait(QUICK).success(), "{}", l.stderr());
    assert_eq!(c.stdout(), b"pong");
    assert_eq!(l.stdout(), b"ping");
    assert_eq!(c.stderr(), "");

    // The listener half-closes first, from inside a partition, to a connector in the root.
    let mut l = listener(&d, &["--as", "a", "parent:echo"]);
    assert!(l.stderr().contains("as a"), "{}", l.stderr());
    let mut c = connector(&d, &["a:echo"]);
    l.wait_stderr("connection from");
    l.write(b"hello");
    l.close_stdin();
    c.wait_stdout("the connector to get hello", |b| b == b"hello");
    thread::sleep(Duration::from_millis(100));
    assert!(c.is_running() && l.is_running());
    c.write(b"bye");
    c.close_stdin();
    assert!(l.wait(QUICK).success(), "{}", l.stderr());
    assert!(c.wait(QUICK).success(), "{}", c.stderr());
    assert_eq!(l.stdout(), b"bye");
    assert_eq!(c.stdout(), b"hello");
}

#[test]
fn connect_ends_when_the_peer_closes_even_if_stdin_stays_open() {
    let d = Daemon::start();
    let mut l = listener(&d, &["loopback:7"]);
    let mut c = connector(&d, &["loopback:7"]);
    l.wait_stderr("connection from");
    c.write(b"question");
    l.wait_stdout("the question", |b| b == b"question");
    // The listener answers and goes away entirely (killed): the connector's stdin is still
    // open, yet it has no one left to talk to, so it ends at once.
    l.write(b"answer");
    c.wait_stdout("the answer", |b| b == b"answer");
    drop(l);
    assert!(c.wait(QUICK).success(), "{}", c.stderr());
}

#[test]
fn thirty_two_mib_each_way_intact() {
    let d = Daemon::start();
    d.add_service("bulk", 5000);
    d.add_partition("a", None);
    let up = pattern(32 << 20, 1);
    let down = pattern(32 << 20, 2);
    let mut l = listener(&d, &["wildcard:bulk"]);
    let mut c = connector(&d, &["--as", "a", "parent:bulk"]);
    let started = Instant::now();
    l.feed(down.clone());
    c.feed(up.clone());
    let timeout = Duration::from_secs(120);
    assert!(c.wait(timeout).success(), "{}", c.stderr());
    assert!(l.wait(timeout).success(), "{}", l.stderr());
    eprintln!("64 MiB through listen/connect in {:?}", started.elapsed());
    let (got_up, got_down) = (l.stdout(), c.stdout());
    assert_eq!(got_up.len(), up.len());
    assert_eq!(got_down.len(), down.len());
    assert!(got_up == up, "the bytes to the listener differ");
    assert!(got_down == down, "the bytes to the connector differ");
}

#[test]
fn refusals_exit_nonzero_at_once_with_the_reason() {
    let d = Daemon::start();
    d.add_service("echo", 2761);
    hv(
        &d,
        &["service", "add", "off", "--port", "4001", "--disabled"],
    )
    .ok();
    d.add_partition("a", None);
    d.add_partition("b", None);
    let _unregistered = listener(&d, &["wildcard:4000"]);
    let _disabled = listener(&d, &["wildcard:off"]);
    let _in_b = listener(&d, &["--as", "b", "wildcard:echo"]);
    let cases: [(&[&str], &str); 6] = [
        (&["--as", "a", "parent:4000"], "is not registered"),
        (&["--as", "a", "parent:off"], "is disabled"),
        (&["--as", "a", "b:echo"], "is reachable from a"),
        (&["--as", "a", "parent:echo"], "listens"),
        (&["parent:echo"], "the root partition has none"),
        (&["--as", "a", "nope:echo"], "no partition named \"nope\""),
    ];
    for (args, reason) in cases {
        let mut cmd = d.cli();
        cmd.arg("connect").args(args);
        let out = run_with(cmd, b"never sent");
        out.hvsock_fails_with(reason);
        assert!(out.elapsed < IMMEDIATE, "{args:?} took {:?}", out.elapsed);
    }
    // What the connect was doing is named.
    let out = hv(&d, &["connect", "--as", "a", "parent:off"]);
    assert!(
        out.stderr.starts_with(
            "hvsock: connecting to parent:off (a42e7cda-d03f-480c-9cc2-a4de20abb878:00000fa1-"
        ),
        "{out:?}"
    );
    // Loopback needs neither registration nor enabling.
    let mut l = listener(&d, &["--as", "a", "loopback:off"]);
    l.close_stdin();
    let mut cmd = d.cli();
    cmd.args(["connect", "--as", "a", "loopback:off"]);
    assert_eq!(run_with(cmd, b"x").ok(), "");
    assert!(l.wait(QUICK).success());
    // Failed binds too.
    hv(&d, &["listen", "broadcast:1"]).hvsock_fails_with("listening on broadcast:1");
    let _first = listener(&d, &["loopback:9"]);
    hv(&d, &["listen", "loopback:9"]).hvsock_fails_with("listening on loopback:9");
    hv(&d, &["connect", "--as", "parent", "loopback:1"])
        .hvsock_fails_with("--as takes a partition");
}

#[test]
fn listen_accepts_exactly_one_connection() {
    let d = Daemon::start();
    let mut l = listener(&d, &["loopback:3"]);
    let mut first = connector(&d, &["loopback:3"]);
    l.wait_stderr("connection from");
    // It stopped listening: a second connect is refused while the first is still open.
    hv(&d, &["connect", "loopback:3"]).hvsock_fails_with("listens");
    first.write(b"one");
    first.close_stdin();
    l.close_stdin();
    assert!(first.wait(QUICK).success());
    assert!(l.wait(QUICK).success());
    assert_eq!(l.stdout(), b"one");
}

#[test]
fn listen_keep_serves_concurrent_connectors() {
    let d = Daemon::start();
    d.add_service("sink", 6000);
    d.add_partition("a", None);
    d.add_partition("b", None);
    let mut l = listener(&d, &["--keep", "wildcard:sink"]);
    // Connectors that stay open while the others come and go: served at once, not in turn.
    let mut open: Vec<Proc> = (0..3)
        .map(|i| {
            let mut c = connector(&d, &["--as", "a", "parent:sink"]);
            c.write(format!("held open {i}\n").as_bytes());
            c
        })
        .collect();
    l.wait_stdout("the held-open connectors", |b| {
        String::from_utf8_lossy(b).matches("held open").count() == 3
    });
    let mut short: Vec<Proc> = (0..8)
        .map(|i| {
            let from = if i % 2 == 0 { "a" } else { "b" };
            let mut c = connector(&d, &["--as", from, "parent:sink"]);
            c.feed(format!("message {i} from {from}: {}\n", "x".repeat(100)).into_bytes());
            c
        })
        .collect();
    for c in &mut short {
        // Each ends once its stdin has: the listener closes it at its half-close.
        assert!(c.wait(QUICK).success(), "{}", c.stderr());
        assert_eq!(c.stdout(), b"", "--keep sends nothing");
    }
    for c in &mut open {
        assert!(c.is_running(), "a held-open connector ended");
        c.close_stdin();
        assert!(c.wait(QUICK).success(), "{}", c.stderr());
    }
    l.wait_stdout("every message", |b| {
        String::from_utf8_lossy(b).lines().count() == 11
    });
    let text = l.stdout_text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..8)
        .map(|i| {
            let from = if i % 2 == 0 { "a" } else { "b" };
            format!("message {i} from {from}: {}", "x".repeat(100))
        })
        .chain((0..3).map(|i| format!("held open {i}")))
        .collect();
    expected.sort();
    assert_eq!(lines, expected);
    // It keeps listening until stopped.
    assert!(l.is_running());
    let out = run_with(
        {
            let mut cmd = d.cli();
            cmd.args(["connect", "--as", "b", "parent:sink"]);
            cmd
        },
        b"late\n",
    );
    out.ok();
    l.wait_stdout("the late message", |b| {
        String::from_utf8_lossy(b).contains("late\n")
    });
    assert_eq!(
        l.stderr().matches("connection from").count(),
        12,
        "{}",
        l.stderr()
    );
}

/// `established` for (partition, service) in `stats --json`, 0 if absent.
fn established(d: &Daemon, partition: &str, service: &str) -> u64 {
    let stats = hv(d, &["stats", "--json"]).json();
    stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["partition"] == partition && c["service"] == service)
        .map(|c| c["established"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn stats_show_connection_counts_moving() {
    let d = Daemon::start();
    d.add_service("echo", 2761);
    d.add_partition("a", None);
    let out = hv(&d, &["stats"]);
    let text = out.ok();
    // The only listeners are hvsockd's own: the heartbeat, time and key-value services it
    // serves.
    let listeners = text
        .strip_prefix("CONNECTIONS\n(none)\n\nLISTENERS\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    let rows: Vec<&str> = listeners
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{text:?}");
    for own in ["hvsock-heartbeat", "hvsock-time", "hvsock-kvp"] {
        assert!(rows.iter().any(|r| r.contains(own)), "{own}: {text:?}");
    }
    assert_eq!(established(&d, "a", "echo"), 0);
    for round in 1..=2 {
        let mut l = listener(&d, &["wildcard:echo"]);
        l.close_stdin();
        let mut cmd = d.cli();
        cmd.args(["connect", "--as", "a", "parent:echo"]);
        run_with(cmd, b"hi").ok();
        assert!(l.wait(QUICK).success());
        assert_eq!(established(&d, "a", "echo"), round);
    }
    let _l = listener(&d, &["wildcard:echo"]);
    hv(&d, &["connect", "--as", "a", "parent:9"]).hvsock_fails_with("not registered");
    let text = hv(&d, &["stats"]);
    let lines: Vec<Vec<&str>> = text
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[1],
        [
            "PARTITION",
            "SERVICE",
            "ESTABLISHED",
            "REFUSED",
            "REASONS",
            "AVG(ms)",
            "P99(ms)"
        ]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.len() == 7 && l[..5] == ["a", "echo", "2", "0", "-"] && l[5] != "-"),
        "{text:?}"
    );
    assert!(
        lines.iter().any(|l| l.len() == 7
            && l[0] == "a"
            && l[3] == "1"
            && l[4].contains("=1")
            && l[5] == "-"),
        "{text:?}"
    );
    assert!(lines.contains(&vec!["host", "echo", "1"]), "{text:?}");
}

#[test]
fn admin_errors_say_how_to_start_hvsockd_or_who_may_use_it() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let mut cmd = Command::new(&bins().hvsock);
    cmd.args(["--dir", dir, "service", "list"])
        .env_remove("HVSOCK_DIR");
    let out = run_with(cmd, b"");
    out.hvsock_fails_with(&format!("hvsockd is not running at {dir}"));
    assert!(
        out.stderr
            .contains(&format!("start it with `hvsockd --dir {dir}`")),
        "{out:?}"
    );
    // HVSOCK_DIR is used like --dir.
    let mut cmd = Command::new(&bins().hvsock);
    cmd.args(["vm", "list"]).env("HVSOCK_DIR", dir);
    run_with(cmd, b"").hvsock_fails_with(&format!("`hvsockd --dir {dir}`"));
    // A stale socket refuses.
    drop(std::os::unix::net::UnixListener::bind(empty.path().join("admin.sock")).unwrap());
    let mut cmd = Command::new(&bins().hvsock);
    cmd.args(["--dir", dir, "stats"]);
    run_with(cmd, b"").hvsock_fails_with("admin.sock refuses connections");

    // EACCES: as another user (setpriv), which needs root.
    support::require_root("the EACCES case of admin.sock");
    let setpriv = support::require("setpriv");
    let d = Daemon::start();
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bins().hvsock)
        .arg("--dir")
        .arg(d.dir())
        .args(["service", "list"]);
    run_with(cmd, b"").hvsock_fails_with("admin.sock is for its owner (root)");
}

#[test]
fn usage_errors_exit_2_and_version_exits_0() {
    let hvsock = || Command::new(&bins().hvsock);
    let out = run_with(hvsock(), b"");
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("Usage"), "{out:?}");
    let mut v = hvsock();
    v.arg("--version");
    assert_eq!(
        run_with(v, b"").ok(),
        format!("hvsock {}\n", env!("CARGO_PKG_VERSION"))
    );
    let mut h = hvsock();
    h.args(["connect", "--help"]);
    assert!(run_with(h, b"").ok().contains("--timeout <MS>"));
    for args in [
        &["bogus"][..],
        &["connect"],
        &["connect", "--timeout", "0", "parent:1"],
        &["connect", "--timeout", "300001", "parent:1"],
        &["listen", "--max-connections", "2", "parent:1"],
        &["service", "show"],
        &["stats", "extra"],
    ] {
        let mut cmd = hvsock();
        cmd.args(args);
        let out = run_with(cmd, b"");
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}");
    }
}
