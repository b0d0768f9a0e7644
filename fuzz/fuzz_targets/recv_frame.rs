//! `recv_frame` as hvsockd uses it: arbitrary bytes arrive as one SEQPACKET message on a real
//! socket pair; receiving never panics, and what it accepts carries exactly the fds its kind
//! calls for (none here).
#![no_main]

use hvsock_proto::unix::{recv_frame, seqpacket_pair};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() || data.len() > 65_000 {
        return;
    }
    let (a, b) = seqpacket_pair().expect("socketpair");
    rustix::net::send(&a, data, rustix::net::SendFlags::NOSIGNAL).expect("send");
    if let Ok(received) = recv_frame(&b, true) {
        assert!(received.fd.is_none());
        assert!(!received.frame.carries_fd());
    }
});
