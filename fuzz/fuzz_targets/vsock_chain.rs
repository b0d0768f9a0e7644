//! hvsock-vhost's descriptor-chain handling on a guest-written descriptor table: arbitrary
//! addresses, lengths, flags (WRITE, NEXT, INDIRECT) and next indices (loops included), over
//! guest memory whose bytes come from the input. Reading a TX chain and filling an RX chain
//! never panic; what a TX chain yields goes through the muxer, which never panics either.
#![no_main]

use hvsock_vhost::muxer::{Config, Muxer};
use hvsock_vhost::packet::MAX_PAYLOAD;
use hvsock_vhost::queues::{fill_rx, read_tx};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 0x20_0000;
const DATA: u64 = 0x10_0000;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(head % 8) + 1;
    if rest.len() < n * 8 {
        return;
    }
    let (table, bytes) = rest.split_at(n * 8);
    let descs: Vec<RawDescriptor> = table
        .chunks(8)
        .map(|d| {
            let raw_addr = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            // Mostly inside the data area, sometimes anywhere.
            let addr = if d[7] & 0x80 == 0 {
                DATA + u64::from(raw_addr % 0x10_0000)
            } else {
                u64::from(raw_addr) << (d[7] & 31)
            };
            let len = u32::from(u16::from_le_bytes([d[4], d[5]])) << (d[7] & 3);
            let flags = u16::from(d[6] & 0x7);
            let next = u16::from(d[7] >> 4) % 16;
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    let queue = MockSplitQueue::new(&mem, 16);
    let Ok(mut chain) = queue.build_multiple_desc_chains(&descs) else {
        return;
    };
    let take = bytes.len().min(0x10_0000);
    let _ = mem.write_slice(&bytes[..take], GuestAddress(DATA));
    let Ok(mut muxer) = Muxer::new(Config::default()) else {
        return;
    };
    muxer.hvsockd_up();
    if head & 0x80 == 0 {
        let mut payload = Vec::new();
        if let Ok(header) = read_tx(&mem, &mut chain, &mut payload) {
            assert!(payload.len() <= MAX_PAYLOAD as usize);
            muxer.guest_packet(&header, &payload);
        }
    } else {
        // Something to send: an RST for a stray packet.
        let stray = hvsock_vhost::packet::Header {
            dst_cid: 2,
            type_: 1,
            op: 5,
            ..Default::default()
        };
        muxer.guest_packet(&stray, &[]);
        let mut scratch = vec![0; MAX_PAYLOAD as usize];
        if let Ok(Some(used)) = fill_rx(&mem, &mut chain, &mut muxer, &mut scratch) {
            assert!(used as usize >= hvsock_vhost::packet::HEADER_LEN);
        }
    }
});
