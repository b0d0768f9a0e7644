//! The agent's framing and every control message a peer can send, on arbitrary bytes split at
//! arbitrary points: the decoder never panics, a frame it yields re-encodes to the same bytes,
//! and each parser (Hello and its negotiation, the session's host messages and Start, the file
//! copy's requests and tree entries, the shutdown request; the heartbeat, time and key-value
//! messages through the host's own state) either accepts or refuses.
#![no_main]

use hvsock_agent::files::{self, Get, Put};
use hvsock_agent::{kvp, time};
use hvsock_agent::session::{self, Start};
use hvsock_agent::wire::{Decoder, Frame, Hello, negotiate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => return,
    };
    let mut decoder = Decoder::new(4096);
    for chunk in bytes.chunks(split) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => check(frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn check(frame: Frame) {
    let mut again = Decoder::new(4096);
    again.push(&frame.encode());
    assert_eq!(again.next_frame().ok().flatten().as_ref(), Some(&frame));
    if let Ok(hello) = frame.parse::<Hello>() {
        let _ = negotiate(&hello, "session", (1, 1));
    }
    if let Ok(start) = frame.parse::<Start>() {
        let _ = start.validate();
    }
    let _ = session::parse_host_frame(frame.clone());
    let _ = files::parse_tree_frame(frame.clone());
    if let Ok(put) = frame.parse::<Put>() {
        let _ = files::check_absolute(&put.dest);
        let _ = files::check_name(&put.name);
    }
    if let Ok(get) = frame.parse::<Get>() {
        let _ = files::check_absolute(&get.path);
    }
    let _ = frame.parse::<hvsock_agent::shutdown::Request>();
    // The host-served services: what hvsockd reads from an agent, and what an agent reads.
    let mut tracker = hvsock_agent::heartbeat::Tracker::default();
    tracker.on_connect();
    let _ = tracker.on_frame(&frame, std::time::Instant::now());
    let _ = tracker.state(std::time::Instant::now());
    let _ = time::answer(&frame, 1, 2);
    // hvsockd's time service keeps what a Report says (services::time).
    let _ = frame.parse::<time::Report>();
    if let Ok(reply) = frame.parse::<time::Reply>() {
        let req = time::Request {
            seq: reply.seq,
            t1: reply.t1,
        };
        let _ = time::measure(&req, &reply, reply.t3);
    }
    let mut mirror = kvp::Mirror::default();
    mirror.on_connect();
    if let Ok(msg) = kvp::parse(&frame) {
        let _ = mirror.apply(msg);
    }
}
