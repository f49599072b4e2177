//! Compiler output: group bits, merged prefixes, coalesced ranges, pushed-down security groups, TOML.
use super::*;

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
