//! Validation and compilation of a [`PolicyInput`] into the entries of the data-path maps.
//!
//! Validation reports every problem at once, each with the field path and the fix, so an
//! administrator fixes a config file in one round. Compilation is deterministic: the same
//! input (and the same previous group numbering) gives the same entries, which keeps the
//! reconciler's diffs small.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use bytemuck::Zeroable;
use ipnet::{IpNet, Ipv4Net};
use portcullis_common::{
    group_set, sg_flags, v4_addr, AuthzValue, GroupBits, PolicyMeta, PortRange, RouteValue, SgNode,
    Target, FAMILY_V4, GROUP_WORDS, MAX_AUTHZ_PREFIXES, MAX_GROUPS, MAX_ROUTES, MAX_SG_PREFIXES,
    MAX_SG_RANGES, MAX_TARGETS, TARGET_TUNNEL,
};

use super::model::{PolicyInput, Proto};
use super::prefix::{contains, mask};

/// Smallest and largest client pool accepted. AWS allows /12 ... /22; the upper bound here
/// is /30 so small labs work, and it must leave room for the gateway and one client.
pub const CLIENT_CIDR_MIN_LEN: u8 = 12;
pub const CLIENT_CIDR_MAX_LEN: u8 = 30;

/// An LPM-trie entry: `(prefix_len, network address, value)`.
pub type LpmEntry<V> = (u8, [u8; 4], V);

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

/// One validation problem: where it is and what is wrong (the message says the fix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}", if .kind.is_warning() { "warning: " } else { "" }, .path, .kind)]
pub struct CompileError {
    /// Field path, e.g. `authorization_rules[3].destination`.
    pub path: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("`{given}` has host bits set: write `{canonical}` (or fix the prefix length)")]
    HostBitsSet { given: IpNet, canonical: IpNet },
    #[error(
        "a /{len} client pool is outside /{CLIENT_CIDR_MIN_LEN} ... /{CLIENT_CIDR_MAX_LEN}: \
         pick a pool in that range (size it at twice the peak number of connections)"
    )]
    ClientCidrSize { len: u8 },
    #[error(
        "{gateway} is not a usable host address of client_cidr {pool}: use an address inside \
         the pool other than its network and broadcast address, usually {suggested}"
    )]
    GatewayOutsidePool {
        gateway: Ipv4Addr,
        pool: Ipv4Net,
        suggested: Ipv4Addr,
    },
    #[error(
        "IPv6 destination `{0}` is not enforced by the data path yet (IPv6 packets are \
         dropped): remove this entry or use an IPv4 CIDR"
    )]
    Ipv6NotEnforced(IpNet),
    #[error(
        "route {route} lies inside client_cidr {pool}, which is reserved for client-to-client \
         traffic: remove the route or use a destination outside the pool"
    )]
    RouteInsideClientCidr { route: Ipv4Net, pool: Ipv4Net },
    #[error("{destination} already has a route (routes[{first}]); keep only one of them")]
    DuplicateRoute { destination: Ipv4Net, first: usize },
    #[error(
        "no target network is named `{name}`: use one of [{known}] or add it to target_networks"
    )]
    UnknownTargetNetwork { name: String, known: String },
    #[error(
        "no security group is named `{name}`: use one of [{known}] or define it in security_groups"
    )]
    UnknownSecurityGroup { name: String, known: String },
    #[error("interface `{0}` does not exist on this host: check the name with `ip link`")]
    UnknownInterface(String),
    #[error("the name is empty: give it a name")]
    EmptyName,
    #[error("`{name}` is already used by {first}: names must be unique, rename or remove one")]
    DuplicateName { name: String, first: String },
    #[error("`{name}` is listed twice (first at index {first}): remove the duplicate")]
    DuplicateListEntry { name: String, first: usize },
    #[error(
        "PAT range {min}..={max} is empty or includes port 0: use 1 <= pat_port_min <= \
         pat_port_max (default {}..={})",
        super::model::DEFAULT_PAT_PORT_MIN,
        super::model::DEFAULT_PAT_PORT_MAX
    )]
    BadPatRange { min: u16, max: u16 },
    #[error(
        "{addr} cannot be a source address ({why}): use the egress interface's unicast address"
    )]
    BadSnatAddress { addr: Ipv4Addr, why: &'static str },
    #[error(
        "the rule names no group and all_users is false, so it allows nobody: add groups or \
         set all_users = true"
    )]
    AllowsNobody,
    #[error(
        "no route covers {destination}, so this rule allows nothing until one does (a packet \
         needs a rule and a route, as in AWS): add a route or remove the rule"
    )]
    AuthzWithoutRoute { destination: Ipv4Net },
    #[error(
        "{count} distinct groups are named by authorization rules; the data path tells at most \
         {MAX_GROUPS} apart: merge groups or use all_users"
    )]
    TooManyGroups { count: usize },
    #[error(
        "group `{group}` reuses bit {bit}, freed by `{previous}` in the previous generation: \
         rewrite the bitmaps of live sessions so members of `{previous}` do not gain its access"
    )]
    GroupBitReused {
        group: String,
        bit: u16,
        previous: String,
    },
    #[error("from_port {from} is greater than to_port {to}: swap them")]
    PortsReversed { from: u16, to: u16 },
    #[error(
        "give both from_port and to_port (equal for a single port), or neither for every port"
    )]
    HalfPortRange,
    #[error("ports apply only to tcp and udp: remove from_port/to_port from this {proto} rule")]
    PortsOnPortlessProtocol { proto: Proto },
    #[error("{count} {what} exceed the data path's capacity of {max}: {fix}")]
    Capacity {
        what: &'static str,
        count: usize,
        max: u32,
        fix: &'static str,
    },
}

impl ErrorKind {
    /// Warnings are reported but do not stop compilation.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            ErrorKind::AuthzWithoutRoute { .. } | ErrorKind::GroupBitReused { .. }
        )
    }
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
    let mut rules: Vec<((u8, u32), &[String], bool)> = Vec::new();
    for (i, r) in input.authorization_rules.iter().enumerate() {
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
        let Some(key) = dest else { continue };
        // A route and a rule can only meet if one prefix contains the other.
        let routed = routes
            .keys()
            .any(|&rk| contains(rk, key) || contains(key, rk));
        if !routed {
            d.push(
                format!("{p}.destination"),
                ErrorKind::AuthzWithoutRoute {
                    destination: net_of(key),
                },
            );
        }
        if names_ok {
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
    let (sg_nodes, sg_ranges) = compile_security_groups(&applied_rules, &mut d);

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

struct SgEntry {
    key: (u8, u32),
    proto: Proto,
    ports: (u16, u16),
}

#[derive(Default)]
struct SgAcc {
    any: bool,
    icmp: bool,
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

impl SgAcc {
    fn add(&mut self, proto: Proto, ports: (u16, u16)) {
        match proto {
            Proto::All => self.any = true,
            Proto::Icmp => self.icmp = true,
            Proto::Tcp => self.tcp.push(ports),
            Proto::Udp => self.udp.push(ports),
        }
    }
}

/// The data path does one longest-prefix lookup, so each node must hold every rule whose
/// destination contains it: node(P) = union of rules at P and at every shorter prefix of P.
/// At most 33 ancestors per prefix, so this is O(prefixes x 33), not quadratic.
fn compile_security_groups(
    rules: &[&SgEntry],
    d: &mut Diags,
) -> (Vec<LpmEntry<SgNode>>, Vec<PortRange>) {
    let mut at: BTreeMap<(u8, u32), SgAcc> = BTreeMap::new();
    for r in rules {
        at.entry(r.key).or_default().add(r.proto, r.ports);
    }
    d.capacity(
        "security_groups",
        "distinct security-group destination prefixes",
        at.len(),
        MAX_SG_PREFIXES,
        "aggregate security-group destinations",
    );
    if at.len() > MAX_SG_PREFIXES as usize {
        return (Vec::new(), Vec::new());
    }
    let mut nodes = Vec::with_capacity(at.len());
    let mut ranges: Vec<PortRange> = Vec::new();
    // Identical lists (e.g. "tcp 443" pushed into many prefixes) are stored once.
    let mut interned: HashMap<Vec<PortRange>, u32> = HashMap::new();
    let mut intern = |list: Vec<PortRange>| -> (u32, u32) {
        if list.is_empty() {
            return (0, 0);
        }
        let len = list.len() as u32;
        let off = *interned.entry(list).or_insert_with_key(|list| {
            let off = ranges.len() as u32;
            ranges.extend_from_slice(list);
            off
        });
        (off, len)
    };
    for &(len, net) in at.keys() {
        let mut acc = SgAcc::default();
        for l in 0..=len {
            if let Some(a) = at.get(&(l, mask(net, l))) {
                acc.any |= a.any;
                acc.icmp |= a.icmp;
                acc.tcp.extend_from_slice(&a.tcp);
                acc.udp.extend_from_slice(&a.udp);
            }
        }
        let mut flags = 0;
        if acc.any {
            flags |= sg_flags::ANY;
        }
        if acc.icmp {
            flags |= sg_flags::ICMP;
        }
        // With ANY every port is allowed: no need to spend ranges on this node.
        let (tcp_off, tcp_len, udp_off, udp_len) = if acc.any {
            (0, 0, 0, 0)
        } else {
            let (t_off, t_len) = intern(coalesce(acc.tcp));
            let (u_off, u_len) = intern(coalesce(acc.udp));
            (t_off, t_len, u_off, u_len)
        };
        nodes.push((
            len,
            net.to_be_bytes(),
            SgNode {
                flags,
                tcp_off,
                tcp_len,
                udp_off,
                udp_len,
                ..zeroed()
            },
        ));
    }
    d.capacity(
        "security_groups",
        "security-group port ranges (after push-down and merging)",
        ranges.len(),
        MAX_SG_RANGES,
        "use fewer distinct port ranges or fewer nested destinations",
    );
    (nodes, ranges)
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

fn net_of((len, net): (u8, u32)) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(net), len).expect("prefix length <= 32")
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    v.join(", ")
}

#[derive(Default)]
struct Diags {
    list: Vec<CompileError>,
}

impl Diags {
    fn push(&mut self, path: impl Into<String>, kind: ErrorKind) {
        self.list.push(CompileError {
            path: path.into(),
            kind,
        });
    }

    fn has_errors(&self) -> bool {
        self.list.iter().any(|e| !e.kind.is_warning())
    }

    /// An IPv4, canonical destination as `(prefix_len, network)`, or a diagnostic.
    fn v4_destination(&mut self, path: &str, net: &IpNet) -> Option<(u8, u32)> {
        match net {
            IpNet::V6(_) => {
                self.push(path, ErrorKind::Ipv6NotEnforced(*net));
                None
            }
            IpNet::V4(v4) => {
                let canonical = v4.trunc();
                if canonical != *v4 {
                    self.push(
                        path,
                        ErrorKind::HostBitsSet {
                            given: *net,
                            canonical: IpNet::V4(canonical),
                        },
                    );
                    return None;
                }
                Some((v4.prefix_len(), u32::from(v4.network())))
            }
        }
    }

    fn check_name<'a>(
        &mut self,
        path: &str,
        name: &'a str,
        seen: &mut BTreeMap<&'a str, usize>,
        index: usize,
        describe: impl Fn(usize) -> String,
    ) {
        if name.is_empty() {
            self.push(path, ErrorKind::EmptyName);
        } else if let Some(&first) = seen.get(name) {
            self.push(
                path,
                ErrorKind::DuplicateName {
                    name: name.to_string(),
                    first: describe(first),
                },
            );
        } else {
            seen.insert(name, index);
        }
    }

    fn capacity(
        &mut self,
        path: &str,
        what: &'static str,
        count: usize,
        max: u32,
        fix: &'static str,
    ) {
        if count > max as usize {
            self.push(
                path,
                ErrorKind::Capacity {
                    what,
                    count,
                    max,
                    fix,
                },
            );
        }
    }
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
