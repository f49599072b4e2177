//! The benchmark's policy: 10,000 authorization rules, 1,000 security-group rules, one
//! target network behind the gateway's `pcbout`, and the client sessions.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use portcullis::policy::{
    model::{AuthzRule, Proto, Route, SecurityGroup, SgRule, TargetNetwork},
    PolicyInput,
};

use crate::topo::GW_OUT;

pub const AUTHZ_RULES: usize = 10_000;
pub const SG_RULES: usize = 1_000;
/// Groups named by the rules (the data path tells 256 apart).
pub const RULE_GROUPS: usize = 250;

/// The client the generator and the per-packet measurements send from.
pub const BENCH_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
/// Session slot of the bench client; its flow quota is raised above every flow it opens.
pub const BENCH_SLOT: u32 = 0;
pub const BENCH_MAX_FLOWS: u32 = 250_000;
/// Clients that hold the pre-loaded conntrack entries: `10.100.1.1 ..`, slots 1 ...
pub const FILL_CLIENTS: u32 = 100;
pub const FILL_FLOWS_PER_CLIENT: u32 = 1_000;

pub fn fill_client(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Groups of every session: the bench and fill clients are in `bench`.
pub fn client_groups() -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
    let g: BTreeSet<String> = ["bench".to_string()].into();
    std::iter::once(BENCH_CLIENT)
        .chain((0..FILL_CLIENTS).map(fill_client))
        .map(|a| (a, g.clone()))
        .collect()
}

fn authz(dest: &str, group: &str) -> AuthzRule {
    AuthzRule {
        destination: dest.parse().expect("rule prefix"),
        groups: vec![group.to_string()],
        all_users: false,
        description: None,
    }
}

/// - Target network `sink` on `pcbout`, SNAT to 198.18.0.1; route 198.18.0.0/15 to it.
/// - Authorization: 198.18.0.0/24 for group `bench`; 198.18.0.0/15 for `admins` (so by the
///   AWS rule the /24 decides for the sink's addresses); 9,998 /30 rules in 198.19.0.0/16
///   spread over 250 groups (`bench` is not one of them: those destinations are denied).
/// - One applied security group with 1,000 rules: 40 UDP port ranges to 198.18.0.0/24
///   (`1-500`, `1001-1500`, ...; the benchmark's port 9 is in the first) and 960 TCP/UDP
///   rules to /24s in 198.19.0.0/16. TCP to 198.18.0.0/24 is not allowed.
pub fn bench_policy() -> PolicyInput {
    bench_policy_with_rules(AUTHZ_RULES)
}

/// [`bench_policy`] with `n` (≥ 2) authorization rules: the two that decide for the sink,
/// and `n - 2` of the /30 rules (for the cost-per-packet vs rule-count sweep).
pub fn bench_policy_with_rules(n: usize) -> PolicyInput {
    let mut rules = vec![
        authz("198.18.0.0/24", "bench"),
        authz("198.18.0.0/15", "admins"),
    ];
    for i in 0..n.max(2) - 2 {
        let dest = format!("198.19.{}.{}/30", i / 64, (i % 64) * 4);
        rules.push(authz(&dest, &format!("g{}", i % RULE_GROUPS)));
    }
    let mut egress = Vec::with_capacity(SG_RULES);
    for j in 0..40u16 {
        egress.push(SgRule {
            protocol: Proto::Udp,
            from_port: Some(j * 1000 + 1),
            to_port: Some(j * 1000 + 500),
            destination: "198.18.0.0/24".parse().unwrap(),
            description: None,
        });
    }
    for k in 0..(SG_RULES - 40) as u16 {
        egress.push(SgRule {
            protocol: if k % 2 == 0 { Proto::Tcp } else { Proto::Udp },
            from_port: Some(k * 60 + 1),
            to_port: Some(k * 60 + 30),
            destination: format!("198.19.{}.0/24", k % 150).parse().unwrap(),
            description: None,
        });
    }
    PolicyInput {
        client_cidr: "10.100.0.0/16".parse().unwrap(),
        gateway_addr: Ipv4Addr::new(10, 100, 0, 1),
        gateway_ports: portcullis::policy::model::default_gateway_ports(),
        groups: BTreeMap::new(),
        target_networks: vec![TargetNetwork {
            name: "sink".into(),
            interface: GW_OUT.into(),
            snat_address: Ipv4Addr::new(198, 18, 0, 1),
            pat_port_min: 61_000,
            pat_port_max: 65_535,
        }],
        routes: vec![Route {
            destination: "198.18.0.0/15".parse().unwrap(),
            target_network: "sink".into(),
            description: None,
        }],
        authorization_rules: rules,
        security_groups: vec![SecurityGroup {
            name: "bench-sg".into(),
            egress,
        }],
        applied_security_groups: vec!["bench-sg".into()],
    }
}
