//! The session state machine: the table, then every (state, frame) pair over a socket pair,
//! and the ways a session ends without a frame (timeout, garbage, descriptors).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{Fixture, fixture};
use hvsock_proto::unix::{send_message, seqpacket_pair, stream_pair};

const KINDS: [&str; 7] = [
    "Connect",
    "Bind",
    "Ack",
    "Connected",
    "Bound",
    "Incoming",
    "Error",
];

fn frame(kind: &str, f: &Fixture) -> Frame {
    let a = WireAddr::from(SockAddrHv::new(VmId::PARENT, f.echo));
    match kind {
        // To a partition the sandbox cannot reach: refused at once, the session goes on.
        "Connect" => Frame::Connect {
            req: 7,
            target: SockAddrHv::new(VmId(hvsock::Guid::from_bytes([0x77; 16])), f.echo).into(),
            timeout_ms: 1000,
        },
        "Bind" => Frame::Bind {
            req: 8,
            addr: SockAddrHv::new(VmId::ZERO, f.echo).into(),
            backlog: 4,
        },
        "Ack" => Frame::Ack { count: 1 },
        "Connected" => Frame::Connected {
            req: 1,
            local: a,
            peer: a,
        },
        "Bound" => Frame::Bound { req: 1, local: a },
        "Incoming" => Frame::Incoming { local: a, peer: a },
        "Error" => Frame::Error {
            req: 1,
            code: ErrorCode::Refused,
            message: "x".into(),
        },
        _ => unreachable!(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Fresh,
    Connector,
    Listener,
}

fn state(start: Start, f: &Fixture) -> State {
    match start {
        Start::Fresh => State::Fresh,
        Start::Connector => State::Connector,
        Start::Listener => State::Listener(f.bind(f.sandbox, VmId::LOOPBACK, f.off, 1).0),
    }
}

#[test]
fn the_table() {
    let f = fixture();
    for start in [Start::Fresh, Start::Connector, Start::Listener] {
        let s = state(start, &f);
        for kind in KINDS {
            let want = match (start, kind) {
                (Start::Fresh | Start::Connector, "Connect") => Transition::Connect,
                (Start::Fresh, "Bind") => Transition::Bind,
                (Start::Listener, "Ack") => Transition::Ack,
                _ => Transition::Invalid,
            };
            assert_eq!(transition(&s, &frame(kind, &f)), want, "{start:?} {kind}");
        }
    }
}

fn nonblocking(fd: OwnedFd) -> SeqPacket {
    rustix::io::ioctl_fionbio(&fd, true).unwrap();
    SeqPacket::new(fd).unwrap()
}

/// A client talking to a session of the sandbox partition served on a socket pair.
struct Client {
    sock: SeqPacket,
    task: tokio::task::JoinHandle<()>,
}

async fn recv(c: &Client) -> Option<Frame> {
    match tokio::time::timeout(Duration::from_secs(5), c.sock.recv()).await {
        Ok(Ok(r)) => Some(r.frame),
        Ok(Err(e)) if e.is_disconnect() => None,
        other => panic!("receiving: {other:?}"),
    }
}

async fn send(c: &Client, frame: &Frame) {
    let fd = frame.carries_fd().then(|| stream_pair().unwrap().0);
    c.sock
        .send(frame, fd.as_ref().map(|f| f.as_fd()))
        .await
        .unwrap();
}

async fn start(f: &Fixture, start: Start, limits: Limits) -> Client {
    let (ours, theirs) = seqpacket_pair().unwrap();
    let server = Arc::new(nonblocking(ours));
    let task = tokio::spawn(serve(
        f.broker.clone(),
        limits,
        f.sandbox,
        server,
        CancellationToken::new(),
    ));
    let c = Client {
        sock: nonblocking(theirs),
        task,
    };
    match start {
        Start::Fresh => {}
        Start::Connector => {
            send(&c, &frame("Connect", f)).await;
            assert!(matches!(recv(&c).await, Some(Frame::Error { req: 7, .. })));
        }
        Start::Listener => {
            send(&c, &frame("Bind", f)).await;
            assert!(matches!(recv(&c).await, Some(Frame::Bound { req: 8, .. })));
        }
    }
    c
}

fn listeners(f: &Fixture) -> usize {
    f.broker.world().lock().listeners().count()
}

#[tokio::test]
async fn every_state_and_frame_over_a_socket_pair() {
    for s in [Start::Fresh, Start::Connector, Start::Listener] {
        for kind in KINDS {
            let f = fixture();
            let c = start(&f, s, Limits::default()).await;
            send(&c, &frame(kind, &f)).await;
            let what = format!("{s:?} {kind}");
            match (s, kind) {
                (Start::Fresh | Start::Connector, "Connect") => {
                    let Some(Frame::Error { req, code, .. }) = recv(&c).await else {
                        panic!("{what}: no answer")
                    };
                    assert_eq!((req, code), (7, ErrorCode::Unreachable), "{what}");
                    // Still serving: a second connect is answered too.
                    send(&c, &frame("Connect", &f)).await;
                    assert!(matches!(recv(&c).await, Some(Frame::Error { req: 7, .. })));
                }
                (Start::Fresh, "Bind") => {
                    assert!(matches!(recv(&c).await, Some(Frame::Bound { req: 8, .. })));
                    assert_eq!(listeners(&f), 1, "{what}");
                }
                (Start::Listener, "Ack") => {
                    // Nothing comes back; the listener still takes connections.
                    // The sandbox's listener is bound to ZERO: reach it from the sandbox
                    // itself through LOOPBACK.
                    let loopback = SockAddrHv::new(VmId::LOOPBACK, f.echo);
                    let conn = f.broker.connect(
                        f.sandbox,
                        loopback,
                        Conn::Pair,
                        Duration::from_secs(1),
                        Instant::now(),
                    );
                    assert!(
                        matches!(conn, Connecting::Now(Settled { result: Ok(_), .. })),
                        "{what}"
                    );
                    assert!(
                        matches!(recv(&c).await, Some(Frame::Incoming { .. })),
                        "{what}"
                    );
                }
                _ => {
                    let Some(Frame::Error { req, code, message }) = recv(&c).await else {
                        panic!("{what}: no error")
                    };
                    assert_eq!((req, code), (0, ErrorCode::Protocol), "{what}");
                    assert!(message.contains("not valid in a"), "{what}: {message}");
                    assert!(recv(&c).await.is_none(), "{what}: not closed");
                    c.task.await.unwrap();
                    assert_eq!(listeners(&f), 0, "{what}: the listener stays bound");
                    let errors = f
                        .broker
                        .metrics()
                        .stats(&f.broker.world().lock())
                        .client_errors;
                    assert_eq!(errors["box"]["protocol"], 1, "{what}");
                    continue;
                }
            }
            // The valid pairs leave the session serving until the client leaves.
            drop(c.sock);
            c.task.await.unwrap();
            assert_eq!(
                listeners(&f),
                0,
                "{what}: the listener outlived its session"
            );
        }
    }
}

#[tokio::test]
async fn a_failed_bind_leaves_the_session_fresh() {
    let f = fixture();
    let c = start(&f, Start::Fresh, Limits::default()).await;
    let bad = Frame::Bind {
        req: 9,
        addr: SockAddrHv::new(VmId::BROADCAST, f.echo).into(),
        backlog: 1,
    };
    send(&c, &bad).await;
    let Some(Frame::Error { req: 9, code, .. }) = recv(&c).await else {
        panic!("no error")
    };
    assert_eq!(code, ErrorCode::AddrNotAvailable);
    send(&c, &frame("Bind", &f)).await;
    assert!(matches!(recv(&c).await, Some(Frame::Bound { req: 8, .. })));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let f = fixture();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let c = start(&f, Start::Fresh, limits).await;
    assert!(recv(&c).await.is_none());
    let errors = f
        .broker
        .metrics()
        .stats(&f.broker.world().lock())
        .client_errors;
    assert_eq!(errors["box"]["idle"], 1);
}

#[tokio::test]
async fn garbage_and_stray_descriptors_end_the_session_with_their_reason() {
    for (bytes, with_fd, reason) in [
        (&b"not a frame"[..], false, "garbage"),
        (&Frame::Ack { count: 1 }.encode()[..], true, "fds"),
    ] {
        let f = fixture();
        let c = start(&f, Start::Fresh, Limits::default()).await;
        let fd = with_fd.then(|| stream_pair().unwrap().0);
        send_message(&c.sock, bytes, fd.as_ref().map(|f| f.as_fd()), false).unwrap();
        assert!(matches!(
            recv(&c).await,
            Some(Frame::Error {
                code: ErrorCode::Protocol,
                ..
            })
        ));
        assert!(recv(&c).await.is_none());
        let errors = f
            .broker
            .metrics()
            .stats(&f.broker.world().lock())
            .client_errors;
        assert_eq!(errors["box"][reason], 1, "{reason}");
    }
}
