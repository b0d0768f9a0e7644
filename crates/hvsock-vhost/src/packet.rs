//! The virtio-vsock packet header, as plain values: what the device reads from the guest's TX
//! queue and writes to its RX queue.
//!
//! # Protocol primer (virtio 1.2, section 5.10)
//!
//! Every packet is a 44-byte little-endian header, then `len` payload bytes (RW only):
//!
//! ```text
//! offset size field       offset size field
//!      0    8 src_cid         28    2 type      (1 = stream; the only one served here)
//!      8    8 dst_cid         30    2 op        (REQUEST 1, RESPONSE 2, RST 3, SHUTDOWN 4,
//!     16    4 src_port                           RW 5, CREDIT_UPDATE 6, CREDIT_REQUEST 7)
//!     20    4 dst_port        32    4 flags     (SHUTDOWN: 1 = no more receiving, 2 = no more sending)
//!     24    4 len             36    4 buf_alloc (the sender's receive buffer for this connection)
//!                             40    4 fwd_cnt   (bytes the sender has consumed from it)
//! ```
//!
//! A connection is the pair of ports. Each side may send while
//! `peer.buf_alloc - (bytes sent - peer.fwd_cnt) > 0`: flow control is by credit, and a packet
//! that exceeds the credit it was given is a protocol violation.
//!
//! [`Header::parse`] checks the length first, then the fields ([`Header::check`]), each with its
//! own error, and never panics on any input (it is fuzzed: `fuzz/fuzz_targets/vsock_packet.rs`).

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// `type`: a stream socket.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet this device accepts or sends (the virtio driver's own limit).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// `SHUTDOWN` flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Connect.
    Request,
    /// Connect accepted.
    Response,
    /// Connection refused or reset.
    Rst,
    /// Half-close (flags) or close (both flags).
    Shutdown,
    /// Data.
    Rw,
    /// The sender's `buf_alloc` / `fwd_cnt` changed.
    CreditUpdate,
    /// Asks for a `CreditUpdate`.
    CreditRequest,
}

impl Op {
    /// From the wire value.
    pub fn from_u16(n: u16) -> Option<Op> {
        Some(match n {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// A packet header, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Source CID (never trusted for a guest's packet).
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation (raw).
    pub op: u16,
    /// Flags (`SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer.
    pub buf_alloc: u32,
    /// Bytes the sender consumed.
    pub fwd_cnt: u32,
}

/// Why a guest's packet cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than a header.
    #[error("packet of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// Not a stream packet.
    #[error("socket type {0} is not served (only stream, 1)")]
    Type(u16),
    /// An operation the protocol does not have.
    #[error("unknown operation {0}")]
    Op(u16),
    /// A payload longer than the device accepts.
    #[error("payload of {0} bytes is longer than the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
    /// `len` does not match the payload that came with the header.
    #[error("header says {header} payload bytes, the descriptors hold {got}")]
    Length {
        /// The header's `len`.
        header: u32,
        /// The bytes there were.
        got: usize,
    },
    /// A payload on a packet other than RW.
    #[error("a {0:?} packet carries {1} payload bytes")]
    Payload(Op, u32),
    /// Flags on a packet that takes none, or unknown flags.
    #[error("flags {1:#x} are not valid on a {0:?} packet")]
    Flags(Op, u32),
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes (length check only).
    pub fn parse(bytes: &[u8]) -> Result<Header, PacketError> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(PacketError::Short(bytes.len()))?;
        let u64_at = |i: usize| {
            let mut a = [0; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks the fields of a guest's packet that came with `payload` bytes: the operation it
    /// is, or why it cannot be served.
    pub fn check(&self, payload: usize) -> Result<Op, PacketError> {
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::Type(self.type_));
        }
        let op = Op::from_u16(self.op).ok_or(PacketError::Op(self.op))?;
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(self.len));
        }
        if self.len as usize != payload {
            return Err(PacketError::Length {
                header: self.len,
                got: payload,
            });
        }
        if op != Op::Rw && self.len != 0 {
            return Err(PacketError::Payload(op, self.len));
        }
        let flags_ok = match op {
            Op::Shutdown => self.flags & !(SHUTDOWN_RCV | SHUTDOWN_SEND) == 0,
            // Linux sets no flags elsewhere; tolerate none other.
            _ => self.flags == 0,
        };
        if !flags_ok {
            return Err(PacketError::Flags(op, self.flags));
        }
        Ok(op)
    }

    /// Parses and checks a whole packet (header then payload) in one buffer: the header, its
    /// operation and the payload, or why not. For the fuzzer and the tests; the device reads
    /// the header and the payload from separate descriptors.
    pub fn parse_packet(bytes: &[u8]) -> Result<(Header, Op, &[u8]), PacketError> {
        let header = Header::parse(bytes)?;
        let payload = &bytes[HEADER_LEN..];
        let op = header.check(payload.len())?;
        Ok((header, op, payload))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op: Op::Rw.to_u16(),
            flags: 0,
            buf_alloc: 262_144,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn the_layout_is_the_virtio_one() {
        let h = rw(3);
        let b = h.encode();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[24..28], &3u32.to_le_bytes());
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[36..40], &262_144u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Ok(h));
        // virtio-vsock's own header type has the same size.
        assert_eq!(HEADER_LEN, virtio_vsock::packet::PKT_HEADER_SIZE);
    }

    #[test]
    fn checks_length_then_fields_each_with_its_error() {
        let mut bytes = rw(3).encode().to_vec();
        bytes.extend_from_slice(b"abc");
        assert_eq!(
            Header::parse_packet(&bytes).unwrap().2,
            b"abc",
            "a good packet"
        );
        assert_eq!(Header::parse(&bytes[..43]), Err(PacketError::Short(43)));
        let cases: Vec<(Header, usize, PacketError)> = vec![
            (Header { type_: 2, ..rw(0) }, 0, PacketError::Type(2)),
            (Header { op: 0, ..rw(0) }, 0, PacketError::Op(0)),
            (Header { op: 8, ..rw(0) }, 0, PacketError::Op(8)),
            (
                rw(MAX_PAYLOAD + 1),
                0,
                PacketError::TooLong(MAX_PAYLOAD + 1),
            ),
            (rw(10), 3, PacketError::Length { header: 10, got: 3 }),
            (
                Header {
                    op: Op::Request.to_u16(),
                    ..rw(2)
                },
                2,
                PacketError::Payload(Op::Request, 2),
            ),
            (
                Header {
                    op: Op::Shutdown.to_u16(),
                    flags: 4,
                    ..rw(0)
                },
                0,
                PacketError::Flags(Op::Shutdown, 4),
            ),
            (
                Header { flags: 1, ..rw(0) },
                0,
                PacketError::Flags(Op::Rw, 1),
            ),
        ];
        for (h, payload, want) in cases {
            assert_eq!(h.check(payload), Err(want.clone()), "{h:?}");
            assert!(!want.to_string().is_empty());
        }
        let shutdown = Header {
            op: Op::Shutdown.to_u16(),
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..rw(0)
        };
        assert_eq!(shutdown.check(0), Ok(Op::Shutdown));
    }

    #[test]
    fn every_op_round_trips() {
        for n in 0..=u16::MAX {
            if let Some(op) = Op::from_u16(n) {
                assert_eq!(op.to_u16(), n);
            }
        }
    }
}
