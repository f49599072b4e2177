//! The named bad inputs of issue 3 at the server level: empty, unknown, oversized, spoofed,
//! duplicated and forged packets, floods and garbage control messages.
use super::*;

#[test]
fn bad_input_zero_and_one_byte_datagrams() {
    let mut lab = Lab::new(false);
    lab.server.handle_control(link(1), &[], lab.now);
    lab.server.handle_control(link(1), &[0x38], lab.now);
    lab.server.handle_control(link(1), &[0xff], lab.now);
    assert_eq!(lab.server.session_count(), 0);
    assert!(lab.server.poll_transmit().is_none());
    assert_eq!(lab.server.stats.malformed, 3);
    // The data side too.
    let peers = lab.server.peers();
    let (v, _) = peers.open(link(1), &mut [], lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::UnknownPeer));
    let (v, _) = peers.open(link(1), &mut [0x48], lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::UnknownPeer));
}

#[test]
fn bad_input_unknown_opcodes_and_key_ids() {
    let mut lab = Lab::new(false);
    // Opcodes 0, 1, 2 (key-method 1), 12..31; and a reset with key id 3.
    for op in [0u8, 1, 2, 12, 20, 31] {
        let mut p = vec![op << 3];
        p.extend_from_slice(&[1; 13]);
        lab.server.handle_control(link(2), &p, lab.now);
    }
    let mut reset = vec![(7 << 3) | 3];
    reset.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0]);
    lab.server.handle_control(link(2), &reset, lab.now);
    assert_eq!(lab.server.session_count(), 0);
    assert!(lab.server.poll_transmit().is_none());
}

#[test]
fn bad_input_oversized_control_packet() {
    let mut lab = Lab::new(false);
    let mut p = vec![0x38];
    p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0]);
    p.resize(4000, 0xaa);
    lab.server.handle_control(link(3), &p, lab.now);
    assert_eq!(lab.server.session_count(), 0);
    assert!(lab.server.poll_transmit().is_none());
}

#[test]
fn bad_input_wrong_session_ids_do_not_disturb_a_session() {
    let mut lab = Lab::new(false);
    let l = link(40004);
    let mut c = lab.connect("alice", l);
    lab.events();
    // A control packet from the client's address with a foreign session id.
    let bogus = ControlPacket {
        opcode: Opcode::ControlV1,
        key_id: KeyId::ZERO,
        session_id: SessionId::new([9; 8]).unwrap(),
        acks: crate::openvpn::packet::AckArray::EMPTY,
        message_id: Some(5),
        payload: b"garbage",
    }
    .to_vec()
    .unwrap();
    lab.server.handle_control(l, &bogus, lab.now);
    assert!(lab.server.poll_transmit().is_none());
    // An ack naming a session that is not ours.
    let bad_ack = ControlPacket {
        opcode: Opcode::AckV1,
        key_id: KeyId::ZERO,
        session_id: c.session_id(),
        acks: crate::openvpn::packet::AckArray::new(&[1], SessionId::new([7; 8]).unwrap()).unwrap(),
        message_id: None,
        payload: &[],
    }
    .to_vec()
    .unwrap();
    lab.server.handle_control(l, &bad_ack, lab.now);
    assert!(disconnected(&lab.events()).is_empty());
    let addr = c.pushed_addr().unwrap();
    let mut pkt = c.seal(&ip_packet(addr)).unwrap();
    let (v, _) = lab.server.peers().open(l, &mut pkt, lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }));
}

#[test]
fn bad_input_duplicate_hard_resets() {
    let mut lab = Lab::new(false);
    let mut c = lab.client("alice");
    let reset = c.poll_transmit(lab.now).remove(0);
    // Stateless: every copy gets the same reply, nothing is kept.
    for _ in 0..3 {
        lab.server.handle_control(link(5), &reset, lab.now);
    }
    let replies: Vec<_> = std::iter::from_fn(|| lab.server.poll_transmit()).collect();
    assert_eq!(replies.len(), 3);
    assert!(replies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(lab.server.session_count(), 0);
    // The handshake then completes, and a late duplicate reset is re-acked, not fatal.
    c.on_packet(&replies[0].1, lab.now);
    lab.pump(&mut c, link(5));
    assert!(c.push_reply.is_some());
    lab.server.handle_control(link(5), &reset, lab.now);
    assert_eq!(lab.server.session_count(), 1);
    assert!(disconnected(&lab.events()).is_empty());
}

#[test]
fn bad_input_spoofed_handshake_flood() {
    let mut lab = Lab::with(false, |s| s.reset_rate = (100, 50));
    let c = lab.client("mallory");
    let mut c = c;
    let reset = c.poll_transmit(lab.now).remove(0);
    let mut sent = 0usize;
    let mut reply_bytes = 0usize;
    // 20,000 resets from 20,000 addresses within one second.
    for i in 0..20_000u32 {
        let l = Link::Udp {
            listener: 0,
            addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 1000)),
        };
        lab.server.handle_control(l, &reset, lab.now);
        while let Some((_, p)) = lab.server.poll_transmit() {
            sent += 1;
            reply_bytes += p.len();
            // Bounded amplification: the reset reply is 12 bytes longer than the reset.
            assert!(p.len() <= reset.len() + 12);
        }
    }
    assert_eq!(
        lab.server.session_count(),
        0,
        "no state before the cookie round trip"
    );
    assert!(sent <= 50 + 1, "replies are rate-limited: {sent}");
    assert!(reply_bytes <= 51 * 26);
    assert!(lab.server.stats.reset_rate_limited >= 19_000);
    // Garbage "cookie" acks from spoofed addresses create nothing either.
    for i in 0..1000u32 {
        let l = Link::Udp {
            listener: 0,
            addr: SocketAddr::from((Ipv4Addr::from(0x0b00_0000 + i), 1000)),
        };
        let p = ControlPacket {
            opcode: Opcode::AckV1,
            key_id: KeyId::ZERO,
            session_id: SessionId::new([3; 8]).unwrap(),
            acks: crate::openvpn::packet::AckArray::new(
                &[0],
                SessionId::new([i as u8 | 1; 8]).unwrap(),
            )
            .unwrap(),
            message_id: None,
            payload: &[],
        }
        .to_vec()
        .unwrap();
        lab.server.handle_control(l, &p, lab.now);
    }
    assert_eq!(lab.server.session_count(), 0);
    assert_eq!(lab.server.stats.cookie_rejected, 1000);
}

#[test]
fn bad_input_tls_crypt_drops_unauthenticated_packets_before_tls() {
    let mut lab = Lab::new(true);
    // A plain (unwrapped) reset and random bytes: no reply, no session.
    let mut c = TestClient::new(
        client_tls(
            &lab.pki.ca.cert_pem(),
            &lab.pki.server.cert_pem,
            &lab.pki.server.key_pem,
        ),
        "server",
        None,
    );
    let reset = c.poll_transmit(lab.now).remove(0);
    lab.server.handle_control(link(9), &reset, lab.now);
    lab.server.handle_control(link(9), &[0x38; 80], lab.now);
    assert!(lab.server.poll_transmit().is_none());
    assert_eq!(lab.server.stats.tls_crypt_rejected, 1);
    assert_eq!(lab.server.stats.malformed, 1);
}

#[test]
fn bad_input_data_from_spoofed_address_or_unknown_peer_id() {
    let mut lab = Lab::new(false);
    let l = link(40005);
    let mut c = lab.connect("alice", l);
    let addr = c.pushed_addr().unwrap();
    let peers = lab.server.peers();
    // Unknown peer-id.
    let mut pkt = c.seal(&ip_packet(addr)).unwrap();
    pkt[3] = 0x77;
    let (v, f) = peers.open(link(6), &mut pkt, lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::UnknownPeer));
    assert!(f.is_none());
    // Right peer-id, wrong key material (a forgery from another address): no float.
    let mut forged = c.seal(&ip_packet(addr)).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (v, f) = peers.open(link(6), &mut forged, lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::Crypto));
    assert!(f.is_none());
    assert_eq!(peers.by_id(0).unwrap().link(), l);
    // A replay of a genuine packet from another address: refused, no float.
    let genuine = c.seal(&ip_packet(addr)).unwrap();
    let (v, _) = peers.open(l, &mut genuine.clone(), lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }));
    let (v, f) = peers.open(link(6), &mut genuine.clone(), lab.now);
    assert_eq!(v, DataVerdict::Dropped(DropCause::Crypto));
    assert!(f.is_none());
    // A genuine new packet from a new address floats the client there.
    let mut moved = c.seal(&ip_packet(addr)).unwrap();
    let (v, f) = peers.open(link(7), &mut moved, lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }));
    let f = f.expect("floated");
    assert_eq!((f.from, f.to), (l, link(7)));
    lab.server.floated(f, lab.now);
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Floated { .. })));
    assert_eq!(peers.by_id(0).unwrap().link(), link(7));
}

#[test]
fn bad_input_repeated_exit_notifications() {
    let mut lab = Lab::new(false);
    let l = link(40006);
    let mut c = lab.connect("alice", l);
    lab.events();
    let occ_exit = c.seal(&crate::openvpn::crypto::OCC_EXIT_MESSAGE).unwrap();
    let peers = lab.server.peers();
    for _ in 0..3 {
        let (v, _) = peers.open(l, &mut occ_exit.clone(), lab.now);
        if let DataVerdict::Exit { peer_id, session } = v {
            lab.server.client_exit(peer_id, session, lab.now);
        }
    }
    c.send_message("EXIT");
    c.send_message("EXIT");
    lab.pump(&mut c, l);
    let d = disconnected(&lab.events());
    assert_eq!(d, vec![CloseReason::ClientExit]);
    assert_eq!(lab.server.session_count(), 0);
    // Another client is unaffected by all this.
    lab.connect("bob", link(40007));
}

#[test]
fn bad_input_garbage_control_messages_are_ignored() {
    let mut lab = Lab::new(false);
    let l = link(40008);
    let mut c = lab.connect("alice", l);
    lab.events();
    c.send_message("\u{1}\u{2}binary\u{7f}");
    c.send_message("PUSH_REQUEST");
    c.send_message(&"X".repeat(1500));
    lab.pump(&mut c, l);
    let evs = lab.events();
    assert!(disconnected(&evs).is_empty(), "{evs:?}");
    // One push only, even after another PUSH_REQUEST.
    assert_eq!(
        c.push_reply.as_ref().unwrap().matches("PUSH_REPLY").count(),
        1
    );
}
