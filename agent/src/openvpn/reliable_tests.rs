use super::*;
use proptest::prelude::*;

fn sid(x: u64) -> SessionId {
    SessionId::new(x.to_be_bytes()).unwrap()
}

const C: u64 = 0x9d34f1bac8d66152;
const S: u64 = 0xace23948e6d1889b;

/// A server key-0 state that has received the client's reset (pid 0) and queued its own.
fn server(now: Instant) -> Reliable {
    let mut s = Reliable::new(Config::default(), KeyId::ZERO, sid(S), None);
    let reset = ctl(Opcode::HardResetClientV2, C, &[], None, Some(0), b"");
    assert_eq!(s.on_packet(&reset, now), Ok(Received::New));
    s.queue_reset(Opcode::HardResetServerV2).unwrap();
    s
}

fn ctl<'a>(
    opcode: Opcode,
    from: u64,
    acks: &[u32],
    ack_sid: Option<u64>,
    mid: Option<u32>,
    payload: &'a [u8],
) -> ControlPacket<'a> {
    ControlPacket {
        opcode,
        key_id: KeyId::ZERO,
        session_id: sid(from),
        acks: if acks.is_empty() {
            AckArray::EMPTY
        } else {
            AckArray::new(acks, sid(ack_sid.unwrap_or(S))).unwrap()
        },
        message_id: mid,
        payload,
    }
}

fn drain(r: &mut Reliable, now: Instant) -> Vec<Vec<u8>> {
    let mut out = vec![];
    while let Some(p) = r.poll_transmit(now) {
        out.push(p.to_vec().unwrap());
        assert!(out.len() < 100, "poll_transmit does not terminate");
    }
    out
}

#[test]
fn server_reset_matches_observed_bytes() {
    // Doc §1.4: the 26-byte server reset acks the client's pid 0 with the client's sid.
    let t = Instant::now();
    let mut s = server(t);
    let out = drain(&mut s, t);
    assert_eq!(
        out,
        vec![crate::openvpn::packet::hex(
            "40 ace23948e6d1889b 01 00000000 9d34f1bac8d66152 00000000"
        )]
    );
    assert!(s.peer_reset_received());
    assert!(!s.is_acked(0));
    assert_eq!(s.poll_timeout(), Some(t + INITIAL_RTO));
}

#[test]
fn retransmission_backoff_doubles_from_two_seconds() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let mut at = t;
    let mut gaps = vec![];
    for _ in 0..7 {
        let due = s.poll_timeout().unwrap();
        assert!(drain(&mut s, due - Duration::from_millis(1)).is_empty());
        let pkts = drain(&mut s, due);
        assert_eq!(pkts.len(), 1);
        // The retransmission keeps pid 0 (doc §2.1).
        let p = ControlPacket::decode(&pkts[0]).unwrap();
        assert_eq!(p.message_id, Some(0));
        gaps.push((due - at).as_secs());
        at = due;
    }
    assert_eq!(gaps, [2, 4, 8, 16, 32, 60, 60]);
}

#[test]
fn ack_stops_retransmission() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let ack = ctl(Opcode::AckV1, C, &[0], None, None, b"");
    assert_eq!(s.on_packet(&ack, t), Ok(Received::AckOnly));
    assert!(s.is_acked(0));
    assert!(s.all_acked());
    assert_eq!(s.poll_timeout(), None);
    assert!(drain(&mut s, t + Duration::from_secs(100)).is_empty());
}

#[test]
fn duplicates_and_replays_are_acked_but_not_delivered() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let p1 = ctl(Opcode::ControlV1, C, &[0], None, Some(1), b"hello");
    assert_eq!(s.on_packet(&p1, t), Ok(Received::New));
    assert_eq!(s.on_packet(&p1, t), Ok(Received::Duplicate));
    // A duplicate client reset is re-acked too (doc §15 step 2).
    let reset = ctl(Opcode::HardResetClientV2, C, &[], None, Some(0), b"");
    assert_eq!(s.on_packet(&reset, t), Ok(Received::Duplicate));
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(s.read(&mut buf), 0);
    let out = drain(&mut s, t);
    assert_eq!(out.len(), 1);
    let ack = ControlPacket::decode(&out[0]).unwrap();
    assert_eq!(ack.opcode, Opcode::AckV1);
    let mut ids = ack.acks.ids().to_vec();
    ids.sort();
    assert_eq!(ids, [0, 1]);
}

#[test]
fn out_of_order_is_buffered_and_delivered_in_order() {
    let t = Instant::now();
    let mut s = server(t);
    let p3 = ctl(Opcode::ControlV1, C, &[], None, Some(3), b"c");
    let p2 = ctl(Opcode::ControlV1, C, &[], None, Some(2), b"b");
    let p1 = ctl(Opcode::ControlV1, C, &[], None, Some(1), b"a");
    assert_eq!(s.on_packet(&p3, t), Ok(Received::New));
    assert_eq!(s.on_packet(&p2, t), Ok(Received::New));
    assert_eq!(s.readable(), 0);
    assert_eq!(s.on_packet(&p3, t), Ok(Received::Duplicate));
    assert_eq!(s.on_packet(&p1, t), Ok(Received::New));
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf), 3);
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(s.next_expected_id(), 4);
}

#[test]
fn out_of_window_is_dropped_without_ack() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    // Window is [1, 13): 12 is the last id accepted, 13 is beyond.
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(13), b"x");
    assert_eq!(
        s.on_packet(&p, t),
        Err(ReliableError::OutOfWindow {
            id: 13,
            next_expected: 1
        })
    );
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(12), b"x");
    assert_eq!(s.on_packet(&p, t), Ok(Received::New));
    let out = drain(&mut s, t);
    let ack = ControlPacket::decode(&out[0]).unwrap();
    assert!(!ack.acks.ids().contains(&13));
}

#[test]
fn message_id_ffffffff_is_out_of_window() {
    let t = Instant::now();
    let mut s = server(t);
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(u32::MAX), b"x");
    assert!(matches!(
        s.on_packet(&p, t),
        Err(ReliableError::OutOfWindow { id: u32::MAX, .. })
    ));
    assert_eq!(s.readable(), 0);
}

#[test]
fn ack_ids_out_of_range_are_ignored() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let ack = ctl(
        Opcode::AckV1,
        C,
        &[u32::MAX, 7, 1, 99, 0x8000_0000, 5, 6, 2],
        None,
        None,
        b"",
    );
    assert_eq!(s.on_packet(&ack, t), Ok(Received::AckOnly));
    // Our pid 0 is still unacked and still retransmitted.
    assert!(!s.is_acked(0));
    assert!(!s.is_acked(7));
    assert_eq!(drain(&mut s, t + INITIAL_RTO).len(), 1);
}

#[test]
fn wrong_session_id_is_dropped() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let p = ctl(Opcode::ControlV1, 0x1234, &[0], None, Some(1), b"x");
    assert!(matches!(
        s.on_packet(&p, t),
        Err(ReliableError::WrongSessionId { .. })
    ));
    assert!(drain(&mut s, t).is_empty(), "nothing acked");
    assert!(!s.is_acked(0), "its acks were not processed");
}

#[test]
fn wrong_ack_session_id_drops_whole_packet() {
    let t = Instant::now();
    let mut s = server(t);
    drain(&mut s, t);
    let p = ctl(Opcode::ControlV1, C, &[0], Some(0x4242), Some(1), b"x");
    assert!(matches!(
        s.on_packet(&p, t),
        Err(ReliableError::WrongAckSessionId { .. })
    ));
    assert!(!s.is_acked(0));
    assert_eq!(s.readable(), 0);
    assert!(drain(&mut s, t).is_empty());
}

#[test]
fn wrong_key_id_is_dropped() {
    let t = Instant::now();
    let mut s = server(t);
    let mut p = ctl(Opcode::ControlV1, C, &[], None, Some(1), b"x");
    p.key_id = KeyId::new(1).unwrap();
    assert_eq!(
        s.on_packet(&p, t),
        Err(ReliableError::WrongKeyId {
            expected: 0,
            got: 1
        })
    );
}

#[test]
fn unknown_peer_must_start_with_a_reset() {
    let t = Instant::now();
    let mut s = Reliable::new(Config::default(), KeyId::ZERO, sid(S), None);
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(1), b"x");
    assert_eq!(
        s.on_packet(&p, t),
        Err(ReliableError::UnknownPeer(Opcode::ControlV1))
    );
    assert_eq!(s.remote_session(), None);
}

#[test]
fn reset_ids_are_checked() {
    let t = Instant::now();
    let mut s = server(t);
    let p = ctl(Opcode::HardResetClientV2, C, &[], None, Some(3), b"");
    assert!(matches!(
        s.on_packet(&p, t),
        Err(ReliableError::ResetIdMismatch { id: 3, .. })
    ));
    let mut s = Reliable::new(Config::default(), KeyId::ZERO, sid(S), Some(sid(C)));
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(0), b"x");
    assert!(matches!(
        s.on_packet(&p, t),
        Err(ReliableError::ResetIdMismatch { id: 0, .. })
    ));
}

#[test]
fn reset_payload_is_not_stream_data() {
    let t = Instant::now();
    let mut s = Reliable::new(Config::default(), KeyId::ZERO, sid(S), None);
    // An early-negotiation TLV (§3.4) in the client reset must not reach TLS.
    let reset = ctl(
        Opcode::HardResetClientV2,
        C,
        &[],
        None,
        Some(0),
        &[0, 1, 0, 2, 0, 1],
    );
    assert_eq!(s.on_packet(&reset, t), Ok(Received::New));
    assert_eq!(s.readable(), 0);
}

#[test]
fn stream_data_waits_for_the_reset() {
    let t = Instant::now();
    let mut c = Reliable::new(Config::default(), KeyId::ZERO, sid(C), None);
    assert_eq!(c.write(b"client hello"), 12);
    assert!(
        drain(&mut c, t).is_empty(),
        "pid 0 is reserved for the reset"
    );
    c.queue_reset(Opcode::HardResetClientV2).unwrap();
    let out = drain(&mut c, t);
    assert_eq!(out.len(), 2);
    let r = ControlPacket::decode(&out[0]).unwrap();
    assert_eq!(
        (r.opcode, r.message_id),
        (Opcode::HardResetClientV2, Some(0))
    );
    assert_eq!(
        out[0],
        crate::openvpn::packet::hex("38 9d34f1bac8d66152 00 00000000")
    );
    let d = ControlPacket::decode(&out[1]).unwrap();
    assert_eq!((d.opcode, d.message_id), (Opcode::ControlV1, Some(1)));
    assert_eq!(d.payload, b"client hello");
    assert_eq!(
        c.queue_reset(Opcode::HardResetClientV2),
        Err(QueueResetError::AlreadySent)
    );
    assert_eq!(
        Reliable::new(Config::default(), KeyId::ZERO, sid(C), None).queue_reset(Opcode::ControlV1),
        Err(QueueResetError::NotReset(Opcode::ControlV1))
    );
}

#[test]
fn send_window_is_six_and_payloads_are_split() {
    let t = Instant::now();
    let cfg = Config {
        max_packet_len: 100,
        ..Config::default()
    };
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    let max = s.config().max_payload();
    assert_eq!(max, 100 - (9 + 1 + 16 + 8 + 4));
    let data: Vec<u8> = (0..max * 10).map(|i| i as u8).collect();
    assert_eq!(s.write(&data), data.len());
    let out = drain(&mut s, t);
    assert_eq!(out.len(), SEND_WINDOW);
    for (i, b) in out.iter().enumerate() {
        assert!(b.len() <= 100);
        let p = ControlPacket::decode(b).unwrap();
        assert_eq!(p.message_id, Some(i as u32 + 1));
        assert_eq!(p.payload, &data[i * max..(i + 1) * max]);
    }
    // Acking a later packet does not open the window: the lowest unacked (1) bounds it.
    let ack = ctl(Opcode::AckV1, C, &[6], None, None, b"");
    s.on_packet(&ack, t).unwrap();
    assert!(drain(&mut s, t).is_empty());
    let ack = ctl(Opcode::AckV1, C, &[1], None, None, b"");
    s.on_packet(&ack, t).unwrap();
    assert_eq!(drain(&mut s, t).len(), 1);
}

#[test]
fn fast_retransmit_after_three_later_acks() {
    let t = Instant::now();
    let mut s = Reliable::after_cookie(Config::default(), sid(S), sid(C));
    s.write(&[1; 4000]);
    assert_eq!(drain(&mut s, t).len(), 4);
    let t1 = t + Duration::from_millis(100);
    for id in [2, 3] {
        s.on_packet(&ctl(Opcode::AckV1, C, &[id], None, None, b""), t1)
            .unwrap();
        assert!(drain(&mut s, t1).is_empty());
    }
    // Re-sent old acks do not count again.
    s.on_packet(&ctl(Opcode::AckV1, C, &[3, 2], None, None, b""), t1)
        .unwrap();
    assert!(drain(&mut s, t1).is_empty());
    s.on_packet(&ctl(Opcode::AckV1, C, &[4], None, None, b""), t1)
        .unwrap();
    let out = drain(&mut s, t1);
    assert_eq!(out.len(), 1);
    assert_eq!(ControlPacket::decode(&out[0]).unwrap().message_id, Some(1));
}

#[test]
fn piggy_backs_at_most_four_acks_and_p_ack_carries_eight() {
    let t = Instant::now();
    let mut s = Reliable::after_cookie(Config::default(), sid(S), sid(C));
    for id in 1..=10u32 {
        s.on_packet(&ctl(Opcode::ControlV1, C, &[], None, Some(id), b"x"), t)
            .unwrap();
    }
    s.write(b"reply");
    let out = drain(&mut s, t);
    let first = ControlPacket::decode(&out[0]).unwrap();
    assert_eq!(first.opcode, Opcode::ControlV1);
    assert_eq!(first.acks.ids(), &[1, 2, 3, 4]);
    assert_eq!(first.acks.remote_session(), Some(sid(C)));
    let second = ControlPacket::decode(&out[1]).unwrap();
    assert_eq!(second.opcode, Opcode::AckV1);
    assert_eq!(second.acks.len(), 8);
    assert_eq!(&second.acks.ids()[..6], &[5, 6, 7, 8, 9, 10]);
    assert_eq!(out.len(), 2);
}

#[test]
fn receive_buffer_is_bounded() {
    let t = Instant::now();
    let cfg = Config {
        max_recv_buffer: 1000,
        ..Config::default()
    };
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    let big = [0u8; 600];
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(1), &big);
    assert_eq!(s.on_packet(&p, t), Ok(Received::New));
    let p2 = ctl(Opcode::ControlV1, C, &[], None, Some(2), &big);
    assert_eq!(s.on_packet(&p2, t), Err(ReliableError::ReceiveBufferFull));
    let mut sink = [0u8; 600];
    assert_eq!(s.read(&mut sink), 600);
    assert_eq!(s.on_packet(&p2, t), Ok(Received::New));
}

#[test]
fn out_of_order_data_cannot_starve_the_in_order_packet() {
    // Regression (found by the property test): with out-of-order bytes counted against the
    // receive buffer, packets 2..=6 filled it and packet 1 was refused for ever.
    let t = Instant::now();
    let cfg = Config {
        max_recv_buffer: 1000,
        ..Config::default()
    };
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    let chunk = [9u8; 300];
    for id in 2..=6 {
        let p = ctl(Opcode::ControlV1, C, &[], None, Some(id), &chunk);
        assert_eq!(s.on_packet(&p, t), Ok(Received::New));
    }
    let p1 = ctl(Opcode::ControlV1, C, &[], None, Some(1), &chunk);
    assert_eq!(s.on_packet(&p1, t), Ok(Received::New));
    assert_eq!(s.readable(), 1800);
    // Now the unread bytes exceed the limit: new packets wait until the application reads.
    let p7 = ctl(Opcode::ControlV1, C, &[], None, Some(7), &chunk);
    assert_eq!(s.on_packet(&p7, t), Err(ReliableError::ReceiveBufferFull));
    let mut sink = [0u8; 2000];
    assert_eq!(s.read(&mut sink), 1800);
    assert_eq!(s.on_packet(&p7, t), Ok(Received::New));
}

#[test]
fn send_buffer_is_bounded() {
    let cfg = Config {
        max_send_buffer: 10,
        ..Config::default()
    };
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    assert_eq!(s.write(&[0; 25]), 10);
    assert_eq!(s.write(&[0; 25]), 0);
    assert_eq!(
        io::Write::write(&mut s, &[0]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(
        io::Read::read(&mut s, &mut [0; 4]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

#[test]
fn replayed_old_ids_keep_pending_acks_bounded() {
    let t = Instant::now();
    let mut s = Reliable::after_cookie(Config::default(), sid(S), sid(C));
    for id in 1..=12u32 {
        s.on_packet(&ctl(Opcode::ControlV1, C, &[], None, Some(id), b""), t)
            .unwrap();
    }
    for _ in 0..10 {
        for id in 0..=12u32 {
            let op = if id == 0 {
                Opcode::HardResetClientV2
            } else {
                Opcode::ControlV1
            };
            let _ = s.on_packet(&ctl(op, C, &[], None, Some(id), b""), t);
        }
    }
    assert!(s.pending_acks.len() <= MAX_PENDING_ACKS);
}

#[test]
fn bad_input_reset_opcode_with_wrong_key_id_is_refused() {
    // Found by fuzzing: a soft reset queued on key 0 (or a hard reset on key 1) went out as
    // a packet the codec cannot encode, retransmitted for ever.
    let mut s = Reliable::new(Config::default(), KeyId::ZERO, sid(S), None);
    assert_eq!(
        s.queue_reset(Opcode::SoftResetV1),
        Err(QueueResetError::InvalidKeyId {
            opcode: Opcode::SoftResetV1,
            key_id: 0
        })
    );
    let mut s1 = Reliable::new(Config::default(), KeyId::new(1).unwrap(), sid(S), None);
    assert_eq!(
        s1.queue_reset(Opcode::HardResetServerV2),
        Err(QueueResetError::InvalidKeyId {
            opcode: Opcode::HardResetServerV2,
            key_id: 1
        })
    );
    let t = Instant::now();
    assert!(drain(&mut s, t).is_empty() && drain(&mut s1, t).is_empty());
    // The right pairings still work, and every packet they send encodes.
    assert_eq!(s1.queue_reset(Opcode::SoftResetV1), Ok(()));
    assert_eq!(s.queue_reset(Opcode::HardResetServerV2), Ok(()));
}

#[test]
fn bad_input_tiny_max_packet_len_still_bounds_ack_packets() {
    // Found by fuzzing (corpus/reliable/crash-ack-packet-over-max-len): without piggy-backed
    // acks the floor of max_packet_len was 23 bytes, but a P_ACK_V1 with 8 acks is 50.
    let cfg = Config {
        max_packet_len: 1,
        piggyback_acks: 0,
        ack_packet_acks: 8,
        ..Config::default()
    };
    let t = Instant::now();
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    assert_eq!(s.config().max_packet_len, 9 + 1 + 8 * 4 + 8);
    for id in 1..=8u32 {
        s.on_packet(&ctl(Opcode::ControlV1, C, &[], None, Some(id), b"x"), t)
            .unwrap();
    }
    s.write(&[7; 100]);
    let out = drain(&mut s, t);
    assert!(
        out.iter().any(|p| p.len() == 50),
        "a full P_ACK_V1 was sent"
    );
    for p in &out {
        assert!(p.len() <= s.config().max_packet_len, "{} bytes", p.len());
    }
}

#[test]
fn bad_input_receive_buffer_smaller_than_a_packet_cannot_deadlock() {
    // Found by fuzzing (corpus/reliable/crash-recv-buffer-below-packet): with a 207-byte
    // receive buffer every larger packet was refused for ever, even with the buffer empty.
    let cfg = Config {
        max_recv_buffer: 207,
        ..Config::default()
    };
    let t = Instant::now();
    let mut s = Reliable::after_cookie(cfg, sid(S), sid(C));
    let full = [0x17u8; MAX_CONTROL_PACKET_LEN - 14];
    let p = ctl(Opcode::ControlV1, C, &[], None, Some(1), &full);
    assert_eq!(p.to_vec().unwrap().len(), MAX_CONTROL_PACKET_LEN);
    assert_eq!(s.on_packet(&p, t), Ok(Received::New));
    let p2 = ctl(Opcode::ControlV1, C, &[], None, Some(2), b"x");
    assert_eq!(s.on_packet(&p2, t), Err(ReliableError::ReceiveBufferFull));
    assert_eq!(s.read(&mut [0u8; 2000]), full.len());
    assert_eq!(s.on_packet(&p2, t), Ok(Received::New));
}

#[test]
fn bad_input_acks_for_unsent_ids_do_not_trigger_fast_retransmit() {
    let t = Instant::now();
    let mut s = Reliable::after_cookie(Config::default(), sid(S), sid(C));
    s.write(&[1; 2000]);
    assert_eq!(drain(&mut s, t).len(), 2, "ids 1 and 2 in flight");
    // Three acks above anything sent (and 0xFFFFFFFF) are not "later acks" of id 1.
    for id in [3, 4, 5, u32::MAX] {
        let ack = ctl(Opcode::AckV1, C, &[id], None, None, b"");
        assert_eq!(s.on_packet(&ack, t), Ok(Received::AckOnly));
    }
    assert!(drain(&mut s, t).is_empty(), "no early retransmission");
    assert!(!s.is_acked(1) && !s.is_acked(2));
    assert!(
        !s.is_acked(3) && !s.is_acked(u32::MAX),
        "never sent, never acked"
    );
    assert_eq!(s.poll_timeout(), Some(t + INITIAL_RTO));
}

// --- Two instances over a lossy, duplicating, reordering network ---

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: deterministic per proptest seed.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct InTransit {
    at: Instant,
    to: usize,
    bytes: Vec<u8>,
}

/// Runs a client and a server over the simulated network until both streams are delivered
/// and acked; returns the simulated time taken.
fn simulate(
    seed: u64,
    loss_pct: u64,
    dup_pct: u64,
    max_delay_ms: u64,
    data: [Vec<u8>; 2],
    max_packet_len: usize,
) -> Duration {
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut now = t0;
    let cfg = Config {
        max_packet_len,
        max_send_buffer: 2048,
        max_recv_buffer: 4096,
        ..Config::default()
    };
    let mut eps = [
        Reliable::new(cfg.clone(), KeyId::ZERO, sid(C), None),
        Reliable::new(cfg, KeyId::ZERO, sid(S), Some(sid(C))),
    ];
    eps[0].queue_reset(Opcode::HardResetClientV2).unwrap();
    eps[1].queue_reset(Opcode::HardResetServerV2).unwrap();
    let mut written = [0usize; 2];
    let mut received: [Vec<u8>; 2] = [vec![], vec![]];
    let mut net: Vec<InTransit> = vec![];
    let mut buf = [0u8; 512];
    // Stop at two simulated hours: the property below asks for less than one.
    while now - t0 < Duration::from_secs(7200) {
        for i in 0..2 {
            written[i] += eps[i].write(&data[i][written[i]..]);
            loop {
                let n = eps[i].read(&mut buf);
                if n == 0 {
                    break;
                }
                received[i].extend_from_slice(&buf[..n]);
            }
            while let Some(p) = eps[i].poll_transmit(now) {
                let bytes = p.to_vec().unwrap();
                assert!(bytes.len() <= max_packet_len);
                if rng.below(100) < loss_pct {
                    continue;
                }
                let copies = if rng.below(100) < dup_pct { 2 } else { 1 };
                for _ in 0..copies {
                    net.push(InTransit {
                        at: now + Duration::from_millis(1 + rng.below(max_delay_ms)),
                        to: 1 - i,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
        let done = received[0].len() == data[1].len()
            && received[1].len() == data[0].len()
            && eps.iter().all(|e| e.all_acked());
        if done {
            // Exactly once, in order.
            assert_eq!(received[0], data[1]);
            assert_eq!(received[1], data[0]);
            return now - t0;
        }
        // Never more than delivered: no duplicate bytes sneak in.
        assert!(received[0].len() <= data[1].len() && received[1].len() <= data[0].len());
        let next = net
            .iter()
            .map(|p| p.at)
            .chain(eps.iter().filter_map(|e| e.poll_timeout()))
            .min()
            .expect("stalled: nothing in flight and nothing scheduled");
        now = now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) = net.into_iter().partition(|p| p.at <= now);
        net = rest;
        for p in due {
            let pkt = ControlPacket::decode(&p.bytes).unwrap();
            let _ = eps[p.to].on_packet(&pkt, now);
        }
    }
    panic!(
        "did not converge: received {}/{} and {}/{} bytes, acked {:?}",
        received[0].len(),
        data[1].len(),
        received[1].len(),
        data[0].len(),
        eps.iter().map(|e| e.all_acked()).collect::<Vec<_>>()
    );
}

#[test]
fn lossless_exchange_is_fast() {
    let a: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let b: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let took = simulate(1, 0, 0, 20, [a, b], 200);
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn delivers_everything_in_order_exactly_once(
        seed in any::<u64>(),
        loss in 0u64..=30,
        dup in 0u64..=30,
        delay in 1u64..=500,
        a in prop::collection::vec(any::<u8>(), 0..5000),
        b in prop::collection::vec(any::<u8>(), 0..5000),
        max_packet_len in 60usize..=1200,
    ) {
        let took = simulate(seed, loss, dup, delay, [a, b], max_packet_len);
        // Bounded: with ≤ 30 % loss the doubling RTO (capped at 60 s) converges well within
        // the hour; a stuck layer would hit the step bound or this.
        prop_assert!(took < Duration::from_secs(3600), "took {:?}", took);
    }

    #[test]
    fn arbitrary_packets_never_panic_or_grow(
        pkts in prop::collection::vec(
            (prop::sample::select(vec![
                Opcode::ControlV1, Opcode::AckV1, Opcode::HardResetClientV2,
                Opcode::SoftResetV1, Opcode::ControlWkcV1,
            ]),
             prop::collection::vec(any::<u32>(), 0..=8),
             any::<bool>(),
             any::<u32>(),
             0usize..1500,
             0u64..4000),
            0..200),
    ) {
        let t = Instant::now();
        let mut s = Reliable::after_cookie(Config::default(), sid(S), sid(C));
        s.write(&[0; 3000]);
        let payload = [0x16u8; 1500];
        for (op, acks, good_sid, mid, len, dt) in pkts {
            let now = t + Duration::from_millis(dt);
            let mid = if op == Opcode::AckV1 { None } else { Some(mid % 40) };
            let kid = if op == Opcode::SoftResetV1 { KeyId::new(1).unwrap() } else { KeyId::ZERO };
            let p = ControlPacket {
                opcode: op,
                key_id: kid,
                session_id: sid(if good_sid { C } else { 77 }),
                acks: if acks.is_empty() { AckArray::EMPTY } else {
                    AckArray::new(&acks.iter().map(|a| a % 20).collect::<Vec<_>>(), sid(S)).unwrap()
                },
                message_id: mid,
                payload: if op == Opcode::AckV1 { &[] } else { &payload[..len] },
            };
            let _ = s.on_packet(&p, now);
            let mut n = 0;
            while s.poll_transmit(now).is_some() { n += 1; prop_assert!(n < 50); }
            prop_assert!(s.pending_acks.len() <= MAX_PENDING_ACKS);
            prop_assert!(s.in_flight.len() <= SEND_WINDOW);
            prop_assert!(s.recv_buf.len() <= s.cfg.max_recv_buffer + RECV_WINDOW * MAX_CONTROL_PACKET_LEN);
            prop_assert!(s.out_of_order_bytes <= RECV_WINDOW * MAX_CONTROL_PACKET_LEN);
        }
    }
}
