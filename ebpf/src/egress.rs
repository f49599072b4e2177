//! Network → client: the program on every target-network interface. Only packets that
//! match a translation this data path created are touched; everything else is the host's.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use portcullis_common::{ct_flags, DropReason, Event, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    ct,
    nat::{self, INNER_IP, INNER_L4},
    packet::{
        self, be16, ptr_at, IcmpHdr, Ipv4Hdr, L4Ports, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY,
        ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, L4_OFF,
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
        src: p.src,
        dst: p.dst,
        sport: 0,
        dport: 0,
        proto: p.proto,
        _pad: [0; 3],
    };
    let mut tcp_flags = 0;
    let (mut seq, mut ack, mut seq_end) = (0u32, 0u32, 0u32);
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
                // Ours only if the header is whole (checked against the total length).
                let Ok(h) = ptr_at::<[u8; 14]>(ctx, L4_OFF) else {
                    return Ok(pass_host());
                };
                let h = unsafe { *h };
                let doff = h[12] >> 4;
                if doff < 5 || (doff as usize) * 4 > p.tot_len as usize - packet::IP_LEN {
                    return Ok(pass_host());
                }
                tcp_flags = h[13];
                seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                seq_end = tap::tcp_seq_end(ctx, &p, doff, tcp_flags)?;
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

    let Some(r) = NAT_REV.get_ptr_mut(&key) else {
        return Ok(pass_host());
    };
    let fwd = unsafe { (*r).fwd };
    let Some(e) = CONNTRACK.get_ptr_mut(&fwd) else {
        return Ok(pass_host());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if ct::expired(unsafe { &*e }, fwd.proto, now) || unsafe { (*e).flags } & ct_flags::LOCAL != 0 {
        // An expired mapping no longer admits inbound packets (RFC 4787 REQ-6 filtering).
        return Ok(pass_host());
    }
    // A kept port that a host socket now also uses (it connected after the client's flow
    // began): the host's traffic must reach the host, never a client. Translated ports
    // come from the PAT range, which the host reserves, so only kept ports are looked up.
    if fwd.sport == key.dport && nat::host_socket_owns(ctx, &key) {
        stats::event(Event::HostSocketWins);
        return Ok(PASS);
    }
    let g = policy::active();
    if unsafe { (*e).generation } != g.number {
        ct::revalidate(e, &fwd, g)?;
    } else if unsafe { (*e).flags } & ct_flags::REVOKED != 0 {
        return Err(DropReason::PolicyRevoked);
    }
    let bytes = u64::from(p.tot_len);
    if p.proto == PROTO_TCP {
        if !ct::reply_in_window(unsafe { &*e }, unsafe { &*r }, tcp_flags, seq, ack) {
            return Err(DropReason::TcpOutOfWindow);
        }
        ct::track_reply_seq(e, r, tcp_flags, seq, ack, seq_end);
    }
    ct::track_reply(e, fwd.proto, tcp_flags);
    ct::touch(e, now);
    // The reply direction's counters are in the reply half: the TAP's fast path never
    // writes that line, this path rarely writes the forward one.
    let slot = unsafe {
        (*r).packets_in += 1;
        (*r).bytes_in += bytes;
        (*e).slot
    };
    if p.ttl <= 1 {
        // The host sends time-exceeded to the sender; the client never sees this one.
        stats::event(Event::PassLocal);
        return Ok(PASS);
    }

    // DNAT back to the client's address and port.
    nat::dnat(ctx, &p, &key, &fwd)?;
    stats::event(Event::ReverseNat);
    stats::egress(slot, bytes);
    into_tap(ctx, p.ip, fwd.src)
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
        src: idst,
        dst: isrc,
        sport: 0,
        dport: 0,
        proto: iproto,
        _pad: [0; 3],
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
    if u32::from_ne_bytes(p.dst) != u32::from_ne_bytes(key.dst) {
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
    nat::icmp_error_back(ctx, p, inner, iproto, isrc, &fwd)?;
    stats::event(Event::IcmpErrorTranslated);
    stats::egress(unsafe { (*e).slot }, u64::from(p.tot_len));
    into_tap(ctx, p.ip, fwd.src)
}
