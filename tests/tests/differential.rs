//! Differential property test: the XDP TAP program decides what the reference evaluator
//! (`portcullis::policy::eval::evaluate_frame`) decides, for random policies, random
//! clients' groups and random frames (well-formed and broken), each frame a new flow.
//!
//! The XDP verdict is read from what the kernel reports: the action, the one drop counter
//! that moved (or none), the events, and for admitted packets the conntrack entry (target
//! network, translation) and the frame that left (source translated to the target's
//! address, port kept, TTL - 1, MACs from the FIB, every checksum right).
//!
//! One gateway for the whole run. Its target veth is re-addressed out of the generators'
//! address universe, with a default route through a static neighbour, so every forwarded
//! destination resolves in the FIB; the oracle knows which destinations the kernel itself
//! refuses to forward (loopback, the gateway's own addresses).
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use portcullis::policy::{
    eval::{evaluate_frame, Decision, FrameDecision},
    model::AuthzRule,
    testgen::{self, TestFlow, LIVE},
    PolicyInput,
};
use portcullis_common::{ct_flags, DropReason, Event, PROG_TAP, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tests::{
    frames::{self, tcp, *},
    gateway::*,
    require_root,
};

/// Random policies, with `PACKETS_PER_POLICY` frames each (over 10,000 frames in all).
/// Applying a policy costs ~0.2 s (the reconciler reads both slots element by element),
/// so the run favours many frames per policy over many policies.
const POLICIES: u32 = 64;
const PACKETS_PER_POLICY: usize = 160;

/// The target veth's address and the next hop every forwarded packet resolves to: outside
/// the 10.0.0.0/8 the generators draw rules and destinations from.
/// A /31 (RFC 3021): the link holds only the gateway's address and the next hop, so no
/// destination is on-link without a neighbour entry.
const GW_VETH: &str = "172.31.255.0/31";
const GW_VETH_ADDR: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 0);
const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);

/// Destinations the kernel's FIB does not forward (loopback, the gateway's own addresses):
/// the policy may allow them, the data path then counts `FibLookupFailed` (with TTL <= 1,
/// `LocalDestination`).
/// Nothing else may fail the FIB lookup here (the anchors at the start check this model).
fn kernel_refuses(dst: Ipv4Addr) -> bool {
    dst.is_loopback() || dst == GW_VETH_ADDR
}

/// What a frame does to a client's packet, as far as both sides can say.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Drop(DropReason),
    PassLocal,
    /// Translated to `snat` and sent out through target network `target`.
    Forward {
        target: u32,
        snat: Ipv4Addr,
    },
    ClientToClient,
}

#[derive(Clone, Copy, Debug)]
enum Mutation {
    None,
    /// Keep only this many bytes after the Ethernet header.
    Truncate(usize),
    TotLen(u16),
    VersionIhl(u8),
    Frag(u16),
    EtherType(u16),
    /// Bytes after the IP packet (Ethernet padding).
    Padding(usize),
    /// TCP data offset, in 32-bit words.
    TcpDataOffset(u8),
    /// Sent by another session than the one owning the source address.
    OtherSession,
}

#[derive(Clone, Debug)]
struct TestPacket {
    src: Ipv4Addr,
    flow: TestFlow,
    sport: u16,
    tcp_flags: u8,
    ttl: u8,
    zero_udp_csum: bool,
    mutation: Mutation,
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        30 => Just(Mutation::None),
        1 => (0usize..48).prop_map(Mutation::Truncate),
        1 => (0u16..80).prop_map(Mutation::TotLen),
        1 => select(vec![0x44u8, 0x40, 0x46, 0x4f, 0x55, 0x65, 0x35, 0x05])
            .prop_map(Mutation::VersionIhl),
        1 => select(vec![0x2000u16, 0x0001, 0x1fff, 0x6000, 0x8000, 0x0000])
            .prop_map(Mutation::Frag),
        1 => select(vec![0x0806u16, 0x86dd, 0x8100, 0x88cc, 0x0000, 0x0801])
            .prop_map(Mutation::EtherType),
        1 => (1usize..40).prop_map(Mutation::Padding),
        1 => (0u8..16).prop_map(Mutation::TcpDataOffset),
        1 => Just(Mutation::OtherSession),
    ]
}

/// Destinations inside the policy's own prefixes, so that many frames get past
/// authorization and exercise routes and security groups: mostly the rules' prefixes,
/// sometimes those of routes and security-group rules.
fn arb_dst_for(policy: &PolicyInput) -> BoxedStrategy<Ipv4Addr> {
    fn v4(nets: impl Iterator<Item = IpNet>) -> Vec<Ipv4Net> {
        nets.filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect()
    }
    fn inside(nets: Vec<Ipv4Net>) -> BoxedStrategy<Ipv4Addr> {
        if nets.is_empty() {
            return testgen::arb_dst().boxed();
        }
        let offsets = vec![0u64, 1, 2, 3, 127, 128, 255, 256, 65_535, 1 << 20];
        (select(nets), select(offsets))
            .prop_map(|(n, off)| {
                let size = 1u64 << (32 - n.prefix_len());
                Ipv4Addr::from(u32::from(n.network()) + (off % size) as u32)
            })
            .boxed()
    }
    let rules = v4(policy.authorization_rules.iter().map(|r| r.destination));
    let others = v4(policy.routes.iter().map(|r| r.destination).chain(
        policy
            .security_groups
            .iter()
            .flat_map(|g| g.egress.iter().map(|r| r.destination)),
    ));
    prop_oneof![3 => inside(rules), 1 => inside(others)].boxed()
}

fn arb_packet(dst: BoxedStrategy<Ipv4Addr>) -> impl Strategy<Value = TestPacket> {
    (
        prop_oneof![
            6 => Just(LIVE[0]),
            3 => Just(LIVE[1]),
            // No session: spoofed (inside and outside the pool).
            1 => select(vec![
                Ipv4Addr::new(10, 100, 0, 7),
                Ipv4Addr::new(10, 100, 0, 1),
                Ipv4Addr::new(10, 0, 0, 1),
            ]),
        ],
        testgen::arb_flow(),
        dst,
        prop_oneof![3 => 1024u16..65535, 1 => Just(0u16), 1 => 1u16..1024],
        select(vec![
            tcp::SYN,
            tcp::SYN,
            tcp::SYN,
            tcp::ACK,
            tcp::SYN | tcp::ACK,
            tcp::SYN | tcp::FIN,
            tcp::RST,
            tcp::SYN | tcp::PSH,
            0,
        ]),
        prop_oneof![16 => Just(64u8), 1 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8), 1 => any::<u8>()],
        prop::bool::weighted(0.2),
        arb_mutation(),
    )
        .prop_map(
            |(src, mut flow, dst, sport, tcp_flags, ttl, zero_udp_csum, mutation)| {
                flow.dst = dst;
                TestPacket {
                src,
                flow,
                sport,
                tcp_flags,
                ttl,
                zero_udp_csum,
                mutation,
            }
            },
        )
}

impl TestPacket {
    fn pkt(&self) -> Pkt {
        let f = &self.flow;
        let p = match f.proto {
            PROTO_TCP => Pkt::tcp(self.src, self.sport, f.dst, f.dport, self.tcp_flags),
            PROTO_UDP => {
                let p = Pkt::udp(self.src, self.sport, f.dst, f.dport, b"payload");
                if self.zero_udp_csum {
                    p.zero_udp_csum()
                } else {
                    p
                }
            }
            PROTO_ICMP => {
                let ty = f.icmp_type.unwrap_or(ICMP_ECHO_REQUEST);
                Pkt::icmp(
                    self.src,
                    f.dst,
                    ty,
                    0,
                    echo_rest(self.sport, 1),
                    b"12345678",
                )
            }
            other => Pkt::raw(self.src, f.dst, other, &[0, 0, 0x08, 0, 1, 2, 3, 4]),
        };
        // LIVE[i] is the session in slot i (the fixture writes the clients map so).
        let slot = LIVE.iter().position(|a| *a == self.src).unwrap_or(0) as u32;
        p.ttl(self.ttl).session(slot)
    }

    fn frame(&self) -> Vec<u8> {
        let mut v = self.pkt().frame();
        match self.mutation {
            Mutation::None => {}
            Mutation::Truncate(n) => v.truncate(14 + n),
            Mutation::TotLen(l) => {
                v[16..18].copy_from_slice(&l.to_be_bytes());
                fix_ip_csum(&mut v);
            }
            Mutation::VersionIhl(b) => {
                v[14] = b;
                if b & 0xf >= 5 {
                    fix_ip_csum(&mut v);
                }
            }
            Mutation::Frag(f) => {
                v[20..22].copy_from_slice(&f.to_be_bytes());
                fix_ip_csum(&mut v);
            }
            Mutation::EtherType(t) => v[12..14].copy_from_slice(&t.to_be_bytes()),
            Mutation::Padding(n) => v.extend(std::iter::repeat_n(0xa5, n)),
            Mutation::TcpDataOffset(o) => {
                if self.flow.proto == PROTO_TCP {
                    v[14 + 20 + 12] = o << 4;
                }
            }
            Mutation::OtherSession => v[6..12].copy_from_slice(&portcullis_common::session_mac(7)),
        }
        v
    }
}

struct Fixture {
    gw: Gateway,
    tap_if: u32,
    next_hop_mac: [u8; 6],
    /// Verdicts seen, for the coverage check.
    seen: BTreeMap<String, u64>,
    packets: u64,
    fib_refused: u64,
    policy_time: Duration,
}

fn groups(g: &BTreeSet<String>) -> Vec<&str> {
    g.iter().map(String::as_str).collect()
}

fn verdict_name(v: &Verdict) -> String {
    match v {
        Verdict::Drop(r) => r.name().to_string(),
        Verdict::PassLocal => "pass_local".into(),
        Verdict::Forward { target, .. } => format!("forward{target}"),
        Verdict::ClientToClient => "client_to_client".into(),
    }
}

/// The reference verdict for a frame, with what the kernel adds (FIB refusals).
fn expected(
    policy: &PolicyInput,
    clients: &BTreeMap<Ipv4Addr, BTreeSet<String>>,
    frame: &[u8],
) -> Verdict {
    match evaluate_frame(policy, clients, frame) {
        FrameDecision::Drop(r) => Verdict::Drop(r),
        // TTL expired after authorization: the kernel answers, unless it is a local address.
        FrameDecision::PassLocal
            if frame[22] <= 1
                && kernel_refuses(Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])) =>
        {
            Verdict::Drop(DropReason::LocalDestination)
        }
        FrameDecision::PassLocal => Verdict::PassLocal,
        FrameDecision::Flow(Decision::Forward {
            target_index, snat, ..
        }) => {
            let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
            if kernel_refuses(dst) {
                Verdict::Drop(DropReason::FibLookupFailed)
            } else {
                Verdict::Forward {
                    target: target_index as u32,
                    snat,
                }
            }
        }
        FrameDecision::Flow(Decision::ClientToClient) => Verdict::ClientToClient,
        FrameDecision::Flow(Decision::Drop(r)) => Verdict::Drop(r),
    }
}

/// The frame that must leave for an admitted packet: `frame` with the source translated
/// (forward) or not (client to client), TTL - 1, the given MACs, and every checksum
/// recomputed from scratch (a UDP checksum of zero stays zero).
fn rewritten(frame: &[u8], snat: Option<Ipv4Addr>, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[0..6].copy_from_slice(&dst_mac);
    v[6..12].copy_from_slice(&src_mac);
    v[22] -= 1;
    if let Some(s) = snat {
        v[26..30].copy_from_slice(&s.octets());
    }
    fix_ip_csum(&mut v);
    let tot = usize::from(u16::from_be_bytes([v[16], v[17]]));
    let src = Ipv4Addr::new(v[26], v[27], v[28], v[29]);
    let dst = Ipv4Addr::new(v[30], v[31], v[32], v[33]);
    let proto = v[23];
    let l4 = 34..14 + tot;
    let at = match proto {
        PROTO_TCP => 16,
        PROTO_UDP if v[34 + 6..34 + 8] != [0, 0] => 6,
        PROTO_ICMP => 2,
        _ => return v,
    };
    v[34 + at] = 0;
    v[34 + at + 1] = 0;
    let c = if proto == PROTO_ICMP {
        frames::csum(&v[l4])
    } else {
        let c = l4_csum(src, dst, proto, &v[l4]);
        if c == 0 && proto == PROTO_UDP {
            0xffff
        } else {
            c
        }
    };
    v[34 + at..34 + at + 2].copy_from_slice(&c.to_be_bytes());
    v
}

/// `frame` with the IPv4 header checksum and the TCP/UDP/ICMP checksum zeroed.
fn without_csums(frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[24..26].fill(0);
    let at = match v[23] {
        PROTO_TCP => 34 + 16,
        PROTO_UDP => 34 + 6,
        PROTO_ICMP => 34 + 2,
        _ => return v,
    };
    if at + 2 <= v.len() {
        v[at..at + 2].fill(0);
    }
    v
}

/// Run one frame through the TAP program and say what it did; checks the output frame of
/// admitted packets on the way.
fn observe(fx: &mut Fixture, frame: &[u8], want: &Verdict) -> Result<Verdict, TestCaseError> {
    let maps = &fx.gw.dp.maps;
    let before = Counters::read(maps);
    let prog = fx.gw.dp.program(PROG_TAP).expect("tap program");
    let (action, out) = frames::test_run(prog, fx.tap_if, frame);
    let delta = Counters::read(&fx.gw.dp.maps).since(&before);
    let flows = fx.gw.dp.maps.flows().expect("read conntrack");
    let ev = |e: Event| delta.events.iter().any(|(x, _)| *x == e);
    let ctx = || format!("{} {delta:?} flows {flows:?}", action_name(action));

    let got = match action {
        XDP_DROP => match delta.drops.as_slice() {
            [(r, 1)] => {
                // Only drops after admission (the FIB said no) leave a flow behind.
                if !matches!(
                    r,
                    DropReason::FibLookupFailed
                        | DropReason::RedirectFailed
                        | DropReason::LocalDestination
                ) {
                    prop_assert!(flows.is_empty(), "dropped but tracked: {}", ctx());
                }
                Verdict::Drop(*r)
            }
            _ => {
                return Err(TestCaseError::fail(format!(
                    "drop without one reason: {}",
                    ctx()
                )))
            }
        },
        XDP_PASS if ev(Event::PassLocal) && delta.drops.is_empty() => {
            prop_assert_eq!(&out, &frame.to_vec(), "passed frame was modified");
            Verdict::PassLocal
        }
        XDP_REDIRECT | XDP_TX => {
            prop_assert!(delta.drops.is_empty(), "{}", ctx());
            prop_assert!(ev(Event::NewFlow), "admitted without a new flow: {}", ctx());
            prop_assert_eq!(flows.len(), 1, "{}", ctx());
            let (k, e) = flows[0];
            let nat = Ipv4Addr::new(e.nat_addr[0], e.nat_addr[1], e.nat_addr[2], e.nat_addr[3]);
            // New flows never collide here (conntrack is empty): the port is kept.
            prop_assert_eq!(e.nat_port, k.sport, "port not kept: {}", ctx());
            let valid_in = verify_checksums(frame).is_ok();
            let (verdict, expect_out) = if action == XDP_TX {
                prop_assert!(ev(Event::ClientToClient), "{}", ctx());
                prop_assert_ne!(e.flags & ct_flags::LOCAL, 0);
                prop_assert_eq!(nat, k.src_v4());
                let dst = k.dst_v4();
                (
                    Verdict::ClientToClient,
                    rewritten(frame, None, fx.gw.tap.mac, client_mac(dst)),
                )
            } else {
                prop_assert!(ev(Event::PortKept), "{}", ctx());
                (
                    Verdict::Forward {
                        target: e.target,
                        snat: nat,
                    },
                    rewritten(frame, Some(nat), fx.gw.gw_mac, fx.next_hop_mac),
                )
            };
            if valid_in {
                if let Err(bad) = verify_checksums(&out) {
                    return Err(TestCaseError::fail(format!("checksums {bad:?}: {}", ctx())));
                }
                prop_assert!(
                    out == expect_out,
                    "output differs: {}",
                    frames::diff(&out, &expect_out)
                );
            } else {
                // Checksums were wrong going in: everything but them must still match.
                let (o, w) = (without_csums(&out), without_csums(&expect_out));
                prop_assert!(o == w, "output differs: {}", frames::diff(&o, &w));
            }
            verdict
        }
        _ => {
            return Err(TestCaseError::fail(format!(
                "unexpected outcome (want {want:?}): {}",
                ctx()
            )))
        }
    };
    Ok(got)
}

#[test]
fn xdp_tap_program_agrees_with_the_reference_evaluator() {
    require_root!();
    let t0 = Instant::now();
    // The generators' pool and gateway address, one target network on the veth.
    let initial = toml_policy(&format!(
        r#"
client_cidr = "{}"
gateway_addr = "10.100.0.1"
[[target_networks]]
name = "t0"
interface = "{GW_IF}"
snat_address = "192.0.2.1"
"#,
        testgen::pool()
    ));
    let gw = Gateway::new(
        initial,
        Options {
            // Deny events are not compared here; keep the ring buffer out of it.
            deny_events_per_sec: 0,
            ..Options::default()
        },
    );
    gw.gw.ip(&["addr", "flush", "dev", GW_IF]);
    gw.gw.ip(&["addr", "add", GW_VETH, "dev", GW_IF]);
    let next_hop_mac = gw.server_mac;
    gw.gw.ip(&[
        "neigh",
        "replace",
        &NEXT_HOP.to_string(),
        "lladdr",
        &fmt_mac(&next_hop_mac),
        "dev",
        GW_IF,
        "nud",
        "permanent",
    ]);
    gw.gw
        .ip(&["route", "add", "default", "via", &NEXT_HOP.to_string()]);
    let tap_if = gw.tap.ifindex;
    let fx = RefCell::new(Fixture {
        gw,
        tap_if,
        next_hop_mac,
        seen: BTreeMap::new(),
        packets: 0,
        fib_refused: 0,
        policy_time: Duration::ZERO,
    });

    // Anchors for the oracle's model of the kernel: with a policy that allows and routes
    // everything, destinations that only the gateway's FIB can refuse.
    {
        let mut fx = fx.borrow_mut();
        let mut open = testgen::base_policy();
        for t in &mut open.target_networks {
            t.interface = GW_IF.into();
        }
        open.routes[0].destination = "0.0.0.0/0".parse().unwrap();
        open.authorization_rules = vec![AuthzRule {
            destination: "0.0.0.0/0".parse().unwrap(),
            groups: vec![],
            all_users: true,
            description: None,
        }];
        fx.gw.set_policy(open.clone());
        fx.gw.add_client(LIVE[0], &[], 0);
        let clients: BTreeMap<Ipv4Addr, BTreeSet<String>> = [(LIVE[0], BTreeSet::new())].into();
        let mut refused = 0;
        for dst in [
            "127.0.0.1",
            "127.255.255.254",
            "172.31.255.0",
            "172.31.255.1",
            "172.31.255.2",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "10.100.4.1",
            "10.1.2.3",
        ] {
            let dst: Ipv4Addr = dst.parse().unwrap();
            fx.gw.dp.maps.delete_flows(|_, _| true).unwrap();
            let frame = Pkt::udp(LIVE[0], 4000, dst, 53, b"anchor").frame();
            let want = expected(&open, &clients, &frame);
            refused += u32::from(want == Verdict::Drop(DropReason::FibLookupFailed));
            let got = observe(&mut fx, &frame, &want).unwrap_or_else(|e| panic!("{dst}: {e}"));
            assert_eq!(got, want, "anchor destination {dst}");
        }
        assert_eq!(refused, 3, "the anchors cover both kinds of refusal");
    }

    let mut runner = TestRunner::new(Config {
        cases: POLICIES,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = testgen::arb_policy_on(GW_IF).prop_flat_map(|policy| {
        // Half the frames go to the generators' universe, half into this policy's prefixes.
        let dst = prop_oneof![
            1 => testgen::arb_dst(),
            1 => arb_dst_for(&policy),
        ]
        .boxed();
        (
            Just(policy),
            testgen::arb_user_groups(),
            testgen::arb_user_groups(),
            prop::collection::vec(arb_packet(dst), PACKETS_PER_POLICY),
        )
    });
    let result = runner.run(&strategy, |(policy, g0, g1, packets)| {
        let mut fx = fx.borrow_mut();
        let t = Instant::now();
        fx.gw.set_policy(policy.clone());
        // The reconciler diffs against its write-through shadow: it must be the truth.
        prop_assert!(
            fx.gw
                .dp
                .maps
                .shadow_matches_kernel()
                .expect("read the policy slots"),
            "the reconciler's shadow differs from the kernel's policy maps"
        );
        // Group bits may have changed with the policy: write the sessions again.
        fx.gw.add_client(LIVE[0], &groups(&g0), 0);
        fx.gw.add_client(LIVE[1], &groups(&g1), 1);
        fx.policy_time += t.elapsed();
        let clients: BTreeMap<Ipv4Addr, BTreeSet<String>> =
            [(LIVE[0], g0.clone()), (LIVE[1], g1.clone())].into();
        for p in &packets {
            // Every packet opens a new flow.
            fx.gw
                .dp
                .maps
                .delete_flows(|_, _| true)
                .expect("clear conntrack");
            let frame = p.frame();
            let want = expected(&policy, &clients, &frame);
            let got = observe(&mut fx, &frame, &want)
                .map_err(|e| TestCaseError::fail(format!("{e} for {p:?}")))?;
            prop_assert_eq!(&got, &want, "packet {:?}\nframe {:02x?}", p, frame);
            fx.packets += 1;
            if want == Verdict::Drop(DropReason::FibLookupFailed) {
                fx.fib_refused += 1;
            }
            *fx.seen.entry(verdict_name(&got)).or_default() += 1;
        }
        Ok(())
    });
    let fx = fx.into_inner();
    eprintln!(
        "{} frames over {POLICIES} policies in {:?} ({:?} applying policies); \
         {} allowed by policy but refused by the kernel FIB; verdicts: {:?}",
        fx.packets,
        t0.elapsed(),
        fx.policy_time,
        fx.fib_refused,
        fx.seen
    );
    if let Err(e) = result {
        panic!("XDP and the reference evaluator disagree: {e}");
    }
    assert!(fx.packets >= 10_000, "only {} frames", fx.packets);
    // The run is only meaningful if it reached every verdict the TAP program can give
    // for a new flow from these generators.
    for v in [
        "forward0",
        "forward1",
        "client_to_client",
        "pass_local",
        "malformed",
        "not_ip",
        "ipv6_unsupported",
        "ip_options",
        "fragment",
        "spoofed_source",
        "forged_source",
        "no_authorization_rule",
        "not_authorized",
        "no_route",
        "security_group",
        "unsupported_protocol",
        "tcp_no_syn",
        "client_unreachable",
    ] {
        assert!(
            fx.seen.contains_key(v),
            "no frame got verdict {v}: {:?}",
            fx.seen
        );
    }
}
