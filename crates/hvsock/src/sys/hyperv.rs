//! The plain logic of the `AF_HYPERV` transport, apart from its system calls so that it is
//! tested on every platform: [`SockAddrHv`] to and from Windows' own `SOCKADDR_HV` (the
//! `windows-sys` definition, which compiles anywhere), the connect timeout in the unit of
//! `HVSOCKET_CONNECT_TIMEOUT`, and the table from Winsock errors to the `io::ErrorKind`s the
//! other transports give, with messages that say what to do.
//!
//! Compiled on Windows, and in tests everywhere.

use std::fmt;
use std::io;
use std::time::Duration;

use windows_sys::Win32::Networking::WinSock as ws;
use windows_sys::Win32::System::Hypervisor::{HVSOCKET_CONNECT_TIMEOUT_MAX, SOCKADDR_HV};
use windows_sys::core::GUID;

use crate::addr::{AF_HYPERV, AddrError, SockAddrHv};
use crate::guid::{Guid, ServiceId, VmId};

/// A [`Guid`] as Windows' `GUID` structure.
pub(crate) fn guid_to_raw(guid: Guid) -> GUID {
    let (data1, data2, data3, data4) = guid.fields();
    GUID {
        data1,
        data2,
        data3,
        data4,
    }
}

/// Windows' `GUID` structure as a [`Guid`].
pub(crate) fn guid_from_raw(raw: &GUID) -> Guid {
    Guid::from_fields(raw.data1, raw.data2, raw.data3, raw.data4)
}

/// The `SOCKADDR_HV` of an address: family `AF_HYPERV`, reserved 0, the two GUIDs.
pub(crate) fn to_raw(addr: SockAddrHv) -> SOCKADDR_HV {
    SOCKADDR_HV {
        Family: AF_HYPERV,
        Reserved: 0,
        VmId: guid_to_raw(addr.vm_id.guid()),
        ServiceId: guid_to_raw(addr.service_id.guid()),
    }
}

/// The address in a `SOCKADDR_HV` that Windows filled in (`accept`, `getsockname`,
/// `getpeername`). The family must be `AF_HYPERV`; the reserved field is not checked, as
/// Windows owns it.
pub(crate) fn from_raw(raw: &SOCKADDR_HV) -> Result<SockAddrHv, AddrError> {
    if raw.Family != AF_HYPERV {
        return Err(AddrError::Family(raw.Family));
    }
    Ok(SockAddrHv::new(
        VmId(guid_from_raw(&raw.VmId)),
        ServiceId(guid_from_raw(&raw.ServiceId)),
    ))
}

/// The value of `HVSOCKET_CONNECT_TIMEOUT` for `timeout`: milliseconds, rounded up, from 1 to
/// `HVSOCKET_CONNECT_TIMEOUT_MAX` (5 minutes).
pub(crate) fn connect_timeout_ms(timeout: Duration) -> u32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms)
        .unwrap_or(u32::MAX)
        .clamp(1, HVSOCKET_CONNECT_TIMEOUT_MAX)
}

/// The `io::ErrorKind` a Winsock error stands for, as the Linux transports report the same
/// condition. `None` for codes that need no translation.
pub(crate) fn wsa_error_kind(code: i32) -> Option<io::ErrorKind> {
    use io::ErrorKind as K;
    Some(match code {
        ws::WSAECONNREFUSED => K::ConnectionRefused,
        ws::WSAEACCES => K::PermissionDenied,
        ws::WSAETIMEDOUT => K::TimedOut,
        // An unreachable partition and a missing one look the same, as through hvsockd.
        ws::WSAEHOSTUNREACH | ws::WSAENETUNREACH | ws::WSAEHOSTDOWN | ws::WSAENETDOWN => {
            K::HostUnreachable
        }
        ws::WSAEADDRINUSE => K::AddrInUse,
        ws::WSAEADDRNOTAVAIL => K::AddrNotAvailable,
        ws::WSAEAFNOSUPPORT
        | ws::WSAEPFNOSUPPORT
        | ws::WSAEPROTONOSUPPORT
        | ws::WSAESOCKTNOSUPPORT
        | ws::WSAEPROTOTYPE
        | ws::WSAEOPNOTSUPP => K::Unsupported,
        ws::WSAECONNRESET => K::ConnectionReset,
        ws::WSAECONNABORTED => K::ConnectionAborted,
        // Writing after `shutdown(Write)`: `EPIPE` on Linux.
        ws::WSAESHUTDOWN => K::BrokenPipe,
        ws::WSAENOTCONN => K::NotConnected,
        ws::WSAEWOULDBLOCK => K::WouldBlock,
        ws::WSAEINTR => K::Interrupted,
        ws::WSAEINVAL | ws::WSAEFAULT => K::InvalidInput,
        _ => return None,
    })
}

/// `err` with the kind [`wsa_error_kind`] gives its Winsock code, keeping it as the cause; other
/// errors unchanged. For the data path (read, write, accept), where the caller knows the
/// context.
pub(crate) fn normalize(err: io::Error) -> io::Error {
    match err.raw_os_error().and_then(wsa_error_kind) {
        Some(kind) if kind != err.kind() => io::Error::new(kind, err),
        _ => err,
    }
}

/// What was being done when a Winsock call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Creating the socket.
    Socket,
    /// Setting a Hyper-V socket option before connecting.
    Configure,
    /// Connecting, with this timeout.
    Connect(Duration),
    /// Binding.
    Bind,
    /// Listening.
    Listen,
}

/// A failed Winsock call of the `AF_HYPERV` transport: what was done, to which address, what
/// it probably means, and the system's own error.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {hint} ({source})", op_name(*.op), Shown(.addr))]
pub(crate) struct HyperVError {
    op: Op,
    addr: SockAddrHv,
    hint: String,
    #[source]
    source: io::Error,
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Socket => "AF_HYPERV socket for",
        Op::Configure => "socket options to connect to",
        Op::Connect(_) => "connect to",
        Op::Bind => "bind",
        Op::Listen => "listen on",
    }
}

/// An address with the VM part as its keyword when it has one (`parent:…`).
struct Shown<'a>(&'a SockAddrHv);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.vm_id.keyword() {
            Some(word) => write!(f, "{word}:{}", self.0.service_id),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The message for the user: what the condition usually means on Hyper-V and what to do.
fn hint(op: Op, kind: io::ErrorKind, addr: SockAddrHv) -> String {
    use io::ErrorKind as K;
    let svc = addr.service_id;
    match (op, kind) {
        (_, K::Unsupported) => "this Windows has no Hyper-V sockets: AF_HYPERV needs Windows 10 \
             or Windows Server 2016 or later, on a Hyper-V host or inside a Hyper-V guest"
            .to_owned(),
        (Op::Connect(_), K::ConnectionRefused) => {
            format!("refused: nothing listens on service {svc} in that partition")
        }
        (Op::Connect(_), K::PermissionDenied) => format!(
            "not permitted: the Hyper-V host must register service {svc} \
             (as Administrator on the host: hvsock service add NAME --id {svc})"
        ),
        (Op::Connect(timeout), K::TimedOut) => format!(
            "no answer within {timeout:?}: Hyper-V waits for a listener rather than refusing, \
             so nothing listens on service {svc} yet, or the partition is not running"
        ),
        (Op::Connect(_), K::HostUnreachable) => format!(
            "partition {} is not reachable from here (not running, not a parent or child of \
             this partition, or no such partition)",
            addr.vm_id
        ),
        (Op::Bind, K::AddrInUse) => "another socket is already bound to this address".to_owned(),
        (Op::Bind, K::AddrNotAvailable) => {
            "this partition cannot bind that VmId (bind wildcard, children, loopback, parent or \
             this partition's own id)"
                .to_owned()
        }
        (Op::Bind, K::PermissionDenied) => format!(
            "not permitted: a service that VMs reach must be registered on the Hyper-V host \
             (as Administrator on the host: hvsock service add NAME --id {svc})"
        ),
        (Op::Socket, _) => "cannot create the socket".to_owned(),
        (Op::Configure, _) => "cannot set the Hyper-V socket options".to_owned(),
        (Op::Connect(_), _) => "connect failed".to_owned(),
        (Op::Bind, _) => "bind failed".to_owned(),
        (Op::Listen, _) => "listen failed".to_owned(),
    }
}

/// The error of `op` on `addr` that failed with `source` (a Winsock error): the kind is the
/// one [`wsa_error_kind`] gives, the message says what it means, `source` is kept as the cause.
pub(crate) fn op_error(op: Op, addr: SockAddrHv, source: io::Error) -> io::Error {
    let kind = source
        .raw_os_error()
        .and_then(wsa_error_kind)
        .unwrap_or(source.kind());
    io::Error::new(
        kind,
        HyperVError {
            op,
            addr,
            hint: hint(op, kind, addr),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use windows_sys::Win32::System::Hypervisor as hv;

    use super::*;

    fn vm(s: &str) -> VmId {
        VmId::parse(s).unwrap_or_default()
    }

    /// The bytes of a `SOCKADDR_HV` as they lie in memory on a little-endian machine (every
    /// Windows target).
    fn bytes_of(raw: &SOCKADDR_HV) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[0..2].copy_from_slice(&raw.Family.to_le_bytes());
        out[2..4].copy_from_slice(&raw.Reserved.to_le_bytes());
        for (at, g) in [(4, &raw.VmId), (20, &raw.ServiceId)] {
            out[at..at + 4].copy_from_slice(&g.data1.to_le_bytes());
            out[at + 4..at + 6].copy_from_slice(&g.data2.to_le_bytes());
            out[at + 6..at + 8].copy_from_slice(&g.data3.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&g.data4);
        }
        out
    }

    #[test]
    fn sockaddr_hv_layout_is_the_documented_one() {
        // hvsocket.h: { ADDRESS_FAMILY Family; USHORT Reserved; GUID VmId; GUID ServiceId; }
        assert_eq!(size_of::<SOCKADDR_HV>(), SockAddrHv::LEN);
        assert_eq!(size_of::<SOCKADDR_HV>(), 36);
        assert_eq!(align_of::<SOCKADDR_HV>(), 4);
        assert_eq!(offset_of!(SOCKADDR_HV, Family), 0);
        assert_eq!(offset_of!(SOCKADDR_HV, Reserved), 2);
        assert_eq!(offset_of!(SOCKADDR_HV, VmId), 4);
        assert_eq!(offset_of!(SOCKADDR_HV, ServiceId), 20);
        assert_eq!(size_of::<GUID>(), 16);
        assert_eq!(offset_of!(GUID, data1), 0);
        assert_eq!(offset_of!(GUID, data2), 4);
        assert_eq!(offset_of!(GUID, data3), 6);
        assert_eq!(offset_of!(GUID, data4), 8);
        // It fits in the storage Winsock hands to accept/getsockname.
        assert!(size_of::<SOCKADDR_HV>() <= size_of::<ws::SOCKADDR_STORAGE>());
    }

    #[test]
    fn constants_match_windows() {
        assert_eq!(AF_HYPERV, ws::AF_HYPERV);
        assert_eq!(crate::addr::HV_PROTOCOL_RAW as u32, hv::HV_PROTOCOL_RAW);
        assert_eq!(
            crate::addr::HVSOCKET_CONNECT_TIMEOUT as u32,
            hv::HVSOCKET_CONNECT_TIMEOUT
        );
        assert_eq!(
            crate::addr::HVSOCKET_CONNECT_TIMEOUT_MAX,
            hv::HVSOCKET_CONNECT_TIMEOUT_MAX
        );
        assert_eq!(
            crate::addr::HVSOCKET_CONNECTED_SUSPEND as u32,
            hv::HVSOCKET_CONNECTED_SUSPEND
        );
        assert_eq!(
            crate::addr::HVSOCKET_ADDRESS_FLAG_PASSTHRU,
            hv::HVSOCKET_ADDRESS_FLAG_PASSTHRU
        );
    }

    #[test]
    fn well_known_guids_match_windows() {
        use crate::guid as g;
        let table = [
            (g::HV_GUID_ZERO.guid(), hv::HV_GUID_ZERO),
            (g::HV_GUID_WILDCARD.guid(), hv::HV_GUID_ZERO),
            (g::HV_GUID_BROADCAST.guid(), hv::HV_GUID_BROADCAST),
            (g::HV_GUID_CHILDREN.guid(), hv::HV_GUID_CHILDREN),
            (g::HV_GUID_LOOPBACK.guid(), hv::HV_GUID_LOOPBACK),
            (g::HV_GUID_PARENT.guid(), hv::HV_GUID_PARENT),
            (g::HV_GUID_SILOHOST.guid(), hv::HV_GUID_SILOHOST),
            (g::HV_GUID_VSOCK_TEMPLATE.guid(), hv::HV_GUID_VSOCK_TEMPLATE),
        ];
        for (ours, theirs) in table {
            assert_eq!(guid_from_raw(&theirs), ours, "{ours}");
            let raw = guid_to_raw(ours);
            assert_eq!(
                (raw.data1, raw.data2, raw.data3, raw.data4),
                (theirs.data1, theirs.data2, theirs.data3, theirs.data4),
                "{ours}"
            );
        }
    }

    #[test]
    fn to_raw_fills_every_field_in_windows_order() {
        let addr = SockAddrHv::new(
            vm("a42e7cda-d03f-480c-9cc2-a4de20abb878"),
            ServiceId::from_vsock_port(2761),
        );
        let raw = to_raw(addr);
        assert_eq!(raw.Family, 34);
        assert_eq!(raw.Reserved, 0);
        assert_eq!(
            (raw.VmId.data1, raw.VmId.data2, raw.VmId.data3),
            (0xa42e_7cda, 0xd03f, 0x480c)
        );
        assert_eq!(
            raw.VmId.data4,
            [0x9c, 0xc2, 0xa4, 0xde, 0x20, 0xab, 0xb8, 0x78]
        );
        assert_eq!(raw.ServiceId.data1, 2761);
        // Byte for byte, the documented 36 bytes that SockAddrHv::to_bytes writes...
        assert_eq!(bytes_of(&raw), addr.to_bytes());
        // ...and the structure's memory is exactly those bytes (every Windows target is
        // little-endian).
        #[cfg(target_endian = "little")]
        {
            // SAFETY: `raw` is a live SOCKADDR_HV of 36 bytes made only of integers, with no
            // padding (2 + 2 + 16 + 16 at alignment 4), so all 36 bytes are initialised.
            let memory = unsafe {
                std::slice::from_raw_parts((&raw const raw).cast::<u8>(), size_of::<SOCKADDR_HV>())
            };
            assert_eq!(memory, addr.to_bytes());
        }
    }

    #[test]
    fn from_raw_reads_what_windows_fills_in() {
        let addr = SockAddrHv::new(VmId::CHILDREN, ServiceId::from_vsock_port(80));
        assert_eq!(from_raw(&to_raw(addr)), Ok(addr));
        let mut raw = to_raw(addr);
        raw.Family = ws::AF_INET;
        assert_eq!(from_raw(&raw), Err(AddrError::Family(ws::AF_INET)));
        let mut raw = to_raw(addr);
        raw.Reserved = 7; // Windows' field: not ours to refuse.
        assert_eq!(from_raw(&raw), Ok(addr));
    }

    #[test]
    fn connect_timeout_is_whole_milliseconds_within_windows_bounds() {
        let table = [
            (Duration::from_nanos(1), 1),
            (Duration::from_micros(1500), 2),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(2), 2000),
            (Duration::from_secs(300), 300_000),
            (Duration::from_secs(301), 300_000),
            (Duration::MAX, 300_000),
        ];
        for (timeout, ms) in table {
            assert_eq!(connect_timeout_ms(timeout), ms, "{timeout:?}");
        }
    }

    #[test]
    fn winsock_errors_map_to_the_kinds_of_the_linux_transports() {
        use io::ErrorKind as K;
        let table = [
            (ws::WSAECONNREFUSED, Some(K::ConnectionRefused)),
            (ws::WSAEACCES, Some(K::PermissionDenied)),
            (ws::WSAETIMEDOUT, Some(K::TimedOut)),
            (ws::WSAEHOSTUNREACH, Some(K::HostUnreachable)),
            (ws::WSAENETUNREACH, Some(K::HostUnreachable)),
            (ws::WSAEHOSTDOWN, Some(K::HostUnreachable)),
            (ws::WSAENETDOWN, Some(K::HostUnreachable)),
            (ws::WSAEADDRINUSE, Some(K::AddrInUse)),
            (ws::WSAEADDRNOTAVAIL, Some(K::AddrNotAvailable)),
            (ws::WSAEAFNOSUPPORT, Some(K::Unsupported)),
            (ws::WSAEPFNOSUPPORT, Some(K::Unsupported)),
            (ws::WSAEPROTONOSUPPORT, Some(K::Unsupported)),
            (ws::WSAESOCKTNOSUPPORT, Some(K::Unsupported)),
            (ws::WSAEPROTOTYPE, Some(K::Unsupported)),
            (ws::WSAEOPNOTSUPP, Some(K::Unsupported)),
            (ws::WSAECONNRESET, Some(K::ConnectionReset)),
            (ws::WSAECONNABORTED, Some(K::ConnectionAborted)),
            (ws::WSAESHUTDOWN, Some(K::BrokenPipe)),
            (ws::WSAENOTCONN, Some(K::NotConnected)),
            (ws::WSAEWOULDBLOCK, Some(K::WouldBlock)),
            (ws::WSAEINTR, Some(K::Interrupted)),
            (ws::WSAEINVAL, Some(K::InvalidInput)),
            (ws::WSAEFAULT, Some(K::InvalidInput)),
            (ws::WSAEMFILE, None),
            (ws::WSAENOBUFS, None),
        ];
        for (code, kind) in table {
            assert_eq!(wsa_error_kind(code), kind, "WSA error {code}");
            let err = normalize(io::Error::from_raw_os_error(code));
            if let Some(kind) = kind {
                assert_eq!(err.kind(), kind, "WSA error {code}");
            }
        }
    }

    #[test]
    fn normalize_keeps_the_system_error_as_the_cause() {
        let err = normalize(io::Error::from_raw_os_error(ws::WSAESHUTDOWN));
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let code = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
            .or(err.raw_os_error());
        assert_eq!(code, Some(ws::WSAESHUTDOWN));
        // Errors without a Winsock code pass through untouched.
        let plain = normalize(io::Error::other("x"));
        assert_eq!(plain.to_string(), "x");
    }

    #[test]
    fn op_errors_name_the_address_and_say_what_to_do() {
        let svc = ServiceId::from_vsock_port(2761);
        let parent = SockAddrHv::new(VmId::PARENT, svc);
        let cases = [
            (
                Op::Connect(Duration::from_secs(2)),
                ws::WSAECONNREFUSED,
                io::ErrorKind::ConnectionRefused,
                "nothing listens on service 00000ac9-facb-11e6-bd58-64006a7986d3",
            ),
            (
                Op::Connect(Duration::from_secs(2)),
                ws::WSAEACCES,
                io::ErrorKind::PermissionDenied,
                "hvsock service add NAME --id 00000ac9-facb-11e6-bd58-64006a7986d3",
            ),
            (
                Op::Connect(Duration::from_secs(2)),
                ws::WSAETIMEDOUT,
                io::ErrorKind::TimedOut,
                "no answer within 2s",
            ),
            (
                Op::Connect(Duration::from_secs(2)),
                ws::WSAENETUNREACH,
                io::ErrorKind::HostUnreachable,
                "partition a42e7cda-d03f-480c-9cc2-a4de20abb878 is not reachable",
            ),
            (
                Op::Socket,
                ws::WSAEAFNOSUPPORT,
                io::ErrorKind::Unsupported,
                "this Windows has no Hyper-V sockets",
            ),
            (
                Op::Bind,
                ws::WSAEADDRINUSE,
                io::ErrorKind::AddrInUse,
                "already bound",
            ),
            (
                Op::Listen,
                ws::WSAEINVAL,
                io::ErrorKind::InvalidInput,
                "listen failed",
            ),
        ];
        for (op, code, kind, needle) in cases {
            let err = op_error(op, parent, io::Error::from_raw_os_error(code));
            assert_eq!(err.kind(), kind, "{err}");
            let text = err.to_string();
            assert!(text.contains(needle), "{text}");
            assert!(
                text.contains("parent:00000ac9-facb-11e6-bd58-64006a7986d3"),
                "{text}"
            );
            let cause = std::error::Error::source(
                err.get_ref()
                    .and_then(|e| e.downcast_ref::<HyperVError>())
                    .expect("a HyperVError inside"),
            )
            .and_then(|e| e.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error);
            assert_eq!(cause, Some(code), "{text}");
        }
    }
}
