//! The 2.6 HMAC-cookie ("SYN cookie") handshake of a UDP server (protocol doc §3.3).
//!
//! The server answers a HARD_RESET_CLIENT_V2 with a HARD_RESET_SERVER_V2 whose session id is
//! an HMAC over a time slot, the client's address and the client's session id, and then forgets
//! it. Only when the client's next packet (P_CONTROL_V1, P_ACK_V1 or P_CONTROL_WKC_V1) acks
//! that reset, naming the same session id, is any per-client state created. Spoofed resets
//! therefore cost one fixed-size reply and no memory; [`ResetLimiter`] bounds the replies too.
//!
//! The HMAC input's exact bytes are internal to the server (the client only echoes the id), so
//! the encoding below is ours: `slot (BE u32) ‖ family (4|6) ‖ IP ‖ port (BE u16) ‖ client sid`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;
use thiserror::Error;

use super::packet::{AckArray, ControlPacket, KeyId, Opcode, SessionId, SESSION_ID_LEN};

/// `hand-window` default (doc §2.7); the slot length is `(hand_window + 1) / 2` = 30 s.
pub const DEFAULT_HAND_WINDOW: Duration = Duration::from_secs(60);
/// Slot offsets accepted on verification, relative to the current slot (doc §3.3): a cookie
/// stays valid for 2–3 slots (60–90 s at the default) and one slot of clock skew ahead.
pub const SLOT_OFFSETS: core::ops::RangeInclusive<i64> = -2..=1;

/// Why a packet did not pass the stateless handshake. Every case is a silent drop.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum CookieError {
    #[error("{0:?} cannot start or complete a stateless handshake")]
    UnexpectedOpcode(Opcode),
    #[error("key id {0} on a first packet (must be 0)")]
    NonZeroKeyId(u8),
    #[error("client reset with message id {0} (must be 0)")]
    ResetNotFirst(u32),
    #[error("no ack array, so no cookie to check (doc §12 pitfall 30)")]
    NoAck,
    #[error("first P_CONTROL_V1 after the cookie with message id {0} (must be 1)")]
    UnexpectedMessageId(u32),
    #[error("cookie does not match this address and session in the time window")]
    BadCookie,
}

/// A client whose cookie checked out: create its session now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CookieAccepted {
    pub client_session: SessionId,
    pub server_session: SessionId,
}

/// The server's cookie key and time base. Immutable after creation; share one per listener
/// (or process).
pub struct HmacCookie {
    key: hmac::Key,
    epoch: Instant,
    slot: Duration,
}

impl core::fmt::Debug for HmacCookie {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HmacCookie")
            .field("epoch", &self.epoch)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl HmacCookie {
    /// `secret` is 32 random bytes made at start-up (OpenVPN makes a fresh key per process
    /// start); `epoch` is any fixed instant, e.g. start-up, from which slots are counted.
    pub fn new(secret: [u8; 32], hand_window: Duration, epoch: Instant) -> Self {
        // (hand_window + 1) / 2 seconds, at least one second (doc §3.3).
        let slot = Duration::from_secs((hand_window.as_secs().saturating_add(1) / 2).max(1));
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            epoch,
            slot,
        }
    }

    pub fn slot_len(&self) -> Duration {
        self.slot
    }

    fn slot_at(&self, now: Instant) -> i64 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        (secs / self.slot.as_secs().max(1)) as i64
    }

    /// The server session id for `client_session` at `addr` in the slot `slot`.
    fn id_for_slot(&self, addr: SocketAddr, client_session: SessionId, slot: i64) -> SessionId {
        let mut ctx = hmac::Context::with_key(&self.key);
        // The slot is a u32 on the wire of the HMAC input; truncation just wraps after 4e9 slots.
        ctx.update(&(slot as u32).to_be_bytes());
        // IPv4-mapped IPv6 (dual-stack sockets) hashes as the IPv4 address it is.
        match canonical_ip(addr.ip()) {
            IpAddr::V4(ip) => {
                ctx.update(&[4]);
                ctx.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                ctx.update(&[6]);
                ctx.update(&ip.octets());
            }
        }
        ctx.update(&addr.port().to_be_bytes());
        ctx.update(client_session.as_bytes());
        let tag = ctx.sign();
        let mut id = [0u8; SESSION_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..SESSION_ID_LEN]);
        // An all-zero session id is invalid on the wire (doc §1.3). Probability 2^-64, but the
        // mapping must stay deterministic, so map it to id 1 rather than re-hashing.
        SessionId::new(id).unwrap_or(SessionId::from_nonzero(core::num::NonZeroU64::MIN))
    }

    /// The server session id the stateless reply carries at `now`. Stable within a slot, so a
    /// retransmitted client reset gets the same reply (doc §3.3).
    pub fn session_id(
        &self,
        addr: SocketAddr,
        client_session: SessionId,
        now: Instant,
    ) -> SessionId {
        self.id_for_slot(addr, client_session, self.slot_at(now))
    }

    /// Builds the stateless reply to a client's first packet (HARD_RESET_CLIENT_V2, or V3 of
    /// tls-crypt-v2): HARD_RESET_SERVER_V2, key 0, acking the client's pid 0 with its session
    /// id, message id 0, empty payload (doc §3.3, §3.4; a tls-crypt-v2 caller sets the
    /// early-negotiation TLV). The caller encodes it (and wraps it with tls-crypt id 1 if
    /// configured) and keeps nothing.
    pub fn reset_reply(
        &self,
        reset: &ControlPacket<'_>,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<ControlPacket<'static>, CookieError> {
        if !matches!(
            reset.opcode,
            Opcode::HardResetClientV2 | Opcode::HardResetClientV3
        ) {
            return Err(CookieError::UnexpectedOpcode(reset.opcode));
        }
        if reset.key_id != KeyId::ZERO {
            return Err(CookieError::NonZeroKeyId(reset.key_id.get()));
        }
        match reset.message_id {
            Some(0) => {}
            Some(id) => return Err(CookieError::ResetNotFirst(id)),
            None => return Err(CookieError::UnexpectedOpcode(reset.opcode)),
        }
        let client = reset.session_id;
        let acks = AckArray::new(&[0], client).map_err(|_| CookieError::NoAck)?;
        Ok(ControlPacket {
            opcode: Opcode::HardResetServerV2,
            key_id: KeyId::ZERO,
            session_id: self.session_id(addr, client, now),
            acks,
            message_id: Some(0),
            payload: &[],
        })
    }

    /// Checks the client's packet after the stateless reply: key 0, an ack array naming a
    /// server session id equal to the cookie of slot offsets −2..=+1 (doc §3.3). A
    /// P_CONTROL_V1 must also be the client's pid 1, the first after its reset; a stock 2.6
    /// client always sends its ClientHello as pid 1 with the ack piggy-backed (doc §3.1).
    ///
    /// On success create the session with `Reliable::after_cookie` (both pid 0 exchanged) and
    /// process this same packet normally.
    pub fn verify(
        &self,
        pkt: &ControlPacket<'_>,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<CookieAccepted, CookieError> {
        match pkt.opcode {
            Opcode::ControlV1 | Opcode::ControlWkcV1 => match pkt.message_id {
                Some(1) => {}
                Some(id) => return Err(CookieError::UnexpectedMessageId(id)),
                None => return Err(CookieError::UnexpectedOpcode(pkt.opcode)),
            },
            Opcode::AckV1 => {}
            op => return Err(CookieError::UnexpectedOpcode(op)),
        }
        if pkt.key_id != KeyId::ZERO {
            return Err(CookieError::NonZeroKeyId(pkt.key_id.get()));
        }
        let claimed = pkt.acks.remote_session().ok_or(CookieError::NoAck)?;
        let current = self.slot_at(now);
        for offset in SLOT_OFFSETS {
            let slot = current + offset;
            if slot < 0 {
                continue;
            }
            let expected = self.id_for_slot(addr, pkt.session_id, slot);
            // Branch-free comparison, so response timing cannot guide a forger byte by byte.
            let diff = expected
                .as_bytes()
                .iter()
                .zip(claimed.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                return Ok(CookieAccepted {
                    client_session: pkt.session_id,
                    server_session: claimed,
                });
            }
        }
        Err(CookieError::BadCookie)
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Token buckets for stateless reset replies, so a flood of spoofed resets cannot turn the
/// server into a reflector (doc §3.3: "Rate-limit either way"), and one flooding source cannot
/// spend the replies every other client needs. A global bucket bounds all replies; each source
/// also draws from its own bucket (an eighth of the global rate and burst) in a fixed table
/// indexed by a keyed hash of its address: memory stays bounded whatever the number of
/// sources, no per-client state is allocated (which is what the cookie avoids), and an
/// attacker cannot aim at another address's slot without the key.
///
/// Half of the global burst is a reserve for quiet sources: a source answered within the
/// last [`QUIET`] may only take a token while more than the reserve is left. A flood from
/// many spoofed addresses keeps its own slots busy and so can only spend the upper half,
/// while a client that knocks for the first time (or again after a quiet second) is
/// answered from the reserve. The total stays bounded by the global rate and burst. A flood
/// spoofed from all over the address space keeps every slot busy and still starves new
/// clients: tls-crypt(-v2) is the answer to that, as its resets are refused before this.
#[derive(Clone, Debug)]
pub struct ResetLimiter {
    all: Bucket,
    all_rate: Rate,
    sources: Box<[Bucket]>,
    source_rate: Rate,
    key: hmac::Key,
}

/// Source slots of [`ResetLimiter`] (24 bytes each).
pub const RESET_LIMITER_SOURCE_SLOTS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Rate {
    per_second: f64,
    burst: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// When this source slot was last answered (`None`: never). Unused for the global bucket.
    answered: Option<Instant>,
}

/// How long a source slot counts as busy after a reply (see [`ResetLimiter`]). A stock client
/// repeats its reset after 2 s, so its retry is quiet again.
pub const QUIET: Duration = Duration::from_secs(1);

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
            answered: None,
        }
    }

    /// Refills for the time since the last call; whether a token is there.
    fn refill(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.tokens >= 1.0
    }
}

impl ResetLimiter {
    /// `per_second` and `burst` for all sources together; `key` keys the source hash.
    pub fn new(per_second: u32, burst: u32, key: &[u8], now: Instant) -> Self {
        let all_rate = Rate {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
        };
        let source_rate = Rate {
            per_second: f64::from(per_second) / 8.0,
            burst: (f64::from(burst) / 8.0).max(1.0),
        };
        Self {
            all: Bucket::full(all_rate, now),
            all_rate,
            sources: vec![Bucket::full(source_rate, now); RESET_LIMITER_SOURCE_SLOTS]
                .into_boxed_slice(),
            source_rate,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Whether one more reply to `source` may be sent at `now`; consumes a token of its
    /// source and of the global bucket if so.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let ip = match canonical_ip(source) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let tag = hmac::sign(&self.key, &ip);
        let mut h = [0u8; 8];
        h.copy_from_slice(&tag.as_ref()[..8]);
        let slot = (u64::from_be_bytes(h) % RESET_LIMITER_SOURCE_SLOTS as u64) as usize;
        let own = &mut self.sources[slot];
        let quiet = own
            .answered
            .is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        // The source's bucket first: a source over its share spends nothing of the others'.
        if !own.refill(self.source_rate, now) || !self.all.refill(self.all_rate, now) {
            return false;
        }
        let reserve = if quiet {
            0.0
        } else {
            self.all_rate.burst / 2.0
        };
        if self.all.tokens < reserve + 1.0 {
            return false;
        }
        own.tokens -= 1.0;
        own.answered = Some(now);
        self.all.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::packet::{decode, hex, Packet};
    use crate::openvpn::reliable::{Config, Received, Reliable};

    fn sid(x: u64) -> SessionId {
        SessionId::new(x.to_be_bytes()).unwrap()
    }

    const CLIENT: u64 = 0x9d34f1bac8d66152;

    fn addr() -> SocketAddr {
        "192.0.2.7:40001".parse().unwrap()
    }

    fn cookie(epoch: Instant) -> HmacCookie {
        HmacCookie::new([0x42; 32], DEFAULT_HAND_WINDOW, epoch)
    }

    fn client_reset() -> Vec<u8> {
        hex("38 9d34f1bac8d66152 00 00000000")
    }

    fn reply(c: &HmacCookie, now: Instant) -> ControlPacket<'static> {
        let bytes = client_reset();
        let Packet::Control(r) = decode(&bytes).unwrap() else {
            panic!()
        };
        c.reset_reply(&r, addr(), now).unwrap()
    }

    /// The client's pid-1 P_CONTROL_V1 acking the server reset, as in doc §3.1.
    fn client_hello(server: SessionId) -> ControlPacket<'static> {
        ControlPacket {
            opcode: Opcode::ControlV1,
            key_id: KeyId::ZERO,
            session_id: sid(CLIENT),
            acks: AckArray::new(&[0], server).unwrap(),
            message_id: Some(1),
            payload: b"\x16\x03\x01",
        }
    }

    #[test]
    fn reply_has_the_observed_shape() {
        let t = Instant::now();
        let c = cookie(t);
        let r = reply(&c, t);
        let bytes = r.to_vec().unwrap();
        // 26 bytes: 40 | sidS | 01 | 00000000 | sidC | 00000000 (doc §1.4).
        assert_eq!(bytes.len(), 26);
        assert_eq!(bytes[0], 0x40);
        assert_eq!(&bytes[9..14], &hex("01 00000000")[..]);
        assert_eq!(&bytes[14..22], &hex("9d34f1bac8d66152")[..]);
        assert_eq!(&bytes[22..], &[0, 0, 0, 0]);
    }

    #[test]
    fn retransmitted_reset_gets_the_same_id_within_a_slot() {
        let t = Instant::now();
        let c = cookie(t);
        assert_eq!(c.slot_len(), Duration::from_secs(30));
        let a = reply(&c, t).session_id;
        let b = reply(&c, t + Duration::from_secs(29)).session_id;
        assert_eq!(a, b);
        assert_ne!(a, reply(&c, t + Duration::from_secs(30)).session_id);
    }

    #[test]
    fn id_depends_on_address_port_session_and_secret() {
        let t = Instant::now();
        let c = cookie(t);
        let base = c.session_id(addr(), sid(CLIENT), t);
        assert_ne!(
            base,
            c.session_id("192.0.2.8:40001".parse().unwrap(), sid(CLIENT), t)
        );
        assert_ne!(
            base,
            c.session_id("192.0.2.7:40002".parse().unwrap(), sid(CLIENT), t)
        );
        assert_ne!(base, c.session_id(addr(), sid(CLIENT + 1), t));
        assert_ne!(
            base,
            HmacCookie::new([0x43; 32], DEFAULT_HAND_WINDOW, t).session_id(addr(), sid(CLIENT), t)
        );
        // A dual-stack socket's v4-mapped form is the same client.
        assert_eq!(
            base,
            c.session_id("[::ffff:192.0.2.7]:40001".parse().unwrap(), sid(CLIENT), t)
        );
    }

    #[test]
    fn time_window_is_minus_two_to_plus_one_slots() {
        let t = Instant::now();
        let c = cookie(t);
        // Reply made in slot 3 (90..120 s).
        let made = t + Duration::from_secs(95);
        let server = reply(&c, made).session_id;
        let hello = client_hello(server);
        // Verifying in slot s accepts a cookie made in slots s-2..=s+1.
        for (at, ok) in [
            (0, false),   // slot 0: the cookie is 3 slots ahead
            (30, false),  // slot 1: 2 slots ahead
            (60, true),   // slot 2: offset +1
            (95, true),   // slot 3: offset 0
            (125, true),  // slot 4: offset -1
            (155, true),  // slot 5: offset -2
            (185, false), // slot 6: offset -3, expired
        ] {
            let r = c.verify(&hello, addr(), t + Duration::from_secs(at));
            let want = if ok {
                Ok(())
            } else {
                Err(CookieError::BadCookie)
            };
            assert_eq!(r.map(|_| ()), want, "verify at {at} s");
        }
    }

    #[test]
    fn valid_cookie_creates_the_session_and_continues_at_pid_1() {
        let t = Instant::now();
        let c = cookie(t);
        let server = reply(&c, t).session_id;
        let hello = client_hello(server);
        let now = t + Duration::from_secs(1);
        let ok = c.verify(&hello, addr(), now).unwrap();
        assert_eq!(ok.client_session, sid(CLIENT));
        assert_eq!(ok.server_session, server);
        // The session starts after both resets (doc §3.3, session_skip_to_pre_start) and takes
        // this same packet as its first.
        let mut rel =
            Reliable::after_cookie(Config::default(), ok.server_session, ok.client_session);
        assert_eq!(rel.on_packet(&hello, now), Ok(Received::New));
        assert_eq!(rel.readable(), 3);
        let out = rel.poll_transmit(now).unwrap();
        assert_eq!(out.opcode, Opcode::AckV1);
        assert_eq!(out.acks.ids(), &[1]);
        rel.write(b"server hello");
        let p = rel.poll_transmit(now).unwrap();
        assert_eq!(p.message_id, Some(1));
    }

    #[test]
    fn ack_v1_carries_the_cookie_too() {
        let t = Instant::now();
        let c = cookie(t);
        let server = reply(&c, t).session_id;
        let ack = ControlPacket {
            opcode: Opcode::AckV1,
            message_id: None,
            payload: &[],
            ..client_hello(server)
        };
        assert!(c.verify(&ack, addr(), t).is_ok());
    }

    #[test]
    fn wrong_address_or_session_or_cookie_is_refused() {
        let t = Instant::now();
        let c = cookie(t);
        let server = reply(&c, t).session_id;
        let hello = client_hello(server);
        assert_eq!(
            c.verify(&hello, "192.0.2.7:40002".parse().unwrap(), t),
            Err(CookieError::BadCookie)
        );
        let other_client = ControlPacket {
            session_id: sid(CLIENT ^ 1),
            ..hello
        };
        assert_eq!(
            c.verify(&other_client, addr(), t),
            Err(CookieError::BadCookie)
        );
        let forged = client_hello(sid(0x0102030405060708));
        assert_eq!(c.verify(&forged, addr(), t), Err(CookieError::BadCookie));
    }

    #[test]
    fn first_packets_with_wrong_shape_are_refused() {
        let t = Instant::now();
        let c = cookie(t);
        let server = reply(&c, t).session_id;
        let hello = client_hello(server);
        let no_ack = ControlPacket {
            acks: AckArray::EMPTY,
            ..hello
        };
        assert_eq!(c.verify(&no_ack, addr(), t), Err(CookieError::NoAck));
        let pid2 = ControlPacket {
            message_id: Some(2),
            ..hello
        };
        assert_eq!(
            c.verify(&pid2, addr(), t),
            Err(CookieError::UnexpectedMessageId(2))
        );
        let kid1 = ControlPacket {
            key_id: KeyId::new(1).unwrap(),
            ..hello
        };
        assert_eq!(
            c.verify(&kid1, addr(), t),
            Err(CookieError::NonZeroKeyId(1))
        );
        let reset = ControlPacket {
            opcode: Opcode::HardResetClientV2,
            message_id: Some(0),
            ..hello
        };
        assert_eq!(
            c.verify(&reset, addr(), t),
            Err(CookieError::UnexpectedOpcode(Opcode::HardResetClientV2))
        );
    }

    #[test]
    fn reset_reply_refuses_other_packets() {
        let t = Instant::now();
        let c = cookie(t);
        let bytes = client_reset();
        let Packet::Control(r) = decode(&bytes).unwrap() else {
            panic!()
        };
        let later = ControlPacket {
            message_id: Some(5),
            ..r
        };
        assert_eq!(
            c.reset_reply(&later, addr(), t),
            Err(CookieError::ResetNotFirst(5))
        );
        // A tls-crypt-v2 reset gets the same reply (the caller adds the TLV).
        let v3 = ControlPacket {
            opcode: Opcode::HardResetClientV3,
            ..r
        };
        assert_eq!(
            c.reset_reply(&v3, addr(), t).unwrap(),
            c.reset_reply(&r, addr(), t).unwrap()
        );
        let soft = ControlPacket {
            opcode: Opcode::SoftResetV1,
            ..r
        };
        assert_eq!(
            c.reset_reply(&soft, addr(), t),
            Err(CookieError::UnexpectedOpcode(Opcode::SoftResetV1))
        );
        let ctl = ControlPacket {
            opcode: Opcode::ControlV1,
            message_id: Some(0),
            ..r
        };
        assert_eq!(
            c.reset_reply(&ctl, addr(), t),
            Err(CookieError::UnexpectedOpcode(Opcode::ControlV1))
        );
    }

    #[test]
    fn before_epoch_and_far_future_do_not_panic() {
        let t = Instant::now();
        let c = cookie(t + Duration::from_secs(1000));
        let s = c.session_id(addr(), sid(CLIENT), t);
        assert_eq!(
            s,
            c.session_id(addr(), sid(CLIENT), t + Duration::from_secs(1000))
        );
        let far = t + Duration::from_secs(u32::MAX as u64 * 40);
        let server = c.session_id(addr(), sid(CLIENT), far);
        assert!(c.verify(&client_hello(server), addr(), far).is_ok());
    }

    #[test]
    fn flood_of_resets_is_rate_limited_and_stateless() {
        let t = Instant::now();
        let c = cookie(t);
        let mut limiter = ResetLimiter::new(100, 20, b"key", t);
        let mut sent = 0;
        let mut bytes_in = 0;
        let mut bytes_out = 0;
        for i in 0..10_000u64 {
            let now = t + Duration::from_micros(i * 100); // 10 000 resets/s for 1 s
            let mut pkt = client_reset();
            pkt[1..9].copy_from_slice(&(i + 1).to_be_bytes());
            bytes_in += pkt.len();
            let Packet::Control(r) = decode(&pkt).unwrap() else {
                panic!()
            };
            // From spoofed sources all over the address space.
            let from = IpAddr::from((0x0a00_0000 + i as u32).to_be_bytes());
            if limiter.allow(from, now) {
                let out = c.reset_reply(&r, addr(), now).unwrap().to_vec().unwrap();
                bytes_out += out.len();
                sent += 1;
            }
        }
        // Burst 20 plus 100/s for one second.
        assert!((115..=125).contains(&sent), "sent {sent}");
        assert!(bytes_out * 10 < bytes_in, "in {bytes_in} out {bytes_out}");
    }

    #[test]
    fn one_flooding_source_does_not_starve_the_others() {
        let t = Instant::now();
        let mut limiter = ResetLimiter::new(200, 400, b"key", t);
        let flooder = IpAddr::from([198, 51, 100, 7]);
        let mut flooder_sent = 0;
        let mut others_sent = 0;
        // 10 s: the flooder sends 10 000 resets a second, 50 real clients one a second each.
        for ms in 0..10_000u64 {
            let now = t + Duration::from_millis(ms);
            for _ in 0..10 {
                flooder_sent += usize::from(limiter.allow(flooder, now));
            }
            if ms % 20 == 0 {
                let client = IpAddr::from([192, 0, 2, (ms / 20 % 50) as u8 + 1]);
                others_sent += usize::from(limiter.allow(client, now));
            }
        }
        // The flooder gets at most its eighth: burst 50, then 25/s.
        assert!(flooder_sent <= 50 + 25 * 10 + 1, "flooder {flooder_sent}");
        assert_eq!(others_sent, 500, "every real client was answered");
    }

    /// The adversarial suite's flood: resets as fast as one host sends them, spoofed from a
    /// hundred addresses. Without the quiet sources' reserve they hold the global bucket
    /// near empty and most of a real client's knocks go unanswered (6 of 10 here).
    #[test]
    fn a_flood_spoofed_from_many_addresses_leaves_room_for_a_new_client() {
        let t = Instant::now();
        let mut limiter = ResetLimiter::new(200, 400, b"key", t);
        let mut flood_sent = 0;
        let mut client_answered = 0;
        let mut client_tries = 0;
        // 20 s: 10 000 spoofed resets a second from 100 addresses; a client (a new address
        // every try, as a roaming phone, or the same one) knocks every 2 s.
        for tick in 0..200_000u64 {
            let now = t + Duration::from_micros(tick * 100);
            let spoofed = IpAddr::from([192, 0, 2, 100 + (tick % 100) as u8]);
            flood_sent += usize::from(limiter.allow(spoofed, now));
            if tick % 20_000 == 7_000 {
                client_tries += 1;
                client_answered += usize::from(limiter.allow(IpAddr::from([198, 51, 100, 9]), now));
            }
        }
        assert_eq!(
            client_answered, client_tries,
            "every knock of the client was answered"
        );
        // The total stays within the global burst and rate.
        assert!(
            flood_sent + client_answered <= 400 + 200 * 20 + 1,
            "{flood_sent}"
        );
    }
}
