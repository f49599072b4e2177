//! Server kill, revoked and expired certificates, exit notification, stopping.
use super::*;

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
