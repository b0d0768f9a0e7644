#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use hvsock::{Guid, VmId};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::intake::{parse_list, sort};
use super::*;

/// What a service manager received: the message and whether a descriptor came with it.
fn received(rx: &UnixDatagram) -> Vec<(String, bool)> {
    rx.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let Ok(msg) = rustix::net::recvmsg(rx, &mut iov, &mut control, RecvFlags::empty()) else {
            return out;
        };
        let n = msg.bytes;
        let fds: Vec<OwnedFd> = control
            .drain()
            .flat_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        out.push((
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            !fds.is_empty(),
        ));
    }
}

fn vm(n: u8) -> VmId {
    VmId(Guid::from_bytes([n; 16]))
}

fn socket() -> Socket {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    Arc::new(OwnedFd::from(a))
}

fn listener_record(partition: VmId) -> SessionRecord {
    SessionRecord {
        partition,
        state: SessionState::Listener {
            addr: hvsock_proto::WireAddr::default(),
            backlog: 1,
            outstanding: 0,
        },
    }
}

#[test]
fn durable_sockets_are_stored_renamed_and_removed_with_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let holder = Arc::new(Holder::default());
    // Held before the store is known: stored when it is.
    let endpoint = holder.hold(socket(), Kept::Endpoint(vm(1)));
    holder.use_store(FdStore::new(path.into_os_string(), 3).unwrap());
    let ep_name = Kept::Endpoint(vm(1)).name();
    assert_eq!(
        received(&rx),
        [(format!("FDSTORE=1\nFDNAME={ep_name}"), true)]
    );

    // A fresh session is not stored; once bound it is; its end removes it.
    let fresh = SessionRecord {
        partition: vm(2),
        state: SessionState::Fresh,
    };
    let session = holder.hold(socket(), Kept::Session(7, fresh));
    assert_eq!(received(&rx), []);
    session.set(Kept::Session(7, listener_record(vm(2))), None);
    let bound = Kept::Session(7, listener_record(vm(2))).name();
    assert_eq!(
        received(&rx),
        [(format!("FDSTORE=1\nFDNAME={bound}"), true)]
    );
    // A new state: removed under the old name, stored under the new one.
    let connector = SessionRecord {
        partition: vm(2),
        state: SessionState::Connector(vec![WaitingConnect {
            req: 1,
            target: hvsock_proto::WireAddr::default(),
            deadline_ms: 5,
        }]),
    };
    session.set(Kept::Session(7, connector.clone()), None);
    let waiting = Kept::Session(7, connector).name();
    assert_eq!(
        received(&rx),
        [
            (format!("FDSTOREREMOVE=1\nFDNAME={bound}"), false),
            (format!("FDSTORE=1\nFDNAME={waiting}"), true)
        ]
    );
    drop(session);
    assert_eq!(
        received(&rx),
        [(format!("FDSTOREREMOVE=1\nFDNAME={waiting}"), false)]
    );

    // The store's size is respected: two more fit (max 3 with the endpoint), the third not.
    let a = holder.hold(socket(), Kept::Endpoint(vm(3)));
    let b = holder.hold(socket(), Kept::Endpoint(vm(4)));
    let c = holder.hold(socket(), Kept::Endpoint(vm(5)));
    assert_eq!(received(&rx).len(), 2);
    drop(c);
    assert_eq!(received(&rx), [], "what was not stored is not removed");

    // Adopted sockets are in the store already; stopping freezes it.
    let adopted = holder.adopt(
        socket(),
        Kept::Endpoint(vm(6)),
        Kept::Endpoint(vm(6)).name(),
    );
    assert_eq!(received(&rx), []);
    holder.freeze(std::time::Duration::ZERO);
    drop((endpoint, a, b, adopted));
    assert_eq!(
        received(&rx),
        [],
        "a stopping hvsockd leaves the store as it is"
    );
    assert!(holder.is_empty());
}

#[test]
fn a_snapshot_names_every_socket_with_its_live_state() {
    let holder = Arc::new(Holder::default());
    let fresh = SessionRecord {
        partition: vm(1),
        state: SessionState::Fresh,
    };
    let _s = holder.hold(socket(), Kept::Session(holder.session_number(), fresh));
    let _h = holder.hold_activated(socket(), "host");
    let _a = holder.adopt(
        socket(),
        Kept::Session(41, listener_record(vm(1))),
        "old".into(),
    );
    assert_eq!(
        holder.session_number(),
        42,
        "numbers stay above resumed ones"
    );
    let mut names: Vec<String> = holder.snapshot().into_iter().map(|(_, n)| n).collect();
    names.sort();
    assert_eq!(names.len(), 3);
    assert_eq!(names[0], "host");
    assert!(matches!(
        Kept::parse(&names[1]).unwrap(),
        Kept::Session(
            0,
            SessionRecord {
                state: SessionState::Fresh,
                ..
            }
        )
    ));
    assert!(matches!(
        Kept::parse(&names[2]).unwrap(),
        Kept::Session(
            41,
            SessionRecord {
                state: SessionState::Listener { .. },
                ..
            }
        )
    ));
}

#[test]
fn the_hand_over_list_is_read_strictly() {
    assert_eq!(
        parse_list("3 hv1.host\n10 hv1.s1.00\n\n").unwrap(),
        [(3, "hv1.host".to_owned()), (10, "hv1.s1.00".to_owned())]
    );
    for bad in ["3", "x hv1.host", "2 hv1.host", "3 ", "3 a\n3 b", "-1 a"] {
        let e = parse_list(bad).expect_err(bad).to_string();
        assert!(e.contains("is not \"<descriptor> <name>\""), "{bad:?}: {e}");
    }
}

#[test]
fn kept_names_are_sorted_from_socket_activation_and_bad_ones_refused() {
    let fd = || OwnedFd::from(std::os::unix::net::UnixStream::pair().unwrap().0);
    let (resumed, rest) = sort(vec![
        (fd(), "host".into()),
        (fd(), "hvsockd.socket".into()),
        (fd(), Kept::Host.name()),
        (fd(), Kept::Endpoint(vm(1)).name()),
        (fd(), Kept::GuestPort { vm: vm(1), port: 9 }.name()),
        (fd(), Kept::Session(3, listener_record(vm(1))).name()),
        (fd(), "hv1.s4.00".into()),
        (fd(), "hv2.anything".into()),
    ]);
    let rest: Vec<String> = rest.into_iter().map(|(_, n)| n).collect();
    assert_eq!(rest, ["host", "hvsockd.socket"]);
    assert!(resumed.host.is_some() && resumed.admin.is_none());
    assert_eq!(resumed.endpoints.len(), 1);
    assert_eq!(resumed.guest_ports.len(), 1);
    assert_eq!(resumed.sessions.len(), 1);
    assert_eq!(resumed.len(), 4);
    let refused: Vec<&str> = resumed.refused.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(refused, ["hv1.s4.00", "hv2.anything"]);
    assert!(resumed.refused[1].1.contains("reads hv1 only"));
}

#[test]
fn a_manager_that_does_not_read_never_blocks_hvsockd_and_loses_nothing_it_can_take_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let holder = Arc::new(Holder::default());
    holder.use_store(FdStore::new(path.into_os_string(), 1000).unwrap());
    // Far more than the receiver's queue holds (net.unix.max_dgram_qlen), none read meanwhile:
    // each call returns at once (a blocking send would hang this test).
    let started = std::time::Instant::now();
    let held: Vec<Hold> = (0..200u8)
        .map(|n| holder.hold(socket(), Kept::Endpoint(vm(n))))
        .collect();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(holder.retry_store() > 0, "some had to wait");
    // Read as the manager catches up, retrying as hvsockd's timer does: all arrive, in order,
    // each with its descriptor.
    let mut got = Vec::new();
    loop {
        got.extend(received(&rx));
        if got.len() >= 200 {
            break;
        }
        holder.retry_store();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    let want: Vec<(String, bool)> = (0..200u8)
        .map(|n| {
            (
                format!("FDSTORE=1\nFDNAME={}", Kept::Endpoint(vm(n)).name()),
                true,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(holder.retry_store(), 0);
    drop(held);
}
