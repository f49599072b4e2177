//! Capacity limits with real traffic: a full conntrack table, per-client flow quotas and
//! an exhausted PAT range. New flows are refused and counted; live flows keep working.
use std::{collections::BTreeSet, time::Duration};

use portcullis_common::{DropReason, Event, FlowKey, PROTO_UDP};
use tests::{
    clients::{
        echo_round_trip, flow, flow_quota_counters, nat_rev_entries, read_line, Clients, TcpServer,
        UdpServer,
    },
    gateway::{base_policy, Gateway, Options, SERVER},
    require_root,
};

use crate::*;

/// Send one datagram on each socket; return the indices whose echo came back.
fn echoed(socks: &[std::net::UdpSocket], tag: &[u8]) -> Vec<usize> {
    for s in socks {
        s.send(tag).unwrap();
    }
    let mut buf = [0u8; 64];
    socks
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == tag))
        .map(|(i, _)| i)
        .collect()
}

/// With `max_flows = 32`, a client opens flows until the table is full: exactly 32 are
/// admitted, the rest are refused as ConntrackFull and never reach the server, and the
/// established TCP connection and UDP flows keep working in both directions. Freeing one
/// entry lets exactly one new flow in.
#[test]
fn conntrack_full_refuses_new_flows_and_keeps_live_ones() {
    require_root!();
    let mut gw = Gateway::new(
        base_policy(),
        Options {
            max_flows: Some(32),
            ..Options::default()
        },
    );
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let udp_srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let _tcp_srv = TcpServer::start(&gw, sa(SERVER, 8080));

    let mut t = c
        .tcp_connect(sa(SERVER, 8080), Duration::from_secs(2))
        .expect("tcp before the table fills");
    read_line(&mut t).unwrap();

    // One flow per socket, one socket at a time, so admission order is send order.
    let socks: Vec<_> = (0..40u16)
        .map(|i| c.udp_connected(43000 + i, sa(SERVER, 7000)))
        .collect();
    let mut admitted = Vec::new();
    for (i, s) in socks.iter().enumerate() {
        s.send(b"open").unwrap();
        let mut buf = [0u8; 16];
        let timeout = if admitted.len() < 31 { 1000 } else { 100 };
        s.set_read_timeout(Some(Duration::from_millis(timeout)))
            .unwrap();
        if s.recv(&mut buf).is_ok() {
            admitted.push(i);
        }
    }
    assert_eq!(
        admitted,
        (0..31).collect::<Vec<_>>(),
        "31 UDP flows + the TCP flow = 32"
    );
    assert_eq!(settle_drops(&gw, DropReason::ConntrackFull, 9), 9);
    let ports: BTreeSet<u16> = udp_srv.received().iter().map(|d| d.from.port()).collect();
    assert_eq!(
        ports,
        (43000..43031).collect(),
        "refused flows never reached the server"
    );
    assert_eq!(gw.dp.maps.flows().unwrap().len(), 32);
    assert_eq!(gw.dp.maps.nat_rev_len().unwrap(), 32);

    // Live flows keep working both ways while the table is full.
    let data = vec![0x5a; 20_000];
    assert!(
        echo_round_trip(&mut t, &data).unwrap() == data,
        "TCP still works"
    );
    for s in &socks {
        s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    }
    assert_eq!(echoed(&socks[..31], b"again"), (0..31).collect::<Vec<_>>());
    // A refused flow stays refused.
    socks[35].send(b"retry").unwrap();
    assert_eq!(settle_drops(&gw, DropReason::ConntrackFull, 10), 10);

    // Free one entry: exactly one new flow fits again.
    let freed = gw.dp.maps.delete_flows(|k, _| k.sport == 43000).unwrap();
    assert_eq!(freed, 1);
    assert_eq!(echoed(&socks[35..37], b"third"), vec![0]);
    assert_eq!(settle_drops(&gw, DropReason::ConntrackFull, 11), 11);
    assert_eq!(gw.dp.maps.flows().unwrap().len(), 32);
    let others: BTreeSet<_> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(others, BTreeSet::from([DropReason::ConntrackFull]));
    drop(cl);
}

/// One client hits its flow quota (FlowQuota, deny events with its slot) while another
/// client keeps opening flows; the capped client's existing flows still work.
#[test]
fn per_client_flow_quota_stops_one_client_not_the_other() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client_with_quota(C1, &[], 0, 4);
    gw.add_client(C2, &[], 1);
    let mut rb = gw.dp.maps.take_deny_events().unwrap();
    let cl = Clients::start(&gw, &[C1, C2]);
    let srv = UdpServer::start(&gw, sa(SERVER, 7000), true);

    let a: Vec<_> = (0..6u16)
        .map(|i| cl.get(0).udp_connected(44000 + i, sa(SERVER, 7000)))
        .collect();
    let b: Vec<_> = (0..6u16)
        .map(|i| cl.get(1).udp_connected(45000 + i, sa(SERVER, 7000)))
        .collect();
    // Sequentially, so "the first four" is well defined.
    let mut a_ok = Vec::new();
    for (i, s) in a.iter().enumerate() {
        a_ok.extend(echoed(std::slice::from_ref(s), b"a").into_iter().map(|_| i));
    }
    assert_eq!(a_ok, vec![0, 1, 2, 3]);
    assert_eq!(settle_drops(&gw, DropReason::FlowQuota, 2), 2);
    assert_eq!(
        echoed(&b, b"b"),
        (0..6).collect::<Vec<_>>(),
        "the other client is not capped"
    );
    assert_eq!(drop_count(&gw, DropReason::FlowQuota), 2);
    assert_eq!(
        echoed(&a[..4], b"a2"),
        vec![0, 1, 2, 3],
        "capped client's flows still work"
    );
    assert_eq!(srv.count(), 4 + 6 + 4);
    let pins = gw.dp.options.pin_dir();
    assert_eq!(flow_quota_counters(&pins, 0), (4, 0));
    assert_eq!(flow_quota_counters(&pins, 1), (6, 0));
    let evs = tests::clients::drain_deny_events(&mut rb);
    let quota: Vec<_> = evs
        .iter()
        .filter(|e| e.reason == DropReason::FlowQuota as u8)
        .collect();
    assert_eq!(quota.len(), 2, "{evs:?}");
    assert!(quota.iter().all(|e| e.slot == 0 && e.flow.src_v4() == C1));
    let mut sports: Vec<u16> = quota.iter().map(|e| e.flow.sport).collect();
    sports.sort();
    assert_eq!(sports, vec![44004, 44005]);
    drop(cl);
}

/// Same source port, same server ip:port from four clients and a host socket: the first
/// keeps its port, colliding flows are PAT'ed into the 3-port range (PortTranslated, the
/// server sees those ports), a flow whose port a host socket owns is PAT'ed too, and once
/// the range is used up further colliding flows are dropped (PortsExhausted) while every
/// live flow keeps working. No mapping is ever handed out twice.
#[test]
fn pat_range_exhaustion_drops_new_collisions_and_keeps_live_flows() {
    require_root!();
    let mut policy = base_policy();
    policy.target_networks[0].pat_port_min = 61000;
    policy.target_networks[0].pat_port_max = 61002;
    let mut gw = Gateway::new(policy, Options::default());
    for (slot, addr) in [C1, C2, C3, C4].into_iter().enumerate() {
        gw.add_client(addr, &[], slot as u32);
    }
    let cl = Clients::start(&gw, &[C1, C2, C3, C4]);
    let srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let pat = 61000..=61002u16;
    let dst = sa(SERVER, 7000);
    let mut buf = [0u8; 64];

    // Send one tagged datagram; return the source port the server saw (None: no echo).
    let open = |s: &std::net::UdpSocket, tag: &str| -> Option<u16> {
        s.send(tag.as_bytes()).unwrap();
        let mut b = [0u8; 64];
        s.recv(&mut b).ok()?;
        srv.received()
            .iter()
            .find(|d| d.payload == tag.as_bytes())
            .map(|d| {
                assert_eq!(d.from.ip(), std::net::IpAddr::V4(SNAT));
                d.from.port()
            })
    };

    let s1 = cl.get(0).udp_connected(5555, dst);
    assert_eq!(open(&s1, "c1"), Some(5555), "first flow keeps its port");
    assert_eq!(event_count(&gw, Event::PortKept), 1);

    // A host socket owns 10.0.0.1:5600: the client's port 5600 is not kept.
    let host = std::net::UdpSocket::bind((SNAT, 5600)).unwrap();
    host.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let s1b = cl.get(0).udp_connected(5600, dst);
    let p_host = open(&s1b, "c1-host").expect("PAT'ed around the host socket");
    assert!(pat.contains(&p_host), "{p_host}");

    let s2 = cl.get(1).udp_connected(5555, dst);
    let p2 = open(&s2, "c2").expect("second client PAT'ed");
    assert!(pat.contains(&p2), "{p2}");
    assert_eq!(event_count(&gw, Event::PortTranslated), 2);

    let s3 = cl.get(2).udp_connected(5555, dst);
    let p3 = open(&s3, "c3").expect("third client PAT'ed");
    assert!(pat.contains(&p3), "{p3}");
    let used: BTreeSet<u16> = [p_host, p2, p3].into();
    assert_eq!(used.len(), 3, "three distinct PAT ports: {used:?}");

    // The range is used up: further colliding flows are dropped, never double-mapped.
    let s4 = cl.get(3).udp_connected(5555, dst);
    s4.send(b"c4").unwrap();
    assert!(silent(&s4, SILENCE));
    assert_eq!(settle_drops(&gw, DropReason::PortsExhausted, 1), 1);
    // A client's own port that equals a PAT'ed one collides too.
    let s1c = cl.get(0).udp_connected(p2, dst);
    s1c.send(b"c1-pat-port").unwrap();
    assert!(silent(&s1c, SILENCE));
    assert_eq!(settle_drops(&gw, DropReason::PortsExhausted, 2), 2);
    assert!(
        host.recv_from(&mut buf).is_err(),
        "the host socket saw nothing"
    );

    // Every live flow still works both ways, each reply to the right client socket.
    for (s, tag) in [(&s1, "l1"), (&s1b, "l1b"), (&s2, "l2"), (&s3, "l3")] {
        s.send(tag.as_bytes()).unwrap();
        let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(&buf[..n], tag.as_bytes());
    }

    // Mappings are unique and consistent: one reverse entry per flow, pointing back.
    let flows = gw.dp.maps.flows().unwrap();
    assert_eq!(flows.len(), 4);
    let rev = nat_rev_entries(&gw.dp.options.pin_dir());
    assert_eq!(rev.len(), flows.len());
    let mapped: BTreeSet<(u16, u16)> = flows.iter().map(|(k, e)| (e.nat_port, k.dport)).collect();
    assert_eq!(
        mapped.len(),
        flows.len(),
        "no translated tuple twice: {flows:?}"
    );
    for (k, e) in &gw.dp.maps.ct_entries().unwrap() {
        let rk = portcullis::datapath::maps::reverse_key(k, e);
        assert_eq!(rev.iter().filter(|(r, f)| *r == rk && f == k).count(), 1);
    }
    let key = FlowKey::v4(PROTO_UDP, C2.octets(), 5555, SERVER.octets(), 7000);
    assert_eq!(flow(&gw, &key).unwrap().nat_port, p2);
    let others: BTreeSet<_> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(others, BTreeSet::from([DropReason::PortsExhausted]));
    drop(cl);
}
