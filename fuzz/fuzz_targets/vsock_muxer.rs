//! hvsock-vhost's connection table driven by a hostile guest: a sequence of packets (headers
//! from the input, payloads of the length they claim or not) over a live connection spliced
//! to a real socket pair, interleaved with receive-buffer fills. Never panics, never holds more
//! connections than its limit nor more bytes than its credit per connection.
#![no_main]

use std::os::unix::net::UnixStream;

use hvsock_vhost::muxer::{Config, Muxer, ToHvsockd};
use hvsock_vhost::packet::{HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        guest_cid: 3,
        buf_alloc: 16 * 1024,
        max_conns: 4,
    };
    let Ok(mut m) = Muxer::new(cfg) else { return };
    m.hvsockd_up();
    let mut hosts = Vec::new();
    let payload = [0x5au8; 4096];
    let mut buf = vec![0u8; 4096];
    for chunk in data.chunks(HEADER_LEN + 2) {
        let Ok(mut h) = Header::parse(chunk) else {
            break;
        };
        let extra = chunk[HEADER_LEN..].first().copied().unwrap_or(0);
        // Keep ports in a small space so that packets meet live connections.
        h.src_port %= 4;
        h.dst_port %= 2;
        if extra & 1 == 0 {
            h.dst_cid = 2;
        }
        let len = if extra & 2 == 0 { h.len as usize } else { usize::from(extra) * 16 };
        m.guest_packet(&h, &payload[..len.min(payload.len())]);
        for request in m.take_requests() {
            if let ToHvsockd::Connect { req, .. } = request {
                if extra & 4 == 0 {
                    if let Ok((ours, theirs)) = UnixStream::pair() {
                        hosts.push(theirs);
                        m.connect_answer(req, Ok(ours.into()));
                    }
                } else {
                    m.connect_answer(req, Err((hvsock_proto::ErrorCode::Refused, "no".into())));
                }
            }
        }
        if extra & 8 != 0 {
            m.socket_events();
            while m.next_rx(&mut buf).is_some() {}
        }
        assert!(m.len() <= cfg.max_conns);
    }
});
