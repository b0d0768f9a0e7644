//! hvsock-vhost's virtio-vsock packet parser on arbitrary bytes: never panics, and a packet it
//! accepts is its header's encoding followed by its payload.
#![no_main]

use hvsock_vhost::packet::{HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::parse(data) {
        assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
    }
    if let Ok((header, _op, payload)) = Header::parse_packet(data) {
        assert_eq!(payload.len(), header.len as usize);
        assert_eq!(&data[HEADER_LEN..], payload);
    }
});
