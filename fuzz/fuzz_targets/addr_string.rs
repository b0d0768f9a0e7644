//! `VM:SERVICE` strings and GUIDs as a user, a file or a guest may give them: parsing never
//! panics, and resolved addresses print and parse back to themselves.
#![no_main]

use hvsock::{AddrSpec, Guid, SockAddrHv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = Guid::parse(s) {
        assert_eq!(Guid::parse(&g.to_string()), Ok(g));
    }
    if let Ok(spec) = AddrSpec::parse(s) {
        if let Ok(addr) = spec.to_addr() {
            assert_eq!(addr.to_string().parse::<SockAddrHv>(), Ok(addr));
        }
    }
    let _ = hvsock::addr::check_service_name(s);
    let _ = hvsock::addr::check_partition_name(s);
});
