//! The reader of a VMM's hybrid-vsock reply (`OK <port>\n`, read byte by byte): never
//! panics, never reads past the newline or the length bound, and accepts only `OK <decimal>`.
#![no_main]

use hvsock_proto::hybrid::{MAX_REPLY_LEN, ReplyReader, parse_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_reply(data);
    if let Ok(port) = whole {
        let digits = &data[3..];
        assert!(data.starts_with(b"OK "));
        assert!(data.len() < MAX_REPLY_LEN);
        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
        assert_eq!(std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u32>().ok()), Some(port));
    }
    // Byte by byte, as hvsockd reads it: the reader stops at the first newline or at the
    // bound, and agrees with the whole-line parser on the bytes before it.
    let mut reader = ReplyReader::default();
    for (i, &b) in data.iter().enumerate() {
        if let Some(result) = reader.push(b) {
            assert!(i < MAX_REPLY_LEN);
            if b == b'\n' {
                assert_eq!(result, parse_reply(&data[..i]));
                assert!(!data[..i].contains(&b'\n'));
            }
            return;
        }
    }
    assert!(data.len() < MAX_REPLY_LEN);
});
