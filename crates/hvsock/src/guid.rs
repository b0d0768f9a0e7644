//! GUIDs, partition ids (`VmId`), service ids (`ServiceId`) and the well-known values.
//!
//! A [`Guid`] is printed in the canonical lower-case hyphenated form
//! (`00000ac9-facb-11e6-bd58-64006a7986d3`) and parsed from every common spelling: plain
//! hyphenated, braced (`{…}`, as the Windows registry and PowerShell print it), 32 hex digits
//! without hyphens, `urn:uuid:…`, in upper or lower case.
//!
//! The in-memory byte order of a Windows `GUID` is *mixed-endian*: `Data1` (u32), `Data2` and
//! `Data3` (u16) little-endian, then `Data4` as 8 raw bytes. [`Guid::to_windows_bytes`] and
//! [`Guid::from_windows_bytes`] produce and read exactly that layout; the string form is the same
//! on every platform.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why a string is not a GUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a GUID (expected e.g. 00000ac9-facb-11e6-bd58-64006a7986d3, optionally in braces)"
)]
pub struct ParseGuidError {
    input: String,
}

/// A 128-bit GUID, as Windows and Hyper-V use them to name partitions and services.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(Uuid);

impl Guid {
    /// The all-zero GUID.
    pub const NIL: Guid = Guid(Uuid::nil());

    /// Builds a GUID from the four fields of a Windows `GUID` structure.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Guid {
        Guid(Uuid::from_fields(data1, data2, data3, &data4))
    }

    /// The four fields of the Windows `GUID` structure: `Data1`, `Data2`, `Data3`, `Data4`.
    pub fn fields(&self) -> (u32, u16, u16, [u8; 8]) {
        let (d1, d2, d3, d4) = self.0.as_fields();
        (d1, d2, d3, *d4)
    }

    /// A random (version 4) GUID, for new partitions and services.
    pub fn new_random() -> Guid {
        Guid(Uuid::new_v4())
    }

    /// The 16 bytes in Windows memory order (fields little-endian), as in `SOCKADDR_HV`.
    pub fn to_windows_bytes(&self) -> [u8; 16] {
        self.0.to_bytes_le()
    }

    /// Reads 16 bytes in Windows memory order (fields little-endian).
    pub fn from_windows_bytes(bytes: [u8; 16]) -> Guid {
        Guid(Uuid::from_bytes_le(bytes))
    }

    /// The 16 bytes in RFC 4122 (big-endian, string) order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Builds a GUID from 16 bytes in RFC 4122 (big-endian, string) order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(Uuid::from_bytes(bytes))
    }

    /// Whether this is the all-zero GUID.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// Parses every common spelling of a GUID; see the module docs.
    pub fn parse(s: &str) -> Result<Guid, ParseGuidError> {
        Uuid::try_parse(s.trim())
            .map(Guid)
            .map_err(|_| ParseGuidError {
                input: s.to_owned(),
            })
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = ParseGuidError;
    fn from_str(s: &str) -> Result<Guid, ParseGuidError> {
        Guid::parse(s)
    }
}

impl From<Uuid> for Guid {
    fn from(u: Uuid) -> Guid {
        Guid(u)
    }
}

impl From<Guid> for Uuid {
    fn from(g: Guid) -> Uuid {
        g.0
    }
}

macro_rules! guid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Guid);

        impl $name {
            /// Parses every common spelling of a GUID.
            pub fn parse(s: &str) -> Result<$name, ParseGuidError> {
                Guid::parse(s).map($name)
            }
            /// The GUID inside.
            pub const fn guid(&self) -> Guid {
                self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = ParseGuidError;
            fn from_str(s: &str) -> Result<$name, ParseGuidError> {
                $name::parse(s)
            }
        }
        impl From<Guid> for $name {
            fn from(g: Guid) -> $name {
                $name(g)
            }
        }
        impl From<$name> for Guid {
            fn from(v: $name) -> Guid {
                v.0
            }
        }
        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                Guid::deserialize(d).map($name)
            }
        }
    };
}

/// Serialized as the canonical string.
#[cfg(feature = "serde")]
impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Deserialized from any spelling [`Guid::parse`] accepts.
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Guid::parse(&s).map_err(serde::de::Error::custom)
    }
}

guid_newtype!(
    /// The id of a partition: the root (the host), a VM, or a sandbox; or one of the well-known
    /// wildcard values ([`VmId::WILDCARD`], [`VmId::PARENT`], …).
    VmId
);
guid_newtype!(
    /// The id of a service. Services whose GUID follows the vsock template
    /// ([`ServiceId::VSOCK_TEMPLATE`]) carry a vsock port and can cross into Linux guests.
    ServiceId
);

impl VmId {
    /// `00000000-0000-0000-0000-000000000000`: bind to accept from any partition that may
    /// reach this one; connect from a child to reach the parent.
    pub const ZERO: VmId = VmId(Guid::NIL);
    /// Same value as [`VmId::ZERO`]: the name Windows uses for binding.
    pub const WILDCARD: VmId = VmId::ZERO;
    /// `ffffffff-ffff-ffff-ffff-ffffffffffff`: reserved; binding it is refused.
    pub const BROADCAST: VmId = VmId(Guid::from_fields(
        0xffff_ffff,
        0xffff,
        0xffff,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ));
    /// `90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd`: bind to accept from child partitions only.
    pub const CHILDREN: VmId = VmId(Guid::from_fields(
        0x90db_8b89,
        0x0d35,
        0x4f79,
        [0x8c, 0xe9, 0x49, 0xea, 0x0a, 0xc8, 0xb7, 0xcd],
    ));
    /// `e0e16197-dd56-4a10-9195-5ee7a155a838`: the partition itself.
    pub const LOOPBACK: VmId = VmId(Guid::from_fields(
        0xe0e1_6197,
        0xdd56,
        0x4a10,
        [0x91, 0x95, 0x5e, 0xe7, 0xa1, 0x55, 0xa8, 0x38],
    ));
    /// `a42e7cda-d03f-480c-9cc2-a4de20abb878`: the parent partition.
    pub const PARENT: VmId = VmId(Guid::from_fields(
        0xa42e_7cda,
        0xd03f,
        0x480c,
        [0x9c, 0xc2, 0xa4, 0xde, 0x20, 0xab, 0xb8, 0x78],
    ));
    /// `36bd0c5c-7276-4223-88ba-7d03b654c568`: a silo's host on Windows. hvsock has no silos
    /// distinct from sandbox partitions (a sandbox reaches its host through [`VmId::PARENT`]), so
    /// hvsockd refuses to connect to or bind it.
    pub const SILOHOST: VmId = VmId(Guid::from_fields(
        0x36bd_0c5c,
        0x7276,
        0x4223,
        [0x88, 0xba, 0x7d, 0x03, 0xb6, 0x54, 0xc5, 0x68],
    ));

    /// The well-known values with their lower-case names, as accepted in `VM:SERVICE` strings.
    pub const WELL_KNOWN: [(&'static str, VmId); 7] = [
        ("wildcard", VmId::WILDCARD),
        ("zero", VmId::ZERO),
        ("children", VmId::CHILDREN),
        ("loopback", VmId::LOOPBACK),
        ("parent", VmId::PARENT),
        ("broadcast", VmId::BROADCAST),
        ("silohost", VmId::SILOHOST),
    ];

    /// The well-known value a keyword names (`wildcard`, `zero`, `children`, `loopback`,
    /// `parent`, `broadcast`, `silohost`; case-insensitive).
    pub fn from_keyword(word: &str) -> Option<VmId> {
        VmId::WELL_KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|&(_, id)| id)
    }

    /// The keyword of a well-known value (`wildcard` for ZERO), if this is one.
    pub fn keyword(&self) -> Option<&'static str> {
        VmId::WELL_KNOWN
            .iter()
            .find(|(_, id)| id == self)
            .map(|&(name, _)| name)
    }

    /// Whether this is one of the well-known values rather than a partition's own id.
    pub fn is_well_known(&self) -> bool {
        self.keyword().is_some()
    }
}

impl ServiceId {
    /// `00000000-facb-11e6-bd58-64006a7986d3`: the vsock template. A service GUID equal to it
    /// in every field but `Data1` stands for the vsock port `Data1`.
    pub const VSOCK_TEMPLATE: ServiceId = ServiceId::from_vsock_port(0);

    /// The template service GUID of a vsock port: `00000ac9-facb-11e6-bd58-64006a7986d3` for 2761.
    pub const fn from_vsock_port(port: u32) -> ServiceId {
        ServiceId(Guid::from_fields(
            port,
            0xfacb,
            0x11e6,
            [0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3],
        ))
    }

    /// The vsock port this service stands for, if it follows the vsock template.
    pub fn vsock_port(&self) -> Option<u32> {
        let (d1, d2, d3, d4) = self.0.fields();
        let (_, t2, t3, t4) = ServiceId::VSOCK_TEMPLATE.0.fields();
        (d2 == t2 && d3 == t3 && d4 == t4).then_some(d1)
    }

    /// A new random service id (not a template GUID).
    pub fn new_random() -> ServiceId {
        ServiceId(Guid::new_random())
    }
}

/// Windows' names for the well-known VmIds (`HV_GUID_*` in `hvsocket.h`).
pub const HV_GUID_ZERO: VmId = VmId::ZERO;
/// See [`VmId::WILDCARD`].
pub const HV_GUID_WILDCARD: VmId = VmId::WILDCARD;
/// See [`VmId::BROADCAST`].
pub const HV_GUID_BROADCAST: VmId = VmId::BROADCAST;
/// See [`VmId::CHILDREN`].
pub const HV_GUID_CHILDREN: VmId = VmId::CHILDREN;
/// See [`VmId::LOOPBACK`].
pub const HV_GUID_LOOPBACK: VmId = VmId::LOOPBACK;
/// See [`VmId::PARENT`].
pub const HV_GUID_PARENT: VmId = VmId::PARENT;
/// See [`VmId::SILOHOST`].
pub const HV_GUID_SILOHOST: VmId = VmId::SILOHOST;
/// See [`ServiceId::VSOCK_TEMPLATE`].
pub const HV_GUID_VSOCK_TEMPLATE: ServiceId = ServiceId::VSOCK_TEMPLATE;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_common_spelling() {
        let canonical = "00000ac9-facb-11e6-bd58-64006a7986d3";
        for spelling in [
            "00000ac9-facb-11e6-bd58-64006a7986d3",
            "00000AC9-FACB-11E6-BD58-64006A7986D3",
            "{00000ac9-facb-11e6-bd58-64006a7986d3}",
            "{00000AC9-FACB-11E6-BD58-64006A7986D3}",
            "00000ac9facb11e6bd5864006a7986d3",
            "urn:uuid:00000ac9-facb-11e6-bd58-64006a7986d3",
            "  00000ac9-facb-11e6-bd58-64006a7986d3\n",
        ] {
            let g = Guid::parse(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert_eq!(g.to_string(), canonical, "{spelling}");
        }
    }

    #[test]
    fn rejects_non_guids_with_the_input_in_the_message() {
        for bad in [
            "",
            "hello",
            "00000ac9-facb-11e6-bd58-64006a7986d",
            "00000ac9-facb-11e6-bd58-64006a7986d3a",
            "g0000ac9-facb-11e6-bd58-64006a7986d3",
            "{00000ac9-facb-11e6-bd58-64006a7986d3",
        ] {
            let err = Guid::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn well_known_values_match_the_design() {
        let table = [
            (VmId::ZERO, "00000000-0000-0000-0000-000000000000"),
            (VmId::WILDCARD, "00000000-0000-0000-0000-000000000000"),
            (VmId::BROADCAST, "ffffffff-ffff-ffff-ffff-ffffffffffff"),
            (VmId::CHILDREN, "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd"),
            (VmId::LOOPBACK, "e0e16197-dd56-4a10-9195-5ee7a155a838"),
            (VmId::PARENT, "a42e7cda-d03f-480c-9cc2-a4de20abb878"),
            (VmId::SILOHOST, "36bd0c5c-7276-4223-88ba-7d03b654c568"),
        ];
        for (id, text) in table {
            assert_eq!(id.to_string(), text);
            assert_eq!(VmId::parse(text), Ok(id));
        }
        assert_eq!(
            ServiceId::VSOCK_TEMPLATE.to_string(),
            "00000000-facb-11e6-bd58-64006a7986d3"
        );
    }

    #[test]
    fn keywords_name_the_well_known_values() {
        for (word, id) in VmId::WELL_KNOWN {
            assert_eq!(VmId::from_keyword(word), Some(id));
            assert_eq!(VmId::from_keyword(&word.to_uppercase()), Some(id));
        }
        assert_eq!(VmId::ZERO.keyword(), Some("wildcard"));
        assert_eq!(VmId::PARENT.keyword(), Some("parent"));
        assert_eq!(VmId::from_keyword("host"), None);
        assert!(!VmId(Guid::new_random()).is_well_known());
    }

    #[test]
    fn vsock_template_round_trips_ports() {
        assert_eq!(
            ServiceId::from_vsock_port(2761).to_string(),
            "00000ac9-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(
            ServiceId::parse("00000ac9-facb-11e6-bd58-64006a7986d3")
                .ok()
                .and_then(|s| s.vsock_port()),
            Some(2761)
        );
        assert_eq!(ServiceId::VSOCK_TEMPLATE.vsock_port(), Some(0));
        assert_eq!(
            ServiceId::parse("00000ac9-facb-11e6-bd58-64006a7986d4")
                .ok()
                .and_then(|s| s.vsock_port()),
            None
        );
    }

    #[test]
    fn windows_byte_order_is_little_endian_per_field() {
        let g = Guid::parse("00000ac9-facb-11e6-bd58-64006a7986d3").unwrap_or_default();
        assert_eq!(
            g.to_windows_bytes(),
            [
                0xc9, 0x0a, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11, 0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79,
                0x86, 0xd3
            ]
        );
    }

    #[test]
    fn random_guids_are_version_4_and_distinct() {
        let a = Guid::new_random();
        let b = Guid::new_random();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[6] >> 4, 4);
        assert_eq!(a.as_bytes()[8] >> 6, 0b10);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 16]>()) {
            let g = Guid::from_bytes(bytes);
            prop_assert_eq!(Guid::parse(&g.to_string()), Ok(g));
            prop_assert_eq!(Guid::parse(&format!("{{{}}}", g.to_string().to_uppercase())), Ok(g));
        }

        #[test]
        fn windows_bytes_round_trip(bytes in any::<[u8; 16]>()) {
            let g = Guid::from_windows_bytes(bytes);
            prop_assert_eq!(g.to_windows_bytes(), bytes);
        }

        #[test]
        fn fields_round_trip(d1 in any::<u32>(), d2 in any::<u16>(), d3 in any::<u16>(), d4 in any::<[u8; 8]>()) {
            let g = Guid::from_fields(d1, d2, d3, d4);
            prop_assert_eq!(g.fields(), (d1, d2, d3, d4));
        }

        #[test]
        fn port_round_trip(port in any::<u32>()) {
            prop_assert_eq!(ServiceId::from_vsock_port(port).vsock_port(), Some(port));
        }
    }
}
