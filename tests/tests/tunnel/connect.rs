//! Connecting: UDP and TCP, every cipher, the pushed options.
use super::*;

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

/// Stock clients that connect at the same moment: every one connects with its own session
/// (its own peer id and address, the server's `Connected` event agreeing with what the client
/// got) and its own keys (each pings through its own tunnel). Guards the control thread's
/// demultiplexing of interleaved handshakes (and any future move of their TLS work elsewhere).
#[test]
fn clients_connecting_at_once_each_get_their_own_session_and_keys() {
    require_root!();
    let names = tests::openvpn::DEFAULT_CLIENTS;
    let lab = TunnelLab::new(TunnelOpts {
        clients: names.len(),
        ..TunnelOpts::default()
    });
    let mark = lab.mark();
    let clients: Vec<OvpnClient> = names
        .iter()
        .enumerate()
        .map(|(i, cn)| OvpnClient::start(ns(&lab, i), &ClientConfig::new(&lab.pki, cn, Proto::Udp)))
        .collect();
    let mut seen = Vec::new();
    for (i, (cn, client)) in names.iter().zip(&clients).enumerate() {
        let up = client
            .wait_connected(CONNECT)
            .unwrap_or_else(|e| panic!("{cn} does not connect: {e}\n{}", client.log()));
        let ev = lab.wait_event_since(mark, Duration::from_secs(5), |ev| {
            matches!(ev, ServerEvent::Connected { common_name, tunnel_addr, .. }
                if common_name == cn && *tunnel_addr == up.tun_addr)
        });
        let Some(ServerEvent::Connected { peer_id, .. }) = ev else {
            panic!(
                "no Connected event for {cn} at {}: {:#?}",
                up.tun_addr,
                lab.seen_since(mark)
            );
        };
        seen.push((peer_id, up.tun_addr));
        assert!(
            ping(ns(&lab, i), SERVER, 3, Duration::from_secs(3)),
            "{cn}: no ping through its tunnel\n{}",
            client.log()
        );
    }
    let mut ids: Vec<u32> = seen.iter().map(|s| s.0).collect();
    let mut addrs: Vec<Ipv4Addr> = seen.iter().map(|s| s.1).collect();
    ids.sort();
    ids.dedup();
    addrs.sort();
    addrs.dedup();
    assert_eq!(ids.len(), names.len(), "one peer id each: {seen:?}");
    assert_eq!(addrs.len(), names.len(), "one address each: {seen:?}");
}
