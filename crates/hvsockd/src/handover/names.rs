//! The name of each kept socket: what it is and, for a client session, its state, encoded so
//! that it fits a systemd descriptor name (`FDNAME=`, at most 255 printable ASCII characters,
//! no `:`) and travels with the descriptor itself.
//!
//! ```text
//!  hv1.host                     host.sock, bound by hvsockd itself
//!  hv1.admin                    admin.sock, bound by hvsockd itself
//!  hv1.ep.<vmid hex>            a partition's endpoint (listening SOCK_SEQPACKET)
//!  hv1.gp.<vmid hex>.<port>     a VM's guest port PATH_<port> (listening SOCK_STREAM)
//!  hv1.s<n>.<hex record>        a client session (connected SOCK_SEQPACKET), n unique
//! ```
//!
//! `hv1` is the version of this format: a name of another version (`hv2.…`, from a newer
//! hvsockd downgraded to this one) is refused with [`NameError::Version`], and its socket is
//! closed (its client then sees what a crash would show it). A session record is binary, hex
//! encoded, and ends with an FNV-1a checksum of what precedes it:
//!
//! ```text
//!  partition (16)  kind (1)
//!  kind 0 fresh      (nothing more)
//!  kind 1 connector  count (1), then per waiting connect: req (4) target (32) deadline (8)
//!  kind 2 listener   addr (32) backlog (4) outstanding (4)
//!  kind 3 gateway    (nothing more: a VM's device process, see crate::broker::gateway)
//!  checksum (4)
//! ```
//!
//! Integers are little-endian, GUIDs in RFC 4122 byte order, deadlines in milliseconds of
//! `CLOCK_MONOTONIC` (the same clock for every process of one boot, which is all a restart or
//! an upgrade spans).

use std::fmt::Write as _;

use hvsock::VmId;
use hvsock_proto::WireAddr;

/// The version prefix of every name hvsockd gives.
pub const PREFIX: &str = "hv1.";
/// Longest name systemd accepts (`FDNAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Most waiting connects one session's name carries (two fit in [`MAX_NAME`]).
pub const MAX_WAITING_IN_NAME: usize = 2;

/// What one kept socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// `host.sock`, bound by hvsockd (not socket-activated).
    Host,
    /// `admin.sock`, bound by hvsockd (not socket-activated).
    Admin,
    /// A sandbox partition's endpoint.
    Endpoint(VmId),
    /// A VM's guest port `PATH_<port>`.
    GuestPort {
        /// The VM.
        vm: VmId,
        /// The vsock port.
        port: u32,
    },
    /// A client session, with its sequence number (unique among the names in use).
    Session(u64, SessionRecord),
}

/// A client session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The partition of the endpoint it came through.
    pub partition: VmId,
    /// Where its state machine is.
    pub state: SessionState,
}

/// The state a session resumes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Nothing asked yet (or nothing answered: a request still unread waits in the socket).
    Fresh,
    /// Has sent `Connect`; these wait for their answer.
    Connector(Vec<WaitingConnect>),
    /// Bound.
    Listener {
        /// The bound address.
        addr: WireAddr,
        /// Its backlog.
        backlog: u32,
        /// `Incoming` frames sent and not yet acknowledged.
        outstanding: u32,
    },
    /// A VM's device process (`hvsock-vhost`), its VM's gateway.
    Gateway,
}

/// A connect whose answer was not sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingConnect {
    /// The request id to answer.
    pub req: u32,
    /// Where it goes.
    pub target: WireAddr,
    /// When it times out, in `CLOCK_MONOTONIC` milliseconds.
    pub deadline_ms: u64,
}

/// Why a name is not one hvsockd can resume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a name hvsockd gives (another program's descriptor in the store).
    #[error("{0:?} is not the name of a socket hvsockd keeps")]
    Foreign(String),
    /// A name of another version of this format.
    #[error(
        "{name:?} was kept by an hvsockd whose hand-over format is {version:?}; this one reads hv1 only, so the socket is closed"
    )]
    Version {
        /// The name.
        name: String,
        /// Its version prefix.
        version: String,
    },
    /// A name of this version that does not parse.
    #[error("{name:?} is damaged: {what}")]
    Malformed {
        /// The name.
        name: String,
        /// What is wrong.
        what: &'static str,
    },
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn vm_hex(vm: VmId) -> String {
    hex(vm.0.as_bytes())
}

fn parse_vm(s: &str) -> Option<VmId> {
    let bytes: [u8; 16] = unhex(s)?.try_into().ok()?;
    Some(VmId(hvsock::Guid::from_bytes(bytes)))
}

impl Kept {
    /// The name. It fits systemd's limit ([`MAX_NAME`]) except for a session with more than
    /// [`MAX_WAITING_IN_NAME`] waiting connects, which a service manager cannot keep (a
    /// hand-over by `SIGUSR2` has no such limit).
    pub fn name(&self) -> String {
        match self {
            Kept::Host => format!("{PREFIX}host"),
            Kept::Admin => format!("{PREFIX}admin"),
            Kept::Endpoint(vm) => format!("{PREFIX}ep.{}", vm_hex(*vm)),
            Kept::GuestPort { vm, port } => format!("{PREFIX}gp.{}.{port}", vm_hex(*vm)),
            Kept::Session(n, record) => format!("{PREFIX}s{n}.{}", hex(&record.encode())),
        }
    }

    /// Reads a name.
    pub fn parse(name: &str) -> Result<Kept, NameError> {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return Err(match version_of(name) {
                Some(version) => NameError::Version {
                    name: name.to_owned(),
                    version: version.to_owned(),
                },
                None => NameError::Foreign(name.to_owned()),
            });
        };
        let bad = |what| NameError::Malformed {
            name: name.to_owned(),
            what,
        };
        let mut parts = rest.split('.');
        let head = parts.next().unwrap_or_default();
        let kept = match head {
            "host" => Kept::Host,
            "admin" => Kept::Admin,
            "ep" => Kept::Endpoint(
                parts
                    .next()
                    .and_then(parse_vm)
                    .ok_or_else(|| bad("no partition id"))?,
            ),
            "gp" => {
                let vm = parts
                    .next()
                    .and_then(parse_vm)
                    .ok_or_else(|| bad("no VM id"))?;
                let port = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("no port"))?;
                Kept::GuestPort { vm, port }
            }
            s if s.starts_with('s') => {
                let n = s[1..].parse().map_err(|_| bad("no session number"))?;
                let bytes = parts
                    .next()
                    .and_then(unhex)
                    .ok_or_else(|| bad("the session record is not hex"))?;
                Kept::Session(n, SessionRecord::decode(&bytes).map_err(bad)?)
            }
            _ => return Err(bad("unknown kind")),
        };
        if parts.next().is_some() {
            return Err(bad("trailing fields"));
        }
        Ok(kept)
    }

    /// Whether a service manager's store should keep it: everything but a session with
    /// nothing to resume (a fresh session or a connector with no connect waiting is cheaper
    /// to retry than to store on every connect).
    pub fn durable(&self) -> bool {
        match self {
            Kept::Session(_, record) => match &record.state {
                SessionState::Fresh => false,
                SessionState::Connector(waiting) => !waiting.is_empty(),
                SessionState::Listener { .. } | SessionState::Gateway => true,
            },
            _ => true,
        }
    }
}

/// `hvN.` where N is a number: a name of some version of this format.
fn version_of(name: &str) -> Option<&str> {
    let (head, _) = name.split_once('.')?;
    let digits = head.strip_prefix("hv")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(head)
}

/// Whether a descriptor name is one of hvsockd's kept sockets (of any version), as opposed to
/// a socket-activated `host` or `admin`.
pub fn is_kept_name(name: &str) -> bool {
    version_of(name).is_some()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("the session record is cut short");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn addr(&mut self) -> Result<WireAddr, &'static str> {
        Ok(WireAddr {
            vm: self.array()?,
            service: self.array()?,
        })
    }
}

impl SessionRecord {
    /// The binary record, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(self.partition.0.as_bytes());
        match &self.state {
            SessionState::Fresh => b.push(0),
            SessionState::Connector(waiting) => {
                b.push(1);
                b.push(u8::try_from(waiting.len()).unwrap_or(u8::MAX));
                for w in waiting.iter().take(usize::from(u8::MAX)) {
                    b.extend_from_slice(&w.req.to_le_bytes());
                    b.extend_from_slice(&w.target.vm);
                    b.extend_from_slice(&w.target.service);
                    b.extend_from_slice(&w.deadline_ms.to_le_bytes());
                }
            }
            SessionState::Listener {
                addr,
                backlog,
                outstanding,
            } => {
                b.push(2);
                b.extend_from_slice(&addr.vm);
                b.extend_from_slice(&addr.service);
                b.extend_from_slice(&backlog.to_le_bytes());
                b.extend_from_slice(&outstanding.to_le_bytes());
            }
            SessionState::Gateway => b.push(3),
        }
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads a binary record: the length, then the checksum, then the fields.
    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, &'static str> {
        if bytes.len() < 16 + 1 + 4 {
            return Err("the session record is cut short");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        let sum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
        if fnv1a(body) != sum {
            return Err("the session record's checksum does not match");
        }
        let mut r = Reader(body);
        let partition = VmId(hvsock::Guid::from_bytes(r.array()?));
        let state = match r.array::<1>()?[0] {
            0 => SessionState::Fresh,
            1 => {
                let count = r.array::<1>()?[0];
                let mut waiting = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    waiting.push(WaitingConnect {
                        req: r.u32()?,
                        target: r.addr()?,
                        deadline_ms: u64::from_le_bytes(r.array()?),
                    });
                }
                SessionState::Connector(waiting)
            }
            2 => SessionState::Listener {
                addr: r.addr()?,
                backlog: r.u32()?,
                outstanding: r.u32()?,
            },
            3 => SessionState::Gateway,
            _ => return Err("the session record has an unknown state"),
        };
        if !r.0.is_empty() {
            return Err("the session record is longer than its state");
        }
        Ok(SessionRecord { partition, state })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vm(n: u8) -> VmId {
        VmId(hvsock::Guid::from_bytes([n; 16]))
    }

    fn addr(n: u8) -> WireAddr {
        WireAddr {
            vm: [n; 16],
            service: [n.wrapping_add(1); 16],
        }
    }

    fn samples() -> Vec<Kept> {
        let waiting = |n: u8| WaitingConnect {
            req: u32::from(n) * 7,
            target: addr(n),
            deadline_ms: u64::MAX - u64::from(n),
        };
        vec![
            Kept::Host,
            Kept::Admin,
            Kept::Endpoint(vm(3)),
            Kept::GuestPort {
                vm: vm(4),
                port: u32::MAX,
            },
            Kept::Session(
                0,
                SessionRecord {
                    partition: vm(5),
                    state: SessionState::Fresh,
                },
            ),
            Kept::Session(
                u64::MAX,
                SessionRecord {
                    partition: vm(6),
                    state: SessionState::Connector(vec![waiting(1), waiting(2)]),
                },
            ),
            Kept::Session(
                17,
                SessionRecord {
                    partition: vm(7),
                    state: SessionState::Gateway,
                },
            ),
            Kept::Session(
                17,
                SessionRecord {
                    partition: vm(7),
                    state: SessionState::Listener {
                        addr: addr(8),
                        backlog: 4096,
                        outstanding: 3,
                    },
                },
            ),
        ]
    }

    #[test]
    fn every_kind_round_trips_within_systemds_name_rules() {
        for kept in samples() {
            let name = kept.name();
            assert!(name.len() <= MAX_NAME, "{name}");
            // fdname_is_valid(): printable ASCII, no ':'.
            assert!(
                name.bytes().all(|b| (b' '..127).contains(&b) && b != b':'),
                "{name}"
            );
            assert_eq!(Kept::parse(&name).unwrap(), kept, "{name}");
        }
    }

    #[test]
    fn a_name_that_would_be_too_long_is_not_given() {
        let many = Kept::Session(
            u64::MAX,
            SessionRecord {
                partition: vm(1),
                state: SessionState::Connector(vec![
                    WaitingConnect {
                        req: 1,
                        target: addr(1),
                        deadline_ms: 1
                    };
                    MAX_WAITING_IN_NAME + 1
                ]),
            },
        );
        assert!(many.name().len() > MAX_NAME);
        assert_eq!(Kept::parse(&many.name()).unwrap(), many);
    }

    #[test]
    fn foreign_other_version_and_damaged_names_are_refused_with_why() {
        let listener = samples().pop().unwrap().name();
        let flipped = {
            // Change one hex digit of the record: the checksum catches it.
            let mut b = listener.clone().into_bytes();
            let i = b.len() - 12;
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).unwrap()
        };
        let cases: &[(&str, &str)] = &[
            ("host", "not the name of a socket hvsockd keeps"),
            ("hvsockd.socket", "not the name"),
            ("", "not the name"),
            ("hv2.s1.00", "reads hv1 only"),
            ("hv10.host", "reads hv1 only"),
            ("hv1.", "unknown kind"),
            ("hv1.nope", "unknown kind"),
            ("hv1.ep", "no partition id"),
            ("hv1.ep.0011", "no partition id"),
            ("hv1.ep.zz112233445566778899aabbccddeeff", "no partition id"),
            ("hv1.gp.00112233445566778899aabbccddeeff", "no port"),
            ("hv1.gp.00112233445566778899aabbccddeeff.-1", "no port"),
            ("hv1.host.x", "trailing fields"),
            ("hv1.sx.00", "no session number"),
            ("hv1.s1.0", "not hex"),
            ("hv1.s1.é", "not hex"),
            ("hv1.s1.00", "cut short"),
            (&flipped, "checksum does not match"),
        ];
        for (name, why) in cases {
            let e = Kept::parse(name).expect_err(name).to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
    }

    #[test]
    fn records_with_bad_fields_behind_a_good_checksum_are_refused() {
        let sealed = |mut body: Vec<u8>| {
            let sum = fnv1a(&body);
            body.extend_from_slice(&sum.to_le_bytes());
            body
        };
        let mut unknown = vec![0u8; 16];
        unknown.push(9);
        assert!(
            SessionRecord::decode(&sealed(unknown))
                .unwrap_err()
                .contains("unknown state")
        );
        let mut short = vec![0u8; 16];
        short.extend_from_slice(&[1, 2]); // two connects announced, none there
        assert!(
            SessionRecord::decode(&sealed(short))
                .unwrap_err()
                .contains("cut short")
        );
        let mut long = vec![0u8; 16];
        long.extend_from_slice(&[0, 0]);
        assert!(
            SessionRecord::decode(&sealed(long))
                .unwrap_err()
                .contains("longer than its state")
        );
    }

    #[test]
    fn only_sessions_with_something_to_resume_are_durable() {
        let durable: Vec<bool> = samples().iter().map(Kept::durable).collect();
        assert_eq!(durable, [true, true, true, true, false, true, true, true]);
        let idle = Kept::Session(
            1,
            SessionRecord {
                partition: vm(1),
                state: SessionState::Connector(Vec::new()),
            },
        );
        assert!(!idle.durable());
        assert!(is_kept_name("hv1.host") && is_kept_name("hv7.x") && !is_kept_name("host"));
    }
}
