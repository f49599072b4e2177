//! IPv4 prefix arithmetic shared by the compiler and the compiled evaluator. Prefixes are
//! `(prefix_len, network)` with the network as a host-order `u32`, masked.

/// `addr` with every bit after the first `len` cleared.
pub fn mask(addr: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        // `u32 << 32` would overflow; lengths above 32 never reach here.
        l => addr & (u32::MAX << (32 - u32::from(l.min(32)))),
    }
}

/// Whether prefix `outer` contains prefix (or host, with len 32) `inner`.
pub fn contains(outer: (u8, u32), inner: (u8, u32)) -> bool {
    outer.0 <= inner.0 && mask(inner.1, outer.0) == outer.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_and_contains() {
        assert_eq!(mask(0x0a01_0203, 0), 0);
        assert_eq!(mask(0x0a01_0203, 8), 0x0a00_0000);
        assert_eq!(mask(0x0a01_0203, 31), 0x0a01_0202);
        assert_eq!(mask(0x0a01_0203, 32), 0x0a01_0203);
        assert!(contains((8, 0x0a00_0000), (32, 0x0aff_ffff)));
        assert!(contains((0, 0), (32, 0xffff_ffff)));
        assert!(!contains((8, 0x0a00_0000), (32, 0x0b00_0000)));
        assert!(!contains((24, 0x0a00_0000), (16, 0x0a00_0000)));
    }
}
