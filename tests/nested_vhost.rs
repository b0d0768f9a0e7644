//! hvsock-vhost's stream semantics in a real guest (QEMU/TCG, the stock Debian kernel, the
//! project's static `hvsock` over `AF_VSOCK` inside; `tests/nested_vhost/guest.sh`), which the
//! hybrid-vsock backends cannot give (docs/vms.md lists their quirks):
//!
//! - a guest connect to an unregistered service is refused at once (the time is printed);
//! - a host receiver that sends nothing and half-closes at once
//!   (`hvsock listen wildcard:5005 </dev/null`) gets the guest's bytes;
//! - 64 MiB guest to host and 64 MiB back, then 64 MiB host to guest and back, each side
//!   half-closing after its last byte, sha256 on both sides;
//! - a host connect to a guest port nobody listens on is `ConnectionRefused` at once (timed);
//! - a guest connection lives through `kill -9` and a restart of hvsockd, and the guest connects
//!   again once hvsockd is back.
//!
//! The check that every case of tests/nested_vm.rs also passes through hvsock-vhost is
//! `real_guests_through_hvsock_vhost` there. No `AF_VSOCK` socket is opened on this machine.

#![allow(clippy::unwrap_used)]

#[path = "nested_vm/harness.rs"]
mod harness;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use harness::{Vm, accept_by, alive, prepare, processes_mentioning, sha256, transfer_report};
use hvsock::{HvListener, ServiceId, SockAddrHv, VmId};
use support::{Daemon, Guard, pattern};

const BIG: usize = 64 * 1024 * 1024;

/// A host connect from the CLI that must be refused: (milliseconds, stderr).
fn host_refused(d: &Daemon, target: &str) -> (u128, String) {
    let t0 = Instant::now();
    let out = support::run(
        d.cli().args(["connect", "--timeout", "10000", target]),
        b"",
        Duration::from_secs(30),
    );
    let ms = t0.elapsed().as_millis();
    assert!(!out.status.success(), "{target} was not refused: {out:?}");
    (ms, out.stderr)
}

#[test]
fn hvsock_vhost_half_close_refusals_and_hvsockd_restart_in_a_real_guest() {
    let started = Instant::now();
    let prepared = prepare();
    let env = prepared.env.clone();
    let work = tempfile::Builder::new()
        .prefix("hvnh")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let initrd = w.join("initrd.gz");
    prepared.initramfs(&initrd, "tests/nested_vhost/guest.sh");

    let mut d = Daemon::start();
    let hv = |d: &Daemon, args: &[&str]| support::hv(d, args).ok().trim().to_owned();
    for (name, port) in [
        ("bulk", 5001),
        ("silent", 5005),
        ("restart", 5006),
        ("again", 5007),
        ("guestsvc", 6001),
        ("nolisten", 7000),
    ] {
        hv(&d, &["service", "add", name, "--port", &port.to_string()]);
    }
    let vm = VmId::parse(&hv(&d, &["vm", "add", "vh1"])).unwrap();
    let listen = |d: &Daemon, port: u32| {
        let addr = SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(port));
        let l = HvListener::bind_with(&d.host(), addr, 8).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let bulk_l = listen(&d, 5001);
    let restart_l = listen(&d, 5006);
    let silent_out = w.join("silent.out");
    let mut silent = Guard::spawn(
        d.cli()
            .args(["listen", "wildcard:5005"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&silent_out).unwrap())
            .stderr(Stdio::null()),
    );

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut g = Vm::boot(
        "vh1",
        &env,
        &initrd,
        w.join("r1"),
        &w.join("unused.vsock"),
        3,
        &[
            harness::vhost_args("vh1", d.dir()),
            ["--memory", "640", "--timeout", "560"]
                .map(String::from)
                .to_vec(),
        ]
        .concat(),
    );

    // 1. Refused at once.
    let refused = g.line("T-REFUSED ", deadline);
    assert!(!refused.starts_with("rc=0 "), "{refused}");
    let cs: u64 = refused
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cs="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    eprintln!(
        "nested_vhost: guest connect to an unregistered service refused after {} ms (guest clock, process start included): {refused}",
        cs * 10
    );
    assert!(
        cs * 10 < 1500,
        "refused after {} ms: not at once\n{}",
        cs * 10,
        g.story()
    );

    // 2. The silent receiver got the guest's line.
    let line = g.line("T-SILENT ", deadline);
    assert!(line.starts_with("rc=0 bytes=0"), "{line}\n{}", g.story());
    assert!(silent.wait(Duration::from_secs(30)).success());
    assert_eq!(
        std::fs::read_to_string(&silent_out).unwrap(),
        "to a silent receiver\n"
    );

    // 3. Guest to host, 64 MiB, the guest's half-close ends the host's read; 64 MiB back.
    let sent = g.line("T-SENT ", deadline);
    let (mut s, peer) = accept_by(&bulk_l, "guest to host", deadline);
    assert_eq!(peer.vm_id, vm, "the connection comes from the device's VM");
    let mut got = Vec::with_capacity(BIG);
    s.read_to_end(&mut got).unwrap();
    assert_eq!(format!("{} {}", sha256(&got), got.len()), sent);
    drop(got);
    let back = pattern(BIG, 0xb16);
    s.write_all(&back).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(s);
    let (rc, hash, len, err) = transfer_report(&g.line("T-G2H ", deadline));
    assert_eq!(
        (rc, hash.as_str(), len),
        (0, sha256(&back).as_str(), BIG),
        "{err}"
    );
    drop(back);

    // 4. Host to guest, 64 MiB each way with a half-close each way, through the CLI.
    g.line("T-H2G-LISTENING", deadline);
    let to_guest = pattern(BIG, 0x7e57);
    let to_guest_hash = sha256(&to_guest);
    let mut connect = Guard::spawn(
        d.cli()
            .args(["connect", "--timeout", "10000", "vh1:guestsvc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = connect.child().stdin.take().unwrap();
    let feeder = thread::spawn(move || stdin.write_all(&to_guest));
    let mut from_guest = Vec::with_capacity(BIG);
    connect
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut from_guest)
        .unwrap();
    feeder.join().unwrap().unwrap();
    let status = connect.wait(Duration::from_secs(120));
    assert!(status.success(), "hvsock connect vh1:guestsvc: {status}");
    assert_eq!(
        format!("{} {}", sha256(&from_guest), from_guest.len()),
        sent
    );
    drop(from_guest);
    let (rc, hash, len, err) = transfer_report(&g.line("T-H2G ", deadline));
    assert_eq!(
        (rc, hash.as_str(), len),
        (0, to_guest_hash.as_str(), BIG),
        "{err}"
    );

    // 5. A host connect to a guest port nobody listens on: refused at once, as refused.
    let (ms, err) = host_refused(&d, "vh1:nolisten");
    eprintln!("nested_vhost: host connect to an idle guest port refused after {ms} ms: {err}");
    assert!(err.contains("refused") || err.contains("listens"), "{err}");
    assert!(ms < 1500, "refused after {ms} ms: not at once");

    // 6. A connection through an hvsockd restart.
    let (s, _) = accept_by(&restart_l, "the restart connection", deadline);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    let old_pid = d.pid();
    d.restart();
    assert_ne!(d.pid(), old_pid);
    drop((bulk_l, restart_l));
    // The device finds the new hvsockd: host connects reach the guest again.
    support::wait_for(
        "the device to find hvsockd again",
        Duration::from_secs(15),
        || {
            let (_, err) = host_refused(&d, "vh1:nolisten");
            !err.contains("no device connected")
        },
    );
    let again_l = listen(&d, 5007);
    (&s).write_all(b"after\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "ack\n", "the connection did not survive the restart");
    line.clear();
    assert_eq!(
        r.read_line(&mut line).unwrap(),
        0,
        "no EOF after ack: {line}"
    );
    drop((r, s));
    let restart = g.line("T-RESTART ", deadline);
    assert_eq!(restart, "rc=0 after", "{}", g.story());

    // 7. A new connect after the restart.
    let (s, peer) = accept_by(&again_l, "the connect after the restart", deadline);
    assert_eq!(peer.vm_id, vm);
    let mut r = BufReader::new(s.try_clone().unwrap());
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "again\n");
    (&s).write_all(b"back\n").unwrap();
    drop((r, s));
    let again = g.line("T-AGAIN ", deadline);
    assert!(again.ends_with(" back"), "{again}\n{}", g.story());

    g.line("T-DONE", deadline);
    let status = g.wait(deadline);
    assert_eq!(
        status,
        0,
        "the guest did not power off cleanly\n{}",
        g.story()
    );
    for &pid in &g.seen_pids {
        assert!(!alive(pid), "pid {pid} is still running");
    }
    let left = processes_mentioning(w);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    drop(d);
    eprintln!("nested_vhost: done in {:.1?}", started.elapsed());
}
