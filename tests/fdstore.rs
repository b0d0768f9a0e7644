//! The service manager's descriptor store, with a test that plays systemd: it binds a
//! `NOTIFY_SOCKET`, starts hvsockd with `FDSTORE` set, keeps every descriptor hvsockd stores
//! (`FDSTORE=1`/`FDNAME=`) and drops those it removes (`FDSTOREREMOVE=1`), reading its socket
//! all the time as systemd does; after a `kill -9` it starts hvsockd again with them
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` set to the new process's own pid).
//!
//! Across that, a std listener keeps its descriptor and never sees an error, a connector that
//! was waiting for a full backlog gets its answer, `hvsock listen --keep` serves on, a
//! sandbox's endpoint is the same socket (same inode), and an established connection loses no
//! byte. Every wait is bounded. The manager is `support::Manager`.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use hvsock::{HvListener, HvStream, SockAddrHv, VmId};
use support::{Daemon, Manager, Proc, accept_within, answered_in_order, pattern, wait_for};

const T: Duration = Duration::from_secs(10);

/// Sends `what` to `hvsock listen --keep` on port 5401 with `hvsock connect`.
fn send(d: &Daemon, what: &str) {
    wait_for("a connect to listen --keep", T, || {
        support::run(
            d.cli().args(["connect", "loopback:5401"]),
            what.as_bytes(),
            support::QUICK,
        )
        .status
        .success()
    });
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_listener_a_waiting_connector_a_sandbox_and_a_connection_survive_kill_9_with_the_store() {
    let manager = Manager::new();
    let mut d = Daemon::start_launched(manager.launcher());
    manager.wait_ready(0);
    let svc = d.add_service("echo", 5400);
    d.add_service("keep", 5401);
    let host = d.host();
    let sandbox = d.add_partition("sandbox", None);
    let endpoint = d.dirs().partition_socket(sandbox);
    wait_for("the sandbox's endpoint", T, || endpoint.exists());
    let endpoint_inode = inode(&endpoint);
    let in_sandbox = d.partition(sandbox);
    let addr = SockAddrHv::new(VmId::LOOPBACK, svc);

    // A std listener with a backlog of one, a connection established on it, the backlog full
    // (delivered, not accepted) and one more connector waiting.
    let listener = HvListener::bind_with(&host, addr, 1).unwrap();
    let listener_fd = listener.as_raw_fd();
    let mut sender = HvStream::connect_with(&host, addr, T).unwrap();
    let mut receiver = accept_within(&listener);
    let first = HvStream::connect_with(&host, addr, T).unwrap();
    let waiting = {
        let host = host.clone();
        thread::spawn(move || HvStream::connect_with(&host, addr, Duration::from_secs(20)))
    };
    // `hvsock listen --keep`, and a sandbox's listener through its endpoint.
    let mut listen = Proc::spawn(d.cli().args(["listen", "--keep", "loopback:5401"]));
    send(&d, "one\n");
    let sandbox_listener =
        HvListener::bind_with(&in_sandbox, SockAddrHv::new(VmId::WILDCARD, svc), 4).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the connector should wait for the backlog"
    );

    // Bytes stream across the restart.
    let data = pattern(4 << 20, 11);
    let streaming = {
        let data = data.clone();
        thread::spawn(move || {
            sender
                .set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            for chunk in data.chunks(64 << 10) {
                sender.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            sender.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    manager.wait_quiet();
    let stored = manager.names();
    assert!(
        stored.len() >= 5,
        "host.sock, admin.sock, the endpoint and the listener sessions should be stored: {stored:?}"
    );

    d.kill9();
    let ready = manager.ready_count();
    d.respawn();
    manager.wait_ready(ready);
    let log = d.log();
    assert!(log.contains("resuming the sockets"), "{log}");
    assert!(!log.contains("not resuming"), "{log}");

    // The waiting connector got its answer, after the connection before it.
    answered_in_order(&listener, first, waiting);
    let mut buf = [0u8; 6];

    // No byte lost.
    receiver
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    receiver.read_to_end(&mut got).unwrap();
    streaming.join().unwrap();
    assert!(got == data, "the stream lost or changed bytes");

    // The same listener (same descriptor, never an error) takes new connections.
    assert_eq!(listener.as_raw_fd(), listener_fd);
    assert_eq!(
        listener.rebind_generation(),
        0,
        "the listener had to bind again"
    );
    let mut c = HvStream::connect_with(&host, addr, T).unwrap();
    let mut a = accept_within(&listener);
    c.write_all(b"after").unwrap();
    a.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"after");

    // The sandbox's endpoint is the same socket, and its listener and endpoint serve.
    assert_eq!(
        inode(&endpoint),
        endpoint_inode,
        "the endpoint was bound anew"
    );
    let _c = HvStream::connect_with(&host, SockAddrHv::new(sandbox, svc), T).unwrap();
    accept_within(&sandbox_listener);
    let in_host = HvListener::bind_with(&host, SockAddrHv::new(VmId::CHILDREN, svc), 4).unwrap();
    let _s = HvStream::connect_with(&in_sandbox, SockAddrHv::new(VmId::PARENT, svc), T).unwrap();
    accept_within(&in_host);

    // listen --keep serves on.
    send(&d, "two\n");
    wait_for("both lines", T, || listen.stdout_text().contains("two"));
    assert_eq!(listen.stdout_text(), "one\ntwo\n");
    assert!(listen.is_running(), "{}", listen.stderr());
    assert!(d.is_running());
}
