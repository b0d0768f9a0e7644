//! All of a guest's connections: the table, the order in which they get receive buffers, the
//! host-side sockets' readiness (one epoll set), and what to ask hvsockd.
//!
//! The muxer knows nothing of virtqueues: the backend hands it each packet the guest sent
//! ([`Muxer::guest_packet`]) and asks it for packets to fill receive buffers with
//! ([`Muxer::next_rx`]), so that it runs in tests against plain socket pairs. What it needs from
//! hvsockd it queues as [`ToHvsockd`] ([`Muxer::take_requests`]); hvsockd's answers come back
//! through [`Muxer::connect_answer`] and [`Muxer::guest_connect`].
//!
//! # Limits (a hostile guest cannot grow the device)
//!
//! At most [`Config::max_conns`] connections, each buffering at most [`Config::buf_alloc`]
//! bytes toward the host (the credit the guest is given); at most [`MAX_STRAY`] queued RSTs
//! for packets that belong to no connection. A guest that breaks the protocol on a connection
//! (a bad operation in its state, data beyond its credit, a second REQUEST) gets that
//! connection reset and nothing else changes.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hvsock_proto::ErrorCode;
use rustix::event::epoll;

use crate::conn::{Conn, State, Verdict};
use crate::packet::{HOST_CID, Header, Op, PacketError, TYPE_STREAM};

/// Most RSTs queued for packets of no connection; more are dropped (the guest times out).
pub const MAX_STRAY: usize = 256;
/// How long a host-to-guest REQUEST waits for the guest before it is given up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The connect timeout the device asks hvsockd for (Linux's own vsock connect timeout).
pub const CONNECT_TIMEOUT_MS: u32 = 2000;
/// First host-side port for host-to-guest connections.
const FIRST_PORT: u32 = 1024;

/// The muxer's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The guest's CID.
    pub guest_cid: u64,
    /// Each connection's receive buffer toward the host (the guest's credit).
    pub buf_alloc: u32,
    /// Most connections at once.
    pub max_conns: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            guest_cid: 3,
            buf_alloc: 256 * 1024,
            max_conns: 256,
        }
    }
}

/// What the device asks hvsockd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHvsockd {
    /// The guest connects to the host's vsock `port`.
    Connect {
        /// The device's request id.
        req: u32,
        /// The port.
        port: u32,
    },
    /// The guest accepted `GuestConnect` `req`.
    Accepted {
        /// hvsockd's request id.
        req: u32,
    },
    /// The guest (or the device) refused `GuestConnect` `req`.
    Rejected {
        /// hvsockd's request id.
        req: u32,
        /// Why.
        code: ErrorCode,
        /// Words for the connector.
        message: String,
    },
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Connections reset by the device (protocol violations, socket errors, refusals).
    pub resets: u64,
    /// Guest packets that could not be parsed or checked.
    pub bad_packets: u64,
    /// Connections established.
    pub established: u64,
}

type Key = (u32, u32);

/// The connection table.
#[derive(Debug)]
pub struct Muxer {
    cfg: Config,
    conns: HashMap<Key, Conn>,
    /// epoll data → connection.
    tokens: HashMap<u64, Key>,
    keys: HashMap<Key, u64>,
    next_token: u64,
    ready: VecDeque<Key>,
    stray: VecDeque<Header>,
    /// The device's outstanding `Connect` requests.
    connects: HashMap<u32, Key>,
    next_req: u32,
    next_port: u32,
    online: bool,
    requests: Vec<ToHvsockd>,
    epoll: OwnedFd,
    /// What happened, counted.
    pub counters: Counters,
}

impl Muxer {
    /// An empty muxer.
    pub fn new(cfg: Config) -> std::io::Result<Muxer> {
        Ok(Muxer {
            cfg,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            keys: HashMap::new(),
            next_token: 1,
            ready: VecDeque::new(),
            stray: VecDeque::new(),
            connects: HashMap::new(),
            next_req: 1,
            next_port: FIRST_PORT,
            online: false,
            requests: Vec::new(),
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            counters: Counters::default(),
        })
    }

    /// The epoll set of the host-side sockets: readable when one of them is ready.
    pub fn epoll_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// How many connections there are.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection between `host_port` and the guest's `guest_port`, if any.
    pub fn conn(&self, host_port: u32, guest_port: u32) -> Option<&Conn> {
        self.conns.get(&(host_port, guest_port))
    }

    /// What to ask hvsockd, in order.
    pub fn take_requests(&mut self) -> Vec<ToHvsockd> {
        std::mem::take(&mut self.requests)
    }

    /// hvsockd's session is up: the guest's connects go to it.
    pub fn hvsockd_up(&mut self) {
        self.online = true;
    }

    /// hvsockd's session ended: the guest's connects waiting for it are refused now (RST), new
    /// ones at once until it is back; host-to-guest connects still waiting for the guest are
    /// reset too (hvsockd failed their connectors when the session ended, and a new session
    /// must not hear answers to the old one's requests); established connections go on.
    pub fn hvsockd_down(&mut self) {
        self.online = false;
        let waiting: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state != State::Established)
            .map(|(&k, _)| k)
            .collect();
        for key in waiting {
            self.reset(key, "hvsockd went away before the connection was made");
        }
        self.requests.clear();
    }

    fn stray_rst(&mut self, h: &Header) {
        if h.op == Op::Rst.to_u16() || self.stray.len() >= MAX_STRAY {
            return;
        }
        self.stray.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cfg.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Rst.to_u16(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn mark_ready(&mut self, key: Key) {
        if self.conns.get(&key).is_some_and(Conn::wants_rx) && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    /// Forgets a connection, sending the guest an RST.
    fn reset(&mut self, key: Key, why: &str) {
        if let Some(mut conn) = self.remove(key) {
            tracing::debug!(host_port = key.0, guest_port = key.1, "reset: {why}");
            self.counters.resets += 1;
            if self.stray.len() < MAX_STRAY {
                self.stray.push_back(conn.rst());
            }
            match conn.state {
                State::Requesting { req, .. } => self.requests.push(ToHvsockd::Rejected {
                    req,
                    code: ErrorCode::Refused,
                    message: format!("the VM's device reset the connection: {why}"),
                }),
                State::Connecting { .. } | State::Established => {}
            }
        }
    }

    fn remove(&mut self, key: Key) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        if let State::Connecting { req } = conn.state {
            self.connects.remove(&req);
        }
        if let Some(token) = self.keys.remove(&key) {
            self.tokens.remove(&token);
        }
        if let Some(sock) = conn.socket() {
            let _ = epoll::delete(&self.epoll, sock);
        }
        Some(conn)
    }

    fn apply(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.mark_ready(key),
            Verdict::Drop => {
                self.remove(key);
            }
            Verdict::Reset(why) => self.reset(key, &why),
        }
    }

    fn attach(&mut self, key: Key, sock: UnixStream) -> Result<(), String> {
        let token = self.next_token;
        self.next_token += 1;
        let conn = self.conns.get_mut(&key).ok_or("no such connection")?;
        conn.set_socket(sock)
            .map_err(|e| format!("setting up the host socket: {e}"))?;
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        let sock = conn.socket().ok_or("no socket")?;
        epoll::add(&self.epoll, sock, epoll::EventData::new_u64(token), flags)
            .map_err(|e| format!("watching the host socket: {e}"))?;
        self.tokens.insert(token, key);
        self.keys.insert(key, token);
        Ok(())
    }

    /// A packet the guest sent, with its payload. Never panics; a bad packet resets its
    /// connection (or is answered with RST if it has none).
    pub fn guest_packet(&mut self, h: &Header, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        let op = match h.check(payload.len()) {
            Ok(op) => op,
            Err(e) => {
                self.counters.bad_packets += 1;
                tracing::debug!("bad packet from the guest: {e}");
                if matches!(e, PacketError::Type(_)) || !self.conns.contains_key(&key) {
                    self.stray_rst(h);
                } else {
                    self.reset(key, &e.to_string());
                }
                return;
            }
        };
        if h.dst_cid != HOST_CID {
            // Only the host is reachable through this device; the CID the guest claims for
            // itself (src_cid) is never looked at.
            self.stray_rst(h);
            return;
        }
        if !self.conns.contains_key(&key) {
            match op {
                Op::Request => self.guest_connect_request(h),
                Op::Rst => {}
                _ => self.stray_rst(h),
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let before = conn.state;
        let verdict = conn.guest_packet(h, op, payload);
        if let State::Requesting { req, .. } = before {
            match (op, &verdict) {
                (Op::Response, Verdict::Keep) => {
                    self.counters.established += 1;
                    self.requests.push(ToHvsockd::Accepted { req });
                }
                (Op::Rst, _) => self.requests.push(ToHvsockd::Rejected {
                    req,
                    code: ErrorCode::Refused,
                    message: format!("nothing listens on vsock port {} in the guest", key.1),
                }),
                _ => {}
            }
        }
        self.apply(key, verdict);
    }

    fn guest_connect_request(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        if !self.online {
            tracing::debug!(
                port = h.dst_port,
                "refusing a guest connect: hvsockd is away"
            );
            self.counters.resets += 1;
            self.stray_rst(h);
            return;
        }
        if self.conns.len() >= self.cfg.max_conns {
            tracing::warn!(
                "refusing a guest connect: the guest already has {} connections",
                self.cfg.max_conns
            );
            self.counters.resets += 1;
            self.stray_rst(h);
            return;
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut conn = Conn::new(
            key.0,
            key.1,
            self.cfg.guest_cid,
            self.cfg.buf_alloc,
            State::Connecting { req },
        );
        conn.peer_credit_from(h);
        self.conns.insert(key, conn);
        self.connects.insert(req, key);
        self.requests.push(ToHvsockd::Connect {
            req,
            port: h.dst_port,
        });
    }

    /// hvsockd's answer to the device's `Connect` `req`: the host end, or a refusal.
    pub fn connect_answer(&mut self, req: u32, answer: Result<OwnedFd, (ErrorCode, String)>) {
        let Some(key) = self.connects.remove(&req) else {
            return;
        };
        match answer {
            Ok(fd) => match self.attach(key, UnixStream::from(fd)) {
                Ok(()) => {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.establish_from_guest();
                        self.counters.established += 1;
                    }
                    self.mark_ready(key);
                }
                Err(why) => self.reset(key, &why),
            },
            Err((code, message)) => {
                tracing::debug!(
                    port = key.0,
                    "hvsockd refused a guest connect ({}): {message}",
                    code.name()
                );
                self.reset(key, &message);
            }
        }
    }

    /// hvsockd asks to connect to the guest's vsock `port`, splicing `fd`.
    pub fn guest_connect(&mut self, req: u32, port: u32, fd: OwnedFd) {
        if self.conns.len() >= self.cfg.max_conns {
            self.requests.push(ToHvsockd::Rejected {
                req,
                code: ErrorCode::Busy,
                message: format!("the VM already has {} connections", self.cfg.max_conns),
            });
            return;
        }
        let mut host_port = self.next_port;
        for _ in 0..=self.cfg.max_conns {
            if !self.conns.contains_key(&(host_port, port)) {
                break;
            }
            host_port = host_port.checked_add(1).unwrap_or(FIRST_PORT);
        }
        self.next_port = host_port.checked_add(1).unwrap_or(FIRST_PORT);
        let key = (host_port, port);
        let conn = Conn::new(
            host_port,
            port,
            self.cfg.guest_cid,
            self.cfg.buf_alloc,
            State::Requesting {
                req,
                since: Instant::now(),
            },
        );
        self.conns.insert(key, conn);
        match self.attach(key, UnixStream::from(fd)) {
            Ok(()) => self.mark_ready(key),
            Err(why) => self.reset(key, &why),
        }
    }

    /// Gives up host-to-guest REQUESTs the guest never answered.
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, State::Requesting { since, .. } if now.duration_since(since) > REQUEST_TIMEOUT)
            })
            .map(|(&k, _)| k)
            .collect();
        for key in old {
            self.reset(key, "the guest did not answer the REQUEST");
        }
    }

    /// Takes the host sockets' readiness from the epoll set (without waiting).
    pub fn socket_events(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            events.clear();
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!("waiting on the host sockets: {e}");
                    return;
                }
            }
            if events.is_empty() {
                return;
            }
            for ev in &events {
                let Some(&key) = self.tokens.get(&ev.data.u64()) else {
                    continue;
                };
                let Some(conn) = self.conns.get_mut(&key) else {
                    continue;
                };
                let f = ev.flags;
                if f.intersects(
                    epoll::EventFlags::IN
                        | epoll::EventFlags::RDHUP
                        | epoll::EventFlags::HUP
                        | epoll::EventFlags::ERR,
                ) {
                    conn.readable = true;
                }
                let verdict = if f.intersects(epoll::EventFlags::OUT | epoll::EventFlags::ERR) {
                    conn.flush()
                } else {
                    Verdict::Keep
                };
                self.apply(key, verdict);
            }
            if events.len() < events.capacity() {
                return;
            }
        }
    }

    /// Whether [`Muxer::next_rx`] may have a packet.
    pub fn rx_pending(&self) -> bool {
        !self.stray.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for the guest, its payload read into `buf` (the receive buffer's room
    /// for data): the header and the payload's length, or `None` if nothing is to be sent.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.stray.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let (packet, verdict) = conn.next_rx(buf);
            match verdict {
                Verdict::Keep => self.mark_ready(key),
                Verdict::Drop => {
                    self.remove(key);
                }
                Verdict::Reset(why) => {
                    tracing::debug!(host_port = key.0, guest_port = key.1, "reset: {why}");
                    self.counters.resets += 1;
                    self.remove(key);
                }
            }
            if packet.is_some() {
                return packet;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
