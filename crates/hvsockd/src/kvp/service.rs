//! The host's side of `hvsock-kvp` (protocol: [`hvsock_agent::kvp`]): one agent connection of
//! one partition.
//!
//! ```text
//!  Hello ─▶ Welcome (or Error, end)
//!  then at once: the host pool's snapshot (Set…, Synced), and from then on each change of
//!  the host pool as a diff (Set / Delete), while the agent's snapshot and changes fill the
//!  guest pool ([`GuestFeed`]); the agent's Synced ends its snapshot
//! ```
//!
//! The connection ends, with an Error frame when worth telling, on anything out of place
//! (oversized frame, malformed body, bad key or value, a pool over the bound, Synced twice), on
//! a newer connection of the same partition, on the partition's removal and on shutdown;
//! nothing else is affected.

use std::sync::Arc;
use std::time::Duration;

use hvsock::VmId;
use hvsock_agent::kvp::{self, Msg};
use hvsock_agent::wire::{
    self, Decoder, ERROR, ErrorKind, Frame, HELLO, Hello, RemoteError, WELCOME, Welcome, WireError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{GuestFeed, Pool, Pools};

/// How long a new connection may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frame taken from an agent: a Set of the longest key and value, JSON-escaped
/// (at most 6 bytes per byte), with room to spare.
pub const MAX_FRAME: usize = 32 * 1024;

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The agent closed it.
    Closed,
    /// A newer connection of the partition took over, or the partition was removed.
    Replaced,
    /// hvsockd is stopping.
    Shutdown,
}

/// Frames in, frames out, over any byte stream.
struct Conn<S> {
    stream: S,
    decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next frame; `None` at a clean end; an Error frame becomes [`WireError::Remote`].
    async fn read(&mut self) -> Result<Option<Frame>, WireError> {
        let mut chunk = [0u8; 8 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                if frame.kind == ERROR {
                    return Err(WireError::Remote(frame.parse()?));
                }
                return Ok(Some(frame));
            }
            let n = self.stream.read(&mut chunk).await?;
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

    async fn write(&mut self, frames: impl IntoIterator<Item = Frame>) -> Result<(), WireError> {
        let mut buf = Vec::new();
        for frame in frames {
            buf.extend_from_slice(&frame.encode());
        }
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Tells the peer why it ends, if worth telling; a failure to send is ignored.
    async fn send_error(&mut self, error: &WireError) {
        if let Some(remote) = error.to_remote() {
            let _ = self.write([remote.frame()]).await;
        }
    }
}

/// Serves one agent connection of partition `vm` until it ends; `Err` is what broke it (the
/// agent was told, when worth telling).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    pools: Arc<Pools>,
    vm: VmId,
    shutdown: CancellationToken,
) -> Result<End, WireError> {
    let mut conn = Conn {
        stream,
        decoder: Decoder::new(MAX_FRAME),
    };
    let hello = tokio::select! {
        hello = tokio::time::timeout(HELLO_TIMEOUT, conn.read()) => hello,
        () = shutdown.cancelled() => return Ok(End::Shutdown),
    };
    let frame = match hello {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Err(WireError::Closed("before sending Hello")),
        Ok(Err(e)) => {
            conn.send_error(&e).await;
            return Err(e);
        }
        Err(_) => {
            let e = WireError::Invalid(format!("no Hello within {} s", HELLO_TIMEOUT.as_secs()));
            conn.send_error(&e).await;
            return Err(e);
        }
    };
    if frame.kind != HELLO {
        let e = WireError::Unexpected {
            kind: frame.kind,
            state: "while waiting for Hello",
        };
        conn.send_error(&e).await;
        return Err(e);
    }
    let hello: Hello = match frame.parse() {
        Ok(h) => h,
        Err(e) => {
            conn.send_error(&e).await;
            return Err(e);
        }
    };
    let version = match wire::negotiate(&hello, kvp::SERVICE, kvp::VERSIONS) {
        Ok(v) => v,
        Err(refusal) => {
            let _ = conn.write([refusal.frame()]).await;
            return Err(WireError::Refused(refusal));
        }
    };
    conn.write([Frame::json(
        WELCOME,
        &Welcome {
            service: kvp::SERVICE.to_owned(),
            version,
            agent: wire::SOFTWARE_VERSION.to_owned(),
        },
    )])
    .await?;
    let feed = pools.connect_guest(vm);
    let result = exchange(&mut conn, &pools, &feed, vm, &shutdown).await;
    match &result {
        Ok(End::Replaced) => {
            let e = RemoteError::new(
                ErrorKind::Protocol,
                "a newer connection of this partition took over (or the partition was removed)",
            );
            let _ = conn.write([e.frame()]).await;
        }
        Err(e) => conn.send_error(e).await,
        Ok(_) => {}
    }
    result
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    pools: &Pools,
    feed: &GuestFeed,
    vm: VmId,
    shutdown: &CancellationToken,
) -> Result<End, WireError> {
    let mut host = pools.watch_host(vm);
    let mut sent: Pool = host.borrow_and_update().clone();
    conn.write(kvp::snapshot(&sent).iter().map(kvp::frame))
        .await?;
    loop {
        tokio::select! {
            frame = conn.read() => {
                let Some(frame) = frame? else {
                    return Ok(End::Closed);
                };
                let msg: Msg = kvp::parse(&frame)?;
                feed.apply(msg)?;
            }
            changed = host.changed() => {
                if changed.is_err() {
                    return Ok(End::Replaced);
                }
                let now = host.borrow_and_update().clone();
                let diff = kvp::diff(&sent, &now);
                sent = now;
                conn.write(diff.iter().map(kvp::frame)).await?;
            }
            () = feed.replaced() => return Ok(End::Replaced),
            () = shutdown.cancelled() => return Ok(End::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests;
