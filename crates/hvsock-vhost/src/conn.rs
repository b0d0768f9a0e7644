//! One connection between the guest and the host: its state machine, its credit, and its
//! host-side socket.
//!
//! ```text
//!  guest REQUEST ──▶ Connecting{req} ── hvsockd Connected ──▶ Established ── (RESPONSE sent)
//!                                  └── hvsockd Error ──────▶ gone (RST sent)
//!  hvsockd GuestConnect ──▶ Requesting{req} ── guest RESPONSE ──▶ Established (Accepted)
//!                                          └── guest RST ───────▶ gone (Rejected: Refused)
//!  Established ── guest SHUTDOWN(SEND) ──▶ host socket shutdown(Write), once flushed
//!              ── host EOF ─────────────▶ SHUTDOWN(SEND) to the guest
//!              ── guest SHUTDOWN(RCV|SEND) ─▶ flush, then RST: gone
//!              ── guest RST, a socket error, a protocol violation ─▶ gone (RST sent if not the guest's)
//! ```
//!
//! Guest to host, bytes go straight to the socket; what it cannot take waits in a buffer of at
//! most `buf_alloc` bytes, the credit this device gives the guest, so that a guest that
//! respects the credit never finds the buffer full and a guest that exceeds it is reset
//! ([`Verdict::Reset`]). Host to guest, the device reads from the socket only as many bytes as
//! the guest's credit allows and a receive buffer holds ([`Conn::next_rx`]): nothing is ever
//! dropped or reordered, and nothing waits in the device.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The guest asked to connect; hvsockd's answer to `Connect` `req` is awaited.
    Connecting {
        /// The device's request id on its hvsockd session.
        req: u32,
    },
    /// hvsockd asked (`GuestConnect` `req`); the guest's answer is awaited.
    Requesting {
        /// hvsockd's request id.
        req: u32,
        /// When the REQUEST was queued.
        since: Instant,
    },
    /// Data flows.
    Established,
}

/// What the muxer should do with a connection after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Forget it quietly (the guest reset it, or an RST to it is queued already).
    Drop,
    /// Reset it: send RST to the guest, then forget it; the reason is logged.
    Reset(String),
}

/// Control packets owed to the guest, sent before data.
#[derive(Debug, Default, Clone, Copy)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    /// SHUTDOWN flags to send.
    shutdown: u32,
    /// RST, then the connection is gone.
    rst: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The host-side port (the guest's peer port).
    pub host_port: u32,
    /// The guest's port.
    pub guest_port: u32,
    /// The guest's CID, for headers.
    guest_cid: u64,
    /// Where it is.
    pub state: State,
    sock: Option<UnixStream>,
    /// Our receive buffer for this connection (the guest's credit).
    buf_alloc: u32,
    owed: Owed,

    // Host to guest.
    /// Bytes sent to the guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The socket may have bytes (or EOF) to read.
    pub readable: bool,
    /// The host will send no more (read EOF); SHUTDOWN(SEND) is owed or sent.
    host_eof: bool,
    /// The guest will receive no more.
    guest_no_recv: bool,
    /// A CREDIT_REQUEST went out since the guest last said how much it consumed.
    credit_requested: bool,

    // Guest to host.
    tx_buf: VecDeque<u8>,
    /// Bytes written to the socket.
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard of.
    fwd_cnt_sent: u32,
    /// Bytes received from the guest.
    tx_cnt: u32,
    /// The guest will send no more: shut the socket's write side once flushed.
    guest_no_send: bool,
    write_shut: bool,
    /// The guest closed both ways: RST once flushed.
    closing: bool,
}

impl Conn {
    /// A connection in `state` between `host_port` and the guest's `guest_port`.
    pub fn new(
        host_port: u32,
        guest_port: u32,
        guest_cid: u64,
        buf_alloc: u32,
        state: State,
    ) -> Conn {
        Conn {
            host_port,
            guest_port,
            guest_cid,
            state,
            sock: None,
            buf_alloc,
            owed: Owed {
                request: matches!(state, State::Requesting { .. }),
                ..Owed::default()
            },
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            host_eof: false,
            guest_no_recv: false,
            credit_requested: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            guest_no_send: false,
            write_shut: false,
            closing: false,
        }
    }

    /// The host-side socket, once there is one.
    pub fn socket(&self) -> Option<&UnixStream> {
        self.sock.as_ref()
    }

    /// Sets the host-side socket (non-blocking).
    pub fn set_socket(&mut self, sock: UnixStream) -> io::Result<()> {
        sock.set_nonblocking(true)?;
        self.sock = Some(sock);
        Ok(())
    }

    /// Takes the guest's `buf_alloc` / `fwd_cnt` from one of its packets.
    pub fn peer_credit_from(&mut self, h: &Header) {
        if h.fwd_cnt != self.peer_fwd_cnt || h.buf_alloc != self.peer_buf_alloc {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// hvsockd accepted the guest's connect: RESPONSE is owed.
    pub fn establish_from_guest(&mut self) {
        self.state = State::Established;
        self.owed.response = true;
        self.readable = true;
    }

    /// Bytes waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// How many bytes the guest lets us send now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether [`Conn::next_rx`] may have something to send.
    pub fn wants_rx(&self) -> bool {
        let o = &self.owed;
        if o.rst || o.request || o.response || o.credit_update || o.shutdown != 0 {
            return true;
        }
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.guest_no_recv
            && (self.peer_credit() > 0 || !self.credit_requested)
    }

    /// A packet from the guest for this connection; `op` is checked already.
    pub fn guest_packet(&mut self, h: &Header, op: Op, payload: &[u8]) -> Verdict {
        self.peer_credit_from(h);
        match (self.state, op) {
            (_, Op::Rst) => Verdict::Drop,
            (_, Op::Request) => Verdict::Reset("a REQUEST for a connection that exists".into()),
            (State::Requesting { .. }, Op::Response) => {
                self.state = State::Established;
                self.readable = true;
                Verdict::Keep
            }
            (State::Established, Op::Rw) => self.guest_data(payload),
            (State::Established, Op::CreditUpdate) => Verdict::Keep,
            (State::Established, Op::CreditRequest) => {
                self.owed.credit_update = true;
                Verdict::Keep
            }
            (State::Established, Op::Shutdown) => {
                if h.flags & SHUTDOWN_RCV != 0 {
                    self.guest_no_recv = true;
                }
                if h.flags & SHUTDOWN_SEND != 0 {
                    self.guest_no_send = true;
                }
                if h.flags == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    self.closing = true;
                }
                self.flush()
            }
            (state, op) => Verdict::Reset(format!("a {op:?} packet is not valid in {state:?}")),
        }
    }

    fn guest_data(&mut self, payload: &[u8]) -> Verdict {
        if self.guest_no_send {
            return Verdict::Reset("data after the guest's SHUTDOWN(SEND)".into());
        }
        let len = payload.len() as u32;
        // The credit we gave: buf_alloc minus what we hold of what it sent.
        let held = self.tx_cnt.wrapping_sub(self.fwd_cnt);
        if u64::from(held) + u64::from(len) > u64::from(self.buf_alloc) {
            return Verdict::Reset(format!(
                "the guest sent {len} bytes with {} bytes of credit left",
                self.buf_alloc.saturating_sub(held)
            ));
        }
        self.tx_cnt = self.tx_cnt.wrapping_add(len);
        self.tx_buf.extend(payload);
        self.flush()
    }

    /// Writes what is buffered to the socket; shuts its write side or resets when the guest's
    /// shutdown says so and all is written.
    pub fn flush(&mut self) -> Verdict {
        let Some(sock) = self.sock.as_mut() else {
            return Verdict::Keep;
        };
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match sock.write(a) {
                Ok(0) => return Verdict::Reset("the host socket takes no more bytes".into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Verdict::Reset(format!("writing to the host: {e}")),
            }
        }
        if self.tx_buf.is_empty() {
            if self.closing {
                self.owed = Owed {
                    rst: true,
                    ..Owed::default()
                };
                return Verdict::Keep;
            }
            if self.guest_no_send && !self.write_shut {
                self.write_shut = true;
                let _ = sock.shutdown(Shutdown::Write);
            }
        }
        // Tell the guest about freed space before it runs dry.
        let unseen = self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent);
        let seen_free = self
            .buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.fwd_cnt_sent));
        if unseen > 0 && seen_free < self.buf_alloc / 4 * 3 {
            self.owed.credit_update = true;
        }
        Verdict::Keep
    }

    fn header(&mut self, op: Op, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
        Header {
            src_cid: crate::packet::HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            type_: TYPE_STREAM,
            op: op.to_u16(),
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, its payload read into `buf` (a receive buffer's room);
    /// `None` if there is nothing to send now. A `Reset` verdict comes with the RST to send.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> (Option<(Header, usize)>, Verdict) {
        if self.owed.rst {
            self.owed.rst = false;
            return (Some((self.header(Op::Rst, 0, 0), 0)), Verdict::Drop);
        }
        if self.owed.request {
            self.owed.request = false;
            return (Some((self.header(Op::Request, 0, 0), 0)), Verdict::Keep);
        }
        if self.owed.response {
            self.owed.response = false;
            return (Some((self.header(Op::Response, 0, 0), 0)), Verdict::Keep);
        }
        if self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.guest_no_recv
        {
            let room = buf.len().min(self.peer_credit() as usize);
            if room == 0 && !self.credit_requested {
                // Linux tells its consumption only when its buffer is nearly full: ask now
                // rather than wait (as vhost-device-vsock does), so that a stall is short.
                self.credit_requested = true;
                return (
                    Some((self.header(Op::CreditRequest, 0, 0), 0)),
                    Verdict::Keep,
                );
            }
            if room > 0 {
                let Some(sock) = self.sock.as_mut() else {
                    return (None, Verdict::Keep);
                };
                match sock.read(&mut buf[..room]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.owed.shutdown |= SHUTDOWN_SEND;
                    }
                    Ok(n) => {
                        self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                        return (Some((self.header(Op::Rw, n as u32, 0), n)), Verdict::Keep);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let h = self.header(Op::Rst, 0, 0);
                        return (
                            Some((h, 0)),
                            Verdict::Reset(format!("reading from the host: {e}")),
                        );
                    }
                }
            }
        }
        if self.owed.shutdown != 0 {
            let flags = std::mem::take(&mut self.owed.shutdown);
            return (
                Some((self.header(Op::Shutdown, 0, flags), 0)),
                Verdict::Keep,
            );
        }
        if self.owed.credit_update {
            return (
                Some((self.header(Op::CreditUpdate, 0, 0), 0)),
                Verdict::Keep,
            );
        }
        (None, Verdict::Keep)
    }

    /// The RST that resets this connection.
    pub fn rst(&mut self) -> Header {
        self.header(Op::Rst, 0, 0)
    }
}
