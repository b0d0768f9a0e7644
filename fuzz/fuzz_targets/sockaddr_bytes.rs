//! `SockAddrHv::from_bytes` (a Windows `SOCKADDR_HV`): never panics, and round-trips.
#![no_main]

use hvsock::SockAddrHv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(addr) = SockAddrHv::from_bytes(data) {
        assert_eq!(&addr.to_bytes()[..], data);
    }
});
