//! The agent's side of the host-served services (heartbeat, time sync, key-value exchange) end
//! to end: an agent in a sandbox connects to listeners that this test binds in the root for the
//! three services, playing the host's part with the crate's own host-side logic (the
//! heartbeat's `Tracker`, time's `answer`, key-value `Mirror`), through a real hvsockd. hvsockd
//! serves heartbeat and time itself, bound to CHILDREN in the root; this test's listeners are
//! bound to the sandbox's own id, more specific, so they take its connections.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use agent_support::{QUICK, Sandbox, run, text};
use hvsock::{HvListener, HvStream, SockAddrHv, VmId};
use hvsock_agent::services::{HEARTBEAT, KVP, Service, TIME};
use hvsock_agent::wire::{self, Decoder};
use hvsock_agent::{heartbeat, kvp, time};

fn listen(d: &support::Daemon, vm: VmId, service: Service) -> HvListener {
    d.add_service(service.name, service.port);
    HvListener::bind_with(&d.host(), SockAddrHv::new(vm, service.id()), 4).unwrap()
}

fn accept(l: &HvListener, service: Service) -> (HvStream, Decoder) {
    let (stream, _) = l.accept().unwrap();
    stream.set_read_timeout(Some(QUICK)).unwrap();
    let mut dec = Decoder::default();
    let mut conn = &stream;
    wire::server_hello(&mut conn, &mut dec, service.key, (1, 1)).unwrap();
    (stream, dec)
}

#[test]
fn heartbeat_time_and_key_values_reach_the_host_and_follow_it_through_reconnects() {
    let kvp_dir = tempfile::Builder::new()
        .prefix("hvsock-kvp-")
        .tempdir()
        .unwrap();
    let dir = kvp_dir.path().display().to_string();
    // The listeners are bound before the agent starts, so its first connects succeed.
    let prepared = Sandbox::prepare();
    let hb = listen(&prepared.d, prepared.vm, HEARTBEAT);
    let tm = listen(&prepared.d, prepared.vm, TIME);
    let kv = listen(&prepared.d, prepared.vm, KVP);
    let s = prepared.with_agent(&["--kvp-dir", &dir]);

    // Heartbeat: Facts, then beats.
    let (stream, mut dec) = accept(&hb, HEARTBEAT);
    let mut tracker = heartbeat::Tracker::default();
    tracker.on_connect();
    let mut conn = &stream;
    for _ in 0..2 {
        let f = dec.expect_frame(&mut conn, "a heartbeat").unwrap();
        tracker.on_frame(&f, Instant::now()).unwrap();
    }
    assert_eq!(tracker.state(Instant::now()), heartbeat::GuestState::Ok);
    let facts = tracker.facts().unwrap();
    assert_eq!(facts.agent, env!("CARGO_PKG_VERSION"));
    assert!(
        !facts.kernel.is_empty() && !facts.hostname.is_empty(),
        "{facts:?}"
    );
    // The connection ends: the agent comes back.
    drop(stream);
    let (stream, mut dec) = accept(&hb, HEARTBEAT);
    let mut conn = &stream;
    assert_eq!(
        dec.expect_frame(&mut conn, "facts again").unwrap().kind,
        heartbeat::FACTS
    );

    // Time: the host's clock 10 s ahead; a sandbox agent measures and reports, never sets.
    let (stream, mut dec) = accept(&tm, TIME);
    let mut conn = &stream;
    let req = dec.expect_frame(&mut conn, "a time request").unwrap();
    let skew = 10_000_000_000i64;
    let t2 = time::now_ns() + skew;
    wire::write_frame(&mut conn, &time::answer(&req, t2, t2 + 1000).unwrap()).unwrap();
    let report: time::Report = dec
        .expect_frame(&mut conn, "a report")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (report.offset_ns - skew).abs() < 1_000_000_000,
        "{report:?}"
    );
    assert!(
        !report.stepped,
        "a sandbox agent never sets the host's clock"
    );

    // Key-value: the host's pool to files, the guest's pool (facts and files) to the host.
    let (stream, mut dec) = accept(&kv, KVP);
    let mut conn = &stream;
    let mut guest = kvp::Mirror::default();
    guest.on_connect();
    while !guest.synced {
        let f = dec.expect_frame(&mut conn, "the guest's pool").unwrap();
        guest.apply(kvp::parse(&f).unwrap()).unwrap();
    }
    assert_eq!(guest.pairs.get("hostname"), Some(&facts.hostname));
    let host_pool: BTreeMap<String, String> = [("role", "web"), ("zone", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for msg in kvp::snapshot(&host_pool) {
        wire::write_frame(&mut conn, &kvp::frame(&msg)).unwrap();
    }
    support::wait_for("the host's pool in files", QUICK, || {
        std::fs::read_to_string(kvp_dir.path().join("host/role"))
            .ok()
            .as_deref()
            == Some("web")
    });
    let agent = |args: &[&str]| {
        run(
            std::process::Command::new(support::agent_bin()).args(args),
            b"",
            QUICK,
        )
    };
    let out = agent(&["kvp", "--dir", &dir, "get", "--pool", "host", "zone"]);
    assert_eq!(text(&out.stdout), "a\n", "{}", text(&out.stderr));
    let out = agent(&["kvp", "--dir", &dir, "set", "app.version", "1.2.3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + QUICK;
    while guest.pairs.get("app.version").map(String::as_str) != Some("1.2.3") {
        assert!(
            Instant::now() < deadline,
            "the guest's new pair never came: {:?}",
            guest.pairs
        );
        let f = dec.expect_frame(&mut conn, "a guest change").unwrap();
        guest.apply(kvp::parse(&f).unwrap()).unwrap();
    }
    wire::write_frame(&mut conn, &kvp::frame(&kvp::Msg::Delete("zone".into()))).unwrap();
    support::wait_for("a deleted key's file to go", QUICK, || {
        !kvp_dir.path().join("host/zone").exists()
    });
    let out = agent(&["kvp", "--dir", &dir, "list", "--pool", "host"]);
    assert_eq!(text(&out.stdout), "role=web\n");
    let out = agent(&["kvp", "--dir", &dir, "set", "bad/key", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    drop(s);
}
