//! The text handshake of hybrid vsock, which hvsockd speaks to a VMM (Firecracker, Cloud
//! Hypervisor, vhost-device-vsock) to reach into a guest: hvsockd connects to the VMM's Unix
//! socket, sends [`connect_request`] (`CONNECT <port>\n`) in one write, and reads the reply one
//! byte at a time ([`ReplyReader`]) up to `\n`, so that no byte of the guest's stream that
//! follows is swallowed. [`parse_reply`] accepts exactly `OK <port>` (the VMM's host-side port,
//! decimal); validation is length first, then fields. Pure, no I/O; fuzzed
//! (`fuzz/fuzz_targets/hybrid_reply.rs`). The state machine around it is `hvsockd::attach`.

/// The longest reply line read, newline included (`OK 4294967295\n` is 14 bytes).
pub const MAX_REPLY_LEN: usize = 32;

/// Why a reply line is not `OK <port>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// No newline within [`MAX_REPLY_LEN`] bytes.
    #[error("no newline within {MAX_REPLY_LEN} bytes of reply")]
    TooLong,
    /// The line does not start with `OK `.
    #[error("the reply {0:?} is not `OK <port>`")]
    NotOk(String),
    /// The port is not a decimal `u32`.
    #[error("the port in the reply {0:?} is not a decimal number from 0 to 4294967295")]
    BadPort(String),
}

/// Parses one reply line, without its `\n`: `OK <port>` with a decimal port, nothing else
/// (no spaces around, no sign, no `\r`). Returns the VMM's host-side port.
pub fn parse_reply(line: &[u8]) -> Result<u32, ReplyError> {
    // Length first, then fields.
    if line.len() >= MAX_REPLY_LEN {
        return Err(ReplyError::TooLong);
    }
    let shown = || String::from_utf8_lossy(line).into_owned();
    let digits = line
        .strip_prefix(b"OK ")
        .ok_or_else(|| ReplyError::NotOk(shown()))?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::BadPort(shown()));
    }
    let value = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    u32::try_from(value).map_err(|_| ReplyError::BadPort(shown()))
}

/// Collects a reply one byte at a time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyReader {
    line: Vec<u8>,
}

impl ReplyReader {
    /// Takes the next byte; `Some` once the line is complete (or too long).
    pub fn push(&mut self, byte: u8) -> Option<Result<u32, ReplyError>> {
        if byte == b'\n' {
            return Some(parse_reply(&self.line));
        }
        self.line.push(byte);
        if self.line.len() >= MAX_REPLY_LEN {
            return Some(Err(ReplyError::TooLong));
        }
        None
    }

    /// The bytes read so far.
    pub fn so_far(&self) -> &[u8] {
        &self.line
    }
}

/// The request for `port`: one line, sent in one write.
pub fn connect_request(port: u32) -> Vec<u8> {
    format!("CONNECT {port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_table() {
        let rows: &[(&[u8], Result<u32, ReplyError>)] = &[
            (b"OK 1234", Ok(1234)),
            (b"OK 0", Ok(0)),
            (b"OK 4294967295", Ok(u32::MAX)),
            (b"OK 007", Ok(7)),
            (
                b"OK 4294967296",
                Err(ReplyError::BadPort("OK 4294967296".into())),
            ),
            (
                b"OK 99999999999",
                Err(ReplyError::BadPort("OK 99999999999".into())),
            ),
            (b"OK ", Err(ReplyError::BadPort("OK ".into()))),
            (b"OK -1", Err(ReplyError::BadPort("OK -1".into()))),
            (b"OK +1", Err(ReplyError::BadPort("OK +1".into()))),
            (b"OK 12 ", Err(ReplyError::BadPort("OK 12 ".into()))),
            (b"OK 12\r", Err(ReplyError::BadPort("OK 12\r".into()))),
            (b"OK  12", Err(ReplyError::BadPort("OK  12".into()))),
            (b"ok 12", Err(ReplyError::NotOk("ok 12".into()))),
            (b"OK", Err(ReplyError::NotOk("OK".into()))),
            (b"", Err(ReplyError::NotOk(String::new()))),
            (b"ERR 5", Err(ReplyError::NotOk("ERR 5".into()))),
            (b"CONNECT 5", Err(ReplyError::NotOk("CONNECT 5".into()))),
            (
                &[b'O', b'K', b' ', 0xff],
                Err(ReplyError::BadPort("OK \u{fffd}".into())),
            ),
            (&[b'1'; MAX_REPLY_LEN], Err(ReplyError::TooLong)),
        ];
        for (line, want) in rows {
            assert_eq!(
                &parse_reply(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_reader_stops_at_the_newline_and_bounds_the_line() {
        let mut reader = ReplyReader::default();
        for &b in b"OK 52" {
            assert_eq!(reader.push(b), None);
        }
        assert_eq!(reader.push(b'\n'), Some(Ok(52)));

        let mut reader = ReplyReader::default();
        let mut ended = None;
        for i in 0..1000 {
            if let Some(r) = reader.push(b'x') {
                ended = Some((i, r));
                break;
            }
        }
        assert_eq!(ended, Some((MAX_REPLY_LEN - 1, Err(ReplyError::TooLong))));
    }

    #[test]
    fn the_request_is_one_line() {
        assert_eq!(connect_request(2761), b"CONNECT 2761\n");
        assert_eq!(connect_request(u32::MAX), b"CONNECT 4294967295\n");
    }
}
