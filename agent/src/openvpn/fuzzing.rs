//! Fuzz target bodies, kept in the library so that `agent/fuzz` (cargo-fuzz, libFuzzer) and the
//! unit tests run the same code: the tests replay the committed seed corpus
//! (`agent/fuzz/corpus/<target>/`) and random bytes through every body, so CI exercises the
//! invariants without a fuzzer. See docs/fuzzing.md.
//!
//! Every body takes arbitrary bytes, must never panic on them, and panics (an assertion) when an
//! invariant of the code under test breaks. Nothing here is used by the server itself.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cookie::{HmacCookie, DEFAULT_HAND_WINDOW};
use super::crypto::{self, Cipher, DataFormat, DataHeader, Decryptor, DirectionKey, Encryptor};
use super::keys::{ClientKeyMethod2, ServerKeyMethod2, OPTIONS_STRING_MAX};
use super::options::{
    self, auth_failed, control_messages, encode_control_message, is_printable, negotiate_cipher,
    server_options_string, split_push_reply, validate_push_option, ControlMessage, PeerInfo,
    Transport, CONTROL_MESSAGE_MAX, PEER_INFO_MAX_ENTRIES,
};
use super::packet::{
    self, encode_data_header, encode_frame, AckArray, ControlPacket, DecodeError, FramingError,
    KeyId, Opcode, Packet, SessionId, StreamDecoder, MAX_ACKS, MAX_CONTROL_PACKET_LEN,
    MAX_TCP_FRAME_LEN,
};
use super::reliable::{Config, Received, Reliable, ReliableError};
use super::tls_crypt::{self, PacketIdSender, Role, StaticKey, TlsCryptKey, TlsCryptSession};

/// A fuzz target body.
pub type Body = fn(&[u8]);

/// The whole server (in its own module: it needs certificates and the in-memory client).
pub use super::fuzz_server::server;

/// Every target: its name (the `fuzz_targets/<name>.rs` file and the corpus directory) and body.
pub const TARGETS: &[(&str, Body)] = &[
    ("packet_decode", packet_decode),
    ("stream_decoder", stream_decoder),
    ("reliable", reliable),
    ("control_message", control_message),
    ("tls_crypt_unwrap", tls_crypt_unwrap),
    ("server", server),
];

/// The two session ids of the observed run (a) (protocol doc §1.4): client and server.
pub const CLIENT_SID: u64 = 0x9d34_f1ba_c8d6_6152;
pub const SERVER_SID: u64 = 0xace2_3948_e6d1_889b;
/// A session id that belongs to nobody.
const STRANGER_SID: u64 = 0x7777_7777_7777_7777;

fn sid(x: u64) -> SessionId {
    SessionId::new(x.to_be_bytes()).unwrap_or(SessionId::from_nonzero(core::num::NonZeroU64::MIN))
}

/// Reads fuzz bytes as numbers; past the end everything is zero, so every input is a program.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

// ---------------------------------------------------------------------------------------------
// packet_decode
// ---------------------------------------------------------------------------------------------

/// Fixed data-channel key for a key id: seeds built with it decrypt, so the success path of the
/// data channel is fuzzed too. The cipher varies with the key id to cover all three.
pub fn fuzz_data_key(key_id: u8) -> DirectionKey {
    let cipher = Cipher::ALL[usize::from(key_id) % Cipher::ALL.len()];
    DirectionKey::new(cipher, &[0x42; 32], [0x24; 8]).expect("32 bytes is enough for any cipher")
}

pub fn fuzz_cookie_addr() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40001))
}

/// Fixed cookie secret; the slot is always 0 (the epoch is "now").
pub const FUZZ_COOKIE_SECRET: [u8; 32] = [0x42; 32];

/// Decodes one datagram as every layer that looks at raw packets would: the codec (control and
/// data), the data-channel header parser and AEAD, the HMAC cookie. Whatever decodes must
/// re-encode to the same bytes. The bytes are also read as a sequence of data-channel packet
/// ids for the replay window.
pub fn packet_decode(data: &[u8]) {
    let decoded = packet::decode(data);
    match decoded {
        Ok(Packet::Control(p)) => check_control(&p, data),
        Ok(Packet::Data(d)) => {
            assert_eq!([d.header, d.payload].concat(), data);
            assert!(!d.payload.is_empty(), "data packets carry a payload");
            let (h, n) = encode_data_header(d.key_id, d.peer_id).expect("decoded header encodes");
            assert_eq!(&h[..n], d.header, "data header round trip");
            assert_eq!(
                ControlPacket::decode(data),
                Err(DecodeError::NotControl(d.opcode()))
            );
        }
        Err(e) => {
            assert_eq!(data.is_empty(), e == DecodeError::Empty);
            assert!(ControlPacket::decode(data).is_err());
            let _ = e.to_string();
        }
    }
    // The data-channel parser agrees with the codec: anything it accepts the codec takes as
    // the same data packet (the codec needs one payload byte, the parser four id bytes).
    if let Ok(h) = DataHeader::parse(data) {
        let Ok(Packet::Data(d)) = decoded else {
            panic!("DataHeader::parse took {h:?}, the codec gave {decoded:?}");
        };
        assert_eq!((h.key_id, h.peer_id), (d.key_id.get(), d.peer_id));
    }
    data_channel_open(data);
    data_replay_window(data);
}

fn check_control(p: &ControlPacket<'_>, data: &[u8]) {
    // The codec promises bytes-exact round trips of whatever it decodes.
    assert_eq!(p.to_vec().as_deref(), Ok(data), "control round trip");
    assert_eq!(p.encoded_len(), data.len());
    assert!(data.len() <= MAX_CONTROL_PACKET_LEN);
    assert!(p.acks.len() <= MAX_ACKS);
    assert_eq!(p.acks.remote_session().is_some(), !p.acks.is_empty());
    assert_eq!(p.message_id.is_some(), p.opcode.has_message_id());
    assert!(p.opcode.is_control() && p.opcode.allows_key_id(p.key_id));
    assert_eq!(ControlPacket::decode(data).as_ref(), Ok(p));

    // tls-crypt takes every decodable control packet and gives it back unchanged.
    let key = fuzz_tls_crypt_key();
    let mut wrapped = vec![0u8; data.len() + tls_crypt::OVERHEAD];
    let n = TlsCryptKey::new(&key, Role::Client)
        .wrap(data, 1, 2, &mut wrapped)
        .expect("a decodable control packet wraps");
    let mut out = vec![0u8; n];
    let u = TlsCryptKey::new(&key, Role::Server)
        .unwrap(&wrapped[..n], &mut out)
        .expect("own wrap unwraps");
    assert_eq!(u.packet, data);

    // The stateless cookie: a reply it builds is valid, and its ack checks out.
    let now = Instant::now();
    let cookie = HmacCookie::new(FUZZ_COOKIE_SECRET, DEFAULT_HAND_WINDOW, now);
    let addr = fuzz_cookie_addr();
    if let Ok(reply) = cookie.reset_reply(p, addr, now) {
        assert_eq!(p.opcode, Opcode::HardResetClientV2);
        let bytes = reply.to_vec().expect("reset reply encodes");
        assert!(packet::decode(&bytes).is_ok());
        let ack = ControlPacket {
            opcode: Opcode::AckV1,
            key_id: KeyId::ZERO,
            session_id: p.session_id,
            acks: AckArray::new(&[0], reply.session_id).expect("one ack"),
            message_id: None,
            payload: &[],
        };
        let ok = cookie.verify(&ack, addr, now).expect("own cookie verifies");
        assert_eq!(ok.server_session, reply.session_id);
    }
    if let Ok(ok) = cookie.verify(p, addr, now) {
        assert_eq!(ok.client_session, p.session_id);
        assert_eq!(Some(ok.server_session), p.acks.remote_session());
    }
}

fn data_channel_open(data: &[u8]) {
    let Some(&first) = data.first() else {
        return;
    };
    let kid = first & 7;
    let key = fuzz_data_key(kid);
    let mut dec = Decryptor::new(&key, kid).expect("key id < 8");
    let mut buf = data.to_vec();
    let now = Instant::now();
    let Ok(opened) = dec.open_in_place(&mut buf, now) else {
        return;
    };
    // Only a packet sealed under the fixed key gets here (a seed). Sealing its plaintext again
    // with the same id reproduces it exactly (the AEAD is deterministic).
    let pt = buf[opened.plaintext.clone()].to_vec();
    assert!(!pt.is_empty());
    let _ = crypto::classify(&pt);
    // A second open of the same packet is a replay.
    let mut again = data.to_vec();
    assert!(matches!(
        dec.open_in_place(&mut again, now),
        Err(crypto::CryptoError::Replay(_))
    ));
    if opened.header.packet_id == 1 {
        let format = match opened.header.peer_id {
            Some(peer_id) => DataFormat::V2 { peer_id },
            None => DataFormat::V1,
        };
        let mut enc = Encryptor::new(&key, kid, format).expect("valid header fields");
        let mut out = vec![0u8; data.len()];
        let n = enc
            .encrypt(&pt, &mut out)
            .expect("same size as the original");
        assert_eq!(&out[..n], data, "re-sealing differs");
    }
}

/// Reads 5-byte records (packet id, seconds to advance) into the data channel's replay window:
/// no id is accepted twice, 0 never, the highest id only grows, `check` predicts `accept`.
fn data_replay_window(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut w = crypto::ReplayWindow::new();
    let mut accepted = HashSet::new();
    for rec in data.chunks_exact(5) {
        let id = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        now += Duration::from_secs(u64::from(rec[4] % 32));
        let predicted = w.check(id, now);
        let before = w.highest();
        let r = w.accept(id, now);
        assert_eq!(predicted, r);
        if r.is_ok() {
            assert_ne!(id, 0);
            assert!(accepted.insert(id), "packet id {id} accepted twice");
            assert_eq!(w.highest(), before.max(id));
        } else {
            assert_eq!(w.highest(), before, "a refused id moved the window");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stream_decoder
// ---------------------------------------------------------------------------------------------

/// TCP framing. Input: `max_len` (BE u16), then chunks of `len (u8) ‖ bytes`. The decoder's
/// packets and errors must match a reference framer over the bytes it accepted, its buffer must
/// stay within `2 + max_len`, and feeding must always make progress.
pub fn stream_decoder(data: &[u8]) {
    let mut inp = Input::new(data);
    let max = usize::from(inp.u16());
    let mut dec = StreamDecoder::new(max);
    let max = max.clamp(1, MAX_TCP_FRAME_LEN);
    // Everything the decoder accepted, and where the reference framer is in it.
    let mut fed: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut failed: Option<FramingError> = None;
    while !inp.is_empty() && failed.is_none() {
        let n = usize::from(inp.u8());
        let mut rest = inp.bytes(n);
        loop {
            let took = match dec.feed(rest) {
                Ok(k) => k,
                Err(e) => panic!("feed failed with {e:?} before any framing error"),
            };
            assert!(took <= rest.len());
            fed.extend_from_slice(&rest[..took]);
            rest = &rest[took..];
            let mut produced = false;
            loop {
                let r = dec.next_packet().map(|p| p.map(<[u8]>::to_vec));
                let expected = reference_frame(&fed[pos..], max);
                match (&r, expected) {
                    (Ok(Some(p)), Ok(Some(len))) => {
                        assert_eq!(p[..], fed[pos + 2..pos + 2 + len]);
                        let mut framed = vec![0u8; len + 2];
                        assert_eq!(encode_frame(p, &mut framed), Ok(len + 2));
                        assert_eq!(framed[..], fed[pos..pos + 2 + len]);
                        let _ = packet::decode(p);
                        pos += 2 + len;
                        produced = true;
                    }
                    (Ok(None), Ok(None)) => break,
                    (Err(e), Err(x)) if *e == x => {
                        failed = Some(x);
                        break;
                    }
                    _ => panic!("decoder gave {r:?}, reference {expected:?}"),
                }
            }
            assert_eq!(dec.buffered(), fed.len() - pos);
            assert!(dec.buffered() <= max + 2, "buffer beyond 2 + max_len");
            if rest.is_empty() || failed.is_some() {
                break;
            }
            // A full buffer holds a whole frame or a bad header: never stuck.
            assert!(
                took > 0 || produced,
                "no progress with {} bytes left",
                rest.len()
            );
        }
    }
    if let Some(e) = failed {
        // The framing is lost for good.
        assert_eq!(dec.feed(&[1, 2, 3]), Err(e));
        assert_eq!(dec.next_packet(), Err(e));
    }
}

/// The next frame of `buf` as OpenVPN reads it (doc §1.1): its length when complete.
fn reference_frame(buf: &[u8], max: usize) -> Result<Option<usize>, FramingError> {
    let [a, b, ..] = *buf else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([a, b]));
    if len == 0 {
        return Err(FramingError::ZeroLength);
    }
    if len > max {
        return Err(FramingError::TooLong { len, max });
    }
    Ok((buf.len() >= 2 + len).then_some(len))
}

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
                    matches!(res, Err(super::reliable::QueueResetError::NotReset(_))),
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

// ---------------------------------------------------------------------------------------------
// control_message
// ---------------------------------------------------------------------------------------------

/// Control-channel text: control messages, peer info, NCP, the options string, key-method-2
/// messages, PUSH_REPLY splitting and AUTH_FAILED. Nothing may panic; every string that comes
/// out toward a peer or a log is printable and bounded; what parses re-encodes and parses the
/// same.
pub fn control_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    // Incoming control messages (§8.1).
    let mut count = 0;
    for m in control_messages(data) {
        count += 1;
        assert!(count <= data.len(), "more messages than bytes");
        match m {
            Ok(ControlMessage::PushRequest | ControlMessage::Exit) => {}
            Ok(ControlMessage::CrResponse(s) | ControlMessage::Other(s)) => {
                assert!(is_printable(s.as_bytes()) && s.len() < CONTROL_MESSAGE_MAX);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    // Outgoing control messages come back as exactly what was sent.
    match encode_control_message(&text) {
        Ok(wire) => {
            assert!(wire.len() <= CONTROL_MESSAGE_MAX && wire.last() == Some(&0));
            let back: Vec<_> = control_messages(&wire).collect();
            if text.is_empty() {
                assert!(back.is_empty());
            } else {
                assert_eq!(back.len(), 1);
                let s = match back[0] {
                    Ok(ControlMessage::PushRequest) => "PUSH_REQUEST".to_owned(),
                    Ok(ControlMessage::Exit) => "EXIT".to_owned(),
                    Ok(ControlMessage::CrResponse(r)) => format!("CR_RESPONSE,{r}"),
                    Ok(ControlMessage::Other(o)) => o.to_owned(),
                    Err(ref e) => panic!("own message refused: {e}"),
                };
                assert_eq!(s, text);
            }
        }
        Err(_) => assert!(!is_printable(text.as_bytes()) || text.len() >= CONTROL_MESSAGE_MAX),
    }
    let af = auth_failed(Some(&text));
    assert!(
        encode_control_message(&af).is_ok(),
        "AUTH_FAILED must always be sendable"
    );

    // Peer info (§5.5): lenient, bounded, printable.
    let peer = PeerInfo::parse(&text);
    assert!(peer.entries.len() <= PEER_INFO_MAX_ENTRIES);
    assert!(peer.entries.len() + peer.skipped_lines <= text.split('\n').count());
    for (k, v) in &peer.entries {
        assert!(!k.is_empty() && is_printable(k.as_bytes()) && is_printable(v.as_bytes()));
    }

    // NCP (§5.5) with the same text as the options string.
    match negotiate_cipher(&Cipher::ALL, &peer, &text) {
        Ok(c) => assert!(Cipher::ALL.contains(&c)),
        Err(e) => {
            assert!(is_printable(e.offered.as_bytes()) && e.offered.len() <= 256);
            assert!(encode_control_message(&e.auth_failed_message()).is_ok());
        }
    }
    for derivation in [
        options::KeyDerivation::TlsEkm,
        options::KeyDerivation::LegacyPrf,
    ] {
        if let Some(f) = options::protocol_flags_option(peer.proto, derivation) {
            assert!(validate_push_option(&f).is_ok());
        }
    }

    // Our options string never echoes garbage and always fits the key-method-2 reply.
    for t in [Transport::Udp, Transport::Tcp] {
        let ours = server_options_string(&text, t);
        assert!(is_printable(ours.as_bytes()) && ours.len() < OPTIONS_STRING_MAX);
        let reply = ServerKeyMethod2 {
            random1: [1; 32],
            random2: [2; 32],
            options: ours,
        };
        let bytes = reply.to_bytes().expect("our reply encodes");
        assert_eq!(ServerKeyMethod2::parse(&bytes), Ok((reply, bytes.len())));
    }
    let _ = options::options_string_item(&text, "cipher");

    // Key-method-2 messages (§5.1): what parses re-encodes to a message that parses the same.
    if let Ok((m, used)) = ClientKeyMethod2::parse(data) {
        assert!(used <= data.len());
        assert!(!m.credentials_invalid || (m.username.is_empty() && m.password.is_empty()));
        if let Ok(bytes) = m.to_bytes() {
            let (m2, used2) = ClientKeyMethod2::parse(&bytes).expect("own encoding parses");
            assert_eq!(used2, bytes.len());
            assert_eq!(
                (&m2.options, &m2.username, &m2.password, &m2.peer_info),
                (&m.options, &m.username, &m.password, &m.peer_info)
            );
            assert_eq!(m2.key_source, m.key_source);
        }
    }
    if let Ok((m, used)) = ServerKeyMethod2::parse(data) {
        assert!(used <= data.len());
        if let Ok(bytes) = m.to_bytes() {
            assert_eq!(ServerKeyMethod2::parse(&bytes), Ok((m, bytes.len())));
        }
    }

    // PUSH_REPLY splitting (§8.3): the text as comma-separated options, a bundle size from the
    // first byte. Every part fits, and the parts give back the options in order.
    let opts: Vec<String> = text.split(',').map(str::to_owned).collect();
    let bundle = 32 + usize::from(data.first().copied().unwrap_or(0)) * 8;
    match split_push_reply(&opts, bundle) {
        Ok(parts) => {
            assert!(opts.iter().all(|o| validate_push_option(o).is_ok()));
            let mut back = Vec::new();
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                assert!(
                    p.len() < bundle,
                    "part of {} bytes, bundle {bundle}",
                    p.len()
                );
                assert!(encode_control_message(p).is_ok());
                let body = p.strip_prefix("PUSH_REPLY").expect("header");
                let body = if n == 1 {
                    body
                } else if i + 1 == n {
                    body.strip_suffix(",push-continuation 1")
                        .expect("last marker")
                } else {
                    body.strip_suffix(",push-continuation 2")
                        .expect("more marker")
                };
                back.extend(body.split(',').skip(1).map(str::to_owned));
            }
            assert_eq!(back, opts, "options lost or reordered");
        }
        Err(options::OptionsError::BadPushOption(_)) => {
            assert!(opts.iter().any(|o| validate_push_option(o).is_err()));
        }
        Err(options::OptionsError::TooLong(_)) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// tls_crypt_unwrap
// ---------------------------------------------------------------------------------------------

/// The tls-crypt key of capture run (b) (the same slices as tls_crypt.rs's tests), so the
/// observed wrapped packets in the corpus authenticate.
pub fn fuzz_tls_crypt_key() -> StaticKey {
    const PARTS: [(usize, &str); 4] = [
        (
            0,
            "b1064e1d9c1381281b5dfae1e5bdadbeeb4d59f197713517036fb93e3f42fec5",
        ),
        (
            64,
            "1073d573cd36418f352ddc4edb7c58d08a29107009dfaffe6fafd124c0ad18c5",
        ),
        (
            128,
            "1ad16107412bb2ae4b29c290e60d9800db52135fb5f9f6bf8c7b0ffafdd3150c",
        ),
        (
            192,
            "c7910463953ec7ebd2643569dabd716f460969cc809e4da6b2146bae7facb5b0",
        ),
    ];
    let mut k = [0xeeu8; tls_crypt::STATIC_KEY_LEN];
    for (at, part) in PARTS {
        for (i, b) in k[at..at + 32].iter_mut().enumerate() {
            *b = u8::from_str_radix(&part[2 * i..2 * i + 2], 16).expect("hex constant");
        }
    }
    StaticKey::from_bytes(k)
}

/// tls-crypt: unwrapping garbage fails without panicking and leaves no plaintext behind; what
/// unwraps re-wraps to the same bytes and is refused as a replay the second time; wrapping
/// input-derived control packets round-trips in both directions and any flipped bit is caught.
/// Also the replay window (5-byte records) and the static key file parser.
pub fn tls_crypt_unwrap(data: &[u8]) {
    let key = fuzz_tls_crypt_key();
    let now = Instant::now();
    for (rx, tx) in [(Role::Server, Role::Client), (Role::Client, Role::Server)] {
        let rk = TlsCryptKey::new(&key, rx);
        let mut out = vec![0xAAu8; data.len() + 1];
        match rk.unwrap(data, &mut out) {
            Ok(u) => {
                let (pid, ts) = (u.packet_id, u.timestamp);
                let plain = u.packet.to_vec();
                assert_eq!(plain.len() + tls_crypt::OVERHEAD, data.len());
                let _ = packet::decode(&plain);
                let mut again = vec![0u8; data.len()];
                let n = TlsCryptKey::new(&key, tx)
                    .wrap(&plain, pid, ts, &mut again)
                    .expect("unwrapped packet wraps");
                assert_eq!(&again[..n], data, "re-wrap differs");
                let mut s = TlsCryptSession::new(PacketIdSender::new(1));
                let mut o = vec![0u8; data.len()];
                let first = s.unwrap(&rk, data, &mut o, now).map(|u| u.packet_id);
                match first {
                    Ok(id) => {
                        assert_eq!(id, pid);
                        assert_eq!(
                            s.unwrap(&rk, data, &mut o, now).map(|u| u.packet_id),
                            Err(tls_crypt::UnwrapError::Replay(
                                tls_crypt::ReplayError::Replay
                            ))
                        );
                    }
                    Err(e) => assert_eq!(
                        e,
                        tls_crypt::UnwrapError::Replay(tls_crypt::ReplayError::ZeroId)
                    ),
                }
            }
            Err(tls_crypt::UnwrapError::BadTag) => {
                let n = data.len() - tls_crypt::TAG_LEN;
                assert!(
                    out[..n].iter().all(|&b| b == 0),
                    "plaintext left after a bad tag"
                );
            }
            Err(_) => {}
        }
    }

    // Round trip of an input-derived control packet, both directions.
    let mut inp = Input::new(data);
    let opcode = [
        Opcode::SoftResetV1,
        Opcode::ControlV1,
        Opcode::AckV1,
        Opcode::HardResetClientV2,
        Opcode::HardResetServerV2,
        Opcode::HardResetClientV3,
        Opcode::ControlWkcV1,
    ][usize::from(inp.u8()) % 7];
    let kid = KeyId::new(inp.u8() & 7).unwrap_or(KeyId::ZERO);
    let pid = inp.u32();
    let ts = inp.u32();
    let flip = usize::from(inp.u16());
    let session = (u64::from(inp.u32()) << 32) | u64::from(inp.u32()) | 1;
    let body = inp.bytes(MAX_CONTROL_PACKET_LEN - packet::CONTROL_HEADER_LEN);
    let mut plain = vec![packet::first_byte(opcode, kid)];
    plain.extend_from_slice(&session.to_be_bytes());
    plain.extend_from_slice(body);
    for (tx, rx) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
        let mut w = vec![0u8; plain.len() + tls_crypt::OVERHEAD];
        let n = TlsCryptKey::new(&key, tx)
            .wrap(&plain, pid, ts, &mut w)
            .expect("control packet within the size limit wraps");
        assert_eq!(n, w.len());
        let mut out = vec![0u8; n];
        let u = TlsCryptKey::new(&key, rx)
            .unwrap(&w, &mut out)
            .expect("own wrap unwraps");
        assert_eq!((u.packet_id, u.timestamp, u.packet), (pid, ts, &plain[..]));
        // The sender's own direction key cannot open it.
        assert!(TlsCryptKey::new(&key, tx).unwrap(&w, &mut out).is_err());
        let i = flip % (n * 8);
        w[i / 8] ^= 1 << (i % 8);
        assert!(
            TlsCryptKey::new(&key, rx).unwrap(&w, &mut out).is_err(),
            "bit {i} flipped and still accepted"
        );
    }

    tls_crypt_replay_window(data);

    if let Ok(k) = StaticKey::parse(&String::from_utf8_lossy(data)) {
        assert_eq!(StaticKey::parse(&k.to_pem()), Ok(k));
    }
}

/// 5-byte records (packet id, timestamp 0..4, seconds to advance): each (timestamp, id) pair
/// is accepted at most once, never id 0, and `check` predicts `check_and_update`.
fn tls_crypt_replay_window(data: &[u8]) {
    let mut now = Instant::now();
    let mut w = tls_crypt::ReplayWindow::default();
    let mut accepted = HashSet::new();
    let mut newest_ts = 0;
    for rec in data.chunks_exact(6) {
        let id = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let ts = u32::from(rec[4] % 4);
        now += Duration::from_secs(u64::from(rec[5] % 32));
        let predicted = w.check(id, ts, now);
        let r = w.check_and_update(id, ts, now);
        assert_eq!(predicted, r);
        if r.is_ok() {
            assert_ne!(id, 0);
            assert!(ts >= newest_ts, "older timestamp accepted");
            newest_ts = ts;
            assert!(accepted.insert((ts, id)), "({ts}, {id}) accepted twice");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    fn corpus_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus"))
    }

    #[test]
    fn fuzz_corpus_replays() {
        let root = corpus_dir();
        let mut total = 0;
        for (name, body) in TARGETS {
            let dir = root.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
                .map(|e| e.expect("readable dir entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "corpus {} is empty", dir.display());
            for f in files {
                let bytes = std::fs::read(&f).expect("readable corpus file");
                let run = std::panic::catch_unwind(|| body(&bytes));
                assert!(run.is_ok(), "{name} failed on {}", f.display());
                total += 1;
            }
        }
        // Every corpus directory belongs to a target (a typo would silently skip seeds).
        for e in std::fs::read_dir(&root).expect("corpus root") {
            let name = e.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "corpus/{name} has no target"
            );
        }
        assert!(total > 0);
    }

    #[test]
    fn every_target_has_a_fuzz_target_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
                .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
            assert!(
                src.contains(&format!("fuzzing::{name}(")),
                "{name}.rs calls another body"
            );
        }
    }

    // --- Seed corpus ------------------------------------------------------------------------
    //
    // `cargo test -p portcullis-agent --lib write_seed_corpus -- --ignored` (re)writes the seeds
    // below into fuzz/corpus/; other files there (minimised crashes, say) are left alone.

    use crate::openvpn::keys::{ClientKeySource, Password};
    use crate::openvpn::packet::hex;

    const CLIENT_RESET: &str = "38 9d34f1bac8d66152 00 00000000";
    const SERVER_RESET: &str = "40 ace23948e6d1889b 01 00000000 9d34f1bac8d66152 00000000";
    // crypto.rs tests: run (a)'s first server→client P_DATA_V2 and the client's first ping, and
    // run (b)'s key-id-1 packet (doc §7).
    const S2C_DATA: &str = "48000000 00000001 5c840d3f 2555a048 2256c1ff 97b51fca \
        9f485e86 3a3a2348 0153ac04 4a347a51 de6f00e2 e2530eab 96d497c2 9bbdb0c8 e3653262 \
        20178668 cf86b3a3 7fa58dab";
    const C2S_PING: &str = "48000000 00000001 7d09a702 e9f4e6fb 44b6377a 4903820d \
        9701abb8 add8503f 318bde86 c65051b3";
    const KID1_DATA: &str = "49000000 00000001 32bb7627 be0f3a15 ba6ed974 c9076a29 \
        ac396d60 7705f0e0 1fd6587e 6e6bb3fd 04704eb8 ce6346ed d3b51be0 \
        db127c17 6b9f1f49 c614f3b9 269cb685 e37fe221";
    const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\n\
        IV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n\
        IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";
    const OPTIONS_UDP: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,\
        cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
    const OPTIONS_TCP: &str = "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_CLIENT,\
        cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
    const PUSH_REPLY: &str = "PUSH_REPLY,route 10.100.0.0 255.255.0.0,\
        dhcp-option DNS 10.99.0.1,redirect-gateway def1 bypass-dhcp,route-gateway 10.99.0.1,\
        topology subnet,ping 10,ping-restart 60,ifconfig 10.99.0.2 255.255.255.0,peer-id 0,\
        cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500";

    fn ctl(
        op: Opcode,
        kid: u8,
        from: u64,
        acks: &[u32],
        to: u64,
        mid: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        ControlPacket {
            opcode: op,
            key_id: KeyId::new(kid).unwrap(),
            session_id: sid(from),
            acks: if acks.is_empty() {
                AckArray::EMPTY
            } else {
                AckArray::new(acks, sid(to)).unwrap()
            },
            message_id: op.has_message_id().then_some(mid),
            payload,
        }
        .to_vec()
        .unwrap()
    }

    fn sealed(kid: u8, format: DataFormat, plaintext: &[u8]) -> Vec<u8> {
        let mut enc = Encryptor::new(&fuzz_data_key(kid), kid, format).unwrap();
        let mut out = vec![0u8; enc.overhead() + plaintext.len()];
        let n = enc.encrypt(plaintext, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn packet_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let hello = hex("16030100 f5010000 f10303");
        let mut nine_acks = hex("28 6a496c79d7970e24 09");
        nine_acks.extend_from_slice(&[0; 9 * 4 + 8]);
        let mut oversized = hex("20 6a496c79d7970e24 00 00000001");
        oversized.resize(MAX_CONTROL_PACKET_LEN + 1, 0x16);
        let mut max_control = oversized.clone();
        max_control.pop();
        // A client ack carrying the valid cookie of the fixed secret (slot 0): verify succeeds.
        let now = Instant::now();
        let cookie = HmacCookie::new(FUZZ_COOKIE_SECRET, DEFAULT_HAND_WINDOW, now);
        let server = cookie.session_id(fuzz_cookie_addr(), sid(CLIENT_SID), now);
        let cookie_ack = ControlPacket {
            opcode: Opcode::ControlV1,
            key_id: KeyId::ZERO,
            session_id: sid(CLIENT_SID),
            acks: AckArray::new(&[0], server).unwrap(),
            message_id: Some(1),
            payload: &hello,
        }
        .to_vec()
        .unwrap();
        let mut replays = Vec::new();
        for id in [1u32, 3, 2, 2, 64, 1, u32::MAX, u32::MAX - 1, u32::MAX, 0] {
            replays.extend_from_slice(&id.to_be_bytes());
            replays.push(1);
        }
        vec![
            ("observed-client-reset", hex(CLIENT_RESET)),
            ("observed-server-reset", hex(SERVER_RESET)),
            ("observed-data-v2-s2c", hex(S2C_DATA)),
            ("observed-data-v2-ping", hex(C2S_PING)),
            ("observed-data-v2-kid1", hex(KID1_DATA)),
            (
                "client-reset-kid0",
                ctl(Opcode::HardResetClientV2, 0, CLIENT_SID, &[], 0, 0, &[]),
            ),
            (
                "server-reset-4-acks",
                ctl(
                    Opcode::HardResetServerV2,
                    0,
                    SERVER_SID,
                    &[0, 1, 2, 3],
                    CLIENT_SID,
                    0,
                    &[],
                ),
            ),
            (
                "ack-8-acks",
                ctl(
                    Opcode::AckV1,
                    0,
                    CLIENT_SID,
                    &[0, 1, 2, 3, 4, 5, 6, 7],
                    SERVER_SID,
                    0,
                    &[],
                ),
            ),
            (
                "control-v1-hello",
                ctl(
                    Opcode::ControlV1,
                    0,
                    CLIENT_SID,
                    &[0],
                    SERVER_SID,
                    1,
                    &hello,
                ),
            ),
            (
                "control-v1-kid7",
                ctl(Opcode::ControlV1, 7, CLIENT_SID, &[], 0, 9, b"x"),
            ),
            (
                "soft-reset-kid1",
                ctl(Opcode::SoftResetV1, 1, SERVER_SID, &[], 0, 0, &[]),
            ),
            (
                "reset-early-neg-tlv",
                ctl(
                    Opcode::HardResetServerV2,
                    0,
                    SERVER_SID,
                    &[0],
                    CLIENT_SID,
                    0,
                    &[0, 1, 0, 2, 0, 1],
                ),
            ),
            (
                "hard-reset-v3",
                ctl(
                    Opcode::HardResetClientV3,
                    0,
                    CLIENT_SID,
                    &[],
                    0,
                    0,
                    &[0xaa; 20],
                ),
            ),
            (
                "control-wkc",
                ctl(
                    Opcode::ControlWkcV1,
                    0,
                    CLIENT_SID,
                    &[0],
                    SERVER_SID,
                    1,
                    &[0xbb; 20],
                ),
            ),
            (
                "ids-ffffffff",
                ctl(
                    Opcode::ControlV1,
                    0,
                    CLIENT_SID,
                    &[u32::MAX; 8],
                    SERVER_SID,
                    u32::MAX,
                    b"\x17",
                ),
            ),
            ("cookie-valid-ack", cookie_ack),
            (
                "data-v2-sealed-kid0",
                sealed(0, DataFormat::V2 { peer_id: 0 }, &crypto::PING_MAGIC),
            ),
            (
                "data-v1-sealed-kid1",
                sealed(1, DataFormat::V1, &hex("45000014 00000000 4001")),
            ),
            (
                "data-v2-sealed-kid2-no-peer",
                sealed(
                    2,
                    DataFormat::V2 {
                        peer_id: crypto::NO_PEER_ID,
                    },
                    &crypto::OCC_EXIT_MESSAGE,
                ),
            ),
            ("empty", vec![]),
            ("one-byte-reset", vec![0x38]),
            ("one-byte-data-v2", vec![0x48]),
            ("bad-opcode-0", hex("00 9d34f1bac8d66152 00 00000000")),
            (
                "bad-opcode-obsolete",
                hex("08 9d34f1bac8d66152 00 00000000"),
            ),
            ("bad-opcode-12", hex("60 9d34f1bac8d66152 00 00000000")),
            ("bad-opcode-31", hex("ff 9d34f1bac8d66152 00 00000000")),
            ("hard-reset-kid1", hex("39 9d34f1bac8d66152 00 00000000")),
            ("soft-reset-kid0", hex("18 6a496c79d7970e24 00 00000000")),
            ("zero-session", hex("38 0000000000000000 00 00000000")),
            (
                "zero-ack-session",
                hex("40 ace23948e6d1889b 01 00000000 0000000000000000 00000000"),
            ),
            ("nine-acks", nine_acks),
            (
                "ack-trailing",
                hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf 00000001"),
            ),
            (
                "truncated-acks",
                hex("28 6a496c79d7970e24 03 00000000 00000001 0000"),
            ),
            ("control-max-size", max_control),
            ("control-oversized", oversized),
            ("data-v2-header-only", hex("48000007")),
            ("replay-window-ids", replays),
        ]
    }

    fn stream_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let frame = |p: &[u8]| {
            let mut f = vec![0u8; p.len() + 2];
            encode_frame(p, &mut f).unwrap();
            f
        };
        let mut stream = frame(&hex(CLIENT_RESET));
        stream.extend(frame(&hex(SERVER_RESET)));
        stream.extend(frame(&hex(S2C_DATA)));
        stream.extend(frame(&hex(CLIENT_RESET)));
        let chunked = |max: u16, stream: &[u8], size: usize| {
            let mut v = max.to_be_bytes().to_vec();
            for c in stream.chunks(size) {
                v.push(c.len() as u8);
                v.extend_from_slice(c);
            }
            v
        };
        let mut too_long = frame(&hex(CLIENT_RESET));
        too_long.extend_from_slice(&1601u16.to_be_bytes());
        too_long.extend_from_slice(&[0x20; 40]);
        let mut zero = frame(&hex(CLIENT_RESET));
        zero.extend_from_slice(&[0, 0, 0x38]);
        let big = frame(&vec![0x48; 3000]);
        vec![
            ("observed-frames-whole", chunked(1600, &stream, 255)),
            ("observed-frames-bytewise", chunked(1600, &stream, 1)),
            ("observed-frames-7", chunked(1600, &stream, 7)),
            ("frame-too-long", chunked(1600, &too_long, 50)),
            ("frame-zero-length", chunked(1600, &zero, 3)),
            ("max-len-14", chunked(14, &stream, 100)),
            ("max-len-1", chunked(1, &[0, 1, 0x38, 0, 1, 0x40, 0, 2], 3)),
            ("max-len-0", chunked(0, &[0, 1, 0x38], 3)),
            ("max-len-65535", chunked(u16::MAX, &big, 255)),
            ("empty", vec![]),
            ("one-byte", vec![0x06]),
        ]
    }

    /// Programs for [`reliable`]; see its op codes.
    struct Prog(Vec<u8>);

    impl Prog {
        fn single(after_cookie: bool) -> Self {
            Prog(vec![0, if after_cookie { 2 } else { 0 }])
        }
        fn pair(custom: Option<[u8; 11]>) -> Self {
            let mut v = match custom {
                Some(c) => [&[1u8][..], &c[..]].concat(),
                None => vec![0],
            };
            v.push(1);
            Prog(v)
        }
        /// Single-instance crafted packet: `flags` bits as in `reliable_single`.
        fn craft(mut self, flags: u8, opsel: u8, acks: &[u32], mid: u32, len_units: u8) -> Self {
            self.0.extend([0, flags, opsel, acks.len() as u8]);
            for &a in acks {
                if a < 0x40 {
                    self.0.push(a as u8);
                } else {
                    self.0.push(0x80);
                    self.0.extend(a.to_be_bytes());
                }
            }
            if flags & 8 != 0 {
                self.0.extend(mid.to_be_bytes());
            } else {
                self.0.push(mid as u8);
            }
            self.0.push(len_units);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.push(1);
            self.0.extend((bytes.len() as u16).to_be_bytes());
            self.0.extend_from_slice(bytes);
            self
        }
        fn op(mut self, op: u8, args: &[u8]) -> Self {
            self.0.push(op);
            self.0.extend_from_slice(args);
            self
        }
    }

    fn reliable_seeds() -> Vec<(&'static str, Vec<u8>)> {
        const CTL: u8 = 0;
        const ACK: u8 = 1;
        const RESET: u8 = 2;
        const SERVER_RESET_SEL: u8 = 5;
        let handshake = Prog::single(false)
            .craft(0, RESET, &[], 0, 0)
            .op(6, &[SERVER_RESET_SEL])
            .op(4, &[])
            .craft(0, CTL, &[0], 1, 43)
            .op(5, &[0x04, 0x00])
            .op(2, &[0x0b, 0xb8])
            .op(4, &[])
            .craft(0, ACK, &[1, 2, 3], 0, 0)
            .op(7, &[])
            .craft(0, ACK, &[0, 4, 5, 6, 7, 8], 0, 0)
            .op(3, &[0x01, 0xf4])
            .op(4, &[]);
        let hostile = Prog::single(true)
            .craft(
                8,
                CTL,
                &[u32::MAX, 0x8000_0000, 1, 99, 5, 6, 7, 2],
                u32::MAX,
                1,
            )
            .craft(1, CTL, &[1], 1, 1)
            .craft(2, CTL, &[1], 1, 1)
            .craft(4 | (1 << 4), CTL, &[], 1, 1)
            .craft(0, CTL, &[], 13, 1)
            .craft(0, CTL, &[], 3, 2)
            .craft(0, CTL, &[], 2, 2)
            .craft(0, CTL, &[], 3, 2)
            .craft(0, CTL, &[], 1, 2)
            .craft(0, RESET, &[], 4, 0)
            .craft(0, CTL, &[], 0, 1)
            .craft(0, RESET, &[], 0, 0)
            .op(5, &[0xff, 0xff])
            .op(2, &[0x1f, 0xff])
            .op(4, &[])
            .op(7, &[])
            .op(7, &[])
            .op(7, &[])
            .craft(0, ACK, &[2, 3, 4], 0, 0)
            .op(4, &[])
            .op(6, &[1])
            .op(6, &[3]);
        let raw = Prog::single(false)
            .raw(&hex(CLIENT_RESET))
            .op(6, &[SERVER_RESET_SEL])
            .op(4, &[])
            .raw(&ctl(
                Opcode::ControlV1,
                0,
                CLIENT_SID,
                &[0],
                SERVER_SID,
                1,
                b"\x16\x03\x01",
            ))
            .raw(&hex(SERVER_RESET))
            .raw(&ctl(
                Opcode::AckV1,
                0,
                CLIENT_SID,
                &[0, 1, 2, 3, 4, 5, 6, 7],
                SERVER_SID,
                0,
                &[],
            ))
            .op(5, &[0, 16])
            .op(4, &[]);
        let soft = Prog::single(false)
            .op(6, &[0])
            .craft(4 | (1 << 4), 3, &[], 0, 0)
            .op(4, &[]);
        let mut pair = Prog::pair(None);
        for round in 0..6u8 {
            pair = pair
                .op(0, &[round & 1, 0x07, 0xd0])
                .op(1, &[0])
                .op(1, &[1])
                .op(3, &[round])
                .op(2, &[round.wrapping_mul(3)])
                .op(4, &[1])
                .op(2, &[0])
                .op(5, &[0x00, 0x80])
                .op(6, &[round & 1, 0x03, 0x00])
                .op(7, &[]);
        }
        // Tiny windows and buffers: window 1, receive window 2, no piggy-backed acks.
        let tiny = [0, 60, 0, 1, 0, 8, 0x0b, 0xb8, 0x0b, 0xb8, 1];
        let mut small = Prog::pair(Some(tiny));
        for round in 0..4u8 {
            small = small
                .op(0, &[round & 1, 0x01, 0x00])
                .op(1, &[round & 1])
                .op(2, &[0])
                .op(4, &[0])
                .op(7, &[]);
        }
        vec![
            ("single-handshake", handshake.0),
            ("single-hostile", hostile.0),
            ("single-raw-observed", raw.0),
            ("single-soft-reset", soft.0),
            ("pair-lossy", pair.0),
            ("pair-tiny-windows", small.0),
            ("empty", vec![]),
        ]
    }

    fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let client = ClientKeyMethod2 {
            key_source: ClientKeySource {
                pre_master: [0x11; 48],
                random1: [0x22; 32],
                random2: [0x33; 32],
            },
            options: OPTIONS_UDP.into(),
            username: "alice".into(),
            password: Password::new("secret"),
            peer_info: PEER_INFO.into(),
            credentials_invalid: false,
        };
        let server = ServerKeyMethod2 {
            random1: [0x44; 32],
            random2: [0x55; 32],
            options: server_options_string(OPTIONS_UDP, Transport::Udp),
        };
        let mut long_options = vec![0, 0, 0, 0, 2];
        long_options.extend_from_slice(&[0; 112]);
        long_options.extend_from_slice(&513u16.to_be_bytes());
        long_options.extend(std::iter::repeat_n(b'a', 513));
        let many_lines: String = (0..100).map(|i| format!("K{i}=v\n")).collect();
        let mut all_bytes: Vec<u8> = (0..=255u8).collect();
        all_bytes.push(0);
        vec![
            ("push-request", b"PUSH_REQUEST\0".to_vec()),
            ("exit-crlf", b"EXIT\r\n\0".to_vec()),
            (
                "cr-response",
                b"CR_RESPONSE,dGVzdA==\0INFO,hello\0".to_vec(),
            ),
            (
                "garbage-messages",
                b"PUSH_\x01REQUEST\0caf\xc3\xa9\0\xff\xfe\0PUSH_REQUEST\0tail".to_vec(),
            ),
            ("non-printable-all-bytes", all_bytes),
            ("too-long-3000", vec![b'A'; 3000]),
            ("observed-peer-info", PEER_INFO.as_bytes().to_vec()),
            (
                "peer-info-garbage",
                b"no equals sign\n=novalue\nIV_PLAT=li\x01nux\nIV_PROTO=abc\r\nIV_VER=2.6.0\r\n\n"
                    .to_vec(),
            ),
            ("peer-info-many-lines", many_lines.into_bytes()),
            (
                "ncp-ciphers-only",
                b"IV_CIPHERS=BF-CBC:chacha20-poly1305\n".to_vec(),
            ),
            ("observed-options-udp", OPTIONS_UDP.as_bytes().to_vec()),
            ("observed-options-tcp", OPTIONS_TCP.as_bytes().to_vec()),
            ("observed-push-reply", PUSH_REPLY.as_bytes().to_vec()),
            (
                "push-options-bad",
                b"\x20route 10.0.0.0 255.0.0.0,,auth-token a\nb".to_vec(),
            ),
            ("key-method-2-client", client.to_bytes().unwrap()),
            ("key-method-2-server", server.to_bytes().unwrap()),
            ("key-method-1", [&[0u8, 0, 0, 0, 1][..], &[0; 112]].concat()),
            ("key-method-2-long-options", long_options),
            ("utf8", "caf\u{e9} \u{fc}ber \u{2603}\0".as_bytes().to_vec()),
            ("empty", vec![]),
            ("one-nul", vec![0]),
        ]
    }

    fn tls_crypt_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let key = fuzz_tls_crypt_key();
        let wrap = |tx: Role, plain: &[u8], pid: u32, ts: u32| {
            let mut w = vec![0u8; plain.len() + tls_crypt::OVERHEAD];
            TlsCryptKey::new(&key, tx)
                .wrap(plain, pid, ts, &mut w)
                .unwrap();
            w
        };
        const TS: u32 = 0x6b0c_129e;
        // The three observed wraps of tls_crypt.rs's tests; their tags prove the key is right.
        let client_reset = wrap(Role::Client, &hex("38 6a496c79d7970e24 00 00000000"), 1, TS);
        assert_eq!(
            client_reset[17..49],
            hex("9d1b99109e5a1e1872d1f563aa609407b76fa4915811a16aa44b21fdec7cbf0d")
        );
        let server_reset = wrap(
            Role::Server,
            &hex("40 6d2c72dfca72dbbf 01 00000000 6a496c79d7970e24 00000000"),
            1,
            TS,
        );
        assert_eq!(
            server_reset[17..49],
            hex("cfbc6b189809c7309b064755bd0b24204faec96982f87e19b1c4ad6fe280bf1b")
        );
        let client_ack = wrap(
            Role::Client,
            &hex("28 6a496c79d7970e24 02 00000001 00000000 6d2c72dfca72dbbf"),
            3,
            TS,
        );
        assert_eq!(
            client_ack[17..49],
            hex("d7865076b8860d842b296534f1f54e536bc89000d1068e5a2de005e1bc6ef7a8")
        );
        let hello = ctl(
            Opcode::ControlV1,
            0,
            CLIENT_SID,
            &[0],
            SERVER_SID,
            1,
            &[0x16; 300],
        );
        let mut replays = Vec::new();
        for (id, ts) in [
            (1u32, 0u8),
            (3, 0),
            (2, 0),
            (2, 0),
            (70, 0),
            (1, 1),
            (1, 0),
            (0, 2),
            (u32::MAX, 2),
        ] {
            replays.extend_from_slice(&id.to_be_bytes());
            replays.extend([ts, 3]);
        }
        let mut oversized = wrap(Role::Client, &hex(CLIENT_RESET), 1, 1);
        oversized.resize(MAX_CONTROL_PACKET_LEN + tls_crypt::OVERHEAD + 1, 0);
        vec![
            ("observed-client-reset", client_reset.clone()),
            ("observed-server-reset", server_reset),
            ("observed-client-ack", client_ack),
            ("control-v1-hello", wrap(Role::Client, &hello, 2, TS)),
            (
                "ack-8-acks",
                wrap(
                    Role::Server,
                    &ctl(
                        Opcode::AckV1,
                        0,
                        SERVER_SID,
                        &[0, 1, 2, 3, 4, 5, 6, 7],
                        CLIENT_SID,
                        0,
                        &[],
                    ),
                    9,
                    TS,
                ),
            ),
            ("replay-id-0", wrap(Role::Client, &hex(CLIENT_RESET), 0, TS)),
            (
                "replay-id-ffffffff",
                wrap(Role::Client, &hex(CLIENT_RESET), u32::MAX, u32::MAX),
            ),
            ("tag-flipped", {
                let mut v = client_reset.clone();
                v[20] ^= 1;
                v
            }),
            ("data-opcode", [&[0x48u8][..], &client_reset[1..]].concat()),
            ("oversized", oversized),
            ("short-48", client_reset[..48].to_vec()),
            ("header-only-49", client_reset[..49].to_vec()),
            ("replay-window-records", replays),
            ("static-key-pem", key.to_pem().into_bytes()),
            ("empty", vec![]),
            ("one-byte", vec![0x38]),
        ]
    }

    #[test]
    #[ignore = "writes the seed corpus; run by hand after changing the seeds"]
    fn write_seed_corpus() {
        let sets = [
            ("packet_decode", packet_seeds()),
            ("stream_decoder", stream_seeds()),
            ("reliable", reliable_seeds()),
            ("control_message", control_seeds()),
            ("tls_crypt_unwrap", tls_crypt_seeds()),
        ];
        for (target, seeds) in sets {
            let dir = corpus_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
            }
        }
    }

    #[test]
    fn seeds_are_current() {
        // The committed seeds are what the builders above make (so nobody edits one by hand
        // and loses the way to rebuild it).
        let sets = [
            ("packet_decode", packet_seeds()),
            ("stream_decoder", stream_seeds()),
            ("reliable", reliable_seeds()),
            ("control_message", control_seeds()),
            ("tls_crypt_unwrap", tls_crypt_seeds()),
        ];
        for (target, seeds) in sets {
            for (name, bytes) in seeds {
                let f = corpus_dir().join(target).join(format!("seed-{name}"));
                let on_disk = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!(
                    on_disk == bytes,
                    "{} is stale: run write_seed_corpus",
                    f.display()
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn random_bytes_never_break_a_target(
            target in 0..TARGETS.len(),
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            (TARGETS[target].1)(&bytes);
        }
    }
}
