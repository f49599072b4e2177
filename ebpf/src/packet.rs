//! Bounds-checked packet access. Every unsafe packet read goes through `ptr_at`.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use portcullis_common::DropReason;

pub const ETH_LEN: usize = 14;
pub const IP_OFF: usize = ETH_LEN;
pub const IP_LEN: usize = 20;
/// L4 offset: IPv4 options are refused, so the L4 header is always here.
pub const L4_OFF: usize = ETH_LEN + IP_LEN;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The first 8 bytes of TCP, UDP and ICMP share this shape where it matters to us:
/// TCP/UDP ports at 0 and 2; ICMP type, code, checksum at 0..4 and the echo id at 4.
#[repr(C)]
pub struct L4Ports {
    pub sport: u16,
    pub dport: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub csum: u16,
    pub id: u16,
    pub seq: u16,
}

/// Offsets of the checksum field inside the L4 header.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(DropReason::Malformed);
    }
    Ok((start + off) as *mut T)
}

/// Read a big-endian u16 at a bounds-checked pointer.
#[inline(always)]
pub fn be16(p: *const u16) -> u16 {
    u16::from_be(unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn set_be16(p: *mut u16, v: u16) {
    unsafe { p.write_unaligned(v.to_be()) }
}

/// What the programs need to know about an IPv4 packet after parsing.
pub struct Parsed {
    pub ip: *mut Ipv4Hdr,
    pub proto: u8,
    /// IPv4 total length (bytes from the IP header on).
    pub tot_len: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
}

/// Ethernet + IPv4 header checks shared by both programs, in the documented order.
#[inline(always)]
pub fn parse_ipv4(ctx: &XdpContext) -> Result<Parsed, DropReason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let proto = be16(unsafe { &raw const (*eth).proto });
    if proto == ETH_P_IPV6 {
        return Err(DropReason::Ipv6Unsupported);
    }
    if proto != ETH_P_IP {
        return Err(DropReason::NotIp);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, IP_OFF)?;
    let vihl = unsafe { (*ip).vihl };
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return Err(DropReason::Malformed);
    }
    if vihl & 0xf > 5 {
        return Err(DropReason::IpOptions);
    }
    let tot_len = be16(unsafe { &raw const (*ip).tot_len });
    let avail = ctx.data_end() - ctx.data() - ETH_LEN;
    if (tot_len as usize) < IP_LEN || tot_len as usize > avail {
        return Err(DropReason::Malformed);
    }
    // MF flag or a non-zero offset: a fragment.
    if be16(unsafe { &raw const (*ip).frag }) & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    Ok(Parsed {
        ip,
        proto: unsafe { (*ip).proto },
        tot_len,
        src: unsafe { (*ip).src },
        dst: unsafe { (*ip).dst },
        ttl: unsafe { (*ip).ttl },
    })
}

/// Bytes of L4 header the protocol needs, checked against the IPv4 total length.
#[inline(always)]
pub fn l4_min_len(proto: u8) -> usize {
    match proto {
        portcullis_common::PROTO_TCP => 20,
        portcullis_common::PROTO_UDP | portcullis_common::PROTO_ICMP => 8,
        _ => 0,
    }
}

/// Decrement TTL and patch the IPv4 header checksum (TTL is the high byte of its word).
#[inline(always)]
pub fn dec_ttl(ip: *mut Ipv4Hdr) {
    unsafe {
        let ttl = (*ip).ttl;
        let old = u16::from_be_bytes([ttl, (*ip).proto]);
        let new = u16::from_be_bytes([ttl - 1, (*ip).proto]);
        (*ip).ttl = ttl - 1;
        let c = crate::csum::replace2(be16(&raw const (*ip).csum), old, new);
        set_be16(&raw mut (*ip).csum, c);
    }
}
