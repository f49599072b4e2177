//! Conntrack and SNAT port claims.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::XdpContext,
    EbpfContext,
};
use portcullis_common::{
    ct_flags, ct_state, flow_timeout_ns, ClientInfo, ClientKey, CtEntry, DropReason, Event,
    FlowKey, NatRev, Target, FAMILY_V4, PAT_ATTEMPTS, PROTO_TCP, PROTO_UDP, TARGET_TUNNEL,
};

use crate::{
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    policy::{self, Generation},
    stats, CLIENTS, CONNTRACK, FLOWS_CLOSED, FLOWS_OPENED, NAT_REV,
};

const EEXIST: i32 = 17;

#[inline(always)]
pub fn v4(a: [u8; 4]) -> [u8; 16] {
    portcullis_common::v4_addr(a)
}

#[inline(always)]
pub fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
pub fn client_key(a: [u8; 4]) -> ClientKey {
    ClientKey {
        addr: v4(a),
        family: FAMILY_V4,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn expired(e: &CtEntry, proto: u8, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > flow_timeout_ns(proto, e.state)
}

/// TCP/UDP state as seen from the client's side.
#[inline(always)]
pub fn track_forward(e: *mut CtEntry, proto: u8, tcp_flags: u8) {
    if proto != PROTO_TCP {
        return;
    }
    unsafe {
        if tcp_flags & TCP_RST != 0 {
            (*e).state = ct_state::CLOSED;
        } else if tcp_flags & TCP_FIN != 0 && (*e).state != ct_state::CLOSED {
            (*e).state = ct_state::CLOSING;
        } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && (*e).state == ct_state::CLOSED {
            // The client reuses the tuple after a reset: a new connection.
            (*e).state = ct_state::NEW;
        }
    }
}

/// State changes caused by a reply from the network side.
#[inline(always)]
pub fn track_reply(e: *mut CtEntry, proto: u8, tcp_flags: u8) {
    unsafe {
        if proto != PROTO_TCP {
            (*e).state = ct_state::ESTABLISHED;
            return;
        }
        if tcp_flags & TCP_RST != 0 {
            (*e).state = ct_state::CLOSED;
        } else if tcp_flags & TCP_FIN != 0 {
            (*e).state = ct_state::CLOSING;
        } else if (*e).state == ct_state::NEW && tcp_flags & TCP_ACK != 0 {
            (*e).state = ct_state::ESTABLISHED;
        }
    }
}

/// Re-check a flow against the active generation (after a policy change or expiry).
/// The flow keeps its translation, so it only stays allowed if the policy still sends it
/// to the same place with the same source address.
#[inline(always)]
pub fn revalidate(e: *mut CtEntry, key: &FlowKey, g: Generation) -> Result<(), DropReason> {
    let ok = match unsafe { CLIENTS.get(client_key(v4_of(&key.src))) } {
        None => false,
        Some(client) => match policy::check(g, client, v4_of(&key.dst), key.proto, key.dport) {
            Ok(TARGET_TUNNEL) => unsafe { (*e).flags & ct_flags::LOCAL != 0 },
            Ok(idx) => match policy::target(g, idx) {
                Some(t) => unsafe {
                    (*e).flags & ct_flags::LOCAL == 0
                        && (*e).target == idx
                        && t.snat_addr == (*e).nat_addr
                },
                None => false,
            },
            Err(_) => false,
        },
    };
    unsafe {
        (*e).generation = g.number;
        // The route may have changed with the policy: look the next hop up again.
        (*e).fib_at_ns = 0;
        if ok {
            (*e).flags &= !ct_flags::REVOKED;
        } else {
            (*e).flags |= ct_flags::REVOKED;
        }
    }
    if ok {
        stats::event(Event::Revalidated);
        Ok(())
    } else {
        Err(DropReason::PolicyRevoked)
    }
}

/// True when a local socket on the gateway owns the reply tuple, so keeping the client's
/// source port would steal the host's own traffic.
#[inline(always)]
fn local_socket_owns(ctx: &XdpContext, rev: &FlowKey) -> bool {
    if rev.proto != PROTO_TCP && rev.proto != PROTO_UDP {
        return false;
    }
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = u32::from_ne_bytes(v4_of(&rev.src));
        t.daddr = u32::from_ne_bytes(v4_of(&rev.dst));
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

/// Claim the reply key with BPF_NOEXIST: the kernel arbitrates between CPUs, so a live
/// mapping is never handed out twice.
#[inline(always)]
fn claim(rev: &FlowKey, fwd: &FlowKey) -> Result<bool, DropReason> {
    match NAT_REV.insert(rev, NatRev { fwd: *fwd }, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        Err(_) => Err(DropReason::ConntrackFull),
    }
}

/// Admit a new flow: quota, SNAT/PAT claim, CONNTRACK insert. Returns the new entry.
#[inline(always)]
pub fn create(
    ctx: &XdpContext,
    key: &FlowKey,
    client: &ClientInfo,
    target_idx: u32,
    g: Generation,
    now: u64,
    bytes: u64,
) -> Result<CtEntry, DropReason> {
    let slot = client.slot;
    let opened = FLOWS_OPENED
        .get_ptr_mut(slot)
        .ok_or(DropReason::FlowQuota)?;
    let closed = FLOWS_CLOSED.get(slot).copied().unwrap_or(0);
    if unsafe { *opened }.saturating_sub(closed) >= u64::from(client.max_flows) {
        return Err(DropReason::FlowQuota);
    }

    let mut entry = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        packets_out: 1,
        bytes_out: bytes,
        nat_addr: key.src,
        nat_port: key.sport,
        state: ct_state::NEW,
        flags: 0,
        generation: g.number,
        slot,
        target: TARGET_TUNNEL,
        ..CtEntry::default()
    };
    let mut rev = FlowKey {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    if target_idx == TARGET_TUNNEL {
        if unsafe { CLIENTS.get(client_key(v4_of(&key.dst))) }.is_none() {
            return Err(DropReason::ClientUnreachable);
        }
        entry.flags = ct_flags::LOCAL;
        // Both ends are clients: a collision means the peer opened the same tuple.
        if !claim(&rev, key)? {
            return Err(DropReason::PortsExhausted);
        }
    } else {
        let t: &Target = policy::target(g, target_idx).ok_or(DropReason::BadTarget)?;
        entry.target = target_idx;
        entry.nat_addr = t.snat_addr;
        rev.dst = t.snat_addr;
        let mut claimed = !local_socket_owns(ctx, &rev) && claim(&rev, key)?;
        if claimed {
            stats::event(Event::PortKept);
        } else {
            let span = u32::from(t.port_max.saturating_sub(t.port_min)) + 1;
            let start = unsafe { bpf_get_prandom_u32() } % span;
            let mut i = 0;
            while i < PAT_ATTEMPTS {
                rev.dport = t.port_min + ((start + i) % span) as u16;
                if claim(&rev, key)? {
                    claimed = true;
                    break;
                }
                i += 1;
            }
            if !claimed {
                return Err(DropReason::PortsExhausted);
            }
            stats::event(Event::PortTranslated);
        }
        entry.nat_port = rev.dport;
    }
    if let Err(e) = CONNTRACK.insert(key, entry, BPF_NOEXIST as u64) {
        let _ = NAT_REV.remove(&rev);
        // EEXIST: another CPU admitted the same flow a moment ago; its entry wins.
        if e == -EEXIST {
            if let Some(existing) = unsafe { CONNTRACK.get(key) } {
                return Ok(*existing);
            }
        }
        return Err(DropReason::ConntrackFull);
    }
    // Atomic add (BPF_ATOMIC | BPF_ADD): core's atomics need CAS, which bpfel lacks in Rust.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) opened, v = in(reg) 1u64);
    }
    stats::event(Event::NewFlow);
    Ok(entry)
}
