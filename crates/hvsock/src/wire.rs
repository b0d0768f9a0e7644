//! Conversions between the crate's addresses and `hvsock-proto`'s wire form.

use hvsock_proto::WireAddr;

use crate::addr::SockAddrHv;
use crate::guid::{Guid, ServiceId, VmId};

impl From<SockAddrHv> for WireAddr {
    fn from(addr: SockAddrHv) -> WireAddr {
        WireAddr {
            vm: *addr.vm_id.0.as_bytes(),
            service: *addr.service_id.0.as_bytes(),
        }
    }
}

impl From<WireAddr> for SockAddrHv {
    fn from(wire: WireAddr) -> SockAddrHv {
        SockAddrHv {
            vm_id: VmId(Guid::from_bytes(wire.vm)),
            service_id: ServiceId(Guid::from_bytes(wire.service)),
        }
    }
}
