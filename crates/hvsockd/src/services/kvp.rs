//! The host's side of `hvsock-kvp` (protocol: [`hvsock_agent::kvp`]) over the pools of
//! [`crate::kvp`]: one agent connection of one partition.
//!
//! ```text
//!  Hello ─▶ Welcome (or Error, end)
//!  then at once: the host pool's snapshot (Set…, Synced), and from then on each change of
//!  the host pool as a diff (Set / Delete), while the agent's snapshot and changes fill the
//!  guest pool ([`GuestFeed`]); the agent's Synced ends its snapshot
//! ```
//!
//! The connection ends, with an Error frame when worth telling, on anything out of place
//! (oversized frame, malformed body, bad key or value, a pool over the bound, Synced twice, the
//! wrong service), on a newer connection of the same partition, on the partition's removal
//! and on shutdown; nothing else is affected. A guest pool outlives its connection, shown as
//! not connected.

use std::sync::Arc;

use hvsock::{ServiceId, VmId};
use hvsock_agent::kvp::{self, Msg};
use hvsock_agent::services::KVP;
use hvsock_agent::wire::{ErrorKind, RemoteError, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::{Incoming, Served, Serving};
use crate::kvp::{GuestFeed, Pool, Pools};

/// The largest frame taken from an agent: a Set of the longest key and value, JSON-escaped
/// (at most 6 bytes per byte), with room to spare.
pub const MAX_FRAME: usize = 32 * 1024;

/// The key-value service, over `pools`.
#[derive(Debug)]
pub struct Kvp {
    /// The host pools it sends, the guest pools it fills.
    pub pools: Arc<Pools>,
}

impl Served for Kvp {
    fn id(&self) -> ServiceId {
        KVP.id()
    }

    fn name(&self) -> &'static str {
        KVP.name
    }

    /// The control layer drops a removed partition's pools already; this drops again what a
    /// connection racing the removal may have made.
    fn forget(&self, vm: VmId) {
        self.pools.remove(vm);
    }

    fn serve(self: Arc<Self>, conn: Incoming) -> Serving {
        Box::pin(async move {
            serve(conn.stream, self.pools.clone(), conn.partition, conn.ended)
                .await
                .map(drop)
        })
    }
}

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The agent closed it.
    Closed,
    /// A newer connection of the partition took over, or the partition was removed.
    Replaced,
    /// It was told to end ([`Incoming::ended`]: a newer connection, the service stopped being
    /// served, hvsockd stopping).
    Ended,
}

/// Serves one agent connection of partition `vm` until it ends or `ended` fires; `Err` is
/// what broke it (the agent was told, when worth telling).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    pools: Arc<Pools>,
    vm: VmId,
    ended: CancellationToken,
) -> Result<End, WireError> {
    let mut conn = Conn::new(stream, MAX_FRAME);
    if conn
        .welcome_unless(kvp::SERVICE, kvp::VERSIONS, &ended)
        .await?
        .is_none()
    {
        return Ok(End::Ended);
    }
    let feed = pools.connect_guest(vm);
    let result = exchange(&mut conn, &pools, &feed, vm, &ended).await;
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
    ended: &CancellationToken,
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
            () = ended.cancelled() => return Ok(End::Ended),
        }
    }
}

#[cfg(test)]
mod tests;
