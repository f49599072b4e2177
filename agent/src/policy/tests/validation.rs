//! Validation errors with their paths, pool and group limits, capacities.
use super::*;

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
