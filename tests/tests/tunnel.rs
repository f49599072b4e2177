//! The stock `openvpn` client against our server, in namespaces, through the XDP data path.
//!
//! Every test builds its own [`TunnelLab`] (gateway, private network, underlay clients, our
//! tunnel in-process) and removes it on drop. The waits are bounded; the slow parts (the
//! tls-crypt mismatch checks, the revoked and expired clients) run next to the positive
//! checks instead of after them.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use portcullis::io::Command;
use portcullis::openvpn::server::ServerEvent;
use portcullis::openvpn::session::{CloseReason, FailureCode, Renegotiation};
use portcullis::pki::Validity;
use portcullis_common::DropReason;
use tests::clients::{echo_round_trip, read_line, run_in_ns, wait_until, TcpServer, UdpServer};
use tests::gateway::{base_policy, fmt_mac, toml_policy, GW_IF, GW_NET_ADDR, SERVER};
use tests::openvpn::{
    iperf3_client, iperf3_server, ping, Cipher, ClientConfig, Connected, OvpnClient, Proto,
};
use tests::tunnel::{TunnelLab, TunnelOpts, STOP_LIMIT};
use tests::{require_root, NetNs};

/// What the stock client logs once the tunnel is up.
const COMPLETED: &str = "Initialization Sequence Completed";
/// Upper bound for a client to connect (the host is shared with other builds).
const CONNECT: Duration = Duration::from_secs(20);
/// What the stock client logs when the server pushes `RESTART`.
const PUSHED_RESET: &str = "Connection reset command was pushed by server";
/// How long a refused client gets to (wrongly) complete before we call it refused.
const REFUSED: Duration = Duration::from_secs(8);

fn client_cidr() -> Ipv4Net {
    "10.100.0.0/24".parse().unwrap()
}

/// A stock client connected to the lab: its process, what its up script saw and what our
/// server's `Connected` event said.
struct Conn {
    client: OvpnClient,
    up: Connected,
    peer_id: u32,
    tunnel_addr: Ipv4Addr,
    cipher: String,
}

/// Start a client as `cn` in underlay namespace `i`, wait for it and for the server's
/// `Connected` event with the address the client got.
fn connect(lab: &TunnelLab, i: usize, cfg: &ClientConfig, cn: &str) -> Conn {
    let mark = lab.mark();
    let client = OvpnClient::start(ns(lab, i), cfg);
    let up = client
        .wait_connected(CONNECT)
        .unwrap_or_else(|e| panic!("{cn} does not connect: {e}"));
    let ev = lab.wait_event_since(mark, Duration::from_secs(5), |ev| {
        matches!(ev, ServerEvent::Connected { common_name, tunnel_addr, .. }
            if common_name == cn && *tunnel_addr == up.tun_addr)
    });
    let Some(ServerEvent::Connected {
        peer_id,
        tunnel_addr,
        cipher,
        ..
    }) = ev
    else {
        panic!(
            "no Connected event for {cn} at {}; events: {:#?}\n{}",
            up.tun_addr,
            lab.seen_since(mark),
            client.log()
        );
    };
    Conn {
        client,
        up,
        peer_id,
        tunnel_addr,
        cipher: cipher.to_string(),
    }
}

fn ns(lab: &TunnelLab, i: usize) -> &NetNs {
    &lab.underlay.client(i).ns
}

/// Wait for the `Disconnected` event of `peer_id` (after `mark`).
fn wait_disconnected(
    lab: &TunnelLab,
    mark: usize,
    peer_id: u32,
    timeout: Duration,
) -> Option<(CloseReason, Option<Ipv4Addr>)> {
    match lab.wait_event_since(
        mark,
        timeout,
        |ev| matches!(ev, ServerEvent::Disconnected { peer_id: p, .. } if *p == peer_id),
    ) {
        Some(ServerEvent::Disconnected {
            reason,
            tunnel_addr,
            ..
        }) => Some((reason, tunnel_addr)),
        _ => None,
    }
}

/// The first `Disconnected` event after `mark` from underlay client `i` whose certificate was
/// refused with code `what`; its reason as text.
fn wait_tls_refusal(
    lab: &TunnelLab,
    mark: usize,
    i: usize,
    what: FailureCode,
    timeout: Duration,
) -> Option<String> {
    let from = lab.underlay.client(i).addr;
    match lab.wait_event_since(mark, timeout, |ev| {
        matches!(ev, ServerEvent::Disconnected { reason: CloseReason::CertificateRefused { code, .. }, link, .. }
            if *code == what && link.addr().ip() == from)
    }) {
        Some(ServerEvent::Disconnected { reason, .. }) => Some(reason.to_string()),
        _ => None,
    }
}

fn connected_events(lab: &TunnelLab, mark: usize, cn: &str) -> usize {
    lab.seen_since(mark)
        .iter()
        .filter(|ev| matches!(ev, ServerEvent::Connected { common_name, .. } if common_name == cn))
        .count()
}

fn rekeys(lab: &TunnelLab, mark: usize, peer_id: u32) -> usize {
    lab.seen_since(mark)
        .iter()
        .filter(|ev| matches!(ev, ServerEvent::Rekeyed { peer_id: p, .. } if *p == peer_id))
        .count()
}

fn in_clients_map(lab: &TunnelLab, addr: Ipv4Addr) -> bool {
    lab.maps
        .client(addr)
        .expect("read the clients map")
        .is_some()
}

fn drops(lab: &TunnelLab, reason: DropReason) -> u64 {
    lab.maps
        .drop_counters()
        .expect("read the drop counters")
        .get(&reason)
        .copied()
        .unwrap_or(0)
}

/// Check that the client did not reach "Initialization Sequence Completed".
fn assert_never_connected(client: &OvpnClient, what: &str) {
    let log = client.log();
    assert!(
        !log.contains(COMPLETED),
        "{what}: the client connected although it must be refused:\n{log}"
    );
}

#[test]
fn udp_client_connects_and_pings_through_xdp() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts::default());
    let cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
    let client = OvpnClient::start(ns(&lab, 0), &cfg);
    let c = client
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", client.log()));
    eprintln!("connected: {}", c.tun_addr);
    assert!(
        ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
        "{}",
        client.log()
    );
}

/// UDP and TCP × the three AEAD ciphers × tls-crypt on and off: one lab per tls-crypt
/// setting, one client after the other. Meanwhile a client whose tls-crypt setting does not
/// match the server's tries to connect, and must not.
#[test]
fn connects_over_udp_and_tcp_with_each_cipher() {
    require_root!();
    for tls_crypt in [true, false] {
        let lab = TunnelLab::new(TunnelOpts {
            tls_crypt,
            clients: 2,
            ..TunnelOpts::default()
        });
        let start = Instant::now();
        let mark = lab.mark();
        let mut odd_cfg = ClientConfig::new(&lab.pki, "dave", Proto::Udp);
        odd_cfg.tls_crypt = if tls_crypt {
            None
        } else {
            Some(lab.pki.tls_crypt.clone())
        };
        let odd = OvpnClient::start(ns(&lab, 1), &odd_cfg);

        for proto in [Proto::Udp, Proto::Tcp] {
            for cipher in [
                Cipher::Aes256Gcm,
                Cipher::Aes128Gcm,
                Cipher::ChaCha20Poly1305,
            ] {
                let what = format!("tls-crypt {tls_crypt}, {proto:?}, {}", cipher.name());
                let mut cfg = ClientConfig::new(&lab.pki, "alice", proto);
                cfg.cipher = cipher;
                if !tls_crypt {
                    cfg.tls_crypt = None;
                }
                let c = connect(&lab, 0, &cfg, "alice");
                assert_eq!(c.cipher, cipher.name(), "{what}: negotiated cipher");
                assert!(
                    c.client
                        .log()
                        .contains(&format!("Data Channel: cipher '{}'", cipher.name())),
                    "{what}: the client does not use {}:\n{}",
                    cipher.name(),
                    c.client.log()
                );
                assert!(
                    client_cidr().contains(&c.tunnel_addr),
                    "{what}: pushed address {} outside {}",
                    c.tunnel_addr,
                    client_cidr()
                );
                assert_eq!(c.up.tun_addr, c.tunnel_addr, "{what}");
                assert!(
                    ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
                    "{what}: no ping through the tunnel\n{}",
                    c.client.log()
                );
                eprintln!("{what}: {} ok at {:?}", c.tunnel_addr, start.elapsed());
                c.client.proc.stop();
            }
        }

        let left = REFUSED.saturating_sub(start.elapsed());
        assert!(
            !odd.wait_log(COMPLETED, left),
            "tls-crypt mismatch (server {tls_crypt}): the client connected"
        );
        assert_never_connected(&odd, &format!("tls-crypt mismatch (server {tls_crypt})"));
        assert_eq!(
            connected_events(&lab, mark, "dave"),
            0,
            "tls-crypt mismatch: the server reported a connect"
        );
    }
}

/// Route, DNS, netmask and route-gateway arrive in the client's up-script environment, and a
/// user who disconnects cleanly gets the same tunnel address back.
#[test]
fn pushed_options_reach_the_client() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts::default());
    let mut cfg = ClientConfig::new(&lab.pki, "bob", Proto::Udp);
    cfg.extra.push("explicit-exit-notify 1".into());
    let c = connect(&lab, 0, &cfg, "bob");
    let env = &c.up.env;
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        c.up.routes(),
        vec![(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(255, 255, 255, 0))],
        "pushed routes; env: {env:#?}"
    );
    assert!(
        c.up.foreign_options()
            .contains(&"dhcp-option DNS 10.0.0.2".to_string()),
        "pushed DNS; env: {env:#?}"
    );
    assert_eq!(
        get("ifconfig_netmask"),
        Some("255.255.255.0"),
        "env: {env:#?}"
    );
    assert_eq!(
        get("route_vpn_gateway"),
        Some("10.100.0.1"),
        "env: {env:#?}"
    );
    assert_eq!(get("dev_type"), Some("tun"), "env: {env:#?}");
    let log = c.client.log();
    let push = log
        .lines()
        .find(|l| l.contains("PUSH_REPLY"))
        .unwrap_or_else(|| panic!("no PUSH_REPLY in the client log:\n{log}"));
    for opt in [
        "route-gateway 10.100.0.1",
        "topology subnet",
        "route 10.0.0.0 255.255.255.0",
    ] {
        assert!(push.contains(opt), "PUSH_REPLY lacks {opt:?}: {push}");
    }
    // The client installed the route: the private network goes into the tunnel.
    let routes = ns(&lab, 0).exec(&["ip", "route", "show", "10.0.0.0/24"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("via 10.100.0.1") && routes.contains("pct-tun"),
        "route to 10.0.0.0/24 in the client: {routes}"
    );
    assert!(ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)));

    // A clean disconnect (explicit-exit-notify) and a reconnect: the same address.
    let mark = lab.mark();
    let first = c.tunnel_addr;
    c.client.proc.stop();
    let (reason, addr) = wait_disconnected(&lab, mark, c.peer_id, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no Disconnected event; events: {:#?}", lab.seen_since(mark)));
    assert_eq!(reason, CloseReason::ClientExit);
    assert_eq!(addr, Some(first));
    drop(c);
    let again = connect(&lab, 0, &cfg, "bob");
    assert_eq!(
        again.tunnel_addr, first,
        "bob reconnected after a clean disconnect with another address"
    );
    assert!(ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)));
}

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

/// With pushed `ping 1` / `ping-restart 4`, a server that goes silent (its OpenVPN port
/// blocked in the gateway namespace) makes the client restart, the server drops the session
/// after twice ping-restart, and the client comes back once the port opens. A clean stop of
/// the tunnel pushes RESTART to the client.
#[test]
fn server_kill_fires_client_ping_restart() {
    require_root!();
    let mut lab = TunnelLab::new(TunnelOpts {
        ping: Duration::from_secs(1),
        ping_restart: Duration::from_secs(4),
        ..TunnelOpts::default()
    });
    let cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
    let c = connect(&lab, 0, &cfg, "alice");
    let log = c.client.log();
    assert!(
        log.lines()
            .any(|l| l.contains("PUSH_REPLY") && l.contains("ping 1,ping-restart 4")),
        "ping 1 / ping-restart 4 not pushed:\n{log}"
    );

    // The server goes silent both ways (its pings would keep the client alive otherwise).
    let gw = &lab.gw.gw;
    gw.exec(&["nft", "add", "table", "inet", "pct"]);
    for (chain, hook, rule) in [("in", "input", "dport"), ("out", "output", "sport")] {
        gw.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "pct",
            chain,
            &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
        ]);
        gw.exec(&[
            "nft", "add", "rule", "inet", "pct", chain, "udp", rule, "1194", "drop",
        ]);
    }
    let silent = Instant::now();
    let mark = lab.mark();
    assert!(
        c.client.wait_log(
            "Inactivity timeout (--ping-restart)",
            Duration::from_secs(10)
        ),
        "no ping-restart on the client:\n{}",
        c.client.log()
    );
    let after = silent.elapsed();
    eprintln!("client ping-restart after {after:?}");
    assert!(
        after >= Duration::from_millis(2500),
        "restarted after {after:?}, before ping-restart 4 could fire"
    );
    gw.exec(&["nft", "delete", "table", "inet", "pct"]);

    // The server gives up on the silent session after twice ping-restart.
    let (reason, _) = wait_disconnected(&lab, mark, c.peer_id, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the server kept the dead session: {:#?}",
                lab.seen_since(mark)
            )
        });
    assert_eq!(reason, CloseReason::PingTimeout);
    // Meanwhile the client came back.
    assert!(
        wait_until(Duration::from_secs(15), || c.client.log_count(COMPLETED)
            >= 2),
        "the client did not reconnect after the port opened:\n{}",
        c.client.log()
    );
    assert!(ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)));

    // A clean stop pushes RESTART: openvpn 2.6 logs it as a server-pushed reset.
    let took = lab.stop_tunnel(STOP_LIMIT).expect("stopping the tunnel");
    eprintln!("tunnel stopped in {took:?}");
    assert!(
        c.client.wait_log(PUSHED_RESET, Duration::from_secs(5)),
        "the client saw no RESTART on a clean server stop:\n{}",
        c.client.log()
    );
    assert!(
        c.client
            .log()
            .contains("SIGUSR1[soft,server-pushed-connection-reset]"),
        "{}",
        c.client.log()
    );
}

/// A certificate in the CRL at start-up is refused, and so is one revoked at runtime (CRL
/// rewritten and reloaded): its live session dies at the next renegotiation and a new
/// connection fails, while other users connect and renegotiate as before.
#[test]
fn revoked_certificate_is_refused() {
    require_root!();
    let mut eve_serial = Vec::new();
    let mut lab = TunnelLab::new_with(
        TunnelOpts {
            clients: 3,
            ..TunnelOpts::default()
        },
        |pki| {
            let (_, eve) = pki.issue_client("eve", Validity::days_from_now(30));
            eve_serial = eve.serial.clone();
            vec![pki.write_crl(&[eve.serial], 1)]
        },
    );
    let (_, frank) = lab.pki.issue_client("frank", Validity::days_from_now(30));

    // Revoked at start-up: eve is refused while alice connects.
    let mark = lab.mark();
    let eve = OvpnClient::start(ns(&lab, 1), &ClientConfig::new(&lab.pki, "eve", Proto::Udp));
    let alice = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let why = wait_tls_refusal(&lab, mark, 1, FailureCode::CertificateRevoked, REFUSED)
        .unwrap_or_else(|| {
            panic!(
                "no TLS refusal naming the revocation; events: {:#?}\n{}",
                lab.seen_since(mark),
                eve.log()
            )
        });
    eprintln!("eve: {why}");
    assert!(!eve.wait_log(COMPLETED, Duration::from_secs(1)));
    assert_never_connected(&eve, "revoked in the start-up CRL");
    assert_eq!(connected_events(&lab, mark, "eve"), 0);
    eve.proc.stop();
    drop(eve);

    // Revoked at runtime.
    let f = connect(
        &lab,
        2,
        &ClientConfig::new(&lab.pki, "frank", Proto::Udp),
        "frank",
    );
    assert!(ping(ns(&lab, 2), SERVER, 3, Duration::from_secs(3)));
    lab.pki.write_crl(&[eve_serial, frank.serial.clone()], 2);
    lab.tls.reload().expect("reload the CRL");
    let mark = lab.mark();
    // Live sessions renegotiate with the new CRL: frank's fails, alice's succeeds.
    lab.tunnel().command(Command::RenegotiateAll);
    let (reason, _) = wait_disconnected(&lab, mark, f.peer_id, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "frank's session survived the renegotiation after revocation: {:#?}",
                lab.seen_since(mark)
            )
        });
    assert!(
        matches!(
            &reason,
            CloseReason::CertificateRefused {
                code: FailureCode::CertificateRevoked,
                ..
            }
        ),
        "frank's session ended with {reason:?}"
    );
    assert!(
        lab.wait_event_since(mark, Duration::from_secs(10), |ev| {
            matches!(ev, ServerEvent::Rekeyed { peer_id, .. } if *peer_id == alice.peer_id)
        })
        .is_some(),
        "alice did not renegotiate after the CRL reload: {:#?}",
        lab.seen_since(mark)
    );
    f.client.proc.stop();
    drop(f);

    // A new connection of frank is refused; bob still connects.
    let mark = lab.mark();
    let frank2 = OvpnClient::start(
        ns(&lab, 2),
        &ClientConfig::new(&lab.pki, "frank", Proto::Udp),
    );
    alice.client.proc.stop();
    let bob = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "bob", Proto::Tcp),
        "bob",
    );
    assert!(
        ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
        "{}",
        bob.client.log()
    );
    let why = wait_tls_refusal(&lab, mark, 2, FailureCode::CertificateRevoked, REFUSED)
        .unwrap_or_else(|| {
            panic!(
                "no TLS refusal of frank after the reload; events: {:#?}\n{}",
                lab.seen_since(mark),
                frank2.log()
            )
        });
    eprintln!("frank: {why}");
    assert!(!frank2.wait_log(COMPLETED, Duration::from_secs(1)));
    assert_never_connected(&frank2, "revoked at runtime");
    assert_eq!(connected_events(&lab, mark, "frank"), 0);
}

/// A certificate past its notAfter is refused with a TLS error naming the expiry.
#[test]
fn expired_certificate_is_refused() {
    require_root!();
    let mut lab = TunnelLab::new(TunnelOpts {
        clients: 2,
        ..TunnelOpts::default()
    });
    let now = SystemTime::now();
    lab.pki.issue_client(
        "old",
        Validity {
            not_before: now - Duration::from_secs(30 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        },
    );
    let mark = lab.mark();
    let old = OvpnClient::start(ns(&lab, 1), &ClientConfig::new(&lab.pki, "old", Proto::Udp));
    // A valid user connects meanwhile.
    let _alice = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let why = wait_tls_refusal(&lab, mark, 1, FailureCode::CertificateExpired, REFUSED)
        .unwrap_or_else(|| {
            panic!(
                "no TLS refusal naming the expiry; events: {:#?}\n{}",
                lab.seen_since(mark),
                old.log()
            )
        });
    eprintln!("old: {why}");
    assert!(!old.wait_log(COMPLETED, Duration::from_secs(1)));
    assert_never_connected(&old, "expired certificate");
    assert_eq!(connected_events(&lab, mark, "old"), 0);
}

/// `explicit-exit-notify 1` over UDP: stopping the client ends its session at once
/// (ClientExit), frees the tunnel address and removes it from the clients map.
#[test]
fn client_exit_notify_frees_session() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts::default());
    let mut cfg = ClientConfig::new(&lab.pki, "carol", Proto::Udp);
    cfg.extra.push("explicit-exit-notify 1".into());
    let c = connect(&lab, 0, &cfg, "carol");
    assert!(in_clients_map(&lab, c.tunnel_addr));
    assert!(ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)));
    assert_eq!(lab.tunnel().sessions().len(), 1);

    let mark = lab.mark();
    let t = Instant::now();
    c.client.proc.stop();
    let (reason, addr) = wait_disconnected(&lab, mark, c.peer_id, Duration::from_secs(3))
        .unwrap_or_else(|| {
            panic!(
                "no Disconnected within 3 s of the exit; events: {:#?}\n{}",
                lab.seen_since(mark),
                c.client.log()
            )
        });
    let took = t.elapsed();
    eprintln!("disconnected after {took:?}: {reason}");
    assert_eq!(reason, CloseReason::ClientExit);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(addr, Some(c.tunnel_addr));
    assert!(
        wait_until(Duration::from_secs(1), || !in_clients_map(
            &lab,
            c.tunnel_addr
        )),
        "{} still in the clients map",
        c.tunnel_addr
    );
    let sessions = lab.tunnel().sessions();
    assert!(sessions.is_empty(), "sessions left: {sessions:?}");
}

/// Regression test for a server hang (fixed): a session that was closing (here: the RESTART
/// linger of a clean stop) while its renegotiation interval fell due reported a deadline in
/// the past that `Session::handle_timeout` never moved, and `Server::handle_timeout` spun on
/// it. With a 1 s interval the due time always falls inside the 2 s linger.
#[test]
fn tunnel_stop_returns_when_a_renegotiation_falls_due() {
    require_root!();
    let mut lab = TunnelLab::new(TunnelOpts {
        reneg: Renegotiation {
            interval: Some(Duration::from_secs(1)),
            bytes: None,
            packets: None,
        },
        ..TunnelOpts::default()
    });
    let c = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let mark = lab.mark();
    assert!(
        lab.wait_event_since(mark, Duration::from_secs(5), |ev| {
            matches!(ev, ServerEvent::Rekeyed { peer_id, .. } if *peer_id == c.peer_id)
        })
        .is_some(),
        "no renegotiation with a 1 s interval"
    );
    // The client stays connected: its session is in the RESTART linger when the next
    // renegotiation falls due.
    let took = lab
        .stop_tunnel(Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("{e} (the control thread spins in Server::handle_timeout)"));
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    assert!(
        c.client.wait_log(PUSHED_RESET, Duration::from_secs(2)),
        "{}",
        c.client.log()
    );
}
