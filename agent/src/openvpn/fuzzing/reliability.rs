//! The `reliable` target: the control channel's reliability layer, alone and in pairs.
use super::*;

// ---------------------------------------------------------------------------------------------
// reliable
// ---------------------------------------------------------------------------------------------

/// Opcodes the crafted packets use; the index is a fuzz byte.
const CRAFT_OPCODES: [Opcode; 7] = [
    Opcode::ControlV1,
    Opcode::AckV1,
    Opcode::HardResetClientV2,
    Opcode::SoftResetV1,
    Opcode::ControlWkcV1,
    Opcode::HardResetServerV2,
    Opcode::HardResetClientV3,
];

/// Every opcode, for `queue_reset`.
const ALL_OPCODES: [Opcode; 9] = [
    Opcode::SoftResetV1,
    Opcode::ControlV1,
    Opcode::AckV1,
    Opcode::DataV1,
    Opcode::HardResetClientV2,
    Opcode::HardResetServerV2,
    Opcode::DataV2,
    Opcode::HardResetClientV3,
    Opcode::ControlWkcV1,
];

/// The reliability layer driven by a program in the input. Byte 0 picks the configuration
/// (bit 0 set: six bytes of custom sizes follow), byte 1 the mode: bit 0 clear is one server
/// instance fed crafted and raw packets, bit 0 set is a client/server pair over a network the
/// input controls (loss, duplication, reordering), which must still converge once the network
/// turns perfect. Invariants checked after every step: at most `send_window` unacked packets
/// in flight, all within `send_window` ids of the lowest; readable bytes within
/// `max_recv_buffer + recv_window × MAX_CONTROL_PACKET_LEN`; every transmitted packet encodes,
/// decodes back to itself and is at most `max_packet_len` long; the stream read out is exactly
/// the accepted payloads in id order.
pub fn reliable(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = fuzz_reliable_config(&mut inp);
    let mode = inp.u8();
    if mode & 1 == 0 {
        reliable_single(cfg, mode & 2 != 0, inp);
    } else {
        reliable_pair(cfg, inp);
    }
}

fn fuzz_reliable_config(inp: &mut Input<'_>) -> Config {
    if inp.u8() & 1 == 0 {
        return Config::default();
    }
    Config {
        max_packet_len: usize::from(inp.u16() % 1700),
        send_window: 1 + usize::from(inp.u8() % 8),
        recv_window: 1 + usize::from(inp.u8() % 16),
        piggyback_acks: usize::from(inp.u8() % 9),
        ack_packet_acks: 1 + usize::from(inp.u8() % 8),
        max_recv_buffer: usize::from(inp.u16()),
        max_send_buffer: usize::from(inp.u16()),
        initial_rto: Duration::from_millis(1 + u64::from(inp.u8()) * 16),
        ..Config::default()
    }
}

/// What the single-instance harness knows about its instance.
struct Peer {
    /// Our reliable message ids transmitted and not yet seen acked.
    unacked: BTreeSet<u32>,
    /// Incoming message id → the stream bytes it carried, for every id reported `New`.
    accepted: BTreeMap<u32, Vec<u8>>,
    /// The next id the in-order stream waits for.
    next: u64,
    /// In-order bytes not read yet: what `read` must return next.
    unread: VecDeque<u8>,
}

impl Peer {
    fn new(next: u64) -> Self {
        Self {
            unacked: BTreeSet::new(),
            accepted: BTreeMap::new(),
            next,
            unread: VecDeque::new(),
        }
    }
}

/// Checks a transmitted packet and records its id; returns its encoding.
fn check_transmitted(
    r_cfg: &Config,
    local: SessionId,
    key_id: KeyId,
    p: &ControlPacket<'_>,
) -> Vec<u8> {
    let bytes = p.to_vec().expect("transmitted packet encodes");
    assert!(
        bytes.len() <= r_cfg.max_packet_len,
        "{} bytes > max_packet_len {}",
        bytes.len(),
        r_cfg.max_packet_len
    );
    assert_eq!(packet::decode(&bytes), Ok(Packet::Control(*p)));
    assert_eq!((p.session_id, p.key_id), (local, key_id));
    if p.opcode == Opcode::AckV1 {
        assert!(!p.acks.is_empty() && p.acks.len() <= r_cfg.ack_packet_acks);
    } else {
        assert!(p.acks.len() <= r_cfg.piggyback_acks);
    }
    bytes
}

/// Drains `poll_transmit`, checking each packet; returns the encoded packets.
fn drain(r: &mut Reliable, unacked: &mut BTreeSet<u32>, now: Instant) -> Vec<Vec<u8>> {
    let cfg = r.config().clone();
    let (local, kid) = (r.local_session(), r.key_id());
    let due = r.poll_timeout().is_some_and(|t| t <= now);
    let mut out = Vec::new();
    while let Some(p) = r.poll_transmit(now) {
        out.push(check_transmitted(&cfg, local, kid, &p));
        if let Some(id) = p.message_id {
            unacked.insert(id);
        }
        // Retransmissions are bounded by the window, acks by the pending-ack limit.
        assert!(
            out.len() <= 2 * cfg.send_window + 32,
            "poll_transmit does not stop"
        );
    }
    if due {
        assert!(
            !out.is_empty(),
            "a retransmission was due and nothing was sent"
        );
    }
    check_in_flight(r, unacked);
    out
}

fn check_in_flight(r: &Reliable, unacked: &mut BTreeSet<u32>) {
    unacked.retain(|&id| !r.is_acked(id));
    let w = r.config().send_window;
    assert!(
        unacked.len() <= w,
        "{} unacked in flight, window {w}",
        unacked.len()
    );
    if let (Some(lo), Some(hi)) = (unacked.first(), unacked.last()) {
        assert!(
            u64::from(*hi) < u64::from(*lo) + w as u64,
            "in flight {lo}..={hi} beyond the window {w}"
        );
    }
}

fn check_readable(r: &Reliable) {
    let c = r.config();
    assert!(
        r.readable() <= c.max_recv_buffer + c.recv_window * MAX_CONTROL_PACKET_LEN,
        "{} readable bytes",
        r.readable()
    );
}

/// Feeds one decoded packet to the single instance and updates the model.
fn deliver_single(r: &mut Reliable, m: &mut Peer, p: &ControlPacket<'_>, now: Instant) {
    let before_next = r.next_expected_id();
    let res = r.on_packet(p, now);
    match res {
        Ok(Received::AckOnly) => assert_eq!(p.opcode, Opcode::AckV1),
        Ok(Received::New) => {
            let id = p.message_id.expect("New needs a message id");
            assert!(u64::from(id) >= before_next);
            let stream = if p.opcode.is_reset() {
                &[][..]
            } else {
                p.payload
            };
            let prev = m.accepted.insert(id, stream.to_vec());
            assert!(prev.is_none(), "message {id} delivered twice");
            while let Some(bytes) = u32::try_from(m.next).ok().and_then(|n| m.accepted.get(&n)) {
                m.unread.extend(bytes);
                m.next += 1;
            }
        }
        Ok(Received::Duplicate) => {
            let id = p.message_id.expect("Duplicate needs a message id");
            assert!(
                m.accepted.contains_key(&id) || u64::from(id) < m.next,
                "message {id} reported duplicate but never accepted"
            );
        }
        Err(
            ReliableError::WrongKeyId { .. }
            | ReliableError::WrongSessionId { .. }
            | ReliableError::WrongAckSessionId { .. }
            | ReliableError::UnknownPeer(_)
            | ReliableError::NotControl(_)
            | ReliableError::ResetIdMismatch { .. },
        ) => {}
        Err(ReliableError::OutOfWindow { id, next_expected }) => {
            assert_eq!(next_expected, before_next);
            let off = u64::from(id) - next_expected;
            assert!(off >= r.config().recv_window as u64);
        }
        Err(ReliableError::ReceiveBufferFull) => {}
    }
    assert_eq!(
        r.next_expected_id(),
        m.next,
        "in-order delivery diverged from the model"
    );
    assert_eq!(r.readable(), m.unread.len());
    check_readable(r);
    check_in_flight(r, &mut m.unacked);
}

fn reliable_single(cfg: Config, after_cookie: bool, mut inp: Input<'_>) {
    let t0 = Instant::now();
    let mut now = t0;
    let (local, peer) = (sid(SERVER_SID), sid(CLIENT_SID));
    let mut r = if after_cookie {
        Reliable::after_cookie(cfg, local, peer)
    } else {
        Reliable::new(cfg, KeyId::ZERO, local, None)
    };
    let mut m = Peer::new(r.next_expected_id());
    let mut seq: u8 = 0;
    while !inp.is_empty() {
        seq = seq.wrapping_add(1);
        match inp.u8() % 8 {
            0 => {
                let flags = inp.u8();
                let opcode = CRAFT_OPCODES[usize::from(inp.u8()) % CRAFT_OPCODES.len()];
                let key_id = if flags & 4 != 0 {
                    KeyId::new((flags >> 4) & 7).unwrap_or(KeyId::ZERO)
                } else {
                    r.key_id()
                };
                let session_id = sid(if flags & 1 != 0 {
                    STRANGER_SID
                } else {
                    CLIENT_SID
                });
                let n_acks = usize::from(inp.u8()) % (MAX_ACKS + 1);
                let mut ids = [0u32; MAX_ACKS];
                for id in ids.iter_mut().take(n_acks) {
                    let a = inp.u8();
                    *id = if a & 0x80 != 0 {
                        inp.u32()
                    } else {
                        u32::from(a & 0x3f)
                    };
                }
                let ack_sid = sid(if flags & 2 != 0 {
                    STRANGER_SID
                } else {
                    SERVER_SID
                });
                let acks = AckArray::new(&ids[..n_acks], ack_sid).unwrap_or(AckArray::EMPTY);
                let mid = if flags & 8 != 0 {
                    inp.u32()
                } else {
                    u32::from(inp.u8() % 40)
                };
                let len = usize::from(inp.u8()) * 7;
                let payload: Vec<u8> = (0..len).map(|i| seq.wrapping_add(i as u8)).collect();
                let p = ControlPacket {
                    opcode,
                    key_id,
                    session_id,
                    acks,
                    message_id: opcode.has_message_id().then_some(mid),
                    payload: if opcode == Opcode::AckV1 {
                        &[]
                    } else {
                        &payload
                    },
                };
                // Only what the wire can carry reaches the layer: go through the codec.
                if let Ok(bytes) = p.to_vec() {
                    let q = ControlPacket::decode(&bytes).expect("encoded packet decodes");
                    assert_eq!(q, p);
                    deliver_single(&mut r, &mut m, &q, now);
                }
            }
            1 => {
                let len = usize::from(inp.u16() % 1700);
                let raw = inp.bytes(len);
                if let Ok(Packet::Control(p)) = packet::decode(raw) {
                    deliver_single(&mut r, &mut m, &p, now);
                }
            }
            2 => {
                let len = usize::from(inp.u16() % 8192);
                let free = r.send_buffer_free();
                let took = r.write(&vec![seq; len]);
                assert_eq!(took, len.min(free));
            }
            3 => now += Duration::from_millis(u64::from(inp.u16()) * 4),
            4 => {
                drain(&mut r, &mut m.unacked, now);
            }
            5 => {
                let mut buf = vec![0u8; usize::from(inp.u16())];
                let n = r.read(&mut buf);
                assert_eq!(n, buf.len().min(m.unread.len()));
                for &b in &buf[..n] {
                    assert_eq!(Some(b), m.unread.pop_front(), "stream bytes differ");
                }
            }
            6 => {
                let op = ALL_OPCODES[usize::from(inp.u8()) % ALL_OPCODES.len()];
                let res = r.queue_reset(op);
                assert_eq!(
                    matches!(
                        res,
                        Err(crate::openvpn::reliable::QueueResetError::NotReset(_))
                    ),
                    !op.is_reset()
                );
            }
            _ => {
                if let Some(t) = r.poll_timeout() {
                    now = now.max(t);
                }
                drain(&mut r, &mut m.unacked, now);
            }
        }
        check_readable(&r);
        check_in_flight(&r, &mut m.unacked);
    }
}

/// Byte `i` of endpoint `e`'s outgoing stream: position-dependent, so any loss, duplication or
/// reordering of stream bytes shows up.
fn stream_byte(e: usize, i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8) ^ (e * 0x55)) as u8
}

struct Endpoint {
    r: Reliable,
    /// Stream bytes accepted by `write`.
    written: usize,
    /// Stream bytes read from the peer.
    read: usize,
    unacked: BTreeSet<u32>,
}

impl Endpoint {
    fn read_all(&mut self, me: usize) {
        let mut buf = [0u8; 4096];
        loop {
            let n = self.r.read(&mut buf);
            if n == 0 {
                break;
            }
            self.check_read(me, &buf[..n]);
        }
    }

    fn check_read(&mut self, me: usize, bytes: &[u8]) {
        for &b in bytes {
            assert_eq!(
                b,
                stream_byte(1 - me, self.read),
                "stream byte {} wrong",
                self.read
            );
            self.read += 1;
        }
    }
}

/// Stream bytes each endpoint of the pair writes at most.
const MAX_PAIR_STREAM: usize = 4096;

struct InTransit {
    to: usize,
    bytes: Vec<u8>,
}

fn reliable_pair(cfg: Config, mut inp: Input<'_>) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut client = Reliable::new(cfg.clone(), KeyId::ZERO, sid(CLIENT_SID), None);
    let mut server = Reliable::new(cfg, KeyId::ZERO, sid(SERVER_SID), Some(sid(CLIENT_SID)));
    client
        .queue_reset(Opcode::HardResetClientV2)
        .expect("fresh state");
    server
        .queue_reset(Opcode::HardResetServerV2)
        .expect("fresh state");
    let mk = |r| Endpoint {
        r,
        written: 0,
        read: 0,
        unacked: BTreeSet::new(),
    };
    let mut eps = [mk(client), mk(server)];
    let mut net: Vec<InTransit> = Vec::new();
    while !inp.is_empty() {
        match inp.u8() % 8 {
            0 => {
                let e = usize::from(inp.u8() & 1);
                let ep = &mut eps[e];
                // Capped so tiny payloads (1 byte with a 23-byte max_packet_len) keep the final
                // convergence loop, about two rounds per packet, fast enough to fuzz.
                let len = usize::from(inp.u16() % 4096).min(MAX_PAIR_STREAM - ep.written);
                let chunk: Vec<u8> = (ep.written..ep.written + len)
                    .map(|i| stream_byte(e, i))
                    .collect();
                ep.written += ep.r.write(&chunk);
            }
            1 => {
                let e = usize::from(inp.u8() & 1);
                let ep = &mut eps[e];
                for bytes in drain(&mut ep.r, &mut ep.unacked, now) {
                    if net.len() < 256 {
                        net.push(InTransit { to: 1 - e, bytes });
                    }
                }
            }
            op @ 2..=4 => {
                let i = usize::from(inp.u8());
                if net.is_empty() {
                    continue;
                }
                let i = i % net.len();
                match op {
                    2 => {
                        let p = net.remove(i);
                        deliver_pair(&mut eps[p.to], &p.bytes, now);
                    }
                    3 if net.len() < 256 => {
                        let copy = InTransit {
                            to: net[i].to,
                            bytes: net[i].bytes.clone(),
                        };
                        net.push(copy);
                    }
                    3 => {}
                    _ => {
                        net.remove(i);
                    }
                }
            }
            5 => now += Duration::from_millis(u64::from(inp.u16()) * 4),
            6 => {
                let e = usize::from(inp.u8() & 1);
                let mut buf = vec![0u8; usize::from(inp.u16())];
                let n = eps[e].r.read(&mut buf);
                eps[e].check_read(e, &buf[..n]);
            }
            _ => {
                if let Some(t) = eps.iter().filter_map(|e| e.r.poll_timeout()).min() {
                    now = now.max(t);
                }
            }
        }
        for ep in &mut eps {
            check_readable(&ep.r);
            check_in_flight(&ep.r, &mut ep.unacked);
        }
    }
    // Whatever happened, a perfect network from now on delivers everything and gets it acked.
    // Bounded by progress, not by a count of rounds: tiny windows and payloads legitimately
    // need many. Without progress, every packet in flight is retransmitted within `max_rto`
    // (the lowest unacked one may well have the longest timer), so twice that with nothing
    // moving is a livelock.
    let progress = |eps: &[Endpoint; 2]| {
        eps.each_ref().map(|e| {
            (
                e.read,
                e.r.next_expected_id(),
                e.unacked.len(),
                e.r.all_acked(),
            )
        })
    };
    let patience = 2 * eps[0].r.config().max_rto;
    let mut last = progress(&eps);
    let (mut last_at, mut stalled_rounds) = (now, 0u32);
    loop {
        for (i, ep) in eps.iter_mut().enumerate() {
            ep.read_all(i);
        }
        let done = eps.iter().all(|e| e.r.all_acked())
            && eps[0].read == eps[1].written
            && eps[1].read == eps[0].written;
        if done {
            return;
        }
        let now_progress = progress(&eps);
        if now_progress == last {
            stalled_rounds += 1;
            assert!(
                now - last_at <= patience && stalled_rounds < 100_000,
                "no progress on a perfect network: read {}/{} and {}/{}, acked {} {}",
                eps[0].read,
                eps[1].written,
                eps[1].read,
                eps[0].written,
                eps[0].r.all_acked(),
                eps[1].r.all_acked()
            );
        } else {
            last = now_progress;
            (last_at, stalled_rounds) = (now, 0);
        }
        for (e, ep) in eps.iter_mut().enumerate() {
            for bytes in drain(&mut ep.r, &mut ep.unacked, now) {
                net.push(InTransit { to: 1 - e, bytes });
            }
        }
        if net.is_empty() {
            match eps.iter().filter_map(|e| e.r.poll_timeout()).min() {
                Some(t) => now = now.max(t),
                None => panic!(
                    "stalled: nothing in flight or scheduled, read {}/{} and {}/{}",
                    eps[0].read, eps[1].written, eps[1].read, eps[0].written
                ),
            }
        }
        for p in std::mem::take(&mut net) {
            deliver_pair(&mut eps[p.to], &p.bytes, now);
        }
    }
}

fn deliver_pair(ep: &mut Endpoint, bytes: &[u8], now: Instant) {
    let p = ControlPacket::decode(bytes).expect("a transmitted packet decodes");
    // Errors are fine here (a full receive buffer, say); the invariants are checked after.
    let _ = ep.r.on_packet(&p, now);
}
