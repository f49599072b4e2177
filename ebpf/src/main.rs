//! Portcullis XDP programs. This file holds only the maps and thin entry points; the
//! logic lives in modules by concern (packet parsing, checksums, policy, conntrack/NAT).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod csum;
mod ct;
mod egress;
mod keys;
mod nat;
mod packet;
mod policy;
mod stats;
mod tap;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf},
    macros::{btf_map, xdp},
    programs::XdpContext,
    Global,
};
use portcullis_common::{
    AuthzValue, ClientInfo, ClientKey, CtEntry, DenyEvent, FlowKey, NatRev, PolicyMeta, PortRange,
    RouteValue, SessionStats, SgNode, Target, TokenBucket, DEFAULT_MAX_FLOWS, MAX_AUTHZ_PREFIXES,
    MAX_CLIENTS, MAX_GATEWAY_PORTS, MAX_ROUTES, MAX_SG_PREFIXES, MAX_SG_RANGES, MAX_TARGETS,
};

// ---- load-time globals --------------------------------------------------------------------

#[unsafe(no_mangle)]
static TAP_IFINDEX: Global<u32> = Global::new(0);
/// First six bytes used; eight keep the global naturally aligned.
#[unsafe(no_mangle)]
static TAP_MAC: Global<[u8; 8]> = Global::new([0; 8]);
/// Deny events per second per CPU (token bucket refill and burst); 0 disables them.
#[unsafe(no_mangle)]
static DENY_EVENTS_PER_SEC: Global<u64> = Global::new(100);

// ---- maps -----------------------------------------------------------------------------------

#[btf_map(name = "clients")]
static CLIENTS: HashMap<ClientKey, ClientInfo, { MAX_CLIENTS as usize }> = HashMap::new();

/// Element 0: the active policy generation; its low bit selects the slot below.
#[btf_map(name = "policy_active")]
static POLICY_ACTIVE: Array<u32, 1> = Array::new();
#[btf_map(name = "policy_meta")]
static POLICY_META: Array<PolicyMeta, 2> = Array::new();

#[btf_map(name = "authz_v4_0")]
static AUTHZ_V4_0: LpmTrie<
    [u8; 4],
    AuthzValue,
    { MAX_AUTHZ_PREFIXES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "authz_v4_1")]
static AUTHZ_V4_1: LpmTrie<
    [u8; 4],
    AuthzValue,
    { MAX_AUTHZ_PREFIXES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "routes_v4_0")]
static ROUTES_V4_0: LpmTrie<
    [u8; 4],
    RouteValue,
    { MAX_ROUTES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "routes_v4_1")]
static ROUTES_V4_1: LpmTrie<
    [u8; 4],
    RouteValue,
    { MAX_ROUTES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "sg_v4_0")]
static SG_V4_0: LpmTrie<
    [u8; 4],
    SgNode,
    { MAX_SG_PREFIXES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "sg_v4_1")]
static SG_V4_1: LpmTrie<
    [u8; 4],
    SgNode,
    { MAX_SG_PREFIXES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();
#[btf_map(name = "sg_ranges_0")]
static SG_RANGES_0: Array<PortRange, { MAX_SG_RANGES as usize }> = Array::new();
#[btf_map(name = "sg_ranges_1")]
static SG_RANGES_1: Array<PortRange, { MAX_SG_RANGES as usize }> = Array::new();
#[btf_map(name = "targets_0")]
static TARGETS_0: Array<Target, { MAX_TARGETS as usize }> = Array::new();
#[btf_map(name = "targets_1")]
static TARGETS_1: Array<Target, { MAX_TARGETS as usize }> = Array::new();

/// Forward flows (client → network), keyed as the client sent them: the forward half of
/// each flow. A plain hash map, not an LRU: live flows are never evicted behind the user's
/// back; the agent expires them. Preallocated, so with the 16-byte key and the 64-byte
/// value every element is two whole cache lines (48-byte header + key, then the value).
#[btf_map(name = "conntrack")]
static CONNTRACK: HashMap<FlowKey, CtEntry, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();
/// Reply key (as it arrives from the network) → the reply half of the flow (its forward
/// key, reply counters, cold facts). Inserting with BPF_NOEXIST is the SNAT port claim.
#[btf_map(name = "nat_rev")]
static NAT_REV: HashMap<FlowKey, NatRev, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();
/// Element 0: bumped by the agent after every change to `clients` (see `tap::run`).
#[btf_map(name = "clients_epoch")]
static CLIENTS_EPOCH: Array<u32, 1> = Array::new();
/// Flows ever opened per session slot (written by XDP with atomic adds only).
#[btf_map(name = "flows_opened")]
static FLOWS_OPENED: Array<u64, { MAX_CLIENTS as usize }> = Array::new();
/// Flows released per session slot (written by the agent's garbage collector only).
#[btf_map(name = "flows_closed")]
static FLOWS_CLOSED: Array<u64, { MAX_CLIENTS as usize }> = Array::new();

/// Interfaces XDP may redirect to: the target interfaces and the TAP, keyed by ifindex.
#[btf_map(name = "egress_ports")]
static EGRESS_PORTS: DevMapHash<{ MAX_TARGETS as usize + 1 }> = DevMapHash::new();

#[btf_map(name = "drop_counters")]
static DROP_COUNTERS: PerCpuArray<u64, 32> = PerCpuArray::new();
#[btf_map(name = "event_counters")]
static EVENT_COUNTERS: PerCpuArray<u64, 32> = PerCpuArray::new();
#[btf_map(name = "session_stats")]
static SESSION_STATS: PerCpuArray<SessionStats, { MAX_CLIENTS as usize }> = PerCpuArray::new();
#[btf_map(name = "deny_events")]
static DENY_EVENTS: RingBuf<DenyEvent, { 1 << 20 }> = RingBuf::new();
#[btf_map(name = "deny_bucket")]
static DENY_BUCKET: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

// ---- entry points ---------------------------------------------------------------------------

/// Client → network, attached to the TAP the agent writes decrypted packets into.
#[xdp]
pub fn portcullis_tap(ctx: XdpContext) -> u32 {
    match tap::run(&ctx) {
        Ok(action) => action,
        Err(reason) => stats::drop(reason),
    }
}

/// Network → client, attached to every target-network interface.
#[xdp]
pub fn portcullis_egress(ctx: XdpContext) -> u32 {
    match egress::run(&ctx) {
        Ok(action) => action,
        Err(reason) => stats::drop(reason),
    }
}

/// Benchmark baseline: the cost of running any XDP program at all.
#[xdp]
pub fn portcullis_baseline_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The gateway's tunnel address (the TAP's address): clients reach the host only there.
#[unsafe(no_mangle)]
static GATEWAY_ADDR: Global<[u8; 4]> = Global::new([0; 4]);
/// Which protocols and ports of the gateway address are open (`portcullis_common::
/// gateway_port` words, 0 = unused); the agent sets it from `gateway_ports`.
#[unsafe(no_mangle)]
static GATEWAY_PORTS: Global<[u32; MAX_GATEWAY_PORTS]> = Global::new([0; MAX_GATEWAY_PORTS]);
