//! Descriptor chains as a guest writes them (virtio-queue's mock split queue over real guest
//! memory): good TX and RX chains, and the ways a guest gets them wrong.

#![allow(clippy::unwrap_used)]

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::muxer::Config;
use crate::packet::{HOST_CID, Op, TYPE_STREAM};

const W: u16 = VRING_DESC_F_WRITE as u16;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn request(len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 5000,
        len,
        type_: TYPE_STREAM,
        op: if len == 0 { Op::Request } else { Op::Rw }.to_u16(),
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    }
}

#[test]
fn a_tx_packet_in_two_descriptors_or_one() {
    let m = mem();
    m.write_slice(&request(5).encode(), GuestAddress(0x10_0000))
        .unwrap();
    m.write_slice(b"hello", GuestAddress(0x11_0000)).unwrap();
    let q = MockSplitQueue::new(&m, 16);
    let mut chain = q
        .build_desc_chain(&[desc(0x10_0000, 44, 0), desc(0x11_0000, 5, 0)])
        .unwrap();
    let mut payload = Vec::new();
    let h = read_tx(&m, &mut chain, &mut payload).unwrap();
    assert_eq!((h, payload.as_slice()), (request(5), &b"hello"[..]));

    // Linux 6.2+: header and payload in one descriptor.
    m.write_slice(b"world", GuestAddress(0x10_0000 + 44))
        .unwrap();
    let q = MockSplitQueue::new(&m, 16);
    let mut chain = q.build_desc_chain(&[desc(0x10_0000, 49, 0)]).unwrap();
    let h = read_tx(&m, &mut chain, &mut payload).unwrap();
    assert_eq!((h, payload.as_slice()), (request(5), &b"world"[..]));
}

#[test]
fn bad_tx_chains_are_errors() {
    let m = mem();
    m.write_slice(&request(100).encode(), GuestAddress(0x10_0000))
        .unwrap();
    let mut payload = Vec::new();
    let cases: Vec<Vec<RawDescriptor>> = vec![
        // A header descriptor the device may write: not a TX buffer.
        vec![desc(0x10_0000, 44, W)],
        // Shorter than a header.
        vec![desc(0x10_0000, 20, 0)],
        // The header says 100 payload bytes; the data descriptor holds 10.
        vec![desc(0x10_0000, 44, 0), desc(0x11_0000, 10, 0)],
        // Outside guest memory.
        vec![desc(0x30_0000, 44, 0)],
    ];
    for descs in cases {
        let q = MockSplitQueue::new(&m, 16);
        let mut chain = q.build_desc_chain(&descs).unwrap();
        assert!(read_tx(&m, &mut chain, &mut payload).is_err(), "{descs:?}");
    }
    // A chain that loops on itself ends (the descriptor table's length bounds it).
    let q = MockSplitQueue::new(&m, 16);
    let looping = RawDescriptor::from(Descriptor::new(0x10_0000, 44, VRING_DESC_F_NEXT as u16, 0));
    let mut chain = q.build_multiple_desc_chains(&[looping]).unwrap();
    let _ = read_tx(&m, &mut chain, &mut payload);
}

#[test]
fn an_rx_buffer_gets_the_next_packet_or_stays_untouched() {
    let m = mem();
    let mut muxer = Muxer::new(Config::default()).unwrap();
    let mut scratch = vec![0; MAX_PAYLOAD as usize];
    let q = MockSplitQueue::new(&m, 16);
    let mut chain = q
        .build_desc_chain(&[desc(0x10_0000, 44, W), desc(0x11_0000, 4096, W)])
        .unwrap();
    assert_eq!(
        fill_rx(&m, &mut chain, &mut muxer, &mut scratch).unwrap(),
        None
    );
    // hvsockd is away: the guest's connect is answered with RST, in the next buffer.
    muxer.guest_packet(&request(0), &[]);
    let q = MockSplitQueue::new(&m, 16);
    let mut chain = q
        .build_desc_chain(&[desc(0x10_0000, 44, W), desc(0x11_0000, 4096, W)])
        .unwrap();
    assert_eq!(
        fill_rx(&m, &mut chain, &mut muxer, &mut scratch).unwrap(),
        Some(44)
    );
    let mut raw = [0u8; 44];
    m.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
    let h = Header::parse(&raw).unwrap();
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (Op::Rst.to_u16(), 5000, 1234, 3)
    );
    // A read-only RX buffer is refused.
    let q = MockSplitQueue::new(&m, 16);
    let mut chain = q.build_desc_chain(&[desc(0x10_0000, 44, 0)]).unwrap();
    assert!(fill_rx(&m, &mut chain, &mut muxer, &mut scratch).is_err());
}
