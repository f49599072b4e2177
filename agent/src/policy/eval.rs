//! Reference evaluator: what the data path must decide for a packet, computed the naive way
//! from the raw [`PolicyInput`] (linear scans, no tries, no bitmaps).
//!
//! It is the oracle for the compiler (see `compiled_eval` and the property tests) and for
//! the XDP program (the differential `BPF_PROG_TEST_RUN` test), so it is written to be
//! obviously correct rather than fast, and it shares no code with the compiler.
//!
//! It assumes a policy that passed validation: for invalid input (duplicate route
//! destinations, unknown names) it still answers, but the answer is not specified.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::IpNet;
use portcullis_common::{DropReason, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use super::model::{GatewayPort, PolicyInput, Proto, SgRule};

/// ICMP echo request: the only ICMP message that may open a flow.
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// Decision for the first packet of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Translate and send out through a target network.
    Forward {
        target_index: usize,
        target_name: String,
        snat: Ipv4Addr,
    },
    /// Send back into the tunnel to another live client (no translation).
    ClientToClient,
    Drop(DropReason),
}

/// What the data path itself can tell about a decision (it has no target names). The
/// compiled evaluator returns this; compare with [`Decision::verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward { target_index: u32, snat: Ipv4Addr },
    ClientToClient,
    Drop(DropReason),
}

impl Decision {
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Forward {
                target_index, snat, ..
            } => Verdict::Forward {
                target_index: *target_index as u32,
                snat: *snat,
            },
            Decision::ClientToClient => Verdict::ClientToClient,
            Decision::Drop(r) => Verdict::Drop(*r),
        }
    }
}

/// Anything that may be a drop; lets the frame logic treat both decision types alike.
pub trait FlowOutcome: Sized {
    fn drop_reason(&self) -> Option<DropReason>;
}

impl FlowOutcome for Decision {
    fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Decision::Drop(r) => Some(*r),
            _ => None,
        }
    }
}

impl FlowOutcome for Verdict {
    fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Verdict::Drop(r) => Some(*r),
            _ => None,
        }
    }
}

/// Decision for one Ethernet frame written to the TAP by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameDecision<D = Decision> {
    Drop(DropReason),
    /// Handed to the kernel (`XDP_PASS`): to an open port of the gateway address, or with
    /// TTL <= 1 after the policy allowed it (the kernel answers ICMP time exceeded; to a
    /// local address of the host the data path drops it instead, which only the kernel's
    /// FIB can tell).
    PassLocal,
    /// A new flow that is admitted. Never holds a drop: drops are [`FrameDecision::Drop`].
    Flow(D),
}

impl FrameDecision<Decision> {
    pub fn verdict(&self) -> FrameDecision<Verdict> {
        match self {
            FrameDecision::Drop(r) => FrameDecision::Drop(*r),
            FrameDecision::PassLocal => FrameDecision::PassLocal,
            FrameDecision::Flow(d) => FrameDecision::Flow(d.verdict()),
        }
    }
}

/// Why parsing stopped before the policy was consulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStop {
    Drop(DropReason),
    PassLocal,
}

impl<D> From<FrameStop> for FrameDecision<D> {
    fn from(s: FrameStop) -> Self {
        match s {
            FrameStop::Drop(r) => FrameDecision::Drop(r),
            FrameStop::PassLocal => FrameDecision::PassLocal,
        }
    }
}

/// The fields of a parsed IPv4 packet that the policy looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// TCP/UDP source port, ICMP identifier for echo, else 0.
    pub sport: u16,
    /// TCP/UDP destination port, else 0 (ICMP rules have no ports).
    pub dport: u16,
    pub icmp_type: Option<u8>,
    pub tcp_flags: Option<u8>,
    pub ttl: u8,
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Parses a frame the way the XDP TAP program does, up to (not including) the policy
/// lookups. Checks in order: Ethernet header, ethertype, IPv4 header (version, IHL, total
/// length against the bytes present), fragments, anti-spoofing (the source is a live
/// session, and the source MAC names that session's slot), L4 header (measured against the
/// IP total length; protocols other than TCP/UDP/ICMP are not checked), then the gateway
/// address (passed on an open port, dropped on any other). Checksums are not verified (the
/// receiver does that). `session_slot` gives a live session's slot, `None` for others.
pub fn parse_frame(
    frame: &[u8],
    gateway_addr: Ipv4Addr,
    gateway_ports: &[GatewayPort],
    session_slot: impl Fn(Ipv4Addr) -> Option<u32>,
) -> Result<FlowInfo, FrameStop> {
    use DropReason::*;
    let drop = |r| Err(FrameStop::Drop(r));
    if frame.len() < ETH_HLEN {
        return drop(Malformed);
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => {}
        ETH_P_IPV6 => return drop(Ipv6Unsupported),
        _ => return drop(NotIp),
    }
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 20 {
        return drop(Malformed);
    }
    let (version, ihl) = (ip[0] >> 4, ip[0] & 0x0f);
    if version != 4 || ihl < 5 {
        return drop(Malformed);
    }
    if ihl > 5 {
        return drop(IpOptions);
    }
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total_len < 20 || total_len > ip.len() {
        return drop(Malformed);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & IP_MF != 0 || frag & IP_OFFSET_MASK != 0 {
        return drop(Fragment);
    }
    let ttl = ip[8];
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let Some(slot) = session_slot(src) else {
        return drop(Spoofed);
    };
    if frame[6..12] != portcullis_common::session_mac(slot) {
        return drop(ForgedSource);
    }
    // Only the bytes the IP header claims belong to the packet (the rest is padding).
    let l4 = &ip[20..total_len];
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let mut info = FlowInfo {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        icmp_type: None,
        tcp_flags: None,
        ttl,
    };
    match proto {
        PROTO_TCP => {
            if l4.len() < 20 {
                return drop(Malformed);
            }
            let data_offset = usize::from(l4[12] >> 4);
            if data_offset < 5 || data_offset * 4 > l4.len() {
                return drop(Malformed);
            }
            info.sport = port(0);
            info.dport = port(2);
            info.tcp_flags = Some(l4[13]);
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return drop(Malformed);
            }
            info.sport = port(0);
            info.dport = port(2);
        }
        PROTO_ICMP => {
            if l4.len() < 8 {
                return drop(Malformed);
            }
            info.icmp_type = Some(l4[0]);
            if l4[0] == ICMP_ECHO_REQUEST {
                info.sport = port(4);
            }
        }
        _ => {}
    }
    if dst == gateway_addr {
        let port = match (proto, info.icmp_type) {
            (PROTO_TCP | PROTO_UDP, _) => Some(info.dport),
            (PROTO_ICMP, Some(ty)) => Some(u16::from(ty)),
            _ => None,
        };
        let open = port.is_some_and(|port| {
            gateway_ports
                .iter()
                .any(|g| g.proto_port() == (proto, port))
        });
        return Err(if open {
            FrameStop::PassLocal
        } else {
            FrameStop::Drop(GatewayPortClosed)
        });
    }
    Ok(info)
}

/// Combines a new-flow decision with the TCP rule: a TCP packet may only open a flow with a
/// SYN and no ACK. The policy decision comes first, so a non-SYN packet to a forbidden
/// destination is counted under the policy reason, not as `TcpNoSyn`. A packet that would
/// open a flow but has TTL <= 1 goes to the kernel instead (time exceeded): only after
/// everything a new flow must pass.
pub fn finish_frame<D: FlowOutcome>(flow: &FlowInfo, decision: D) -> FrameDecision<D> {
    if let Some(r) = decision.drop_reason() {
        return FrameDecision::Drop(r);
    }
    if let Some(flags) = flow.tcp_flags {
        if flags & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
            return FrameDecision::Drop(DropReason::TcpNoSyn);
        }
    }
    if flow.ttl <= 1 {
        return FrameDecision::PassLocal;
    }
    FrameDecision::Flow(decision)
}

/// The slot the evaluators give the live sessions of a `clients` map: their position in
/// address order (the tests write the `clients` map the same way).
pub fn slot_in<V>(clients: &BTreeMap<Ipv4Addr, V>, a: Ipv4Addr) -> Option<u32> {
    clients.keys().position(|k| *k == a).map(|i| i as u32)
}

/// Reference decision for a frame from a client: `clients` maps every live session's
/// address to its groups; sessions have the slots [`slot_in`] gives.
pub fn evaluate_frame(
    input: &PolicyInput,
    clients: &BTreeMap<Ipv4Addr, BTreeSet<String>>,
    frame: &[u8],
) -> FrameDecision {
    let flow = match parse_frame(frame, input.gateway_addr, &input.gateway_ports, |a| {
        slot_in(clients, a)
    }) {
        Ok(f) => f,
        Err(stop) => return stop.into(),
    };
    let live: BTreeSet<Ipv4Addr> = clients.keys().copied().collect();
    let decision = evaluate_new_flow(
        input,
        &clients[&flow.src],
        flow.dst,
        flow.proto,
        flow.dport,
        flow.icmp_type,
        &live,
    );
    finish_frame(&flow, decision)
}

/// Reference decision for the first packet of a flow to `dst` from a user in
/// `user_groups`; `live_clients` are the addresses of live sessions (for client-to-client).
/// Order: authorization, route, security groups, protocol. The TCP SYN check, quotas and
/// NAT are not part of it (see [`evaluate_frame`] for the SYN check).
pub fn evaluate_new_flow(
    input: &PolicyInput,
    user_groups: &BTreeSet<String>,
    dst: Ipv4Addr,
    proto: u8,
    dport: u16,
    icmp_type: Option<u8>,
    live_clients: &BTreeSet<Ipv4Addr>,
) -> Decision {
    // (a) Authorization: only the longest matching prefix counts, over rules of every
    // group; shorter prefixes are never a fallback.
    let covering: Vec<_> = input
        .authorization_rules
        .iter()
        .filter(|r| v4_contains(&r.destination, dst))
        .collect();
    let Some(longest) = covering.iter().map(|r| r.destination.prefix_len()).max() else {
        return Decision::Drop(DropReason::NoAuthzRule);
    };
    let authorized = covering
        .iter()
        .filter(|r| r.destination.prefix_len() == longest)
        .any(|r| r.all_users || r.groups.iter().any(|g| user_groups.contains(g)));
    if !authorized {
        return Decision::Drop(DropReason::NotAuthorized);
    }

    // (b) Route: the longest matching route; the client pool is an implicit route back into
    // the tunnel (validation keeps user routes out of the pool, so it wins any tie).
    let best_route = input
        .routes
        .iter()
        .filter(|r| v4_contains(&r.destination, dst))
        .max_by_key(|r| r.destination.prefix_len());
    let pool_len = input
        .client_cidr
        .contains(&dst)
        .then(|| input.client_cidr.prefix_len());
    let via_target = match (best_route, pool_len) {
        (None, None) => return Decision::Drop(DropReason::NoRoute),
        (Some(r), Some(p)) => (r.destination.prefix_len() > p).then_some(r),
        (Some(r), None) => Some(r),
        (None, Some(_)) => None,
    };
    let routed = match via_target {
        None if !live_clients.contains(&dst) => {
            return Decision::Drop(DropReason::ClientUnreachable)
        }
        None => Decision::ClientToClient,
        Some(route) => {
            let found = input
                .target_networks
                .iter()
                .enumerate()
                .find(|(_, t)| t.name == route.target_network);
            let Some((target_index, t)) = found else {
                return Decision::Drop(DropReason::BadTarget);
            };
            Decision::Forward {
                target_index,
                target_name: t.name.clone(),
                snat: t.snat_address,
            }
        }
    };

    // (c) Security groups: no group applied allows everything; otherwise any rule of any
    // applied group must match.
    if !input.applied_security_groups.is_empty() {
        let allowed = input
            .applied_security_groups
            .iter()
            .flat_map(|name| {
                input
                    .security_groups
                    .iter()
                    .filter(move |g| &g.name == name)
            })
            .flat_map(|g| g.egress.iter())
            .any(|rule| sg_rule_matches(rule, dst, proto, dport));
        if !allowed {
            return Decision::Drop(DropReason::SecurityGroup);
        }
    }

    // (d) Protocols the NAT can translate.
    match (proto, icmp_type) {
        (PROTO_TCP | PROTO_UDP, _) => routed,
        (PROTO_ICMP, Some(ICMP_ECHO_REQUEST)) => routed,
        _ => Decision::Drop(DropReason::UnsupportedProtocol),
    }
}

fn sg_rule_matches(rule: &SgRule, dst: Ipv4Addr, proto: u8, dport: u16) -> bool {
    if !v4_contains(&rule.destination, dst) {
        return false;
    }
    let (from, to) = rule.port_range();
    match rule.protocol {
        Proto::All => true,
        Proto::Icmp => proto == PROTO_ICMP,
        Proto::Tcp => proto == PROTO_TCP && from <= dport && dport <= to,
        Proto::Udp => proto == PROTO_UDP && from <= dport && dport <= to,
    }
}

/// IPv6 entries never match an IPv4 packet.
fn v4_contains(net: &IpNet, dst: Ipv4Addr) -> bool {
    match net {
        IpNet::V4(n) => n.contains(&dst),
        IpNet::V6(_) => false,
    }
}
