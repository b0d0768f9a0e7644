//! Packets in and out of the virtqueues' descriptor chains.
//!
//! The guest's TX queue holds packets it sends (a device-readable header, then the payload in
//! the same or the next descriptor); its RX queue holds empty device-writable buffers the device
//! fills. virtio-vsock's `VsockPacket` walks a chain and checks the descriptors' direction and
//! sizes against guest memory; the header's bytes are then parsed by [`crate::packet`], and the
//! payload is copied out (at most [`MAX_PAYLOAD`] bytes) before the muxer sees it. Any chain
//! the guest got wrong is an error here, never a panic (fuzzed:
//! `fuzz/fuzz_targets/vsock_chain.rs`); the caller returns the chain to the guest unused.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::WithBitmapSlice;
use vm_memory::{GuestMemory, GuestMemoryRegion};

use crate::muxer::Muxer;
use crate::packet::{HEADER_LEN, Header, MAX_PAYLOAD};

/// Why a descriptor chain was not used.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// virtio-vsock refused the chain (direction, sizes, addresses).
    #[error("bad descriptor chain: {0:?}")]
    Chain(virtio_vsock::packet::Error),
    /// The payload's descriptor is not as long as the header says.
    #[error("the header says {header} payload bytes, the descriptor holds {got}")]
    Payload {
        /// The header's `len`.
        header: u32,
        /// The descriptor's room.
        got: usize,
    },
}

/// Reads one packet the guest sent from `chain` into `payload` (cleared first): its header.
pub fn read_tx<'a, M, T>(
    mem: &'a M,
    chain: &mut DescriptorChain<T>,
    payload: &mut Vec<u8>,
) -> Result<Header, ChainError>
where
    M: GuestMemory,
    <<M as GuestMemory>::R as GuestMemoryRegion>::B: WithBitmapSlice<'a>,
    T: Deref,
    T::Target: GuestMemory,
{
    payload.clear();
    let pkt =
        VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PAYLOAD).map_err(ChainError::Chain)?;
    let mut raw = [0u8; HEADER_LEN];
    pkt.header_slice().copy_to(&mut raw[..]);
    let header = Header::parse(&raw).map_err(|_| ChainError::Payload { header: 0, got: 0 })?;
    if let Some(data) = pkt.data_slice() {
        let len = (header.len as usize).min(MAX_PAYLOAD as usize);
        if data.len() < len {
            return Err(ChainError::Payload {
                header: header.len,
                got: data.len(),
            });
        }
        payload.resize(len, 0);
        let got = data.copy_to(&mut payload[..]);
        payload.truncate(got);
    }
    Ok(header)
}

/// Fills one receive buffer `chain` with the muxer's next packet, reading its payload through
/// `scratch` (at least [`MAX_PAYLOAD`] bytes): the bytes written (the used length), `Ok(None)`
/// if the muxer had nothing to send (the chain is untouched; put it back).
pub fn fill_rx<'a, M, T>(
    mem: &'a M,
    chain: &mut DescriptorChain<T>,
    muxer: &mut Muxer,
    scratch: &mut [u8],
) -> Result<Option<u32>, ChainError>
where
    M: GuestMemory,
    <<M as GuestMemory>::R as GuestMemoryRegion>::B: WithBitmapSlice<'a>,
    T: Deref,
    T::Target: GuestMemory,
{
    let mut pkt =
        VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PAYLOAD).map_err(ChainError::Chain)?;
    let room = pkt
        .data_slice()
        .map(|d| d.len())
        .unwrap_or(0)
        .min(scratch.len())
        .min(MAX_PAYLOAD as usize);
    let Some((header, n)) = muxer.next_rx(&mut scratch[..room]) else {
        return Ok(None);
    };
    pkt.set_header_from_raw(&header.encode())
        .map_err(ChainError::Chain)?;
    if n > 0 {
        if let Some(data) = pkt.data_slice() {
            data.copy_from(&scratch[..n]);
        }
    }
    Ok(Some((HEADER_LEN + n) as u32))
}

#[cfg(test)]
mod tests;
