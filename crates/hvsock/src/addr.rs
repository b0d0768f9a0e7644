//! Socket addresses: [`SockAddrHv`] (byte-compatible with Windows `SOCKADDR_HV`) and the
//! `VM:SERVICE` strings that people type.
//!
//! `SOCKADDR_HV` is 36 bytes: `Family` (u16, [`AF_HYPERV`] = 34), `Reserved` (u16, zero), `VmId`
//! (a `GUID`), `ServiceId` (a `GUID`), every integer little-endian (the GUIDs in Windows field
//! order, see [`crate::Guid::to_windows_bytes`]).
//!
//! In a `VM:SERVICE` string, VM is a GUID, a keyword (`wildcard`, `zero`, `children`,
//! `loopback`, `parent`, `broadcast`, `silohost`) or a partition name; SERVICE is a GUID, a
//! decimal vsock port (which stands for its template GUID) or a registered service name. Names
//! are resolved by hvsockd's registry, so [`AddrSpec`] keeps them until a resolver is at hand;
//! `SockAddrHv::from_str` accepts only the forms that need no registry.

use std::fmt;
use std::str::FromStr;

use crate::guid::{Guid, ServiceId, VmId};

/// `AF_HYPERV`: the Windows address family of Hyper-V sockets.
pub const AF_HYPERV: u16 = 34;
/// `HV_PROTOCOL_RAW`: the only Hyper-V socket protocol.
pub const HV_PROTOCOL_RAW: i32 = 1;
/// `HVSOCKET_CONNECT_TIMEOUT`: socket option, connect timeout in milliseconds.
pub const HVSOCKET_CONNECT_TIMEOUT: i32 = 1;
/// `HVSOCKET_CONNECT_TIMEOUT_MAX`: the largest connect timeout Windows accepts, in milliseconds.
pub const HVSOCKET_CONNECT_TIMEOUT_MAX: u32 = 300_000;
/// `HVSOCKET_CONNECTED_SUSPEND`: socket option, keep the connection across a VM suspend.
pub const HVSOCKET_CONNECTED_SUSPEND: i32 = 4;
/// `HVSOCKET_ADDRESS_FLAG_PASSTHRU`: address flag of `HVSOCKET_ADDRESS_INFO`.
pub const HVSOCKET_ADDRESS_FLAG_PASSTHRU: u32 = 1;

/// Why bytes or a string are not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The buffer is not 36 bytes long.
    #[error("a SOCKADDR_HV is 36 bytes, got {0}")]
    Length(usize),
    /// The family field is not `AF_HYPERV`.
    #[error("address family {0} is not AF_HYPERV (34)")]
    Family(u16),
    /// The reserved field is not zero.
    #[error("the reserved field of SOCKADDR_HV must be 0, got {0}")]
    Reserved(u16),
    /// No `:` between VM and SERVICE.
    #[error("{0:?} is not an address: expected VM:SERVICE, e.g. parent:2761 or wildcard:echo")]
    NoColon(String),
    /// One side of the `:` is empty.
    #[error("{input:?} is not an address: the {part} part is empty (expected VM:SERVICE)")]
    Empty {
        /// The whole input.
        input: String,
        /// `VM` or `SERVICE`.
        part: &'static str,
    },
    /// A decimal port that does not fit in 32 bits.
    #[error("{0:?} is not a vsock port: ports are 0 to 4294967295")]
    Port(String),
    /// A name where only GUIDs, keywords and ports are accepted.
    #[error(
        "{name:?} is a {what} name; names are resolved by hvsockd's registry (use the hvsock CLI), \
         here give a GUID{alt}"
    )]
    Unresolved {
        /// The name.
        name: String,
        /// `partition` or `service`.
        what: &'static str,
        /// What else is accepted.
        alt: &'static str,
    },
}

/// A Hyper-V socket address: a partition (`vm_id`) and a service (`service_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SockAddrHv {
    /// The partition: a VmId or one of the well-known values.
    pub vm_id: VmId,
    /// The service.
    pub service_id: ServiceId,
}

impl SockAddrHv {
    /// Size of `SOCKADDR_HV` in bytes.
    pub const LEN: usize = 36;

    /// The address of `service_id` in partition `vm_id`.
    pub const fn new(vm_id: VmId, service_id: ServiceId) -> SockAddrHv {
        SockAddrHv { vm_id, service_id }
    }

    /// The vsock port of the service, if its GUID follows the vsock template.
    pub fn vsock_port(&self) -> Option<u32> {
        self.service_id.vsock_port()
    }

    /// The 36 bytes of the Windows `SOCKADDR_HV` structure.
    pub fn to_bytes(&self) -> [u8; SockAddrHv::LEN] {
        let mut out = [0u8; SockAddrHv::LEN];
        out[0..2].copy_from_slice(&AF_HYPERV.to_le_bytes());
        out[4..20].copy_from_slice(&self.vm_id.0.to_windows_bytes());
        out[20..36].copy_from_slice(&self.service_id.0.to_windows_bytes());
        out
    }

    /// Reads a Windows `SOCKADDR_HV`: checks the length, then the family, then the reserved
    /// field, each with its own error.
    pub fn from_bytes(bytes: &[u8]) -> Result<SockAddrHv, AddrError> {
        let bytes: &[u8; SockAddrHv::LEN] = bytes
            .try_into()
            .map_err(|_| AddrError::Length(bytes.len()))?;
        let family = u16::from_le_bytes([bytes[0], bytes[1]]);
        if family != AF_HYPERV {
            return Err(AddrError::Family(family));
        }
        let reserved = u16::from_le_bytes([bytes[2], bytes[3]]);
        if reserved != 0 {
            return Err(AddrError::Reserved(reserved));
        }
        let guid_at = |at: usize| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&bytes[at..at + 16]);
            Guid::from_windows_bytes(g)
        };
        Ok(SockAddrHv {
            vm_id: VmId(guid_at(4)),
            service_id: ServiceId(guid_at(20)),
        })
    }
}

impl fmt::Display for SockAddrHv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.vm_id, self.service_id)
    }
}

impl fmt::Debug for SockAddrHv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vm_id.keyword() {
            Some(word) => write!(f, "SockAddrHv({word}:{})", self.service_id),
            None => write!(f, "SockAddrHv({}:{})", self.vm_id, self.service_id),
        }
    }
}

impl FromStr for SockAddrHv {
    type Err = AddrError;
    /// Parses `VM:SERVICE` where VM is a GUID or keyword and SERVICE a GUID or vsock port.
    fn from_str(s: &str) -> Result<SockAddrHv, AddrError> {
        AddrSpec::parse(s)?.to_addr()
    }
}

/// The VM part of an address as typed: an id (GUID or keyword) or a partition name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmSpec {
    /// A GUID or a well-known keyword.
    Id(VmId),
    /// A partition name, to be resolved by the registry.
    Name(String),
}

/// The SERVICE part of an address as typed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceSpec {
    /// A GUID.
    Id(ServiceId),
    /// A decimal vsock port: its template GUID.
    Port(u32),
    /// A registered service name, to be resolved by the registry.
    Name(String),
}

impl VmSpec {
    /// Parses a GUID, a keyword or (anything else) a name.
    pub fn parse(s: &str) -> VmSpec {
        if let Some(id) = VmId::from_keyword(s) {
            return VmSpec::Id(id);
        }
        match VmId::parse(s) {
            Ok(id) => VmSpec::Id(id),
            Err(_) => VmSpec::Name(s.to_owned()),
        }
    }
}

impl ServiceSpec {
    /// Parses a GUID, a decimal port or (anything else) a name.
    pub fn parse(s: &str) -> Result<ServiceSpec, AddrError> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u32>()
                .map(ServiceSpec::Port)
                .map_err(|_| AddrError::Port(s.to_owned()));
        }
        Ok(match ServiceId::parse(s) {
            Ok(id) => ServiceSpec::Id(id),
            Err(_) => ServiceSpec::Name(s.to_owned()),
        })
    }

    /// The service id, if no registry is needed to know it.
    pub fn id(&self) -> Option<ServiceId> {
        match self {
            ServiceSpec::Id(id) => Some(*id),
            ServiceSpec::Port(port) => Some(ServiceId::from_vsock_port(*port)),
            ServiceSpec::Name(_) => None,
        }
    }
}

/// A `VM:SERVICE` string split into its parts, names not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddrSpec {
    /// The VM part.
    pub vm: VmSpec,
    /// The SERVICE part.
    pub service: ServiceSpec,
}

impl AddrSpec {
    /// Splits `VM:SERVICE` at its last `:` (a `urn:uuid:` GUID may hold colons; names may not).
    pub fn parse(s: &str) -> Result<AddrSpec, AddrError> {
        let s = s.trim();
        let (vm, service) = s
            .rsplit_once(':')
            .ok_or_else(|| AddrError::NoColon(s.to_owned()))?;
        if vm.is_empty() {
            return Err(AddrError::Empty {
                input: s.to_owned(),
                part: "VM",
            });
        }
        if service.is_empty() {
            return Err(AddrError::Empty {
                input: s.to_owned(),
                part: "SERVICE",
            });
        }
        Ok(AddrSpec {
            vm: VmSpec::parse(vm),
            service: ServiceSpec::parse(service)?,
        })
    }

    /// The address, if it names no partition or service by name.
    pub fn to_addr(&self) -> Result<SockAddrHv, AddrError> {
        let vm_id = match &self.vm {
            VmSpec::Id(id) => *id,
            VmSpec::Name(name) => {
                return Err(AddrError::Unresolved {
                    name: name.clone(),
                    what: "partition",
                    alt: " or one of wildcard, zero, children, loopback, parent, broadcast, silohost",
                });
            }
        };
        let service_id = match &self.service {
            ServiceSpec::Name(name) => {
                return Err(AddrError::Unresolved {
                    name: name.clone(),
                    what: "service",
                    alt: " or a decimal vsock port",
                });
            }
            spec => spec.id().unwrap_or_default(),
        };
        Ok(SockAddrHv { vm_id, service_id })
    }
}

/// Why a name cannot name a service or a partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} cannot be a {what} name: {reason}")]
pub struct NameError {
    name: String,
    what: &'static str,
    reason: &'static str,
}

/// Longest accepted service or partition name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

fn check_name(name: &str, what: &'static str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            name: name.to_owned(),
            what,
            reason,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return err("it is longer than 128 bytes");
    }
    if name.trim() != name {
        return err("it starts or ends with white space");
    }
    if name.contains(':') {
        return err("it contains ':', which separates VM from SERVICE in addresses");
    }
    if name.chars().any(char::is_control) {
        return err("it contains a control character");
    }
    if Guid::parse(name).is_ok() {
        return err("it reads as a GUID");
    }
    Ok(())
}

/// Checks a service's friendly name: 1–128 bytes, no `:`, no control characters, no leading or
/// trailing space, not a GUID and not all digits (that reads as a vsock port).
pub fn check_service_name(name: &str) -> Result<(), NameError> {
    check_name(name, "service")?;
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError {
            name: name.to_owned(),
            what: "service",
            reason: "it is all digits, which reads as a vsock port",
        });
    }
    Ok(())
}

/// Checks a partition's name: as a service name, and not one of the VM keywords (`parent`, …).
pub fn check_partition_name(name: &str) -> Result<(), NameError> {
    check_name(name, "partition")?;
    if VmId::from_keyword(name).is_some() {
        return Err(NameError {
            name: name.to_owned(),
            what: "partition",
            reason: "it is a keyword for a well-known VmId",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(s: &str) -> Guid {
        Guid::parse(s).unwrap_or_default()
    }

    #[test]
    fn sockaddr_bytes_match_windows_layout() {
        let addr = SockAddrHv::new(
            VmId(g("a42e7cda-d03f-480c-9cc2-a4de20abb878")),
            ServiceId::from_vsock_port(2761),
        );
        let expected: [u8; 36] = [
            0x22, 0x00, // Family = 34
            0x00, 0x00, // Reserved
            0xda, 0x7c, 0x2e, 0xa4, 0x3f, 0xd0, 0x0c, 0x48, // VmId Data1..3 LE
            0x9c, 0xc2, 0xa4, 0xde, 0x20, 0xab, 0xb8, 0x78, // VmId Data4
            0xc9, 0x0a, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11, // ServiceId Data1..3 LE
            0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3, // ServiceId Data4
        ];
        assert_eq!(addr.to_bytes(), expected);
        assert_eq!(SockAddrHv::from_bytes(&expected), Ok(addr));
    }

    #[test]
    fn sockaddr_from_bytes_checks_length_then_family_then_reserved() {
        let good = SockAddrHv::default().to_bytes();
        assert_eq!(
            SockAddrHv::from_bytes(&good[..35]),
            Err(AddrError::Length(35))
        );
        assert_eq!(SockAddrHv::from_bytes(&[0; 40]), Err(AddrError::Length(40)));
        let mut bad = good;
        bad[0] = 40; // AF_VSOCK
        assert_eq!(SockAddrHv::from_bytes(&bad), Err(AddrError::Family(40)));
        let mut bad = good;
        bad[2] = 1;
        assert_eq!(SockAddrHv::from_bytes(&bad), Err(AddrError::Reserved(1)));
    }

    #[test]
    fn address_strings_table() {
        let port = |p| ServiceSpec::Port(p);
        let name = |s: &str| VmSpec::Name(s.to_owned());
        let sname = |s: &str| ServiceSpec::Name(s.to_owned());
        let id = VmSpec::Id;
        let svc = g("3049197c-facb-11e6-bd58-64006a7986d3");
        let vm = g("c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11");
        let table: Vec<(&str, VmSpec, ServiceSpec)> = vec![
            ("parent:2761", id(VmId::PARENT), port(2761)),
            ("PARENT:2761", id(VmId::PARENT), port(2761)),
            ("wildcard:echo", id(VmId::WILDCARD), sname("echo")),
            ("zero:0", id(VmId::ZERO), port(0)),
            ("children:echo", id(VmId::CHILDREN), sname("echo")),
            ("loopback:echo", id(VmId::LOOPBACK), sname("echo")),
            ("broadcast:1", id(VmId::BROADCAST), port(1)),
            ("silohost:1", id(VmId::SILOHOST), port(1)),
            ("sandbox1:echo", name("sandbox1"), sname("echo")),
            (
                "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11:3049197c-facb-11e6-bd58-64006a7986d3",
                id(VmId(vm)),
                ServiceSpec::Id(ServiceId(svc)),
            ),
            (
                "{C9C0F2F4-7F6A-4B36-8F0A-1D2F0B7A5E11}:{3049197C-FACB-11E6-BD58-64006A7986D3}",
                id(VmId(vm)),
                ServiceSpec::Id(ServiceId(svc)),
            ),
            (
                "urn:uuid:c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11:4294967295",
                id(VmId(vm)),
                port(u32::MAX),
            ),
        ];
        for (input, vm, service) in table {
            assert_eq!(
                AddrSpec::parse(input),
                Ok(AddrSpec { vm, service }),
                "{input}"
            );
        }
    }

    #[test]
    fn address_string_errors_say_what_is_wrong() {
        assert_eq!(
            AddrSpec::parse("parent"),
            Err(AddrError::NoColon("parent".into()))
        );
        assert!(matches!(
            AddrSpec::parse(":2761"),
            Err(AddrError::Empty { part: "VM", .. })
        ));
        assert!(matches!(
            AddrSpec::parse("parent:"),
            Err(AddrError::Empty {
                part: "SERVICE",
                ..
            })
        ));
        assert_eq!(
            AddrSpec::parse("parent:4294967296"),
            Err(AddrError::Port("4294967296".into()))
        );
        let err = "sandbox:2761".parse::<SockAddrHv>().expect_err("a name");
        assert!(
            err.to_string().contains("\"sandbox\" is a partition name"),
            "{err}"
        );
        let err = "parent:echo".parse::<SockAddrHv>().expect_err("a name");
        assert!(
            err.to_string().contains("\"echo\" is a service name"),
            "{err}"
        );
        assert_eq!(
            "parent:2761".parse::<SockAddrHv>(),
            Ok(SockAddrHv::new(
                VmId::PARENT,
                ServiceId::from_vsock_port(2761)
            ))
        );
    }

    #[test]
    fn name_rules() {
        for ok in ["echo", "my service", "guest-agent.v2", "ü"] {
            assert_eq!(check_service_name(ok), Ok(()), "{ok}");
            assert_eq!(check_partition_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            " echo",
            "echo ",
            "a:b",
            "tab\there",
            "00000ac9-facb-11e6-bd58-64006a7986d3",
        ] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
            assert!(check_partition_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_service_name("2761").is_err());
        assert_eq!(check_partition_name("2761"), Ok(()));
        assert!(check_partition_name("parent").is_err());
        assert_eq!(check_service_name("parent"), Ok(()));
        assert!(check_service_name(&"x".repeat(129)).is_err());
        assert_eq!(check_service_name(&"x".repeat(128)), Ok(()));
    }

    proptest! {
        #[test]
        fn sockaddr_bytes_round_trip(vm in any::<[u8; 16]>(), svc in any::<[u8; 16]>()) {
            let addr = SockAddrHv::new(VmId(Guid::from_bytes(vm)), ServiceId(Guid::from_bytes(svc)));
            prop_assert_eq!(SockAddrHv::from_bytes(&addr.to_bytes()), Ok(addr));
        }

        #[test]
        fn sockaddr_string_round_trip(vm in any::<[u8; 16]>(), svc in any::<[u8; 16]>()) {
            let addr = SockAddrHv::new(VmId(Guid::from_bytes(vm)), ServiceId(Guid::from_bytes(svc)));
            prop_assert_eq!(addr.to_string().parse::<SockAddrHv>(), Ok(addr));
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(addr) = SockAddrHv::from_bytes(&bytes) {
                prop_assert_eq!(&addr.to_bytes()[..], &bytes[..]);
            }
        }

        #[test]
        fn any_string_parses_or_fails_cleanly(s in "\\PC{0,80}") {
            let _ = AddrSpec::parse(&s);
        }
    }
}
