//! The agent's side of the file copy service: one request (Put or Get) per connection.

use std::path::Path;
use std::time::Duration;

use super::{
    CopyError, DONE, End, GET, Get, PUT, Put, READY, check_absolute, check_name, recv, send,
};
use crate::wire::{self, Decoder, Frame, WireError};

/// How long the host has to send Hello and its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a copy may stall in either direction before the agent gives up on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one connection did, for the agent's log.
#[derive(Debug)]
pub enum Outcome {
    /// Received a tree into this path.
    Put(String, End),
    /// Sent the tree at this path.
    Get(String, End),
}

/// Serves one request on `stream`.
pub fn serve(stream: &hvsock::HvStream) -> Result<Outcome, CopyError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(WireError::from)?;
    let result = serve_request(stream, &mut decoder);
    if let Err(e) = &result {
        e.tell(&mut conn);
    }
    result
}

fn serve_request(stream: &hvsock::HvStream, decoder: &mut Decoder) -> Result<Outcome, CopyError> {
    let mut conn = stream;
    wire::server_hello(&mut conn, decoder, super::SERVICE, super::VERSIONS)?;
    let request = decoder.expect_frame(&mut conn, "before sending its request")?;
    stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IDLE_TIMEOUT)))
        .map_err(WireError::from)?;
    match request.kind {
        PUT => {
            let put: Put = request.parse()?;
            check_absolute(&put.dest)?;
            check_name(&put.name)?;
            let root = recv::destination(Path::new(&put.dest), &put.name, put.kind)?;
            wire::write_frame(&mut conn, &Frame::json(READY, &serde_json::json!({})))?;
            let end = recv::receive(&mut conn, decoder, &root, put.kind, &mut |_| {}, &|_| {})?;
            wire::write_frame(&mut conn, &Frame::json(DONE, &end))?;
            linger(stream, decoder);
            Ok(Outcome::Put(root.display().to_string(), end))
        }
        GET => {
            let get: Get = request.parse()?;
            check_absolute(&get.path)?;
            let plan = send::plan(Path::new(&get.path), get.recursive)?;
            let end = send::send(&mut conn, &plan, &|_| {})?;
            // The host answers Done once everything arrived; only then close, so that no
            // transport drops the tail.
            let answer = decoder.expect_frame(&mut conn, "before confirming the copy")?;
            if answer.kind != DONE {
                return Err(WireError::Unexpected {
                    kind: answer.kind,
                    state: "after the end of a Get",
                }
                .into());
            }
            Ok(Outcome::Get(get.path, end))
        }
        kind => Err(WireError::Unexpected {
            kind,
            state: "while waiting for Put or Get",
        }
        .into()),
    }
}

/// Waits (briefly) for the host to close after the last frame, so that no transport drops it.
pub(crate) fn linger(stream: &hvsock::HvStream, decoder: &mut Decoder) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut conn = stream;
    let _ = decoder.read_frame(&mut conn);
}
