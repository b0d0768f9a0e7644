//! The muxer against a modelled guest (headers built by hand, as a Linux guest sends them)
//! and real host socket pairs: both connect directions, refusals, half-close both ways,
//! credit both ways, and hostile input.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::*;
use crate::packet::{MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};

const GUEST_CID: u64 = 3;
const GPORT: u32 = 40_000;

fn muxer() -> Muxer {
    let mut m = Muxer::new(Config {
        guest_cid: GUEST_CID,
        buf_alloc: 64 * 1024,
        max_conns: 8,
    })
    .unwrap();
    m.hvsockd_up();
    m
}

/// A guest packet from the guest's `gport` to the host's `hport`.
fn pkt(op: Op, gport: u32, hport: u32, len: u32, flags: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: gport,
        dst_port: hport,
        len,
        type_: TYPE_STREAM,
        op: op.to_u16(),
        flags,
        buf_alloc: 32 * 1024,
        fwd_cnt,
    }
}

fn send(m: &mut Muxer, op: Op, hport: u32, flags: u32, fwd_cnt: u32) {
    m.guest_packet(&pkt(op, GPORT, hport, 0, flags, fwd_cnt), &[]);
}

fn send_data(m: &mut Muxer, hport: u32, data: &[u8]) {
    m.guest_packet(&pkt(Op::Rw, GPORT, hport, data.len() as u32, 0, 0), data);
}

/// Everything the muxer has for the guest now, with 4 KiB receive buffers.
fn rx(m: &mut Muxer) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0; 4096];
    m.socket_events();
    while let Some((h, n)) = m.next_rx(&mut buf) {
        out.push((h, buf[..n].to_vec()));
        assert!(out.len() < 100_000, "runaway");
    }
    out
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<Op> {
    packets
        .iter()
        .map(|(h, _)| Op::from_u16(h.op).unwrap())
        .collect()
}

/// A guest-initiated connection to host port 5000, established; the host's end.
fn guest_connected(m: &mut Muxer) -> UnixStream {
    send(m, Op::Request, 5000, 0, 0);
    let [ToHvsockd::Connect { req, port: 5000 }] = m.take_requests()[..] else {
        panic!("no Connect")
    };
    let (ours, host) = UnixStream::pair().unwrap();
    m.connect_answer(req, Ok(ours.into()));
    let got = rx(m);
    assert_eq!(ops(&got), [Op::Response]);
    let h = got[0].0;
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, GUEST_CID, 5000, GPORT)
    );
    assert_eq!(h.buf_alloc, 64 * 1024);
    host
}

#[test]
fn a_guest_connect_is_spliced_to_hvsockds_socket_both_ways() {
    let mut m = muxer();
    let mut host = guest_connected(&mut m);
    send_data(&mut m, 5000, b"hello");
    let mut buf = [0; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    host.write_all(b"world").unwrap();
    let got = rx(&mut m);
    assert_eq!(ops(&got), [Op::Rw]);
    assert_eq!(got[0].1, b"world");
    assert_eq!(m.counters.established, 1);
}

#[test]
fn a_guest_connect_is_refused_at_once_when_hvsockd_refuses_or_is_away() {
    let mut m = muxer();
    send(&mut m, Op::Request, 5000, 0, 0);
    let [ToHvsockd::Connect { req, .. }] = m.take_requests()[..] else {
        panic!()
    };
    m.connect_answer(req, Err((ErrorCode::Refused, "nothing listens".into())));
    let got = rx(&mut m);
    assert_eq!(ops(&got), [Op::Rst]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5000, GPORT));
    assert!(m.is_empty());

    // hvsockd goes away with a connect outstanding: RST now, and new connects RST at once.
    send(&mut m, Op::Request, 5001, 0, 0);
    assert_eq!(m.take_requests().len(), 1);
    m.hvsockd_down();
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
    send(&mut m, Op::Request, 5002, 0, 0);
    assert!(m.take_requests().is_empty());
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
    assert!(m.is_empty());
}

#[test]
fn host_connects_waiting_for_the_guest_are_reset_when_hvsockd_goes_away() {
    let mut m = muxer();
    let (ours, _host) = UnixStream::pair().unwrap();
    m.guest_connect(1, 6000, ours.into());
    let h = rx(&mut m)[0].0;
    m.hvsockd_down();
    // No answer for the old session goes to the next one; the guest's REQUEST is withdrawn.
    assert!(m.take_requests().is_empty());
    assert!(m.is_empty());
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
    m.hvsockd_up();
    m.guest_packet(&pkt(Op::Response, 6000, h.src_port, 0, 0, 0), &[]);
    assert!(m.take_requests().is_empty());
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
}

#[test]
fn established_connections_keep_flowing_while_hvsockd_is_away() {
    let mut m = muxer();
    let mut host = guest_connected(&mut m);
    m.hvsockd_down();
    send_data(&mut m, 5000, b"still");
    let mut buf = [0; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
    m.hvsockd_up();
    send(&mut m, Op::Request, 5001, 0, 0);
    assert_eq!(m.take_requests().len(), 1);
}

#[test]
fn a_host_connect_is_accepted_or_refused_by_the_guest() {
    let mut m = muxer();
    let (ours, _host) = UnixStream::pair().unwrap();
    m.guest_connect(77, 6000, ours.into());
    let got = rx(&mut m);
    assert_eq!(ops(&got), [Op::Request]);
    let h = got[0].0;
    assert_eq!((h.dst_cid, h.dst_port), (GUEST_CID, 6000));
    // The guest answers from its port 6000 to the host port the REQUEST came from.
    m.guest_packet(&pkt(Op::Response, 6000, h.src_port, 0, 0, 0), &[]);
    assert_eq!(m.take_requests(), [ToHvsockd::Accepted { req: 77 }]);

    let (ours, _host) = UnixStream::pair().unwrap();
    m.guest_connect(78, 6001, ours.into());
    let h = rx(&mut m)[0].0;
    assert_ne!(h.src_port, 0);
    m.guest_packet(&pkt(Op::Rst, 6001, h.src_port, 0, 0, 0), &[]);
    let [
        ToHvsockd::Rejected {
            req: 78,
            code,
            ref message,
        },
    ] = m.take_requests()[..]
    else {
        panic!("not rejected")
    };
    assert_eq!(code, ErrorCode::Refused);
    assert!(message.contains("6001"), "{message}");
    assert_eq!(m.len(), 1);
}

#[test]
fn half_close_both_ways_then_close() {
    let mut m = muxer();
    let mut host = guest_connected(&mut m);
    // The guest shuts its sending side: the host reads EOF after the data, and may still send.
    send_data(&mut m, 5000, b"last");
    send(&mut m, Op::Shutdown, 5000, SHUTDOWN_SEND, 0);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last");
    host.write_all(b"reply").unwrap();
    // The host shuts its side: the guest gets the data, then SHUTDOWN(SEND).
    host.shutdown(Shutdown::Write).unwrap();
    let got = rx(&mut m);
    assert_eq!(ops(&got), [Op::Rw, Op::Shutdown]);
    assert_eq!(got[0].1, b"reply");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    // The guest closes: RST, and the connection is gone.
    send(&mut m, Op::Shutdown, 5000, SHUTDOWN_RCV | SHUTDOWN_SEND, 5);
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
    assert!(m.is_empty());
    // A late packet for it is answered with RST, an RST is not.
    send(&mut m, Op::CreditUpdate, 5000, 0, 0);
    send(&mut m, Op::Rst, 5000, 0, 0);
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
}

#[test]
fn a_host_that_half_closes_at_once_still_gets_the_guests_bytes() {
    // The receiver of `hvsock listen ADDR </dev/null`: it sends nothing and shuts its side.
    let mut m = muxer();
    let mut host = guest_connected(&mut m);
    host.shutdown(Shutdown::Write).unwrap();
    let got = rx(&mut m);
    assert_eq!(ops(&got), [Op::Shutdown]);
    send_data(&mut m, 5000, b"payload");
    send(&mut m, Op::Shutdown, 5000, SHUTDOWN_SEND, 0);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"payload");
}

#[test]
fn host_to_guest_bytes_follow_the_guests_credit_in_order() {
    let mut m = muxer();
    let host = guest_connected(&mut m);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut host = host.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    let mut got = Vec::new();
    let mut fwd = 0u32;
    let mut requests = 0;
    while got.len() < data.len() {
        let packets = rx(&mut m);
        let sent: usize = packets.iter().map(|(_, p)| p.len()).sum();
        // Never more than the guest's 32 KiB of credit in flight.
        assert!(
            got.len() + sent - fwd as usize <= 32 * 1024,
            "credit exceeded"
        );
        for (h, p) in packets {
            match Op::from_u16(h.op) {
                Some(Op::Rw) => got.extend_from_slice(&p),
                // Out of credit: the device asks once, rather than wait for the guest.
                Some(Op::CreditRequest) => {
                    assert_eq!(
                        got.len() - fwd as usize,
                        32 * 1024,
                        "asked with credit left"
                    );
                    requests += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The guest's application reads everything and the guest says so.
        fwd = got.len() as u32;
        send(&mut m, Op::CreditUpdate, 5000, 0, fwd);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    writer.join().unwrap();
    assert_eq!(got, data);
    assert!(requests > 0, "never asked for credit");
    drop(host);
}

#[test]
fn guest_to_host_bytes_wait_in_a_bounded_buffer_and_credit_comes_back() {
    let mut m = muxer();
    let mut host = guest_connected(&mut m);
    // The host does not read: the guest sends its whole credit (64 KiB) and more.
    let chunk = vec![7u8; 4096];
    let mut sent = 0usize;
    while sent + chunk.len() <= 64 * 1024 {
        send_data(&mut m, 5000, &chunk);
        sent += chunk.len();
    }
    let conn = m.conn(5000, GPORT).unwrap();
    assert!(conn.buffered() <= 64 * 1024);
    let mut all = vec![0; sent];
    host.read_exact(&mut all).unwrap();
    assert!(all.iter().all(|&b| b == 7));
    // The guest asks for credit and hears that all was consumed.
    send(&mut m, Op::CreditRequest, 5000, 0, 0);
    let got = rx(&mut m);
    let last = got.last().unwrap().0;
    assert_eq!(last.fwd_cnt as usize, sent);
}

#[test]
fn a_guest_that_exceeds_its_credit_is_reset_and_no_one_else() {
    let mut m = muxer();
    let _host = guest_connected(&mut m);
    // A second connection that must not notice.
    m.guest_packet(&pkt(Op::Request, GPORT + 1, 5000, 0, 0, 0), &[]);
    let [ToHvsockd::Connect { req, .. }] = m.take_requests()[..] else {
        panic!()
    };
    let (ours, mut other) = UnixStream::pair().unwrap();
    m.connect_answer(req, Ok(ours.into()));
    rx(&mut m);
    // Fill the kernel's socket buffer and ours, then one byte more.
    let chunk = vec![1u8; MAX_PAYLOAD as usize];
    for _ in 0..64 {
        send_data(&mut m, 5000, &chunk);
        if m.conn(5000, GPORT).is_none() {
            break;
        }
    }
    assert!(m.conn(5000, GPORT).is_none(), "never reset");
    assert!(ops(&rx(&mut m)).contains(&Op::Rst));
    assert_eq!(m.counters.resets, 1);
    m.guest_packet(&pkt(Op::Rw, GPORT + 1, 5000, 2, 0, 0), b"ok");
    let mut buf = [0; 2];
    other.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn hostile_packets_reset_their_connection_or_get_an_rst() {
    let mut m = muxer();
    let _host = guest_connected(&mut m);
    let before = m.counters.bad_packets;
    // Not to the host.
    m.guest_packet(
        &Header {
            dst_cid: 7,
            ..pkt(Op::Request, 1, 5000, 0, 0, 0)
        },
        &[],
    );
    // A seqpacket type, an unknown op, a lying length: bad packets, answered with RST.
    m.guest_packet(
        &Header {
            type_: 2,
            ..pkt(Op::Request, 2, 5000, 0, 0, 0)
        },
        &[],
    );
    m.guest_packet(
        &Header {
            op: 99,
            ..pkt(Op::Rw, 3, 5000, 0, 0, 0)
        },
        &[],
    );
    m.guest_packet(&pkt(Op::Rw, 4, 5000, 100, 0, 0), b"short");
    // Data on a connection that does not exist.
    m.guest_packet(&pkt(Op::Rw, 5, 5000, 1, 0, 0), b"x");
    assert_eq!(m.counters.bad_packets - before, 3);
    assert_eq!(ops(&rx(&mut m)), [Op::Rst; 5]);
    assert_eq!(m.len(), 1);
    // A second REQUEST on the live connection resets it.
    send(&mut m, Op::Request, 5000, 0, 0);
    assert!(m.is_empty());
    assert_eq!(ops(&rx(&mut m)), [Op::Rst]);
}

#[test]
fn a_connection_flood_is_bounded() {
    let mut m = muxer();
    for port in 0..1000 {
        m.guest_packet(&pkt(Op::Request, port, 5000, 0, 0, 0), &[]);
    }
    assert_eq!(m.len(), 8, "max_conns");
    assert_eq!(m.take_requests().len(), 8);
    let rsts = rx(&mut m);
    assert_eq!(rsts.len(), MAX_STRAY, "queued RSTs are bounded");
    // Unanswered host-to-guest REQUESTs expire.
    let mut m = muxer();
    let (ours, _host) = UnixStream::pair().unwrap();
    m.guest_connect(1, 6000, ours.into());
    rx(&mut m);
    m.expire(Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1));
    assert!(m.is_empty());
    assert!(matches!(
        m.take_requests()[..],
        [ToHvsockd::Rejected { req: 1, .. }]
    ));
}

#[test]
fn random_packets_never_panic_nor_grow_the_device() {
    let mut m = muxer();
    let _host = guest_connected(&mut m);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let payload = vec![0xabu8; 8192];
    for _ in 0..20_000 {
        let r = next();
        let h = Header {
            src_cid: r & 7,
            dst_cid: if r & 8 == 0 { HOST_CID } else { r >> 60 },
            src_port: GPORT + ((r >> 4) & 3) as u32,
            dst_port: 5000 + ((r >> 6) & 1) as u32,
            len: ((r >> 8) & 0x1fff) as u32,
            type_: if r & 0x10_0000 == 0 { 1 } else { 2 },
            op: ((r >> 21) & 7) as u16,
            flags: ((r >> 24) & 3) as u32,
            buf_alloc: (r >> 32) as u32,
            fwd_cnt: (r >> 26) as u32,
        };
        let len = if r & 0x2000_0000 == 0 {
            h.len as usize
        } else {
            (r >> 40) as usize & 0x1fff
        };
        m.guest_packet(&h, &payload[..len.min(payload.len())]);
        if next() & 3 == 0 {
            rx(&mut m);
        }
        let _ = m.take_requests();
        assert!(m.len() <= 8);
    }
}
