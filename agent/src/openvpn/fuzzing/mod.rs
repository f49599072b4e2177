//! The OpenVPN codecs' fuzz target bodies (registered in `crate::fuzzing::TARGETS`), kept in
//! the library so that `agent/fuzz` (cargo-fuzz, libFuzzer) and the
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

/// The whole server (in its own module: it needs certificates and the in-memory client).
pub use super::fuzz_server::server;

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
        assert!(matches!(
            p.opcode,
            Opcode::HardResetClientV2 | Opcode::HardResetClientV3
        ));
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

mod control;
mod reliability;
#[cfg(test)]
mod tests;

pub use control::{control_message, fuzz_tls_crypt_key, tls_crypt_unwrap};
pub use reliability::reliable;
