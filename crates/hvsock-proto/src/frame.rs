//! Frame layout and codec.
//!
//! # Protocol primer
//!
//! A client (the `hvsock` library) talks to hvsockd over an `AF_UNIX` `SOCK_SEQPACKET`
//! connection to an endpoint socket. Every message is one frame, at most [`MAX_FRAME`] bytes, so
//! the kernel keeps frame boundaries and delivers a passed file descriptor with the frame it
//! belongs to.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "hv"
//!      2     1  version (1)
//!      3     1  kind
//!      4     4  request id, u32 little-endian (0 where no request is answered)
//!      8     …  body, fixed size per kind (Error: code + UTF-8 message)
//! ```
//!
//! A connector session sends `Connect` requests (several may be outstanding, told apart by their
//! request id) and gets `Connected` with one file descriptor (its end of the new connection) or
//! `Error`. A listener session sends one `Bind`, gets `Bound` or `Error`, then receives one
//! `Incoming` frame with one file descriptor per connection, and answers each with `Ack`, which
//! frees a backlog slot. Closing the listener session unbinds the listener.
//!
//! A VM's device process (`hvsock-vhost`) sends `Gateway` on its VM's partition endpoint and gets
//! `Bound` (its partition's id, service zero) or `Error`: the session is then that VM's gateway.
//! It sends `Connect` for the guest's connects like any connector, and hvsockd sends it
//! `GuestConnect` with one file descriptor (the host end to splice) for each host-to-guest
//! connect; the device answers `Accepted` once the guest accepted, or `Rejected` with a code.
//!
//! Addresses travel as [`WireAddr`]: two GUIDs of 16 bytes each, in RFC 4122 (string) byte order.
//! Decoding checks the length first, then the header, then the body, each with its own error.

use std::fmt;

/// Frame magic: "hv".
pub const MAGIC: [u8; 2] = *b"hv";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest frame, header included.
pub const MAX_FRAME: usize = 2048;
/// Longest error message, in bytes.
pub const MAX_MESSAGE: usize = MAX_FRAME - HEADER_LEN - 2;
/// Largest backlog a listener may ask for.
pub const MAX_BACKLOG: u32 = 4096;

/// A partition id and a service id, each 16 bytes in RFC 4122 byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WireAddr {
    /// The VmId.
    pub vm: [u8; 16],
    /// The ServiceId.
    pub service: [u8; 16],
}

impl fmt::Debug for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            uuid::Uuid::from_bytes(self.vm),
            uuid::Uuid::from_bytes(self.service)
        )
    }
}

/// Why hvsockd refused or failed a request. Each maps to the `io::ErrorKind` a caller matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Nothing listens at the address (`ECONNREFUSED`).
    Refused,
    /// Policy forbids it: service not registered, disabled, or not allowed (`EACCES`).
    Denied,
    /// No partition by that id is reachable from the caller (`EHOSTUNREACH`); unknown and
    /// unreachable partitions look the same.
    Unreachable,
    /// The address is already bound in this partition (`EADDRINUSE`).
    AddrInUse,
    /// The address cannot be bound (`EADDRNOTAVAIL`), e.g. BROADCAST.
    AddrNotAvailable,
    /// A request field is invalid (`EINVAL`).
    InvalidInput,
    /// The connect timeout passed (`ETIMEDOUT`).
    TimedOut,
    /// Not supported here, e.g. binding PARENT in the root (`EOPNOTSUPP`).
    Unsupported,
    /// A limit was reached (`EAGAIN`/`ENOBUFS`).
    Busy,
    /// The peer broke the protocol; the session is closed.
    Protocol,
    /// hvsockd failed internally; see its log.
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Refused => 1,
            ErrorCode::Denied => 2,
            ErrorCode::Unreachable => 3,
            ErrorCode::AddrInUse => 4,
            ErrorCode::AddrNotAvailable => 5,
            ErrorCode::InvalidInput => 6,
            ErrorCode::TimedOut => 7,
            ErrorCode::Unsupported => 8,
            ErrorCode::Busy => 9,
            ErrorCode::Protocol => 10,
            ErrorCode::Internal => 11,
            ErrorCode::Other(n) => n,
        }
    }

    /// From the wire value; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::Refused,
            2 => ErrorCode::Denied,
            3 => ErrorCode::Unreachable,
            4 => ErrorCode::AddrInUse,
            5 => ErrorCode::AddrNotAvailable,
            6 => ErrorCode::InvalidInput,
            7 => ErrorCode::TimedOut,
            8 => ErrorCode::Unsupported,
            9 => ErrorCode::Busy,
            10 => ErrorCode::Protocol,
            11 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }

    /// The `io::ErrorKind` callers see.
    pub fn io_kind(self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            ErrorCode::Refused => K::ConnectionRefused,
            ErrorCode::Denied => K::PermissionDenied,
            ErrorCode::Unreachable => K::HostUnreachable,
            ErrorCode::AddrInUse => K::AddrInUse,
            ErrorCode::AddrNotAvailable => K::AddrNotAvailable,
            ErrorCode::InvalidInput => K::InvalidInput,
            ErrorCode::TimedOut => K::TimedOut,
            ErrorCode::Unsupported => K::Unsupported,
            ErrorCode::Busy => K::ResourceBusy,
            ErrorCode::Protocol => K::InvalidData,
            ErrorCode::Internal | ErrorCode::Other(_) => K::Other,
        }
    }

    /// A short stable name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Refused => "refused",
            ErrorCode::Denied => "denied",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::AddrInUse => "addr_in_use",
            ErrorCode::AddrNotAvailable => "addr_not_available",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Busy => "busy",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(_) => "other",
        }
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Client: connect to `target`; hvsockd gives up after `timeout_ms`.
    Connect {
        /// Request id, echoed in the answer.
        req: u32,
        /// The address to connect to.
        target: WireAddr,
        /// Connect timeout in milliseconds (1 to 300000).
        timeout_ms: u32,
    },
    /// Client: make this session a listener on `addr`.
    Bind {
        /// Request id, echoed in the answer.
        req: u32,
        /// The address to bind.
        addr: WireAddr,
        /// How many connections may wait unaccepted (1 to [`MAX_BACKLOG`]).
        backlog: u32,
    },
    /// Listener client: `count` more `Incoming` frames were accepted.
    Ack {
        /// How many.
        count: u32,
    },
    /// hvsockd: the connection is established; carries the connector's end.
    Connected {
        /// The request answered.
        req: u32,
        /// The connector's own address.
        local: WireAddr,
        /// The listener's address.
        peer: WireAddr,
    },
    /// hvsockd: the listener is bound.
    Bound {
        /// The request answered.
        req: u32,
        /// The bound address.
        local: WireAddr,
    },
    /// hvsockd: a new connection for a listener; carries the listener's end.
    Incoming {
        /// The listener's address as the connector reached it.
        local: WireAddr,
        /// The connector's address.
        peer: WireAddr,
    },
    /// Device: make this session its VM's gateway (the device answers host-to-guest connects).
    Gateway {
        /// Request id, echoed in the answer (`Bound` or `Error`).
        req: u32,
    },
    /// Device: the guest accepted the `GuestConnect` `req`.
    Accepted {
        /// The `GuestConnect` answered.
        req: u32,
    },
    /// Device: the guest (or the device) refused the `GuestConnect` `req`.
    Rejected {
        /// The `GuestConnect` answered.
        req: u32,
        /// Why.
        code: ErrorCode,
        /// What a person should read.
        message: String,
    },
    /// hvsockd, to a gateway: open a connection to vsock `port` in the guest; carries the host
    /// end of the connection, to splice to the guest's.
    GuestConnect {
        /// Request id, echoed in `Accepted` / `Rejected`.
        req: u32,
        /// The guest's vsock port.
        port: u32,
    },
    /// hvsockd: the request failed.
    Error {
        /// The request answered (0 if the session as a whole failed).
        req: u32,
        /// Why.
        code: ErrorCode,
        /// What a person should read.
        message: String,
    },
}

const KIND_CONNECT: u8 = 1;
const KIND_BIND: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_GATEWAY: u8 = 4;
const KIND_ACCEPTED: u8 = 5;
const KIND_REJECTED: u8 = 6;
const KIND_CONNECTED: u8 = 0x81;
const KIND_BOUND: u8 = 0x82;
const KIND_INCOMING: u8 = 0x83;
const KIND_ERROR: u8 = 0x84;
const KIND_GUEST_CONNECT: u8 = 0x85;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header.
    #[error("frame of {0} bytes is shorter than the 8-byte header")]
    Short(usize),
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is longer than the {MAX_FRAME}-byte limit")]
    Long(usize),
    /// The magic is not "hv".
    #[error("frame does not start with the magic \"hv\" (got {0:02x?}): not an hvsock client")]
    Magic([u8; 2]),
    /// An unknown protocol version.
    #[error("protocol version {0} is not supported (this side speaks version {VERSION})")]
    Version(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0:#04x}")]
    Kind(u8),
    /// The body does not have the size its kind requires.
    #[error("{kind} frame has a {got}-byte body, expected {expected}")]
    BodyLength {
        /// The frame kind.
        kind: &'static str,
        /// The body size of that kind.
        expected: usize,
        /// The body size received.
        got: usize,
    },
    /// An error message that is not UTF-8.
    #[error("error message is not UTF-8")]
    Utf8,
}

impl Frame {
    /// The frame's kind name, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Connect { .. } => "Connect",
            Frame::Bind { .. } => "Bind",
            Frame::Ack { .. } => "Ack",
            Frame::Connected { .. } => "Connected",
            Frame::Bound { .. } => "Bound",
            Frame::Incoming { .. } => "Incoming",
            Frame::Error { .. } => "Error",
            Frame::Gateway { .. } => "Gateway",
            Frame::Accepted { .. } => "Accepted",
            Frame::Rejected { .. } => "Rejected",
            Frame::GuestConnect { .. } => "GuestConnect",
        }
    }

    /// Whether this kind of frame carries exactly one file descriptor (and no other kind does).
    pub fn carries_fd(&self) -> bool {
        matches!(
            self,
            Frame::Connected { .. } | Frame::Incoming { .. } | Frame::GuestConnect { .. }
        )
    }

    /// Encodes the frame. Error messages longer than [`MAX_MESSAGE`] are cut at a character
    /// boundary.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, req) = match self {
            Frame::Connect { req, .. } => (KIND_CONNECT, *req),
            Frame::Bind { req, .. } => (KIND_BIND, *req),
            Frame::Ack { .. } => (KIND_ACK, 0),
            Frame::Connected { req, .. } => (KIND_CONNECTED, *req),
            Frame::Bound { req, .. } => (KIND_BOUND, *req),
            Frame::Incoming { .. } => (KIND_INCOMING, 0),
            Frame::Error { req, .. } => (KIND_ERROR, *req),
            Frame::Gateway { req } => (KIND_GATEWAY, *req),
            Frame::Accepted { req } => (KIND_ACCEPTED, *req),
            Frame::Rejected { req, .. } => (KIND_REJECTED, *req),
            Frame::GuestConnect { req, .. } => (KIND_GUEST_CONNECT, *req),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + 64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&req.to_le_bytes());
        let addr = |out: &mut Vec<u8>, a: &WireAddr| {
            out.extend_from_slice(&a.vm);
            out.extend_from_slice(&a.service);
        };
        match self {
            Frame::Connect {
                target, timeout_ms, ..
            } => {
                addr(&mut out, target);
                out.extend_from_slice(&timeout_ms.to_le_bytes());
            }
            Frame::Bind {
                addr: a, backlog, ..
            } => {
                addr(&mut out, a);
                out.extend_from_slice(&backlog.to_le_bytes());
            }
            Frame::Ack { count } => out.extend_from_slice(&count.to_le_bytes()),
            Frame::Connected { local, peer, .. } | Frame::Incoming { local, peer } => {
                addr(&mut out, local);
                addr(&mut out, peer);
            }
            Frame::Bound { local, .. } => addr(&mut out, local),
            Frame::Gateway { .. } | Frame::Accepted { .. } => {}
            Frame::GuestConnect { port, .. } => out.extend_from_slice(&port.to_le_bytes()),
            Frame::Error { code, message, .. } | Frame::Rejected { code, message, .. } => {
                out.extend_from_slice(&code.to_u16().to_le_bytes());
                let mut end = message.len().min(MAX_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&message.as_bytes()[..end]);
            }
        }
        out
    }

    /// Decodes one frame: length, then header, then body.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Short(bytes.len()));
        }
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::Long(bytes.len()));
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        if header[0..2] != MAGIC {
            return Err(DecodeError::Magic([header[0], header[1]]));
        }
        if header[2] != VERSION {
            return Err(DecodeError::Version(header[2]));
        }
        let kind = header[3];
        let req = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let expect = |name: &'static str, expected: usize| {
            if body.len() == expected {
                Ok(())
            } else {
                Err(DecodeError::BodyLength {
                    kind: name,
                    expected,
                    got: body.len(),
                })
            }
        };
        let addr_at = |at: usize| {
            let mut a = WireAddr::default();
            a.vm.copy_from_slice(&body[at..at + 16]);
            a.service.copy_from_slice(&body[at + 16..at + 32]);
            a
        };
        let u32_at =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        Ok(match kind {
            KIND_CONNECT => {
                expect("Connect", 36)?;
                Frame::Connect {
                    req,
                    target: addr_at(0),
                    timeout_ms: u32_at(32),
                }
            }
            KIND_BIND => {
                expect("Bind", 36)?;
                Frame::Bind {
                    req,
                    addr: addr_at(0),
                    backlog: u32_at(32),
                }
            }
            KIND_ACK => {
                expect("Ack", 4)?;
                Frame::Ack { count: u32_at(0) }
            }
            KIND_CONNECTED => {
                expect("Connected", 64)?;
                Frame::Connected {
                    req,
                    local: addr_at(0),
                    peer: addr_at(32),
                }
            }
            KIND_BOUND => {
                expect("Bound", 32)?;
                Frame::Bound {
                    req,
                    local: addr_at(0),
                }
            }
            KIND_INCOMING => {
                expect("Incoming", 64)?;
                Frame::Incoming {
                    local: addr_at(0),
                    peer: addr_at(32),
                }
            }
            KIND_ERROR | KIND_REJECTED => {
                let name = if kind == KIND_ERROR {
                    "Error"
                } else {
                    "Rejected"
                };
                if body.len() < 2 {
                    return Err(DecodeError::BodyLength {
                        kind: name,
                        expected: 2,
                        got: body.len(),
                    });
                }
                let code = ErrorCode::from_u16(u16::from_le_bytes([body[0], body[1]]));
                let message = std::str::from_utf8(&body[2..])
                    .map_err(|_| DecodeError::Utf8)?
                    .to_owned();
                if kind == KIND_ERROR {
                    Frame::Error { req, code, message }
                } else {
                    Frame::Rejected { req, code, message }
                }
            }
            KIND_GATEWAY => {
                expect("Gateway", 0)?;
                Frame::Gateway { req }
            }
            KIND_ACCEPTED => {
                expect("Accepted", 0)?;
                Frame::Accepted { req }
            }
            KIND_GUEST_CONNECT => {
                expect("GuestConnect", 4)?;
                Frame::GuestConnect {
                    req,
                    port: u32_at(0),
                }
            }
            other => return Err(DecodeError::Kind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(n: u8) -> WireAddr {
        WireAddr {
            vm: [n; 16],
            service: [n.wrapping_add(1); 16],
        }
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Connect {
                req: 7,
                target: addr(1),
                timeout_ms: 2000,
            },
            Frame::Bind {
                req: u32::MAX,
                addr: addr(2),
                backlog: 128,
            },
            Frame::Ack { count: 3 },
            Frame::Connected {
                req: 7,
                local: addr(3),
                peer: addr(4),
            },
            Frame::Bound {
                req: 1,
                local: addr(5),
            },
            Frame::Incoming {
                local: addr(6),
                peer: addr(7),
            },
            Frame::Error {
                req: 9,
                code: ErrorCode::Denied,
                message: "service echo is disabled".into(),
            },
            Frame::Error {
                req: 9,
                code: ErrorCode::Other(999),
                message: String::new(),
            },
            Frame::Gateway { req: 11 },
            Frame::Accepted { req: 12 },
            Frame::Rejected {
                req: 13,
                code: ErrorCode::Refused,
                message: "nothing listens on vsock port 5000 in the guest".into(),
            },
            Frame::GuestConnect {
                req: 14,
                port: 5000,
            },
        ]
    }

    #[test]
    fn device_kinds_have_their_reserved_values_and_sizes() {
        let gc = Frame::GuestConnect {
            req: 1,
            port: 0x0102_0304,
        }
        .encode();
        assert_eq!(gc[3], 0x85);
        assert_eq!(gc.len(), HEADER_LEN + 4);
        assert_eq!(&gc[8..12], &[4, 3, 2, 1]);
        assert_eq!(Frame::Gateway { req: 1 }.encode()[3], 0x04);
        assert_eq!(Frame::Accepted { req: 1 }.encode()[3], 0x05);
        let mut rejected = Frame::Rejected {
            req: 1,
            code: ErrorCode::Refused,
            message: String::new(),
        }
        .encode();
        assert_eq!(rejected[3], 0x06);
        rejected.truncate(HEADER_LEN + 1);
        assert!(matches!(
            Frame::decode(&rejected),
            Err(DecodeError::BodyLength {
                kind: "Rejected",
                ..
            })
        ));
        let mut gateway = Frame::Gateway { req: 1 }.encode();
        gateway.push(0);
        assert!(matches!(
            Frame::decode(&gateway),
            Err(DecodeError::BodyLength {
                kind: "Gateway",
                ..
            })
        ));
        assert!(Frame::GuestConnect { req: 0, port: 0 }.carries_fd());
        assert!(!Frame::Accepted { req: 0 }.carries_fd());
    }

    #[test]
    fn every_kind_round_trips() {
        for frame in samples() {
            assert_eq!(
                Frame::decode(&frame.encode()),
                Ok(frame.clone()),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn connect_layout_is_fixed() {
        let bytes = Frame::Connect {
            req: 0x0102_0304,
            target: addr(0xaa),
            timeout_ms: 2000,
        }
        .encode();
        assert_eq!(&bytes[..8], &[b'h', b'v', 1, 1, 4, 3, 2, 1]);
        assert_eq!(bytes.len(), 44);
        assert_eq!(&bytes[40..], &2000u32.to_le_bytes());
    }

    #[test]
    fn decode_checks_length_then_header_then_body() {
        assert_eq!(Frame::decode(b"hv\x01"), Err(DecodeError::Short(3)));
        assert_eq!(
            Frame::decode(&vec![0; MAX_FRAME + 1]),
            Err(DecodeError::Long(MAX_FRAME + 1))
        );
        assert_eq!(
            Frame::decode(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::Magic(*b"GE"))
        );
        assert_eq!(
            Frame::decode(b"hv\x02\x01\0\0\0\0"),
            Err(DecodeError::Version(2))
        );
        assert_eq!(
            Frame::decode(b"hv\x01\x7f\0\0\0\0"),
            Err(DecodeError::Kind(0x7f))
        );
        assert_eq!(
            Frame::decode(b"hv\x01\x01\0\0\0\0abc"),
            Err(DecodeError::BodyLength {
                kind: "Connect",
                expected: 36,
                got: 3
            })
        );
        assert_eq!(
            Frame::decode(b"hv\x01\x84\0\0\0\0\x01\0\xff\xfe"),
            Err(DecodeError::Utf8)
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let frame = Frame::Error {
            req: 1,
            code: ErrorCode::Internal,
            message: "é".repeat(MAX_MESSAGE),
        };
        let bytes = frame.encode();
        assert!(bytes.len() <= MAX_FRAME);
        match Frame::decode(&bytes) {
            Ok(Frame::Error { message, .. }) => {
                assert!(message.len() <= MAX_MESSAGE && message.len() >= MAX_MESSAGE - 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_codes_round_trip_and_map_to_io_kinds() {
        use std::io::ErrorKind as K;
        for n in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
        assert_eq!(ErrorCode::Refused.io_kind(), K::ConnectionRefused);
        assert_eq!(ErrorCode::Denied.io_kind(), K::PermissionDenied);
        assert_eq!(ErrorCode::AddrInUse.io_kind(), K::AddrInUse);
        assert_eq!(ErrorCode::TimedOut.io_kind(), K::TimedOut);
        assert_eq!(ErrorCode::Unreachable.io_kind(), K::HostUnreachable);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
            }
        }

        #[test]
        fn valid_headers_with_random_bodies_never_panic(
            kind in prop_oneof![Just(1u8), Just(2), Just(3), Just(0x81), Just(0x82), Just(0x83), Just(0x84)],
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut bytes = vec![b'h', b'v', VERSION, kind, 0, 0, 0, 0];
            bytes.extend_from_slice(&body);
            let _ = Frame::decode(&bytes);
        }
    }
}
