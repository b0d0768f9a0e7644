//! hvsockd against bad clients and hard stops: garbage, oversized frames, silent clients,
//! clients that send file descriptors or break the protocol are logged, counted and dropped
//! while everyone else is served; connections outlive a SIGKILL of hvsockd and the registry
//! outlives a restart.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, Transport, VmId};
use hvsock_proto::unix::{RecvError, connect_endpoint, recv_frame, send_frame, stream_pair};
use hvsock_proto::{ErrorCode, Frame, WireAddr};
use support::Daemon;

/// Waits up to 5 s for the next frame (or the end) on a raw client socket.
fn next(sock: &OwnedFd) -> Result<Frame, RecvError> {
    let fd = sock.as_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&ts)).unwrap(),
        1,
        "no answer within 5 s"
    );
    recv_frame(sock, true).map(|r| r.frame)
}

/// Asserts that hvsockd told the client why and then closed the session.
fn assert_dropped(sock: &OwnedFd, why: &str) {
    match next(sock) {
        Ok(Frame::Error {
            code: ErrorCode::Protocol,
            message,
            ..
        }) => {
            assert!(message.contains(why), "expected {why:?} in {message:?}");
        }
        other => panic!("expected a Protocol error about {why:?}, got {other:?}"),
    }
    assert!(next(sock).expect_err("closed").is_disconnect());
}

/// A connection that works: used to prove other clients are not affected.
struct Canary {
    client: HvStream,
    server: HvStream,
}

impl Canary {
    fn new(d: &Daemon, svc: ServiceId) -> (Canary, HvListener) {
        let l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::LOOPBACK, svc), 8).unwrap();
        let client = HvStream::connect_with(
            &d.host(),
            SockAddrHv::new(VmId::LOOPBACK, svc),
            Duration::from_secs(2),
        )
        .unwrap();
        let (server, _) = l.accept().unwrap();
        (Canary { client, server }, l)
    }

    fn check(&mut self) {
        self.client.write_all(b"alive?").unwrap();
        let mut buf = [0u8; 6];
        self.server.read_exact(&mut buf).unwrap();
        self.server.write_all(b"alive!").unwrap();
        self.client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"alive!");
    }
}

fn client_errors(d: &Daemon) -> serde_json::Value {
    let (status, stats) = d.api("GET", "/v1/stats", None);
    assert_eq!(status, 200);
    stats["client_errors"]["host"].clone()
}

#[test]
fn garbage_oversized_and_fd_carrying_frames_drop_only_that_client() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(100);
    let (mut canary, listener) = Canary::new(&d, svc);
    let endpoint = d.dirs().host_socket();

    let garbage = connect_endpoint(&endpoint, false).unwrap();
    rustix::net::send(
        &garbage,
        b"GET / HTTP/1.1\r\n\r\n",
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_dropped(&garbage, "magic");

    let oversized = connect_endpoint(&endpoint, false).unwrap();
    rustix::net::send(&oversized, &[b'h'; 8192], rustix::net::SendFlags::NOSIGNAL).unwrap();
    assert_dropped(&oversized, "longer than");

    let wrong_version = connect_endpoint(&endpoint, false).unwrap();
    rustix::net::send(
        &wrong_version,
        b"hv\x09\x01\0\0\0\0",
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_dropped(&wrong_version, "version 9");

    // A client that passes a descriptor: the frame is refused and the descriptor closed.
    let with_fd = connect_endpoint(&endpoint, false).unwrap();
    let (mine, theirs) = stream_pair().unwrap();
    let connect = Frame::Connect {
        req: 1,
        target: SockAddrHv::new(VmId::LOOPBACK, svc).into(),
        timeout_ms: 1000,
    };
    send_frame(&with_fd, &connect, Some(theirs.as_fd()), false).unwrap();
    drop(theirs);
    assert_dropped(&with_fd, "file descriptor");
    let mut mine = std::os::unix::net::UnixStream::from(mine);
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        mine.read(&mut [0u8; 1]).unwrap(),
        0,
        "hvsockd kept the passed descriptor open"
    );

    // A frame only hvsockd may send.
    let spoof = connect_endpoint(&endpoint, false).unwrap();
    send_frame(
        &spoof,
        &Frame::Bound {
            req: 1,
            local: WireAddr::default(),
        },
        None,
        false,
    )
    .unwrap();
    assert_dropped(&spoof, "not valid");

    canary.check();
    // New clients are still served.
    let _c = HvStream::connect_with(
        &d.host(),
        SockAddrHv::new(VmId::LOOPBACK, svc),
        Duration::from_secs(2),
    )
    .unwrap();
    listener.accept().unwrap();
    let errors = client_errors(&d);
    assert_eq!(errors["garbage"], 2, "{errors}");
    assert_eq!(errors["oversized"], 1, "{errors}");
    assert_eq!(errors["fds"], 1, "{errors}");
    assert_eq!(errors["protocol"], 1, "{errors}");
    assert!(d.log().contains("dropping client"), "nothing logged");
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let d = Daemon::start_with(&["--handshake-timeout", "0.3"]);
    let svc = ServiceId::from_vsock_port(101);
    let (mut canary, _l) = Canary::new(&d, svc);
    let silent = connect_endpoint(&d.dirs().host_socket(), false).unwrap();
    let started = Instant::now();
    assert!(next(&silent).expect_err("dropped").is_disconnect());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client_errors(&d)["idle"], 1);
    // A connector that has spoken may stay idle: the library's persistent control connection.
    std::thread::sleep(Duration::from_millis(500));
    canary.check();
    let _c = HvStream::connect_with(
        &d.host(),
        SockAddrHv::new(VmId::LOOPBACK, svc),
        Duration::from_secs(2),
    )
    .unwrap();
}

#[test]
fn protocol_violations_end_the_session_and_unbind_its_listener() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(102);
    let endpoint = d.dirs().host_socket();
    // A listener session that sends Connect: dropped, and its binding is gone.
    let raw = connect_endpoint(&endpoint, false).unwrap();
    let addr: WireAddr = SockAddrHv::new(VmId::LOOPBACK, svc).into();
    send_frame(
        &raw,
        &Frame::Bind {
            req: 1,
            addr,
            backlog: 4,
        },
        None,
        false,
    )
    .unwrap();
    assert!(matches!(next(&raw), Ok(Frame::Bound { .. })));
    send_frame(
        &raw,
        &Frame::Connect {
            req: 2,
            target: addr,
            timeout_ms: 100,
        },
        None,
        false,
    )
    .unwrap();
    assert_dropped(&raw, "not valid in a listener session");
    let _again = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::LOOPBACK, svc), 4)
        .expect("the dropped listener's address is free again");
    // A connector that sends Ack.
    let raw = connect_endpoint(&endpoint, false).unwrap();
    send_frame(
        &raw,
        &Frame::Connect {
            req: 1,
            target: addr,
            timeout_ms: 1000,
        },
        None,
        false,
    )
    .unwrap();
    assert!(matches!(next(&raw), Ok(Frame::Connected { .. })));
    send_frame(&raw, &Frame::Ack { count: 1 }, None, false).unwrap();
    assert_dropped(&raw, "not valid in a connector session");
    // Out-of-range values are refused without dropping the session.
    let raw = connect_endpoint(&endpoint, false).unwrap();
    send_frame(
        &raw,
        &Frame::Connect {
            req: 7,
            target: addr,
            timeout_ms: 0,
        },
        None,
        false,
    )
    .unwrap();
    assert!(matches!(
        next(&raw),
        Ok(Frame::Error {
            req: 7,
            code: ErrorCode::InvalidInput,
            ..
        })
    ));
    send_frame(
        &raw,
        &Frame::Connect {
            req: 8,
            target: addr,
            timeout_ms: 1000,
        },
        None,
        false,
    )
    .unwrap();
    assert!(matches!(next(&raw), Ok(Frame::Connected { req: 8, .. })));
    let raw = connect_endpoint(&endpoint, false).unwrap();
    send_frame(
        &raw,
        &Frame::Bind {
            req: 3,
            addr,
            backlog: 0,
        },
        None,
        false,
    )
    .unwrap();
    assert!(matches!(
        next(&raw),
        Ok(Frame::Error {
            req: 3,
            code: ErrorCode::InvalidInput,
            ..
        })
    ));
}

#[test]
fn a_socket_that_is_not_an_endpoint_gives_a_clear_error() {
    let d = Daemon::start();
    let admin = Transport::provider(d.dirs().admin_socket());
    let err = HvStream::connect_with(
        &admin,
        SockAddrHv::new(VmId::LOOPBACK, ServiceId::from_vsock_port(1)),
        Duration::from_secs(1),
    )
    .expect_err("admin.sock is not an endpoint");
    assert!(err.to_string().contains("not an hvsockd endpoint"), "{err}");
    let missing = Transport::provider(d.dir().join("nope.sock"));
    let err = HvStream::connect_with(
        &missing,
        SockAddrHv::new(VmId::LOOPBACK, ServiceId::from_vsock_port(1)),
        Duration::from_secs(1),
    )
    .expect_err("no such socket");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("is hvsockd running?"), "{err}");
}

#[test]
fn connections_outlive_a_sigkill_and_the_registry_outlives_a_restart() {
    let mut d = Daemon::start();
    let svc = d.add_service("durable", 200);
    d.add_service("disabled-one", 201);
    d.set_enabled("disabled-one", false);
    let vm = d.add_partition("sandbox", None);
    let child = d.add_partition("nested", Some("sandbox"));
    let root = d.root_id();
    let (_, before) = d.api("GET", "/v1/services", None);

    let listener =
        HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 4).unwrap();
    let mut guest = HvStream::connect_with(
        &d.partition(vm),
        SockAddrHv::new(VmId::PARENT, svc),
        Duration::from_secs(2),
    )
    .unwrap();
    let (mut host, _) = listener.accept().unwrap();

    d.kill9();

    // The established connection carries data both ways, and half-closes, without hvsockd.
    let big = vec![0x5au8; 4 << 20];
    let writer = {
        let mut g = guest.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || {
            g.write_all(&big).unwrap();
            g.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == big);
    host.write_all(b"after the crash").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    got.clear();
    guest.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"after the crash");
    // The listener's session died with hvsockd: it tries to bind again for its patience,
    // then says why it could not (hvsockd is not back: its endpoint refuses).
    listener.set_rebind_patience(Duration::from_millis(200));
    let err = listener.accept().expect_err("session gone");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("binding"), "{err}");

    d.restart();
    let (_, after) = d.api("GET", "/v1/services", None);
    let strip = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].clone(), s["name"].clone(), s["enabled"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after));
    assert_eq!(
        d.root_id(),
        root,
        "the root partition's id changed across a restart"
    );
    let (_, parts) = d.api("GET", "/v1/partitions/nested", None);
    assert_eq!(parts["parent_name"], "sandbox");
    assert_eq!(parts["id"], child.to_string());
    // The endpoints are back, and this process's control connection recovers by itself.
    let listener =
        HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 4).unwrap();
    let mut again = HvStream::connect_with(
        &d.partition(vm),
        SockAddrHv::new(VmId::PARENT, svc),
        Duration::from_secs(2),
    )
    .unwrap();
    let (mut host, _) = listener.accept().unwrap();
    again.write_all(b"x").unwrap();
    host.read_exact(&mut [0u8; 1]).unwrap();
}

#[test]
fn sigterm_stops_cleanly_and_a_second_hvsockd_is_refused() {
    let mut d = Daemon::start();
    let second = support::run(
        std::process::Command::new(&support::bins().hvsockd)
            .arg("--dir")
            .arg(d.dir()),
        b"",
        support::QUICK,
    );
    assert!(!second.status.success());
    let stderr = &second.stderr;
    assert!(stderr.contains("already serves"), "{stderr}");
    assert!(stderr.contains(&d.pid().to_string()), "{stderr}");
    // The refused second daemon did not disturb the first.
    let svc = ServiceId::from_vsock_port(300);
    let (mut canary, _l) = Canary::new(&d, svc);
    canary.check();
    assert!(d.stop(), "hvsockd did not exit 0 on SIGTERM");
    assert!(!d.dirs().host_socket().exists());
    assert!(!d.dirs().admin_socket().exists());
    canary.check();
}

#[test]
fn hvsockd_raises_its_open_file_limit_so_one_partition_cannot_starve_the_others() {
    let dir = support::tempdir("hvsock-rlimit-test-");
    let mut hvsockd = support::Guard::spawn(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -Sn 256 && exec \"$0\" --dir \"$1\"")
            .arg(&support::bins().hvsockd)
            .arg(dir.path())
            .stderr(std::process::Stdio::null()),
    );
    let admin = dir.path().join("admin.sock");
    support::wait_for("hvsockd to start", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&admin).is_ok()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", hvsockd.id())).unwrap();
    hvsockd.kill();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "soft limit not raised: {line}");
    assert_ne!(soft, "256", "{line}");
}

/// A partition that opens 10,000 sessions past its limit: every one is refused and counted in
/// `/metrics`, but hvsockd's log gets a bounded few lines (the first warnings, then at most a
/// summary), not one line per refusal.
#[test]
fn ten_thousand_refused_sessions_write_a_bounded_few_log_lines() {
    const ATTEMPTS: u64 = 10_000;
    let config = support::tempdir("hvsock-flood-test-");
    let path = config.path().join("hvsockd.toml");
    std::fs::write(
        &path,
        "[limits]\nmax_sessions_per_partition = 4\nhandshake_timeout = \"5min\"\n",
    )
    .unwrap();
    let d = Daemon::start_with(&["--config", path.to_str().unwrap()]);
    let hostile = d.add_partition("hostile", None);
    let endpoint = d.dirs().partition_socket(hostile);
    // Fill the partition's sessions, then knock 10,000 times.
    let held: Vec<OwnedFd> = (0..4)
        .map(|_| connect_endpoint(&endpoint, false).unwrap())
        .collect();
    let refused = || {
        let (_, stats) = d.api("GET", "/v1/stats", None);
        stats["client_errors"]["hostile"]["too_many_sessions"]
            .as_u64()
            .unwrap_or(0)
    };
    support::wait_for("the held sessions", Duration::from_secs(10), || {
        d.api("GET", "/v1/partitions/hostile", None).1["sessions"].as_u64() == Some(4)
    });
    for _ in 0..ATTEMPTS {
        drop(connect_endpoint(&endpoint, false).unwrap());
    }
    support::wait_for("10,000 refusals counted", Duration::from_secs(60), || {
        refused() == ATTEMPTS
    });
    let (_, metrics) = support::http(&d.dirs().admin_socket(), "GET", "/metrics", None);
    assert!(
        metrics.lines().any(|l| l.contains("hostile")
            && l.contains("too_many_sessions")
            && l.ends_with(" 10000")),
        "/metrics does not count 10000 refusals:\n{metrics}"
    );
    let log = d.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("hostile"))
        .collect();
    let refusals = warnings
        .iter()
        .filter(|l| l.contains("refusing a client"))
        .count();
    assert_eq!(refusals, 5, "the first five refusals are logged:\n{log}");
    assert!(
        warnings.len() <= 6,
        "{} warning lines for {ATTEMPTS} refusals:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    drop(held);
}
