//! Map keys built from packet addresses. Its own module so that conntrack, policy and NAT
//! all build keys the same way without importing one another.
use portcullis_common::{ClientKey, FlowKey, FAMILY_V4};

#[inline(always)]
pub fn v4(a: [u8; 4]) -> [u8; 16] {
    portcullis_common::v4_addr(a)
}

#[inline(always)]
pub fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// The key a reply of flow `fwd` arrives with when its source was translated to
/// `nat_addr:nat_port` (the key of its `nat_rev` entry).
#[inline(always)]
pub fn reply_key(fwd: &FlowKey, nat_addr: [u8; 4], nat_port: u16) -> FlowKey {
    FlowKey {
        src: fwd.dst,
        dst: nat_addr,
        sport: fwd.dport,
        dport: nat_port,
        proto: fwd.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn client_key(a: [u8; 4]) -> ClientKey {
    ClientKey {
        addr: v4(a),
        family: FAMILY_V4,
        _pad: [0; 3],
    }
}
