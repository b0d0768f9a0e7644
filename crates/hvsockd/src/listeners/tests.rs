//! The backlog against a sink that records what it is given and can be made full or gone.

#![allow(clippy::unwrap_used)]

use super::*;
use hvsock::{Guid, ServiceId};

#[derive(Debug, Default)]
struct State {
    delivered: Vec<OwnedFd>,
    full: bool,
    gone: bool,
}

#[derive(Debug, Default)]
struct TestSink(Mutex<State>);

impl TestSink {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl Sink for TestSink {
    fn deliver(&self, _: WireAddr, _: WireAddr, fd: OwnedFd) -> Result<(), Undeliverable> {
        let mut s = self.state();
        if s.gone {
            return Err(Undeliverable::Gone(io::Error::from(
                io::ErrorKind::BrokenPipe,
            )));
        }
        if s.full {
            return Err(Undeliverable::Full(fd));
        }
        s.delivered.push(fd);
        Ok(())
    }
}

fn listener(backlog: u32) -> (Listener, Arc<TestSink>) {
    let sink = Arc::new(TestSink::default());
    let addr = SockAddrHv::new(VmId::ZERO, ServiceId(Guid::from_bytes([7; 16])));
    let l = Listener::new(1, VmId::ZERO, addr, backlog, None, sink.clone());
    (l, sink)
}

fn offer(l: &Listener) -> Offer {
    let a = WireAddr::default();
    l.offer(a, a, Conn::Pair)
}

#[test]
fn offers_within_the_backlog_are_delivered_at_once() {
    let (l, sink) = listener(2);
    assert!(matches!(offer(&l), Offer::Delivered(Some(_))));
    assert!(matches!(offer(&l), Offer::Delivered(Some(_))));
    assert_eq!(l.pending(), (2, 0));
    assert_eq!(l.accepted(), 2);
    assert_eq!(sink.state().delivered.len(), 2);
}

#[tokio::test]
async fn a_full_backlog_makes_connectors_wait_in_order_until_an_ack() {
    let (l, sink) = listener(1);
    assert!(matches!(offer(&l), Offer::Delivered(_)));
    let Offer::Waiting(first) = offer(&l) else {
        panic!("not waiting")
    };
    let Offer::Waiting(second) = offer(&l) else {
        panic!("not waiting")
    };
    assert_eq!(l.pending(), (1, 2));
    l.ack(1);
    assert!(first.await.unwrap().unwrap().is_some());
    assert_eq!(l.pending(), (1, 1));
    l.ack(1);
    assert!(second.await.unwrap().unwrap().is_some());
    assert_eq!(sink.state().delivered.len(), 3);
}

#[test]
fn a_connector_that_gave_up_is_skipped() {
    let (l, sink) = listener(1);
    let _ = offer(&l);
    let Offer::Waiting(gave_up) = offer(&l) else {
        panic!("not waiting")
    };
    drop(gave_up);
    let Offer::Waiting(mut stays) = offer(&l) else {
        panic!("not waiting")
    };
    l.ack(1);
    assert!(stays.try_recv().unwrap().unwrap().is_some());
    assert_eq!(sink.state().delivered.len(), 2);
}

#[test]
fn a_full_sink_stalls_the_listener_until_the_next_ack() {
    let (l, sink) = listener(4);
    sink.state().full = true;
    let Offer::Waiting(mut rx) = offer(&l) else {
        panic!("not waiting")
    };
    sink.state().full = false;
    // Stalled: even with room in the backlog, the next offer queues behind.
    let Offer::Waiting(mut rx2) = offer(&l) else {
        panic!("not waiting")
    };
    l.ack(0);
    assert!(rx.try_recv().unwrap().unwrap().is_some());
    assert!(rx2.try_recv().unwrap().unwrap().is_some());
    assert_eq!(l.pending(), (2, 0));
}

#[test]
fn a_gone_sink_refuses_and_closes() {
    let (l, sink) = listener(1);
    let _ = offer(&l);
    let Offer::Waiting(mut rx) = offer(&l) else {
        panic!("not waiting")
    };
    sink.state().gone = true;
    l.ack(1);
    let why = rx.try_recv().unwrap().unwrap_err();
    assert!(why.contains("session failed"), "{why}");
    assert!(matches!(offer(&l), Offer::Refused(_)));
    // A gone sink found by an offer closes too.
    let (l, sink) = listener(1);
    sink.state().gone = true;
    let Offer::Refused(why) = offer(&l) else {
        panic!("not refused")
    };
    assert!(why.contains("session failed"), "{why}");
    assert!(matches!(offer(&l), Offer::Refused(_)));
}

#[test]
fn close_refuses_every_waiting_connector_and_every_later_offer() {
    let (l, _sink) = listener(1);
    let _ = offer(&l);
    let waiting: Vec<_> = (0..3)
        .map(|_| match offer(&l) {
            Offer::Waiting(rx) => rx,
            _ => panic!("not waiting"),
        })
        .collect();
    l.close();
    for mut rx in waiting {
        assert_eq!(rx.try_recv().unwrap().unwrap_err(), "the listener closed");
    }
    assert!(matches!(offer(&l), Offer::Refused(why) if why == "the listener closed"));
}

#[test]
fn the_waiting_line_is_bounded() {
    let (l, _sink) = listener(1);
    let _ = offer(&l);
    let mut held = Vec::new();
    for _ in 0..MAX_WAITING {
        match offer(&l) {
            Offer::Waiting(rx) => held.push(rx),
            _ => panic!("not waiting"),
        }
    }
    let Offer::Refused(why) = offer(&l) else {
        panic!("not refused")
    };
    assert!(why.contains("more connectors wait"), "{why}");
}

#[test]
fn a_connection_the_listener_gets_as_it_is_comes_back_when_full() {
    let (l, sink) = listener(1);
    sink.state().full = true;
    let (fd, _other) = stream_pair().unwrap();
    let a = WireAddr::default();
    let Offer::Waiting(mut rx) = l.offer(a, a, Conn::Fd(fd)) else {
        panic!("not waiting")
    };
    sink.state().full = false;
    l.ack(0);
    // The listener got the socket itself; the connector gets no end of its own.
    assert!(rx.try_recv().unwrap().unwrap().is_none());
    assert_eq!(sink.state().delivered.len(), 1);
}
