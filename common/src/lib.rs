//! Types shared by the XDP programs (`ebpf/`) and the agent.
//!
//! Everything here is `#[repr(C)]`, has explicit padding, no `bool`/`Option`, and a
//! compile-time size check, so the layout the kernel sees is the layout the agent writes.
//! With the `user` feature the types also implement `aya::Pod` and `bytemuck::Pod`
//! (the latter rejects any implicit padding at compile time).
//!
//! Session and policy keys store addresses as network-order bytes in 16-byte fields: IPv4
//! uses the first four bytes and `family = FAMILY_V4`. The per-packet flow maps do not: their
//! key is IPv4 only ([`FlowKey`], 16 bytes), because the established fast path pays for every
//! byte of it on every packet; IPv6 flows will get maps of their own (as Cilium keeps
//! `ct4`/`ct6`), not a wider key for all.
#![no_std]

use core::mem::size_of;

/// Names of the pinned maps, as they appear under `/sys/fs/bpf/portcullis/<endpoint>/`.
pub mod map_names {
    pub const CLIENTS: &str = "clients";
    pub const POLICY_ACTIVE: &str = "policy_active";
    pub const POLICY_META: &str = "policy_meta";
    pub const AUTHZ_V4: [&str; 2] = ["authz_v4_0", "authz_v4_1"];
    pub const ROUTES_V4: [&str; 2] = ["routes_v4_0", "routes_v4_1"];
    pub const SG_V4: [&str; 2] = ["sg_v4_0", "sg_v4_1"];
    pub const SG_RANGES: [&str; 2] = ["sg_ranges_0", "sg_ranges_1"];
    pub const TARGETS: [&str; 2] = ["targets_0", "targets_1"];
    pub const CONNTRACK: &str = "conntrack";
    pub const NAT_REV: &str = "nat_rev";
    pub const CLIENTS_EPOCH: &str = "clients_epoch";
    pub const FLOWS_OPENED: &str = "flows_opened";
    pub const FLOWS_CLOSED: &str = "flows_closed";
    pub const EGRESS_PORTS: &str = "egress_ports";
    pub const DROPS: &str = "drop_counters";
    pub const EVENTS_COUNTERS: &str = "event_counters";
    pub const SESSION_STATS: &str = "session_stats";
    pub const DENY_EVENTS: &str = "deny_events";
    pub const DENY_BUCKET: &str = "deny_bucket";
    /// Every map the data path owns, for pinning and cleanup.
    pub const ALL: [&str; 24] = [
        CLIENTS,
        POLICY_ACTIVE,
        POLICY_META,
        AUTHZ_V4[0],
        AUTHZ_V4[1],
        ROUTES_V4[0],
        ROUTES_V4[1],
        SG_V4[0],
        SG_V4[1],
        SG_RANGES[0],
        SG_RANGES[1],
        TARGETS[0],
        TARGETS[1],
        CONNTRACK,
        NAT_REV,
        CLIENTS_EPOCH,
        FLOWS_OPENED,
        FLOWS_CLOSED,
        EGRESS_PORTS,
        DROPS,
        EVENTS_COUNTERS,
        SESSION_STATS,
        DENY_EVENTS,
        DENY_BUCKET,
    ];
}

/// Program names (the Rust function names in `ebpf/src/main.rs`).
pub const PROG_TAP: &str = "portcullis_tap";
pub const PROG_EGRESS: &str = "portcullis_egress";
/// An XDP program that only returns XDP_PASS: the baseline in benchmarks.
pub const PROG_BASELINE: &str = "portcullis_baseline_pass";

/// Load-time globals (set with `EbpfLoader::override_global`).
pub mod globals {
    /// ifindex of the TAP device (u32).
    pub const TAP_IFINDEX: &str = "TAP_IFINDEX";
    /// MAC of the TAP device, `[u8; 8]` (first 6 bytes used).
    pub const TAP_MAC: &str = "TAP_MAC";
    /// Deny events allowed per second per CPU (u64); 0 disables deny events.
    pub const DENY_EVENTS_PER_SEC: &str = "DENY_EVENTS_PER_SEC";
    /// The gateway's own tunnel address, `[u8; 4]`: packets to it go to the host's stack.
    pub const GATEWAY_ADDR: &str = "GATEWAY_ADDR";
    /// What clients may reach on the gateway address, `[u32; MAX_GATEWAY_PORTS]` of
    /// [`super::gateway_port`] words, unused entries 0.
    pub const GATEWAY_PORTS: &str = "GATEWAY_PORTS";
}

/// Entries of the `GATEWAY_PORTS` global (a bounded linear scan per packet to the gateway).
pub const MAX_GATEWAY_PORTS: usize = 16;

/// One open service of the gateway address as a `GATEWAY_PORTS` word: the IP protocol in
/// bits 16..24 and the TCP/UDP port (for ICMP: the message type, 8 = echo) below. Never 0.
pub const fn gateway_port(proto: u8, port: u16) -> u32 {
    ((proto as u32) << 16) | port as u32
}

/// First two bytes of a session MAC: locally administered, "P".
pub const SESSION_MAC_PREFIX: [u8; 2] = [0x02, 0x50];

/// The Ethernet source address the agent gives a frame it writes to the TAP for the session
/// in `slot` (its peer id): the TAP program checks it against the `clients` entry of the
/// frame's source address, so a session cannot send as another one.
pub const fn session_mac(slot: u32) -> [u8; 6] {
    let s = slot.to_be_bytes();
    [
        SESSION_MAC_PREFIX[0],
        SESSION_MAC_PREFIX[1],
        s[0],
        s[1],
        s[2],
        s[3],
    ]
}

// ---- capacities -------------------------------------------------------------------------

/// Distinct groups the data path can tell apart (bits of a group bitmap).
pub const MAX_GROUPS: usize = 256;
/// Group bitmaps are `[u32; GROUP_WORDS]`: 32-bit words because an LPM-trie value must be
/// aligned to the 4-byte IPv4 key, so the authorization values cannot hold u64s.
pub const GROUP_WORDS: usize = MAX_GROUPS / 32;

/// A group bitmap: bit `i % 32` of word `i / 32` is group index `i`.
pub type GroupBits = [u32; GROUP_WORDS];

/// Set group index `i` (ignored when out of range).
pub fn group_set(bits: &mut GroupBits, i: usize) {
    if i < MAX_GROUPS {
        bits[i / 32] |= 1 << (i % 32);
    }
}

/// True when group index `i` is set.
pub fn group_test(bits: &GroupBits, i: usize) -> bool {
    i < MAX_GROUPS && bits[i / 32] & (1 << (i % 32)) != 0
}
/// Concurrent client sessions (also the number of per-session counter slots).
pub const MAX_CLIENTS: u32 = 65_536;
/// The counter slot of flows a previous agent left (`portcullis run --keep-maps`) until their
/// session comes back: no session gets it, so their counters never mix with a live one's.
pub const ORPHAN_SLOT: u32 = MAX_CLIENTS - 1;
/// Authorization-rule prefixes per generation (after merging rules with equal prefixes).
pub const MAX_AUTHZ_PREFIXES: u32 = 16_384;
pub const MAX_ROUTES: u32 = 4_096;
/// Security-group destination prefixes per generation (after the compiler's push-down).
pub const MAX_SG_PREFIXES: u32 = 16_384;
/// Port ranges per generation, shared by all security-group prefixes.
pub const MAX_SG_RANGES: u32 = 65_536;
/// Target networks (egress interfaces with their SNAT address).
pub const MAX_TARGETS: u32 = 64;
/// Default conntrack capacity; the agent may override it at load time.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Default per-client flow quota when the agent does not set one.
pub const DEFAULT_FLOWS_PER_CLIENT: u32 = 8_192;
/// Attempts at finding a free PAT port before giving up (bounded loop in the verifier).
pub const PAT_ATTEMPTS: u32 = 32;
/// Binary-search iterations over a sorted port-range list: 2^17 > MAX_SG_RANGES.
pub const SG_SEARCH_STEPS: u32 = 17;

/// Route target meaning "another client of this endpoint" (client-to-client via the TAP).
pub const TARGET_TUNNEL: u32 = u32::MAX;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

// ---- timeouts (RFC 5382 / RFC 4787 / RFC 5508 minimums or longer) --------------------------

pub const NS_PER_SEC: u64 = 1_000_000_000;
/// TCP established: RFC 5382 REQ-5 asks for at least 2 h 4 min.
pub const TCP_ESTABLISHED_TIMEOUT_NS: u64 = 7_440 * NS_PER_SEC;
/// TCP after a SYN and before the reply (embryonic) and while closing.
pub const TCP_TRANSITORY_TIMEOUT_NS: u64 = 240 * NS_PER_SEC;
/// TCP after a RST: the flow is over, keep it briefly for retransmitted RSTs.
pub const TCP_CLOSED_TIMEOUT_NS: u64 = 10 * NS_PER_SEC;
/// UDP: RFC 4787 REQ-5 asks for at least 2 min; flows that saw a reply get 5 min.
pub const UDP_TIMEOUT_NS: u64 = 120 * NS_PER_SEC;
pub const UDP_REPLIED_TIMEOUT_NS: u64 = 300 * NS_PER_SEC;
/// ICMP query mappings: RFC 5508 REQ-1 asks for at least 60 s.
pub const ICMP_TIMEOUT_NS: u64 = 60 * NS_PER_SEC;

// ---- enums ------------------------------------------------------------------------------

/// Why a packet was dropped. Append-only: the numbers are an ABI with the agent and with
/// dashboards, so a reason is never renumbered or reused.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Frame shorter than its headers claim, or cut inside a header.
    Malformed = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): clients only send IP.
    NotIp = 1,
    /// IPv6 is parsed but not yet enforced: dropped rather than passed unfiltered.
    Ipv6Unsupported = 2,
    /// IPv4 header with options (IHL > 5). Rare from clients; refusing keeps parsing simple.
    IpOptions = 3,
    /// IPv4 fragment (first or later). Stateless fragment policy would be bypassable.
    Fragment = 4,
    /// Source address is not the address of a live session.
    Spoofed = 5,
    /// No authorization rule covers the destination.
    NoAuthzRule = 6,
    /// The longest matching rule allows neither all users nor one of the client's groups.
    NotAuthorized = 7,
    /// No route to the destination.
    NoRoute = 8,
    /// No security-group egress rule allows the flow.
    SecurityGroup = 9,
    /// Conntrack table full; new flows are refused, live flows are kept.
    ConntrackFull = 10,
    /// The client already holds its quota of flows.
    FlowQuota = 11,
    /// No free SNAT port in the configured range.
    PortsExhausted = 12,
    /// The flow was allowed once, a new policy generation no longer allows it.
    PolicyRevoked = 13,
    /// Protocol the NAT cannot translate (not TCP, UDP or ICMP echo).
    UnsupportedProtocol = 14,
    /// TCP packet that would open a flow without a SYN.
    TcpNoSyn = 15,
    /// The kernel FIB has no usable route for the translated packet.
    FibLookupFailed = 16,
    /// Client-to-client destination inside the pool that is not a live session.
    ClientUnreachable = 17,
    /// Redirect target missing from the egress device map.
    RedirectFailed = 18,
    /// Target network index points nowhere (a compiler/reconciler bug, counted not hidden).
    BadTarget = 19,
    /// The source address belongs to a live session, but the frame came from another one
    /// (its source MAC names another session slot).
    ForgedSource = 20,
    /// To the gateway's pool address, on a protocol or port not in `gateway_ports`.
    GatewayPortClosed = 21,
    /// TTL <= 1 (so not forwarded) to a destination the host's FIB does not forward: one of
    /// the host's own addresses (target network, loopback, broadcast), which the kernel
    /// would deliver to its sockets, or one without a route (the FIB reports both alike).
    LocalDestination = 22,
    /// A TCP RST or FIN from the network whose sequence number is outside the window the
    /// flow has seen: a blind spoof must not close the flow.
    TcpOutOfWindow = 23,
}

impl DropReason {
    pub const COUNT: u32 = 24;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::NotIp,
        DropReason::Ipv6Unsupported,
        DropReason::IpOptions,
        DropReason::Fragment,
        DropReason::Spoofed,
        DropReason::NoAuthzRule,
        DropReason::NotAuthorized,
        DropReason::NoRoute,
        DropReason::SecurityGroup,
        DropReason::ConntrackFull,
        DropReason::FlowQuota,
        DropReason::PortsExhausted,
        DropReason::PolicyRevoked,
        DropReason::UnsupportedProtocol,
        DropReason::TcpNoSyn,
        DropReason::FibLookupFailed,
        DropReason::ClientUnreachable,
        DropReason::RedirectFailed,
        DropReason::BadTarget,
        DropReason::ForgedSource,
        DropReason::GatewayPortClosed,
        DropReason::LocalDestination,
        DropReason::TcpOutOfWindow,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// Stable snake_case name, used in logs, metrics and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotIp => "not_ip",
            DropReason::Ipv6Unsupported => "ipv6_unsupported",
            DropReason::IpOptions => "ip_options",
            DropReason::Fragment => "fragment",
            DropReason::Spoofed => "spoofed_source",
            DropReason::NoAuthzRule => "no_authorization_rule",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::NoRoute => "no_route",
            DropReason::SecurityGroup => "security_group",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::FlowQuota => "flow_quota",
            DropReason::PortsExhausted => "ports_exhausted",
            DropReason::PolicyRevoked => "policy_revoked",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::TcpNoSyn => "tcp_no_syn",
            DropReason::FibLookupFailed => "fib_lookup_failed",
            DropReason::ClientUnreachable => "client_unreachable",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::BadTarget => "bad_target",
            DropReason::ForgedSource => "forged_source",
            DropReason::GatewayPortClosed => "gateway_port_closed",
            DropReason::LocalDestination => "local_destination",
            DropReason::TcpOutOfWindow => "tcp_out_of_window",
        }
    }
}

/// Things the data path counts that are not drops. Append-only like [`DropReason`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// Packet on the TAP that matched a live conntrack entry.
    FastPath = 0,
    /// New flow admitted (conntrack entry created).
    NewFlow = 1,
    /// Source port kept by SNAT.
    PortKept = 2,
    /// Source port rewritten by PAT because the original collided.
    PortTranslated = 3,
    /// Reply translated back on a target interface.
    ReverseNat = 4,
    /// Packet on a target interface that is not ours: passed to the host untouched.
    EgressPassHost = 5,
    /// Translated packet passed to the kernel because the next hop has no neighbour entry yet.
    PassNoNeighbour = 6,
    /// Packet passed to the kernel from the TAP: to an open port of the gateway address, or
    /// with TTL <= 1 after authorization (the kernel answers ICMP time exceeded).
    PassLocal = 7,
    /// Established flow re-checked after a policy generation change and still allowed.
    Revalidated = 8,
    /// Client-to-client packet sent back out through the TAP.
    ClientToClient = 9,
    /// ICMP error translated back to the client.
    IcmpErrorTranslated = 10,
    /// Deny event not emitted because of the rate limit or a full ring buffer.
    DenyEventSuppressed = 11,
    /// Expired conntrack entry found by a packet and revived by re-checking the policy.
    Revived = 12,
    /// Reply to a kept-port flow that a socket of the gateway host owns: left to the host.
    HostSocketWins = 13,
}

impl Event {
    pub const COUNT: u32 = 14;
    pub const ALL: [Event; Self::COUNT as usize] = [
        Event::FastPath,
        Event::NewFlow,
        Event::PortKept,
        Event::PortTranslated,
        Event::ReverseNat,
        Event::EgressPassHost,
        Event::PassNoNeighbour,
        Event::PassLocal,
        Event::Revalidated,
        Event::ClientToClient,
        Event::IcmpErrorTranslated,
        Event::DenyEventSuppressed,
        Event::Revived,
        Event::HostSocketWins,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Event::FastPath => "fast_path",
            Event::NewFlow => "new_flow",
            Event::PortKept => "snat_port_kept",
            Event::PortTranslated => "snat_port_translated",
            Event::ReverseNat => "reverse_nat",
            Event::EgressPassHost => "egress_pass_host",
            Event::PassNoNeighbour => "pass_no_neighbour",
            Event::PassLocal => "pass_local",
            Event::Revalidated => "revalidated",
            Event::ClientToClient => "client_to_client",
            Event::IcmpErrorTranslated => "icmp_error_translated",
            Event::DenyEventSuppressed => "deny_event_suppressed",
            Event::Revived => "revived",
            Event::HostSocketWins => "host_socket_wins",
        }
    }
}

/// Conntrack TCP state (`CtEntry::state`).
pub mod ct_state {
    /// UDP/ICMP: only the client has spoken. TCP: SYN sent.
    pub const NEW: u8 = 0;
    /// A reply was seen (TCP: SYN-ACK / ACK exchange done).
    pub const ESTABLISHED: u8 = 1;
    /// TCP FIN seen in either direction.
    pub const CLOSING: u8 = 2;
    /// TCP RST seen.
    pub const CLOSED: u8 = 3;
}

/// `CtEntry::flags` bits.
pub mod ct_flags {
    /// The flow's generation re-check failed: packets are dropped as `PolicyRevoked`.
    pub const REVOKED: u8 = 1;
    /// Client-to-client flow: no address translation.
    pub const LOCAL: u8 = 2;
    /// `NatRev::seq_in_end` holds the network side's sequence number.
    pub const REPLY_SEQ: u8 = 4;
    /// `CtEntry::fib_*` hold a next hop looked up in the [`super::FIB_TICK_SHIFT`] tick of
    /// `last_seen_ns`. Whoever moves `last_seen_ns` into a later tick clears it, so the
    /// flag alone says the result is from the current tick: no timestamp is stored.
    pub const FIB_VALID: u8 = 8;
}

/// How far from the network side's tracked sequence number an RST or FIN may be and still
/// close the flow. Without the window scale of the handshake the exact receive window is
/// unknown; 1 MiB covers what a server may have in flight beyond the last segment the
/// gateway saw, and leaves a blind spoofer 1 chance in 2,048 per packet (not 1 in 1).
pub const TCP_RST_WINDOW: u32 = 1 << 20;

/// Idle timeout of a conntrack entry; one function so the XDP program and the agent's
/// garbage collector agree.
pub const fn flow_timeout_ns(proto: u8, state: u8) -> u64 {
    match proto {
        PROTO_TCP => match state {
            ct_state::ESTABLISHED => TCP_ESTABLISHED_TIMEOUT_NS,
            ct_state::CLOSED => TCP_CLOSED_TIMEOUT_NS,
            _ => TCP_TRANSITORY_TIMEOUT_NS,
        },
        PROTO_UDP => {
            if state == ct_state::ESTABLISHED {
                UDP_REPLIED_TIMEOUT_NS
            } else {
                UDP_TIMEOUT_NS
            }
        }
        _ => ICMP_TIMEOUT_NS,
    }
}

// ---- map keys and values ----------------------------------------------------------------

/// An address shaped for IPv6; IPv4 uses bytes 0..4 in network order, the rest zero.
pub type Addr = [u8; 16];

pub const fn v4_addr(a: [u8; 4]) -> Addr {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Key of the `clients` map: a session's tunnel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of the `clients` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Group bitmap: bit `i` set = member of group index `i` (as numbered by the compiler).
    pub groups: GroupBits,
    /// Index into the per-session arrays (`session_stats`, `flows_opened`, `flows_closed`).
    pub slot: u32,
    /// Maximum concurrent flows for this client.
    pub max_flows: u32,
}

/// Value of the authorization LPM tries (key: `Key<[u8; 4]>`, destination prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthzValue {
    /// Groups named by rules at exactly this prefix.
    pub groups: GroupBits,
    /// 1 if a rule at exactly this prefix allows all users.
    pub all_users: u8,
    pub _pad: [u8; 3],
}

/// Value of the route LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteValue {
    /// Index into `targets_N`, or [`TARGET_TUNNEL`].
    pub target: u32,
    pub _pad: u32,
}

/// A target network: where translated packets leave and with which source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Interface the target network is reached through (for the FIB lookup).
    pub ifindex: u32,
    /// 1 when this slot is configured.
    pub valid: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    /// SNAT source address.
    pub snat_addr: Addr,
    /// PAT range used when the client's source port collides (inclusive).
    pub port_min: u16,
    pub port_max: u16,
    pub _pad2: u32,
}

/// `SgNode::flags` bits.
pub mod sg_flags {
    /// An "all protocols" rule covers this prefix.
    pub const ANY: u32 = 1;
    /// ICMP is allowed to this prefix.
    pub const ICMP: u32 = 2;
}

/// Value of the security-group LPM tries. The compiler pushes every rule down into all
/// longer prefixes it contains, so one longest-prefix lookup yields the union of every rule
/// covering the destination. Port ranges are sorted, disjoint and coalesced, stored in
/// `sg_ranges_N[off .. off + len]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgNode {
    pub flags: u32,
    pub tcp_off: u32,
    pub tcp_len: u32,
    pub udp_off: u32,
    pub udp_len: u32,
    pub _pad: u32,
}

/// One inclusive port range in `sg_ranges_N`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Per-generation settings (`policy_meta[slot]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyMeta {
    /// The generation number written into this slot.
    pub generation: u32,
    /// 1 when at least one security group applies (otherwise all egress is allowed).
    pub sg_enabled: u8,
    pub _pad: [u8; 3],
}

/// An IPv4 flow, oriented the way the packet travels: addresses in network order, ports
/// host order. For ICMP echo the identifier is the client-side port and the other port is 0.
///
/// 16 bytes: the kernel's hash-table element header is 48, so header and key fill exactly
/// one cache line and the value starts on the next (see docs/datapath.md, "Flow maps").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `conntrack` map, keyed by the client → network [`FlowKey`]: the forward
/// half of a flow, everything the established fast path on the TAP reads or writes, and
/// nothing else, in one 64-byte cache line. The reply direction's counters and TCP window
/// and the flow's cold facts live in its [`NatRev`] (the reply half), which the fast path
/// never touches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` of the last packet in either direction (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Translated source address (equal to the client address for client-to-client flows).
    pub nat_addr: [u8; 4],
    /// Translated source port / ICMP identifier.
    pub nat_port: u16,
    /// One of [`ct_state`].
    pub state: u8,
    /// [`ct_flags`] bits.
    pub flags: u8,
    /// Policy generation the flow was last checked against.
    pub generation: u32,
    /// Session slot of the owning client.
    pub slot: u32,
    /// The `clients_epoch` under which the owner's `clients` entry was last seen with this
    /// `slot`. While it is current (and the frame's MAC names `slot`), the fast path skips
    /// the `clients` lookup: the agent bumps the epoch after every change to `clients`.
    pub clients_epoch: u32,
    /// TCP: the client's next sequence number (highest seq + length seen going out).
    pub seq_out_end: u32,
    /// Next hop of the translated packet, valid while `ct_flags::FIB_VALID` is set: the fast
    /// path reuses it within one [`FIB_TICK_SHIFT`] tick instead of calling
    /// `bpf_fib_lookup` on every packet.
    pub fib_ifindex: u32,
    pub fib_dmac: [u8; 6],
    pub fib_smac: [u8; 6],
}

/// A cached FIB result serves the packets of the 2^30 ns (about 1.07 s) tick of
/// `bpf_ktime_get_ns()` it was looked up in: that bounds how stale a next hop can be after
/// a kernel route or neighbour change (a policy change clears the cache at once).
pub const FIB_TICK_SHIFT: u32 = 30;

/// Value of the `nat_rev` map, keyed by the reply's [`FlowKey`] as it arrives on the
/// target interface: the reply half of a flow. Inserting it with `BPF_NOEXIST` is the SNAT
/// port claim; it names the forward key, holds what only the reply direction writes (so
/// the two directions' CPUs mostly write different cache lines) and the flow's cold facts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatRev {
    pub fwd: FlowKey,
    /// `bpf_ktime_get_ns()` when the flow was admitted.
    pub created_ns: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// TCP: the network side's next sequence number, valid once `ct_flags::REPLY_SEQ` is
    /// set in the forward half (by a SYN-ACK that acknowledges the client's SYN). RST and
    /// FIN from the network are accepted only near it (see `TCP_RST_WINDOW`).
    pub seq_in_end: u32,
    /// Target network index, or [`TARGET_TUNNEL`].
    pub target: u32,
}

/// Per-session counters (`session_stats`, per CPU, indexed by session slot).
/// Ingress = client → network, egress = network → client, as in AWS connection logs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionStats {
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

/// Record in the `deny_events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyEvent {
    pub timestamp_ns: u64,
    pub flow: FlowKey,
    pub slot: u32,
    /// A [`DropReason`].
    pub reason: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU token bucket limiting deny events (`deny_bucket[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// No session owns this slot (used in deny events for spoofed sources).
pub const NO_SLOT: u32 = u32::MAX;

// Compile-time layout checks: a change here is an ABI change with pinned maps.
const _: () = {
    assert!(size_of::<ClientKey>() == 20);
    assert!(size_of::<ClientInfo>() == 40);
    assert!(size_of::<AuthzValue>() == 36);
    assert!(size_of::<RouteValue>() == 8);
    assert!(size_of::<Target>() == 32);
    assert!(size_of::<SgNode>() == 24);
    assert!(size_of::<PortRange>() == 4);
    assert!(size_of::<PolicyMeta>() == 8);
    assert!(size_of::<FlowKey>() == 16);
    // One cache line: the established fast path touches no other line of the value.
    assert!(size_of::<CtEntry>() == 64);
    assert!(size_of::<NatRev>() == 48);
    assert!(size_of::<SessionStats>() == 32);
    assert!(size_of::<DenyEvent>() == 32);
    assert!(size_of::<TokenBucket>() == 16);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: #[repr(C)], only integer fields and arrays, explicit padding
            // (bytemuck's derive below would reject hidden padding).
            unsafe impl aya::Pod for $t {}
            unsafe impl bytemuck::Zeroable for $t {}
            unsafe impl bytemuck::Pod for $t {}
        )*};
    }
    pod!(
        ClientKey,
        ClientInfo,
        AuthzValue,
        RouteValue,
        Target,
        SgNode,
        PortRange,
        PolicyMeta,
        FlowKey,
        CtEntry,
        NatRev,
        SessionStats,
        DenyEvent,
        TokenBucket,
    );

    // bytemuck::Pod by hand does not check padding; these do, by summing field sizes.
    const _: () = {
        assert!(size_of::<CtEntry>() == 3 * 8 + 4 + 2 + 1 + 1 + 5 * 4 + 6 + 6);
        assert!(size_of::<FlowKey>() == 4 + 4 + 2 + 2 + 1 + 3);
        assert!(size_of::<NatRev>() == 16 + 3 * 8 + 4 + 4);
        assert!(size_of::<Target>() == 4 + 1 + 1 + 2 + 16 + 2 + 2 + 4);
        assert!(size_of::<DenyEvent>() == 8 + 16 + 4 + 1 + 3);
    };

    impl FlowKey {
        pub fn v4(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
            FlowKey {
                src,
                dst,
                sport,
                dport,
                proto,
                _pad: [0; 3],
            }
        }
        pub fn src_v4(&self) -> core::net::Ipv4Addr {
            core::net::Ipv4Addr::new(self.src[0], self.src[1], self.src[2], self.src[3])
        }
        pub fn dst_v4(&self) -> core::net::Ipv4Addr {
            core::net::Ipv4Addr::new(self.dst[0], self.dst[1], self.dst[2], self.dst[3])
        }
    }

    impl ClientKey {
        pub fn v4(a: core::net::Ipv4Addr) -> Self {
            ClientKey {
                addr: v4_addr(a.octets()),
                family: FAMILY_V4,
                _pad: [0; 3],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_numbered_densely_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(DropReason::from_u8(i as u8), Some(*r));
        }
        assert_eq!(DropReason::from_u8(DropReason::COUNT as u8), None);
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }

    #[test]
    fn timeouts_meet_rfc_minimums() {
        assert!(
            flow_timeout_ns(PROTO_TCP, ct_state::ESTABLISHED) >= (2 * 3600 + 4 * 60) * NS_PER_SEC
        );
        assert!(flow_timeout_ns(PROTO_UDP, ct_state::NEW) >= 120 * NS_PER_SEC);
        assert!(flow_timeout_ns(PROTO_ICMP, ct_state::NEW) >= 60 * NS_PER_SEC);
        assert!(
            flow_timeout_ns(PROTO_TCP, ct_state::CLOSED)
                < flow_timeout_ns(PROTO_TCP, ct_state::NEW)
        );
    }
}
