//! The agent daemon: binds each guest-served service to `PARENT` (so only the parent
//! partition, the host, may connect), serves each connection on its own thread, and binds
//! again with back-off whenever its listener is lost (hvsockd restarting, for a sandbox), so
//! it runs for as long as its guest does.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use hvsock::{HvListener, HvStream, SockAddrHv, Transport, VmId};

use crate::backoff::Backoff;
use crate::link::{self, TimeMode};
use crate::services::{self, Direction, Service};
use crate::shutdown::Action;
use crate::wire::{self, ErrorKind, RemoteError};

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the host.
    pub transport: Transport,
    /// The services to serve (guest-served) or keep a connection to (host-served).
    pub services: Vec<Service>,
    /// How to shut the system down.
    pub shutdown: Action,
    /// Whether time sync sets the clock.
    pub time: TimeMode,
    /// Where the key-value pools live.
    pub kvp_dir: std::path::PathBuf,
    /// Most connections served at once, over all services.
    pub max_sessions: usize,
}

/// The default shutdown action for a transport: the init system inside a VM; none in a
/// sandbox (see [`crate::shutdown`]).
pub fn default_shutdown(transport: &Transport) -> Action {
    match transport {
        Transport::Vsock => Action::Init,
        _ => Action::Refuse,
    }
}

/// The default time mode: set the clock inside a VM; only measure in a sandbox, whose clock
/// is the host kernel's own.
pub fn default_time_mode(transport: &Transport) -> TimeMode {
    match transport {
        Transport::Vsock => TimeMode::Set,
        _ => TimeMode::Report,
    }
}

/// Whether a connection may be served: over vsock only the host (CID 2, seen as PARENT) may
/// connect; through hvsockd the PARENT binding already admits the parent alone.
pub fn trusted(transport: &Transport, peer: &SockAddrHv) -> bool {
    match transport {
        Transport::Vsock => peer.vm_id == VmId::PARENT,
        _ => true,
    }
}

/// Serves every configured service until the process ends.
pub fn run(config: Config) -> io::Result<()> {
    let config = Arc::new(config);
    let active = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for service in config
        .services
        .iter()
        .copied()
        .filter(|s| s.direction == Direction::GuestServed)
    {
        let config = config.clone();
        let active = active.clone();
        threads.push(
            thread::Builder::new()
                .name(service.key.into())
                .spawn(move || serve_forever(&config, service, &active))?,
        );
    }
    for service in config
        .services
        .iter()
        .copied()
        .filter(|s| s.direction == Direction::HostServed)
    {
        let config = config.clone();
        threads.push(
            thread::Builder::new()
                .name(service.key.into())
                .spawn(move || keep_one(&config, service))?,
        );
    }
    if threads.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "every service is disabled: nothing to serve",
        ));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_forever(config: &Config, service: Service, active: &Arc<AtomicUsize>) {
    let addr = SockAddrHv::new(VmId::PARENT, service.id());
    let mut backoff = Backoff::default();
    loop {
        let listener = match HvListener::bind_with(&config.transport, addr, 16) {
            Ok(l) => l,
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(
                    "{} (port {}): cannot listen: {e}; again in {wait:?}",
                    service.name,
                    service.port
                );
                thread::sleep(wait);
                continue;
            }
        };
        backoff.reset();
        tracing::info!("serving {} on parent:{}", service.name, service.port);
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if !trusted(&config.transport, &peer) {
                        tracing::warn!("{}: refused a connection from {peer}", service.name);
                        continue;
                    }
                    dispatch(config, service, stream, peer, active);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        "{}: lost the listener ({e}); listening again in {wait:?}",
                        service.name
                    );
                    thread::sleep(wait);
                    break;
                }
            }
        }
    }
}

/// Keeps the connection of one host-served service.
fn keep_one(config: &Config, service: Service) {
    let transport = &config.transport;
    match service.key {
        "heartbeat" => link::keep_linked(transport, service, link::heartbeat),
        "time" => link::keep_linked(transport, service, |s| link::time_sync(s, config.time)),
        "kvp" => link::keep_linked(transport, service, |s| {
            link::kvp_exchange(s, &config.kvp_dir)
        }),
        other => tracing::error!("no client for service {other}"),
    }
}

/// Gives one connection its own thread, unless too many run already.
fn dispatch(
    config: &Config,
    service: Service,
    stream: HvStream,
    peer: SockAddrHv,
    active: &Arc<AtomicUsize>,
) {
    if active.fetch_add(1, Ordering::AcqRel) >= config.max_sessions {
        active.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            "{}: refusing {peer}: {} sessions already",
            service.name,
            config.max_sessions
        );
        let busy = RemoteError::new(
            ErrorKind::Busy,
            format!(
                "the agent serves {} sessions already; try again later",
                config.max_sessions
            ),
        );
        let mut conn = &stream;
        let _ = wire::write_frame(&mut conn, &busy.frame());
        return;
    }
    let shutdown = config.shutdown.clone();
    let active2 = active.clone();
    let spawned = thread::Builder::new()
        .name(format!("{} {peer}", service.key))
        .spawn(move || {
            serve_one(service, &stream, &peer, &shutdown);
            active2.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::AcqRel);
        tracing::error!("{}: cannot start a thread for {peer}: {e}", service.name);
    }
}

fn serve_one(service: Service, stream: &HvStream, peer: &SockAddrHv, shutdown: &Action) {
    match service.key {
        "session" => match crate::session::server::serve(stream) {
            Ok(outcome) => tracing::info!("session from {peer}: {outcome:?}"),
            Err(e) => tracing::warn!("session from {peer} ended: {e}"),
        },
        "files" => match crate::files::server::serve(stream) {
            Ok(outcome) => tracing::info!("copy from {peer}: {outcome:?}"),
            Err(e) => tracing::warn!("copy from {peer} failed: {e}"),
        },
        "shutdown" => match crate::shutdown::serve(stream, shutdown) {
            Ok(how) => tracing::info!("shutdown from {peer}: {how}"),
            Err(e) => tracing::warn!("shutdown from {peer} failed: {e}"),
        },
        other => tracing::error!("no server for service {other}"),
    }
}

/// Every service, less those named in `disabled` (keys); an unknown key is an error that
/// lists the known ones.
pub fn services(disabled: &[String]) -> Result<Vec<Service>, String> {
    for key in disabled {
        if services::by_key(key).is_none() {
            let known: Vec<&str> = services::ALL.iter().map(|s| s.key).collect();
            return Err(format!(
                "{key:?} is not a service (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(services::ALL
        .into_iter()
        .filter(|s| !disabled.iter().any(|d| d == s.key))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_vsock_only_the_host_is_trusted() {
        let svc = services::SESSION.id();
        let host = SockAddrHv::new(VmId::PARENT, svc);
        let other = SockAddrHv::new(VmId::from(hvsock::Guid::from(svc)), svc);
        assert!(trusted(&Transport::Vsock, &host));
        assert!(!trusted(&Transport::Vsock, &other));
        assert!(trusted(&Transport::provider("/x"), &other));
    }

    #[test]
    fn sandboxes_have_no_default_shutdown() {
        assert_eq!(default_shutdown(&Transport::Vsock), Action::Init);
        assert_eq!(default_shutdown(&Transport::provider("/x")), Action::Refuse);
    }

    #[test]
    fn disabled_services_are_left_out_and_unknown_ones_named() {
        let s = services(&["files".into(), "time".into()]).expect("known");
        assert_eq!(
            s.iter().map(|s| s.key).collect::<Vec<_>>(),
            ["session", "shutdown", "heartbeat", "kvp"]
        );
        assert!(services(&["nope".into()]).is_err());
    }
}
