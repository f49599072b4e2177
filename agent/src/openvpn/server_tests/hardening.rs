//! Regression tests for the session-table defects of issue 12: replayed control packets,
//! floats onto other sessions' addresses, timers across a float, TCP peers and UDP, late
//! worker reports, peer-id reuse and renegotiation floods.
use super::*;
use crate::openvpn::peer::Float;

fn tcp_link(conn: u64) -> Link {
    Link::Tcp {
        conn,
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 12), 6000 + conn as u16)),
    }
}

/// A peer's session serial and id, as the workers see them.
fn peer_of(lab: &Lab, addr: Ipv4Addr) -> (u32, u64) {
    let p = lab.server.peers().by_addr(addr).expect("peer by address");
    (p.peer_id, p.session)
}

/// Defect 3: every control packet the client sent to set up its session, sent again (a
/// network that duplicates, or an attacker that replays within the cookie's lifetime): the
/// live session stays, with and without tls-crypt. A real restart still replaces it.
#[test]
fn duplicated_or_replayed_control_packets_do_not_replace_a_live_session() {
    for tc in [true, false] {
        let mut lab = Lab::new(tc);
        let l = link(41000);
        let mut c = lab.client("alice");
        let mut sent = Vec::new();
        for _ in 0..64 {
            let out = c.poll_transmit(lab.now);
            let moved = !out.is_empty();
            for p in out {
                lab.server.handle_control(l, &p, lab.now);
                sent.push(p);
            }
            let mut answered = false;
            while let Some((to, p)) = lab.server.poll_transmit() {
                if to == l {
                    answered = true;
                    c.on_packet(&p, lab.now);
                }
            }
            if !moved && !answered {
                break;
            }
            lab.now += Duration::from_millis(1);
        }
        let addr = c.pushed_addr().expect("connected");
        assert_eq!(connected(&lab.events()).len(), 1);
        for p in &sent {
            lab.server.handle_control(l, p, lab.now);
        }
        lab.pump(&mut c, l);
        let evs = lab.events();
        assert!(disconnected(&evs).is_empty(), "tls-crypt {tc}: {evs:?}");
        assert!(connected(&evs).is_empty(), "tls-crypt {tc}: {evs:?}");
        assert_eq!(lab.server.session_count(), 1);
        let mut pkt = c.seal(&ip_packet(addr)).unwrap();
        let (v, _) = lab.server.peers().open(l, &mut pkt, lab.now);
        assert!(matches!(v, DataVerdict::Tunnel { .. }), "{v:?}");
        // A genuine restart from the same address (a new client session id) replaces it.
        let mut again = lab.client("alice");
        lab.pump(&mut again, l);
        assert!(again.push_reply.is_some());
        assert_eq!(lab.server.session_count(), 1);
        assert_eq!(disconnected(&lab.events()).len(), 1);
    }
}

/// Defect 4: a client cannot float onto the address of another client's session: the
/// worker refuses the packet, and the control side refuses a float that raced with a new
/// session there. Neither session ends.
#[test]
fn a_float_onto_another_clients_address_is_refused() {
    let mut lab = Lab::new(true);
    let (la, lb) = (link(41010), link(41011));
    let mut a = lab.connect("alice", la);
    let _b = lab.connect("bob", lb);
    lab.events();
    let addr_a = a.pushed_addr().unwrap();
    let (id_a, serial_a) = peer_of(&lab, addr_a);
    let peers = lab.server.peers();
    let mut pkt = a.seal(&ip_packet(addr_a)).unwrap();
    let (v, f) = peers.open(lb, &mut pkt, lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::AddressTaken));
    assert!(f.is_none());
    assert_eq!(peers.by_id(id_a).unwrap().link(), la);
    // The race the control side settles: the worker moved alice to bob's address just before
    // bob's session was created there, and reports the float after.
    let (alice_peer, bob_peer) = (peers.by_id(id_a).unwrap(), peers.by_link(&lb).unwrap());
    peers.relink(&alice_peer, lb);
    peers.insert(bob_peer);
    lab.server.floated(
        Float {
            peer_id: id_a,
            session: serial_a,
            from: la,
            to: lb,
        },
        lab.now,
    );
    assert!(lab.events().is_empty());
    assert_eq!(lab.server.stats.float_refused, 1);
    assert_eq!(lab.server.session_count(), 2);
    assert_eq!(peers.by_id(id_a).unwrap().link(), la);
    assert_eq!(peers.by_link(&lb).unwrap().peer_id, peers.len() as u32 - 1);
    // Both still carry data from their own addresses.
    let mut pkt = a.seal(&ip_packet(addr_a)).unwrap();
    assert!(matches!(
        peers.open(la, &mut pkt, lab.now),
        (DataVerdict::Tunnel { .. }, None)
    ));
}

/// Defect 4, the other half: a client may take over an address its own stale session holds
/// (same certificate), as OpenVPN allows; that session then ends like any other: a
/// disconnect event, its pool address and peer id freed, its peer gone from the table.
#[test]
fn a_float_onto_the_same_clients_stale_session_ends_that_session_properly() {
    let mut lab = Lab::new(false);
    let cert = lab
        .pki
        .ca
        .issue_client("alice", Validity::days_from_now(30))
        .unwrap();
    let make = |lab: &Lab| {
        TestClient::new(
            client_tls(&lab.pki.ca.cert_pem(), &cert.cert_pem, &cert.key_pem),
            "server",
            None,
        )
    };
    let (l1, l2) = (link(41020), link(41021));
    let mut a = make(&lab);
    lab.pump(&mut a, l1);
    let mut stale = make(&lab);
    lab.pump(&mut stale, l2);
    assert!(a.push_reply.is_some() && stale.push_reply.is_some());
    lab.events();
    assert_eq!(lab.server.pool().in_use(), 2);
    let stale_addr = stale.pushed_addr().unwrap();
    let (stale_id, _) = peer_of(&lab, stale_addr);
    let addr_a = a.pushed_addr().unwrap();
    let peers = lab.server.peers();
    let mut pkt = a.seal(&ip_packet(addr_a)).unwrap();
    let (v, f) = peers.open(l2, &mut pkt, lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }), "{v:?}");
    lab.server.floated(f.expect("floated"), lab.now);
    let evs = lab.events();
    let ended: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Disconnected {
                peer_id,
                tunnel_addr,
                ..
            } => Some((*peer_id, *tunnel_addr)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec![(stale_id, Some(stale_addr))], "{evs:?}");
    assert!(evs
        .iter()
        .any(|e| matches!(e, ServerEvent::Floated { to, .. } if *to == l2)));
    assert_eq!(lab.server.session_count(), 1);
    assert_eq!(lab.server.pool().in_use(), 1);
    assert!(peers.by_id(stale_id).is_none());
    assert!(peers.by_addr(stale_addr).is_none());
    assert_eq!(peers.by_link(&l2).unwrap().tunnel_addr(), Some(addr_a));
}

/// Defect 5: after a float the session keeps its timers: keepalive pings go to the new
/// address, and silence still ends the session (ping timeout), so a client cannot escape the
/// timeouts by changing its source port once.
#[test]
fn a_floated_session_keeps_its_timers() {
    let mut lab = Lab::new(true);
    let (l1, l2) = (link(41030), link(41031));
    let mut c = lab.connect("alice", l1);
    lab.events();
    let addr = c.pushed_addr().unwrap();
    let mut pkt = c.seal(&ip_packet(addr)).unwrap();
    let (_, f) = lab.server.peers().open(l2, &mut pkt, lab.now);
    lab.server.floated(f.expect("floated"), lab.now);
    let evs = lab.events();
    assert!(
        evs.iter().any(|e| matches!(
            e,
            ServerEvent::Floated { session, .. } if *session == peer_of(&lab, addr).1
        )),
        "{evs:?}"
    );
    while lab.server.poll_transmit().is_some() {}
    let mut pinged = false;
    for _ in 0..200 {
        lab.now += Duration::from_secs(1);
        lab.server.handle_timeout(lab.now);
        while let Some((to, _)) = lab.server.poll_transmit() {
            assert_eq!(to, l2, "sent to the address it left");
            pinged = true;
        }
        if !lab.events().is_empty() {
            break;
        }
    }
    assert!(pinged, "no keepalive after the float");
    assert_eq!(
        lab.server.session_count(),
        0,
        "the silent session outlived its timeout"
    );
}

/// Defect 9: a TCP client's data packet replayed over UDP finds no peer (it would move the
/// session off its connection).
#[test]
fn a_tcp_peer_does_not_float_to_udp() {
    let mut lab = Lab::new(false);
    let t = tcp_link(1);
    let mut c = lab.connect("bob", t);
    let addr = c.pushed_addr().unwrap();
    let peers = lab.server.peers();
    let pkt = c.seal(&ip_packet(addr)).unwrap();
    let (v, f) = peers.open(link(41040), &mut pkt.clone(), lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::UnknownPeer));
    assert!(f.is_none());
    assert_eq!(peers.by_addr(addr).unwrap().link(), t);
    let (v, f) = peers.open(t, &mut pkt.clone(), lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }) && f.is_none());
}

/// Defect 9: a worker's late OCC_EXIT report names its session; it cannot end the next
/// session that got the same peer id.
#[test]
fn a_late_exit_report_does_not_end_the_next_session_on_the_peer_id() {
    let mut lab = Lab::with(false, |s| s.max_sessions = 1);
    let l = link(41050);
    let mut a = lab.connect("alice", l);
    let occ_exit = a.seal(&crate::openvpn::crypto::OCC_EXIT_MESSAGE).unwrap();
    let (v, _) = lab.server.peers().open(l, &mut occ_exit.clone(), lab.now);
    let DataVerdict::Exit { peer_id, session } = v else {
        panic!("{v:?}");
    };
    // The session ends another way before the report is handled.
    a.send_message("EXIT");
    lab.pump(&mut a, l);
    let mut b = lab.connect("bob", link(41051));
    let (b_id, b_serial) = peer_of(&lab, b.pushed_addr().unwrap());
    assert_eq!(b_id, peer_id, "one peer id only");
    assert_ne!(b_serial, session);
    lab.events();
    lab.server.client_exit(peer_id, session, lab.now);
    lab.pump(&mut b, link(41051));
    assert!(disconnected(&lab.events()).is_empty());
    assert_eq!(lab.server.session_count(), 1);
}

/// Defect 9: peer ids are reused oldest-freed first, so the id an ended session had is not
/// the next one handed out.
#[test]
fn peer_ids_are_reused_first_in_first_out() {
    let mut lab = Lab::with(false, |s| s.max_sessions = 4);
    let mut a = lab.connect("alice", link(41060));
    let (id_a, _) = peer_of(&lab, a.pushed_addr().unwrap());
    a.send_message("EXIT");
    lab.pump(&mut a, link(41060));
    assert_eq!(lab.server.session_count(), 0);
    let b = lab.connect("bob", link(41061));
    let (id_b, _) = peer_of(&lab, b.pushed_addr().unwrap());
    assert_ne!(id_a, id_b, "the id just freed was handed out again");
}

/// Defect 9: client-initiated renegotiations are rate-limited per session (each costs a TLS
/// handshake and a directory bind): a burst, then one per interval.
#[test]
fn client_renegotiations_are_rate_limited() {
    let mut lab = Lab::new(false);
    let l = link(41070);
    let mut c = lab.connect("alice", l);
    lab.events();
    let rekeyed = |evs: &[ServerEvent]| {
        evs.iter()
            .filter(|e| matches!(e, ServerEvent::Rekeyed { .. }))
            .count()
    };
    let mut done = 0;
    for _ in 0..crate::openvpn::session::CLIENT_RENEG_BURST + 1 {
        c.renegotiate();
        lab.pump(&mut c, l);
        done += rekeyed(&lab.events());
    }
    assert_eq!(done, crate::openvpn::session::CLIENT_RENEG_BURST as usize);
    // The client's pending SOFT_RESET is taken once the interval has passed.
    lab.keep_alive(&mut c, l, 40);
    assert_eq!(rekeyed(&lab.events()), 1);
    assert_eq!(lab.server.session_count(), 1);
}

/// Workers report floats in any order (two packets from two new addresses on two workers):
/// the session ends up where its peer is; and a report about a session that ended meanwhile
/// leaves no stale peer holding the address.
#[test]
fn float_reports_out_of_order_or_after_the_end_settle_on_the_peer() {
    let mut lab = Lab::new(false);
    let (l1, l2, l3) = (link(41080), link(41081), link(41082));
    let mut c = lab.connect("alice", l1);
    lab.events();
    let addr = c.pushed_addr().unwrap();
    let peers = lab.server.peers();
    let mut p2 = c.seal(&ip_packet(addr)).unwrap();
    let mut p3 = c.seal(&ip_packet(addr)).unwrap();
    let (_, f2) = peers.open(l2, &mut p2, lab.now);
    let (_, f3) = peers.open(l3, &mut p3, lab.now);
    lab.server.floated(f3.unwrap(), lab.now);
    lab.server.floated(f2.unwrap(), lab.now);
    let floats: Vec<_> = lab
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::Floated { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(floats, vec![(l1, l3)]);
    assert!(lab.server.sessions().any(|(l, _, _)| *l == l3));
    // The session ends; a worker moves its peer once more and reports after the removal.
    let peer = peers.by_addr(addr).unwrap();
    let late = Float {
        peer_id: peer.peer_id,
        session: peer.session,
        from: l3,
        to: l2,
    };
    c.send_message("EXIT");
    lab.pump(&mut c, l3);
    assert_eq!(lab.server.session_count(), 0);
    peers.relink(&peer, l2);
    lab.server.floated(late, lab.now);
    assert!(
        peers.by_link(&l2).is_none(),
        "a dead peer holds the address"
    );
}
