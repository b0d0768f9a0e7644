//! The link against a stand-in hvsockd (a `SOCK_SEQPACKET` listener at the VM's endpoint path):
//! registration, requests and answers, the session's end, reconnection, and a send that never
//! waits on an hvsockd that does not read.

#![allow(clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::time::Instant;

use hvsock::ServiceId;
use hvsock_proto::unix::{recv_frame, stream_pair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::*;

fn listener(path: &std::path::Path) -> OwnedFd {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&fd, 8).unwrap();
    fd
}

/// Accepts the device and answers its `Gateway`.
fn accept_gateway(l: &OwnedFd, vm: VmId) -> OwnedFd {
    let s = rustix::net::accept_with(l, SocketFlags::CLOEXEC).unwrap();
    let r = recv_frame(&s, false).unwrap();
    assert_eq!(r.frame, Frame::Gateway { req: 1 });
    let bound = Frame::Bound {
        req: 1,
        local: hvsock::SockAddrHv::new(vm, ServiceId(hvsock::Guid::NIL)).into(),
    };
    send_frame(&s, &bound, None, false).unwrap();
    s
}

fn events(link: &Link, want: usize) -> Vec<FromHvsockd> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want {
        got.extend(link.drain());
        assert!(Instant::now() < deadline, "only {got:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

#[test]
fn registers_routes_and_finds_hvsockd_again_after_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::under(dir.path());
    let vm = VmId(hvsock::Guid::from_bytes([9; 16]));
    let l = listener(&dirs.partition_socket(vm));
    let link = Link::start(Target {
        dirs,
        vm: vm.to_string(),
    })
    .unwrap();
    let s = accept_gateway(&l, vm);
    assert!(matches!(events(&link, 1)[..], [FromHvsockd::Up]));
    assert!(link.is_up());

    // The guest's connect goes out as a Connect to PARENT:<port> ...
    link.send(&ToHvsockd::Connect { req: 4, port: 5000 })
        .unwrap();
    let Frame::Connect { req: 4, target, .. } = recv_frame(&s, false).unwrap().frame else {
        panic!("not a Connect")
    };
    let target = hvsock::SockAddrHv::from(target);
    assert_eq!(
        (target.vm_id, target.service_id),
        (VmId::PARENT, ServiceId::from_vsock_port(5000))
    );
    // ... and its answer, with the host end, comes back; so does a GuestConnect.
    let (end, _keep) = stream_pair().unwrap();
    let connected = Frame::Connected {
        req: 4,
        local: target.into(),
        peer: target.into(),
    };
    send_frame(&s, &connected, Some(end.as_fd()), false).unwrap();
    send_frame(
        &s,
        &Frame::GuestConnect { req: 7, port: 6000 },
        Some(end.as_fd()),
        false,
    )
    .unwrap();
    let got = events(&link, 2);
    assert!(matches!(
        got[0],
        FromHvsockd::Answer {
            req: 4,
            result: Ok(_)
        }
    ));
    assert!(matches!(
        got[1],
        FromHvsockd::GuestConnect {
            req: 7,
            port: 6000,
            ..
        }
    ));

    // hvsockd goes away: Down, sends fail at once; it comes back: Up again.
    drop(s);
    assert!(matches!(events(&link, 1)[..], [FromHvsockd::Down]));
    assert!(link.send(&ToHvsockd::Accepted { req: 7 }).is_err());
    let s = accept_gateway(&l, vm);
    assert!(matches!(events(&link, 1)[..], [FromHvsockd::Up]));

    // An hvsockd that does not read never blocks the sender (the VM's data path).
    let started = Instant::now();
    let mut refused = false;
    for req in 0..100_000 {
        if link.send(&ToHvsockd::Accepted { req }).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the socket never filled");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(s);
}
