//! The async twins (`hvsock::tokio`) against a real hvsockd: connect and accept across
//! partitions, bulk copies with half-close, `split` / `into_split` / `copy_bidirectional`,
//! `select!` and cancellation, a hundred concurrent connects from one runtime, error kinds
//! equal to the std API's, acknowledgements that free backlog slots, and a hvsockd restart.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use hvsock::tokio::{HvListener, HvStream};
use hvsock::{ServiceId, SockAddrHv, Transport, VmId};
use support::{Daemon, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(2);

/// Runs `fut`, failing the test if it takes longer than `limit`.
async fn bounded<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

async fn bind(t: &Transport, vm: VmId, svc: ServiceId, backlog: u32) -> HvListener {
    HvListener::bind_with(t, SockAddrHv::new(vm, svc), backlog)
        .await
        .unwrap_or_else(|e| panic!("bind {vm:?}:{svc} via {t:?}: {e}"))
}

async fn connect(t: &Transport, vm: VmId, svc: ServiceId) -> std::io::Result<HvStream> {
    HvStream::connect_with(t, SockAddrHv::new(vm, svc), T).await
}

#[tokio::test]
async fn connect_and_accept_across_partitions_both_ways() {
    let d = Daemon::start();
    let root = d.root_id();
    let svc = d.add_service("hello", 6001);
    let a = d.add_partition("a", None);
    let (host, child) = (d.host(), d.partition(a));

    // Child to host (the doc's guest-to-host direction).
    let l = bind(&host, VmId::WILDCARD, svc, 16).await;
    assert_eq!(
        l.local_addr().unwrap(),
        SockAddrHv::new(VmId::WILDCARD, svc)
    );
    let mut c = connect(&child, VmId::PARENT, svc).await.unwrap();
    let (mut s, peer) = bounded(T, "accept", l.accept()).await.unwrap();
    assert_eq!(peer, SockAddrHv::new(a, svc));
    assert_eq!(s.peer_addr().unwrap(), peer);
    assert_eq!(s.local_addr().unwrap(), SockAddrHv::new(root, svc));
    assert_eq!(c.local_addr().unwrap(), SockAddrHv::new(a, svc));
    assert_eq!(c.peer_addr().unwrap(), SockAddrHv::new(root, svc));
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // Host to child.
    let lc = bind(&child, VmId::WILDCARD, svc, 16).await;
    let mut c = connect(&host, a, svc).await.unwrap();
    let (mut s, peer) = bounded(T, "accept", lc.accept()).await.unwrap();
    assert_eq!(peer, SockAddrHv::new(root, svc));
    c.write_all(b"down").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_eight_mib_each_way_with_half_close() {
    const LEN: usize = 8 << 20;
    let d = Daemon::start();
    let svc = d.add_service("bulk", 6002);
    let a = d.add_partition("a", None);
    let l = bind(&d.host(), VmId::WILDCARD, svc, 16).await;
    let up = pattern(LEN, 1);
    let down = pattern(LEN, 2);

    // The host sends `down` while it reads `up`, each direction ended by a half-close.
    let server = {
        let down = down.clone();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let send = async {
                let n = tokio::io::copy(&mut &down[..], &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
                n
            };
            let receive = async {
                let mut got = Vec::with_capacity(LEN);
                tokio::io::copy(&mut rd, &mut got).await.unwrap();
                got
            };
            tokio::join!(send, receive)
        })
    };
    let c = connect(&d.partition(a), VmId::PARENT, svc).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(c);
    let send = async {
        let n = tokio::io::copy(&mut &up[..], &mut wr).await.unwrap();
        wr.shutdown().await.unwrap();
        n
    };
    let receive = async {
        let mut got = Vec::with_capacity(LEN);
        tokio::io::copy(&mut rd, &mut got).await.unwrap();
        got
    };
    let started = Instant::now();
    let (sent, got_down) = bounded(Duration::from_secs(60), "8 MiB each way", async {
        tokio::join!(send, receive)
    })
    .await;
    let (server_sent, got_up) = bounded(Duration::from_secs(10), "server", server)
        .await
        .unwrap();
    eprintln!("8 MiB each way in {:?}", started.elapsed());
    assert_eq!((sent, server_sent), (LEN as u64, LEN as u64));
    assert!(got_up == up, "upload corrupted ({} bytes)", got_up.len());
    assert!(
        got_down == down,
        "download corrupted ({} bytes)",
        got_down.len()
    );
}

#[tokio::test]
async fn copy_bidirectional_through_a_proxy_between_partitions() {
    let d = Daemon::start();
    let front = d.add_service("front", 6003);
    let back = ServiceId::from_vsock_port(6004); // loopback only: needs no registration
    let a = d.add_partition("a", None);
    let host = d.host();
    // The back end echoes in the host, over loopback.
    let echo_l = bind(&host, VmId::LOOPBACK, back, 4).await;
    let echo = tokio::spawn(async move {
        let (s, _) = echo_l.accept().await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        tokio::io::copy(&mut rd, &mut wr).await.unwrap();
    });
    // The proxy joins the guest's connection to the back end.
    let front_l = bind(&host, VmId::CHILDREN, front, 4).await;
    let proxy = {
        let host = host.clone();
        tokio::spawn(async move {
            let (mut from_guest, _) = front_l.accept().await.unwrap();
            let mut to_back = connect(&host, VmId::LOOPBACK, back).await.unwrap();
            tokio::io::copy_bidirectional(&mut from_guest, &mut to_back)
                .await
                .unwrap()
        })
    };
    let msg = pattern(1 << 20, 3);
    let mut c = connect(&d.partition(a), VmId::PARENT, front).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(&mut c);
    let (_, back_bytes) = bounded(Duration::from_secs(20), "proxied echo", async {
        tokio::join!(
            async {
                wr.write_all(&msg).await.unwrap();
                wr.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.unwrap();
                got
            }
        )
    })
    .await;
    assert!(back_bytes == msg, "proxied echo corrupted");
    let counts = bounded(T, "proxy", proxy).await.unwrap();
    assert_eq!(counts, (msg.len() as u64, msg.len() as u64));
    echo.await.unwrap();
    drop(c);
}

#[tokio::test]
async fn select_between_accept_and_a_timer() {
    let d = Daemon::start();
    let svc = d.add_service("sel", 6005);
    let a = d.add_partition("a", None);
    let l = bind(&d.host(), VmId::WILDCARD, svc, 16).await;
    // Nobody connects: the timer wins.
    tokio::select! {
        accepted = l.accept() => panic!("accepted {:?}", accepted.map(|(_, p)| p)),
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    // Somebody connects: the accept wins against a long timer.
    let child = d.partition(a);
    let connector = tokio::spawn(async move { connect(&child, VmId::PARENT, svc).await });
    tokio::select! {
        accepted = l.accept() => assert_eq!(accepted.unwrap().1.vm_id, a),
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("no connection in 10 s"),
    }
    connector.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_accept_futures_lose_no_connection() {
    const N: usize = 60;
    let d = Daemon::start();
    let svc = d.add_service("cancel", 6006);
    let a = d.add_partition("a", None);
    let l = bind(&d.host(), VmId::WILDCARD, svc, 128).await;
    // The connectors trickle in, while the acceptor keeps dropping its accept future to a
    // 1 ms timer: every connection must still be accepted exactly once.
    let child = d.partition(a);
    let connectors = tokio::spawn(async move {
        let mut streams = Vec::new();
        for i in 0..N {
            let mut s = connect(&child, VmId::PARENT, svc).await.unwrap();
            s.write_all(&(i as u32).to_le_bytes()).await.unwrap();
            streams.push(s);
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        streams
    });
    let mut seen = [false; N];
    let mut dropped = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut accepted = 0;
    while accepted < N {
        assert!(
            Instant::now() < deadline,
            "only {accepted} of {N} accepted: connections were lost"
        );
        tokio::select! {
            res = l.accept() => {
                let (mut s, _) = res.unwrap();
                let mut id = [0u8; 4];
                s.read_exact(&mut id).await.unwrap();
                let id = u32::from_le_bytes(id) as usize;
                assert!(!seen[id], "connection {id} accepted twice");
                seen[id] = true;
                accepted += 1;
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => dropped += 1,
        }
    }
    assert!(dropped > 0, "no accept future was ever dropped");
    let _streams = connectors.await.unwrap();
    // And nothing more is waiting.
    tokio::select! {
        res = l.accept() => panic!("an extra connection: {:?}", res.map(|(_, p)| p)),
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_connects_from_one_runtime() {
    const N: u64 = 100;
    let d = Daemon::start();
    let svc = d.add_service("many", 6007);
    let a = d.add_partition("a", None);
    let l = bind(&d.host(), VmId::WILDCARD, svc, 128).await;
    let server = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..N {
            let (s, _) = l.accept().await.unwrap();
            handlers.push(tokio::spawn(async move {
                let (mut rd, mut wr) = s.into_split();
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
            }));
        }
        for h in handlers {
            h.await.unwrap();
        }
    });
    let child = d.partition(a);
    let started = Instant::now();
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let child = child.clone();
            tokio::spawn(async move {
                let mut s = HvStream::connect_with(
                    &child,
                    SockAddrHv::new(VmId::PARENT, svc),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|e| panic!("connect {i}: {e}"));
                let msg = pattern(4096 + i as usize, i + 10);
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert!(back == msg, "connection {i} corrupted");
            })
        })
        .collect();
    bounded(Duration::from_secs(30), "100 clients", async {
        for c in clients {
            c.await.unwrap();
        }
    })
    .await;
    eprintln!(
        "100 concurrent connects + echoes in {:?}",
        started.elapsed()
    );
    bounded(Duration::from_secs(10), "server", server)
        .await
        .unwrap();
}

#[tokio::test]
async fn error_kinds_and_messages_equal_the_std_ones() {
    let d = Daemon::start();
    let svc = d.add_service("nobody", 6008);
    let a = d.add_partition("a", None);
    let (host, child) = (d.host(), d.partition(a));
    let unregistered = ServiceId::from_vsock_port(6009);
    let _l = bind(&host, VmId::WILDCARD, unregistered, 4).await;
    let stranger = VmId(hvsock::Guid::new_random());
    let cases = [
        (
            "refused",
            &child,
            VmId::PARENT,
            svc,
            ErrorKind::ConnectionRefused,
        ),
        (
            "denied",
            &child,
            VmId::PARENT,
            unregistered,
            ErrorKind::PermissionDenied,
        ),
        (
            "unreachable",
            &host,
            stranger,
            svc,
            ErrorKind::HostUnreachable,
        ),
        (
            "root has no parent",
            &host,
            VmId::PARENT,
            svc,
            ErrorKind::HostUnreachable,
        ),
    ];
    for (what, t, vm, s, kind) in cases {
        let addr = SockAddrHv::new(vm, s);
        let err = HvStream::connect_with(t, addr, T).await.unwrap_err();
        let std_err = hvsock::HvStream::connect_with(t, addr, T).unwrap_err();
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert_eq!(err.kind(), std_err.kind(), "{what}");
        assert_eq!(err.to_string(), std_err.to_string(), "{what}");
    }
    d.set_enabled("nobody", false);
    let _l2 = bind(&host, VmId::WILDCARD, svc, 4).await;
    let err = connect(&child, VmId::PARENT, svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("disabled"), "{err}");

    // Binds.
    let taken = bind(&host, VmId::LOOPBACK, svc, 4).await;
    let bind_cases = [
        (VmId::LOOPBACK, ErrorKind::AddrInUse),
        (VmId::BROADCAST, ErrorKind::AddrNotAvailable),
        (VmId::PARENT, ErrorKind::Unsupported),
    ];
    for (vm, kind) in bind_cases {
        let addr = SockAddrHv::new(vm, svc);
        let err = HvListener::bind_with(&host, addr, 4).await.unwrap_err();
        let std_err = hvsock::HvListener::bind_with(&host, addr, 4).unwrap_err();
        assert_eq!(err.kind(), kind, "{vm:?}: {err}");
        assert_eq!(err.to_string(), std_err.to_string());
    }
    drop(taken);

    // A full backlog makes a connect time out at its own timeout, as std.
    let full = bind(&host, VmId::LOOPBACK, unregistered, 1).await;
    let _first = connect(&host, VmId::LOOPBACK, unregistered).await.unwrap();
    let started = Instant::now();
    let err = HvStream::connect_with(
        &host,
        SockAddrHv::new(VmId::LOOPBACK, unregistered),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(full);
}

#[tokio::test]
async fn every_accept_is_acknowledged_so_a_backlog_of_one_keeps_serving() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(6010);
    let host = d.host();
    let l = bind(&host, VmId::LOOPBACK, svc, 1).await;
    // Without the Ack of each accept, hvsockd would hold the second connect until it timed
    // out: a backlog of 1 has room for one unacknowledged connection.
    for i in 0..20 {
        let c = bounded(T * 2, "connect", connect(&host, VmId::LOOPBACK, svc))
            .await
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        let (s, _) = bounded(T, "accept", l.accept()).await.unwrap();
        drop((c, s));
    }
}

#[tokio::test]
async fn std_and_async_types_convert_both_ways() {
    let d = Daemon::start();
    let svc = ServiceId::from_vsock_port(6011);
    let host = d.host();
    let std_l =
        hvsock::HvListener::bind_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), 4).unwrap();
    let l = HvListener::from_std(std_l).unwrap();
    let std_c =
        hvsock::HvStream::connect_with(&host, SockAddrHv::new(VmId::LOOPBACK, svc), T).unwrap();
    let mut c = HvStream::from_std(std_c).unwrap();
    let (s, _) = bounded(T, "accept", l.accept()).await.unwrap();
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    c.write_all(b"async to std").await.unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf, b"async to std");
}

#[tokio::test]
async fn connects_work_again_after_hvsockd_restarts() {
    let mut d = Daemon::start();
    let svc = d.add_service("again", 6012);
    let a = d.add_partition("a", None);
    let child = d.partition(a);
    {
        let l = bind(&d.host(), VmId::WILDCARD, svc, 4).await;
        connect(&child, VmId::PARENT, svc).await.unwrap();
        l.accept().await.unwrap();
    }
    // The pooled control connection dies with hvsockd; the next connect replaces it.
    d.restart();
    support::wait_for("the partition endpoint", Duration::from_secs(10), || {
        d.dirs().partition_socket(a).exists()
    });
    let l = bind(&d.host(), VmId::WILDCARD, svc, 4).await;
    let mut c = connect(&child, VmId::PARENT, svc).await.unwrap();
    let (mut s, peer) = bounded(T, "accept", l.accept()).await.unwrap();
    assert_eq!(peer.vm_id, a);
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
}
