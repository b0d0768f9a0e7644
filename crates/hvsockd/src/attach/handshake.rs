//! The host-to-guest handshake over a VMM's hybrid-vsock socket, as a state machine
//! ([`Handshake`] moved by [`Event`]s), and [`connect_guest`], which drives it with retries
//! until the connector's timeout. See [the module above](super) for the protocol.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hvsock_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The reply parser is pure and lives with the other wire formats (fuzzed there, without
/// building hvsockd under the fuzzer).
pub use hvsock_proto::hybrid::{
    MAX_REPLY_LEN, ReplyError, ReplyReader, connect_request, parse_reply,
};

/// The first pause between handshake tries.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between handshake tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a handshake cannot succeed by trying again.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Nothing serves the VMM's socket.
    #[error("nothing serves it: {0}")]
    NotServing(#[source] io::Error),
    /// The VMM answered something else than `OK <port>`.
    #[error("its answer was not `OK <port>`: {0}")]
    BadReply(#[source] ReplyError),
    /// A system call failed.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An event that makes no sense in the state (a bug; logged).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The state of one handshake attempt.
#[derive(Debug)]
pub enum Handshake {
    /// Connecting to `PATH`.
    Connecting,
    /// Connected; the request (`len` bytes) goes out in one write.
    Sending {
        /// The request's length.
        len: usize,
    },
    /// Request sent; reading the reply.
    Reading(ReplyReader),
    /// `OK <host_port>`: the socket is now the guest's stream.
    Established {
        /// The VMM's host-side port.
        host_port: u32,
    },
    /// Closed or reset before `OK`: no listener in the guest, or the VMM dropped the
    /// handshake. Worth another try.
    Dropped {
        /// What the VMM did.
        why: String,
    },
    /// Cannot succeed.
    Failed(Failure),
}

/// What happened on the socket.
#[derive(Debug)]
pub enum Event {
    /// `connect` to `PATH` succeeded.
    Connected,
    /// `connect` to `PATH` failed.
    ConnectFailed(io::Error),
    /// The one write of the request wrote this many bytes.
    Wrote(usize),
    /// The write failed.
    WriteFailed(io::Error),
    /// One byte of the reply.
    Byte(u8),
    /// End of file before the reply's newline.
    Eof,
    /// The read failed.
    ReadFailed(io::Error),
}

fn is_drop(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl Handshake {
    /// The state after `event`.
    pub fn on(self, event: Event, request_len: usize) -> Handshake {
        match (self, event) {
            (Handshake::Connecting, Event::Connected) => Handshake::Sending { len: request_len },
            (Handshake::Connecting, Event::ConnectFailed(e)) => match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    Handshake::Failed(Failure::NotServing(e))
                }
                // The VMM's listen backlog is full: it is busy, not gone.
                io::ErrorKind::WouldBlock => Handshake::Dropped {
                    why: "its listen backlog was full".into(),
                },
                _ => Handshake::Failed(Failure::Io {
                    doing: "connecting",
                    source: e,
                }),
            },
            (Handshake::Sending { len }, Event::Wrote(n)) if n == len => {
                Handshake::Reading(ReplyReader::default())
            }
            (Handshake::Sending { len }, Event::Wrote(n)) => Handshake::Dropped {
                why: format!("it took {n} of the {len} bytes of the request"),
            },
            (Handshake::Sending { .. }, Event::WriteFailed(e)) if is_drop(&e) => {
                Handshake::Dropped {
                    why: format!("it closed the connection before the request ({e})"),
                }
            }
            (Handshake::Sending { .. }, Event::WriteFailed(e)) => Handshake::Failed(Failure::Io {
                doing: "sending CONNECT",
                source: e,
            }),
            (Handshake::Reading(mut reader), Event::Byte(b)) => match reader.push(b) {
                None => Handshake::Reading(reader),
                Some(Ok(host_port)) => Handshake::Established { host_port },
                Some(Err(e)) => Handshake::Failed(Failure::BadReply(e)),
            },
            (Handshake::Reading(reader), Event::Eof) => Handshake::Dropped {
                why: if reader.so_far().is_empty() {
                    "it closed the connection without answering".into()
                } else {
                    format!(
                        "it closed the connection after {:?}",
                        String::from_utf8_lossy(reader.so_far())
                    )
                },
            },
            (Handshake::Reading(_), Event::ReadFailed(e)) if is_drop(&e) => Handshake::Dropped {
                why: format!("it reset the connection without answering ({e})"),
            },
            (Handshake::Reading(_), Event::ReadFailed(e)) => Handshake::Failed(Failure::Io {
                doing: "reading the answer",
                source: e,
            }),
            (state, event) => {
                tracing::error!(?state, ?event, "hybrid-vsock handshake: unexpected event");
                Handshake::Failed(Failure::Internal(format!(
                    "event {event:?} in state {state:?}"
                )))
            }
        }
    }

    /// Whether no more events can change it.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Handshake::Established { .. } | Handshake::Dropped { .. } | Handshake::Failed(_)
        )
    }
}

/// Runs the handshake on a connected `stream`: sends the request for `port` in one write,
/// then reads the reply byte by byte. Returns the final state.
pub async fn handshake<S>(stream: &mut S, port: u32) -> Handshake
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = connect_request(port);
    let mut state = Handshake::Connecting.on(Event::Connected, request.len());
    while !state.is_done() {
        let event = match &state {
            Handshake::Sending { .. } => match stream.write(&request).await {
                Ok(n) => Event::Wrote(n),
                Err(e) => Event::WriteFailed(e),
            },
            _ => {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte).await {
                    Ok(0) => Event::Eof,
                    Ok(_) => Event::Byte(byte[0]),
                    Err(e) => Event::ReadFailed(e),
                }
            }
        };
        state = state.on(event, request.len());
    }
    state
}

/// Why a connection into a guest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Nothing serves the VMM's socket: the VM is not running.
    #[error(
        "the VM is not running, or its VMM does not serve {path}: {source} (start the VMM, or fix the path with `hvsock vm remove` and `vm add --hybrid-vsock`)"
    )]
    NotServing {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every try was closed before `OK`.
    #[error(
        "the guest did not accept the connection on vsock port {port} ({tries} tries in {elapsed_ms} ms, last: the VMM {last}): either nothing in the guest listens on port {port}, or its VMM ({path}) dropped the handshake; from the host the two look the same"
    )]
    NotAccepted {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// Handshakes tried.
        tries: u32,
        /// How long they took.
        elapsed_ms: u128,
        /// What happened to the last.
        last: String,
    },
    /// The timeout passed while the VMM or the guest kept silent.
    #[error(
        "no answer to CONNECT {port} on {path} within {timeout_ms} ms ({tries} tries): is the guest up and its vsock driver loaded?"
    )]
    TimedOut {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// Handshakes tried.
        tries: u32,
        /// The timeout.
        timeout_ms: u128,
    },
    /// Anything else.
    #[error("talking to the VMM at {path}: {source}")]
    Failed {
        /// The hybrid-vsock socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: Failure,
    },
}

impl AttachError {
    /// The wire code and metrics reason of this error.
    pub fn code(&self) -> (ErrorCode, &'static str) {
        match self {
            AttachError::NotServing { .. } => (ErrorCode::Unreachable, "vm_not_running"),
            AttachError::NotAccepted { .. } => (ErrorCode::Refused, "vm_refused"),
            AttachError::TimedOut { .. } => (ErrorCode::TimedOut, "timed_out"),
            AttachError::Failed { .. } => (ErrorCode::Refused, "vm_failed"),
        }
    }
}

/// Makes a connection into the guest on `port` through the VMM's hybrid-vsock socket `path`,
/// retrying dropped handshakes until `timeout`. Returns the guest's stream, blocking, ready to
/// hand over.
pub async fn connect_guest(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<OwnedFd, AttachError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let attempt = async {
            let request_len = connect_request(port).len();
            match tokio::net::UnixStream::connect(path).await {
                Ok(mut stream) => {
                    let state = handshake(&mut stream, port).await;
                    (state, Some(stream))
                }
                Err(e) => (
                    Handshake::Connecting.on(Event::ConnectFailed(e), request_len),
                    None,
                ),
            }
        };
        let (state, stream) = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(done) => done,
            Err(_) => {
                return Err(AttachError::TimedOut {
                    path: path.to_owned(),
                    port,
                    tries,
                    timeout_ms: timeout.as_millis(),
                });
            }
        };
        match (state, stream) {
            (Handshake::Established { host_port }, Some(stream)) => {
                tracing::debug!(path = %path.display(), port, host_port, tries, "guest connection established");
                let std = stream.into_std().map_err(|source| AttachError::Failed {
                    path: path.to_owned(),
                    source: Failure::Io {
                        doing: "taking the socket from the runtime",
                        source,
                    },
                })?;
                // The connector's HvStream blocks unless asked otherwise.
                std.set_nonblocking(false)
                    .map_err(|source| AttachError::Failed {
                        path: path.to_owned(),
                        source: Failure::Io {
                            doing: "making the socket blocking",
                            source,
                        },
                    })?;
                return Ok(OwnedFd::from(std));
            }
            (Handshake::Dropped { why }, _) => {
                tracing::debug!(path = %path.display(), port, tries, "handshake dropped: the VMM {why}");
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(AttachError::NotAccepted {
                        path: path.to_owned(),
                        port,
                        tries,
                        elapsed_ms: started.elapsed().as_millis(),
                        last: why,
                    });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            (Handshake::Failed(Failure::NotServing(source)), _) => {
                return Err(AttachError::NotServing {
                    path: path.to_owned(),
                    source,
                });
            }
            (Handshake::Failed(source), _) => {
                return Err(AttachError::Failed {
                    path: path.to_owned(),
                    source,
                });
            }
            (state, _) => {
                return Err(AttachError::Failed {
                    path: path.to_owned(),
                    source: Failure::Internal(format!("the handshake ended in {state:?}")),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run(events: Vec<Event>) -> Handshake {
        let len = connect_request(5).len();
        let mut state = Handshake::Connecting;
        for e in events {
            state = state.on(e, len);
        }
        state
    }

    fn err(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "x")
    }

    #[test]
    fn state_machine_table() {
        let len = connect_request(5).len();
        let ok = |extra: &[u8]| {
            let mut v = vec![Event::Connected, Event::Wrote(len)];
            v.extend(extra.iter().map(|&b| Event::Byte(b)));
            v
        };
        assert!(matches!(
            run(ok(b"OK 77\n")),
            Handshake::Established { host_port: 77 }
        ));
        assert!(matches!(run(ok(b"OK 77")), Handshake::Reading(_)));
        assert!(matches!(
            run(ok(b"NO\n")),
            Handshake::Failed(Failure::BadReply(ReplyError::NotOk(_)))
        ));
        assert!(matches!(
            run(ok(&[b'7'; MAX_REPLY_LEN])),
            Handshake::Failed(Failure::BadReply(ReplyError::TooLong))
        ));
        // Dropped: retryable.
        let mut eof = ok(b"OK");
        eof.push(Event::Eof);
        assert!(matches!(run(eof), Handshake::Dropped { .. }));
        assert!(matches!(
            run(vec![
                Event::Connected,
                Event::WriteFailed(err(io::ErrorKind::BrokenPipe))
            ]),
            Handshake::Dropped { .. }
        ));
        let mut reset = ok(b"");
        reset.push(Event::ReadFailed(err(io::ErrorKind::ConnectionReset)));
        assert!(matches!(run(reset), Handshake::Dropped { .. }));
        assert!(matches!(
            run(vec![Event::Connected, Event::Wrote(len - 1)]),
            Handshake::Dropped { .. }
        ));
        assert!(matches!(
            run(vec![Event::ConnectFailed(err(io::ErrorKind::WouldBlock))]),
            Handshake::Dropped { .. }
        ));
        // Failed: not retryable.
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            assert!(matches!(
                run(vec![Event::ConnectFailed(err(kind))]),
                Handshake::Failed(Failure::NotServing(_))
            ));
        }
        assert!(matches!(
            run(vec![Event::ConnectFailed(err(
                io::ErrorKind::PermissionDenied
            ))]),
            Handshake::Failed(Failure::Io { .. })
        ));
        let mut other = ok(b"");
        other.push(Event::ReadFailed(err(io::ErrorKind::InvalidData)));
        assert!(matches!(run(other), Handshake::Failed(Failure::Io { .. })));
        // Out of order: a logged internal failure, not a panic.
        assert!(matches!(
            run(vec![Event::Byte(b'O')]),
            Handshake::Failed(Failure::Internal(_))
        ));
        assert!(matches!(
            run(vec![Event::Connected, Event::Eof]),
            Handshake::Failed(Failure::Internal(_))
        ));
    }

    /// A fake VMM on the other end of an in-memory pipe.
    async fn against(reply: &'static [u8], then_close: bool) -> (Handshake, Vec<u8>, Vec<u8>) {
        let (mut ours, mut vmm) = tokio::io::duplex(64);
        let vmm_side = tokio::spawn(async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while vmm.read(&mut b).await.unwrap() == 1 {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            vmm.write_all(reply).await.unwrap();
            if then_close {
                drop(vmm);
                return (line, None);
            }
            (line, Some(vmm))
        });
        let state = handshake(&mut ours, 2761).await;
        let (request, vmm) = vmm_side.await.unwrap();
        // What the handshake left unread stays for the connector.
        let mut rest = Vec::new();
        if let Some(vmm) = vmm {
            drop(vmm);
            ours.read_to_end(&mut rest).await.unwrap();
        }
        (state, request, rest)
    }

    #[tokio::test]
    async fn the_driver_sends_one_line_and_reads_no_further_than_ok() {
        let (state, request, rest) = against(b"OK 1025\nguest bytes", false).await;
        assert!(
            matches!(state, Handshake::Established { host_port: 1025 }),
            "{state:?}"
        );
        assert_eq!(request, b"CONNECT 2761\n");
        assert_eq!(rest, b"guest bytes");
    }

    #[tokio::test]
    async fn the_driver_reports_a_close_before_ok_as_dropped() {
        let (state, _, _) = against(b"", true).await;
        assert!(matches!(state, Handshake::Dropped { .. }), "{state:?}");
        let (state, _, _) = against(b"OK 1", true).await;
        assert!(matches!(state, Handshake::Dropped { .. }), "{state:?}");
    }

    #[tokio::test]
    async fn the_driver_refuses_a_bad_answer() {
        let (state, _, _) = against(b"FAIL\n", false).await;
        assert!(
            matches!(state, Handshake::Failed(Failure::BadReply(_))),
            "{state:?}"
        );
    }
}
