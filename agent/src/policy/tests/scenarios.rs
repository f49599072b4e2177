//! AWS worked scenarios: longest prefix, all users, routes, security groups, client to client.
use super::*;

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
