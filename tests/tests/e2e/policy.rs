//! Policy changes under live traffic: generation flips and session revocation.
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use portcullis::policy::PolicyInput;
use portcullis_common::{ct_flags, DropReason, Event, FlowKey, PROTO_UDP};
use tests::{
    clients::{
        echo_round_trip, flow, flow_quota_counters, read_line, Clients, TcpServer, UdpServer,
    },
    gateway::{base_policy, toml_policy, Gateway, Options, GW_IF, SERVER},
    require_root,
};

use crate::*;

/// The four shapes the flip test cycles through. A (10.0.0.10) is allowed by every one of
/// them, each time by a different rule; B (10.0.0.20) is allowed, revoked by authorization,
/// allowed again by other rules, revoked by a security group.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// /24 for all users + a /32 for "staff" on B; no security group.
    Allow1,
    /// B's /32 names only "admins": the longest prefix hides the /24 (NotAuthorized).
    RevokeAuthz,
    /// /32 all-users rules for A and B, a security group allowing UDP to the /24.
    Allow2,
    /// As Allow1, but the security group only allows UDP 7000 to A.
    RevokeSg,
}

impl Shape {
    fn b_allowed(self) -> bool {
        matches!(self, Shape::Allow1 | Shape::Allow2)
    }

    fn policy(self) -> PolicyInput {
        let (rules, sg) = match self {
            Shape::Allow1 => (
                r#"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
[[authorization_rules]]
destination = "10.0.0.20/32"
groups = ["staff"]
"#,
                "",
            ),
            Shape::RevokeAuthz => (
                r#"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
[[authorization_rules]]
destination = "10.0.0.20/32"
groups = ["admins"]
"#,
                "",
            ),
            Shape::Allow2 => (
                r#"
[[authorization_rules]]
destination = "10.0.0.10/32"
all_users = true
[[authorization_rules]]
destination = "10.0.0.20/32"
all_users = true
"#,
                r#"{ protocol = "udp", destination = "10.0.0.0/24" }"#,
            ),
            Shape::RevokeSg => (
                r#"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
[[authorization_rules]]
destination = "10.0.0.20/32"
groups = ["staff"]
"#,
                r#"{ protocol = "udp", from_port = 7000, to_port = 7000, destination = "10.0.0.10/32" }"#,
            ),
        };
        let sg = if sg.is_empty() {
            String::new()
        } else {
            format!("applied_security_groups = [\"sg\"]\n[[security_groups]]\nname = \"sg\"\negress = [{sg}]\n")
        };
        toml_policy(&format!(
            r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
{sg}
[[target_networks]]
name = "private"
interface = "{GW_IF}"
snat_address = "10.0.0.1"
[[routes]]
destination = "10.0.0.0/24"
target_network = "private"
# Keeps both group names referenced in every generation, so their bits stay stable.
[[authorization_rules]]
destination = "10.0.0.99/32"
groups = ["staff", "admins"]
{rules}"#
        ))
    }
}

/// One generation switch: the activating map write happened between `before` and
/// `after` (nanoseconds since the test's epoch, microseconds apart).
struct Flip {
    before: u64,
    after: u64,
    b_allowed: bool,
}

/// Pin the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `Gateway::set_policy`, split so the instant of the switch is known: prepare the
/// inactive slot, then time only the one write that activates it.
fn flip(gw: &mut Gateway, policy: PolicyInput, epoch: Instant) -> (u32, u64, u64) {
    use portcullis::reconcile::{self, MapOp, PolicyMaps as _};
    let compiled = portcullis::policy::compile_with_previous(
        &policy,
        &|n| portcullis::datapath::ifindex(n),
        Some(&gw.compiled.group_bits),
    )
    .expect("policy compiles");
    let next = gw.dp.maps.active_generation().unwrap() + 1;
    let current = gw.dp.maps.slot_contents(reconcile::slot_for(next)).unwrap();
    let ops = reconcile::plan_generation(&current, &compiled, next);
    let (activate, prepare) = ops.split_last().expect("a plan");
    assert!(matches!(activate, MapOp::Activate { generation } if *generation == next));
    for op in prepare {
        gw.dp.maps.apply(op).unwrap();
    }
    let before = epoch.elapsed().as_nanos() as u64;
    gw.dp.maps.apply(activate).unwrap();
    let after = epoch.elapsed().as_nanos() as u64;
    gw.compiled = compiled;
    gw.policy = policy;
    (next, before, after)
}

const HOLD: Duration = Duration::from_millis(50);
const FLIPS: usize = 50;

/// Continuous UDP to A and B while the policy flips 50 times. A receives every sequence
/// number exactly once. For B, every datagram is judged by the generations live while it
/// could have been decided on: one that arrived was decided between its send and its
/// receipt, so that span must touch a generation allowing B; one that was lost was decided
/// between its send and the receipt of the next datagram to A (the sender is pinned to
/// one CPU, so its frames reach the relay, and the XDP program, in send order), so that
/// span must touch a generation revoking B. Spans that cover a switch may go either way
/// and are only counted. Each B datagram is either delivered or counted as
/// PolicyRevoked (the live flow is cut, not only new flows), and every generation
/// re-validates the live flows.
#[test]
fn policy_flips_under_continuous_traffic_lose_nothing_that_stays_allowed() {
    require_root!();
    let mut gw = Gateway::new(
        Shape::Allow1.policy(),
        Options {
            extra_server_addrs: vec![SERVER_B],
            ..Options::default()
        },
    );
    gw.add_client(C1, &["staff"], 0);
    let cl = Clients::start(&gw, &[C1]);
    let srv_a = UdpServer::start(&gw, sa(SERVER, 7000), false);
    let srv_b = UdpServer::start(&gw, sa(SERVER_B, 7000), false);
    let to_a = cl.get(0).udp_connected(46000, sa(SERVER, 7000));
    let to_b = cl.get(0).udp_connected(46001, sa(SERVER_B, 7000));
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // The sender: sequence number and send time (ns since epoch) in every datagram.
    let sender = std::thread::spawn(move || {
        pin_to_cpu(0);
        let mut sent_a = 0u32;
        let mut sent_b: Vec<(u32, u64)> = Vec::new();
        let mut seq = 0u32;
        let stamp = |seq: u32| {
            let at = epoch.elapsed().as_nanos() as u64;
            let mut p = seq.to_be_bytes().to_vec();
            p.extend_from_slice(&at.to_be_bytes());
            (p, at)
        };
        let mut error = None;
        while !stop2.load(Ordering::Relaxed) && error.is_none() {
            let (p, _) = stamp(seq);
            if let Err(e) = to_a.send(&p) {
                error = Some(format!("send to A: {e}"));
                break;
            }
            sent_a += 1;
            let (p, at) = stamp(seq);
            if let Err(e) = to_b.send(&p) {
                error = Some(format!("send to B: {e}"));
                break;
            }
            sent_b.push((seq, at));
            seq += 1;
            std::thread::sleep(Duration::from_micros(400));
        }
        (sent_a, sent_b, error)
    });
    let a_key = FlowKey::v4(PROTO_UDP, C1.octets(), 46000, SERVER.octets(), 7000);
    let b_key = FlowKey::v4(PROTO_UDP, C1.octets(), 46001, SERVER_B.octets(), 7000);
    assert!(
        wait_until(Duration::from_secs(2), || flow(&gw, &a_key).is_some()
            && flow(&gw, &b_key).is_some()),
        "both flows open before the first flip"
    );

    let cycle = [
        Shape::RevokeAuthz,
        Shape::Allow2,
        Shape::RevokeSg,
        Shape::Allow1,
    ];
    let mut flips: Vec<Flip> = Vec::new();
    let mut gens = BTreeSet::new();
    for i in 0..FLIPS {
        std::thread::sleep(HOLD / 2);
        // Mid-window: B's live flow carries the verdict of the current generation.
        let e = flow(&gw, &b_key).expect("B's flow stays in conntrack");
        let b_allowed = flips.last().is_none_or(|f| f.b_allowed);
        assert_eq!(
            e.flags & ct_flags::REVOKED == 0,
            b_allowed,
            "before flip {i}"
        );
        std::thread::sleep(HOLD / 2);
        let shape = cycle[i % cycle.len()];
        let (g, before, after) = flip(&mut gw, shape.policy(), epoch);
        assert!(gens.insert(g), "every flip is a new generation");
        flips.push(Flip {
            before,
            after,
            b_allowed: shape.b_allowed(),
        });
    }
    std::thread::sleep(HOLD);
    stop.store(true, Ordering::Relaxed);
    let (sent_a, sent_b, error) = sender.join().unwrap();
    assert_eq!(error, None);
    let settle = |s: &UdpServer| {
        let mut last = usize::MAX;
        wait_until(Duration::from_secs(2), || {
            let n = s.count();
            std::mem::replace(&mut last, n) == n
        });
    };
    settle(&srv_a);
    settle(&srv_b);

    // (seq, sent, received), ns since epoch.
    let decode = |d: &tests::clients::Datagram| {
        let seq = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
        let at = u64::from_be_bytes(d.payload[4..12].try_into().unwrap());
        (seq, at, (d.at - epoch).as_nanos() as u64)
    };
    let got_a: Vec<_> = srv_a.received().iter().map(decode).collect();
    let got_b: Vec<_> = srv_b.received().iter().map(decode).collect();
    let max_lag = got_a.iter().chain(&got_b).map(|x| x.2 - x.1).max().unwrap();
    // The relay stands in for the tunnel; if it could not keep up, frames were lost before
    // the data path saw them and nothing below could be judged.
    let relay_lost = cl.relay.stats.socket_drops.load(Ordering::Relaxed);
    assert_eq!(
        relay_lost, 0,
        "the relay dropped {relay_lost} frames before the TAP (host overloaded): cannot judge"
    );

    // A: every sequence number, exactly once, in order.
    let seqs_a: Vec<u32> = got_a.iter().map(|x| x.0).collect();
    if seqs_a.len() as u32 != sent_a {
        let have: BTreeSet<u32> = seqs_a.iter().copied().collect();
        let missing: Vec<u32> = (0..sent_a).filter(|s| !have.contains(s)).collect();
        panic!(
            "A: {} of {sent_a} datagrams arrived, missing {missing:?}; the data path forwarded \
             {} (conntrack packets_out); relay: {:?}; drops {:?}; {}",
            seqs_a.len(),
            flow(&gw, &a_key).map_or(0, |e| e.packets_out),
            cl.relay.stats,
            nonzero_drops(&gw),
            link_stats(&gw)
        );
    }
    assert!(
        seqs_a.iter().enumerate().all(|(i, s)| *s == i as u32),
        "A in order"
    );
    assert_eq!(flow(&gw, &a_key).unwrap().packets_out, u64::from(sent_a));

    // Periods between switches: (from, to, B allowed). The initial generation allows B.
    let mut periods = Vec::new();
    let (mut from, mut allowed) = (0u64, true);
    for f in &flips {
        periods.push((from, f.before, allowed));
        (from, allowed) = (f.after, f.b_allowed);
    }
    periods.push((from, u64::MAX, allowed));
    // The verdict on B throughout [a, b], if one generation covers all of it.
    let verdict = |a: u64, b: u64| {
        periods
            .iter()
            .find(|(f, t, _)| a > *f && b < *t)
            .map(|p| p.2)
    };
    let recv_a: Vec<u64> = got_a.iter().map(|x| x.2).collect();
    let received_b: std::collections::BTreeMap<u32, u64> =
        got_b.iter().map(|x| (x.0, x.2)).collect();
    assert_eq!(received_b.len(), got_b.len(), "B duplicated");
    let (mut delivered_allowed, mut dropped_revoked, mut boundary) = (0, 0, 0);
    for &(seq, sent) in &sent_b {
        match received_b.get(&seq) {
            Some(&recv) => match verdict(sent, recv) {
                Some(false) => panic!(
                    "B #{seq} was in flight only while revoked ({sent}..{recv} ns) and arrived"
                ),
                Some(true) => delivered_allowed += 1,
                None => boundary += 1,
            },
            None => match verdict(
                sent,
                recv_a.get(seq as usize + 1).copied().unwrap_or(u64::MAX),
            ) {
                Some(true) => panic!(
                    "B #{seq} was decided on only while allowed (sent at {sent} ns) and was lost"
                ),
                Some(false) => dropped_revoked += 1,
                None => boundary += 1,
            },
        }
    }
    eprintln!(
        "flip test: {sent_a} datagrams to A, {} to B: {delivered_allowed} delivered while allowed, \
         {dropped_revoked} dropped while revoked, {boundary} near a switch; {} flips, max latency {max_lag} ns",
        sent_b.len(),
        flips.len()
    );
    assert!(delivered_allowed > 0 && dropped_revoked > 0);
    // Every B datagram is either delivered or counted as a cut flow, nothing else.
    let revoked = drop_count(&gw, DropReason::PolicyRevoked);
    assert_eq!(sent_b.len() as u64, received_b.len() as u64 + revoked);
    assert_eq!(
        flow(&gw, &b_key).unwrap().packets_out,
        received_b.len() as u64
    );
    let others: BTreeSet<_> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(others, BTreeSet::from([DropReason::PolicyRevoked]));
    // One re-validation per generation for A, and for B in every generation allowing it.
    let allowing = flips.iter().filter(|f| f.b_allowed).count() as u64;
    assert_eq!(
        event_count(&gw, Event::Revalidated),
        FLIPS as u64 + allowing
    );
    assert_eq!(
        gw.dp.maps.flows().unwrap().len(),
        2,
        "no other flow was created"
    );
    drop(cl);
}

/// Removing a session cuts its flows at once: the server's replies are no longer
/// translated (the client sees nothing, the host gets them), the client's packets are
/// Spoofed, other sessions are unaffected, and the slot's quota counters are reset.
#[test]
fn removing_a_client_cuts_its_flows_immediately() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    gw.add_client(C2, &[], 1);
    let mut rb = gw.dp.maps.take_deny_events().unwrap();
    let cl = Clients::start(&gw, &[C1, C2]);
    let (c1, c2) = (cl.get(0), cl.get(1));
    let udp = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let tcp = TcpServer::start(&gw, sa(SERVER, 8080));

    let mut t = c1
        .tcp_connect(sa(SERVER, 8080), Duration::from_secs(2))
        .expect("tcp");
    read_line(&mut t).unwrap();
    assert_eq!(echo_round_trip(&mut t, b"before").unwrap(), b"before");
    let u1 = c1.udp_connected(47000, sa(SERVER, 7000));
    let u2 = c2.udp_connected(47001, sa(SERVER, 7000));
    let mut buf = [0u8; 64];
    for u in [&u1, &u2] {
        u.send(b"hi").unwrap();
        u.recv(&mut buf).expect("echo before removal");
    }
    assert_eq!(gw.dp.maps.flows().unwrap().len(), 3);

    let cut = gw.dp.maps.remove_client(C1).unwrap();
    assert_eq!(cut, 2, "C1's TCP and UDP flows");
    let left = gw.dp.maps.flows().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0.src_v4(), C2);
    assert_eq!(gw.dp.maps.nat_rev_len().unwrap(), 1);
    assert_eq!(flow_quota_counters(&gw.dp.options.pin_dir(), 0), (0, 0));

    // Replies for the cut flows are not translated: the client hears nothing.
    let ev = events(&gw);
    let mut srv_side = tcp.conn(0);
    std::io::Write::write_all(&mut srv_side, b"late").unwrap();
    udp.socket.send_to(b"late", sa(SNAT, 47000)).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        std::io::Read::read(&mut t, &mut buf).is_err(),
        "no TCP data after removal"
    );
    assert!(silent(&u1, SILENCE), "no UDP data after removal");
    let ev2 = events(&gw);
    assert_eq!(
        ev2[&Event::ReverseNat],
        ev[&Event::ReverseNat],
        "nothing translated back"
    );
    assert!(ev2[&Event::EgressPassHost] >= ev[&Event::EgressPassHost] + 2);

    // The client's own packets are no longer from a live session.
    let before = udp.count();
    u1.send(b"after").unwrap();
    assert!(wait_until(Duration::from_secs(2), || drop_count(
        &gw,
        DropReason::Spoofed
    ) >= 1));
    std::thread::sleep(Duration::from_millis(50));
    // C1's TCP stack may also still send (an ACK): count this datagram by its deny event.
    let evs = tests::clients::drain_deny_events(&mut rb);
    let spoofed: Vec<_> = evs
        .iter()
        .filter(|e| e.reason == DropReason::Spoofed as u8)
        .collect();
    assert_eq!(spoofed.len() as u64, drop_count(&gw, DropReason::Spoofed));
    assert!(spoofed
        .iter()
        .all(|e| e.flow.src_v4() == C1 && e.slot == portcullis_common::NO_SLOT));
    let udp_key = FlowKey::v4(PROTO_UDP, C1.octets(), 47000, SERVER.octets(), 7000);
    assert_eq!(spoofed.iter().filter(|e| e.flow == udp_key).count(), 1);
    assert_eq!(
        udp.count(),
        before,
        "nothing from the removed client arrives"
    );

    // The other session is untouched.
    u2.send(b"still").unwrap();
    assert_eq!(u2.recv(&mut buf).expect("C2 still works"), 5);

    // A new session for the address starts from scratch: the old TCP flow is gone for
    // good (a mid-stream segment cannot open a flow), a new UDP flow works.
    gw.add_client(C1, &[], 0);
    let _ = std::io::Write::write_all(&mut t, b"x");
    assert!(wait_until(Duration::from_secs(2), || drop_count(
        &gw,
        DropReason::TcpNoSyn
    ) >= 1));
    u1.send(b"again").unwrap();
    assert_eq!(u1.recv(&mut buf).expect("new flow after re-adding"), 5);
    assert_eq!(flow_quota_counters(&gw.dp.options.pin_dir(), 0).0, 1);
    drop(cl);
}

/// Interface counters along the path, for failure messages.
fn link_stats(gw: &Gateway) -> String {
    let gw_side = gw
        .gw
        .exec(&["ip", "-s", "-s", "link", "show", "dev", GW_IF]);
    let srv_side = gw.net.exec(&["ethtool", "-S", "eth0"]);
    let tap = gw
        .gw
        .exec(&["ip", "-s", "link", "show", "dev", tests::gateway::TAP]);
    format!(
        "{}\n{}\n{}",
        String::from_utf8_lossy(&gw_side.stdout),
        String::from_utf8_lossy(&srv_side.stdout),
        String::from_utf8_lossy(&tap.stdout)
    )
}
