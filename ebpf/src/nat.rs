//! Address translation, both ways: the SNAT port claim for a new flow, the source rewrite
//! of client → network packets, and the destination rewrite of replies (and of the packet
//! an ICMP error quotes). Also the rule that a kept port never shadows a host socket.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::XdpContext,
    EbpfContext,
};
use portcullis_common::{
    CtEntry, DropReason, Event, FlowKey, NatRev, Target, PAT_ATTEMPTS, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum,
    packet::{
        be16, ptr_at, set_be16, IcmpHdr, Ipv4Hdr, L4Ports, Parsed, L4_OFF, TCP_CSUM_OFF,
        UDP_CSUM_OFF,
    },
    stats, NAT_REV,
};

const EEXIST: i32 = 17;

/// True when a socket of the gateway host owns `rev` (a packet as it arrives from the
/// network: source = server, destination = SNAT address and port). Keeping a client's port
/// on such a tuple would steal the host's own traffic (directory, DNS, hook), so the
/// forward path translates instead and the reverse path leaves the packet to the host.
#[inline(always)]
pub fn host_socket_owns(ctx: &XdpContext, rev: &FlowKey) -> bool {
    if rev.proto != PROTO_TCP && rev.proto != PROTO_UDP {
        return false;
    }
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = u32::from_ne_bytes(rev.src);
        t.daddr = u32::from_ne_bytes(rev.dst);
        t.sport = rev.sport.to_be();
        t.dport = rev.dport.to_be();
    }
    let size = core::mem::size_of::<u32>() as u32 * 3;
    // BPF_F_CURRENT_NETNS: the kernel treats a negative s32 as "this namespace".
    let netns = u64::MAX;
    let sk = unsafe {
        if rev.proto == PROTO_TCP {
            bpf_sk_lookup_tcp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// Claim the reply key with BPF_NOEXIST, storing the flow's reply half: the kernel
/// arbitrates between CPUs, so a live mapping is never handed out twice.
#[inline(always)]
pub fn claim(rev: &FlowKey, half: &NatRev) -> Result<bool, DropReason> {
    match NAT_REV.insert(rev, *half, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        Err(_) => Err(DropReason::ConntrackFull),
    }
}

/// Claim a reply key for the flow of `half` towards target `t`: the client's own port when
/// neither another flow nor a host socket holds it, otherwise a free port of the PAT range
/// (bounded tries). `rev` arrives as the reply key with the client's port; on success it
/// holds the claimed key.
#[inline(always)]
pub fn claim_port(
    ctx: &XdpContext,
    rev: &mut FlowKey,
    half: &NatRev,
    t: &Target,
) -> Result<(), DropReason> {
    if !host_socket_owns(ctx, rev) && claim(rev, half)? {
        stats::event(Event::PortKept);
        return Ok(());
    }
    let span = u32::from(t.port_max.saturating_sub(t.port_min)) + 1;
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let mut i = 0;
    while i < PAT_ATTEMPTS {
        rev.dport = t.port_min + ((start + i) % span) as u16;
        if claim(rev, half)? {
            stats::event(Event::PortTranslated);
            return Ok(());
        }
        i += 1;
    }
    Err(DropReason::PortsExhausted)
}

/// Rewrite source address and port to the flow's translation, patching checksums.
#[inline(always)]
pub fn snat(ctx: &XdpContext, p: &Parsed, key: &FlowKey, e: &CtEntry) -> Result<(), DropReason> {
    let new_src = e.nat_addr;
    let ip = p.ip;
    unsafe {
        let c = csum::replace4(be16(&raw const (*ip).csum), p.src, new_src);
        set_be16(&raw mut (*ip).csum, c);
        (*ip).src = new_src;
    }
    rewrite_port(ctx, key.proto, p.src, new_src, key.sport, e.nat_port, true)
}

/// Rewrite a reply's destination back to the client's address and port.
#[inline(always)]
pub fn dnat(ctx: &XdpContext, p: &Parsed, key: &FlowKey, fwd: &FlowKey) -> Result<(), DropReason> {
    let client = fwd.src;
    let ip = p.ip;
    unsafe {
        let c = csum::replace4(be16(&raw const (*ip).csum), p.dst, client);
        set_be16(&raw mut (*ip).csum, c);
        (*ip).dst = client;
    }
    rewrite_port(ctx, p.proto, p.dst, client, key.dport, fwd.sport, false)
}

/// The L4 part of a translation: the pseudo-header address in the TCP/UDP checksum and,
/// when it changed, the port (source for SNAT, destination for reverse NAT) or the ICMP
/// echo identifier.
#[inline(always)]
fn rewrite_port(
    ctx: &XdpContext,
    proto: u8,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    old_port: u16,
    new_port: u16,
    source: bool,
) -> Result<(), DropReason> {
    let changed = old_port != new_port;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let off = if proto == PROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            };
            let cs: *mut u16 = ptr_at(ctx, L4_OFF + off)?;
            let old = be16(cs);
            let mut c = csum::replace4(old, old_addr, new_addr);
            if changed {
                c = csum::replace2(c, old_port, new_port);
                let ports: *mut L4Ports = ptr_at(ctx, L4_OFF)?;
                if source {
                    set_be16(unsafe { &raw mut (*ports).sport }, new_port);
                } else {
                    set_be16(unsafe { &raw mut (*ports).dport }, new_port);
                }
            }
            if proto == PROTO_UDP {
                c = csum::udp_fixup(old, c);
            }
            set_be16(cs, c);
        }
        _ => {
            if changed {
                let icmp: *mut IcmpHdr = ptr_at(ctx, L4_OFF)?;
                unsafe {
                    let c = csum::replace2(be16(&raw const (*icmp).csum), old_port, new_port);
                    set_be16(&raw mut (*icmp).csum, c);
                    set_be16(&raw mut (*icmp).id, new_port);
                }
            }
        }
    }
    Ok(())
}

/// Offsets inside an ICMP error: the embedded IPv4 header and its first 8 L4 bytes.
pub const INNER_IP: usize = L4_OFF + 8;
pub const INNER_L4: usize = INNER_IP + crate::packet::IP_LEN;

/// Reverse NAT of an ICMP error about flow `fwd`: the outer destination, the quoted
/// packet's source address and port (identifier), and every checksum covering them.
#[inline(always)]
pub fn icmp_error_back(
    ctx: &XdpContext,
    p: &Parsed,
    inner: *mut Ipv4Hdr,
    iproto: u8,
    isrc: [u8; 4],
    fwd: &FlowKey,
) -> Result<(), DropReason> {
    let client = fwd.src;
    let outer_icmp: *mut IcmpHdr = ptr_at(ctx, L4_OFF)?;
    let mut icsum = be16(unsafe { &raw const (*outer_icmp).csum });
    unsafe {
        // Outer destination.
        let c = csum::replace4(be16(&raw const (*p.ip).csum), p.dst, client);
        set_be16(&raw mut (*p.ip).csum, c);
        (*p.ip).dst = client;
        // Inner source address, its header checksum, and the ICMP checksum over both.
        let old_ic = be16(&raw const (*inner).csum);
        let new_ic = csum::replace4(old_ic, isrc, client);
        (*inner).src = client;
        set_be16(&raw mut (*inner).csum, new_ic);
        icsum = csum::replace4(icsum, isrc, client);
        icsum = csum::replace2(icsum, old_ic, new_ic);
    }
    let inner_l4w: *mut [u16; 4] = ptr_at(ctx, INNER_L4)?;
    match iproto {
        PROTO_TCP | PROTO_UDP => unsafe {
            // Inner source port; the inner UDP checksum (in the 8 quoted bytes) too.
            let old_port = u16::from_be((*inner_l4w)[0]);
            (*inner_l4w)[0] = fwd.sport.to_be();
            icsum = csum::replace2(icsum, old_port, fwd.sport);
            // The inner TCP checksum, when the quote reaches it (Linux quotes up to 576
            // bytes): it covers the pseudo-header address and the port just restored.
            if iproto == PROTO_TCP {
                if let Ok(tc) = ptr_at::<u16>(ctx, INNER_L4 + TCP_CSUM_OFF) {
                    let old_tc = be16(tc);
                    let new_tc =
                        csum::replace2(csum::replace4(old_tc, isrc, client), old_port, fwd.sport);
                    set_be16(tc, new_tc);
                    icsum = csum::replace2(icsum, old_tc, new_tc);
                }
            }
            if iproto == PROTO_UDP {
                let old_uc = u16::from_be((*inner_l4w)[3]);
                if old_uc != 0 {
                    let mut uc = csum::replace4(old_uc, isrc, client);
                    uc = csum::udp_fixup(old_uc, csum::replace2(uc, old_port, fwd.sport));
                    (*inner_l4w)[3] = uc.to_be();
                    icsum = csum::replace2(icsum, old_uc, uc);
                }
            }
        },
        _ => unsafe {
            // Inner echo identifier and the inner ICMP checksum that covers it.
            let old_id = u16::from_be((*inner_l4w)[2]);
            let old_c = u16::from_be((*inner_l4w)[1]);
            let new_c = csum::replace2(old_c, old_id, fwd.sport);
            (*inner_l4w)[2] = fwd.sport.to_be();
            (*inner_l4w)[1] = new_c.to_be();
            icsum = csum::replace2(icsum, old_id, fwd.sport);
            icsum = csum::replace2(icsum, old_c, new_c);
        },
    }
    set_be16(unsafe { &raw mut (*outer_icmp).csum }, icsum);
    Ok(())
}
