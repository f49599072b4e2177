//! Validation and compilation of a [`PolicyInput`] into the entries of the data-path maps.
//!
//! Validation reports every problem at once, each with the field path and the fix, so an
//! administrator fixes a config file in one round. Compilation is deterministic: the same
//! input (and the same previous group numbering) gives the same entries, which keeps the
//! reconciler's diffs small.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use bytemuck::Zeroable;
use ipnet::{IpNet, Ipv4Net};
use portcullis_common::{
    group_set, v4_addr, AuthzValue, GroupBits, PolicyMeta, PortRange, RouteValue, SgNode, Target,
    FAMILY_V4, GROUP_WORDS, MAX_AUTHZ_PREFIXES, MAX_GROUPS, MAX_ROUTES, MAX_TARGETS, TARGET_TUNNEL,
};

use super::model::{PolicyInput, Proto};
use super::prefix::contains;

mod delta;
mod errors;
pub mod incremental;
#[cfg(test)]
mod incremental_tests;
mod security_groups;

pub use delta::PolicyDelta;
use errors::Diags;
pub use errors::{CompileError, ErrorKind};
use security_groups::{compile_security_groups, SgEntry};

/// Smallest and largest client pool accepted. AWS allows /12 ... /22; the upper bound here
/// is /30 so small labs work, and it must leave room for the gateway and one client.
pub const CLIENT_CIDR_MIN_LEN: u8 = 12;
pub const CLIENT_CIDR_MAX_LEN: u8 = 30;

/// An LPM-trie entry: `(prefix_len, network address, value)`.
pub type LpmEntry<V> = (u8, [u8; 4], V);
/// Key of the IPv4 LPM tries: `(prefix_len, network address)`.
pub type LpmKey = (u8, [u8; 4]);

/// The map contents for one policy generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub client_cidr: Ipv4Net,
    pub gateway_addr: Ipv4Addr,
    /// Group name -> bit index (see [`portcullis_common::GroupBits`]). Only groups named by
    /// some authorization rule get a bit: other groups cannot change a decision.
    pub group_bits: BTreeMap<String, u16>,
    /// One entry per distinct rule prefix: `(prefix_len, network, value)`.
    pub authz: Vec<LpmEntry<AuthzValue>>,
    /// Routes, including the implicit `client_cidr -> TARGET_TUNNEL` (client-to-client).
    pub routes: Vec<LpmEntry<RouteValue>>,
    /// Index = target index used in [`RouteValue::target`].
    pub targets: Vec<Target>,
    /// Names of `targets`, same indices (for logs and the reference evaluator's decisions).
    pub target_names: Vec<String>,
    /// False when no security group is applied: all egress is allowed.
    pub sg_enabled: bool,
    /// Security-group prefixes after push-down (each node holds every rule covering it).
    pub sg_nodes: Vec<LpmEntry<SgNode>>,
    /// Port ranges referenced by `sg_nodes` through `(off, len)`.
    pub sg_ranges: Vec<PortRange>,
    /// Diagnostics that did not block compilation (all have [`ErrorKind::is_warning`]).
    pub warnings: Vec<CompileError>,
}

/// Compile with groups numbered from scratch (sorted by name). See [`compile_with_previous`].
pub fn compile(
    input: &PolicyInput,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<CompiledPolicy, Vec<CompileError>> {
    compile_with_previous(input, resolve_ifindex, None)
}

/// Compile, keeping the group bits of `previous_group_bits` (the live generation's
/// numbering) for groups still referenced.
///
/// Why: client group bitmaps live in the `clients` map, which is not double-buffered. If a
/// new generation renumbered groups, live sessions would be judged with bits that mean other
/// groups until their bitmaps are rewritten. Kept bits mean surviving groups keep working;
/// new groups take bits no live bitmap can hold (fail closed until rewritten). Only when no
/// never-used bit is left is a freed bit reused, and that is reported as a warning.
///
/// On error the vector holds every diagnostic (warnings included).
pub fn compile_with_previous(
    input: &PolicyInput,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
    previous_group_bits: Option<&BTreeMap<String, u16>>,
) -> Result<CompiledPolicy, Vec<CompileError>> {
    let mut d = Diags::default();

    // ---- client pool and gateway -------------------------------------------------------
    let pool = input.client_cidr.trunc();
    if pool != input.client_cidr {
        d.push(
            "client_cidr",
            ErrorKind::HostBitsSet {
                given: IpNet::V4(input.client_cidr),
                canonical: IpNet::V4(pool),
            },
        );
    }
    if !(CLIENT_CIDR_MIN_LEN..=CLIENT_CIDR_MAX_LEN).contains(&pool.prefix_len()) {
        d.push(
            "client_cidr",
            ErrorKind::ClientCidrSize {
                len: pool.prefix_len(),
            },
        );
    }
    let gw = input.gateway_addr;
    if !pool.contains(&gw) || gw == pool.network() || gw == pool.broadcast() {
        d.push(
            "gateway_addr",
            ErrorKind::GatewayOutsidePool {
                gateway: gw,
                pool,
                suggested: pool.hosts().next().unwrap_or(pool.network()),
            },
        );
    }
    let pool_key = (pool.prefix_len(), u32::from(pool.network()));

    // ---- target networks ---------------------------------------------------------------
    let mut target_index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut targets = Vec::with_capacity(input.target_networks.len());
    let mut target_names = Vec::with_capacity(input.target_networks.len());
    for (i, t) in input.target_networks.iter().enumerate() {
        let p = format!("target_networks[{i}]");
        d.check_name(&format!("{p}.name"), &t.name, &mut target_index, i, |j| {
            format!("target_networks[{j}]")
        });
        let ifindex = match resolve_ifindex(&t.interface) {
            Some(ix) => ix,
            None => {
                d.push(
                    format!("{p}.interface"),
                    ErrorKind::UnknownInterface(t.interface.clone()),
                );
                0
            }
        };
        if t.pat_port_min == 0 || t.pat_port_min > t.pat_port_max {
            d.push(
                format!("{p}.pat_port_min"),
                ErrorKind::BadPatRange {
                    min: t.pat_port_min,
                    max: t.pat_port_max,
                },
            );
        }
        let a = t.snat_address;
        let why = if a.is_unspecified() {
            Some("unspecified")
        } else if a.is_broadcast() {
            Some("broadcast")
        } else if a.is_multicast() {
            Some("multicast")
        } else if a.is_loopback() {
            Some("loopback")
        } else if pool.contains(&a) {
            Some("inside client_cidr")
        } else {
            None
        };
        if let Some(why) = why {
            d.push(
                format!("{p}.snat_address"),
                ErrorKind::BadSnatAddress { addr: a, why },
            );
        }
        targets.push(Target {
            ifindex,
            valid: 1,
            family: FAMILY_V4,
            snat_addr: v4_addr(a.octets()),
            port_min: t.pat_port_min,
            port_max: t.pat_port_max,
            ..zeroed()
        });
        target_names.push(t.name.clone());
    }
    d.capacity(
        "target_networks",
        "target networks",
        targets.len(),
        MAX_TARGETS,
        "use fewer target networks",
    );
    let known_targets = join_names(input.target_networks.iter().map(|t| t.name.as_str()));

    // ---- routes ------------------------------------------------------------------------
    let mut routes: BTreeMap<(u8, u32), RouteValue> = BTreeMap::new();
    let mut route_seen: BTreeMap<(u8, u32), usize> = BTreeMap::new();
    for (i, r) in input.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        let dest = d.v4_destination(&format!("{p}.destination"), &r.destination);
        let target = match target_index.get(r.target_network.as_str()) {
            Some(&ix) => Some(ix),
            None => {
                d.push(
                    format!("{p}.target_network"),
                    ErrorKind::UnknownTargetNetwork {
                        name: r.target_network.clone(),
                        known: known_targets.clone(),
                    },
                );
                None
            }
        };
        let Some(key) = dest else { continue };
        if contains(pool_key, key) {
            d.push(
                format!("{p}.destination"),
                ErrorKind::RouteInsideClientCidr {
                    route: net_of(key),
                    pool,
                },
            );
            continue;
        }
        if let Some(&first) = route_seen.get(&key) {
            d.push(
                format!("{p}.destination"),
                ErrorKind::DuplicateRoute {
                    destination: net_of(key),
                    first,
                },
            );
            continue;
        }
        route_seen.insert(key, i);
        if let Some(t) = target {
            let value = RouteValue {
                target: t as u32,
                ..zeroed()
            };
            routes.insert(key, value);
        }
    }
    // Client-to-client: the pool routes back into the tunnel. User routes inside the pool
    // were rejected above, so this never replaces one.
    routes.insert(
        pool_key,
        RouteValue {
            target: TARGET_TUNNEL,
            ..zeroed()
        },
    );
    d.capacity(
        "routes",
        "routes (including the implicit client_cidr route)",
        input.routes.len() + 1,
        MAX_ROUTES,
        "aggregate routes into shorter prefixes",
    );

    // ---- authorization rules -----------------------------------------------------------
    let route_keys: Vec<(u8, u32)> = routes.keys().copied().collect();
    let mut rules: Vec<((u8, u32), &[String], bool)> = Vec::new();
    for (i, r) in input.authorization_rules.iter().enumerate() {
        if let Some(key) = authz_rule_key(&mut d, i, r, &route_keys) {
            rules.push((key, &r.groups, r.all_users));
        }
    }
    let referenced: BTreeSet<&str> = rules
        .iter()
        .flat_map(|(_, groups, _)| groups.iter().map(String::as_str))
        .collect();
    let group_bits = assign_group_bits(&referenced, previous_group_bits, &mut d);
    let mut authz: BTreeMap<(u8, u32), AuthzValue> = BTreeMap::new();
    for (key, groups, all_users) in &rules {
        let v = authz.entry(*key).or_insert_with(zeroed::<AuthzValue>);
        v.all_users |= u8::from(*all_users);
        for g in groups.iter() {
            if let Some(&bit) = group_bits.get(g.as_str()) {
                group_set(&mut v.groups, bit.into());
            }
        }
    }
    d.capacity(
        "authorization_rules",
        "distinct authorization-rule prefixes",
        authz.len(),
        MAX_AUTHZ_PREFIXES,
        "aggregate rules into shorter prefixes",
    );

    // ---- security groups ---------------------------------------------------------------
    let (sg_enabled, sg_nodes, sg_ranges) = compile_sg_section(input, &mut d);

    if d.has_errors() {
        return Err(d.list);
    }
    Ok(CompiledPolicy {
        client_cidr: pool,
        gateway_addr: gw,
        group_bits,
        authz: authz
            .into_iter()
            .map(|((len, net), v)| (len, net.to_be_bytes(), v))
            .collect(),
        routes: routes
            .into_iter()
            .map(|((len, net), v)| (len, net.to_be_bytes(), v))
            .collect(),
        targets,
        target_names,
        sg_enabled,
        sg_nodes,
        sg_ranges,
        warnings: d.list,
    })
}

impl CompiledPolicy {
    /// The bitmap of a client in `user_groups`. Groups no rule names have no bit and are
    /// ignored (they cannot change a decision).
    pub fn groups_bitmap<'a>(&self, user_groups: impl IntoIterator<Item = &'a str>) -> GroupBits {
        let mut bits = [0; GROUP_WORDS];
        for g in user_groups {
            if let Some(&bit) = self.group_bits.get(g) {
                group_set(&mut bits, bit.into());
            }
        }
        bits
    }

    /// The local groups of `user` (from `input.groups`), sorted. Directory groups are added
    /// by the caller; feed the union to [`CompiledPolicy::groups_bitmap`].
    pub fn client_groups(&self, input: &PolicyInput, user: &str) -> Vec<String> {
        input.local_groups_of(user)
    }

    /// `policy_meta[slot]` for this policy at `generation`.
    pub fn meta(&self, generation: u32) -> PolicyMeta {
        PolicyMeta {
            generation,
            sg_enabled: u8::from(self.sg_enabled),
            ..zeroed()
        }
    }
}

/// Sorts `ranges` and merges overlapping and adjacent ones, giving the sorted, disjoint,
/// non-adjacent list the data path binary-searches.
pub fn coalesce(ranges: impl IntoIterator<Item = (u16, u16)>) -> Vec<PortRange> {
    let mut v: Vec<(u16, u16)> = ranges.into_iter().filter(|(lo, hi)| lo <= hi).collect();
    v.sort_unstable();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            // u32 so that hi = 65535 does not overflow when testing adjacency.
            Some(last) if u32::from(lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(hi),
            _ => out.push(PortRange { lo, hi }),
        }
    }
    out
}

// ---- internals ---------------------------------------------------------------------------

/// One authorization rule's checks (diagnostics under `authorization_rules[i]`), and its
/// trie key when it contributes to the map. Shared by the full and the incremental compiler
/// so both report exactly the same.
fn authz_rule_key(
    d: &mut Diags,
    i: usize,
    r: &super::model::AuthzRule,
    route_keys: &[(u8, u32)],
) -> Option<(u8, u32)> {
    let p = format!("authorization_rules[{i}]");
    let dest = d.v4_destination(&format!("{p}.destination"), &r.destination);
    let mut names_ok = true;
    for (j, g) in r.groups.iter().enumerate() {
        if g.is_empty() {
            d.push(format!("{p}.groups[{j}]"), ErrorKind::EmptyName);
            names_ok = false;
        }
    }
    if r.groups.is_empty() && !r.all_users {
        d.push(format!("{p}.groups"), ErrorKind::AllowsNobody);
    }
    let key = dest?;
    // A route and a rule can only meet if one prefix contains the other.
    let routed = route_keys
        .iter()
        .any(|&rk| contains(rk, key) || contains(key, rk));
    if !routed {
        d.push(
            format!("{p}.destination"),
            ErrorKind::AuthzWithoutRoute {
                destination: net_of(key),
            },
        );
    }
    names_ok.then_some(key)
}

/// The security-group section of [`compile_with_previous`]: the applied groups' rules pushed
/// down to prefixes. Depends on `security_groups` and `applied_security_groups` only, so the
/// incremental compiler reuses its previous result when neither changed.
fn compile_sg_section(
    input: &PolicyInput,
    d: &mut Diags,
) -> (bool, Vec<LpmEntry<SgNode>>, Vec<PortRange>) {
    let mut sg_index: BTreeMap<&str, usize> = BTreeMap::new();
    // Valid rules per group, as (prefix, protocol, ports).
    let mut sg_rules: Vec<Vec<SgEntry>> = Vec::with_capacity(input.security_groups.len());
    for (i, sg) in input.security_groups.iter().enumerate() {
        let p = format!("security_groups[{i}]");
        d.check_name(&format!("{p}.name"), &sg.name, &mut sg_index, i, |j| {
            format!("security_groups[{j}]")
        });
        let mut valid = Vec::new();
        for (j, rule) in sg.egress.iter().enumerate() {
            let rp = format!("{p}.egress[{j}]");
            let dest = d.v4_destination(&format!("{rp}.destination"), &rule.destination);
            let mut ok = true;
            match (rule.protocol, rule.from_port, rule.to_port) {
                (Proto::Icmp | Proto::All, None, None) => {}
                (proto @ (Proto::Icmp | Proto::All), from, _) => {
                    let field = if from.is_some() {
                        "from_port"
                    } else {
                        "to_port"
                    };
                    d.push(
                        format!("{rp}.{field}"),
                        ErrorKind::PortsOnPortlessProtocol { proto },
                    );
                    ok = false;
                }
                (_, None, None) => {}
                (_, Some(from), Some(to)) if from > to => {
                    d.push(
                        format!("{rp}.from_port"),
                        ErrorKind::PortsReversed { from, to },
                    );
                    ok = false;
                }
                (_, Some(_), Some(_)) => {}
                (_, from, _) => {
                    let field = if from.is_some() {
                        "to_port"
                    } else {
                        "from_port"
                    };
                    d.push(format!("{rp}.{field}"), ErrorKind::HalfPortRange);
                    ok = false;
                }
            }
            if let (Some(key), true) = (dest, ok) {
                valid.push(SgEntry {
                    key,
                    proto: rule.protocol,
                    ports: rule.port_range(),
                });
            }
        }
        sg_rules.push(valid);
    }
    let known_sgs = join_names(input.security_groups.iter().map(|s| s.name.as_str()));
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    let mut applied_rules: Vec<&SgEntry> = Vec::new();
    for (i, name) in input.applied_security_groups.iter().enumerate() {
        let p = format!("applied_security_groups[{i}]");
        if let Some(&first) = applied.get(name.as_str()) {
            d.push(
                p,
                ErrorKind::DuplicateListEntry {
                    name: name.clone(),
                    first,
                },
            );
            continue;
        }
        applied.insert(name, i);
        match sg_index.get(name.as_str()) {
            Some(&ix) => applied_rules.extend(sg_rules[ix].iter()),
            None => d.push(
                p,
                ErrorKind::UnknownSecurityGroup {
                    name: name.clone(),
                    known: known_sgs.clone(),
                },
            ),
        }
    }
    let sg_enabled = !input.applied_security_groups.is_empty();
    let (sg_nodes, sg_ranges) = compile_security_groups(&applied_rules, d);
    (sg_enabled, sg_nodes, sg_ranges)
}

fn assign_group_bits(
    referenced: &BTreeSet<&str>,
    previous: Option<&BTreeMap<String, u16>>,
    d: &mut Diags,
) -> BTreeMap<String, u16> {
    if referenced.len() > MAX_GROUPS {
        d.push(
            "authorization_rules",
            ErrorKind::TooManyGroups {
                count: referenced.len(),
            },
        );
        return BTreeMap::new();
    }
    let empty = BTreeMap::new();
    let previous = previous.unwrap_or(&empty);
    let mut bits: BTreeMap<String, u16> = BTreeMap::new();
    let mut taken = [false; MAX_GROUPS];
    for g in referenced {
        if let Some(&b) = previous.get(*g) {
            if (b as usize) < MAX_GROUPS && !taken[b as usize] {
                taken[b as usize] = true;
                bits.insert((*g).to_string(), b);
            }
        }
    }
    let owner_of: BTreeMap<u16, &str> = previous.iter().map(|(g, &b)| (b, g.as_str())).collect();
    let mut fresh = (0..MAX_GROUPS as u16).filter(|b| !owner_of.contains_key(b));
    let mut freed = (0..MAX_GROUPS as u16).filter(|b| owner_of.contains_key(b));
    for g in referenced {
        if bits.contains_key(*g) {
            continue;
        }
        let bit = loop {
            if let Some(b) = fresh.next() {
                if !taken[b as usize] {
                    break b;
                }
            } else if let Some(b) = freed.next() {
                if !taken[b as usize] {
                    d.push(
                        "authorization_rules",
                        ErrorKind::GroupBitReused {
                            group: (*g).to_string(),
                            bit: b,
                            previous: owner_of[&b].to_string(),
                        },
                    );
                    break b;
                }
            } else {
                // Unreachable: referenced.len() <= MAX_GROUPS bits exist.
                unreachable!("ran out of group bits with {} groups", referenced.len());
            }
        };
        taken[bit as usize] = true;
        bits.insert((*g).to_string(), bit);
    }
    bits
}

/// Map values start all-zero so padding is zero whatever fields `common` adds.
fn zeroed<T: Zeroable>() -> T {
    T::zeroed()
}

/// The trie key of a canonical IPv4 destination (what [`Diags::v4_destination`] accepts).
fn v4_key(net: &IpNet) -> Option<(u8, u32)> {
    match net {
        IpNet::V4(v4) if v4.trunc() == *v4 => Some((v4.prefix_len(), u32::from(v4.network()))),
        _ => None,
    }
}

fn net_of((len, net): (u8, u32)) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(net), len).expect("prefix length <= 32")
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    v.join(", ")
}

impl fmt::Display for CompiledPolicy {
    /// A short summary for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} authorization prefixes, {} groups, {} routes, {} targets, security groups {} \
             ({} prefixes, {} port ranges)",
            self.authz.len(),
            self.group_bits.len(),
            self.routes.len(),
            self.targets.len(),
            if self.sg_enabled { "on" } else { "off" },
            self.sg_nodes.len(),
            self.sg_ranges.len()
        )
    }
}
