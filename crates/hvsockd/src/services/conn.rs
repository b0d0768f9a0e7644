//! The agent wire's frames ([`hvsock_agent::wire`]) over an async byte stream, for the host's
//! side of a served service: read and write frames under a size bound, and the Hello/Welcome.

use std::time::Duration;

use hvsock_agent::wire::{self, Decoder, ERROR, Frame, HELLO, Hello, WELCOME, Welcome, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a new connection may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames in, frames out, over any byte stream.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Frames of at most `max_frame` bytes over `stream`: a larger one is an error.
    pub fn new(stream: S, max_frame: usize) -> Conn<S> {
        Conn {
            stream,
            decoder: Decoder::new(max_frame),
        }
    }

    /// The next frame; `None` at a clean end; an Error frame becomes [`WireError::Remote`].
    pub async fn read(&mut self) -> Result<Option<Frame>, WireError> {
        let mut chunk = [0u8; 4 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                if frame.kind == ERROR {
                    return Err(WireError::Remote(frame.parse()?));
                }
                return Ok(Some(frame));
            }
            let n = self.stream.read(&mut chunk).await.map_err(WireError::Io)?;
            if n == 0 {
                return if self.decoder.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            self.decoder.push(&chunk[..n]);
        }
    }

    /// The next frame, as [`Conn::read`], for a service whose agent sends something at least
    /// every `idle`: `None` also when `ended` fires first; silence for `idle` is an error that
    /// says what the agent should have done (`expected`, e.g. "the agent beats every 2 s").
    pub async fn next_within(
        &mut self,
        idle: Duration,
        ended: &CancellationToken,
        expected: &str,
    ) -> Result<Option<Frame>, WireError> {
        tokio::select! {
            frame = tokio::time::timeout(idle, self.read()) => frame.unwrap_or_else(|_| {
                Err(WireError::Invalid(format!(
                    "nothing for {} s ({expected})",
                    idle.as_secs()
                )))
            }),
            () = ended.cancelled() => Ok(None),
        }
    }

    /// Writes `frames`, in one write.
    pub async fn write(
        &mut self,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), WireError> {
        let mut buf = Vec::new();
        for frame in frames {
            buf.extend_from_slice(&frame.encode());
        }
        self.stream.write_all(&buf).await.map_err(WireError::Io)?;
        self.stream.flush().await.map_err(WireError::Io)?;
        Ok(())
    }

    /// Tells the peer why it ends, if worth telling; a failure to send is ignored.
    pub async fn send_error(&mut self, error: &WireError) {
        if let Some(remote) = error.to_remote() {
            let _ = self.write([remote.frame()]).await;
        }
    }

    /// The server's side of the negotiation: waits [`HELLO_TIMEOUT`] at most for Hello,
    /// answers Welcome with the version both speak, or an Error frame and fails (the peer was
    /// told).
    pub async fn welcome(&mut self, service: &str, versions: (u16, u16)) -> Result<u16, WireError> {
        let result = self.negotiate(service, versions).await;
        if let Err(e) = &result {
            if !matches!(e, WireError::Refused(_)) {
                self.send_error(e).await;
            }
        }
        result
    }

    /// [`Conn::welcome`], unless `ended` fires first (a newer connection took over, or hvsockd
    /// stops): `None` then.
    pub async fn welcome_unless(
        &mut self,
        service: &str,
        versions: (u16, u16),
        ended: &CancellationToken,
    ) -> Result<Option<u16>, WireError> {
        tokio::select! {
            welcomed = self.welcome(service, versions) => welcomed.map(Some),
            () = ended.cancelled() => Ok(None),
        }
    }

    async fn negotiate(&mut self, service: &str, versions: (u16, u16)) -> Result<u16, WireError> {
        let frame = match tokio::time::timeout(HELLO_TIMEOUT, self.read()).await {
            Ok(frame) => frame?.ok_or(WireError::Closed("before sending Hello"))?,
            Err(_) => {
                return Err(WireError::Invalid(format!(
                    "no Hello within {} s",
                    HELLO_TIMEOUT.as_secs()
                )));
            }
        };
        if frame.kind != HELLO {
            return Err(WireError::Unexpected {
                kind: frame.kind,
                state: "while waiting for Hello",
            });
        }
        let hello: Hello = frame.parse()?;
        match wire::negotiate(&hello, service, versions) {
            Ok(version) => {
                self.write([Frame::json(
                    WELCOME,
                    &Welcome {
                        service: service.to_owned(),
                        version,
                        agent: wire::SOFTWARE_VERSION.to_owned(),
                    },
                )])
                .await?;
                Ok(version)
            }
            Err(refusal) => {
                let _ = self.write([refusal.frame()]).await;
                Err(WireError::Refused(refusal))
            }
        }
    }
}
