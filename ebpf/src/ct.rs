//! Conntrack: flow admission, TCP state, re-checks after a policy change.
use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use portcullis_common::{
    ct_flags, ct_state, flow_timeout_ns, ClientInfo, CtEntry, DropReason, Event, FlowKey, NatRev,
    Target, FIB_TICK_SHIFT, PROTO_TCP, TARGET_TUNNEL, TCP_RST_WINDOW,
};

use crate::{
    keys::{client_key, reply_key, v4_of},
    nat,
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    policy::{self, Generation},
    stats, CLIENTS, CLIENTS_EPOCH, CONNTRACK, FLOWS_CLOSED, FLOWS_OPENED, NAT_REV,
};

const EEXIST: i32 = 17;

#[inline(always)]
pub fn expired(e: &CtEntry, proto: u8, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > flow_timeout_ns(proto, e.state)
}

/// The current `clients_epoch`. Read before the `clients` lookup it vouches for: the agent
/// changes `clients` first and bumps the epoch after, so an entry stamped with the epoch
/// read here was checked against a `clients` map at least that new.
#[inline(always)]
pub fn clients_epoch() -> u32 {
    CLIENTS_EPOCH.get(0).copied().unwrap_or(0)
}

/// A packet of the flow at `now`: moves `last_seen_ns`, and drops the cached next hop when
/// that crosses into a later FIB tick (see `ct_flags::FIB_VALID`). Every writer of
/// `last_seen_ns` goes through here, which is what lets the flag stand for a timestamp.
#[inline(always)]
pub fn touch(e: *mut CtEntry, now: u64) {
    unsafe {
        if (*e).last_seen_ns >> FIB_TICK_SHIFT != now >> FIB_TICK_SHIFT {
            (*e).flags &= !ct_flags::FIB_VALID;
        }
        (*e).last_seen_ns = now;
    }
}

/// `a` is later than `b` in TCP sequence space (RFC 1982 arithmetic).
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// TCP/UDP state as seen from the client's side; `seq_end` is the client's next sequence
/// number after this segment.
#[inline(always)]
pub fn track_forward(e: *mut CtEntry, proto: u8, tcp_flags: u8, seq_end: u32) {
    if proto != PROTO_TCP {
        return;
    }
    unsafe {
        if tcp_flags & TCP_RST != 0 {
            (*e).state = ct_state::CLOSED;
        } else if tcp_flags & TCP_FIN != 0 && (*e).state != ct_state::CLOSED {
            (*e).state = ct_state::CLOSING;
        } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && (*e).state == ct_state::CLOSED {
            // The client reuses the tuple after a reset: a new connection, new sequences.
            (*e).state = ct_state::NEW;
            (*e).flags &= !ct_flags::REPLY_SEQ;
            (*e).seq_out_end = seq_end;
        }
        if after(seq_end, (*e).seq_out_end) {
            (*e).seq_out_end = seq_end;
        }
    }
}

/// Whether a TCP segment from the network may act on the flow. An RST or FIN must be in
/// sequence, as netfilter requires: before the handshake it must acknowledge the client's
/// SYN exactly, afterwards its sequence number must be within [`TCP_RST_WINDOW`] of the
/// network side's tracked one. Other segments always pass (the client's stack judges them).
#[inline(always)]
pub fn reply_in_window(e: &CtEntry, r: &NatRev, tcp_flags: u8, seq: u32, ack: u32) -> bool {
    if tcp_flags & (TCP_RST | TCP_FIN) == 0 {
        return true;
    }
    if e.flags & ct_flags::REPLY_SEQ == 0 {
        return tcp_flags & TCP_ACK != 0 && ack == e.seq_out_end;
    }
    (seq.wrapping_sub(r.seq_in_end) as i32).unsigned_abs() <= TCP_RST_WINDOW
}

/// Follow the network side's sequence numbers: learnt from the SYN-ACK that acknowledges
/// the client's SYN, then advanced only by segments near it, so a spoofed segment cannot
/// drag the window to where a spoofed RST would land.
#[inline(always)]
pub fn track_reply_seq(
    e: *mut CtEntry,
    r: *mut NatRev,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    seq_end: u32,
) {
    unsafe {
        if (*e).flags & ct_flags::REPLY_SEQ == 0 {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && ack == (*e).seq_out_end {
                (*r).seq_in_end = seq_end;
                (*e).flags |= ct_flags::REPLY_SEQ;
            }
        } else if (seq.wrapping_sub((*r).seq_in_end) as i32).unsigned_abs() <= TCP_RST_WINDOW
            && after(seq_end, (*r).seq_in_end)
        {
            (*r).seq_in_end = seq_end;
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

/// The target network a translated flow was admitted to (kept in its reply half, which the
/// fast path does not read: only a re-check needs it).
#[inline(always)]
fn admitted_target(e: &CtEntry, key: &FlowKey) -> Option<u32> {
    let r = unsafe { NAT_REV.get(&reply_key(key, e.nat_addr, e.nat_port)) }?;
    Some(r.target)
}

/// Re-check a flow against the active generation (after a policy change or expiry).
/// The flow keeps its translation, so it only stays allowed if the policy still sends it
/// to the same place with the same source address.
#[inline(always)]
pub fn revalidate(e: *mut CtEntry, key: &FlowKey, g: Generation) -> Result<(), DropReason> {
    let ok = match unsafe { CLIENTS.get(client_key(key.src)) } {
        None => false,
        Some(client) => match policy::check(g, client, key.dst, key.proto, key.dport) {
            Ok(TARGET_TUNNEL) => unsafe { (*e).flags & ct_flags::LOCAL != 0 },
            Ok(idx) => match policy::target(g, idx) {
                Some(t) => unsafe {
                    (*e).flags & ct_flags::LOCAL == 0
                        && u32::from_ne_bytes(v4_of(&t.snat_addr))
                            == u32::from_ne_bytes((*e).nat_addr)
                        && admitted_target(&*e, key) == Some(idx)
                },
                None => false,
            },
            Err(_) => false,
        },
    };
    unsafe {
        (*e).generation = g.number;
        // The route may have changed with the policy: look the next hop up again.
        (*e).flags &= !ct_flags::FIB_VALID;
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

/// Admit a new flow: quota, SNAT/PAT claim (the reply half), CONNTRACK insert (the forward
/// half, stamped with `epoch`, read before the `clients` lookup that found `client`).
/// Returns the new entry.
#[inline(always)]
pub fn create(
    ctx: &XdpContext,
    key: &FlowKey,
    client: &ClientInfo,
    epoch: u32,
    target_idx: u32,
    g: Generation,
    now: u64,
    bytes: u64,
    seq_end: u32,
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
        packets_out: 1,
        bytes_out: bytes,
        nat_addr: key.src,
        nat_port: key.sport,
        state: ct_state::NEW,
        flags: 0,
        generation: g.number,
        slot,
        clients_epoch: epoch,
        seq_out_end: seq_end,
        ..CtEntry::default()
    };
    let mut rev = reply_key(key, key.src, key.sport);
    let mut half = NatRev {
        fwd: *key,
        created_ns: now,
        target: TARGET_TUNNEL,
        ..NatRev::default()
    };
    if target_idx == TARGET_TUNNEL {
        if unsafe { CLIENTS.get(client_key(key.dst)) }.is_none() {
            return Err(DropReason::ClientUnreachable);
        }
        entry.flags = ct_flags::LOCAL;
        // Both ends are clients: a collision means the peer opened the same tuple.
        if !nat::claim(&rev, &half)? {
            return Err(DropReason::PortsExhausted);
        }
    } else {
        let t: &Target = policy::target(g, target_idx).ok_or(DropReason::BadTarget)?;
        half.target = target_idx;
        entry.nat_addr = v4_of(&t.snat_addr);
        rev.dst = entry.nat_addr;
        nat::claim_port(ctx, &mut rev, &half, t)?;
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
