//! The connect path against the fixture world: every way a connect can end, and what is counted.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{Fixture, fixture};
use hvsock_proto::unix::stream_pair;

const T: Duration = Duration::from_millis(200);

fn connect(f: &Fixture, from: VmId, vm: VmId, service: ServiceId, conn: Conn) -> Connecting {
    f.broker
        .connect(from, SockAddrHv::new(vm, service), conn, T, Instant::now())
}

fn now(c: Connecting) -> Settled {
    match c {
        Connecting::Now(s) => s,
        Connecting::Later(_) => panic!("answered later"),
    }
}

async fn later(c: Connecting) -> Settled {
    match c {
        Connecting::Later(p) => p.await,
        Connecting::Now(s) => panic!("answered now: {s:?}"),
    }
}

fn refused(s: &Settled) -> (&'static str, ErrorCode) {
    let r = s.result.as_ref().expect_err("refused");
    (r.reason, r.code)
}

#[test]
fn a_route_refusal_is_answered_at_once_and_counted() {
    let f = fixture();
    let stranger = VmId(hvsock::Guid::from_bytes([0x77; 16]));
    let s = now(connect(&f, f.sandbox, stranger, f.echo, Conn::Pair));
    assert_eq!(refused(&s), ("unreachable", ErrorCode::Unreachable));
    let s = now(connect(&f, f.sandbox, VmId::PARENT, f.off, Conn::Pair));
    assert_eq!(refused(&s), ("disabled", ErrorCode::Denied));
    let s = now(connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair));
    assert_eq!(refused(&s), ("nothing_listens", ErrorCode::Refused));
    let c = f.counts("box", "echo").unwrap();
    assert_eq!(c.refused["nothing_listens"], 1);
    assert_eq!(c.established, 0);
}

#[test]
fn a_listener_with_room_gets_the_connection_at_once() {
    let f = fixture();
    let (_l, keep) = f.bind(f.root, VmId::ZERO, f.echo, 4);
    let s = now(connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair));
    assert!(matches!(s.result, Ok(Some(_))));
    assert_eq!(s.local, Some(SockAddrHv::new(f.sandbox, f.echo)));
    assert_eq!(s.peer, Some(SockAddrHv::new(f.root, f.echo)));
    assert_eq!(keep.0.lock().unwrap().len(), 1);
    // Established only once the caller says it handed the connection over.
    assert!(f.counts("box", "echo").is_none());
    f.broker.established(&s);
    assert_eq!(f.counts("box", "echo").unwrap().established, 1);
}

#[tokio::test]
async fn a_full_backlog_answers_later_when_a_slot_frees_or_the_time_is_up() {
    let f = fixture();
    let (l, _keep) = f.bind(f.root, VmId::ZERO, f.echo, 1);
    now(connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair));
    let waiting = connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair);
    l.ack(1);
    assert!(later(waiting).await.result.is_ok());
    let s = later(connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair)).await;
    assert_eq!(refused(&s), ("timed_out", ErrorCode::TimedOut));
    let pending = connect(&f, f.sandbox, VmId::PARENT, f.echo, Conn::Pair);
    l.close();
    let s = later(pending).await;
    assert_eq!(refused(&s), ("listener_closed", ErrorCode::Refused));
    let c = f.counts("box", "echo").unwrap();
    assert_eq!(
        (c.refused["timed_out"], c.refused["listener_closed"]),
        (1, 1)
    );
}

#[test]
fn a_guest_is_refused_what_it_cannot_take() {
    let f = fixture();
    let (fd, _peer) = stream_pair().unwrap();
    let s = now(connect(&f, f.root, f.vm, f.echo, Conn::Fd(fd)));
    assert_eq!(refused(&s), ("vm_to_vm", ErrorCode::Unreachable));
    let s = now(connect(&f, f.root, f.bare, f.echo, Conn::Pair));
    assert_eq!(refused(&s), ("no_attachment", ErrorCode::Refused));
    let s = now(connect(&f, f.root, f.vm, f.guid, Conn::Pair));
    assert_eq!(refused(&s), ("not_template", ErrorCode::Unsupported));
    let message = s.result.unwrap_err().message;
    assert!(
        message.contains("guid (") && message.contains("VM vm"),
        "{message}"
    );
}

/// A transport that accepts (`true`) or refuses every connect.
#[derive(Debug)]
struct Answers(bool);

impl GuestTransport for Answers {
    fn connect(&self, port: u32, _: Duration) -> guest::GuestConnect {
        let accept = self.0;
        Box::pin(async move {
            if accept && port == 2761 {
                Ok(stream_pair()
                    .map_err(|e| Refused::new(ErrorCode::Internal, "x", e.to_string()))?
                    .0)
            } else {
                Err(Refused::new(ErrorCode::Refused, "vm_refused", "no"))
            }
        })
    }
}

#[tokio::test]
async fn a_registered_guest_transport_answers_while_it_lives() {
    let f = fixture();
    let transport = f.broker.serve_guest(f.vm, Arc::new(Answers(true)));
    let s = later(connect(&f, f.root, f.vm, f.echo, Conn::Pair)).await;
    assert!(matches!(s.result, Ok(Some(_))));
    drop(transport);
    let refuses = f.broker.serve_guest(f.vm, Arc::new(Answers(false)));
    let s = later(connect(&f, f.root, f.vm, f.echo, Conn::Pair)).await;
    assert_eq!(refused(&s), ("vm_refused", ErrorCode::Refused));
    drop(refuses);
    // Back to the VM's hybrid-vsock socket, where nothing listens.
    let s = later(connect(&f, f.root, f.vm, f.echo, Conn::Pair)).await;
    assert_eq!(refused(&s), ("vm_not_running", ErrorCode::Unreachable));
    // The bare VM has no attachment, unless a transport serves it.
    let _t = f.broker.serve_guest(f.bare, Arc::new(Answers(true)));
    let s = later(connect(&f, f.root, f.bare, f.echo, Conn::Pair)).await;
    assert!(s.result.is_ok());
}
