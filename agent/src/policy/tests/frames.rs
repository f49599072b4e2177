//! Frame parsing in the data path's order, and the property test: compiled maps == reference evaluator.
use super::*;

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
