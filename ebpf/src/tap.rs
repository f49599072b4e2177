//! Client → network: the program on the TAP device.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns},
    programs::XdpContext,
    EbpfContext,
};
use portcullis_common::{
    ct_flags, gateway_port, session_mac, CtEntry, DropReason, Event, FlowKey, MAX_GATEWAY_PORTS,
    NO_SLOT, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    ct, keys, nat,
    packet::{
        self, be16, ptr_at, EthHdr, IcmpHdr, L4Ports, Parsed, ICMP_ECHO_REQUEST, L4_OFF, TCP_ACK,
        TCP_FIN, TCP_SYN,
    },
    policy, stats, CLIENTS, CONNTRACK, EGRESS_PORTS, GATEWAY_ADDR, GATEWAY_PORTS, NAT_REV, TAP_MAC,
};

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
/// BPF_FIB_LKUP_RET_NOT_FWDED: the destination is local (or broadcast), not forwarded.
const FIB_NOT_FWDED: i64 = 4;
const FIB_NO_NEIGH: i64 = 7;
/// BPF_FIB_LOOKUP_SKIP_NEIGH: only the route matters when nothing is sent on.
const FIB_SKIP_NEIGH: u32 = 1 << 2;

/// The flow key and TCP flags of a parsed packet.
pub struct L4 {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// TCP: the sender's next sequence number after this segment (seq + data + SYN + FIN).
    pub seq_end: u32,
}

/// Parse the L4 header far enough for CONNTRACK, checked against the IP total length.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, p: &Parsed) -> Result<L4, DropReason> {
    let need = packet::l4_min_len(p.proto);
    if (p.tot_len as usize) < packet::IP_LEN + need {
        return Err(DropReason::Malformed);
    }
    let mut key = FlowKey {
        src: p.src,
        dst: p.dst,
        sport: 0,
        dport: 0,
        proto: p.proto,
        _pad: [0; 3],
    };
    let mut tcp_flags = 0;
    let mut icmp_type = 0;
    let mut seq_end = 0;
    match p.proto {
        PROTO_TCP | PROTO_UDP => {
            let ports: *mut L4Ports = ptr_at(ctx, L4_OFF)?;
            key.sport = be16(unsafe { &raw const (*ports).sport });
            key.dport = be16(unsafe { &raw const (*ports).dport });
            if p.proto == PROTO_TCP {
                let doff: *mut [u8; 2] = ptr_at(ctx, L4_OFF + 12)?;
                let (off, flags) = unsafe { ((*doff)[0] >> 4, (*doff)[1]) };
                if off < 5 || (off as usize) * 4 > p.tot_len as usize - packet::IP_LEN {
                    return Err(DropReason::Malformed);
                }
                tcp_flags = flags;
                seq_end = tcp_seq_end(ctx, p, off, flags)?;
            }
        }
        PROTO_ICMP => {
            let icmp: *mut IcmpHdr = ptr_at(ctx, L4_OFF)?;
            icmp_type = unsafe { (*icmp).ty };
            if icmp_type == ICMP_ECHO_REQUEST {
                key.sport = be16(unsafe { &raw const (*icmp).id });
            }
        }
        _ => {}
    }
    Ok(L4 {
        key,
        tcp_flags,
        icmp_type,
        seq_end,
    })
}

/// The sequence number after a TCP segment: seq + payload length + one each for SYN and
/// FIN. `doff` is the data offset in words, already checked against the total length.
#[inline(always)]
pub fn tcp_seq_end(ctx: &XdpContext, p: &Parsed, doff: u8, flags: u8) -> Result<u32, DropReason> {
    let seq: *mut [u8; 4] = ptr_at(ctx, L4_OFF + 4)?;
    let seq = u32::from_be_bytes(unsafe { *seq });
    let data = u32::from(p.tot_len) - packet::IP_LEN as u32 - u32::from(doff) * 4;
    Ok(seq
        .wrapping_add(data)
        .wrapping_add(u32::from(flags & TCP_SYN != 0))
        .wrapping_add(u32::from(flags & TCP_FIN != 0)))
}

/// True when the frame's source MAC names session `slot` (see
/// `portcullis_common::session_mac`): the agent writes the sending session's slot there,
/// so a client that forges another session's address is caught here even if the worker's
/// own check were bypassed.
#[inline(always)]
fn from_session(ctx: &XdpContext, slot: u32) -> Result<bool, DropReason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let (got, want) = (unsafe { (*eth).src }, session_mac(slot));
    // Byte by byte: an array comparison may become a memcmp call, which BPF cannot make.
    let mut i = 0;
    while i < 6 {
        if got[i] != want[i] {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

/// Whether `gateway_ports` opens the gateway address to this packet (TCP/UDP by
/// destination port, ICMP by message type). A bounded scan of a short load-time list.
#[inline(always)]
fn gateway_port_open(l4: &L4) -> bool {
    let port = match l4.key.proto {
        PROTO_TCP | PROTO_UDP => l4.key.dport,
        PROTO_ICMP => u16::from(l4.icmp_type),
        _ => return false,
    };
    let want = gateway_port(l4.key.proto, port);
    let open = GATEWAY_PORTS.load();
    let mut i = 0;
    while i < MAX_GATEWAY_PORTS {
        if open[i] == want {
            return true;
        }
        if open[i] == 0 {
            return false;
        }
        i += 1;
    }
    false
}

/// An authorized packet whose TTL runs out here: the kernel sends ICMP time exceeded, but
/// only for a destination it would forward. A local address of the host (the target-network
/// address, loopback, a broadcast) would be delivered to the host's own sockets regardless
/// of TTL, so the kernel's own FIB decides, as it does for the packet itself: only a
/// forwarding route passes. The FIB is the authority the kernel uses, so unlike a list of
/// local addresses kept by the agent it cannot go stale when an address is added.
/// (A packet with TTL > 1 to a local address is refused by `forward`'s lookup already.)
#[inline(always)]
fn ttl_expired(ctx: &XdpContext, p: &Parsed) -> Result<u32, DropReason> {
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = p.proto;
    // tot_len stays 0: the MTU check is for packets that are sent on.
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(p.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(p.dst);
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            FIB_SKIP_NEIGH,
        )
    };
    match rc {
        FIB_SUCCESS | FIB_NO_NEIGH => {
            stats::event(Event::PassLocal);
            Ok(xdp_action::XDP_PASS)
        }
        FIB_NOT_FWDED => Err(DropReason::LocalDestination),
        _ => Err(DropReason::FibLookupFailed),
    }
}

#[inline(always)]
fn deny(key: &FlowKey, slot: u32, r: DropReason) -> DropReason {
    stats::deny(key, slot, r);
    r
}

pub fn run(ctx: &XdpContext) -> Result<u32, DropReason> {
    let p = packet::parse_ipv4(ctx)?;
    let epoch = ct::clients_epoch();
    let parsed = parse_l4(ctx, &p);
    let hit = match &parsed {
        Ok(l4) => CONNTRACK.get_ptr_mut(&l4.key),
        Err(_) => None,
    };
    // The fast path: an established flow needs nothing but its own entry (one hash
    // lookup). The entry names the session slot that opened it; while the clients epoch it
    // was stamped with is current, that session still owns the source address, so a frame
    // whose MAC names the same slot passes the checks of `admit` exactly as if they had run
    // (`clients` lookup, sender's slot, not the gateway). Anything else takes the full way.
    let fast = match (hit, &parsed) {
        (Some(e), Ok(_)) => unsafe {
            (*e).clients_epoch == epoch
                && from_session(ctx, (*e).slot)?
                && p.dst != GATEWAY_ADDR.load()
        },
        _ => false,
    };
    let slot = if fast {
        unsafe { (*hit.ok_or(DropReason::Malformed)?).slot }
    } else {
        match admit(ctx, &p, &parsed, hit, epoch)? {
            Admitted::Established(slot) => slot,
            Admitted::Done(action) => return Ok(action),
        }
    };
    // One call site, so the established path is inlined once.
    match (hit, &parsed) {
        (Some(e), Ok(l4)) => established(ctx, &p, l4, e, slot),
        _ => Err(DropReason::Malformed),
    }
}

/// What the full checks decided for a packet the fast path did not take.
enum Admitted {
    /// A conntrack hit from the session in this slot: on to the established path.
    Established(u32),
    /// Handled here (passed to the host, a client-to-client reply, a new flow).
    Done(u32),
}

/// The full way: anti-spoofing against `clients`, the L4 header, the gateway address, then
/// a conntrack hit (re-stamped with `epoch`, read before the `clients` lookup), a reply in
/// a client-to-client flow, or a new flow.
#[inline(always)]
fn admit(
    ctx: &XdpContext,
    p: &Parsed,
    parsed: &Result<L4, DropReason>,
    hit: Option<*mut CtEntry>,
    epoch: u32,
) -> Result<Admitted, DropReason> {
    let Some(client) = (unsafe { CLIENTS.get(keys::client_key(p.src)) }) else {
        let key = parsed.as_ref().map(|l4| l4.key).unwrap_or_default();
        return Err(deny(&key, NO_SLOT, DropReason::Spoofed));
    };
    if !from_session(ctx, client.slot)? {
        let key = parsed.as_ref().map(|l4| l4.key).unwrap_or_default();
        return Err(deny(&key, NO_SLOT, DropReason::ForgedSource));
    }
    let l4 = match parsed {
        Ok(l4) => l4,
        Err(r) => return Err(*r),
    };
    let key = l4.key;
    if p.dst == GATEWAY_ADDR.load() {
        // The one address of the host clients may reach, and only its open ports.
        if !gateway_port_open(l4) {
            return Err(deny(&key, client.slot, DropReason::GatewayPortClosed));
        }
        stats::event(Event::PassLocal);
        return Ok(Admitted::Done(xdp_action::XDP_PASS));
    }
    if let Some(e) = hit {
        // Checked the long way under `epoch`: later packets of the flow take the fast path
        // (unless the entry still waits for the agent to give it this session's slot).
        unsafe {
            if (*e).slot == client.slot {
                (*e).clients_epoch = epoch;
            }
        }
        return Ok(Admitted::Established(client.slot));
    }
    let g = policy::active();
    let now = unsafe { bpf_ktime_get_ns() };
    let bytes = u64::from(p.tot_len);

    // A reply inside a client-to-client flow opened by the other client.
    if let Some(r) = NAT_REV.get_ptr_mut(&key) {
        let fwd = unsafe { (*r).fwd };
        if let Some(e) = CONNTRACK.get_ptr_mut(&fwd) {
            if unsafe { (*e).flags } & ct_flags::LOCAL != 0 {
                if unsafe { (*e).generation } != g.number {
                    ct::revalidate(e, &fwd, g).map_err(|r| deny(&key, client.slot, r))?;
                } else if unsafe { (*e).flags } & ct_flags::REVOKED != 0 {
                    return Err(deny(&key, client.slot, DropReason::PolicyRevoked));
                }
                if p.ttl <= 1 {
                    return ttl_expired(ctx, p)
                        .map(Admitted::Done)
                        .map_err(|r| deny(&key, client.slot, r));
                }
                ct::track_reply(e, key.proto, l4.tcp_flags);
                ct::touch(e, now);
                unsafe {
                    (*r).packets_in += 1;
                    (*r).bytes_in += bytes;
                }
                // Sent by this client, received by the flow's owner.
                stats::ingress(client.slot, bytes);
                return to_client(ctx, p, p.dst).map(Admitted::Done);
            }
        }
    }

    // New flow: rules, then route, then security groups, then what NAT can carry.
    let target_idx = policy::check(g, client, p.dst, key.proto, key.dport)
        .map_err(|r| deny(&key, client.slot, r))?;
    let natable = match key.proto {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMP => l4.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    };
    if !natable {
        return Err(deny(&key, client.slot, DropReason::UnsupportedProtocol));
    }
    if key.proto == PROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Err(deny(&key, client.slot, DropReason::TcpNoSyn));
    }
    if p.ttl <= 1 {
        // Authorized like any new flow, but nothing is forwarded: the kernel answers.
        return ttl_expired(ctx, p)
            .map(Admitted::Done)
            .map_err(|r| deny(&key, client.slot, r));
    }
    ct::create(
        ctx, &key, client, epoch, target_idx, g, now, bytes, l4.seq_end,
    )
    .map_err(|r| deny(&key, client.slot, r))?;
    stats::ingress(client.slot, bytes);
    // The entry just inserted (the pointer lets forward() cache the next hop in it). It can
    // only be gone if the agent deleted it in between: count that as a full table.
    let e = CONNTRACK
        .get_ptr_mut(&key)
        .ok_or(DropReason::ConntrackFull)?;
    forward(ctx, p, &key, e).map(Admitted::Done)
}

/// A packet of an established flow from the session in `slot`: re-check after a policy
/// change or expiry, track, count, send on.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    p: &Parsed,
    l4: &L4,
    e: *mut CtEntry,
    slot: u32,
) -> Result<u32, DropReason> {
    let key = &l4.key;
    let g = policy::active();
    let now = unsafe { bpf_ktime_get_ns() };
    let e_ref = unsafe { &*e };
    let expired = ct::expired(e_ref, key.proto, now);
    if e_ref.generation != g.number || expired {
        if expired {
            stats::event(Event::Revived);
        }
        ct::revalidate(e, key, g).map_err(|r| deny(key, slot, r))?;
    } else if e_ref.flags & ct_flags::REVOKED != 0 {
        return Err(deny(key, slot, DropReason::PolicyRevoked));
    }
    if p.ttl <= 1 {
        return ttl_expired(ctx, p).map_err(|r| deny(key, slot, r));
    }
    stats::event(Event::FastPath);
    ct::track_forward(e, key.proto, l4.tcp_flags, l4.seq_end);
    let bytes = u64::from(p.tot_len);
    ct::touch(e, now);
    unsafe {
        (*e).packets_out += 1;
        (*e).bytes_out += bytes;
    }
    stats::ingress(slot, bytes);
    forward(ctx, p, key, e)
}

/// Send an admitted packet on: back into the TAP for client-to-client flows, otherwise
/// SNAT, FIB lookup and redirect to the target interface.
///
/// A BPF subprogram of its own, not inlined: inlined into both callers, LLVM merged its
/// `pass_no_neighbour` exit with an error exit and spilled an undefined register there,
/// which the verifier refuses (`R1 !read_ok`). The call costs a few ns on new flows and
/// established ones alike.
#[inline(never)]
fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    key: &FlowKey,
    ep: *mut CtEntry,
) -> Result<u32, DropReason> {
    let e = unsafe { &*ep };
    if e.flags & ct_flags::LOCAL != 0 {
        return to_client(ctx, p, p.dst);
    }
    nat::snat(ctx, p, key, e)?;
    // Valid only within the tick of `last_seen_ns`, which `ct::touch` just moved to now.
    if e.flags & ct_flags::FIB_VALID != 0 {
        let (ifindex, dmac, smac) = (e.fib_ifindex, e.fib_dmac, e.fib_smac);
        packet::dec_ttl(p.ip);
        let eth: *mut EthHdr = ptr_at(ctx, 0)?;
        unsafe {
            (*eth).dst = dmac;
            (*eth).src = smac;
        }
        return EGRESS_PORTS
            .redirect(ifindex, 0)
            .map_err(|_| DropReason::RedirectFailed);
    }
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = key.proto;
    fib.sport = e.nat_port.to_be();
    fib.dport = key.dport.to_be();
    fib.__bindgen_anon_1.tot_len = p.tot_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    unsafe {
        fib.__bindgen_anon_2.tos = (*p.ip).tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(e.nat_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(p.dst);
    }
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == FIB_NO_NEIGH {
        // The kernel forwards this one and resolves the neighbour; later packets redirect.
        stats::event(Event::PassNoNeighbour);
        return Ok(xdp_action::XDP_PASS);
    }
    if rc != FIB_SUCCESS {
        return Err(DropReason::FibLookupFailed);
    }
    unsafe {
        (*ep).fib_ifindex = fib.ifindex;
        (*ep).fib_dmac = fib.dmac;
        (*ep).fib_smac = fib.smac;
        (*ep).flags |= ct_flags::FIB_VALID;
    }
    packet::dec_ttl(p.ip);
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe {
        (*eth).dst = fib.dmac;
        (*eth).src = fib.smac;
    }
    EGRESS_PORTS
        .redirect(fib.ifindex, 0)
        .map_err(|_| DropReason::RedirectFailed)
}

/// Hand a packet to the agent through the TAP (XDP_TX on a TAP queues it for the reader),
/// addressed to the client `dst`.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, p: &Parsed, dst: [u8; 4]) -> Result<u32, DropReason> {
    // The receiving session's egress counters (the sender's ingress is counted by the caller).
    if let Some(peer) = unsafe { CLIENTS.get(keys::client_key(dst)) } {
        stats::egress(peer.slot, u64::from(p.tot_len));
    }
    packet::dec_ttl(p.ip);
    set_client_macs(ctx, dst)?;
    stats::event(Event::ClientToClient);
    Ok(xdp_action::XDP_TX)
}

/// Ethernet header for a frame the agent reads from the TAP: the agent strips it, but a
/// stable per-client MAC keeps captures readable.
#[inline(always)]
pub fn set_client_macs(ctx: &XdpContext, client: [u8; 4]) -> Result<(), DropReason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let mac = TAP_MAC.load();
    unsafe {
        (*eth).dst = [0x02, 0x50, client[0], client[1], client[2], client[3]];
        (*eth).src = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
    }
    Ok(())
}
