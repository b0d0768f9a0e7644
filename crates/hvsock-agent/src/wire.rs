//! The framing and the version negotiation every integration service shares.
//!
//! # Primer
//!
//! A connection to any service of the agent is a sequence of frames in both directions:
//!
//! ```text
//! +----------------+--------+----------------------+
//! | len: u32 LE    | kind   | body (len - 1 bytes) |
//! +----------------+--------+----------------------+
//! ```
//!
//! `len` counts the kind byte and the body, so it is at least 1 and at most [`MAX_FRAME`]
//! (256 KiB): a longer header is refused before anything is buffered. Bodies are either raw
//! bytes (data: stdin, output, file contents, at most [`MAX_DATA`] per frame) or one JSON
//! object (control messages), as each service's module documents. Kinds `0x01`–`0x0f` are
//! common to every service:
//!
//! | kind | name | body |
//! | --- | --- | --- |
//! | `0x01` | Hello (client → server, first frame) | `{"service": NAME, "min": u16, "max": u16, "client": VERSION}` |
//! | `0x02` | Welcome (server → client, answer) | `{"service": NAME, "version": u16, "agent": VERSION}` |
//! | `0x03` | Error (either way, then the sender closes) | `{"kind": KIND, "message": TEXT}` |
//!
//! The client speaks first: Hello names the service it expects on that port and the range of
//! protocol versions it speaks; the server answers Welcome with the highest version both
//! speak, or Error (`kind: "version"` or `"service"`) and closes. Everything after the Welcome
//! is the service's own protocol at that version. There is no half-close in the protocols
//! (some VMMs' vsock cannot carry one): every stream of data ends with a frame that says so.
//!
//! Anything out of place (an oversized or empty frame, a kind not valid in the state, a body
//! that does not parse, a connection that ends mid-frame) is a [`WireError`]: the side that
//! sees it sends Error if it still can, closes that one connection, and nothing else is
//! affected.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The largest frame (kind + body) either side accepts: 256 KiB.
pub const MAX_FRAME: usize = 256 * 1024;
/// The most data bytes one frame carries: 64 KiB.
pub const MAX_DATA: usize = 64 * 1024;

/// Hello (client → server).
pub const HELLO: u8 = 0x01;
/// Welcome (server → client).
pub const WELCOME: u8 = 0x02;
/// Error (either way).
pub const ERROR: u8 = 0x03;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is (see each service's table).
    pub kind: u8,
    /// Its body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame whose body is `value` as JSON.
    pub fn json(kind: u8, value: &impl Serialize) -> Frame {
        // Serializing our own plain structs cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Frame { kind, body }
    }

    /// The body as JSON of type `T`.
    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, WireError> {
        serde_json::from_slice(&self.body).map_err(|source| WireError::BadBody {
            kind: self.kind,
            source,
        })
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.body.len());
        let len = u32::try_from(self.body.len() + 1).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.push(self.kind);
        out.extend_from_slice(&self.body);
        out
    }
}

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the connection failed.
    #[error("the connection failed: {0}")]
    Io(#[source] io::Error),
    /// The peer closed the connection where a frame was expected.
    #[error("the peer closed the connection {0}")]
    Closed(&'static str),
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    /// A frame header announced more than the limit.
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// What the header said.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame header announced nothing at all (not even a kind).
    #[error("an empty frame (length 0)")]
    Empty,
    /// A frame whose kind is not valid here.
    #[error("unexpected frame kind {kind:#04x} {state}")]
    Unexpected {
        /// Its kind.
        kind: u8,
        /// Where it came (`while waiting for Hello`).
        state: &'static str,
    },
    /// A control frame whose JSON body does not parse.
    #[error("frame kind {kind:#04x} has a malformed body: {source}")]
    BadBody {
        /// Its kind.
        kind: u8,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A message that parsed but breaks the protocol's rules.
    #[error("{0}")]
    Invalid(String),
    /// The peer ended the session with an Error frame.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// This side refused the peer and has told it so (an Error frame was sent).
    #[error("refused: {}", .0.message)]
    Refused(RemoteError),
}

impl WireError {
    /// The error to send the peer about this failure, if it is worth telling.
    pub fn to_remote(&self) -> Option<RemoteError> {
        match self {
            WireError::Io(_)
            | WireError::Closed(_)
            | WireError::Truncated
            | WireError::Remote(_)
            | WireError::Refused(_) => None,
            other => Some(RemoteError::new(ErrorKind::Protocol, other.to_string())),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// What kind of failure an Error frame reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peer broke the protocol.
    Protocol,
    /// No protocol version both sides speak.
    Version,
    /// The port serves another service.
    Service,
    /// The agent does not serve this (disabled in its configuration).
    Disabled,
    /// Too many sessions at once.
    Busy,
    /// A path or a command does not exist.
    NotFound,
    /// Not allowed.
    PermissionDenied,
    /// The file system is full.
    NoSpace,
    /// The target exists and cannot be replaced (e.g. a directory by a file).
    Exists,
    /// A request that makes no sense (bad path, bad user, ...).
    Invalid,
    /// An integrity check failed.
    Integrity,
    /// Anything else.
    Other,
    /// A kind a newer peer sent.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The kind of an I/O failure.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::NoSpace,
            io::ErrorKind::AlreadyExists
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::DirectoryNotEmpty => ErrorKind::Exists,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => ErrorKind::Invalid,
            _ => ErrorKind::Other,
        }
    }
}

/// The body of an Error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for people.
    pub message: String,
}

impl RemoteError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
        }
    }

    /// The Error frame.
    pub fn frame(&self) -> Frame {
        Frame::json(ERROR, self)
    }
}

/// Splits a byte stream into frames, checking each header before buffering its body.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(MAX_FRAME)
    }
}

impl Decoder {
    /// A decoder that refuses frames over `max` bytes (kind + body).
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether bytes of an incomplete frame are waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole frame, `None` if more bytes are needed, or the error that ends the
    /// connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(header);
        let len = usize::try_from(u32::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = self.buf[4];
        let body = self.buf[5..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(Frame { kind, body }))
    }

    /// Reads from `reader` until a whole frame is there. `Ok(None)` at a clean end of the
    /// connection (between frames).
    pub fn read_frame(&mut self, reader: &mut impl Read) -> Result<Option<Frame>, WireError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            let n = match reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::Io(e)),
            };
            if n == 0 {
                return if self.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            self.push(&chunk[..n]);
        }
    }

    /// Like [`read_frame`](Decoder::read_frame), but the end of the connection is an error
    /// that says what was awaited, and an Error frame becomes [`WireError::Remote`].
    pub fn expect_frame(
        &mut self,
        reader: &mut impl Read,
        waiting_for: &'static str,
    ) -> Result<Frame, WireError> {
        match self.read_frame(reader)? {
            Some(frame) if frame.kind == ERROR => Err(WireError::Remote(frame.parse()?)),
            Some(frame) => Ok(frame),
            None => Err(WireError::Closed(waiting_for)),
        }
    }
}

/// Writes one frame whole.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> Result<(), WireError> {
    writer.write_all(&frame.encode())?;
    writer.flush()?;
    Ok(())
}

/// Writes one data frame of `kind` carrying `data` (at most [`MAX_DATA`] bytes).
pub fn write_data(writer: &mut impl Write, kind: u8, data: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind;
    let mut buf = Vec::with_capacity(5 + data.len());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(data);
    writer.write_all(&buf)?;
    Ok(())
}

/// Hello's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The service the client expects on this port.
    pub service: String,
    /// The lowest protocol version it speaks.
    pub min: u16,
    /// The highest.
    pub max: u16,
    /// The client's software version, for logs.
    #[serde(default)]
    pub client: String,
}

/// Welcome's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The service this port serves.
    pub service: String,
    /// The version both will speak.
    pub version: u16,
    /// The agent's software version.
    #[serde(default)]
    pub agent: String,
}

/// This crate's version, as Hello and Welcome carry it.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The client's side of the negotiation: sends Hello, returns the server's Welcome.
pub fn client_hello(
    stream: &mut (impl Read + Write),
    decoder: &mut Decoder,
    service: &str,
    versions: (u16, u16),
) -> Result<Welcome, WireError> {
    let hello = Hello {
        service: service.to_owned(),
        min: versions.0,
        max: versions.1,
        client: SOFTWARE_VERSION.to_owned(),
    };
    write_frame(stream, &Frame::json(HELLO, &hello))?;
    let frame = decoder.expect_frame(stream, "before answering Hello")?;
    if frame.kind != WELCOME {
        return Err(WireError::Unexpected {
            kind: frame.kind,
            state: "in answer to Hello",
        });
    }
    let welcome: Welcome = frame.parse()?;
    if welcome.service != service || welcome.version < versions.0 || welcome.version > versions.1 {
        return Err(WireError::Invalid(format!(
            "the agent answered for service {:?} version {}, but {service:?} {}..={} was asked",
            welcome.service, welcome.version, versions.0, versions.1
        )));
    }
    Ok(welcome)
}

/// The version both speak, given the client's Hello, or the Error to send.
pub fn negotiate(hello: &Hello, service: &str, versions: (u16, u16)) -> Result<u16, RemoteError> {
    if hello.service != service {
        return Err(RemoteError::new(
            ErrorKind::Service,
            format!(
                "this port serves {service:?}, not {:?}: check the port the client uses",
                hello.service
            ),
        ));
    }
    let version = hello.max.min(versions.1);
    if hello.min > hello.max || version < hello.min.max(versions.0) {
        return Err(RemoteError::new(
            ErrorKind::Version,
            format!(
                "no common protocol version for {service:?}: the client speaks {}..={}, this agent {}..={}; upgrade the older side",
                hello.min, hello.max, versions.0, versions.1
            ),
        ));
    }
    Ok(version)
}

/// The server's side of the negotiation: reads Hello, answers Welcome (or Error, then fails).
pub fn server_hello(
    stream: &mut (impl Read + Write),
    decoder: &mut Decoder,
    service: &str,
    versions: (u16, u16),
) -> Result<(u16, Hello), WireError> {
    let frame = decoder.expect_frame(stream, "before sending Hello")?;
    if frame.kind != HELLO {
        return Err(WireError::Unexpected {
            kind: frame.kind,
            state: "while waiting for Hello",
        });
    }
    let hello: Hello = frame.parse()?;
    match negotiate(&hello, service, versions) {
        Ok(version) => {
            let welcome = Welcome {
                service: service.to_owned(),
                version,
                agent: SOFTWARE_VERSION.to_owned(),
            };
            write_frame(stream, &Frame::json(WELCOME, &welcome))?;
            Ok((version, hello))
        }
        Err(refusal) => {
            let _ = write_frame(stream, &refusal.frame());
            Err(WireError::Refused(refusal))
        }
    }
}

/// Tells the peer why the session ends, if it is worth telling, ignoring a failure to send.
pub fn send_error(writer: &mut impl Write, error: &WireError) {
    if let Some(remote) = error.to_remote() {
        let _ = write_frame(writer, &remote.frame());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_any_split() {
        let frames = [
            Frame {
                kind: 0x10,
                body: b"{}".to_vec(),
            },
            Frame {
                kind: 0x12,
                body: vec![],
            },
            Frame {
                kind: 0x16,
                body: vec![7; 1000],
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for split in [1, 2, 3, 5, 7, 64, bytes.len()] {
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split {split}");
            assert!(dec.is_empty());
        }
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_from_the_header() {
        let mut dec = Decoder::new(16);
        dec.push(&17u32.to_le_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(WireError::TooLarge { len: 17, max: 16 })
        ));
        let mut dec = Decoder::new(16);
        dec.push(&[0, 0, 0, 0, 9]);
        assert!(matches!(dec.next_frame(), Err(WireError::Empty)));
    }

    #[test]
    fn a_connection_ending_mid_frame_is_truncated() {
        let mut dec = Decoder::default();
        let bytes = Frame {
            kind: 1,
            body: b"abc".to_vec(),
        }
        .encode();
        let mut reader = &bytes[..5];
        assert!(matches!(
            dec.read_frame(&mut reader),
            Err(WireError::Truncated)
        ));
        let mut dec = Decoder::default();
        let mut reader: &[u8] = &[];
        assert!(matches!(dec.read_frame(&mut reader), Ok(None)));
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_or_says_why_not() {
        let hello = |service: &str, min, max| Hello {
            service: service.into(),
            min,
            max,
            client: String::new(),
        };
        assert_eq!(negotiate(&hello("s", 1, 3), "s", (1, 2)), Ok(2));
        assert_eq!(negotiate(&hello("s", 2, 2), "s", (1, 2)), Ok(2));
        let e = negotiate(&hello("s", 3, 4), "s", (1, 2)).expect_err("none");
        assert_eq!(e.kind, ErrorKind::Version);
        assert!(e.message.contains("3..=4"), "{}", e.message);
        let e = negotiate(&hello("s", 2, 1), "s", (1, 2)).expect_err("inverted");
        assert_eq!(e.kind, ErrorKind::Version);
        let e = negotiate(&hello("files", 1, 1), "session", (1, 1)).expect_err("other");
        assert_eq!(e.kind, ErrorKind::Service);
    }

    #[test]
    fn unknown_error_kinds_from_newer_peers_still_parse() {
        let e: RemoteError =
            serde_json::from_str(r#"{"kind":"brand_new","message":"m"}"#).expect("parses");
        assert_eq!(e.kind, ErrorKind::Unknown);
    }
}
