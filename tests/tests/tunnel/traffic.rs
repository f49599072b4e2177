//! Traffic through the XDP data path with SNAT; renegotiation under a TCP stream.
use super::*;

/// The policy of the SNAT test: the private /24 is routed and open to everyone except
/// 10.0.0.20, which only the (empty) group "admins" may reach.
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

fn admins_only_policy() -> portcullis::policy::PolicyInput {
    toml_policy(&format!(
        r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
[[target_networks]]
name = "private"
interface = "{GW_IF}"
snat_address = "10.0.0.1"
[[routes]]
destination = "10.0.0.0/24"
target_network = "private"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
[[authorization_rules]]
destination = "{DENIED}/32"
groups = ["admins"]
"#
    ))
}

/// ICMP, TCP and UDP from a tunnel client reach 10.0.0.10 translated to 10.0.0.1 and come
/// back; a routed but unauthorized destination is dropped by XDP (and reachable once the
/// policy allows it); the clients map follows the session.
#[test]
fn traffic_passes_xdp_with_snat() {
    require_root!();
    let mut lab = TunnelLab::new(TunnelOpts {
        policy: admins_only_policy(),
        ..TunnelOpts::default()
    });
    // A second host on the private network, reachable from the gateway like 10.0.0.10.
    lab.gw
        .net
        .ip(&["addr", "add", &format!("{DENIED}/24"), "dev", "eth0"]);
    let smac = fmt_mac(&lab.gw.server_mac);
    lab.gw.gw.ip(&[
        "neigh",
        "replace",
        &DENIED.to_string(),
        "lladdr",
        &smac,
        "dev",
        GW_IF,
        "nud",
        "permanent",
    ]);

    let cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
    let c = connect(&lab, 0, &cfg, "alice");
    let info = lab
        .maps
        .client(c.tunnel_addr)
        .unwrap()
        .unwrap_or_else(|| panic!("{} not in the clients map while connected", c.tunnel_addr));
    assert_eq!(info.slot, c.peer_id, "clients map slot is the peer-id");
    let client_ns = ns(&lab, 0).name.clone();

    // ICMP: the echo request arrives from the SNAT address.
    let sniff = lab
        .gw
        .in_net(tests::clients::IcmpSocket::new)
        .expect("raw ICMP socket in the server namespace");
    assert!(
        ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
        "ICMP through the tunnel\n{}",
        c.client.log()
    );
    let (src, _, _) = sniff
        .wait_type(8, Duration::from_secs(2))
        .expect("the server saw no echo request");
    assert_eq!(src, GW_NET_ADDR, "ICMP source at the server (SNAT)");

    // TCP: the server greets with the peer address it sees, then echoes.
    let tcp = TcpServer::start(&lab.gw, SocketAddrV4::new(SERVER, 7001));
    let mut s = run_in_ns(&client_ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((SERVER, 7001)), Duration::from_secs(3))
    })
    .expect("TCP connect through the tunnel");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer: SocketAddr = read_line(&mut s).unwrap().parse().expect("greeting");
    assert_eq!(peer.ip(), GW_NET_ADDR, "TCP source at the server (SNAT)");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_round_trip(&mut s, &data).expect("TCP echo"), data);
    assert_eq!(tcp.peers().len(), 1);
    assert_eq!(tcp.peers()[0].ip(), GW_NET_ADDR);
    drop(s);

    // UDP: echoed, seen from the SNAT address.
    let udp = UdpServer::start(&lab.gw, SocketAddrV4::new(SERVER, 7002), true);
    let u = run_in_ns(&client_ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut echoed = false;
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        u.send_to(b"pct-udp", (SERVER, 7002)).unwrap();
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"pct-udp");
            assert_eq!(from, SocketAddr::from((SERVER, 7002)));
            echoed = true;
            break;
        }
    }
    assert!(echoed, "no UDP echo through the tunnel");
    let got = udp.received();
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|d| d.from.ip() == GW_NET_ADDR),
        "UDP sources at the server: {:?}",
        got.iter().map(|d| d.from).collect::<Vec<_>>()
    );

    // Denied: 10.0.0.20 is routed (and pushed) but not authorized for alice.
    let denied_udp = UdpServer::start(&lab.gw, SocketAddrV4::new(DENIED, 7003), false);
    let before = drops(&lab, DropReason::NotAuthorized);
    assert!(
        !ping(ns(&lab, 0), DENIED, 2, Duration::from_secs(2)),
        "ICMP to the unauthorized {DENIED} passed"
    );
    for _ in 0..3 {
        u.send_to(b"pct-denied", (DENIED, 7003)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        denied_udp.count(),
        0,
        "UDP to the unauthorized {DENIED} passed"
    );
    let after = drops(&lab, DropReason::NotAuthorized);
    assert!(
        after >= before + 4,
        "NotAuthorized drops went from {before} to {after}"
    );
    // The same destination with a policy that allows it: the denial was the policy's.
    lab.set_policy(base_policy());
    assert!(
        ping(ns(&lab, 0), DENIED, 3, Duration::from_secs(3)),
        "{DENIED} unreachable even when authorized"
    );
    u.send_to(b"pct-allowed", (DENIED, 7003)).unwrap();
    assert!(denied_udp.wait_count(1, Duration::from_secs(2)));

    // Disconnect by the operator: out of the clients map, traffic stops.
    let mark = lab.mark();
    lab.tunnel().command(Command::Disconnect(c.peer_id));
    let (reason, addr) = wait_disconnected(&lab, mark, c.peer_id, Duration::from_secs(5))
        .expect("no Disconnected event after Command::Disconnect");
    assert!(matches!(reason, CloseReason::Server(_)), "{reason:?}");
    assert_eq!(addr, Some(c.tunnel_addr));
    assert!(
        wait_until(Duration::from_secs(2), || !in_clients_map(
            &lab,
            c.tunnel_addr
        )),
        "{} still in the clients map after the disconnect",
        c.tunnel_addr
    );
    assert!(
        !ping(ns(&lab, 0), SERVER, 2, Duration::from_secs(2)),
        "traffic still passes after the disconnect"
    );
}

/// Server-initiated renegotiation every 3 s under a 10 s iperf3 TCP stream: the stream
/// survives every key change. Then renegotiations started by the client (`reneg-sec`).
#[test]
fn renegotiation_keeps_tcp_stream() {
    require_root!();
    {
        let mut lab = TunnelLab::new(TunnelOpts {
            reneg: Renegotiation {
                interval: Some(Duration::from_secs(3)),
                bytes: None,
                packets: None,
            },
            ..TunnelOpts::default()
        });
        let mut cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
        cfg.extra.push("explicit-exit-notify 1".into());
        let c = connect(&lab, 0, &cfg, "alice");
        let mark = lab.mark();
        let _srv = iperf3_server(&lab.gw.net, 5201);
        let r = iperf3_client(ns(&lab, 0), SERVER, 5201, 10, false, 1)
            .unwrap_or_else(|e| panic!("iperf3 through the tunnel: {e}\n{}", c.client.log()));
        let n = rekeys(&lab, mark, c.peer_id);
        let stats = &lab.tunnel().stats;
        let rejected = stats.data_rejected.load(Ordering::Relaxed);
        eprintln!(
            "iperf3: {:.1} Mbit/s, {} retransmits, {n} renegotiations; data packets rejected \
             by the server: {rejected}; client log: {} decrypt errors, {} replays",
            r.bits_per_second / 1e6,
            r.retransmits,
            c.client.log_count("AEAD Decrypt error"),
            c.client.log_count("replay"),
        );
        assert!(r.bits_per_second > 0.0, "{r:?}");
        assert!(n >= 2, "{n} renegotiations in 10 s with a 3 s interval");
        // The new receive key is in place before the client can use it, and one reader per
        // TAP queue keeps our packet ids in order: no loss at the key switch.
        assert_eq!(rejected, 0, "data packets rejected around renegotiations");
        assert_eq!(
            c.client.log_count("AEAD Decrypt error"),
            0,
            "{}",
            c.client.log()
        );
        assert!(
            lab.seen_since(mark)
                .iter()
                .all(|ev| !matches!(ev, ServerEvent::Disconnected { .. })),
            "a session ended during the renegotiations: {:#?}",
            lab.seen_since(mark)
        );
        assert!(ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)));
        // End the session before stopping the tunnel: a session that is closing when its
        // renegotiation falls due hangs the server (see
        // `tunnel_stop_returns_when_a_renegotiation_falls_due`).
        let mark = lab.mark();
        c.client.proc.stop();
        let (reason, _) = wait_disconnected(&lab, mark, c.peer_id, Duration::from_secs(3))
            .expect("no Disconnected after the client's exit");
        assert_eq!(reason, CloseReason::ClientExit);
        lab.stop_tunnel(STOP_LIMIT).expect("stopping the tunnel");
    }
    {
        // Client-initiated: the server's own interval stays at an hour.
        let lab = TunnelLab::new(TunnelOpts::default());
        let mut cfg = ClientConfig::new(&lab.pki, "bob", Proto::Udp);
        cfg.extra.push("reneg-sec 4".into());
        let c = connect(&lab, 0, &cfg, "bob");
        let mark = lab.mark();
        let ev = lab.wait_event_since(
            mark,
            Duration::from_secs(8),
            |ev| matches!(ev, ServerEvent::Rekeyed { peer_id, .. } if *peer_id == c.peer_id),
        );
        assert!(
            ev.is_some(),
            "no Rekeyed event with reneg-sec 4 on the client; events: {:#?}\n{}",
            lab.seen_since(mark),
            c.client.log()
        );
        assert!(
            c.client.log().contains("TLS: soft reset"),
            "the client did not start the renegotiation itself:\n{}",
            c.client.log()
        );
        assert!(
            ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
            "no traffic with the renegotiated key\n{}",
            c.client.log()
        );
    }
}
