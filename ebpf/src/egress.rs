//! Network → client: the program on every target-network interface. Only packets that
//! match a translation this data path created are touched; everything else is the host's.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use portcullis_common::{
    ct_flags, DropReason, Event, FlowKey, FAMILY_V4, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum, ct,
    packet::{
        self, be16, ptr_at, set_be16, IcmpHdr, Ipv4Hdr, L4Ports, ICMP_DEST_UNREACH,
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, L4_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    policy, stats, tap, CONNTRACK, EGRESS_PORTS, NAT_REV, TAP_IFINDEX,
};

const PASS: u32 = xdp_action::XDP_PASS;

pub fn run(ctx: &XdpContext) -> Result<u32, DropReason> {
    // Anything we cannot parse is not ours: the host keeps working.
    let Ok(p) = packet::parse_ipv4(ctx) else {
        return Ok(pass_host());
    };
    let mut key = FlowKey {
        src: ct::v4(p.src),
        dst: ct::v4(p.dst),
        sport: 0,
        dport: 0,
        proto: p.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let mut tcp_flags = 0;
    match p.proto {
        PROTO_TCP | PROTO_UDP => {
            if (p.tot_len as usize) < packet::IP_LEN + packet::l4_min_len(p.proto) {
                return Ok(pass_host());
            }
            let Ok(ports) = ptr_at::<L4Ports>(ctx, L4_OFF) else {
                return Ok(pass_host());
            };
            key.sport = be16(unsafe { &raw const (*ports).sport });
            key.dport = be16(unsafe { &raw const (*ports).dport });
            if p.proto == PROTO_TCP {
                if let Ok(f) = ptr_at::<u8>(ctx, L4_OFF + 13) {
                    tcp_flags = unsafe { *f };
                }
            }
        }
        PROTO_ICMP => {
            let Ok(icmp) = ptr_at::<IcmpHdr>(ctx, L4_OFF) else {
                return Ok(pass_host());
            };
            match unsafe { (*icmp).ty } {
                ICMP_ECHO_REPLY => key.dport = be16(unsafe { &raw const (*icmp).id }),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED => return icmp_error(ctx, &p),
                _ => return Ok(pass_host()),
            }
        }
        _ => return Ok(pass_host()),
    }

    let Some(rev) = (unsafe { NAT_REV.get(&key) }) else {
        return Ok(pass_host());
    };
    let fwd = rev.fwd;
    let Some(e) = CONNTRACK.get_ptr_mut(&fwd) else {
        return Ok(pass_host());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if ct::expired(unsafe { &*e }, fwd.proto, now) || unsafe { (*e).flags } & ct_flags::LOCAL != 0 {
        // An expired mapping no longer admits inbound packets (RFC 4787 REQ-6 filtering).
        return Ok(pass_host());
    }
    let g = policy::active();
    if unsafe { (*e).generation } != g.number {
        ct::revalidate(e, &fwd, g)?;
    } else if unsafe { (*e).flags } & ct_flags::REVOKED != 0 {
        return Err(DropReason::PolicyRevoked);
    }
    let bytes = u64::from(p.tot_len);
    ct::track_reply(e, fwd.proto, tcp_flags);
    let slot = unsafe {
        (*e).last_seen_ns = now;
        (*e).packets_in += 1;
        (*e).bytes_in += bytes;
        (*e).slot
    };
    if p.ttl <= 1 {
        // The host sends time-exceeded to the sender; the client never sees this one.
        stats::event(Event::PassLocal);
        return Ok(PASS);
    }

    // DNAT back to the client's address and port.
    let client = ct::v4_of(&fwd.src);
    let ip = p.ip;
    unsafe {
        let c = csum::replace4(be16(&raw const (*ip).csum), p.dst, client);
        set_be16(&raw mut (*ip).csum, c);
        (*ip).dst = client;
    }
    let port_changed = fwd.sport != key.dport;
    match p.proto {
        PROTO_TCP | PROTO_UDP => {
            let off = if p.proto == PROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            };
            let cs: *mut u16 = ptr_at(ctx, L4_OFF + off)?;
            let old = be16(cs);
            let mut c = csum::replace4(old, p.dst, client);
            if port_changed {
                c = csum::replace2(c, key.dport, fwd.sport);
                let ports: *mut L4Ports = ptr_at(ctx, L4_OFF)?;
                set_be16(unsafe { &raw mut (*ports).dport }, fwd.sport);
            }
            if p.proto == PROTO_UDP {
                c = csum::udp_fixup(old, c);
            }
            set_be16(cs, c);
        }
        _ => {
            if port_changed {
                let icmp: *mut IcmpHdr = ptr_at(ctx, L4_OFF)?;
                unsafe {
                    let c = csum::replace2(be16(&raw const (*icmp).csum), key.dport, fwd.sport);
                    set_be16(&raw mut (*icmp).csum, c);
                    set_be16(&raw mut (*icmp).id, fwd.sport);
                }
            }
        }
    }
    stats::event(Event::ReverseNat);
    stats::egress(slot, bytes);
    into_tap(ctx, ip, client)
}

#[inline(always)]
fn pass_host() -> u32 {
    stats::event(Event::EgressPassHost);
    PASS
}

#[inline(always)]
fn into_tap(ctx: &XdpContext, ip: *mut Ipv4Hdr, client: [u8; 4]) -> Result<u32, DropReason> {
    packet::dec_ttl(ip);
    tap::set_client_macs(ctx, client)?;
    EGRESS_PORTS
        .redirect(TAP_IFINDEX.load(), 0)
        .map_err(|_| DropReason::RedirectFailed)
}

/// Offsets inside an ICMP error: the embedded IPv4 header and its first 8 L4 bytes.
const INNER_IP: usize = L4_OFF + 8;
const INNER_L4: usize = INNER_IP + packet::IP_LEN;

/// ICMP destination-unreachable / time-exceeded about a packet we translated: translate
/// the embedded header back (source address and port) and send it to the client, so path
/// MTU discovery and "port unreachable" work through the gateway.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, p: &packet::Parsed) -> Result<u32, DropReason> {
    let Ok(inner) = ptr_at::<Ipv4Hdr>(ctx, INNER_IP) else {
        return Ok(pass_host());
    };
    let Ok(inner_l4) = ptr_at::<[u16; 4]>(ctx, INNER_L4) else {
        return Ok(pass_host());
    };
    let (ivihl, iproto, isrc, idst) =
        unsafe { ((*inner).vihl, (*inner).proto, (*inner).src, (*inner).dst) };
    if ivihl != 0x45 || idst == [0; 4] {
        return Ok(pass_host());
    }
    // The embedded packet went client → network after translation: src = SNAT address.
    let mut key = FlowKey {
        src: ct::v4(idst),
        dst: ct::v4(isrc),
        sport: 0,
        dport: 0,
        proto: iproto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let words = unsafe { *inner_l4 };
    match iproto {
        PROTO_TCP | PROTO_UDP => {
            key.sport = u16::from_be(words[1]);
            key.dport = u16::from_be(words[0]);
        }
        PROTO_ICMP => {
            if u16::from_be(words[0]) >> 8 != ICMP_ECHO_REQUEST as u16 {
                return Ok(pass_host());
            }
            key.dport = u16::from_be(words[2]);
        }
        _ => return Ok(pass_host()),
    }
    if ct::v4(p.dst) != key.dst {
        return Ok(pass_host());
    }
    let Some(rev) = (unsafe { NAT_REV.get(&key) }) else {
        return Ok(pass_host());
    };
    let fwd = rev.fwd;
    let Some(e) = CONNTRACK.get_ptr_mut(&fwd) else {
        return Ok(pass_host());
    };
    // Same admission as a reply: an expired mapping, or one the active policy no longer
    // allows (re-checked here if the generation changed), translates nothing back.
    let now = unsafe { bpf_ktime_get_ns() };
    if ct::expired(unsafe { &*e }, fwd.proto, now)
        || unsafe { (*e).flags } & (ct_flags::REVOKED | ct_flags::LOCAL) != 0
        || p.ttl <= 1
    {
        return Ok(pass_host());
    }
    let g = policy::active();
    if unsafe { (*e).generation } != g.number && ct::revalidate(e, &fwd, g).is_err() {
        return Ok(pass_host());
    }
    let client = ct::v4_of(&fwd.src);
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
    stats::event(Event::IcmpErrorTranslated);
    stats::egress(unsafe { (*e).slot }, u64::from(p.tot_len));
    into_tap(ctx, p.ip, client)
}
