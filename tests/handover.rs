//! Upgrades in place: `SIGUSR2` makes hvsockd execute its binary again with every socket it
//! holds. A library listener (std and tokio) stays bound on the same descriptor and never
//! sees an error, a connector that was waiting for a full backlog gets its answer, an
//! established connection streams on without losing a byte, a sandbox's endpoint and its
//! sessions carry on, `hvsock listen --keep` keeps serving; and an upgrade to a binary that is
//! not there, not executable or broken leaves the old hvsockd serving.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread;
use std::time::Duration;

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, VmId};
use rustix::process::Signal;
use support::{Daemon, Proc, answered_in_order, bins, hv, pattern, tempdir, wait_for};

const T: Duration = Duration::from_secs(10);

/// Sends SIGUSR2 and waits until the new program serves (its "ready" line).
fn upgrade(d: &Daemon) {
    let before = d.log().len();
    let pid = d.pid();
    d.signal(Signal::USR2);
    wait_for("the upgraded hvsockd", T, || {
        d.log()[before..].contains("hvsockd ready")
    });
    assert_eq!(d.pid(), pid);
    let log = d.log()[before..].to_owned();
    assert!(log.contains("resuming the sockets"), "{log}");
    assert!(
        !log.contains("upgrade failed") && !log.contains("upgrade refused"),
        "{log}"
    );
}

#[test]
fn sigusr2_keeps_listeners_waiting_connectors_connections_and_sandboxes() {
    let mut d = Daemon::start();
    let svc = d.add_service("echo", 5000);
    let host = d.host();
    let sandbox = d.add_partition("sandbox", None);
    let in_sandbox = d.partition(sandbox);

    // A std listener with a backlog of one, and a connection established on it.
    let listener = HvListener::bind_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), 1).unwrap();
    let listener_fd = listener.as_raw_fd();
    let mut sender =
        HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T).unwrap();
    let (mut receiver, _) = listener.accept().unwrap();
    // The backlog full (delivered, not accepted), so the next connector waits.
    let first = HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T).unwrap();
    let waiting = {
        let host = host.clone();
        thread::spawn(move || {
            HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T)
        })
    };
    thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the connector should wait for the backlog"
    );

    // A sandbox's listener, bound through its endpoint.
    let sandbox_listener =
        HvListener::bind_with(&in_sandbox, SockAddrHv::new(VmId::WILDCARD, svc), 4).unwrap();

    // Bytes stream across the upgrade.
    let data = pattern(8 << 20, 7);
    let streaming = {
        let data = data.clone();
        thread::spawn(move || {
            for chunk in data.chunks(64 << 10) {
                sender.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            sender.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    thread::sleep(Duration::from_millis(50));

    upgrade(&d);

    // The waiting connector got its answer, after the connection before it.
    answered_in_order(&listener, first, waiting);
    let mut buf = [0u8; 6];

    // No byte lost.
    let mut got = Vec::new();
    receiver.read_to_end(&mut got).unwrap();
    streaming.join().unwrap();
    assert!(got == data, "the stream lost or changed bytes");

    // The same listener (same descriptor) takes new connections; so does the sandbox's.
    assert_eq!(listener.as_raw_fd(), listener_fd);
    let mut c = HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T).unwrap();
    let (mut a, _) = listener.accept().unwrap();
    c.write_all(b"after").unwrap();
    a.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"after");
    let _c = HvStream::connect_with(&host, SockAddrHv::new(sandbox, svc), T).unwrap();
    sandbox_listener.accept().unwrap();
    // A new session through the sandbox's endpoint (the same file) reaches the host.
    let in_host = HvListener::bind_with(&host, SockAddrHv::new(VmId::CHILDREN, svc), 4).unwrap();
    let _s = HvStream::connect_with(&in_sandbox, SockAddrHv::new(VmId::PARENT, svc), T).unwrap();
    in_host.accept().unwrap();

    // And a second upgrade works as the first.
    upgrade(&d);
    let _c = HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T).unwrap();
    listener.accept().unwrap();
    assert!(d.is_running());
}

#[test]
fn sigusr2_keeps_a_tokio_listener_accepting() {
    let d = Daemon::start();
    let svc = d.add_service("echo", 5001);
    let host = d.host();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = SockAddrHv::new(VmId::LOOPBACK, svc);
    let listener = rt
        .block_on(hvsock::tokio::HvListener::bind_with(&host, addr, 4))
        .unwrap();
    let accepting = rt.spawn(async move {
        let mut got = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.expect("accept never fails");
            let mut buf = [0u8; 3];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)
                .await
                .unwrap();
            got.push(buf);
        }
        got
    });
    let send = |what: &'static [u8; 3]| {
        rt.block_on(async {
            let mut c = hvsock::tokio::HvStream::connect_with(&host, addr, T)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, what)
                .await
                .unwrap();
            c
        })
    };
    let _one = send(b"one");
    upgrade(&d);
    let _two = send(b"two");
    let got = rt
        .block_on(async { tokio::time::timeout(T, accepting).await })
        .unwrap()
        .unwrap();
    assert_eq!(got, [*b"one", *b"two"]);
}

#[test]
fn listen_keep_serves_on_across_sigusr2() {
    let d = Daemon::start();
    hv(&d, &["service", "add", "echo", "--port", "5002"]).ok();
    let mut listen = Proc::spawn(d.cli().args(["listen", "--keep", "loopback:5002"]));
    let send = |what: &str| {
        wait_for("a connect", T, || {
            support::run(
                d.cli().args(["connect", "loopback:5002"]),
                what.as_bytes(),
                support::QUICK,
            )
            .status
            .success()
        });
    };
    send("one\n");
    upgrade(&d);
    send("two\n");
    wait_for("both lines", T, || listen.stdout_text().contains("two"));
    assert_eq!(listen.stdout_text(), "one\ntwo\n");
    assert!(listen.is_running(), "{}", listen.stderr());
}

fn copy_binary(to: &Path) {
    let _ = std::fs::remove_file(to);
    std::fs::copy(&bins().hvsockd, to).unwrap();
}

#[test]
fn a_failed_upgrade_leaves_the_old_hvsockd_serving() {
    let bin_dir = tempdir("hvsock-bin-");
    let binary = bin_dir.path().join("hvsockd");
    copy_binary(&binary);
    let d = Daemon::start_binary(&binary, &[]);
    let svc: ServiceId = d.add_service("echo", 5003);
    let host = d.host();
    let addr = SockAddrHv::new(VmId::LOOPBACK, svc);
    let listener = HvListener::bind_with(&host, addr, 4).unwrap();
    let still_serving = |what: &str| {
        let _c =
            HvStream::connect_with(&host, addr, T).unwrap_or_else(|e| panic!("after {what}: {e}"));
        listener.accept().unwrap();
    };
    let refused = |what: &str, expect: &str| {
        let before = d.log().matches("upgrade refused").count();
        d.signal(Signal::USR2);
        wait_for(what, T, || {
            d.log().matches("upgrade refused").count() > before
        });
        let log = d.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("upgrade refused"))
            .unwrap();
        assert!(line.contains(expect), "{what}: {line}");
        still_serving(what);
    };

    // Not there.
    std::fs::remove_file(&binary).unwrap();
    refused("a missing binary", "cannot run");
    // Not executable.
    std::fs::write(&binary, b"not a program").unwrap();
    refused("a file that is not executable", "cannot run");
    // Executable, but not an hvsockd that hands over.
    std::fs::write(&binary, b"#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    refused("a broken binary", "broken");
    std::fs::write(&binary, b"#!/bin/sh\necho hv0\n").unwrap();
    refused("an hvsockd of another hand-over format", "hv0");

    // A good binary at the path (a new file, as an upgrade installs it) is taken.
    copy_binary(&binary);
    upgrade(&d);
    still_serving("the upgrade");
}
