//! The library against a real hvsockd: the address tables of DESIGN.md row by row, bind
//! rules, refusals and their error kinds, half-close, bulk data, concurrency, timeouts.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, Transport, VmId};
use support::{Daemon, pattern};

const T: Duration = Duration::from_secs(2);

fn bind(t: &Transport, vm: VmId, svc: ServiceId) -> HvListener {
    HvListener::bind_with(t, SockAddrHv::new(vm, svc), 16)
        .unwrap_or_else(|e| panic!("bind {vm:?}:{svc} via {t:?}: {e}"))
}

fn connect(t: &Transport, vm: VmId, svc: ServiceId) -> std::io::Result<HvStream> {
    HvStream::connect_with(t, SockAddrHv::new(vm, svc), T)
}

/// Connects and checks that `listener` gets the connection and bytes flow both ways.
fn assert_connects(
    t: &Transport,
    vm: VmId,
    svc: ServiceId,
    listener: &HvListener,
) -> (HvStream, HvStream) {
    let mut c = connect(t, vm, svc).unwrap_or_else(|e| panic!("connect {vm:?}:{svc}: {e}"));
    let (mut a, _) = listener.accept().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    a.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    (c, a)
}

/// The tree used by the table tests: root ─┬─ a ─── a1
///                                          └─ b
struct Tree {
    d: Daemon,
    root: VmId,
    a: VmId,
    a1: VmId,
    b: VmId,
}

fn tree() -> Tree {
    let d = Daemon::start();
    let root = d.root_id();
    let a = d.add_partition("a", None);
    let a1 = d.add_partition("a1", Some("a"));
    let b = d.add_partition("b", None);
    Tree { d, root, a, a1, b }
}

impl Tree {
    fn t(&self, id: VmId) -> Transport {
        if id == self.root {
            self.d.host()
        } else {
            self.d.partition(id)
        }
    }
}

#[test]
fn connect_address_table_every_row() {
    let tr = tree();
    let svc = tr.d.add_service("echo", 5001);
    let (root, a, a1, b) = (tr.root, tr.a, tr.a1, tr.b);
    // One wildcard listener in every partition; each reports which partition it is in.
    let listeners: Vec<(VmId, HvListener)> = [root, a, a1, b]
        .into_iter()
        .map(|p| (p, bind(&tr.t(p), VmId::WILDCARD, svc)))
        .collect();
    let listener_in = |p: VmId| &listeners.iter().find(|(q, _)| *q == p).unwrap().1;
    // (connector, vm addressed, partition reached or None for refused)
    let rows: Vec<(VmId, VmId, Option<VmId>)> = vec![
        (root, VmId::LOOPBACK, Some(root)),
        (a, VmId::LOOPBACK, Some(a)),
        (root, root, Some(root)),
        (a1, a1, Some(a1)),
        (a, VmId::PARENT, Some(root)),
        (a1, VmId::PARENT, Some(a)),
        (root, VmId::PARENT, None),
        (a, VmId::ZERO, Some(root)),
        (a1, VmId::WILDCARD, Some(a)),
        (root, VmId::ZERO, None),
        (root, a, Some(a)),
        (root, b, Some(b)),
        (a, a1, Some(a1)),
        (a, b, None),
        (b, a, None),
        (root, a1, None),
        (a, root, None),
        (root, VmId(hvsock::Guid::new_random()), None),
        (root, VmId::CHILDREN, None),
        (a, VmId::BROADCAST, None),
        (a, VmId::SILOHOST, None),
    ];
    for (from, vm, reached) in rows {
        let result = connect(&tr.t(from), vm, svc);
        match reached {
            Some(dest) => {
                let stream = result.unwrap_or_else(|e| panic!("{from} -> {vm:?}: {e}"));
                let (accepted, peer) = listener_in(dest).accept().unwrap();
                assert_eq!(peer, SockAddrHv::new(from, svc), "{from} -> {vm:?}");
                assert_eq!(stream.peer_addr().unwrap(), SockAddrHv::new(dest, svc));
                assert_eq!(stream.local_addr().unwrap(), SockAddrHv::new(from, svc));
                assert_eq!(accepted.local_addr().unwrap(), SockAddrHv::new(dest, svc));
            }
            None => {
                let err = result.expect_err(&format!("{from} -> {vm:?} must be refused"));
                assert_eq!(
                    err.kind(),
                    ErrorKind::HostUnreachable,
                    "{from} -> {vm:?}: {err}"
                );
            }
        }
    }
}

#[test]
fn listener_address_table_every_row() {
    let tr = tree();
    let (root, a, a1, b) = (tr.root, tr.a, tr.a1, tr.b);
    // (listener partition, pattern, connector, how the connector addresses the partition, accepted)
    let rows: Vec<(VmId, VmId, VmId, VmId, bool)> = vec![
        (a, VmId::ZERO, a, VmId::LOOPBACK, true),
        (a, VmId::ZERO, a1, VmId::PARENT, true),
        (a, VmId::ZERO, root, a, true),
        (root, VmId::WILDCARD, b, VmId::PARENT, true),
        (root, VmId::CHILDREN, a, VmId::PARENT, true),
        (root, VmId::CHILDREN, root, VmId::LOOPBACK, false),
        (a, VmId::CHILDREN, a1, VmId::ZERO, true),
        (a, VmId::CHILDREN, root, a, false),
        (a, VmId::LOOPBACK, a, a, true),
        (a, VmId::LOOPBACK, root, a, false),
        (a, VmId::PARENT, root, a, true),
        (a, VmId::PARENT, a1, VmId::PARENT, false),
        (a, VmId::PARENT, a, VmId::LOOPBACK, false),
        (root, a, a, VmId::PARENT, true),
        (root, a, b, VmId::PARENT, false),
        (a, a1, a1, VmId::PARENT, true),
        (a, root, root, a, true),
    ];
    for (n, (p, pattern, from, addressed, accepted)) in rows.into_iter().enumerate() {
        let svc = ServiceId::from_vsock_port(6000 + n as u32);
        tr.d.add_service(&format!("s{n}"), 6000 + n as u32);
        let listener = bind(&tr.t(p), pattern, svc);
        let result = connect(&tr.t(from), addressed, svc);
        if accepted {
            result.unwrap_or_else(|e| panic!("row {n}: {e}"));
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer.vm_id, from, "row {n}");
        } else {
            let err = result.expect_err(&format!("row {n} must be refused"));
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "row {n}: {err}");
        }
    }
}

#[test]
fn most_specific_listener_wins_and_duplicate_binds_are_addr_in_use() {
    let tr = tree();
    let svc = tr.d.add_service("echo", 5002);
    let host = tr.d.host();
    let any = bind(&host, VmId::WILDCARD, svc);
    let children = bind(&host, VmId::CHILDREN, svc);
    let only_a = bind(&host, tr.a, svc);
    let err = HvListener::bind_with(&host, SockAddrHv::new(VmId::CHILDREN, svc), 4)
        .expect_err("second CHILDREN bind");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    // a: the exact id beats CHILDREN and WILDCARD.
    assert_connects(&tr.t(tr.a), VmId::PARENT, svc, &only_a);
    // b: CHILDREN beats WILDCARD.
    assert_connects(&tr.t(tr.b), VmId::PARENT, svc, &children);
    // the root itself: only WILDCARD accepts it.
    assert_connects(&host, VmId::LOOPBACK, svc, &any);
    // Dropping a listener unbinds it: b falls back to WILDCARD, and CHILDREN can be bound again.
    drop(children);
    let deadline = Instant::now() + T;
    loop {
        let c = connect(&tr.t(tr.b), VmId::PARENT, svc).unwrap();
        any.set_nonblocking(true).unwrap();
        thread::sleep(Duration::from_millis(20));
        if any.accept().is_ok() {
            drop(c);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped CHILDREN listener kept its binding"
        );
    }
    any.set_nonblocking(false).unwrap();
    let _again = bind(&host, VmId::CHILDREN, svc);
}

#[test]
fn bind_refusals_and_their_kinds() {
    let tr = tree();
    let svc = ServiceId::from_vsock_port(7);
    let host = tr.d.host();
    let cases = [
        (host.clone(), VmId::BROADCAST, ErrorKind::AddrNotAvailable),
        (tr.t(tr.a), VmId::BROADCAST, ErrorKind::AddrNotAvailable),
        (host.clone(), VmId::PARENT, ErrorKind::Unsupported),
        (host.clone(), VmId::SILOHOST, ErrorKind::Unsupported),
    ];
    for (t, vm, kind) in cases {
        let err = HvListener::bind_with(&t, SockAddrHv::new(vm, svc), 4).expect_err("refused");
        assert_eq!(err.kind(), kind, "{vm:?}: {err}");
    }
    // PARENT may be bound in a child.
    let _ok = bind(&tr.t(tr.a), VmId::PARENT, svc);
}

#[test]
fn crossing_needs_a_registered_enabled_service_loopback_does_not() {
    let tr = tree();
    let unregistered = ServiceId::from_vsock_port(9100);
    let host = tr.d.host();
    let child = tr.t(tr.a);
    let _l = bind(&host, VmId::WILDCARD, unregistered);
    let err = connect(&child, VmId::PARENT, unregistered).expect_err("unregistered");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("not registered"), "{err}");
    // Loopback needs no registration.
    let l2 = bind(&child, VmId::LOOPBACK, unregistered);
    assert_connects(&child, VmId::LOOPBACK, unregistered, &l2);

    let svc = tr.d.add_service("guarded", 9101);
    let l3 = bind(&host, VmId::WILDCARD, svc);
    assert_connects(&child, VmId::PARENT, svc, &l3);
    tr.d.set_enabled("guarded", false);
    let err = connect(&child, VmId::PARENT, svc).expect_err("disabled");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(
        err.to_string().contains("guarded") && err.to_string().contains("disabled"),
        "{err}"
    );
    // Host to child crosses a boundary too.
    let l4 = bind(&child, VmId::WILDCARD, svc);
    assert_eq!(
        connect(&host, tr.a, svc).expect_err("disabled").kind(),
        ErrorKind::PermissionDenied
    );
    // Loopback is not affected by disabling.
    assert_connects(&host, VmId::LOOPBACK, svc, &l3);
    tr.d.set_enabled("guarded", true);
    assert_connects(&host, tr.a, svc, &l4);
    assert_connects(&child, VmId::PARENT, svc, &l3);
}

#[test]
fn refusals_are_immediate_and_say_why() {
    let tr = tree();
    let svc = tr.d.add_service("nobody", 9200);
    let started = Instant::now();
    let err = connect(&tr.t(tr.a), VmId::PARENT, svc).expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(err.to_string().contains("nobody"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        started.elapsed()
    );
    let err = connect(&tr.d.host(), VmId::PARENT, svc).expect_err("root has no parent");
    assert!(err.to_string().contains("root partition has none"), "{err}");
}

#[test]
fn half_close_both_ways() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(1);
    let host = d.host();
    let l = bind(&host, VmId::LOOPBACK, svc);
    let mut c = connect(&host, VmId::LOOPBACK, svc).unwrap();
    let (mut a, _) = l.accept().unwrap();
    // Connector half-closes: the listener reads EOF and can still answer.
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"request");
    a.write_all(b"reply").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    got.clear();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"reply");
    // And the other way round on a second connection.
    let mut c = connect(&host, VmId::LOOPBACK, svc).unwrap();
    let (mut a, _) = l.accept().unwrap();
    a.write_all(b"hello").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    got.clear();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    c.write_all(b"still open").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    got.clear();
    a.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"still open");
}

#[test]
fn thirty_two_mib_intact_each_way_across_partitions() {
    let d = Daemon::start();
    let svc = d.add_service("bulk", 9300);
    let vm = d.add_partition("sandbox", None);
    let l = bind(&d.host(), VmId::WILDCARD, svc);
    const N: usize = 32 << 20;
    let up = pattern(N, 1);
    let down = pattern(N, 2);
    let mut c = connect(&d.partition(vm), VmId::PARENT, svc).unwrap();
    let (mut a, _) = l.accept().unwrap();
    let (up2, down2) = (up.clone(), down.clone());
    let server = thread::spawn(move || {
        let mut writer = a.try_clone().unwrap();
        let w = thread::spawn(move || {
            writer.write_all(&down2).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(N);
        a.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert!(got == up2, "upload corrupted");
    });
    let mut writer = c.try_clone().unwrap();
    let w = thread::spawn(move || {
        writer.write_all(&up).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(N);
    c.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    server.join().unwrap();
    assert!(got == down, "download corrupted");
}

#[test]
fn a_hundred_concurrent_connections() {
    let d = Daemon::start();
    let svc = d.add_service("many", 9400);
    let vm = d.add_partition("sandbox", None);
    let l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 128).unwrap();
    let server = thread::spawn(move || {
        let mut handlers = Vec::new();
        for _ in 0..100 {
            let (mut s, _) = l.accept().unwrap();
            handlers.push(thread::spawn(move || {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
            }));
        }
        for h in handlers {
            h.join().unwrap();
        }
    });
    let t = d.partition(vm);
    let clients: Vec<_> = (0..100u64)
        .map(|i| {
            let t = t.clone();
            thread::spawn(move || {
                let mut s = HvStream::connect_with(
                    &t,
                    SockAddrHv::new(VmId::PARENT, svc),
                    Duration::from_secs(10),
                )
                .unwrap();
                let msg = pattern(4096 + i as usize, i + 10);
                s.write_all(&msg).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                assert!(back == msg, "connection {i} corrupted");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
}

#[test]
fn a_full_backlog_makes_connects_wait_then_time_out() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(9500);
    let host = d.host();
    let l = HvListener::bind_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), 1).unwrap();
    let _first = connect(&host, VmId::LOOPBACK, svc).unwrap();
    // The backlog (1) is full: the next connect waits, then times out at its own timeout.
    let started = Instant::now();
    let err = HvStream::connect_with(
        &host,
        SockAddrHv::new(VmId::LOOPBACK, svc),
        Duration::from_millis(300),
    )
    .expect_err("backlog full");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A waiting connect completes as soon as the listener accepts.
    let waiter = {
        let host = host.clone();
        thread::spawn(move || {
            HvStream::connect_with(
                &host,
                SockAddrHv::new(VmId::LOOPBACK, svc),
                Duration::from_secs(5),
            )
        })
    };
    thread::sleep(Duration::from_millis(100));
    let _a = l.accept().unwrap();
    let mut s = waiter.join().unwrap().unwrap();
    let (mut a2, _) = l.accept().unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    a2.read_exact(&mut b).unwrap();
}

#[test]
fn streams_are_real_sockets_for_poll_and_timeouts() {
    use std::os::fd::AsFd;
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(9600);
    let host = d.host();
    let l = bind(&host, VmId::LOOPBACK, svc);
    // The listener is pollable: not readable until a connection waits.
    let readable = |fd: std::os::fd::BorrowedFd<'_>, ms: i32| {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: i64::from(ms / 1000),
            tv_nsec: i64::from(ms % 1000) * 1_000_000,
        };
        rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 1
    };
    assert!(!readable(l.as_fd(), 50));
    let c = connect(&host, VmId::LOOPBACK, svc).unwrap();
    assert!(readable(l.as_fd(), 2000));
    let (a, _) = l.accept().unwrap();
    assert!(!readable(a.as_fd(), 50));
    (&c).write_all(b"!").unwrap();
    assert!(readable(a.as_fd(), 2000));
    // Read timeouts and non-blocking reads behave as on any socket.
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    // The kernel rounds socket timeouts up to its clock tick.
    let set = c.read_timeout().unwrap().unwrap();
    assert!(
        set >= Duration::from_millis(50) && set < Duration::from_millis(70),
        "{set:?}"
    );
    let mut buf = [0u8; 1];
    let err = (&c).read(&mut buf).expect_err("timeout");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    c.set_nonblocking(true).unwrap();
    assert_eq!(
        (&c).read(&mut buf).expect_err("nonblocking").kind(),
        ErrorKind::WouldBlock
    );
    l.set_nonblocking(true).unwrap();
    assert_eq!(
        l.accept().expect_err("nonblocking").kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn hvsockd_keeps_no_data_path_descriptor() {
    let d = Daemon::start();
    let svc = d.add_service("fds", 9700);
    let vm = d.add_partition("sandbox", None);
    let l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 64).unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    // One connection first, so this process's control connection exists.
    let first = connect(&d.partition(vm), VmId::PARENT, svc).unwrap();
    let _first_accepted = l.accept().unwrap();
    // Settled: the admin API connections of the set-up may still be closing on a busy machine.
    let settled = || {
        let mut last = fds();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            thread::sleep(Duration::from_millis(100));
            let now = fds();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    };
    let before = settled();
    let mut held = Vec::new();
    for _ in 0..50 {
        let c = connect(&d.partition(vm), VmId::PARENT, svc).unwrap();
        let (a, _) = l.accept().unwrap();
        held.push((c, a));
    }
    assert_eq!(
        settled(),
        before,
        "hvsockd holds descriptors of established connections"
    );
    drop((first, held));
}

/// `HvListener::replace_fd` (what libhvsock uses to give a C program's descriptor its listener):
/// the listener goes on working on the new descriptor and the old one is closed; a descriptor
/// of another socket is refused and changes nothing.
#[test]
fn a_listener_moves_onto_another_descriptor_of_its_socket() {
    use std::os::fd::{AsFd, AsRawFd};
    let d = Daemon::start();
    let t = d.host();
    let svc = ServiceId::from_vsock_port(7001);
    let mut l = bind(&t, VmId::LOOPBACK, svc);
    use std::os::unix::fs::MetadataExt;
    let ident = |fd: i32| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let old = l.as_raw_fd();
    let socket = ident(old);
    let dup = rustix::io::fcntl_dupfd_cloexec(l.as_fd(), 200).unwrap();
    let dup_fd = dup.as_raw_fd();
    l.replace_fd(dup).unwrap();
    assert_eq!(l.as_raw_fd(), dup_fd);
    assert_eq!(ident(dup_fd), socket);
    // Closed: gone, or (tests run in parallel) already another file.
    assert_ne!(ident(old), socket, "the old descriptor is closed");
    assert_connects(&t, VmId::LOOPBACK, svc, &l);

    let (other, _keep) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = l.replace_fd(other.into()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(l.as_raw_fd(), dup_fd);
    assert_connects(&t, VmId::LOOPBACK, svc, &l);
}
