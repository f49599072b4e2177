//! Allowed and denied traffic from real client stacks, ICMP errors, client-to-client.
use std::{net::SocketAddr, time::Duration};

use portcullis_common::{ct_state, DropReason, Event, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use tests::{
    clients::{echo_round_trip, flow, read_line, Clients, TcpServer, UdpServer},
    gateway::{base_policy, Gateway, Options, SERVER},
    require_root,
};

use crate::*;

/// TCP (connect + data), UDP and ICMP echo from a client stack reach the server from the
/// SNAT address with the client's port kept; replies come back with the client's address;
/// counters and conntrack match what was sent.
#[test]
fn allowed_tcp_udp_icmp_are_translated_both_ways_and_counted() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let udp_srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let tcp_srv = TcpServer::start(&gw, sa(SERVER, 8080));

    // UDP: 20 datagrams of different sizes, each echoed.
    let u = c.udp_connected(40000, sa(SERVER, 7000));
    let mut bytes = 0u64;
    for i in 0..20usize {
        let payload = vec![i as u8; 10 + i * 37];
        u.send(&payload).unwrap();
        let mut buf = [0u8; 2048];
        let n = u.recv(&mut buf).expect("echo reaches the client");
        assert_eq!(&buf[..n], &payload[..], "echo {i} intact");
        bytes += 28 + payload.len() as u64;
    }
    assert!(udp_srv.wait_count(20, Duration::from_secs(1)));
    for d in udp_srv.received() {
        assert_eq!(d.from, SocketAddr::from(sa(SNAT, 40000)), "SNAT, port kept");
    }
    let ukey = FlowKey::v4(PROTO_UDP, C1.octets(), 40000, SERVER.octets(), 7000);
    let e = flow(&gw, &ukey).expect("udp conntrack entry");
    assert_eq!((e.packets_out, e.packets_in), (20, 20));
    assert_eq!((e.bytes_out, e.bytes_in), (bytes, bytes));
    assert_eq!(e.nat_addr[..4], SNAT.octets());
    assert_eq!(e.nat_port, 40000);
    assert_eq!(e.state, ct_state::ESTABLISHED);
    let s = gw.dp.maps.session_stats(0).unwrap();
    assert_eq!(
        (
            s.ingress_packets,
            s.egress_packets,
            s.ingress_bytes,
            s.egress_bytes
        ),
        (20, 20, bytes, bytes),
        "per-session counters match what was sent, exactly"
    );

    // TCP: the server sees the SNAT address and the client's port; 256 KiB echo.
    let mut t = c
        .tcp_connect(sa(SERVER, 8080), Duration::from_secs(2))
        .expect("tcp connect through the data path");
    let local = t.local_addr().unwrap().port();
    assert_eq!(read_line(&mut t).unwrap(), format!("{SNAT}:{local}"));
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert!(
        echo_round_trip(&mut t, &data).unwrap() == data,
        "TCP echo intact"
    );
    assert_eq!(tcp_srv.peers(), vec![SocketAddr::from(sa(SNAT, local))]);
    let tkey = FlowKey::v4(PROTO_TCP, C1.octets(), local, SERVER.octets(), 8080);
    let te = flow(&gw, &tkey).expect("tcp conntrack entry");
    assert_eq!(te.state, ct_state::ESTABLISHED);
    assert_eq!(te.nat_port, local);
    assert!(te.bytes_out > data.len() as u64 && te.bytes_in > data.len() as u64);

    // ICMP echo over a raw socket: three echoes, identifier kept.
    for seq in 1..=3 {
        assert!(
            c.ping(SERVER, 0x4242, seq, Duration::from_secs(1)),
            "echo {seq}"
        );
    }
    let ikey = FlowKey::v4(PROTO_ICMP, C1.octets(), 0x4242, SERVER.octets(), 0);
    let ie = flow(&gw, &ikey).expect("icmp conntrack entry");
    assert_eq!((ie.packets_out, ie.packets_in, ie.nat_port), (3, 3, 0x4242));

    // Every counted packet belongs to a flow: session counters == sums over conntrack.
    drop(t);
    std::thread::sleep(Duration::from_millis(100));
    let flows = gw.dp.maps.flows().unwrap();
    assert_eq!(flows.len(), 3, "exactly the three flows: {flows:?}");
    let s = gw.dp.maps.session_stats(0).unwrap();
    let sum = |f: fn(&portcullis::datapath::maps::Flow) -> u64| {
        flows.iter().map(|(_, e)| f(e)).sum::<u64>()
    };
    assert_eq!(s.ingress_packets, sum(|e| e.packets_out));
    assert_eq!(s.egress_packets, sum(|e| e.packets_in));
    assert_eq!(s.ingress_bytes, sum(|e| e.bytes_out));
    assert_eq!(s.egress_bytes, sum(|e| e.bytes_in));
    let ev = events(&gw);
    assert_eq!(ev[&Event::NewFlow], 3);
    assert_eq!(ev[&Event::PortKept], 3);
    assert_eq!(ev[&Event::PortTranslated], 0);
    // Every packet was redirected by XDP, none forwarded by the gateway's kernel.
    assert_eq!(ev[&Event::PassNoNeighbour], 0);
    assert_eq!(
        ev[&Event::PassLocal],
        1,
        "only the warm-up ping to the gateway"
    );
    assert_eq!(
        ev[&Event::FastPath] + ev[&Event::NewFlow],
        s.ingress_packets
    );
    assert_eq!(ev[&Event::ReverseNat], s.egress_packets);
    assert_eq!(nonzero_drops(&gw), Default::default(), "nothing dropped");
    drop(cl);
}

/// The deny-test policy: a security group, a group-only /32, an authorized prefix without
/// a route, and a destination no rule covers.
fn deny_policy() -> portcullis::policy::PolicyInput {
    tests::gateway::toml_policy(&format!(
        r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
applied_security_groups = ["sg"]
[[target_networks]]
name = "private"
interface = "{}"
snat_address = "10.0.0.1"
[[routes]]
destination = "10.0.0.0/24"
target_network = "private"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
[[authorization_rules]]
destination = "10.0.0.20/32"
groups = ["finance"]
[[authorization_rules]]
destination = "192.168.50.0/24"
all_users = true
[[security_groups]]
name = "sg"
egress = [
  {{ protocol = "udp", from_port = 7000, to_port = 7000, destination = "10.0.0.0/24" }},
  {{ protocol = "tcp", from_port = 8080, to_port = 8080, destination = "10.0.0.0/24" }},
  {{ protocol = "icmp", destination = "10.0.0.0/24" }},
  {{ protocol = "udp", from_port = 7000, to_port = 7000, destination = "192.168.0.0/16" }},
]
"#,
        tests::gateway::GW_IF
    ))
}

/// Denied flows from a real stack never reach a server socket, even though the gateway's
/// kernel has a route to every destination; each is counted under its own reason and
/// reported as a deny event, and only the allowed flow enters conntrack.
#[test]
fn denied_traffic_never_arrives_and_is_counted_by_reason() {
    require_root!();
    let no_route = std::net::Ipv4Addr::new(192, 168, 50, 10);
    let no_rule = std::net::Ipv4Addr::new(192, 168, 60, 10);
    let mut gw = Gateway::new(
        deny_policy(),
        Options {
            extra_server_addrs: vec![SERVER_B, no_route, no_rule],
            ..Options::default()
        },
    );
    // Without the data path the gateway's kernel would deliver all of these.
    for net in ["192.168.50.0/24", "192.168.60.0/24"] {
        gw.gw
            .ip(&["route", "add", net, "dev", tests::gateway::GW_IF]);
    }
    gw.add_client(C1, &["engineering"], 0);
    let mut rb = gw.dp.maps.take_deny_events().unwrap();
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let control = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let cases = [
        (sa(SERVER_B, 7000), DropReason::NotAuthorized),
        (sa(SERVER, 7001), DropReason::SecurityGroup),
        (sa(no_route, 7000), DropReason::NoRoute),
        (sa(no_rule, 7000), DropReason::NoAuthzRule),
    ];
    let servers: Vec<UdpServer> = cases
        .iter()
        .map(|(a, _)| UdpServer::start(&gw, *a, true))
        .collect();
    let tcp_denied = [
        (
            TcpServer::start(&gw, sa(SERVER_B, 8080)),
            DropReason::NotAuthorized,
        ),
        (
            TcpServer::start(&gw, sa(SERVER, 22)),
            DropReason::SecurityGroup,
        ),
    ];

    // The control flow works, so the silence below is the policy's doing.
    let ok = c.udp_connected(42000, sa(SERVER, 7000));
    ok.send(b"allowed").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(ok.recv(&mut buf).expect("control echo"), 7);

    for (i, (dst, _)) in cases.iter().enumerate() {
        let u = c.udp_connected(42001 + i as u16, *dst);
        for _ in 0..3 {
            u.send(b"denied").unwrap();
        }
    }
    assert!(!c.ping(SERVER_B, 0x5151, 1, Duration::from_millis(300)));
    for (dst, reason) in &cases {
        let extra = u64::from(*reason == DropReason::NotAuthorized); // the echo request
        assert_eq!(
            settle_drops(&gw, *reason, 3 + extra),
            3 + extra,
            "{reason:?} for {dst}"
        );
    }
    for (srv, _) in &tcp_denied {
        let before = drops(&gw);
        let r = c.tcp_connect(srv.addr, Duration::from_millis(300));
        assert!(r.is_err(), "tcp to {} must not connect", srv.addr);
        let after = drops(&gw);
        let reason = tcp_denied
            .iter()
            .find(|(s, _)| s.addr == srv.addr)
            .unwrap()
            .1;
        assert!(
            after[&reason] > before[&reason],
            "SYN to {} counted as {reason:?}",
            srv.addr
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for (s, (dst, _)) in servers.iter().zip(&cases) {
        assert_eq!(s.count(), 0, "{dst} must see nothing");
    }
    for (s, _) in &tcp_denied {
        assert!(s.peers().is_empty(), "{} must see no connection", s.addr);
    }
    assert_eq!(control.count(), 1);

    let expected: std::collections::BTreeSet<DropReason> = cases.iter().map(|c| c.1).collect();
    let got: std::collections::BTreeSet<DropReason> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(got, expected, "no other drop reason appears");
    let flows = gw.dp.maps.flows().unwrap();
    assert_eq!(
        flows.len(),
        1,
        "only the allowed flow is tracked: {flows:?}"
    );
    let s = gw.dp.maps.session_stats(0).unwrap();
    assert_eq!(
        (s.ingress_packets, s.egress_packets),
        (1, 1),
        "denied packets are not session traffic"
    );

    // Deny events name the session, the flow and the reason.
    let evs = tests::clients::drain_deny_events(&mut rb);
    for (dst, reason) in &cases {
        let n = evs
            .iter()
            .filter(|e| {
                e.reason == *reason as u8
                    && e.slot == 0
                    && e.flow.src_v4() == C1
                    && e.flow.dst_v4() == *dst.ip()
                    && e.flow.dport == dst.port()
                    && e.flow.proto == PROTO_UDP
            })
            .count();
        assert_eq!(n, 3, "deny events for {dst} ({reason:?}): {evs:?}");
    }
    assert!(evs.iter().any(|e| e.flow.proto == PROTO_ICMP
        && e.flow.sport == 0x5151
        && e.reason == DropReason::NotAuthorized as u8));
    drop(cl);
}

/// ICMP port-unreachable and TCP RST from the server reach the client translated back:
/// a connected UDP socket gets ECONNREFUSED (the client kernel matched the embedded,
/// re-translated header to its socket and accepted the checksums), also for a PAT'ed flow
/// whose embedded source port must be restored; TCP connect gets "connection refused".
#[test]
fn icmp_errors_and_resets_come_back_translated() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);

    let u = c.udp_connected(41000, sa(SERVER, 7999));
    u.send(&[7u8; 12]).unwrap();
    let mut buf = [0u8; 64];
    let err = u.recv(&mut buf).expect_err("port unreachable");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(event_count(&gw, Event::IcmpErrorTranslated), 1);
    let s = gw.dp.maps.session_stats(0).unwrap();
    // Outer IP + ICMP header + the quoted IP header and UDP header + 12 bytes of payload.
    assert_eq!(
        (s.egress_packets, s.egress_bytes),
        (1, 20 + 8 + 20 + 8 + 12)
    );

    // A host socket owns 10.0.0.1:41001, so this flow is PAT'ed; the ICMP error quotes the
    // PAT port and must be restored to 41001 for the client's socket to see it.
    let host = std::net::UdpSocket::bind((SNAT, 41001)).unwrap();
    host.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let p = c.udp_connected(41001, sa(SERVER, 7998));
    p.send(&[8u8; 12]).unwrap();
    let err = p
        .recv(&mut buf)
        .expect_err("port unreachable for the PAT'ed flow");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(event_count(&gw, Event::PortTranslated), 1);
    assert_eq!(event_count(&gw, Event::IcmpErrorTranslated), 2);
    let pkey = FlowKey::v4(PROTO_UDP, C1.octets(), 41001, SERVER.octets(), 7998);
    let pe = flow(&gw, &pkey).expect("PAT'ed flow");
    assert_ne!(pe.nat_port, 41001, "PAT'ed around the host socket");
    assert!(
        host.recv_from(&mut buf).is_err(),
        "the host socket saw nothing"
    );

    // TCP to a closed port: the RST is translated back.
    let err = c
        .tcp_connect(sa(SERVER, 7997), Duration::from_secs(1))
        .expect_err("closed port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let tcp = gw
        .dp
        .maps
        .flows()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.proto == PROTO_TCP)
        .expect("tcp flow");
    assert_eq!(tcp.1.state, ct_state::CLOSED, "RST closes the flow");
    assert_eq!(nonzero_drops(&gw), Default::default());
    drop(cl);
}

/// Client-to-client: goes through the rules, leaves through the TAP to the other client
/// untranslated, replies come back; when the pool rule goes, the live flow is cut in both
/// directions (PolicyRevoked) and new flows are refused (NoAuthzRule).
#[test]
fn client_to_client_through_the_rules_and_back_out_of_the_tap() {
    require_root!();
    let with_pool_rule: portcullis::policy::PolicyInput = {
        let mut p = base_policy();
        p.authorization_rules.push(
            tests::gateway::toml_policy(
                r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
[[authorization_rules]]
destination = "10.100.0.0/24"
all_users = true
"#,
            )
            .authorization_rules
            .remove(0),
        );
        p
    };
    let mut gw = Gateway::new(with_pool_rule.clone(), Options::default());
    gw.add_client(C1, &[], 0);
    gw.add_client(C2, &[], 1);
    let cl = Clients::start(&gw, &[C1, C2]);
    let (a, b) = (cl.get(0), cl.get(1));

    let bsock = b.udp(9000);
    let asock = a.udp_connected(9001, sa(C2, 9000));
    asock.send(b"hello b").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = bsock.recv_from(&mut buf).expect("b receives a's datagram");
    assert_eq!(&buf[..n], b"hello b");
    assert_eq!(
        from,
        SocketAddr::from(sa(C1, 9001)),
        "no translation between clients"
    );
    bsock.send_to(b"hello a", from).unwrap();
    let n = asock.recv(&mut buf).expect("a receives the reply");
    assert_eq!(&buf[..n], b"hello a");
    let key = FlowKey::v4(PROTO_UDP, C1.octets(), 9001, C2.octets(), 9000);
    let e = flow(&gw, &key).expect("c2c flow");
    assert_eq!(
        e.flags & portcullis_common::ct_flags::LOCAL,
        portcullis_common::ct_flags::LOCAL
    );
    assert_eq!(e.nat_addr[..4], C1.octets());
    assert_eq!((e.packets_out, e.packets_in), (1, 1));
    assert_eq!(event_count(&gw, Event::ClientToClient), 2);

    // TCP between the two client stacks.
    let l = b
        .run(|| std::net::TcpListener::bind((C2, 9100)))
        .expect("listen on b");
    let acceptor = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = vec![0u8; 100_000];
        std::io::Read::read_exact(&mut s, &mut got).unwrap();
        std::io::Write::write_all(&mut s, &got).unwrap();
        (peer, s) // kept open: the flow stays established
    });
    let mut t = a
        .tcp_connect(sa(C2, 9100), Duration::from_secs(2))
        .expect("a connects to b");
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let data: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
    assert!(echo_round_trip(&mut t, &data).unwrap() == data);
    let (peer, b_end) = acceptor.join().unwrap();
    assert_eq!(
        peer,
        t.local_addr().unwrap(),
        "b sees a's own address and port"
    );
    // It went through the data path (a tracked local flow, frames sent back out of the
    // TAP by XDP), not through the gateway kernel's forwarding.
    let tkey = FlowKey::v4(PROTO_TCP, C1.octets(), peer.port(), C2.octets(), 9100);
    // Delayed ACKs and window updates may still cross after the echo: compare the event
    // counter and the flow's counters once the connection is quiet (bounded wait).
    let mut te = flow(&gw, &tkey).expect("tcp c2c flow");
    let mut events = event_count(&gw, Event::ClientToClient);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let (te2, events2) = (
            flow(&gw, &tkey).expect("tcp c2c flow"),
            event_count(&gw, Event::ClientToClient),
        );
        let quiet =
            events2 == events && te2.packets_out + te2.packets_in == te.packets_out + te.packets_in;
        (te, events) = (te2, events2);
        if quiet {
            break;
        }
    }
    assert_ne!(te.flags & portcullis_common::ct_flags::LOCAL, 0);
    assert_eq!(te.state, ct_state::ESTABLISHED);
    assert_eq!(
        events,
        2 + te.packets_out + te.packets_in,
        "every packet of both flows left through the TAP"
    );
    assert_eq!(
        event_count(&gw, Event::PassLocal),
        2,
        "only the two warm-up pings"
    );
    drop((t, b_end));
    // The closes (FIN, ACK) cross the data path too: let them finish before the policy
    // changes, or they are counted among the revoked drops below (bounded wait).
    let mut closing = event_count(&gw, Event::ClientToClient);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = event_count(&gw, Event::ClientToClient);
        if now == closing {
            break;
        }
        closing = now;
    }

    // Take the pool rule away.
    gw.set_policy(base_policy());
    let before = drops(&gw);
    bsock.send_to(b"after revoke", from).unwrap();
    asock.send(b"after revoke").unwrap();
    let new = a.udp_connected(9002, sa(C2, 9000));
    new.send(b"new flow").unwrap();
    assert_eq!(
        settle_drops(
            &gw,
            DropReason::PolicyRevoked,
            before[&DropReason::PolicyRevoked] + 2
        ),
        before[&DropReason::PolicyRevoked] + 2,
        "both directions of the live flow are cut"
    );
    assert_eq!(
        settle_drops(
            &gw,
            DropReason::NoAuthzRule,
            before[&DropReason::NoAuthzRule] + 1
        ),
        before[&DropReason::NoAuthzRule] + 1
    );
    assert!(silent(&asock, SILENCE), "a gets nothing");
    assert!(silent(&bsock, SILENCE), "b gets nothing");

    // Removing the destination session cuts flows towards it too; it is then unreachable.
    gw.set_policy(with_pool_rule);
    let fresh = a.udp_connected(9003, sa(C2, 9000));
    fresh.send(b"to b").unwrap();
    assert!(bsock.recv_from(&mut buf).is_ok(), "allowed again");
    let cut = gw.dp.maps.remove_client(C2).unwrap();
    assert_eq!(
        cut, 3,
        "UDP 9001 (revoked), TCP 9100 (closing), UDP 9003: all towards b"
    );
    // A second removal (the re-check ended the session, then its Disconnected event comes)
    // finds nothing to do, and says so without an error.
    assert_eq!(gw.dp.maps.remove_client(C2).unwrap(), 0);
    assert!(gw
        .dp
        .maps
        .flows()
        .unwrap()
        .iter()
        .all(|(k, _)| k.dst_v4() != C2));
    fresh.send(b"to b again").unwrap();
    assert_eq!(settle_drops(&gw, DropReason::ClientUnreachable, 1), 1);
    assert!(silent(&bsock, SILENCE), "b gets nothing");
    drop(cl);
}

/// What a real stack sends besides plain packets gets the documented verdict: UDP without
/// a checksum (SO_NO_CHECK) is translated both ways and stays checksum-less; a datagram
/// larger than the MTU leaves the client as fragments, each dropped as Fragment; IP
/// options are dropped as IpOptions; TTL 1 is handed to the gateway's kernel, which
/// answers with ICMP time exceeded through the TAP (and forwards nothing).
#[test]
fn odd_packets_from_a_real_stack_get_their_documented_verdicts() {
    use tests::clients::{set_ip_options, setsockopt_int};
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    setsockopt_int(&srv.socket, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
    let mut buf = [0u8; 4096];

    // No UDP checksum in either direction.
    let nock = c.udp_connected(50000, sa(SERVER, 7000));
    setsockopt_int(&nock, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
    nock.send(b"no checksum").unwrap();
    let n = nock
        .recv(&mut buf)
        .expect("checksum-less datagrams pass both ways");
    assert_eq!(&buf[..n], b"no checksum");
    assert_eq!(srv.received()[0].from, SocketAddr::from(sa(SNAT, 50000)));

    // 3000 bytes over a 1500-byte MTU: three fragments, all dropped.
    let big = c.udp_connected(50001, sa(SERVER, 7000));
    big.send(&[0xab; 3000]).unwrap();
    assert_eq!(settle_drops(&gw, DropReason::Fragment, 3), 3);

    // IP options: three NOPs and an end-of-list.
    let opt = c.udp_connected(50002, sa(SERVER, 7000));
    set_ip_options(&opt, &[1, 1, 1, 0]);
    opt.send(b"options").unwrap();
    assert_eq!(settle_drops(&gw, DropReason::IpOptions, 1), 1);

    // TTL 1: the gateway's kernel answers, nothing is forwarded.
    let icmp = c.icmp_socket();
    let ttl1 = c.udp_connected(50003, sa(SERVER, 7000));
    setsockopt_int(&ttl1, libc::IPPROTO_IP, libc::IP_TTL, 1);
    ttl1.send(b"ttl 1").unwrap();
    let (from, code, msg) = icmp
        .wait_type(11, Duration::from_secs(1))
        .expect("time exceeded from the gateway");
    assert_eq!((from, code), (tests::gateway::GATEWAY, 0));
    // The quoted header is the client's own datagram, untranslated.
    assert_eq!(
        &msg[8 + 12..8 + 20],
        &[C1.octets(), SERVER.octets()].concat()[..]
    );
    assert_eq!(u16::from_be_bytes([msg[28], msg[29]]), 50003);
    assert_eq!(
        event_count(&gw, Event::PassLocal),
        2,
        "warm-up ping + TTL 1"
    );

    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        srv.count(),
        1,
        "only the checksum-less datagram reached the server"
    );
    assert_eq!(gw.dp.maps.flows().unwrap().len(), 1);
    let got: std::collections::BTreeSet<_> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(
        got,
        [DropReason::Fragment, DropReason::IpOptions].into(),
        "nothing else dropped"
    );
    drop(cl);
}

/// The first packet towards a host the gateway has no neighbour entry for is translated
/// and handed to the gateway's kernel (PassNoNeighbour), which forwards it and resolves
/// the neighbour; the reply is translated back, and later packets are redirected by XDP.
#[test]
fn first_packet_to_an_unresolved_neighbour_goes_through_the_kernel() {
    require_root!();
    let mut gw = Gateway::new(
        base_policy(),
        Options {
            extra_server_addrs: vec![SERVER_B],
            ..Options::default()
        },
    );
    gw.gw.ip(&[
        "neigh",
        "del",
        &SERVER_B.to_string(),
        "dev",
        tests::gateway::GW_IF,
    ]);
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let srv = UdpServer::start(&gw, sa(SERVER_B, 7000), true);
    let u = cl.get(0).udp_connected(51000, sa(SERVER_B, 7000));
    let mut buf = [0u8; 64];
    for i in 0..6u8 {
        u.send(&[i; 8]).unwrap();
        let n = u.recv(&mut buf).unwrap_or_else(|e| panic!("echo {i}: {e}"));
        assert_eq!(&buf[..n], &[i; 8]);
    }
    assert!(srv
        .received()
        .iter()
        .all(|d| d.from == SocketAddr::from(sa(SNAT, 51000))));
    assert_eq!(
        event_count(&gw, Event::PassNoNeighbour),
        1,
        "only the first packet"
    );
    let key = FlowKey::v4(PROTO_UDP, C1.octets(), 51000, SERVER_B.octets(), 7000);
    let e = flow(&gw, &key).unwrap();
    assert_eq!((e.packets_out, e.packets_in), (6, 6));
    assert_eq!(nonzero_drops(&gw), Default::default());
    drop(cl);
}

/// Two clients ping the same server with the same echo identifier: the second echo's
/// identifier is PAT'ed on the way out and restored on the way back, so each client's
/// stack gets its own replies.
#[test]
fn colliding_icmp_echo_identifiers_are_translated_and_restored() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    gw.add_client(C2, &[], 1);
    let cl = Clients::start(&gw, &[C1, C2]);
    for seq in 1..=3 {
        for i in 0..2 {
            assert!(
                cl.get(i).ping(SERVER, 0x3333, seq, Duration::from_secs(1)),
                "client {i} echo {seq}"
            );
        }
    }
    let k1 = FlowKey::v4(PROTO_ICMP, C1.octets(), 0x3333, SERVER.octets(), 0);
    let k2 = FlowKey::v4(PROTO_ICMP, C2.octets(), 0x3333, SERVER.octets(), 0);
    let (e1, e2) = (flow(&gw, &k1).unwrap(), flow(&gw, &k2).unwrap());
    assert_eq!(e1.nat_port, 0x3333, "first identifier kept");
    assert_ne!(e2.nat_port, 0x3333, "second identifier translated");
    let (lo, hi) = (
        portcullis::policy::model::DEFAULT_PAT_PORT_MIN,
        portcullis::policy::model::DEFAULT_PAT_PORT_MAX,
    );
    assert!((lo..=hi).contains(&e2.nat_port));
    assert_eq!((e1.packets_in, e2.packets_in), (3, 3));
    assert_eq!(event_count(&gw, Event::PortTranslated), 1);
    drop(cl);
}

/// Per-session counters for client-to-client traffic should count for both sessions:
/// what the responder sends is its ingress, what it receives its egress.
#[test]
fn client_to_client_traffic_counts_for_both_sessions() {
    require_root!();
    let mut policy = base_policy();
    policy.authorization_rules[0].destination = "10.0.0.0/8".parse().unwrap();
    let mut gw = Gateway::new(policy, Options::default());
    gw.add_client(C1, &[], 0);
    gw.add_client(C2, &[], 1);
    let cl = Clients::start(&gw, &[C1, C2]);
    let b = cl.get(1).udp(9000);
    let a = cl.get(0).udp_connected(9001, sa(C2, 9000));
    a.send(&[1; 72]).unwrap(); // 100-byte IP packet
    let mut buf = [0u8; 128];
    let (_, from) = b.recv_from(&mut buf).expect("b receives");
    b.send_to(&[2; 172], from).unwrap(); // 200-byte IP packet
    a.recv(&mut buf).expect("a receives the reply");
    let sa0 = gw.dp.maps.session_stats(0).unwrap();
    let sa1 = gw.dp.maps.session_stats(1).unwrap();
    assert_eq!(
        (sa0.ingress_bytes, sa0.egress_bytes),
        (100, 200),
        "initiator"
    );
    assert_eq!(
        (sa1.ingress_bytes, sa1.egress_bytes),
        (200, 100),
        "responder"
    );
    drop(cl);
}
