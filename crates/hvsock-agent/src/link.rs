//! The agent's side of the host-served services (heartbeat, time sync, key-value exchange):
//! one persistent connection to `PARENT` per service, made again with back-off whenever it
//! ends, so that the agent follows hvsockd through its restarts.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvStream, SockAddrHv, Transport, VmId};

use crate::backoff::Backoff;
use crate::kvp::{self, Mirror, Msg};
use crate::services::Service;
use crate::wire::{self, Decoder, Frame, WireError};
use crate::{heartbeat, time};

/// Whether the agent may set the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// Measure and set (inside a VM).
    Set,
    /// Measure and report only (a sandbox shares the host's clock).
    Report,
}

/// Keeps a connection to `service` on the host, running `session` on each; never returns.
pub fn keep_linked(
    transport: &Transport,
    service: Service,
    mut session: impl FnMut(&HvStream) -> Result<(), WireError>,
) -> ! {
    let addr = SockAddrHv::new(VmId::PARENT, service.id());
    let mut backoff = Backoff::default();
    let mut told = false;
    loop {
        match HvStream::connect_with(transport, addr, Duration::from_secs(5)) {
            Ok(stream) => {
                let since = Instant::now();
                tracing::info!("connected to the host's {}", service.name);
                let result = session(&stream);
                match result {
                    Ok(()) => tracing::info!("the host ended {}", service.name),
                    Err(e) => tracing::warn!("{} ended: {e}", service.name),
                }
                told = false;
                if since.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
            }
            Err(e) if !told => {
                tracing::warn!("cannot reach the host's {}: {e}; trying on", service.name);
                told = true;
            }
            Err(e) => tracing::debug!("cannot reach the host's {}: {e}", service.name),
        }
        thread::sleep(backoff.next_wait());
    }
}

/// One heartbeat connection: Facts, then a Beat every interval (Facts again if they change).
pub fn heartbeat(stream: &HvStream) -> Result<(), WireError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(
        &mut conn,
        &mut decoder,
        heartbeat::SERVICE,
        heartbeat::VERSIONS,
    )?;
    let mut facts = heartbeat::gather();
    wire::write_frame(&mut conn, &Frame::json(heartbeat::FACTS, &facts))?;
    for seq in 1.. {
        thread::sleep(heartbeat::INTERVAL);
        let now = heartbeat::gather();
        if now != facts {
            facts = now;
            wire::write_frame(&mut conn, &Frame::json(heartbeat::FACTS, &facts))?;
        }
        wire::write_frame(
            &mut conn,
            &Frame::json(heartbeat::BEAT, &heartbeat::Beat { seq }),
        )?;
    }
    Ok(())
}

/// One time-sync connection: measure now and every poll; step the clock (in [`TimeMode::Set`])
/// when it is off by more than the bound; report each measurement.
pub fn time_sync(stream: &HvStream, mode: TimeMode) -> Result<(), WireError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(&mut conn, &mut decoder, time::SERVICE, time::VERSIONS)?;
    stream.set_read_timeout(Some(time::MAX_DELAY * 2))?;
    for seq in 1.. {
        let req = time::Request {
            seq,
            t1: time::now_ns(),
        };
        wire::write_frame(&mut conn, &Frame::json(time::REQUEST, &req))?;
        let frame = decoder.expect_frame(&mut conn, "before answering the time request")?;
        let t4 = time::now_ns();
        if frame.kind != time::REPLY {
            return Err(WireError::Unexpected {
                kind: frame.kind,
                state: "in answer to a time Request",
            });
        }
        let reply: time::Reply = frame.parse()?;
        match time::measure(&req, &reply, t4) {
            Ok((offset_ns, delay_ns)) => {
                let mut stepped = false;
                if mode == TimeMode::Set && time::should_step(offset_ns) {
                    match time::step(offset_ns) {
                        Ok(()) => {
                            stepped = true;
                            tracing::warn!(
                                "the clock was {:.3} s off the host's: set",
                                offset_ns as f64 / 1e9
                            );
                        }
                        Err(e) => tracing::error!("setting the clock: {e}"),
                    }
                }
                let report = time::Report {
                    offset_ns,
                    delay_ns,
                    stepped,
                };
                wire::write_frame(&mut conn, &Frame::json(time::REPORT, &report))?;
            }
            // A stalled host is no measurement; try at the next poll.
            Err(e) => tracing::debug!("time sample dropped: {e}"),
        }
        thread::sleep(time::POLL);
    }
    Ok(())
}

/// The default directory of the key-value pools in the guest.
pub const KVP_DIR: &str = "/run/hvsock-agent/kvp";

/// The guest's pool: what the agent knows, then each valid file of `DIR/guest/`.
pub fn guest_pool(dir: &Path) -> BTreeMap<String, String> {
    let facts = heartbeat::gather();
    let mut pool: BTreeMap<String, String> = [
        ("agent", facts.agent),
        ("os", facts.os),
        ("kernel", facts.kernel),
        ("hostname", facts.hostname),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("guest")) {
        for entry in entries.flatten() {
            let Ok(key) = entry.file_name().into_string() else {
                continue;
            };
            if kvp::check_key(&key).is_err() || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if pool.len() >= kvp::MAX_PAIRS {
                break;
            }
            let Ok(value) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let value = value.strip_suffix('\n').unwrap_or(&value).to_owned();
            if kvp::check_value(&value).is_ok() {
                pool.insert(key, value);
            }
        }
    }
    pool
}

/// Writes `value` to `path` whole (a temporary file renamed into place).
pub fn write_atomic(path: &Path, value: &str) -> io::Result<()> {
    let tmp = path.with_extension("hvsock-tmp");
    std::fs::write(&tmp, value)?;
    std::fs::rename(&tmp, path)
}

fn host_dir(dir: &Path) -> PathBuf {
    dir.join("host")
}

/// Mirrors the host's pool into `DIR/host/`, one file per key.
fn write_host_pool(dir: &Path, mirror: &Mirror) -> io::Result<()> {
    let host = host_dir(dir);
    std::fs::create_dir_all(&host)?;
    for (k, v) in &mirror.pairs {
        let path = host.join(k);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(v.as_str()) {
            write_atomic(&path, v)?;
        }
    }
    for entry in std::fs::read_dir(&host)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !mirror.pairs.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// One key-value connection: the guest's pool out (and its changes every 2 s), the host's in.
pub fn kvp_exchange(stream: &HvStream, dir: &Path) -> Result<(), WireError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(&mut conn, &mut decoder, kvp::SERVICE, kvp::VERSIONS)?;
    std::fs::create_dir_all(dir.join("guest"))?;
    std::fs::create_dir_all(host_dir(dir))?;
    let mut sent = guest_pool(dir);
    for msg in kvp::snapshot(&sent) {
        wire::write_frame(&mut conn, &kvp::frame(&msg))?;
    }
    let mut mirror = Mirror::default();
    mirror.on_connect();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    loop {
        match decoder.read_frame(&mut conn) {
            Ok(Some(frame)) => {
                if frame.kind == wire::ERROR {
                    return Err(WireError::Remote(frame.parse()?));
                }
                let msg = kvp::parse(&frame)?;
                let synced = msg == Msg::Synced;
                mirror.apply(msg)?;
                if mirror.synced || synced {
                    write_host_pool(dir, &mirror)?;
                }
            }
            Ok(None) => return Ok(()),
            Err(WireError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        let now = guest_pool(dir);
        for msg in kvp::diff(&sent, &now) {
            wire::write_frame(&mut conn, &kvp::frame(&msg))?;
        }
        sent = now;
    }
}
