//! The C types and constants of `<hvsocket.h>`, with the Windows names and values.
//!
//! `GUID` and the `HV_GUID_*` constants are written into the header by `tests/header.rs` (as
//! `static const` objects, so that a program needs no linking to use them, and valid C99 and
//! C++); everything else here is emitted by cbindgen as it is. The numbers are literals because
//! cbindgen reads only literals; a test checks each against the `hvsock` crate's own.

#![allow(non_camel_case_types, non_snake_case)]

use hvsock::{Guid, ServiceId, SockAddrHv, VmId};

/// `AF_HYPERV`: the address family of Hyper-V sockets (Linux's own `AF_ISDN` has the same
/// value; libhvsock takes it over).
pub const AF_HYPERV: i32 = 34;
/// `HV_PROTOCOL_RAW`: the protocol of `socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW)`, also
/// the option level of the Hyper-V socket options (on Linux the same value as `SOL_SOCKET`).
pub const HV_PROTOCOL_RAW: i32 = 1;
/// `HVSOCKET_CONNECT_TIMEOUT`: option, the connect timeout in milliseconds (an `unsigned int`;
/// default 2000).
pub const HVSOCKET_CONNECT_TIMEOUT: i32 = 1;
/// `HVSOCKET_CONNECT_TIMEOUT_MAX`: the largest connect timeout, in milliseconds.
pub const HVSOCKET_CONNECT_TIMEOUT_MAX: u32 = 300000;
/// `HVSOCKET_CONNECTED_SUSPEND`: option, keep the connection across a VM suspend (Windows only:
/// setting it to a non-zero value fails with `ENOPROTOOPT` here).
pub const HVSOCKET_CONNECTED_SUSPEND: i32 = 4;
/// `HVSOCKET_ADDRESS_FLAG_PASSTHRU`: the address flag of Windows' `HVSOCKET_ADDRESS_INFO`.
pub const HVSOCKET_ADDRESS_FLAG_PASSTHRU: u32 = 1;
/// The size of a GUID's text form with its terminating NUL, for `hv_guid_format`.
pub const HV_GUID_STRING_SIZE: usize = 37;

/// Windows' `ADDRESS_FAMILY`.
pub type ADDRESS_FAMILY = u16;

/// Windows' `GUID`: `Data1`-`Data3` in the machine's byte order, `Data4` as bytes.
///
/// Defined in the header by hand (with Windows' `GUID_DEFINED` guard), not by cbindgen.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GUID {
    /// The first 8 hex digits.
    pub Data1: u32,
    /// The next 4.
    pub Data2: u16,
    /// The next 4.
    pub Data3: u16,
    /// The last 16, as 8 bytes.
    pub Data4: [u8; 8],
}

/// Windows' `SOCKADDR_HV`: 36 bytes, the address of a Hyper-V socket.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SOCKADDR_HV {
    /// `AF_HYPERV`.
    pub Family: ADDRESS_FAMILY,
    /// Must be 0.
    pub Reserved: u16,
    /// The partition: a VmId or an `HV_GUID_*` wildcard.
    pub VmId: GUID,
    /// The service.
    pub ServiceId: GUID,
}

/// Windows' `PSOCKADDR_HV`.
pub type PSOCKADDR_HV = *mut SOCKADDR_HV;

impl From<Guid> for GUID {
    fn from(g: Guid) -> GUID {
        let (d1, d2, d3, d4) = g.fields();
        GUID {
            Data1: d1,
            Data2: d2,
            Data3: d3,
            Data4: d4,
        }
    }
}

impl From<GUID> for Guid {
    fn from(g: GUID) -> Guid {
        Guid::from_fields(g.Data1, g.Data2, g.Data3, g.Data4)
    }
}

impl From<SockAddrHv> for SOCKADDR_HV {
    fn from(a: SockAddrHv) -> SOCKADDR_HV {
        SOCKADDR_HV {
            Family: hvsock::addr::AF_HYPERV,
            Reserved: 0,
            VmId: a.vm_id.0.into(),
            ServiceId: a.service_id.0.into(),
        }
    }
}

impl From<SOCKADDR_HV> for SockAddrHv {
    fn from(a: SOCKADDR_HV) -> SockAddrHv {
        SockAddrHv::new(VmId(a.VmId.into()), ServiceId(a.ServiceId.into()))
    }
}

/// The well-known GUIDs of the header, in the order it lists them: `HV_GUID_<name>`.
pub fn well_known_guids() -> [(&'static str, Guid); 8] {
    [
        ("ZERO", VmId::ZERO.0),
        ("WILDCARD", VmId::WILDCARD.0),
        ("BROADCAST", VmId::BROADCAST.0),
        ("CHILDREN", VmId::CHILDREN.0),
        ("LOOPBACK", VmId::LOOPBACK.0),
        ("PARENT", VmId::PARENT.0),
        ("SILOHOST", VmId::SILOHOST.0),
        ("VSOCK_TEMPLATE", ServiceId::VSOCK_TEMPLATE.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_are_windows_own() {
        assert_eq!(size_of::<GUID>(), 16);
        assert_eq!(align_of::<GUID>(), 4);
        assert_eq!(offset_of!(GUID, Data2), 4);
        assert_eq!(offset_of!(GUID, Data3), 6);
        assert_eq!(offset_of!(GUID, Data4), 8);
        assert_eq!(size_of::<SOCKADDR_HV>(), SockAddrHv::LEN);
        assert_eq!(offset_of!(SOCKADDR_HV, Reserved), 2);
        assert_eq!(offset_of!(SOCKADDR_HV, VmId), 4);
        assert_eq!(offset_of!(SOCKADDR_HV, ServiceId), 20);
    }

    /// The C struct in memory is the crate's `to_bytes` on a little-endian machine, so either
    /// can be read as the other.
    #[cfg(target_endian = "little")]
    #[test]
    fn the_struct_is_the_wire_bytes() {
        let addr = SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(2761));
        let c = SOCKADDR_HV::from(addr);
        // SAFETY: SOCKADDR_HV is repr(C), 36 bytes without padding (checked above), so it can
        // be viewed as its bytes for as long as `c` lives.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts((&raw const c).cast::<u8>(), size_of::<SOCKADDR_HV>())
        };
        assert_eq!(bytes, addr.to_bytes());
        assert_eq!(SockAddrHv::from(c), addr);
    }

    #[test]
    fn constants_are_the_crates() {
        use hvsock::addr;
        assert_eq!(AF_HYPERV, i32::from(addr::AF_HYPERV));
        assert_eq!(HV_PROTOCOL_RAW, addr::HV_PROTOCOL_RAW);
        assert_eq!(HVSOCKET_CONNECT_TIMEOUT, addr::HVSOCKET_CONNECT_TIMEOUT);
        assert_eq!(
            HVSOCKET_CONNECT_TIMEOUT_MAX,
            addr::HVSOCKET_CONNECT_TIMEOUT_MAX
        );
        assert_eq!(HVSOCKET_CONNECTED_SUSPEND, addr::HVSOCKET_CONNECTED_SUSPEND);
        assert_eq!(
            HVSOCKET_ADDRESS_FLAG_PASSTHRU,
            addr::HVSOCKET_ADDRESS_FLAG_PASSTHRU
        );
        assert_eq!(HV_GUID_STRING_SIZE, Guid::NIL.to_string().len() + 1);
    }

    #[test]
    fn guids_round_trip() {
        for (_, g) in well_known_guids() {
            assert_eq!(Guid::from(GUID::from(g)), g);
        }
        let parent = GUID::from(VmId::PARENT.0);
        assert_eq!(parent.Data1, 0xa42e_7cda);
        assert_eq!(parent.Data2, 0xd03f);
        assert_eq!(parent.Data3, 0x480c);
        assert_eq!(
            parent.Data4,
            [0x9c, 0xc2, 0xa4, 0xde, 0x20, 0xab, 0xb8, 0x78]
        );
    }
}
