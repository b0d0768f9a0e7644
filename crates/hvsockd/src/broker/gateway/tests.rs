//! A device's gateway session over a socket pair, against the fixture world: registration and
//! its refusals, host-to-guest connects accepted, rejected, timed out and orphaned by a device
//! that leaves, and the guest's own connects on the same session.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use hvsock::{SockAddrHv, VmId};
use hvsock_proto::unix::seqpacket_pair;
use hvsock_proto::{ErrorCode, Frame, WireAddr};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::{Connecting, Settled};
use crate::config::Limits;
use crate::listeners::Conn;
use crate::session::io::{FrameIo, SeqPacket};
use crate::testing::{Fixture, fixture};

struct Device {
    sock: SeqPacket,
    task: tokio::task::JoinHandle<()>,
}

fn nonblocking(fd: OwnedFd) -> SeqPacket {
    rustix::io::ioctl_fionbio(&fd, true).unwrap();
    SeqPacket::new(fd).unwrap()
}

async fn session(f: &Fixture, partition: VmId) -> Device {
    let (ours, theirs) = seqpacket_pair().unwrap();
    let task = tokio::spawn(crate::session::serve(
        f.broker.clone(),
        Limits::default(),
        partition,
        Arc::new(nonblocking(ours)),
        CancellationToken::new(),
    ));
    Device {
        sock: nonblocking(theirs),
        task,
    }
}

async fn recv(d: &Device) -> Option<(Frame, Option<OwnedFd>)> {
    match tokio::time::timeout(Duration::from_secs(5), d.sock.recv()).await {
        Ok(Ok(r)) => Some((r.frame, r.fd)),
        Ok(Err(e)) if e.is_disconnect() => None,
        other => panic!("receiving: {other:?}"),
    }
}

/// A device of the fixture's VM without hybrid vsock (`bare`), registered.
async fn device(f: &Fixture) -> Device {
    let d = session(f, f.bare).await;
    d.sock.send(&Frame::Gateway { req: 1 }, None).await.unwrap();
    let Some((Frame::Bound { req: 1, local }, None)) = recv(&d).await else {
        panic!("not bound")
    };
    assert_eq!(SockAddrHv::from(local).vm_id, f.bare);
    d
}

fn host_connect(f: &Fixture, timeout: Duration) -> Connecting {
    f.broker.connect(
        f.root,
        SockAddrHv::new(f.bare, f.echo),
        Conn::Pair,
        timeout,
        Instant::now(),
    )
}

async fn later(c: Connecting) -> Settled {
    match c {
        Connecting::Later(p) => p.await,
        Connecting::Now(s) => panic!("answered now: {s:?}"),
    }
}

#[tokio::test]
async fn an_accepted_guest_connect_splices_the_connectors_end_to_the_devices() {
    let f = fixture();
    let d = device(&f).await;
    let pending = tokio::spawn(later(host_connect(&f, Duration::from_secs(5))));
    let Some((Frame::GuestConnect { req, port }, Some(device_end))) = recv(&d).await else {
        panic!("no GuestConnect with a descriptor")
    };
    assert_eq!(port, 2761);
    d.sock.send(&Frame::Accepted { req }, None).await.unwrap();
    let settled = pending.await.unwrap();
    let end = settled.result.unwrap().unwrap();
    let (mut host, mut dev) = (
        std::os::unix::net::UnixStream::from(end),
        std::os::unix::net::UnixStream::from(device_end),
    );
    host.write_all(b"to the guest").unwrap();
    let mut buf = [0; 12];
    dev.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to the guest");
}

#[tokio::test]
async fn a_rejected_guest_connect_is_refused_at_once_with_the_devices_words() {
    let f = fixture();
    let d = device(&f).await;
    let started = Instant::now();
    let pending = tokio::spawn(later(host_connect(&f, Duration::from_secs(30))));
    let Some((Frame::GuestConnect { req, .. }, Some(_))) = recv(&d).await else {
        panic!("no GuestConnect")
    };
    let message = "nothing listens on vsock port 2761 in the guest".to_owned();
    d.sock
        .send(
            &Frame::Rejected {
                req,
                code: ErrorCode::Refused,
                message: message.clone(),
            },
            None,
        )
        .await
        .unwrap();
    let refused = pending.await.unwrap().result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (refused.code, refused.reason, refused.message),
        (ErrorCode::Refused, "guest_refused", message)
    );
}

#[tokio::test]
async fn a_silent_device_times_out_and_a_late_answer_is_ignored() {
    let f = fixture();
    let d = device(&f).await;
    let settled = tokio::spawn(later(host_connect(&f, Duration::from_millis(100))));
    let Some((Frame::GuestConnect { req, .. }, Some(_))) = recv(&d).await else {
        panic!("no GuestConnect")
    };
    let refused = settled.await.unwrap().result.unwrap_err();
    assert_eq!(refused.code, ErrorCode::TimedOut);
    // Answering late neither breaks the session nor settles anything.
    d.sock.send(&Frame::Accepted { req }, None).await.unwrap();
    let again = tokio::spawn(later(host_connect(&f, Duration::from_secs(5))));
    let Some((Frame::GuestConnect { req: second, .. }, Some(_))) = recv(&d).await else {
        panic!("the session stopped serving")
    };
    assert_ne!(second, req);
    d.sock
        .send(&Frame::Accepted { req: second }, None)
        .await
        .unwrap();
    assert!(again.await.unwrap().result.is_ok());
}

#[tokio::test]
async fn a_device_that_leaves_fails_its_connects_at_once_and_frees_the_vm() {
    let f = fixture();
    let d = device(&f).await;
    let pending = tokio::spawn(later(host_connect(&f, Duration::from_secs(30))));
    assert!(matches!(
        recv(&d).await,
        Some((Frame::GuestConnect { .. }, _))
    ));
    let started = Instant::now();
    drop(d.sock);
    d.task.await.unwrap();
    let refused = pending.await.unwrap().result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (refused.code, refused.reason),
        (ErrorCode::Refused, "device_gone")
    );
    // No device now: refused at once, naming the way to serve the VM.
    match host_connect(&f, Duration::from_secs(1)) {
        Connecting::Now(s) => {
            let r = s.result.unwrap_err();
            assert_eq!(r.reason, "no_attachment");
            assert!(r.message.contains("hvsock-vhost"), "{}", r.message);
        }
        Connecting::Later(_) => panic!("waited for a device that is gone"),
    }
    // And a new device may register.
    let _d = device(&f).await;
}

#[tokio::test]
async fn one_device_per_vm_never_for_the_host_nor_a_hybrid_vsock_vm() {
    let f = fixture();
    let _first = device(&f).await;
    for (partition, code, words) in [
        (f.bare, ErrorCode::AddrInUse, "already has a device"),
        (f.root, ErrorCode::Unsupported, "host partition"),
        (f.vm, ErrorCode::Unsupported, "without --hybrid-vsock"),
    ] {
        let d = session(&f, partition).await;
        d.sock.send(&Frame::Gateway { req: 5 }, None).await.unwrap();
        let Some((
            Frame::Error {
                req: 5,
                code: got,
                message,
            },
            _,
        )) = recv(&d).await
        else {
            panic!("not refused")
        };
        assert_eq!(got, code, "{message}");
        assert!(message.contains(words), "{message}");
        // A refused gateway leaves the session fresh: it may still connect.
        d.sock
            .send(
                &Frame::Connect {
                    req: 6,
                    target: SockAddrHv::new(VmId(hvsock::Guid::from_bytes([0x77; 16])), f.echo)
                        .into(),
                    timeout_ms: 1000,
                },
                None,
            )
            .await
            .unwrap();
        assert!(matches!(
            recv(&d).await,
            Some((Frame::Error { req: 6, .. }, _))
        ));
    }
}

#[tokio::test]
async fn the_guests_connects_go_through_the_gateway_session_and_stray_answers_end_it() {
    let f = fixture();
    let (_listener, keep) = f.bind(f.root, VmId::ZERO, f.echo, 4);
    let d = device(&f).await;
    let target: WireAddr = SockAddrHv::new(VmId::PARENT, f.echo).into();
    d.sock
        .send(
            &Frame::Connect {
                req: 9,
                target,
                timeout_ms: 1000,
            },
            None,
        )
        .await
        .unwrap();
    let Some((Frame::Connected { req: 9, local, .. }, Some(_))) = recv(&d).await else {
        panic!("not connected")
    };
    // The connector is the VM itself: its identity is the endpoint's.
    assert_eq!(SockAddrHv::from(local).vm_id, f.bare);
    assert_eq!(keep.0.lock().unwrap().len(), 1);
    // An Ack is not a gateway's frame: the session ends, and the VM has no device.
    d.sock.send(&Frame::Ack { count: 1 }, None).await.unwrap();
    assert!(matches!(
        recv(&d).await,
        Some((
            Frame::Error {
                code: ErrorCode::Protocol,
                ..
            },
            _
        ))
    ));
    d.task.await.unwrap();
    assert!(matches!(
        host_connect(&f, Duration::from_secs(1)),
        Connecting::Now(_)
    ));
}

#[tokio::test]
async fn a_partition_added_without_hybrid_vsock_is_a_guest_while_its_device_lives() {
    // `hvsock vm add NAME` registers such a partition; without a device a host connect into
    // it finds no listener, with one it reaches the device.
    let f = fixture();
    let connect = |f: &Fixture| {
        f.broker.connect(
            f.root,
            SockAddrHv::new(f.sandbox, f.echo),
            Conn::Pair,
            Duration::from_secs(5),
            Instant::now(),
        )
    };
    let Connecting::Now(s) = connect(&f) else {
        panic!("waited")
    };
    assert_eq!(s.result.unwrap_err().reason, "nothing_listens");
    let d = session(&f, f.sandbox).await;
    d.sock.send(&Frame::Gateway { req: 1 }, None).await.unwrap();
    assert!(matches!(
        recv(&d).await,
        Some((Frame::Bound { req: 1, .. }, None))
    ));
    assert!(f.broker.has_device(f.sandbox));
    let pending = tokio::spawn(later(connect(&f)));
    let Some((Frame::GuestConnect { req, port: 2761 }, Some(_))) = recv(&d).await else {
        panic!("the device was not asked")
    };
    d.sock.send(&Frame::Accepted { req }, None).await.unwrap();
    assert!(pending.await.unwrap().result.is_ok());
    drop(d.sock);
    d.task.await.unwrap();
    assert!(!f.broker.has_device(f.sandbox));
    let Connecting::Now(s) = connect(&f) else {
        panic!("waited")
    };
    assert_eq!(s.result.unwrap_err().reason, "nothing_listens");
}
