//! The async types without hvsockd: streams over socket pairs and a listener over a session
//! whose other end the test plays; connects and binds against a fake endpoint that answers as
//! scripted are in `fake_endpoint`. End-to-end tests against the real hvsockd are in the
//! workspace's `tests/async_io.rs`.

#![allow(clippy::unwrap_used)]

mod fake_endpoint;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use hvsock_proto::unix::{recv_frame, send_frame, seqpacket_pair, stream_pair};
use hvsock_proto::{Frame, WireAddr};

use super::{HvListener, HvStream};
use crate::SockAddrHv;
use crate::guid::{ServiceId, VmId};
use crate::sys::Socket;
use crate::sys::unix::provider;

const SVC: ServiceId = ServiceId::from_vsock_port(4000);

fn addr(vm: VmId) -> SockAddrHv {
    SockAddrHv::new(vm, SVC)
}

fn wire(vm: VmId) -> WireAddr {
    addr(vm).into()
}

/// An async stream over one end of a socket pair, and the other end as a std socket.
fn stream_over_pair() -> (HvStream, std::os::unix::net::UnixStream) {
    let (a, b) = stream_pair().unwrap();
    let std_stream = crate::HvStream {
        inner: Socket::from_fd(a),
        local: addr(VmId::LOOPBACK),
        peer: addr(VmId::PARENT),
    };
    (
        HvStream::from_std(std_stream).unwrap(),
        std::os::unix::net::UnixStream::from(b),
    )
}

/// Two async streams connected to each other.
fn async_pair() -> (HvStream, HvStream) {
    let (a, b) = stream_pair().unwrap();
    let make = |fd: OwnedFd| {
        HvStream::new(
            Socket::from_fd(fd),
            addr(VmId::LOOPBACK),
            addr(VmId::LOOPBACK),
        )
        .unwrap()
    };
    (make(a), make(b))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[::tokio::test]
async fn bulk_both_ways_with_half_close_through_split_halves() {
    let (client, server) = async_pair();
    let data = pattern(4 << 20);
    // The server echoes until EOF, then half-closes.
    let echo = ::tokio::spawn(async move {
        let (mut rd, mut wr) = server.into_split();
        let n = ::tokio::io::copy(&mut rd, &mut wr).await.unwrap();
        wr.shutdown().await.unwrap();
        n
    });
    let (mut rd, mut wr) = ::tokio::io::split(client);
    let sent = data.clone();
    let writer = ::tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    rd.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echo.await.unwrap(), data.len() as u64);
    assert!(back == data, "echoed bytes differ");
}

#[::tokio::test]
async fn shutdown_is_a_half_close() {
    let (mut stream, mut peer) = stream_over_pair();
    stream.write_all(b"bye").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap(); // EOF arrives: the write side is shut
    assert_eq!(got, b"bye");
    // This end can still read.
    peer.write_all(b"still here").unwrap();
    drop(peer);
    let mut back = String::new();
    stream.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "still here");
}

#[::tokio::test]
async fn dropping_the_write_half_sends_eof_and_forget_does_not() {
    let (stream, mut peer) = stream_over_pair();
    let (_rd, wr) = stream.into_split();
    drop(wr);
    let mut buf = [0u8; 1];
    assert_eq!(peer.read(&mut buf).unwrap(), 0);

    let (stream, peer) = stream_over_pair();
    let (_rd, wr) = stream.into_split();
    wr.forget();
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        (&peer).read(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
}

#[::tokio::test]
async fn halves_reunite_only_with_their_own() {
    let (one, _p1) = stream_over_pair();
    let (two, _p2) = stream_over_pair();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&one);
    let (r1, w1) = one.into_split();
    let (r2, w2) = two.into_split();
    assert_eq!(r1.peer_addr().unwrap(), addr(VmId::PARENT));
    assert_eq!(w2.local_addr().unwrap(), addr(VmId::LOOPBACK));
    let super::ReuniteError(r1, w2) = r1.reunite(w2).unwrap_err();
    let one = r1.reunite(w1).unwrap();
    assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&one), fd);
    r2.reunite(w2).unwrap();
}

#[::tokio::test]
async fn from_std_and_back_keep_the_socket_and_addresses() {
    let (stream, mut peer) = stream_over_pair();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let mut std_stream = stream.into_std().unwrap();
    assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&std_stream), fd);
    assert_eq!(std_stream.local_addr().unwrap(), addr(VmId::LOOPBACK));
    assert_eq!(std_stream.peer_addr().unwrap(), addr(VmId::PARENT));
    // Still non-blocking, as tokio's into_std leaves it.
    let mut buf = [0u8; 1];
    assert_eq!(
        std_stream.read(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    std_stream.set_nonblocking(false).unwrap();
    peer.write_all(b"x").unwrap();
    std_stream.read_exact(&mut buf).unwrap();
    let mut again = HvStream::try_from(std_stream).unwrap();
    peer.write_all(b"y").unwrap();
    again.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"y");
}

#[::tokio::test]
async fn a_read_loses_to_a_timer_in_select_and_loses_no_bytes() {
    let (mut stream, mut peer) = stream_over_pair();
    let mut buf = [0u8; 4];
    ::tokio::select! {
        _ = stream.read(&mut buf) => panic!("nothing was sent"),
        () = ::tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    peer.write_all(b"late").unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late");
}

#[::tokio::test]
async fn copy_bidirectional_joins_two_streams() {
    let (mut a_near, a_far) = async_pair();
    let (mut b_near, b_far) = async_pair();
    let proxy =
        ::tokio::spawn(
            async move { ::tokio::io::copy_bidirectional(&mut a_near, &mut b_near).await },
        );
    let (mut a_far, mut b_far) = (a_far, b_far);
    a_far.write_all(b"to b").await.unwrap();
    a_far.shutdown().await.unwrap();
    b_far.write_all(b"to a").await.unwrap();
    b_far.shutdown().await.unwrap();
    let (mut at_a, mut at_b) = (String::new(), String::new());
    a_far.read_to_string(&mut at_a).await.unwrap();
    b_far.read_to_string(&mut at_b).await.unwrap();
    assert_eq!((at_a.as_str(), at_b.as_str()), ("to a", "to b"));
    assert_eq!(proxy.await.unwrap().unwrap(), (4, 4));
}

// ---- the listener, with the test playing hvsockd on the session's other end ----

/// An async listener whose session's other end is returned.
fn listener_over_pair() -> (HvListener, OwnedFd) {
    let (ours, daemon) = seqpacket_pair().unwrap();
    let bound = hvsock_proto::unix::Received {
        frame: Frame::Bound {
            req: 1,
            local: wire(VmId::WILDCARD),
        },
        fd: None,
    };
    let inner = crate::sys::Listener::Provider(
        provider::Listener::bound(
            ours,
            bound,
            std::path::Path::new("/nonexistent/hvsock-test.sock"),
            SockAddrHv::new(VmId::WILDCARD, crate::ServiceId::from_vsock_port(1)),
            8,
        )
        .unwrap(),
    );
    let listener = HvListener::from_std(crate::HvListener { inner }).unwrap();
    (listener, daemon)
}

/// Offers one connection on the session, as hvsockd does; returns the connector's end.
fn offer(daemon: &OwnedFd, from: VmId) -> std::os::unix::net::UnixStream {
    let (theirs, ours) = stream_pair().unwrap();
    let frame = Frame::Incoming {
        local: wire(VmId::WILDCARD),
        peer: wire(from),
    };
    send_frame(daemon, &frame, Some(ours.as_fd()), false).unwrap();
    std::os::unix::net::UnixStream::from(theirs)
}

/// The total of the `Ack` counts waiting on the daemon's end.
fn acks(daemon: &OwnedFd) -> u32 {
    let mut total = 0;
    while let Ok(received) = recv_frame(daemon, true) {
        match received.frame {
            Frame::Ack { count } => total += count,
            other => panic!("unexpected {other:?}"),
        }
    }
    total
}

#[::tokio::test]
async fn accept_takes_an_incoming_connection_and_acks_it() {
    let (listener, daemon) = listener_over_pair();
    assert_eq!(listener.local_addr().unwrap(), addr(VmId::WILDCARD));
    let vm = VmId(crate::Guid::new_random());
    let mut connector = offer(&daemon, vm);
    let (mut stream, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, addr(vm));
    assert_eq!(stream.peer_addr().unwrap(), addr(vm));
    assert_eq!(acks(&daemon), 1);
    connector.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    // poll_accept too.
    let _c2 = offer(&daemon, vm);
    let (_s2, peer) = std::future::poll_fn(|cx| listener.poll_accept(cx))
        .await
        .unwrap();
    assert_eq!(peer, addr(vm));
    assert_eq!(acks(&daemon), 1);
}

#[::tokio::test]
async fn dropping_an_accept_future_loses_no_connection() {
    let (listener, daemon) = listener_over_pair();
    for round in 0..20u32 {
        // A pending accept, dropped by the timer.
        ::tokio::select! {
            _ = listener.accept() => panic!("nothing was offered in round {round}"),
            () = ::tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let _connector = offer(&daemon, VmId::LOOPBACK);
        // And one that may or may not win against a timer of zero.
        let won = ::tokio::select! {
            biased;
            () = ::tokio::time::sleep(Duration::ZERO) => None,
            accepted = listener.accept() => Some(accepted.unwrap()),
        };
        if won.is_none() {
            ::tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("the offered connection was lost")
                .unwrap();
        }
    }
    assert_eq!(acks(&daemon), 20);
}

#[::tokio::test]
async fn an_ack_that_would_block_is_sent_by_the_next_accept_call() {
    let (listener, daemon) = listener_over_pair();
    // Fill the listener's send buffer, as a hvsockd that stopped reading would.
    let fill = Frame::Ack { count: 0 };
    let mut filled = 0;
    while send_frame(listener.as_fd(), &fill, None, true).is_ok() {
        filled += 1;
    }
    assert!(filled > 0);
    let _c = offer(&daemon, VmId::LOOPBACK);
    listener.accept().await.unwrap(); // its Ack would block: carried
    assert_eq!(acks(&daemon), 0, "the filler acks count 0");
    // hvsockd reads again; the next accept call sends the carried ack before it waits.
    ::tokio::select! {
        _ = listener.accept() => panic!("nothing was offered"),
        () = ::tokio::time::sleep(Duration::from_millis(20)) => {}
    }
    assert_eq!(acks(&daemon), 1);
}

#[::tokio::test]
async fn a_session_closed_by_hvsockd_fails_accept_with_connection_aborted_without_patience() {
    let (listener, daemon) = listener_over_pair();
    listener.set_rebind_patience(Duration::ZERO);
    drop(daemon);
    let err = listener.accept().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
}

#[::tokio::test]
async fn a_listener_whose_hvsockd_never_comes_back_fails_after_its_patience() {
    let (listener, daemon) = listener_over_pair();
    listener.set_rebind_patience(Duration::from_millis(200));
    drop(daemon);
    let started = std::time::Instant::now();
    // Its endpoint does not exist: hvsockd is not back, and the re-bind gives up.
    let err = listener.accept().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(150), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("binding"), "{err}");
}

#[::tokio::test]
async fn listener_into_std_and_back() {
    let (listener, daemon) = listener_over_pair();
    let std_listener = listener.into_std().unwrap();
    std_listener.set_nonblocking(false).unwrap();
    let _c = offer(&daemon, VmId::LOOPBACK);
    std_listener.accept().unwrap();
    let listener = HvListener::try_from(std_listener).unwrap();
    let _c = offer(&daemon, VmId::LOOPBACK);
    listener.accept().await.unwrap();
    assert_eq!(acks(&daemon), 2);
}

/// Regression: hvsockd killed with our `Ack`s unread makes the kernel report `ECONNRESET` on
/// the session once, before the `Incoming` frames still queued there; those connections must
/// still be accepted (binding again at once closed the old session and reset them).
#[::tokio::test]
async fn connections_queued_when_hvsockd_dies_with_unread_acks_are_still_accepted() {
    let (listener, daemon) = listener_over_pair();
    listener.set_rebind_patience(Duration::ZERO);
    send_frame(listener.as_fd(), &Frame::Ack { count: 1 }, None, true).unwrap();
    let mut connector = offer(&daemon, VmId::LOOPBACK);
    drop(daemon);
    let (mut conn, _) = listener.accept().await.expect("the queued connection");
    connector.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    ::tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"still here");
    let err = listener.accept().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
}
