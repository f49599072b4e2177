//! Policy checks for a new (or re-validated) flow: authorization, route, security groups.
//! Every lookup reads the slot chosen once per packet, so a packet never mixes generations.
use aya_ebpf::btf_maps::lpm_trie::Key;
use portcullis_common::{
    sg_flags, AuthzValue, ClientInfo, DropReason, PortRange, RouteValue, SgNode, Target,
    GROUP_WORDS, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SG_SEARCH_STEPS, TARGET_TUNNEL,
};

use crate::{
    AUTHZ_V4_0, AUTHZ_V4_1, CLIENTS, POLICY_ACTIVE, POLICY_META, ROUTES_V4_0, ROUTES_V4_1,
    SG_RANGES_0, SG_RANGES_1, SG_V4_0, SG_V4_1, TARGETS_0, TARGETS_1,
};

/// The policy generation a packet is evaluated under.
#[derive(Clone, Copy)]
pub struct Generation {
    pub number: u32,
    pub slot: u32,
}

#[inline(always)]
pub fn active() -> Generation {
    let number = POLICY_ACTIVE.get(0).copied().unwrap_or(0);
    Generation {
        number,
        slot: number & 1,
    }
}

#[inline(always)]
fn authz(g: Generation, dst: [u8; 4]) -> Option<&'static AuthzValue> {
    let k = Key::new(32, dst);
    if g.slot == 0 {
        AUTHZ_V4_0.get(&k)
    } else {
        AUTHZ_V4_1.get(&k)
    }
}

#[inline(always)]
fn route(g: Generation, dst: [u8; 4]) -> Option<&'static RouteValue> {
    let k = Key::new(32, dst);
    if g.slot == 0 {
        ROUTES_V4_0.get(&k)
    } else {
        ROUTES_V4_1.get(&k)
    }
}

#[inline(always)]
fn sg_node(g: Generation, dst: [u8; 4]) -> Option<&'static SgNode> {
    let k = Key::new(32, dst);
    if g.slot == 0 {
        SG_V4_0.get(&k)
    } else {
        SG_V4_1.get(&k)
    }
}

#[inline(always)]
fn sg_range(g: Generation, i: u32) -> Option<&'static PortRange> {
    if g.slot == 0 {
        SG_RANGES_0.get(i)
    } else {
        SG_RANGES_1.get(i)
    }
}

#[inline(always)]
pub fn target(g: Generation, i: u32) -> Option<&'static Target> {
    if g.slot == 0 {
        TARGETS_0.get(i)
    } else {
        TARGETS_1.get(i)
    }
}

/// Binary search of a sorted, disjoint range list for `port`.
#[inline(always)]
fn ranges_contain(g: Generation, off: u32, len: u32, port: u16) -> bool {
    let mut lo = 0u32;
    let mut hi = len; // search [lo, hi)
    let mut i = 0;
    while i < SG_SEARCH_STEPS {
        if lo >= hi {
            return false;
        }
        let mid = lo + (hi - lo) / 2;
        let Some(r) = sg_range(g, off + mid) else {
            return false;
        };
        if port < r.lo {
            hi = mid;
        } else if port > r.hi {
            lo = mid + 1;
        } else {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn sg_allows(g: Generation, dst: [u8; 4], proto: u8, dport: u16) -> bool {
    let Some(n) = sg_node(g, dst) else {
        return false;
    };
    if n.flags & sg_flags::ANY != 0 {
        return true;
    }
    match proto {
        PROTO_ICMP => n.flags & sg_flags::ICMP != 0,
        PROTO_TCP => ranges_contain(g, n.tcp_off, n.tcp_len, dport),
        PROTO_UDP => ranges_contain(g, n.udp_off, n.udp_len, dport),
        _ => false,
    }
}

/// Authorization (AWS semantics), route, then security groups, in that order. Returns the
/// target index ([`TARGET_TUNNEL`] for client-to-client). A plain index rather than an enum
/// carrying the `Target`: copying an enum with an unused payload makes LLVM spill undefined
/// registers, which the verifier rejects.
#[inline(always)]
pub fn check(
    g: Generation,
    client: &ClientInfo,
    dst: [u8; 4],
    proto: u8,
    dport: u16,
) -> Result<u32, DropReason> {
    // One longest-prefix lookup; the entry holds every rule at exactly that prefix.
    let Some(rule) = authz(g, dst) else {
        return Err(DropReason::NoAuthzRule);
    };
    if rule.all_users == 0 {
        let mut hit = 0u32;
        let mut w = 0;
        while w < GROUP_WORDS {
            hit |= rule.groups[w] & client.groups[w];
            w += 1;
        }
        if hit == 0 {
            return Err(DropReason::NotAuthorized);
        }
    }
    let Some(r) = route(g, dst) else {
        return Err(DropReason::NoRoute);
    };
    let target_idx = r.target;
    // Client-to-client: the destination must be a live session (part of routing).
    if target_idx == TARGET_TUNNEL && unsafe { CLIENTS.get(crate::keys::client_key(dst)) }.is_none()
    {
        return Err(DropReason::ClientUnreachable);
    }
    let sg_enabled = POLICY_META.get(g.slot).map(|m| m.sg_enabled).unwrap_or(0);
    if sg_enabled != 0 && !sg_allows(g, dst, proto, dport) {
        return Err(DropReason::SecurityGroup);
    }
    if target_idx == TARGET_TUNNEL {
        return Ok(TARGET_TUNNEL);
    }
    match target(g, target_idx) {
        Some(t) if t.valid != 0 => Ok(target_idx),
        _ => Err(DropReason::BadTarget),
    }
}
