//! The "nftables twin" of a [`PolicyInput`]: an nftables ruleset that makes the same
//! decisions as the XDP data path, for the forwarding benchmark (`cargo xtask bench`), where
//! a gateway namespace runs either the data path or this ruleset with kernel forwarding.
//!
//! Decisions reproduced, in the data path's order, for the first packet of a flow from the
//! client-facing interface:
//! 1. anti-spoofing: the source must be a live client (one of `client_groups`);
//! 2. authorization with AWS semantics: the longest rule prefix containing the destination
//!    decides, across the rules of every group, with no fallback to shorter prefixes;
//! 3. route: the longest route prefix (the client pool is an implicit route back to the
//!    clients, where the destination must be a live client); no route drops;
//! 4. security groups (only when some are applied): any rule of any applied group that
//!    covers the destination, protocol and port;
//! 5. protocols the data path can translate: UDP, TCP opened by a SYN, ICMP echo request.
//!
//! nftables has no "longest prefix wins, no fallback" lookup, so the prefixes are flattened
//! here: the address space is cut into disjoint intervals on which the longest matching
//! prefix is constant. Authorization is then evaluated per *client class* (clients with the
//! same groups): one interval set per class holds every destination that class may reach.
//! Security-group rules are pushed down the same way (an interval holds the union of every
//! rule whose prefix contains it), so their concatenated interval sets never overlap, which
//! the kernel's `pipapo` set type requires.
//!
//! Admitted flows are tracked by conntrack: a packet of a flow admitted before (its conntrack
//! entry is confirmed) skips the rules, as the data path's conntrack fast path does. Note that
//! `ct state established` alone would not do that for one-way UDP, which conntrack keeps in
//! state "new" until a reply is seen. Translated flows get SNAT to the target network's
//! address; the kernel keeps the source port unless it collides, like the data path (its
//! PAT port choice differs: the kernel does not use the configured PAT range).
//!
//! What the twin does not reproduce: policy generations (a rule change does not cut flows
//! conntrack already admitted), per-client flow quotas, counters and deny events, and the
//! drop of IPv4 fragments and options (netfilter reassembles fragments).
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use portcullis_common::{DropReason, PortRange, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use portcullis::policy::compile::coalesce;
use portcullis::policy::eval::{Verdict, ICMP_ECHO_REQUEST};
use portcullis::policy::model::{PolicyInput, Proto};
use portcullis::policy::prefix::contains;

/// Name of the nftables table the twin lives in (family `inet`).
pub const TABLE: &str = "portcullis_twin";

/// An inclusive IPv4 address interval, host order.
pub type Interval = (u32, u32);

/// The nftables ruleset for `input`, with clients arriving on `ingress_iface` and
/// `client_groups` the live sessions (address -> groups). The text starts by deleting a
/// previous twin, so `nft -f` can load it again after a policy change.
pub fn render(
    input: &PolicyInput,
    ingress_iface: &str,
    client_groups: &BTreeMap<Ipv4Addr, BTreeSet<String>>,
) -> String {
    Twin::new(input, client_groups).render(ingress_iface)
}

/// Where a route sends a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteTo {
    Target(usize),
    Tunnel,
}

/// A security-group rule at one prefix: protocol and inclusive port range.
type SgRuleAt = (Proto, (u16, u16));

/// Security-group allowances on one destination interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SgAllow {
    any: bool,
    icmp: bool,
    tcp: Vec<PortRange>,
    udp: Vec<PortRange>,
}

/// The flattened decision model the ruleset is printed from. [`Twin::decide`] evaluates it
/// the way the printed rules do, so unit tests can hold it against the reference evaluator.
#[derive(Clone, Debug)]
pub struct Twin {
    /// Live client -> index into `class_allowed`.
    clients: BTreeMap<Ipv4Addr, usize>,
    /// Per client class: destinations it is authorized for (sorted, disjoint, merged).
    class_allowed: Vec<Vec<Interval>>,
    routes: Vec<(u32, u32, RouteTo)>,
    /// Target networks: (name, SNAT address), by index.
    targets: Vec<(String, Ipv4Addr)>,
    /// `None`: no security group applied, all egress allowed.
    sg: Option<Vec<(u32, u32, SgAllow)>>,
}

impl Twin {
    pub fn new(input: &PolicyInput, client_groups: &BTreeMap<Ipv4Addr, BTreeSet<String>>) -> Twin {
        // ---- authorization: every rule prefix with what is allowed exactly there --------
        let mut rules: BTreeMap<(u8, u32), (bool, BTreeSet<&str>)> = BTreeMap::new();
        for r in &input.authorization_rules {
            let Some(key) = v4_key(&r.destination) else {
                continue;
            };
            let e = rules.entry(key).or_default();
            e.0 |= r.all_users;
            e.1.extend(r.groups.iter().map(String::as_str));
        }
        let authz = flatten(rules.into_iter().collect());

        let mut classes: BTreeMap<&BTreeSet<String>, usize> = BTreeMap::new();
        let mut class_allowed = Vec::new();
        let mut clients = BTreeMap::new();
        for (addr, groups) in client_groups {
            let class = *classes.entry(groups).or_insert_with(|| {
                let allowed = authz
                    .iter()
                    .filter(|(_, _, (all, gs))| *all || gs.iter().any(|g| groups.contains(*g)))
                    .map(|&(lo, hi, _)| (lo, hi, ()))
                    .collect();
                class_allowed.push(merge(allowed).into_iter().map(|(l, h, _)| (l, h)).collect());
                class_allowed.len() - 1
            });
            clients.insert(*addr, class);
        }

        // ---- routes, with the client pool as the route back into the tunnel -------------
        let targets: Vec<(String, Ipv4Addr)> = input
            .target_networks
            .iter()
            .map(|t| (t.name.clone(), t.snat_address))
            .collect();
        let mut routes: BTreeMap<(u8, u32), RouteTo> = BTreeMap::new();
        for r in &input.routes {
            let (Some(key), Some(t)) = (
                v4_key(&r.destination),
                targets.iter().position(|(n, _)| *n == r.target_network),
            ) else {
                continue;
            };
            routes.entry(key).or_insert(RouteTo::Target(t));
        }
        let pool = input.client_cidr.trunc();
        routes.insert(
            (pool.prefix_len(), u32::from(pool.network())),
            RouteTo::Tunnel,
        );
        let routes = merge(flatten(routes.into_iter().collect()));

        // ---- security groups, pushed down so one interval holds every rule covering it ---
        let sg = (!input.applied_security_groups.is_empty()).then(|| {
            let applied: BTreeSet<&str> = input
                .applied_security_groups
                .iter()
                .map(String::as_str)
                .collect();
            let mut at: BTreeMap<(u8, u32), Vec<SgRuleAt>> = BTreeMap::new();
            for g in input
                .security_groups
                .iter()
                .filter(|g| applied.contains(g.name.as_str()))
            {
                for rule in &g.egress {
                    if let Some(key) = v4_key(&rule.destination) {
                        at.entry(key)
                            .or_default()
                            .push((rule.protocol, rule.port_range()));
                    }
                }
            }
            let pushed: Vec<((u8, u32), SgAllow)> = at
                .keys()
                .map(|&key| {
                    let mut acc = SgAllow::default();
                    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
                    for (_, rs) in at.iter().filter(|(outer, _)| contains(**outer, key)) {
                        for &(proto, ports) in rs {
                            match proto {
                                Proto::All => acc.any = true,
                                Proto::Icmp => acc.icmp = true,
                                Proto::Tcp => tcp.push(ports),
                                Proto::Udp => udp.push(ports),
                            }
                        }
                    }
                    acc.tcp = coalesce(tcp);
                    acc.udp = coalesce(udp);
                    (key, acc)
                })
                .collect();
            merge(flatten(pushed))
        });

        Twin {
            clients,
            class_allowed,
            routes,
            targets,
            sg,
        }
    }

    /// The decision the printed ruleset makes for the first packet of a flow. Drop reasons
    /// are the data path's where nftables can tell them apart; an authorization failure is
    /// always `NotAuthorized` (the twin does not distinguish "no rule").
    pub fn decide(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
    ) -> Verdict {
        let Some(&class) = self.clients.get(&src) else {
            return Verdict::Drop(DropReason::Spoofed);
        };
        let d = u32::from(dst);
        if !self.class_allowed[class]
            .iter()
            .any(|&(lo, hi)| lo <= d && d <= hi)
        {
            return Verdict::Drop(DropReason::NotAuthorized);
        }
        let routed = match find(&self.routes, d).copied() {
            None => return Verdict::Drop(DropReason::NoRoute),
            Some(RouteTo::Tunnel) if !self.clients.contains_key(&dst) => {
                return Verdict::Drop(DropReason::ClientUnreachable)
            }
            Some(RouteTo::Tunnel) => Verdict::ClientToClient,
            Some(RouteTo::Target(i)) => Verdict::Forward {
                target_index: i as u32,
                snat: self.targets[i].1,
            },
        };
        if let Some(sg) = &self.sg {
            let in_ranges = |rs: &[PortRange]| rs.iter().any(|r| r.lo <= dport && dport <= r.hi);
            let ok = find(sg, d).is_some_and(|a| {
                a.any
                    || match proto {
                        PROTO_ICMP => a.icmp,
                        PROTO_TCP => in_ranges(&a.tcp),
                        PROTO_UDP => in_ranges(&a.udp),
                        _ => false,
                    }
            });
            if !ok {
                return Verdict::Drop(DropReason::SecurityGroup);
            }
        }
        match (proto, icmp_type) {
            (PROTO_TCP | PROTO_UDP, _) | (PROTO_ICMP, Some(ICMP_ECHO_REQUEST)) => routed,
            _ => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }

    /// The ruleset text (`nft -f` syntax).
    pub fn render(&self, ingress_iface: &str) -> String {
        let mut s = String::new();
        let w = &mut s;
        // `table` then `delete table` makes the file loadable whether or not a twin exists.
        let _ = writeln!(
            w,
            "# nftables twin of a Portcullis policy (agent/src/policy/nft.rs)"
        );
        let _ = writeln!(w, "table inet {TABLE}\ndelete table inet {TABLE}\n");
        let _ = writeln!(w, "table inet {TABLE} {{");

        let addrs: Vec<String> = self.clients.keys().map(|a| a.to_string()).collect();
        set(w, "clients", "ipv4_addr", false, &addrs);
        let classes: Vec<String> = self
            .clients
            .iter()
            .map(|(a, c)| format!("{a} : goto class_{c}"))
            .collect();
        let _ = writeln!(w, "\tmap client_class {{\n\t\ttype ipv4_addr : verdict");
        elements(w, &classes);
        let _ = writeln!(w, "\t}}");
        for (i, allowed) in self.class_allowed.iter().enumerate() {
            let e: Vec<String> = allowed.iter().map(|&i| interval(i)).collect();
            set(w, &format!("authz_{i}"), "ipv4_addr", true, &e);
        }
        let route_set = |pred: &dyn Fn(RouteTo) -> bool| -> Vec<String> {
            self.routes
                .iter()
                .filter(|(_, _, r)| pred(*r))
                .map(|&(lo, hi, _)| interval((lo, hi)))
                .collect()
        };
        set(
            w,
            "route_tunnel",
            "ipv4_addr",
            true,
            &route_set(&|r| r == RouteTo::Tunnel),
        );
        for i in 0..self.targets.len() {
            let e = route_set(&|r| r == RouteTo::Target(i));
            set(w, &format!("route_t{i}"), "ipv4_addr", true, &e);
        }
        if let Some(sg) = &self.sg {
            let pick = |f: &dyn Fn(&SgAllow) -> bool| -> Vec<String> {
                sg.iter()
                    .filter(|(_, _, a)| f(a))
                    .map(|&(lo, hi, _)| interval((lo, hi)))
                    .collect()
            };
            set(w, "sg_any", "ipv4_addr", true, &pick(&|a| a.any));
            set(
                w,
                "sg_icmp",
                "ipv4_addr",
                true,
                &pick(&|a| a.icmp && !a.any),
            );
            for (name, ports) in [("sg_tcp", 0), ("sg_udp", 1)] {
                let e: Vec<String> = sg
                    .iter()
                    .filter(|(_, _, a)| !a.any)
                    .flat_map(|&(lo, hi, ref a)| {
                        let rs = if ports == 0 { &a.tcp } else { &a.udp };
                        rs.iter()
                            .map(move |r| format!("{} . {}-{}", interval((lo, hi)), r.lo, r.hi))
                    })
                    .collect();
                set(w, name, "ipv4_addr . inet_service", true, &e);
            }
        }

        let iif = ingress_iface.replace('"', "");
        let _ = writeln!(
            w,
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\t# Flows admitted before skip the rules (the data path's conntrack fast path);\n\
             \t\t# one-way UDP stays \"new\" in conntrack, hence the confirmed check too.\n\
             \t\tct state established,related accept\n\
             \t\tct status confirmed accept\n\
             \t\tiifname \"{iif}\" goto from_clients\n\
             \t}}"
        );
        let _ = writeln!(
            w,
            "\tchain from_clients {{\n\
             \t\tmeta nfproto ipv6 drop comment \"ipv6_unsupported\"\n\
             \t\tip saddr vmap @client_class\n\
             \t\tdrop comment \"spoofed_source\"\n\
             \t}}"
        );
        for i in 0..self.class_allowed.len() {
            let _ = writeln!(
                w,
                "\tchain class_{i} {{\n\
                 \t\tip daddr != @authz_{i} drop comment \"not_authorized\"\n\
                 \t\tgoto route\n\
                 \t}}"
            );
        }
        let _ = writeln!(
            w,
            "\tchain route {{\n\t\tip daddr @route_tunnel goto tunnel"
        );
        for i in 0..self.targets.len() {
            let _ = writeln!(w, "\t\tip daddr @route_t{i} goto security_groups");
        }
        let _ = writeln!(
            w,
            "\t\tdrop comment \"no_route\"\n\
             \t}}\n\
             \tchain tunnel {{\n\
             \t\tip daddr != @clients drop comment \"client_unreachable\"\n\
             \t\tgoto security_groups\n\
             \t}}"
        );
        if self.sg.is_some() {
            let _ = writeln!(
                w,
                "\tchain security_groups {{\n\
                 \t\tip daddr @sg_any goto protocol\n\
                 \t\tmeta l4proto icmp ip daddr @sg_icmp goto protocol\n\
                 \t\tmeta l4proto tcp ip daddr . tcp dport @sg_tcp goto protocol\n\
                 \t\tmeta l4proto udp ip daddr . udp dport @sg_udp goto protocol\n\
                 \t\tdrop comment \"security_group\"\n\
                 \t}}"
            );
        } else {
            let _ = writeln!(
                w,
                "\tchain security_groups {{\n\
                 \t\t# No security group applied: all egress allowed.\n\
                 \t\tgoto protocol\n\
                 \t}}"
            );
        }
        let _ = writeln!(
            w,
            "\tchain protocol {{\n\
             \t\tmeta l4proto udp accept\n\
             \t\tmeta l4proto tcp tcp flags & (syn | ack) == syn accept\n\
             \t\tmeta l4proto tcp drop comment \"tcp_no_syn\"\n\
             \t\tmeta l4proto icmp icmp type echo-request accept\n\
             \t\tdrop comment \"unsupported_protocol\"\n\
             \t}}"
        );
        let _ = writeln!(
            w,
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for (i, (name, snat)) in self.targets.iter().enumerate() {
            let _ = writeln!(
                w,
                "\t\tip saddr @clients ip daddr @route_t{i} counter snat ip to {snat} comment \"{}\"",
                name.replace('"', "")
            );
        }
        let _ = writeln!(w, "\t}}\n}}");
        s
    }
}

/// `(prefix_len, network)` of an IPv4 destination (host bits cleared); IPv6 entries never
/// match IPv4 traffic, as in the data path.
fn v4_key(net: &IpNet) -> Option<(u8, u32)> {
    match net {
        IpNet::V4(n) => {
            let n = n.trunc();
            Some((n.prefix_len(), u32::from(n.network())))
        }
        IpNet::V6(_) => None,
    }
}

/// Cut the address space into disjoint intervals on which the longest matching prefix of
/// `prefixes` (distinct keys) is constant, each with that prefix's value; addresses no prefix
/// covers are left out. Prefixes are either nested or disjoint, so one sweep over them sorted
/// by (start, length) with a stack of the enclosing prefixes does it.
fn flatten<V: Clone>(mut prefixes: Vec<((u8, u32), V)>) -> Vec<(u32, u32, V)> {
    prefixes.sort_by_key(|((len, net), _)| (*net, *len));
    let mut out: Vec<(u64, u64, V)> = Vec::new();
    // Enclosing prefixes, innermost last: (inclusive end, value).
    let mut stack: Vec<(u64, V)> = Vec::new();
    // Every address below `cursor` is emitted or uncovered.
    let mut cursor = 0u64;
    for ((len, net), v) in prefixes {
        let start = u64::from(net);
        while let Some((end, val)) = stack.last() {
            if *end >= start {
                break;
            }
            if cursor <= *end {
                out.push((cursor, *end, val.clone()));
                cursor = end + 1;
            }
            stack.pop();
        }
        if let Some((_, val)) = stack.last() {
            if cursor < start {
                out.push((cursor, start - 1, val.clone()));
            }
        }
        cursor = cursor.max(start);
        stack.push((start + (1u64 << (32 - u32::from(len.min(32)))) - 1, v));
    }
    while let Some((end, val)) = stack.pop() {
        if cursor <= end {
            out.push((cursor, end, val));
            cursor = end + 1;
        }
    }
    out.into_iter()
        .map(|(lo, hi, v)| (lo as u32, hi as u32, v))
        .collect()
}

/// Merge adjacent intervals with equal values.
fn merge<V: PartialEq>(v: Vec<(u32, u32, V)>) -> Vec<(u32, u32, V)> {
    let mut out: Vec<(u32, u32, V)> = Vec::with_capacity(v.len());
    for (lo, hi, val) in v {
        match out.last_mut() {
            Some(last) if u64::from(last.1) + 1 == u64::from(lo) && last.2 == val => last.1 = hi,
            _ => out.push((lo, hi, val)),
        }
    }
    out
}

/// The value of the interval containing `d` (intervals sorted and disjoint).
fn find<V>(v: &[(u32, u32, V)], d: u32) -> Option<&V> {
    let i = v.partition_point(|(_, hi, _)| *hi < d);
    v.get(i).filter(|(lo, _, _)| *lo <= d).map(|(_, _, x)| x)
}

/// An interval in nftables syntax: a prefix when it is one, else `a-b`.
fn interval((lo, hi): Interval) -> String {
    let size = u64::from(hi) - u64::from(lo) + 1;
    if size.is_power_of_two() && u64::from(lo) % size == 0 {
        let len = 32 - size.trailing_zeros();
        if len == 32 {
            return Ipv4Addr::from(lo).to_string();
        }
        return format!("{}/{len}", Ipv4Addr::from(lo));
    }
    format!("{}-{}", Ipv4Addr::from(lo), Ipv4Addr::from(hi))
}

fn elements(w: &mut String, e: &[String]) {
    // An empty `elements = { }` is a syntax error: an empty set simply has no line.
    if e.is_empty() {
        return;
    }
    let _ = write!(w, "\t\telements = {{");
    for (i, x) in e.iter().enumerate() {
        let sep = if i == 0 { " " } else { ",\n\t\t\t     " };
        let _ = write!(w, "{sep}{x}");
    }
    let _ = writeln!(w, " }}");
}

fn set(w: &mut String, name: &str, ty: &str, interval: bool, e: &[String]) {
    let _ = writeln!(w, "\tset {name} {{\n\t\ttype {ty}");
    if interval {
        let _ = writeln!(w, "\t\tflags interval");
    }
    elements(w, e);
    let _ = writeln!(w, "\t}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::policy::eval::evaluate_new_flow;
    use portcullis::policy::testgen::*;
    use proptest::prelude::*;

    fn lpm_naive<V: Clone>(p: &[((u8, u32), V)], d: u32) -> Option<V> {
        p.iter()
            .filter(|((len, net), _)| contains((*len, *net), (32, d)))
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, v)| v.clone())
    }

    fn arb_prefixes() -> impl Strategy<Value = Vec<((u8, u32), u16)>> {
        prop::collection::btree_map(
            (0u8..=32, any::<u32>())
                .prop_map(|(len, a)| (len, portcullis::policy::prefix::mask(a, len))),
            any::<u16>(),
            0..12,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn flatten_is_longest_prefix_match(
            p in arb_prefixes(),
            probes in prop::collection::vec(any::<u32>(), 32),
        ) {
            let flat = flatten(p.clone());
            for w in flat.windows(2) {
                prop_assert!(w[0].1 < w[1].0, "intervals sorted and disjoint: {flat:?}");
            }
            // Probe random addresses and every interval boundary (and its neighbours).
            let mut probes = probes;
            for &((len, net), _) in &p {
                let end = (u64::from(net) + (1u64 << (32 - u32::from(len))) - 1) as u32;
                probes.extend([net, net.wrapping_sub(1), end, end.wrapping_add(1)]);
            }
            for d in probes {
                prop_assert_eq!(find(&flat, d).copied(), lpm_naive(&p, d), "address {}", Ipv4Addr::from(d));
            }
        }

        /// The twin decides every new flow the way the reference evaluator does.
        #[test]
        fn twin_agrees_with_reference_evaluator(
            policy in arb_policy(),
            g0 in arb_user_groups(),
            g1 in arb_user_groups(),
            flows in prop::collection::vec(arb_flow(), 1..24),
        ) {
            let clients: BTreeMap<Ipv4Addr, BTreeSet<String>> =
                [(LIVE[0], g0.clone()), (LIVE[1], g1)].into_iter().collect();
            let twin = Twin::new(&policy, &clients);
            for f in flows {
                let want = evaluate_new_flow(
                    &policy, &g0, f.dst, f.proto, f.dport, f.icmp_type, &live_clients(),
                ).verdict();
                let got = twin.decide(LIVE[0], f.dst, f.proto, f.dport, f.icmp_type);
                let norm = |v: Verdict| match v {
                    Verdict::Drop(DropReason::NoAuthzRule) => Verdict::Drop(DropReason::NotAuthorized),
                    v => v,
                };
                prop_assert_eq!(norm(got), norm(want), "flow {:?}", f);
            }
            // Renders without panicking and with balanced braces.
            let text = twin.render("eth0");
            prop_assert_eq!(text.matches('{').count(), text.matches('}').count());
        }
    }

    #[test]
    fn aws_longest_prefix_without_fallback() {
        // Group a may reach 10.1.0.0/16 except the /32 that a rule gives to group b only.
        let mut p = base_policy();
        p.authorization_rules = vec![
            portcullis::policy::model::AuthzRule {
                destination: "10.1.0.0/16".parse().unwrap(),
                groups: vec!["a".into()],
                all_users: false,
                description: None,
            },
            portcullis::policy::model::AuthzRule {
                destination: "10.1.2.3/32".parse().unwrap(),
                groups: vec!["b".into()],
                all_users: false,
                description: None,
            },
        ];
        let a: BTreeSet<String> = ["a".to_string()].into();
        let clients = [(LIVE[0], a)].into_iter().collect();
        let twin = Twin::new(&p, &clients);
        assert_eq!(
            twin.class_allowed[0],
            vec![
                (
                    u32::from(Ipv4Addr::new(10, 1, 0, 0)),
                    u32::from(Ipv4Addr::new(10, 1, 2, 2))
                ),
                (
                    u32::from(Ipv4Addr::new(10, 1, 2, 4)),
                    u32::from(Ipv4Addr::new(10, 1, 255, 255))
                ),
            ]
        );
        let text = twin.render("pc-tap");
        assert!(text.contains("10.1.0.0-10.1.2.2"), "{text}");
        assert!(text.contains("10.1.2.4-10.1.255.255"), "{text}");
        assert!(
            text.contains("iifname \"pc-tap\" goto from_clients"),
            "{text}"
        );
        assert!(text.contains("10.100.0.2 : goto class_0"), "{text}");
        // 10.1.0.0/16 routes through t1 (192.0.2.1 is t0's, 198.51.100.1 is t1's).
        assert!(text.contains("snat ip to 198.51.100.1"), "{text}");
        assert_eq!(
            twin.decide(LIVE[0], Ipv4Addr::new(10, 1, 2, 3), PROTO_UDP, 53, None),
            Verdict::Drop(DropReason::NotAuthorized)
        );
        assert_eq!(
            twin.decide(LIVE[0], Ipv4Addr::new(10, 1, 2, 4), PROTO_UDP, 53, None),
            Verdict::Forward {
                target_index: 1,
                snat: Ipv4Addr::new(198, 51, 100, 1)
            }
        );
    }

    #[test]
    fn intervals_print_as_prefixes_when_they_are_prefixes() {
        assert_eq!(interval((0, u32::MAX)), "0.0.0.0/0");
        assert_eq!(interval((0x0a00_0000, 0x0aff_ffff)), "10.0.0.0/8");
        assert_eq!(interval((0x0a00_0001, 0x0a00_0001)), "10.0.0.1");
        assert_eq!(interval((0x0a00_0001, 0x0a00_0002)), "10.0.0.1-10.0.0.2");
    }
}
