//! Policy tests: AWS worked scenarios, validation, compiler output, frame parsing, and the
//! property test "compiled maps, interpreted like the XDP program == reference evaluator".
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::IpNet;
use portcullis_common::{
    group_test, sg_flags, DropReason, PortRange, GROUP_WORDS, MAX_AUTHZ_PREFIXES, MAX_GROUPS,
    MAX_ROUTES, MAX_SG_RANGES, MAX_TARGETS, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TARGET_TUNNEL,
};
use proptest::prelude::*;

use super::compile::{coalesce, compile, compile_with_previous, CompiledPolicy, ErrorKind};
use super::compiled_eval::{self, CompiledView};
use super::eval::{evaluate_frame, evaluate_new_flow, tcp_flags, Decision, FrameDecision, Verdict};
use super::model::{
    AuthzRule, GatewayPort, PolicyInput, Proto, Route, SecurityGroup, SgRule, TargetNetwork,
};
use super::testgen::{self, live_clients, resolver, LIVE};
use crate::reconcile::SlotContents;

// Glob-imported for brevity; `SecurityGroup` (also a model type) is written in full.
use DropReason::*;

// ---- helpers ------------------------------------------------------------------------------

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn groups(g: &[&str]) -> BTreeSet<String> {
    g.iter().map(|s| s.to_string()).collect()
}

fn rule(dest: &str, g: &[&str]) -> AuthzRule {
    AuthzRule {
        destination: net(dest),
        groups: g.iter().map(|s| s.to_string()).collect(),
        all_users: false,
        description: None,
    }
}

fn all_users(dest: &str) -> AuthzRule {
    AuthzRule {
        destination: net(dest),
        groups: vec![],
        all_users: true,
        description: None,
    }
}

fn route(dest: &str, target: &str) -> Route {
    Route {
        destination: net(dest),
        target_network: target.into(),
        description: None,
    }
}

fn target(name: &str, interface: &str, snat: &str) -> TargetNetwork {
    TargetNetwork {
        name: name.into(),
        interface: interface.into(),
        snat_address: ip(snat),
        pat_port_min: 61000,
        pat_port_max: 65535,
    }
}

fn sg_rule(proto: Proto, ports: Option<(u16, u16)>, dest: &str) -> SgRule {
    SgRule {
        protocol: proto,
        from_port: ports.map(|p| p.0),
        to_port: ports.map(|p| p.1),
        destination: net(dest),
        description: None,
    }
}

/// Pool 10.100.0.0/22, one target network `vpc` (eth1, SNAT 10.0.0.5), route 10.0.0.0/8.
fn base() -> PolicyInput {
    PolicyInput {
        client_cidr: testgen::pool(),
        gateway_addr: ip("10.100.0.1"),
        gateway_ports: super::model::default_gateway_ports(),
        groups: BTreeMap::new(),
        target_networks: vec![target("vpc", "eth1", "10.0.0.5")],
        routes: vec![route("10.0.0.0/8", "vpc")],
        authorization_rules: vec![],
        security_groups: vec![],
        applied_security_groups: vec![],
    }
}

fn vpc() -> Decision {
    Decision::Forward {
        target_index: 0,
        target_name: "vpc".into(),
        snat: ip("10.0.0.5"),
    }
}

/// The reference decision, after asserting that the compiled maps (interpreted as a
/// `CompiledPolicy` and as a data-path slot) decide the same.
fn decide(input: &PolicyInput, user: &[&str], dst: &str, proto: u8, dport: u16) -> Decision {
    let icmp_type = (proto == PROTO_ICMP).then_some(8);
    decide_icmp(input, user, dst, proto, dport, icmp_type)
}

fn decide_icmp(
    input: &PolicyInput,
    user: &[&str],
    dst: &str,
    proto: u8,
    dport: u16,
    icmp_type: Option<u8>,
) -> Decision {
    let live = live_clients();
    let user = groups(user);
    let reference = evaluate_new_flow(input, &user, ip(dst), proto, dport, icmp_type, &live);
    let compiled = compile(input, &resolver).expect("policy compiles");
    let bits = compiled.groups_bitmap(user.iter().map(String::as_str));
    let slot = SlotContents::from_compiled(&compiled, 1);
    for view in [&compiled as &dyn ViewRef, &slot] {
        let got = view.eval(&bits, ip(dst), proto, dport, icmp_type, &live);
        assert_eq!(
            got,
            reference.verdict(),
            "compiled vs reference for {dst} proto {proto}"
        );
    }
    reference
}

/// Object-safe wrapper so one loop can run both views.
trait ViewRef {
    fn eval(
        &self,
        bits: &portcullis_common::GroupBits,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
        live: &BTreeSet<Ipv4Addr>,
    ) -> Verdict;
}

impl<T: CompiledView> ViewRef for T {
    fn eval(
        &self,
        bits: &portcullis_common::GroupBits,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
        live: &BTreeSet<Ipv4Addr>,
    ) -> Verdict {
        compiled_eval::evaluate_new_flow(self, bits, dst, proto, dport, icmp_type, live)
    }
}

fn errors(input: &PolicyInput) -> Vec<(String, ErrorKind)> {
    compile(input, &resolver)
        .expect_err("policy must be rejected")
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect()
}

fn has(errs: &[(String, ErrorKind)], path: &str, pred: impl Fn(&ErrorKind) -> bool) -> bool {
    errs.iter().any(|(p, k)| p == path && pred(k))
}

// ---- AWS worked scenarios (architecture.md) -----------------------------------------------

#[test]
fn longer_prefix_for_another_group_hides_the_shorter_one() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/16", &["A"]), rule("10.0.5.5/32", &["B"])];
    assert_eq!(
        decide(&p, &["A"], "10.0.5.5", PROTO_TCP, 22),
        Decision::Drop(NotAuthorized)
    );
    assert_eq!(decide(&p, &["B"], "10.0.5.5", PROTO_TCP, 22), vpc());
    assert_eq!(decide(&p, &["A"], "10.0.5.6", PROTO_TCP, 22), vpc());
    assert_eq!(
        decide(&p, &["B"], "10.0.5.6", PROTO_TCP, 22),
        Decision::Drop(NotAuthorized)
    );
    assert_eq!(decide(&p, &["A", "B"], "10.0.5.5", PROTO_TCP, 22), vpc());
}

#[test]
fn all_users_default_route_does_not_open_a_group_prefix() {
    let mut p = base();
    p.routes.push(route("0.0.0.0/0", "vpc"));
    p.authorization_rules = vec![all_users("0.0.0.0/0"), rule("10.0.0.0/16", &["eng"])];
    assert_eq!(
        decide(&p, &["sales"], "10.0.1.1", PROTO_TCP, 443),
        Decision::Drop(NotAuthorized)
    );
    assert_eq!(
        decide(&p, &[], "10.0.1.1", PROTO_TCP, 443),
        Decision::Drop(NotAuthorized)
    );
    assert_eq!(decide(&p, &["eng"], "10.0.1.1", PROTO_TCP, 443), vpc());
    assert_eq!(decide(&p, &["sales"], "8.8.8.8", PROTO_UDP, 53), vpc());
    assert_eq!(decide(&p, &["sales"], "10.1.0.1", PROTO_UDP, 53), vpc());
}

#[test]
fn one_group_with_nested_prefixes_reaches_both() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/24", &["dev"]), rule("10.0.0.0/25", &["dev"])];
    assert_eq!(decide(&p, &["dev"], "10.0.0.5", PROTO_TCP, 80), vpc());
    assert_eq!(decide(&p, &["dev"], "10.0.0.200", PROTO_TCP, 80), vpc());
    assert_eq!(
        decide(&p, &["ops"], "10.0.0.5", PROTO_TCP, 80),
        Decision::Drop(NotAuthorized)
    );
    assert_eq!(
        decide(&p, &["dev"], "10.0.1.5", PROTO_TCP, 80),
        Decision::Drop(NoAuthzRule)
    );
}

#[test]
fn no_rule_means_no_authorization_rule() {
    let p = base();
    assert_eq!(
        decide(&p, &["a"], "10.0.0.1", PROTO_TCP, 80),
        Decision::Drop(NoAuthzRule)
    );
}

#[test]
fn rule_without_route_is_a_warning_and_drops_no_route() {
    let mut p = base();
    p.authorization_rules = vec![all_users("192.168.0.0/16")];
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].path, "authorization_rules[0].destination");
    assert!(matches!(
        c.warnings[0].kind,
        ErrorKind::AuthzWithoutRoute { .. }
    ));
    assert!(c.warnings[0].to_string().starts_with(
        "warning: authorization_rules[0].destination: no route covers 192.168.0.0/16"
    ));
    assert_eq!(
        decide(&p, &[], "192.168.1.1", PROTO_TCP, 80),
        Decision::Drop(NoRoute)
    );
}

#[test]
fn longest_route_picks_the_target_network() {
    let mut p = base();
    p.target_networks.push(target("lab", "eth2", "192.168.1.1"));
    p.routes.push(route("10.5.0.0/16", "lab"));
    p.authorization_rules = vec![all_users("10.0.0.0/8")];
    let lab = Decision::Forward {
        target_index: 1,
        target_name: "lab".into(),
        snat: ip("192.168.1.1"),
    };
    assert_eq!(decide(&p, &[], "10.5.1.1", PROTO_TCP, 80), lab);
    assert_eq!(decide(&p, &[], "10.6.1.1", PROTO_TCP, 80), vpc());
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.targets[1].ifindex, 3);
    assert_eq!(c.targets[1].valid, 1);
    assert_eq!(c.target_names, vec!["vpc".to_string(), "lab".to_string()]);
}

#[test]
fn security_groups_allow_only_listed_protocols_ports_and_destinations() {
    let mut p = base();
    p.authorization_rules = vec![all_users("10.0.0.0/8")];
    p.security_groups = vec![
        SecurityGroup {
            name: "web".into(),
            egress: vec![
                sg_rule(Proto::Tcp, Some((80, 80)), "10.0.0.0/16"),
                sg_rule(Proto::Tcp, Some((443, 443)), "10.0.0.0/16"),
                sg_rule(Proto::Udp, Some((53, 53)), "10.0.0.0/16"),
                sg_rule(Proto::Icmp, None, "10.0.0.0/16"),
            ],
        },
        SecurityGroup {
            name: "ssh".into(),
            egress: vec![sg_rule(Proto::Tcp, Some((22, 22)), "10.0.1.0/24")],
        },
        SecurityGroup {
            name: "unused".into(),
            egress: vec![sg_rule(Proto::All, None, "0.0.0.0/0")],
        },
    ];
    p.applied_security_groups = vec!["web".into(), "ssh".into()];
    let sg = Decision::Drop(DropReason::SecurityGroup);
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_TCP, 80), vpc());
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_TCP, 443), vpc());
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_TCP, 81), sg);
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_TCP, 22), sg);
    assert_eq!(decide(&p, &[], "10.0.1.5", PROTO_TCP, 22), vpc());
    assert_eq!(decide(&p, &[], "10.0.1.5", PROTO_TCP, 80), vpc());
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_UDP, 53), vpc());
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_UDP, 80), sg);
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_ICMP, 0), vpc());
    assert_eq!(decide(&p, &[], "10.1.0.1", PROTO_TCP, 80), sg);
    assert_eq!(decide(&p, &[], "10.1.0.1", PROTO_ICMP, 0), sg);
    // GRE: no "all" rule, so the security group refuses it before the protocol check.
    assert_eq!(decide(&p, &[], "10.0.2.2", 47, 0), sg);
    // ICMP allowed by the group, but only echo requests open flows.
    assert_eq!(
        decide_icmp(&p, &[], "10.0.2.2", PROTO_ICMP, 0, Some(0)),
        Decision::Drop(UnsupportedProtocol)
    );

    // No group applied: everything the rules and routes allow passes the SG step.
    p.applied_security_groups.clear();
    assert_eq!(decide(&p, &[], "10.1.0.1", PROTO_TCP, 81), vpc());
    assert_eq!(
        decide(&p, &[], "10.1.0.1", 47, 0),
        Decision::Drop(UnsupportedProtocol)
    );

    // An applied group with no rules denies everything.
    p.security_groups.push(SecurityGroup {
        name: "empty".into(),
        egress: vec![],
    });
    p.applied_security_groups = vec!["empty".into()];
    assert_eq!(decide(&p, &[], "10.0.2.2", PROTO_TCP, 80), sg);
}

#[test]
fn client_to_client_needs_a_rule_and_a_live_peer() {
    let mut p = base();
    assert_eq!(
        decide(&p, &[], "10.100.0.3", PROTO_TCP, 22),
        Decision::Drop(NoAuthzRule)
    );
    p.authorization_rules = vec![all_users("10.100.0.0/22"), all_users("10.0.0.0/8")];
    // The 10.0.0.0/8 route contains the pool; the implicit pool route is longer and wins.
    assert_eq!(
        decide(&p, &[], "10.100.0.3", PROTO_TCP, 22),
        Decision::ClientToClient
    );
    assert_eq!(
        decide(&p, &[], "10.100.0.9", PROTO_TCP, 22),
        Decision::Drop(ClientUnreachable)
    );
    let c = compile(&p, &resolver).unwrap();
    assert!(c.routes.contains(&(
        22,
        [10, 100, 0, 0],
        portcullis_common::RouteValue {
            target: TARGET_TUNNEL,
            _pad: 0
        }
    )));
}

// ---- validation ---------------------------------------------------------------------------

#[test]
fn validation_reports_every_error_with_its_path() {
    let mut p = base();
    p.client_cidr = "10.100.0.5/22".parse().unwrap();
    p.gateway_addr = ip("10.200.0.1");
    p.target_networks = vec![
        TargetNetwork {
            pat_port_min: 100,
            pat_port_max: 50,
            ..target("vpc", "eth9", "0.0.0.0")
        },
        target("vpc", "eth1", "10.0.0.6"),
        target("", "eth1", "10.0.0.7"),
    ];
    p.routes = vec![
        route("10.100.1.0/24", "vpc"),
        route("10.1.0.0/16", "nope"),
        route("2001:db8::/32", "vpc"),
        route("10.0.0.0/8", "vpc"),
        route("10.0.0.0/8", "vpc"),
    ];
    p.authorization_rules = vec![
        all_users("192.168.0.0/16"),
        rule("10.1.0.0/16", &[]),
        rule("10.2.0.1/16", &["x"]),
        all_users("::/0"),
        rule("10.3.0.0/16", &[""]),
    ];
    p.security_groups = vec![
        SecurityGroup {
            name: "web".into(),
            egress: vec![
                sg_rule(Proto::Tcp, Some((90, 80)), "10.0.0.0/8"),
                sg_rule(Proto::Icmp, Some((5, 5)), "10.0.0.0/8"),
                SgRule {
                    to_port: None,
                    ..sg_rule(Proto::Udp, Some((5, 5)), "10.0.0.0/8")
                },
                sg_rule(Proto::All, None, "::/0"),
            ],
        },
        SecurityGroup {
            name: "web".into(),
            egress: vec![],
        },
    ];
    p.applied_security_groups = vec!["web".into(), "nope".into(), "web".into()];

    let e = errors(&p);
    use ErrorKind as K;
    type Check = Box<dyn Fn(&K) -> bool>;
    let expect: Vec<(&str, Check)> = vec![
        (
            "client_cidr",
            Box::new(|k| matches!(k, K::HostBitsSet { .. })),
        ),
        (
            "gateway_addr",
            Box::new(|k| matches!(k, K::GatewayOutsidePool { .. })),
        ),
        (
            "target_networks[0].interface",
            Box::new(|k| matches!(k, K::UnknownInterface(i) if i == "eth9")),
        ),
        (
            "target_networks[0].pat_port_min",
            Box::new(|k| matches!(k, K::BadPatRange { min: 100, max: 50 })),
        ),
        (
            "target_networks[0].snat_address",
            Box::new(|k| matches!(k, K::BadSnatAddress { .. })),
        ),
        (
            "target_networks[1].name",
            Box::new(|k| matches!(k, K::DuplicateName { .. })),
        ),
        (
            "target_networks[2].name",
            Box::new(|k| matches!(k, K::EmptyName)),
        ),
        (
            "routes[0].destination",
            Box::new(|k| matches!(k, K::RouteInsideClientCidr { .. })),
        ),
        (
            "routes[1].target_network",
            Box::new(|k| matches!(k, K::UnknownTargetNetwork { .. })),
        ),
        (
            "routes[2].destination",
            Box::new(|k| matches!(k, K::Ipv6NotEnforced(_))),
        ),
        (
            "routes[4].destination",
            Box::new(|k| matches!(k, K::DuplicateRoute { first: 3, .. })),
        ),
        (
            "authorization_rules[0].destination",
            Box::new(|k| matches!(k, K::AuthzWithoutRoute { .. })),
        ),
        (
            "authorization_rules[1].groups",
            Box::new(|k| matches!(k, K::AllowsNobody)),
        ),
        (
            "authorization_rules[2].destination",
            Box::new(|k| matches!(k, K::HostBitsSet { .. })),
        ),
        (
            "authorization_rules[3].destination",
            Box::new(|k| matches!(k, K::Ipv6NotEnforced(_))),
        ),
        (
            "authorization_rules[4].groups[0]",
            Box::new(|k| matches!(k, K::EmptyName)),
        ),
        (
            "security_groups[0].egress[0].from_port",
            Box::new(|k| matches!(k, K::PortsReversed { from: 90, to: 80 })),
        ),
        (
            "security_groups[0].egress[1].from_port",
            Box::new(|k| matches!(k, K::PortsOnPortlessProtocol { proto: Proto::Icmp })),
        ),
        (
            "security_groups[0].egress[2].to_port",
            Box::new(|k| matches!(k, K::HalfPortRange)),
        ),
        (
            "security_groups[0].egress[3].destination",
            Box::new(|k| matches!(k, K::Ipv6NotEnforced(_))),
        ),
        (
            "security_groups[1].name",
            Box::new(|k| matches!(k, K::DuplicateName { .. })),
        ),
        (
            "applied_security_groups[1]",
            Box::new(|k| matches!(k, K::UnknownSecurityGroup { .. })),
        ),
        (
            "applied_security_groups[2]",
            Box::new(|k| matches!(k, K::DuplicateListEntry { first: 0, .. })),
        ),
    ];
    for (path, pred) in &expect {
        assert!(
            has(&e, path, pred),
            "missing diagnostic at {path}; got {e:#?}"
        );
    }
    assert_eq!(
        e.len(),
        expect.len(),
        "unexpected extra diagnostics: {e:#?}"
    );

    // Messages name the path and the fix.
    let msgs: Vec<String> = compile(&p, &resolver)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    let has_msg = |m: &str| msgs.iter().any(|x| x == m);
    assert!(
        has_msg(
            "authorization_rules[2].destination: `10.2.0.1/16` has host bits set: \
             write `10.2.0.0/16` (or fix the prefix length)"
        ),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.starts_with(
        "routes[2].destination: IPv6 destination `2001:db8::/32` is not enforced by the data \
         path yet"
    )));
    assert!(msgs.iter().any(|m| m.starts_with(
        "gateway_addr: 10.200.0.1 is not a usable host address of client_cidr 10.100.0.0/22"
    ) && m.ends_with("usually 10.100.0.1")));
    assert!(msgs
        .iter()
        .any(|m| m.contains("use one of [`vpc`, `vpc`, ``]")));
}

#[test]
fn client_pool_size_and_gateway_are_checked() {
    for (cidr, gw, ok) in [
        ("10.100.0.0/22", "10.100.0.1", true),
        ("10.100.0.0/30", "10.100.0.2", true),
        ("10.96.0.0/12", "10.96.0.1", true),
        ("10.100.0.0/31", "10.100.0.1", false),
        ("10.0.0.0/11", "10.0.0.1", false),
        ("10.100.0.0/22", "10.100.0.0", false),
        ("10.100.0.0/22", "10.100.3.255", false),
    ] {
        let mut p = base();
        p.routes.clear();
        p.client_cidr = cidr.parse().unwrap();
        p.gateway_addr = ip(gw);
        assert_eq!(compile(&p, &resolver).is_ok(), ok, "{cidr} gw {gw}");
    }
}

#[test]
fn rules_naming_unknown_groups_are_fine() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/8", &["from-ldap-only"])];
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.group_bits.get("from-ldap-only"), Some(&0));
    assert!(c.warnings.is_empty());
}

#[test]
fn group_count_is_limited_to_the_bitmap_size() {
    let mut p = base();
    p.authorization_rules = (0..MAX_GROUPS)
        .map(|i| rule("10.0.0.0/8", &[&format!("g{i:03}")]))
        .collect();
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.group_bits.len(), MAX_GROUPS);
    assert_eq!(c.authz.len(), 1);
    assert!(c.authz[0].2.groups.iter().all(|w| *w == u32::MAX));

    p.authorization_rules
        .push(rule("10.1.0.0/16", &["one-too-many"]));
    let e = errors(&p);
    assert!(has(&e, "authorization_rules", |k| matches!(
        k,
        ErrorKind::TooManyGroups { count: 257 }
    )));
}

#[test]
fn capacities_are_enforced() {
    // Routes: MAX_ROUTES includes the implicit client_cidr route.
    let mut p = base();
    p.routes = (0..MAX_ROUTES - 1)
        .map(|i| route(&format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i)), "vpc"))
        .collect();
    assert!(compile(&p, &resolver).is_ok());
    p.routes.push(route("11.0.0.0/8", "vpc"));
    assert!(has(&errors(&p), "routes", |k| matches!(
        k,
        ErrorKind::Capacity {
            max: MAX_ROUTES,
            ..
        }
    )));

    // Authorization prefixes count after merging equal prefixes.
    let mut p = base();
    p.authorization_rules = (0..MAX_AUTHZ_PREFIXES)
        .map(|i| all_users(&format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    p.authorization_rules
        .push(rule("10.0.0.0/32", &["dup-prefix"]));
    assert!(compile(&p, &resolver).is_ok());
    p.authorization_rules.push(all_users("10.255.0.0/16"));
    assert!(has(&errors(&p), "authorization_rules", |k| matches!(
        k,
        ErrorKind::Capacity {
            max: MAX_AUTHZ_PREFIXES,
            ..
        }
    )));

    // Targets.
    let mut p = base();
    p.target_networks = (0..=MAX_TARGETS)
        .map(|i| target(&format!("t{i}"), "eth1", "10.0.0.5"))
        .collect();
    assert!(has(&errors(&p), "target_networks", |k| matches!(
        k,
        ErrorKind::Capacity {
            max: MAX_TARGETS,
            ..
        }
    )));

    // Port ranges, counted after push-down and de-duplication: tcp on even ports and udp on
    // odd ports fill the array exactly; a nested prefix adding one more tcp port overflows.
    let mut p = base();
    let mut egress: Vec<SgRule> = (0..=u16::MAX)
        .map(|port| {
            let proto = if port % 2 == 0 {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            sg_rule(proto, Some((port, port)), "10.0.0.0/8")
        })
        .collect();
    p.security_groups = vec![SecurityGroup {
        name: "many".into(),
        egress: egress.clone(),
    }];
    p.applied_security_groups = vec!["many".into()];
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.sg_ranges.len(), MAX_SG_RANGES as usize);
    egress.push(sg_rule(
        Proto::Tcp,
        Some((u16::MAX, u16::MAX)),
        "10.1.0.0/16",
    ));
    p.security_groups[0].egress = egress;
    assert!(has(&errors(&p), "security_groups", |k| matches!(
        k,
        ErrorKind::Capacity {
            max: MAX_SG_RANGES,
            ..
        }
    )));
}

// ---- compiler output ----------------------------------------------------------------------

#[test]
fn group_bits_number_only_referenced_groups() {
    let mut p = base();
    p.groups.insert("unused".into(), vec!["alice".into()]);
    p.groups
        .insert("g070".into(), vec!["alice".into(), "bob".into()]);
    p.authorization_rules = (0..=70)
        .map(|i| rule("10.0.0.0/8", &[&format!("g{i:03}")]))
        .collect();
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.group_bits.len(), 71);
    assert!(!c.group_bits.contains_key("unused"));
    assert_eq!(c.group_bits["g070"], 70);
    let alice = c.client_groups(&p, "alice");
    assert_eq!(alice, vec!["g070".to_string(), "unused".to_string()]);
    let bits = c.groups_bitmap(alice.iter().map(String::as_str));
    let mut expect = [0u32; GROUP_WORDS];
    expect[70 / 32] = 1 << (70 % 32);
    assert_eq!(bits, expect);
    assert!(group_test(&bits, 70));
    assert_eq!(c.groups_bitmap(["unused", "nobody"]), [0; GROUP_WORDS]);
}

#[test]
fn authz_rules_with_equal_prefixes_merge() {
    let mut p = base();
    p.authorization_rules = vec![
        rule("10.0.0.0/16", &["b"]),
        rule("10.0.0.0/16", &["a", "b"]),
        all_users("10.0.0.0/16"),
        rule("10.0.0.0/24", &["c"]),
    ];
    let c = compile(&p, &resolver).unwrap();
    assert_eq!(c.authz.len(), 2);
    let (len, addr, v) = c.authz[0];
    assert_eq!((len, addr), (16, [10, 0, 0, 0]));
    assert_eq!(v.all_users, 1);
    assert!(group_test(&v.groups, c.group_bits["a"].into()));
    assert!(group_test(&v.groups, c.group_bits["b"].into()));
    assert!(!group_test(&v.groups, c.group_bits["c"].into()));
    assert_eq!(c.authz[1].2.all_users, 0);
}

#[test]
fn previous_group_bits_are_kept_and_new_groups_get_unused_bits() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/8", &["a", "c"])];
    let previous: BTreeMap<String, u16> = [("a".to_string(), 5), ("b".to_string(), 0)].into();
    let c = compile_with_previous(&p, &resolver, Some(&previous)).unwrap();
    // `a` keeps 5; `c` must not take 0, which live `b` members still carry.
    assert_eq!(
        c.group_bits,
        [("a".to_string(), 5), ("c".to_string(), 1)].into()
    );
    assert!(c.warnings.is_empty());

    // Every bit was used before: a new group has to reuse one, and that is a warning.
    let previous: BTreeMap<String, u16> = (0..MAX_GROUPS as u16)
        .map(|i| (format!("old{i:03}"), i))
        .collect();
    p.authorization_rules = vec![rule("10.0.0.0/8", &["new", "old007"])];
    let c = compile_with_previous(&p, &resolver, Some(&previous)).unwrap();
    assert_eq!(c.group_bits["old007"], 7);
    assert_eq!(c.group_bits["new"], 0);
    assert!(matches!(&c.warnings[0].kind,
            ErrorKind::GroupBitReused { bit: 0, previous, .. } if previous == "old000"));
}

#[test]
fn coalesce_merges_overlapping_and_adjacent_ranges() {
    let r = |lo, hi| PortRange { lo, hi };
    assert_eq!(
        coalesce([
            (30, 40),
            (5, 10),
            (11, 20),
            (35, 38),
            (0, 0),
            (65535, 65535),
            (65534, 65534),
            (2, 3)
        ]),
        vec![r(0, 0), r(2, 3), r(5, 20), r(30, 40), r(65534, 65535)]
    );
    assert_eq!(coalesce([(0, 65535), (80, 80)]), vec![r(0, 65535)]);
    assert_eq!(coalesce([]), vec![]);
}

#[test]
fn security_group_rules_are_pushed_down_into_longer_prefixes() {
    let mut p = base();
    p.security_groups = vec![SecurityGroup {
        name: "g".into(),
        egress: vec![
            sg_rule(Proto::Tcp, Some((80, 80)), "10.0.0.0/8"),
            sg_rule(Proto::Udp, Some((80, 80)), "10.0.0.0/8"),
            sg_rule(Proto::Tcp, Some((81, 90)), "10.1.0.0/16"),
            sg_rule(Proto::Icmp, None, "10.1.2.0/24"),
            sg_rule(Proto::All, None, "10.9.0.0/16"),
            sg_rule(Proto::Tcp, None, "172.16.0.0/12"),
        ],
    }];
    p.applied_security_groups = vec!["g".into()];
    let c = compile(&p, &resolver).unwrap();
    assert!(c.sg_enabled);
    let node = |len, addr| {
        c.sg_nodes
            .iter()
            .find(|n| n.0 == len && n.1 == addr)
            .map(|n| n.2)
            .unwrap()
    };
    let ranges = |off: u32, len: u32| c.sg_ranges[off as usize..(off + len) as usize].to_vec();
    let r = |lo, hi| PortRange { lo, hi };

    let n8 = node(8, [10, 0, 0, 0]);
    assert_eq!(n8.flags, 0);
    assert_eq!(ranges(n8.tcp_off, n8.tcp_len), vec![r(80, 80)]);
    // Identical lists are stored once.
    assert_eq!((n8.tcp_off, n8.tcp_len), (n8.udp_off, n8.udp_len));

    let n24 = node(24, [10, 1, 2, 0]);
    assert_eq!(n24.flags, sg_flags::ICMP);
    assert_eq!(
        ranges(n24.tcp_off, n24.tcp_len),
        vec![r(80, 90)],
        "80 and 81-90 coalesce"
    );
    assert_eq!(ranges(n24.udp_off, n24.udp_len), vec![r(80, 80)]);

    let any = node(16, [10, 9, 0, 0]);
    assert_eq!(any.flags, sg_flags::ANY);
    assert_eq!((any.tcp_len, any.udp_len), (0, 0));

    let whole = node(12, [172, 16, 0, 0]);
    assert_eq!(ranges(whole.tcp_off, whole.tcp_len), vec![r(0, 65535)]);
    assert_eq!(whole.udp_len, 0);
    assert_eq!(c.sg_nodes.len(), 5);
}

#[test]
fn compile_is_deterministic() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/8", &["z", "a"]), rule("10.1.0.0/16", &["m"])];
    let a = compile(&p, &resolver).unwrap();
    p.authorization_rules.reverse();
    let b = compile(&p, &resolver).unwrap();
    assert_eq!(a.group_bits, b.group_bits);
    assert_eq!(a.authz, b.authz);
    assert_eq!(a.group_bits["a"], 0);
}

#[test]
fn policy_deserializes_from_toml() {
    let text = r#"
        client_cidr = "10.100.0.0/22"
        gateway_addr = "10.100.0.1"
        applied_security_groups = ["web"]

        [groups]
        eng = ["alice", "bob"]

        [[target_networks]]
        name = "vpc"
        interface = "eth1"
        snat_address = "10.0.0.5"

        [[routes]]
        destination = "10.0.0.0/16"
        target_network = "vpc"
        description = "the VPC"

        [[authorization_rules]]
        destination = "10.0.0.0/16"
        groups = ["eng"]

        [[authorization_rules]]
        destination = "10.0.9.0/24"
        all_users = true

        [[security_groups]]
        name = "web"

        [[security_groups.egress]]
        protocol = "tcp"
        from_port = 443
        to_port = 443
        destination = "10.0.0.0/16"

        [[security_groups.egress]]
        protocol = "-1"
        destination = "10.0.9.0/24"
    "#;
    let p: PolicyInput = toml::from_str(text).unwrap();
    assert_eq!(p.target_networks[0].pat_port_min, 61000);
    assert_eq!(p.target_networks[0].pat_port_max, 65535);
    assert_eq!(p.security_groups[0].egress[1].protocol, Proto::All);
    assert_eq!(p.security_groups[0].egress[0].port_range(), (443, 443));
    assert_eq!(p.local_groups_of("bob"), vec!["eng".to_string()]);
    assert!(p.authorization_rules[1].all_users && p.authorization_rules[1].groups.is_empty());
    assert!(compile(&p, &resolver).is_ok());

    let typo = text.replace("all_users = true", "all_user = true");
    let err = toml::from_str::<PolicyInput>(&typo)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `all_user`"), "{err}");
    let bad_proto = text.replace("\"-1\"", "\"sctp\"");
    assert!(toml::from_str::<PolicyInput>(&bad_proto).is_err());
}

// ---- frames -------------------------------------------------------------------------------

/// An Ethernet + IPv4 frame (no options, TTL 64) carrying `l4`.
/// The source MAC names the sender's session slot (LIVE[i] has slot i).
fn frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let slot = LIVE.iter().position(|a| *a == src).unwrap_or(0) as u32;
    let mut f = vec![0u8; 6];
    f.extend_from_slice(&portcullis_common::session_mac(slot));
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    f
}

fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

fn udp(dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

fn icmp(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1]
}

/// Reference frame decision, after asserting the compiled evaluator agrees.
fn frame_decision(p: &PolicyInput, f: &[u8]) -> FrameDecision {
    let clients: BTreeMap<Ipv4Addr, BTreeSet<String>> =
        [(LIVE[0], groups(&["eng"])), (LIVE[1], groups(&[]))].into();
    let reference = evaluate_frame(p, &clients, f);
    let c = compile(p, &resolver).unwrap();
    let bitmaps = clients
        .iter()
        .map(|(a, g)| (*a, c.groups_bitmap(g.iter().map(String::as_str))))
        .collect();
    let compiled = compiled_eval::evaluate_frame(&c, p.gateway_addr, &p.gateway_ports, &bitmaps, f);
    assert_eq!(compiled, reference.verdict());
    reference
}

#[test]
fn frames_are_parsed_in_the_data_path_order() {
    let mut p = base();
    p.authorization_rules = vec![rule("10.0.0.0/16", &["eng"]), all_users("10.100.0.0/22")];
    let (me, other, gw) = (LIVE[0], LIVE[1], ip("10.100.0.1"));
    let dst = ip("10.0.1.1");
    let drop = |r| FrameDecision::Drop(r);
    let syn = frame(me, dst, PROTO_TCP, &tcp(443, tcp_flags::SYN));
    let fd = |f: &[u8]| frame_decision(&p, f);

    assert_eq!(fd(&syn), FrameDecision::Flow(vpc()));
    assert_eq!(fd(&syn[..13]), drop(Malformed));
    let mut v6 = syn.clone();
    v6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    assert_eq!(fd(&v6), drop(Ipv6Unsupported));
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(fd(&arp), drop(NotIp));
    assert_eq!(fd(&syn[..14 + 19]), drop(Malformed));
    let with = |at: usize, byte: u8| {
        let mut f = syn.clone();
        f[at] = byte;
        f
    };
    assert_eq!(
        fd(&with(14, 0x65)),
        drop(Malformed),
        "version 6 in an IPv4 ethertype"
    );
    assert_eq!(fd(&with(14, 0x44)), drop(Malformed), "IHL 4");
    assert_eq!(fd(&with(14, 0x46)), drop(IpOptions));
    assert_eq!(fd(&with(17, 19)), drop(Malformed), "total length 19");
    assert_eq!(
        fd(&with(17, 41)),
        drop(Malformed),
        "total length past the frame"
    );
    assert_eq!(fd(&with(20, 0x20)), drop(Fragment), "more fragments");
    assert_eq!(fd(&with(21, 0x01)), drop(Fragment), "fragment offset");
    assert_eq!(
        fd(&with(20, 0x40)),
        FrameDecision::Flow(vpc()),
        "DF is fine"
    );
    assert_eq!(
        fd(&frame(
            ip("10.100.0.9"),
            dst,
            PROTO_TCP,
            &tcp(443, tcp_flags::SYN)
        )),
        drop(Spoofed)
    );
    // Spoofing is checked before local delivery.
    assert_eq!(
        fd(&frame(ip("10.100.0.9"), gw, PROTO_ICMP, &icmp(8))),
        drop(Spoofed)
    );

    // L4 headers are measured against the IP total length, not the frame.
    let mut short = frame(me, dst, PROTO_TCP, &tcp(443, tcp_flags::SYN)[..19]);
    short.extend_from_slice(&[0; 10]);
    assert_eq!(fd(&short), drop(Malformed));
    let mut doff4 = syn.clone();
    doff4[14 + 20 + 12] = 4 << 4;
    assert_eq!(fd(&doff4), drop(Malformed));
    let mut doff6 = syn.clone();
    doff6[14 + 20 + 12] = 6 << 4;
    assert_eq!(fd(&doff6), drop(Malformed));
    assert_eq!(
        fd(&frame(me, dst, PROTO_UDP, &udp(53)[..7])),
        drop(Malformed)
    );
    assert_eq!(
        fd(&frame(me, dst, PROTO_ICMP, &icmp(8)[..7])),
        drop(Malformed)
    );
    // Other protocols have no L4 check: they reach the policy, then the protocol check.
    assert_eq!(fd(&frame(me, dst, 47, &[])), drop(UnsupportedProtocol));
    // Ethernet padding after the IP packet is ignored.
    let mut padded = syn.clone();
    padded.extend_from_slice(&[0xff; 6]);
    assert_eq!(fd(&padded), FrameDecision::Flow(vpc()));

    // The gateway address: only its open ports (by default ping) reach the host.
    assert_eq!(
        fd(&frame(me, gw, PROTO_ICMP, &icmp(8))),
        FrameDecision::PassLocal
    );
    assert_eq!(
        fd(&frame(me, gw, PROTO_TCP, &tcp(22, tcp_flags::SYN))),
        drop(GatewayPortClosed)
    );
    assert_eq!(
        fd(&frame(me, gw, PROTO_UDP, &udp(53))),
        drop(GatewayPortClosed)
    );
    assert_eq!(
        fd(&frame(me, gw, PROTO_ICMP, &icmp(13))),
        drop(GatewayPortClosed)
    );
    let mut open = p.clone();
    open.gateway_ports = vec![GatewayPort::Udp(53)];
    assert_eq!(
        frame_decision(&open, &frame(me, gw, PROTO_UDP, &udp(53))),
        FrameDecision::PassLocal
    );
    assert_eq!(
        frame_decision(&open, &frame(me, gw, PROTO_ICMP, &icmp(8))),
        drop(GatewayPortClosed)
    );
    // TTL <= 1: to the kernel (time exceeded) only when the flow would be allowed.
    assert_eq!(fd(&with(22, 1)), FrameDecision::PassLocal);
    assert_eq!(fd(&with(22, 0)), FrameDecision::PassLocal);
    let mut ttl1_forbidden = frame(other, dst, PROTO_TCP, &tcp(443, tcp_flags::SYN));
    ttl1_forbidden[22] = 1;
    assert_eq!(fd(&ttl1_forbidden), drop(NotAuthorized));
    // A live session's address sent by another session (its slot in the source MAC).
    let mut forged = syn.clone();
    forged[6..12].copy_from_slice(&portcullis_common::session_mac(1));
    assert_eq!(fd(&forged), drop(ForgedSource));

    // TCP: the policy decides first, then only SYN without ACK may open a flow.
    let ack = frame(me, dst, PROTO_TCP, &tcp(443, tcp_flags::ACK));
    assert_eq!(fd(&ack), drop(TcpNoSyn));
    let synack = frame(
        me,
        dst,
        PROTO_TCP,
        &tcp(443, tcp_flags::SYN | tcp_flags::ACK),
    );
    assert_eq!(fd(&synack), drop(TcpNoSyn));
    assert_eq!(
        fd(&frame(other, dst, PROTO_TCP, &tcp(443, tcp_flags::ACK))),
        drop(NotAuthorized)
    );
    assert_eq!(
        fd(&frame(
            me,
            ip("10.9.0.1"),
            PROTO_TCP,
            &tcp(443, tcp_flags::RST)
        )),
        drop(NoAuthzRule)
    );

    assert_eq!(
        fd(&frame(me, dst, PROTO_UDP, &udp(53))),
        FrameDecision::Flow(vpc())
    );
    assert_eq!(
        fd(&frame(me, dst, PROTO_ICMP, &icmp(8))),
        FrameDecision::Flow(vpc())
    );
    assert_eq!(
        fd(&frame(me, dst, PROTO_ICMP, &icmp(13))),
        drop(UnsupportedProtocol)
    );
    assert_eq!(
        fd(&frame(me, other, PROTO_ICMP, &icmp(8))),
        FrameDecision::Flow(Decision::ClientToClient)
    );
    assert_eq!(
        fd(&frame(me, ip("10.100.2.2"), PROTO_ICMP, &icmp(8))),
        drop(ClientUnreachable)
    );
}

// ---- property tests -----------------------------------------------------------------------

fn flow_frame(src: Ipv4Addr, f: &testgen::TestFlow, flags: u8) -> Vec<u8> {
    match f.proto {
        PROTO_TCP => frame(src, f.dst, PROTO_TCP, &tcp(f.dport, flags)),
        PROTO_UDP => frame(src, f.dst, PROTO_UDP, &udp(f.dport)),
        PROTO_ICMP => frame(src, f.dst, PROTO_ICMP, &icmp(f.icmp_type.unwrap_or(8))),
        other => frame(src, f.dst, other, &[1, 2, 3, 4]),
    }
}

fn arb_tcp_flags() -> impl Strategy<Value = u8> {
    use tcp_flags::*;
    prop::sample::select(vec![SYN, ACK, SYN | ACK, SYN | FIN])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The compiled maps, interpreted the way the XDP program reads them, decide exactly
    /// what the reference evaluator decides, for new flows and for whole frames.
    #[test]
    fn compiled_policy_agrees_with_reference(
        policy in testgen::arb_policy(),
        user in testgen::arb_user_groups(),
        flows in prop::collection::vec(testgen::arb_flow(), 16),
        flags in prop::collection::vec(arb_tcp_flags(), 16),
    ) {
        let compiled: CompiledPolicy = compile(&policy, &resolver)
            .map_err(|e| TestCaseError::fail(format!("valid policy rejected: {e:#?}")))?;
        let bits = compiled.groups_bitmap(user.iter().map(String::as_str));
        let slot = SlotContents::from_compiled(&compiled, 7);
        let live = live_clients();
        let clients: BTreeMap<Ipv4Addr, BTreeSet<String>> =
            [(LIVE[0], user.clone()), (LIVE[1], BTreeSet::new())].into();
        let bitmaps: BTreeMap<Ipv4Addr, _> = clients
            .iter()
            .map(|(a, g)| (*a, compiled.groups_bitmap(g.iter().map(String::as_str))))
            .collect();
        for (f, fl) in flows.iter().zip(&flags) {
            let (dst, proto, dport, icmp) = (f.dst, f.proto, f.dport, f.icmp_type);
            let want = evaluate_new_flow(&policy, &user, dst, proto, dport, icmp, &live).verdict();
            let on_policy =
                compiled_eval::evaluate_new_flow(&compiled, &bits, dst, proto, dport, icmp, &live);
            let on_slot =
                compiled_eval::evaluate_new_flow(&slot, &bits, dst, proto, dport, icmp, &live);
            prop_assert_eq!(on_policy, want, "flow {:?}", f);
            prop_assert_eq!(on_slot, want, "flow {:?} (slot view)", f);

            let fr = flow_frame(LIVE[0], f, *fl);
            let want = evaluate_frame(&policy, &clients, &fr).verdict();
            let got = compiled_eval::evaluate_frame(
                &slot,
                policy.gateway_addr,
                &policy.gateway_ports,
                &bitmaps,
                &fr,
            );
            prop_assert_eq!(got, want, "frame for {:?}", f);
        }
    }

    /// Coalesced ranges are sorted, disjoint, not adjacent, and cover exactly the input.
    #[test]
    fn coalesce_preserves_membership(
        ranges in prop::collection::vec((any::<u16>(), any::<u16>()), 0..12),
        probes in prop::collection::vec(any::<u16>(), 32),
    ) {
        let ranges: Vec<(u16, u16)> =
            ranges.into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect();
        let out = coalesce(ranges.iter().copied());
        for w in out.windows(2) {
            prop_assert!(u32::from(w[0].hi) + 1 < u32::from(w[1].lo), "{:?}", out);
        }
        let mut probes = probes;
        // Every boundary and its neighbours, where an off-by-one would show.
        probes.extend(
            ranges
                .iter()
                .flat_map(|&(lo, hi)| [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]),
        );
        for p in probes {
            let want = ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi);
            let got = out.iter().any(|r| r.lo <= p && p <= r.hi);
            prop_assert_eq!(got, want, "port {}", p);
        }
    }
}

/// Guards the generators: the property test is only meaningful if random policies reach
/// every decision the evaluator can make.
#[test]
fn generated_policies_reach_every_decision() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let policy = testgen::arb_policy()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let user = testgen::arb_user_groups()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        for _ in 0..16 {
            let f = testgen::arb_flow().new_tree(&mut runner).unwrap().current();
            let d = evaluate_new_flow(
                &policy,
                &user,
                f.dst,
                f.proto,
                f.dport,
                f.icmp_type,
                &live_clients(),
            );
            seen.insert(match d {
                Decision::Forward { target_index, .. } => format!("forward{target_index}"),
                Decision::ClientToClient => "c2c".into(),
                Decision::Drop(r) => r.name().into(),
            });
        }
    }
    for want in [
        "forward0",
        "forward1",
        "c2c",
        "no_authorization_rule",
        "not_authorized",
        "no_route",
        "security_group",
        "unsupported_protocol",
        "client_unreachable",
    ] {
        assert!(
            seen.contains(want),
            "generators never produce {want}: {seen:?}"
        );
    }
}

#[test]
fn compiled_view_arrays_behave_like_bpf_arrays() {
    let mut p = base();
    p.authorization_rules = vec![all_users("10.0.0.0/8")];
    let c = compile(&p, &resolver).unwrap();
    let slot = SlotContents::from_compiled(&c, 1);
    assert_eq!(slot.sg_range(0), Some(PortRange::default()));
    assert_eq!(slot.sg_range(MAX_SG_RANGES), None);
    assert_eq!(slot.target(1).map(|t| t.valid), Some(0));
    assert_eq!(slot.target(MAX_TARGETS), None);
    assert_eq!(c.target(1), None);
    // A route to a target slot that is not configured is a counted bug, not a forward.
    let mut broken = slot.clone();
    broken.targets.clear();
    let v = compiled_eval::evaluate_new_flow(
        &broken,
        &[0; GROUP_WORDS],
        ip("10.0.0.1"),
        PROTO_TCP,
        80,
        None,
        &live_clients(),
    );
    assert_eq!(v, Verdict::Drop(BadTarget));
}
