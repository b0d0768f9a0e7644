//! Test data: deterministic byte patterns, bytes as text, and well-known values.

/// The vsock-template service GUID of port 2761.
pub const PORT_2761: &str = "00000ac9-facb-11e6-bd58-64006a7986d3";

/// `len` deterministic bytes (xorshift64 from `seed`) that look random, so that a byte lost,
/// repeated or moved in a bulk transfer shows when it is compared with the original.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
