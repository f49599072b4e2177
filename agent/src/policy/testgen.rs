//! Proptest generators for policies and flows, shared by the policy and reconciler tests.
//!
//! Addresses come from a small universe (a few networks, a few host bytes, a few prefix
//! lengths) so random rules nest, overlap and collide often, and ports come from a small
//! range so random flows hit range boundaries.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use portcullis_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use proptest::prelude::*;
use proptest::sample::select;

use super::model::*;

pub const GROUPS: [&str; 4] = ["a", "b", "c", "d"];
pub const LIVE: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 100, 0, 2), Ipv4Addr::new(10, 100, 0, 3)];

pub fn pool() -> Ipv4Net {
    "10.100.0.0/22".parse().unwrap()
}

pub fn resolver(name: &str) -> Option<u32> {
    match name {
        "eth1" => Some(2),
        "eth2" => Some(3),
        _ => None,
    }
}

pub fn live_clients() -> BTreeSet<Ipv4Addr> {
    LIVE.into_iter().collect()
}

pub fn arb_prefix() -> impl Strategy<Value = Ipv4Net> {
    (
        select(vec![0u8, 8, 15, 16, 17, 22, 24, 25, 31, 32]),
        select(vec![0u8, 1, 100]),
        select(vec![0u8, 1, 255]),
        select(vec![0u8, 1, 2, 3, 128, 255]),
    )
        .prop_map(|(len, b, c, d)| {
            Ipv4Net::new(Ipv4Addr::new(10, b, c, d), len)
                .unwrap()
                .trunc()
        })
}

fn arb_groups() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(GROUPS.to_vec(), 0..=3)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

pub fn arb_authz() -> impl Strategy<Value = AuthzRule> {
    (arb_prefix(), arb_groups(), any::<bool>()).prop_map(|(dest, groups, all)| AuthzRule {
        destination: IpNet::V4(dest),
        // A rule that allows nobody is a validation error; make it an all-users rule.
        all_users: all || groups.is_empty(),
        groups,
        description: None,
    })
}

pub fn arb_sg_rule() -> impl Strategy<Value = SgRule> {
    (
        select(vec![
            Proto::Tcp,
            Proto::Tcp,
            Proto::Udp,
            Proto::Udp,
            Proto::Icmp,
            Proto::All,
        ]),
        prop::option::of((0u16..40, 0u16..40)),
        arb_prefix(),
    )
        .prop_map(|(protocol, ports, dest)| {
            let ports = match protocol {
                Proto::Tcp | Proto::Udp => ports.map(|(a, b)| (a.min(b), a.max(b))),
                _ => None,
            };
            SgRule {
                protocol,
                from_port: ports.map(|p| p.0),
                to_port: ports.map(|p| p.1),
                destination: IpNet::V4(dest),
                description: None,
            }
        })
}

/// A valid policy: the pool 10.100.0.0/22, target networks `t0` (eth1) and `t1` (eth2),
/// routes 10.0.0.0/8 via t0 and 10.1.0.0/16 via t1, and no rules.
pub fn base_policy() -> PolicyInput {
    let target = |name: &str, interface: &str, snat: [u8; 4], pat: (u16, u16)| TargetNetwork {
        name: name.into(),
        interface: interface.into(),
        snat_address: snat.into(),
        pat_port_min: pat.0,
        pat_port_max: pat.1,
    };
    let route = |dest: &str, t: &str| Route {
        destination: dest.parse().unwrap(),
        target_network: t.into(),
        description: None,
    };
    PolicyInput {
        client_cidr: pool(),
        gateway_addr: Ipv4Addr::new(10, 100, 0, 1),
        gateway_ports: super::model::default_gateway_ports(),
        groups: BTreeMap::new(),
        target_networks: vec![
            target("t0", "eth1", [192, 0, 2, 1], (61000, 65535)),
            target("t1", "eth2", [198, 51, 100, 1], (1024, 2047)),
        ],
        routes: vec![route("10.0.0.0/8", "t0"), route("10.1.0.0/16", "t1")],
        authorization_rules: vec![],
        security_groups: vec![],
        applied_security_groups: vec![],
    }
}

/// A random policy that passes validation.
pub fn arb_policy() -> impl Strategy<Value = PolicyInput> {
    (
        prop::collection::vec(arb_authz(), 0..8),
        prop::collection::vec((arb_prefix(), 0usize..2), 0..6),
        prop::collection::vec(prop::collection::vec(arb_sg_rule(), 0..5), 0..4),
        prop::collection::vec(any::<bool>(), 4),
        prop::collection::btree_map(select(GROUPS.to_vec()), select(vec!["alice", "bob"]), 0..3),
    )
        .prop_map(|(authz, routes, sgs, applied, local)| {
            let mut seen = BTreeSet::new();
            let routes = routes
                .into_iter()
                // Validation rejects duplicate routes and routes inside the client pool.
                .filter(|(dest, _)| !pool().contains(dest) && seen.insert(*dest))
                .map(|(dest, t)| Route {
                    destination: IpNet::V4(dest),
                    target_network: format!("t{t}"),
                    description: None,
                })
                .collect();
            let security_groups: Vec<SecurityGroup> = sgs
                .into_iter()
                .enumerate()
                .map(|(i, egress)| SecurityGroup {
                    name: format!("sg{i}"),
                    egress,
                })
                .collect();
            let applied_security_groups = security_groups
                .iter()
                .zip(applied)
                .filter(|(_, on)| *on)
                .map(|(sg, _)| sg.name.clone())
                .collect();
            PolicyInput {
                groups: local
                    .into_iter()
                    .map(|(g, u)| (g.to_string(), vec![u.to_string()]))
                    .collect::<BTreeMap<_, _>>(),
                routes,
                authorization_rules: authz,
                security_groups,
                applied_security_groups,
                ..base_policy()
            }
        })
}

/// [`arb_policy`] with every target network on `interface`: for a test topology that has
/// one real egress interface (the XDP differential test). Names, SNAT addresses, PAT
/// ranges and routes are those of [`arb_policy`], so verdicts are the same.
pub fn arb_policy_on(interface: &str) -> impl Strategy<Value = PolicyInput> {
    let interface = interface.to_string();
    arb_policy().prop_map(move |mut p| {
        for t in &mut p.target_networks {
            t.interface.clone_from(&interface);
        }
        p
    })
}

pub fn arb_user_groups() -> impl Strategy<Value = BTreeSet<String>> {
    proptest::sample::subsequence(GROUPS.to_vec(), 0..=4)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// A new flow: destination, protocol, destination port, ICMP type.
#[derive(Clone, Copy, Debug)]
pub struct TestFlow {
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub dport: u16,
    pub icmp_type: Option<u8>,
}

pub fn arb_dst() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => (arb_prefix(), select(vec![0u32, 1, 2, 127, 128, 255, 256, 65_535]))
            .prop_map(|(p, off)| Ipv4Addr::from(u32::from(p.network()).wrapping_add(off))),
        1 => select(vec![
            LIVE[0],
            LIVE[1],
            // Pool addresses without a session.
            Ipv4Addr::new(10, 100, 0, 7),
            Ipv4Addr::new(10, 100, 3, 255),
        ]),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

pub fn arb_flow() -> impl Strategy<Value = TestFlow> {
    (
        arb_dst(),
        select(vec![PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47]),
        prop_oneof![4 => 0u16..42, 1 => Just(u16::MAX), 1 => any::<u16>()],
        select(vec![8u8, 0, 3]),
    )
        .prop_map(|(dst, proto, dport, icmp)| TestFlow {
            dst,
            proto,
            dport: if matches!(proto, PROTO_TCP | PROTO_UDP) {
                dport
            } else {
                0
            },
            icmp_type: (proto == PROTO_ICMP).then_some(icmp),
        })
}
