//! Interprets compiled map contents exactly the way the XDP program does: one
//! longest-prefix lookup in the authorization trie and a bitmap AND, one in the route trie,
//! one in the security-group trie followed by a bounded binary search over the port ranges.
//!
//! It checks the compiler against the reference evaluator (property tests), lets the fake
//! data path answer "what would a packet see now", and sanity-checks the XDP differential
//! test. The map contents come through [`CompiledView`], implemented for a
//! [`CompiledPolicy`] and for a data-path slot (`crate::reconcile::SlotContents`).
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use portcullis_common::{
    sg_flags, AuthzValue, DropReason, GroupBits, PortRange, RouteValue, SgNode, Target, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, SG_SEARCH_STEPS, TARGET_TUNNEL,
};

use super::compile::{CompiledPolicy, LpmEntry};
use super::eval::{finish_frame, parse_frame, slot_in, ICMP_ECHO_REQUEST};
pub use super::eval::{FrameDecision, Verdict};
use super::model::GatewayPort;
use super::prefix::mask;

/// Read access to one generation's maps, with the semantics of the BPF map types:
/// LPM tries answer the longest prefix containing the address, arrays answer every index
/// below their capacity (unwritten entries are zero) and nothing past it.
pub trait CompiledView {
    fn authz_lookup(&self, dst: Ipv4Addr) -> Option<AuthzValue>;
    fn route_lookup(&self, dst: Ipv4Addr) -> Option<RouteValue>;
    /// `policy_meta[slot].sg_enabled`.
    fn sg_enabled(&self) -> bool;
    fn sg_lookup(&self, dst: Ipv4Addr) -> Option<SgNode>;
    fn sg_range(&self, index: u32) -> Option<PortRange>;
    fn target(&self, index: u32) -> Option<Target>;
}

/// Longest-prefix match over `(prefix_len, network, value)` entries.
pub fn lpm<'a, V: Copy + 'a>(
    entries: impl IntoIterator<Item = &'a LpmEntry<V>>,
    dst: Ipv4Addr,
) -> Option<V> {
    let d = u32::from(dst);
    entries
        .into_iter()
        .filter(|(len, net, _)| mask(d, *len) == u32::from_be_bytes(*net))
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, _, v)| *v)
}

/// Longest-prefix match in a map keyed by `(prefix_len, network)`: tries every length from
/// 32 down, which is what an LPM trie answers.
pub fn lpm_map<V: Copy>(map: &BTreeMap<(u8, [u8; 4]), V>, dst: Ipv4Addr) -> Option<V> {
    let d = u32::from(dst);
    (0..=32u8)
        .rev()
        .find_map(|len| map.get(&(len, mask(d, len).to_be_bytes())).copied())
}

impl CompiledView for CompiledPolicy {
    fn authz_lookup(&self, dst: Ipv4Addr) -> Option<AuthzValue> {
        lpm(&self.authz, dst)
    }
    fn route_lookup(&self, dst: Ipv4Addr) -> Option<RouteValue> {
        lpm(&self.routes, dst)
    }
    fn sg_enabled(&self) -> bool {
        self.sg_enabled
    }
    fn sg_lookup(&self, dst: Ipv4Addr) -> Option<SgNode> {
        lpm(&self.sg_nodes, dst)
    }
    fn sg_range(&self, index: u32) -> Option<PortRange> {
        self.sg_ranges.get(index as usize).copied()
    }
    fn target(&self, index: u32) -> Option<Target> {
        self.targets.get(index as usize).copied()
    }
}

/// Whether `port` is in one of the sorted, disjoint ranges `[off, off + len)`: a binary
/// search bounded by [`SG_SEARCH_STEPS`] like the verifier-friendly loop in the XDP program.
pub fn port_allowed(view: &impl CompiledView, off: u32, len: u32, port: u16) -> bool {
    // Find the first range whose `hi` is >= port.
    let (mut lo, mut hi) = (0u32, len);
    for _ in 0..SG_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        match view.sg_range(off + mid) {
            Some(r) if r.hi < port => lo = mid + 1,
            Some(_) => hi = mid,
            None => return false,
        }
    }
    lo < len
        && view
            .sg_range(off + lo)
            .is_some_and(|r| r.lo <= port && port <= r.hi)
}

/// The data path's decision for the first packet of a flow from a client whose group
/// bitmap is `client_groups`. Same order as the reference evaluator.
pub fn evaluate_new_flow(
    view: &impl CompiledView,
    client_groups: &GroupBits,
    dst: Ipv4Addr,
    proto: u8,
    dport: u16,
    icmp_type: Option<u8>,
    live_clients: &BTreeSet<Ipv4Addr>,
) -> Verdict {
    let Some(a) = view.authz_lookup(dst) else {
        return Verdict::Drop(DropReason::NoAuthzRule);
    };
    let shares_group = a.groups.iter().zip(client_groups).any(|(r, c)| r & c != 0);
    if a.all_users == 0 && !shares_group {
        return Verdict::Drop(DropReason::NotAuthorized);
    }

    let Some(route) = view.route_lookup(dst) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let routed = if route.target == TARGET_TUNNEL {
        if !live_clients.contains(&dst) {
            return Verdict::Drop(DropReason::ClientUnreachable);
        }
        Verdict::ClientToClient
    } else {
        match view.target(route.target) {
            Some(t) if t.valid == 1 => Verdict::Forward {
                target_index: route.target,
                snat: Ipv4Addr::new(
                    t.snat_addr[0],
                    t.snat_addr[1],
                    t.snat_addr[2],
                    t.snat_addr[3],
                ),
            },
            _ => return Verdict::Drop(DropReason::BadTarget),
        }
    };

    if view.sg_enabled() {
        let allowed = view.sg_lookup(dst).is_some_and(|n| {
            n.flags & sg_flags::ANY != 0
                || (proto == PROTO_ICMP && n.flags & sg_flags::ICMP != 0)
                || (proto == PROTO_TCP && port_allowed(view, n.tcp_off, n.tcp_len, dport))
                || (proto == PROTO_UDP && port_allowed(view, n.udp_off, n.udp_len, dport))
        });
        if !allowed {
            return Verdict::Drop(DropReason::SecurityGroup);
        }
    }

    match (proto, icmp_type) {
        (PROTO_TCP | PROTO_UDP, _) | (PROTO_ICMP, Some(ICMP_ECHO_REQUEST)) => routed,
        _ => Verdict::Drop(DropReason::UnsupportedProtocol),
    }
}

/// The data path's decision for a frame; `clients` maps live session addresses to their
/// group bitmaps (the `clients` map).
pub fn evaluate_frame(
    view: &impl CompiledView,
    gateway_addr: Ipv4Addr,
    gateway_ports: &[GatewayPort],
    clients: &BTreeMap<Ipv4Addr, GroupBits>,
    frame: &[u8],
) -> FrameDecision<Verdict> {
    let flow = match parse_frame(frame, gateway_addr, gateway_ports, |a| slot_in(clients, a)) {
        Ok(f) => f,
        Err(stop) => return stop.into(),
    };
    let live: BTreeSet<Ipv4Addr> = clients.keys().copied().collect();
    let verdict = evaluate_new_flow(
        view,
        &clients[&flow.src],
        flow.dst,
        flow.proto,
        flow.dport,
        flow.icmp_type,
        &live,
    );
    finish_frame(&flow, verdict)
}
