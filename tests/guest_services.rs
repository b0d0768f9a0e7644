//! The heartbeat and time services hvsockd serves itself, end to end: a real hvsockd, a
//! sandbox with the real `hvsock-agent` in it, and the commands an operator runs
//! (`hvsock vm show|list`, `/metrics`, `hvsock service disable`); a hostile client reaching
//! the heartbeat service through the library ends only its own connection.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use agent_support::{Agent, Sandbox};
use hvsock::{HvStream, SockAddrHv, VmId};
use hvsock_agent::heartbeat::{self, FACTS, Facts};
use hvsock_agent::services::{HEARTBEAT, TIME};
use hvsock_agent::wire::{self, Decoder, Frame};
use serde_json::Value;
use support::{Daemon, hv};

/// The agent's arguments: key-value exchange off (not this test's subject).
const ARGS: &[&str] = &["--disable", "kvp"];

fn guest(d: &Daemon, vm: &str) -> Value {
    hv(d, &["vm", "show", vm, "--json"]).json()["guest"].clone()
}

/// Polls `vm`'s guest until `check` holds (at most `within`); returns it and how long it took.
fn wait_guest(
    d: &Daemon,
    vm: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let g = guest(d, vm);
        if check(&g) {
            return (g, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}; last: {g}; hvsockd's log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |g| g["state"] == state
}

fn metrics(d: &Daemon) -> String {
    let (status, body) = d.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    body.as_str().unwrap().to_owned()
}

fn uname(flag: &str) -> String {
    let out = std::process::Command::new("uname")
        .arg(flag)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_agent_reaches_hvsockds_own_heartbeat_and_time_and_vm_show_follows_it() {
    let mut s = Sandbox::start(ARGS);
    let d = &s.d;
    let (g, took) = wait_guest(d, "sb", "ok", Duration::from_secs(20), state_is("ok"));
    eprintln!("guest ok {took:?} after the agent served");
    assert_eq!(g["agent"], env!("CARGO_PKG_VERSION"), "{g}");
    assert_eq!(g["kernel"], uname("-r"), "{g}");
    assert_eq!(g["hostname"], uname("-n"), "{g}");
    assert!(!g["os"].as_str().unwrap().is_empty(), "{g}");
    assert!(g["heartbeat_age_ms"].as_u64().unwrap() < 5_000, "{g}");
    // The time service: the agent measured at start (a sandbox shares the host's clock, so
    // the offset is tiny) and reported it.
    let (g, _) = wait_guest(d, "sb", "a time report", Duration::from_secs(20), |g| {
        g["time_offset_ns"].is_i64()
    });
    let offset = g["time_offset_ns"].as_i64().unwrap();
    assert!(offset.abs() < 50_000_000, "offset {offset} ns: {g}");
    assert_eq!(g["time_stepped"], false, "a sandbox only reports: {g}");
    let show = hv(d, &["vm", "show", "sb"]);
    let text = show.ok();
    eprintln!("{text}");
    for field in [
        "guest",
        "heartbeat",
        "agent",
        "os",
        "kernel",
        "hostname",
        "time_offset",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(field) && !l.trim_end().ends_with(" -")),
            "{field} in {text}"
        );
    }
    assert!(
        text.contains("behind the host") || text.contains("ahead of the host"),
        "{text}"
    );
    // vm list: a GUEST column, `-` for the root.
    let list = hv(d, &["vm", "list"]);
    let rows: Vec<Vec<&str>> = list
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0].last(), Some(&"GUEST"), "{rows:?}");
    let sb = rows.iter().find(|r| r[0] == "sb").unwrap();
    assert_eq!(sb[sb.len() - 2], "ok", "{rows:?}");
    assert!(sb[sb.len() - 1].ends_with('s'), "{rows:?}");
    let host = rows.iter().find(|r| r[0] == "host").unwrap();
    assert_eq!(host.last(), Some(&"-"), "{rows:?}");
    // /metrics.
    let m = metrics(d);
    assert!(
        m.contains("hvsock_guest_state{partition=\"sb\",state=\"ok\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("hvsock_guest_state{partition=\"sb\",state=\"lost\"} 0\n"),
        "{m}"
    );
    assert!(
        m.contains("hvsock_guest_heartbeat_age_seconds{partition=\"sb\"} "),
        "{m}"
    );
    assert!(
        m.contains("hvsock_guest_time_offset_seconds{partition=\"sb\"} "),
        "{m}"
    );

    // Stopped (SIGSTOP): its connection stays, its beats stop: lost after 7 s without one.
    let pid = rustix::process::Pid::from_raw(s.agent.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let (_, took) = wait_guest(
        d,
        "sb",
        "lost (stopped)",
        Duration::from_secs(15),
        state_is("lost"),
    );
    eprintln!("stopped agent: lost {took:?} after SIGSTOP");
    assert!(took >= Duration::from_secs(4), "lost too early: {took:?}");
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let (_, took) = wait_guest(
        d,
        "sb",
        "ok (continued)",
        Duration::from_secs(15),
        state_is("ok"),
    );
    eprintln!("continued agent: ok {took:?} after SIGCONT");

    // Killed: its connection ends, lost at once.
    let mut child = s.agent.child.take().unwrap();
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    let (_, _) = wait_guest(
        d,
        "sb",
        "lost (killed)",
        Duration::from_secs(3),
        state_is("lost"),
    );
    eprintln!("killed agent: lost {:?} after the kill", killed.elapsed());
    let m = metrics(d);
    assert!(
        m.contains("hvsock_guest_state{partition=\"sb\",state=\"lost\"} 1\n"),
        "{m}"
    );
    // Started again: ok again.
    s.agent = Agent::start(d, s.vm, ARGS, &[], None);
    let (_, took) = wait_guest(
        d,
        "sb",
        "ok (restarted)",
        Duration::from_secs(20),
        state_is("ok"),
    );
    eprintln!("restarted agent: ok {took:?} after it served");

    // Disabled: hvsockd stops serving it, the live connection ends, the agent is refused.
    hv(d, &["service", "disable", HEARTBEAT.name]).ok();
    wait_guest(
        d,
        "sb",
        "lost (disabled)",
        Duration::from_secs(5),
        state_is("lost"),
    );
    s.agent.wait_log("the agent refused", |log| {
        log.contains("cannot reach the host's hvsock-heartbeat") && log.contains("disabled")
    });
    hv(
        d,
        &[
            "connect",
            "--as",
            "sb",
            &format!("parent:{}", HEARTBEAT.port),
        ],
    )
    .hvsock_fails_with("disabled");
    hv(d, &["service", "enable", HEARTBEAT.name]).ok();
    let (_, took) = wait_guest(
        d,
        "sb",
        "ok (enabled)",
        Duration::from_secs(15),
        state_is("ok"),
    );
    eprintln!("enabled again: ok {took:?} after");
}

/// Connects from `vm` to the parent's `port` through the library, with a Hello for `service`.
fn hello(d: &Daemon, vm: VmId, port: u32, service: &str) -> (HvStream, Decoder) {
    let mut s = HvStream::connect_with(
        &d.partition(vm),
        SockAddrHv::new(VmId::PARENT, hvsock::ServiceId::from_vsock_port(port)),
        Duration::from_secs(10),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut dec = Decoder::default();
    wire::client_hello(&mut s, &mut dec, service, (1, 1)).unwrap();
    (s, dec)
}

/// Reads to the end; returns the Error frame's message hvsockd sent before closing.
fn error_then_end(s: &mut HvStream, dec: &mut Decoder) -> String {
    let message = match dec.expect_frame(s, "an Error frame") {
        Err(wire::WireError::Remote(e)) => e.message,
        other => panic!("expected an Error frame, got {other:?}"),
    };
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "the connection ends");
    message
}

#[test]
fn a_hostile_client_ends_only_its_own_connection() {
    let s = Sandbox::start(ARGS);
    let d = &s.d;
    let evil = d.add_partition("evil", None);
    wait_guest(d, "sb", "ok", Duration::from_secs(20), state_is("ok"));

    // Raw garbage instead of a Hello.
    let mut raw = HvStream::connect_with(
        &d.partition(evil),
        SockAddrHv::new(VmId::PARENT, HEARTBEAT.id()),
        Duration::from_secs(10),
    )
    .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&[0xff; 64]).unwrap();
    let mut dec = Decoder::default();
    let message = error_then_end(&mut raw, &mut dec);
    assert!(message.contains("over the limit"), "{message}");

    // A frame header announcing 1 GiB after a good Hello.
    let (mut big, mut dec) = hello(d, evil, HEARTBEAT.port, heartbeat::SERVICE);
    big.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    big.write_all(&[FACTS]).unwrap();
    let message = error_then_end(&mut big, &mut dec);
    assert!(message.contains("over the limit"), "{message}");

    // Facts with an oversized string.
    let (mut facts, mut dec) = hello(d, evil, HEARTBEAT.port, heartbeat::SERVICE);
    let huge = Facts {
        hostname: "h".repeat(heartbeat::MAX_FACT + 1),
        ..Facts::default()
    };
    wire::write_frame(&mut facts, &Frame::json(FACTS, &huge)).unwrap();
    let message = error_then_end(&mut facts, &mut dec);
    assert!(message.contains("over the limit of 256"), "{message}");

    // A Request with a malformed body to the time service.
    let (mut time, mut dec) = hello(d, evil, TIME.port, hvsock_agent::time::SERVICE);
    wire::write_frame(
        &mut time,
        &Frame {
            kind: hvsock_agent::time::REQUEST,
            body: b"{not json".to_vec(),
        },
    )
    .unwrap();
    let message = error_then_end(&mut time, &mut dec);
    assert!(message.contains("malformed"), "{message}");

    // The hostile partition stays no_contact, the agent's guest ok, hvsockd up and logging.
    assert_eq!(guest(d, "evil")["state"], "no_contact");
    assert_eq!(guest(d, "sb")["state"], "ok");
    let log = d.log();
    assert!(
        log.contains("hvsock-heartbeat: ended the connection of partition evil"),
        "{log}"
    );
    // A good client of the hostile partition is served after all that.
    let (mut good, _) = hello(d, evil, HEARTBEAT.port, heartbeat::SERVICE);
    let facts = Facts {
        agent: "test".into(),
        os: "TestOS".into(),
        kernel: "1".into(),
        hostname: "evil".into(),
    };
    wire::write_frame(&mut good, &Frame::json(FACTS, &facts)).unwrap();
    let (g, _) = wait_guest(d, "evil", "ok", Duration::from_secs(5), state_is("ok"));
    assert_eq!(g["hostname"], "evil");
    drop(good);
    wait_guest(d, "evil", "lost", Duration::from_secs(5), state_is("lost"));
}

#[test]
fn after_a_sigusr2_upgrade_hvsockd_serves_again_and_the_agent_is_back() {
    let s = Sandbox::start(ARGS);
    let d = &s.d;
    wait_guest(d, "sb", "ok", Duration::from_secs(20), state_is("ok"));
    let before = d.log().len();
    let pid = d.pid();
    let upgraded = Instant::now();
    d.signal(rustix::process::Signal::USR2);
    support::wait_for("the upgraded hvsockd", Duration::from_secs(30), || {
        d.log()[before..].contains("hvsockd ready")
    });
    assert_eq!(d.pid(), pid);
    // The new hvsockd knows nothing of the guest until its agent reconnects (within its
    // backoff), then it is ok again.
    let (g, _) = wait_guest(
        d,
        "sb",
        "ok after the upgrade",
        Duration::from_secs(20),
        |g| g["state"] == "ok",
    );
    eprintln!(
        "upgrade: guest ok again {:?} after SIGUSR2",
        upgraded.elapsed()
    );
    assert_eq!(g["hostname"], uname("-n"), "{g}");
    // hvsockd's own listeners are bound afresh, once each (not handed over as sessions).
    let (_, listeners) = d.api("GET", "/v1/listeners", None);
    for name in [HEARTBEAT.name, TIME.name] {
        let n = listeners
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["service_name"] == name)
            .count();
        assert_eq!(n, 1, "{name}: {listeners}");
    }
}
