//! `Frame::decode` on arbitrary bytes: never panics, and what decodes re-encodes to itself.
#![no_main]

use hvsock_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let again = Frame::decode(&frame.encode()).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
});
