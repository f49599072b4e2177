//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//! XDP has no L4 checksum helper, and recomputing over the payload would cost per byte.
//! Values are the big-endian 16-bit words as read from the packet.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(hc: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!hc) + u32::from(!old) + u32::from(new))
}

/// Checksum after a 4-byte field (an IPv4 address) changed.
#[inline(always)]
pub fn replace4(hc: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let s = u32::from(!hc)
        + u32::from(!u16::from_be_bytes([old[0], old[1]]))
        + u32::from(!u16::from_be_bytes([old[2], old[3]]))
        + u32::from(u16::from_be_bytes([new[0], new[1]]))
        + u32::from(u16::from_be_bytes([new[2], new[3]]));
    !fold(s)
}

/// UDP: a zero checksum means "none" and must stay zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub fn udp_fixup(old: u16, new: u16) -> u16 {
    if old == 0 {
        0
    } else if new == 0 {
        0xffff
    } else {
        new
    }
}
