//! `tls-crypt` v1: encryption and authentication of every control packet with a pre-shared
//! static key (protocol doc §11), so that unauthenticated packets are dropped before any
//! reliability or TLS work and certificates are hidden.
//!
//! Wire layout (doc §11.2):
//!
//! ```text
//! opcode|kid (1) | session id (8) | replay packet-id (4) | timestamp (4) | tag (32) | ciphertext
//! tag = HMAC-SHA256(Ka, bytes[0..17] ‖ P);  ciphertext = AES-256-CTR(Ke, IV = tag[0..16], P)
//! ```
//!
//! where P is the control packet after byte 8 (ack array, message id, payload). This module
//! works on encoded packets (`&[u8]` from [`super::packet`]) and is sans-IO: the sender's
//! timestamp and the receiver's `now` are passed in.

use std::time::{Duration, Instant};

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher};
use ring::hmac;
use thiserror::Error;

pub use super::packet::Role;
use super::packet::{split_first_byte, CONTROL_HEADER_LEN, MAX_CONTROL_PACKET_LEN};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// A static key file holds 2048 bits (doc §11.1).
pub const STATIC_KEY_LEN: usize = 256;
/// HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// opcode, session id, replay packet-id and timestamp: the authenticated clear header.
pub const WRAP_HEADER_LEN: usize = CONTROL_HEADER_LEN + 8;
/// Bytes tls-crypt adds to a control packet (doc §11.2: "40 bytes more").
pub const OVERHEAD: usize = 8 + TAG_LEN;
/// Smallest wrapped packet: header and tag with an empty P (doc §11.2 step 1).
pub const MIN_WRAPPED_LEN: usize = WRAP_HEADER_LEN + TAG_LEN;
/// Receiver replay window (doc §11.3, same as the data channel §7.4).
pub const REPLAY_WINDOW: u32 = 64;
pub const REPLAY_TIME_BACKTRACK: Duration = Duration::from_secs(15);

const BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const END: &str = "-----END OpenVPN Static key V1-----";

/// Problems with a static key file; each names what to fix.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum KeyFileError {
    #[error("no `{BEGIN}` line")]
    MissingBegin,
    #[error("no `{END}` line after the BEGIN line")]
    MissingEnd,
    #[error("line {line}: {ch:?} is not a hex digit")]
    InvalidCharacter { line: usize, ch: char },
    #[error("key has {hex_digits} hex digits, a 2048-bit key has 512")]
    WrongLength { hex_digits: usize },
}

/// The 256 bytes of an OpenVPN static key (`struct key2`, laid out as doc §6.1).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey([u8; STATIC_KEY_LEN]);

impl core::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Key material stays out of logs.
        f.write_str("StaticKey(..)")
    }
}

impl Drop for StaticKey {
    fn drop(&mut self) {
        // Best-effort wipe, as keys.rs does for its key block.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

impl StaticKey {
    /// A fresh random key, as `openvpn --genkey tls-crypt` makes.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut k = [0u8; STATIC_KEY_LEN];
        ring::rand::SystemRandom::new().fill(&mut k)?;
        Ok(Self(k))
    }

    pub const fn from_bytes(bytes: [u8; STATIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; STATIC_KEY_LEN] {
        &self.0
    }

    /// Parses the `-----BEGIN OpenVPN Static key V1-----` format. Anything outside the markers
    /// (the usual `#` comments) is ignored; inside, only hex digits and whitespace are allowed.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut lines = text.lines().enumerate();
        lines
            .by_ref()
            .find(|(_, l)| l.trim() == BEGIN)
            .ok_or(KeyFileError::MissingBegin)?;
        let mut key = [0u8; STATIC_KEY_LEN];
        let mut digits = 0usize;
        for (i, line) in lines {
            if line.trim() == END {
                if digits != 2 * STATIC_KEY_LEN {
                    return Err(KeyFileError::WrongLength { hex_digits: digits });
                }
                return Ok(Self(key));
            }
            for ch in line.chars().filter(|c| !c.is_whitespace()) {
                let v = ch
                    .to_digit(16)
                    .ok_or(KeyFileError::InvalidCharacter { line: i + 1, ch })?
                    as u8;
                // Count past 512 without storing, to report the length.
                if let Some(b) = key.get_mut(digits / 2) {
                    *b = (*b << 4) | v;
                }
                digits = digits.saturating_add(1);
            }
        }
        Err(KeyFileError::MissingEnd)
    }

    /// The file format `openvpn --genkey secret` writes.
    pub fn to_pem(&self) -> String {
        let mut s = String::from("#\n# 2048 bit OpenVPN static key\n#\n");
        s.push_str(BEGIN);
        s.push('\n');
        for chunk in self.0.chunks(16) {
            for b in chunk {
                s.push_str(&format!("{b:02x}"));
            }
            s.push('\n');
        }
        s.push_str(END);
        s.push('\n');
        s
    }

    /// Byte-wise XOR, as dynamic tls-crypt combines its EKM output with the configured key
    /// (doc §11.5).
    pub fn xor(&self, other: &[u8; STATIC_KEY_LEN]) -> StaticKey {
        let mut out = self.0;
        for (o, b) in out.iter_mut().zip(other) {
            *o ^= b;
        }
        StaticKey(out)
    }
}

impl core::str::FromStr for StaticKey {
    type Err = KeyFileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a packet could not be wrapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum WrapError {
    #[error("not an encoded control packet")]
    NotControl,
    #[error("control packet of {len} bytes (at most {max})")]
    Oversized { len: usize, max: usize },
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("replay packet-ids exhausted; the session must restart")]
    PacketIdExhausted,
}

/// Why a wrapped packet was dropped. All of them are silent drops on the wire (doc §11.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum UnwrapError {
    #[error("{len} bytes is shorter than the {MIN_WRAPPED_LEN}-byte tls-crypt header")]
    TooShort { len: usize },
    #[error("first byte is not a control opcode")]
    NotControl,
    #[error("wrapped control packet of {len} bytes (at most {max})")]
    Oversized { len: usize, max: usize },
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("authentication tag mismatch")]
    BadTag,
    #[error("replay check failed: {0}")]
    Replay(#[from] ReplayError),
}

/// A successfully authenticated and decrypted packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Unwrapped<'a> {
    pub packet_id: u32,
    pub timestamp: u32,
    /// The plain control packet (doc §1.4 layout), ready for `packet::decode`.
    pub packet: &'a [u8],
}

/// The tls-crypt keys of one direction pair: immutable and shared by all sessions.
pub struct TlsCryptKey {
    encrypt: [u8; 32],
    decrypt: [u8; 32],
    send_mac: hmac::Key,
    recv_mac: hmac::Key,
}

impl Drop for TlsCryptKey {
    fn drop(&mut self) {
        // The AES keys only: ring's HMAC keys (key-equivalent pad states) cannot be wiped here.
        self.encrypt.fill(0);
        self.decrypt.fill(0);
        std::hint::black_box((&self.encrypt, &self.decrypt));
    }
}

impl core::fmt::Debug for TlsCryptKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TlsCryptKey(..)")
    }
}

impl TlsCryptKey {
    /// Splits `key` for `role`. The TLS server uses keys[0] (bytes 0..127) to send and keys[1]
    /// (128..255) to receive; the client the opposite (doc §11.1; the reverse of the data
    /// channel, pitfall 16). In each 64+64-byte half, Ke is the first 32 bytes of the cipher part
    /// and Ka the first 32 bytes of the HMAC part.
    pub fn new(key: &StaticKey, role: Role) -> Self {
        let k = key.as_bytes();
        let half = |i: usize| {
            let base = i * 128;
            let mut ke = [0u8; 32];
            ke.copy_from_slice(&k[base..base + 32]);
            (
                ke,
                hmac::Key::new(hmac::HMAC_SHA256, &k[base + 64..base + 96]),
            )
        };
        let (s2c_ke, s2c_ka) = half(0);
        let (c2s_ke, c2s_ka) = half(1);
        match role {
            Role::Server => Self {
                encrypt: s2c_ke,
                send_mac: s2c_ka,
                decrypt: c2s_ke,
                recv_mac: c2s_ka,
            },
            Role::Client => Self {
                encrypt: c2s_ke,
                send_mac: c2s_ka,
                decrypt: s2c_ke,
                recv_mac: s2c_ka,
            },
        }
    }

    /// Wraps the encoded control packet `plain` with the given replay id and timestamp into
    /// `out`; returns the wrapped length (`plain.len() + 40`). Stateless: use
    /// [`TlsCryptSession::wrap`] for the id bookkeeping.
    pub fn wrap(
        &self,
        plain: &[u8],
        packet_id: u32,
        timestamp: u32,
        out: &mut [u8],
    ) -> Result<usize, WrapError> {
        if plain.len() < CONTROL_HEADER_LEN
            || !split_first_byte(plain[0]).is_ok_and(|(op, _)| op.is_control())
        {
            return Err(WrapError::NotControl);
        }
        if plain.len() > MAX_CONTROL_PACKET_LEN {
            return Err(WrapError::Oversized {
                len: plain.len(),
                max: MAX_CONTROL_PACKET_LEN,
            });
        }
        let needed = plain.len() + OVERHEAD;
        if out.len() < needed {
            return Err(WrapError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let (header, body) = plain.split_at(CONTROL_HEADER_LEN);
        out[..CONTROL_HEADER_LEN].copy_from_slice(header);
        out[CONTROL_HEADER_LEN..CONTROL_HEADER_LEN + 4].copy_from_slice(&packet_id.to_be_bytes());
        out[CONTROL_HEADER_LEN + 4..WRAP_HEADER_LEN].copy_from_slice(&timestamp.to_be_bytes());
        let mut ctx = hmac::Context::with_key(&self.send_mac);
        ctx.update(&out[..WRAP_HEADER_LEN]);
        ctx.update(body);
        let tag = ctx.sign();
        let tag = tag.as_ref();
        out[WRAP_HEADER_LEN..MIN_WRAPPED_LEN].copy_from_slice(tag);
        let ct = &mut out[MIN_WRAPPED_LEN..needed];
        ct.copy_from_slice(body);
        ctr_apply(&self.encrypt, &tag[..16], ct);
        Ok(needed)
    }

    /// Authenticates and decrypts `wrapped` into `out` (which needs `wrapped.len() - 32` bytes)
    /// without a replay check: this is the stateless check of a first packet (doc §11.3, the
    /// server's `CO_IGNORE_PACKET_ID`). On failure `out` holds no plaintext.
    pub fn unwrap<'o>(
        &self,
        wrapped: &[u8],
        out: &'o mut [u8],
    ) -> Result<Unwrapped<'o>, UnwrapError> {
        // 1. Cheap checks before any crypto work (doc §11.2).
        if wrapped.len() < MIN_WRAPPED_LEN {
            return Err(UnwrapError::TooShort { len: wrapped.len() });
        }
        if !split_first_byte(wrapped[0]).is_ok_and(|(op, _)| op.is_control()) {
            return Err(UnwrapError::NotControl);
        }
        if wrapped.len() > MAX_CONTROL_PACKET_LEN + OVERHEAD {
            return Err(UnwrapError::Oversized {
                len: wrapped.len(),
                max: MAX_CONTROL_PACKET_LEN + OVERHEAD,
            });
        }
        let body_len = wrapped.len() - MIN_WRAPPED_LEN;
        let needed = WRAP_HEADER_LEN + body_len;
        if out.len() < needed {
            return Err(UnwrapError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        // 2. Decrypt with IV = tag[0..16], laid out as header ‖ P for the HMAC.
        let tag = &wrapped[WRAP_HEADER_LEN..MIN_WRAPPED_LEN];
        out[..WRAP_HEADER_LEN].copy_from_slice(&wrapped[..WRAP_HEADER_LEN]);
        out[WRAP_HEADER_LEN..needed].copy_from_slice(&wrapped[MIN_WRAPPED_LEN..]);
        ctr_apply(&self.decrypt, &tag[..16], &mut out[WRAP_HEADER_LEN..needed]);
        // 3. Constant-time tag check over header ‖ plaintext.
        if hmac::verify(&self.recv_mac, &out[..needed], tag).is_err() {
            out[..needed].fill(0);
            return Err(UnwrapError::BadTag);
        }
        let packet_id = u32::from_be_bytes([out[9], out[10], out[11], out[12]]);
        let timestamp = u32::from_be_bytes([out[13], out[14], out[15], out[16]]);
        // Close the 8-byte gap: the plain packet is header(9) ‖ P.
        out.copy_within(WRAP_HEADER_LEN..needed, CONTROL_HEADER_LEN);
        Ok(Unwrapped {
            packet_id,
            timestamp,
            packet: &out[..CONTROL_HEADER_LEN + body_len],
        })
    }
}

/// AES-256-CTR with a full 128-bit big-endian counter, as OpenSSL's CTR mode (doc §11.2).
fn ctr_apply(key: &[u8; 32], iv: &[u8], data: &mut [u8]) {
    let mut c = Aes256Ctr::new(key.into(), iv.into());
    c.apply_keystream(data);
}

/// The sender's replay packet-id and fixed timestamp (doc §11.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PacketIdSender {
    next: u64,
    timestamp: u32,
}

impl PacketIdSender {
    /// Ids start at 1. `timestamp` is the Unix time at the session's first send; it stays fixed
    /// for the session.
    pub const fn new(timestamp: u32) -> Self {
        Self::starting_at(1, timestamp)
    }

    /// After a stateless HMAC-cookie reset wrapped with id 1, the server's session continues
    /// at 2 (observed, doc §11.3). `timestamp` must not be below the one of that reset.
    pub const fn starting_at(first_id: u32, timestamp: u32) -> Self {
        Self {
            next: first_id as u64,
            timestamp,
        }
    }

    /// The id and timestamp the next packet will carry, without consuming it.
    pub fn peek(&self) -> Result<(u32, u32), WrapError> {
        let id = u32::try_from(self.next).map_err(|_| WrapError::PacketIdExhausted)?;
        if id == 0 {
            // 0 is never valid on the wire (the receiver rejects it).
            return Err(WrapError::PacketIdExhausted);
        }
        Ok((id, self.timestamp))
    }

    fn advance(&mut self) {
        self.next += 1;
    }
}

/// Why the replay check refused a packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ReplayError {
    #[error("packet-id 0")]
    ZeroId,
    #[error("timestamp older than the newest seen")]
    OldTimestamp,
    #[error("packet-id older than the window")]
    TooOld,
    #[error("packet-id already seen")]
    Replay,
    #[error("packet-id arrived more than the backtrack time after a newer one")]
    Expired,
}

/// Sliding replay window over (packet-id, timestamp): 64 ids and a backtrack time (doc §7.4,
/// §11.3). A newer timestamp restarts the window, an older one is rejected; an id older than the
/// newest is accepted only within the window, once, and while its gap is younger than the
/// backtrack time. Fixed size: nothing a peer sends makes it grow.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Newest (timestamp, id) accepted.
    newest: Option<(u32, u32)>,
    /// Bit `id % 64` set: that id (within the window) was seen.
    seen: u64,
    /// When each still-unseen id in the window was overtaken by a newer one.
    gap_since: [Option<Instant>; REPLAY_WINDOW as usize],
    backtrack: Duration,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(REPLAY_TIME_BACKTRACK)
    }
}

impl ReplayWindow {
    pub fn new(backtrack: Duration) -> Self {
        Self {
            newest: None,
            seen: 0,
            gap_since: [None; REPLAY_WINDOW as usize],
            backtrack,
        }
    }

    /// Whether (id, timestamp) would be accepted now; changes nothing.
    pub fn check(&self, id: u32, timestamp: u32, now: Instant) -> Result<(), ReplayError> {
        if id == 0 {
            return Err(ReplayError::ZeroId);
        }
        let Some((t, newest)) = self.newest else {
            return Ok(());
        };
        if timestamp < t {
            return Err(ReplayError::OldTimestamp);
        }
        if timestamp > t || id > newest {
            return Ok(());
        }
        if newest - id >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld);
        }
        let slot = (id % REPLAY_WINDOW) as usize;
        if self.seen & (1 << slot) != 0 {
            return Err(ReplayError::Replay);
        }
        match self.gap_since[slot] {
            Some(since) if now.saturating_duration_since(since) > self.backtrack => {
                Err(ReplayError::Expired)
            }
            _ => Ok(()),
        }
    }

    /// Checks, then records (id, timestamp). Call only after the packet authenticated (doc §7.3).
    pub fn check_and_update(
        &mut self,
        id: u32,
        timestamp: u32,
        now: Instant,
    ) -> Result<(), ReplayError> {
        self.check(id, timestamp, now)?;
        let restart = match self.newest {
            None => true,
            Some((t, _)) => timestamp > t,
        };
        if restart {
            // A new sender epoch: everything below `id` in the window is a fresh gap.
            self.seen = 0;
            self.gap_since = [Some(now); REPLAY_WINDOW as usize];
            self.newest = Some((timestamp, id));
        } else if let Some((t, newest)) = self.newest {
            if id > newest {
                // Ids newest+1 .. id-1 become gaps now; at most 63 slots are touched.
                let from = newest
                    .saturating_add(1)
                    .max(id.saturating_sub(REPLAY_WINDOW - 1));
                for gap in from..id {
                    let s = (gap % REPLAY_WINDOW) as usize;
                    self.seen &= !(1 << s);
                    self.gap_since[s] = Some(now);
                }
                self.newest = Some((t, id));
            }
        }
        let slot = (id % REPLAY_WINDOW) as usize;
        self.seen |= 1 << slot;
        self.gap_since[slot] = None;
        Ok(())
    }
}

/// Per-session tls-crypt state: our replay id counter and the peer's replay window.
#[derive(Clone, Debug)]
pub struct TlsCryptSession {
    sender: PacketIdSender,
    replay: ReplayWindow,
}

impl TlsCryptSession {
    pub fn new(sender: PacketIdSender) -> Self {
        Self {
            sender,
            replay: ReplayWindow::default(),
        }
    }

    /// Wraps with the next replay id. Call for every transmission, retransmissions included:
    /// resending identical bytes is a replay to the peer (doc §11.3).
    pub fn wrap(
        &mut self,
        key: &TlsCryptKey,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WrapError> {
        let (id, ts) = self.sender.peek()?;
        let n = key.wrap(plain, id, ts, out)?;
        self.sender.advance();
        Ok(n)
    }

    /// Authenticates, decrypts, then checks and records the replay id (doc §11.2 steps 1–4).
    pub fn unwrap<'o>(
        &mut self,
        key: &TlsCryptKey,
        wrapped: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> Result<Unwrapped<'o>, UnwrapError> {
        let u = key.unwrap(wrapped, out)?;
        self.replay
            .check_and_update(u.packet_id, u.timestamp, now)?;
        Ok(u)
    }

    pub fn sender(&self) -> &PacketIdSender {
        &self.sender
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::packet::{decode, hex, ControlPacket, Opcode, Packet};
    use proptest::prelude::*;

    /// The tls-crypt key of capture run (b), rebuilt from the slices both peers logged at verb 9
    /// (clientA.log / serverA.log, "Outgoing/Incoming Control Channel Encryption"). tc.key itself
    /// is not in the capture, so the unused bytes (Ke/Ka tails) are filler: tls-crypt reads only
    /// 32 bytes of each 64-byte part.
    fn capture_key() -> StaticKey {
        let mut k = [0xeeu8; STATIC_KEY_LEN];
        let put = |k: &mut [u8; 256], at: usize, h: &str| k[at..at + 32].copy_from_slice(&hex(h));
        // Server outgoing = client incoming (keys[0]).
        put(
            &mut k,
            0,
            "b1064e1d 9c138128 1b5dfae1 e5bdadbe eb4d59f1 97713517 036fb93e 3f42fec5",
        );
        put(
            &mut k,
            64,
            "1073d573 cd36418f 352ddc4e db7c58d0 8a291070 09dfaffe 6fafd124 c0ad18c5",
        );
        // Client outgoing = server incoming (keys[1]).
        put(
            &mut k,
            128,
            "1ad16107 412bb2ae 4b29c290 e60d9800 db52135f b5f9f6bf 8c7b0ffa fdd3150c",
        );
        put(
            &mut k,
            192,
            "c7910463 953ec7eb d2643569 dabd716f 460969cc 809e4da6 b2146bae 7facb5b0",
        );
        StaticKey::from_bytes(k)
    }

    /// The dynamic tls-crypt key of kid 1 in the same run (clientA.log "dynamic tls-crypt").
    fn capture_dynamic_key() -> StaticKey {
        let mut k = [0x11u8; STATIC_KEY_LEN];
        let put = |k: &mut [u8; 256], at: usize, h: &str| k[at..at + 32].copy_from_slice(&hex(h));
        put(
            &mut k,
            0,
            "995c5a2a a6596d3d 8cdaa052 513ed876 300249fc 38c456c1 84c4a638 f71ce029",
        );
        put(
            &mut k,
            64,
            "3ab9a5a5 af63b1dc 3fdb85a0 52e0b44f 2732a18e 43076aaf f58f8f8e fc387805",
        );
        put(
            &mut k,
            128,
            "d571b34c 691105ec 4e78f4bf 1ac82304 be664618 02b1a743 f9615a00 0c34c9aa",
        );
        put(
            &mut k,
            192,
            "d0af90e1 df95c4cb 9058ffd1 ebd49d4b 651e6f74 6bdce070 bfdcaade 1fde7bbf",
        );
        StaticKey::from_bytes(k)
    }

    /// One observed wrap: the 17-byte "WRAP AD", the plaintext P ("WRAP FROM") and the tag.
    struct Observed {
        ad: &'static str,
        p: &'static str,
        tag: &'static str,
    }

    /// Rebuilds the plain control packet from AD ‖ P (dropping the 8 replay bytes).
    fn plain_of(o: &Observed) -> Vec<u8> {
        let ad = hex(o.ad);
        let mut v = ad[..9].to_vec();
        v.extend_from_slice(&hex(o.p));
        v
    }

    fn check_observed(key: &StaticKey, sender: Role, o: &Observed) -> Vec<u8> {
        let ad = hex(o.ad);
        let pid = u32::from_be_bytes(ad[9..13].try_into().unwrap());
        let ts = u32::from_be_bytes(ad[13..17].try_into().unwrap());
        let plain = plain_of(o);
        let mut wrapped = vec![0u8; plain.len() + OVERHEAD];
        let n = TlsCryptKey::new(key, sender)
            .wrap(&plain, pid, ts, &mut wrapped)
            .unwrap();
        assert_eq!(n, plain.len() + OVERHEAD);
        assert_eq!(&wrapped[..17], &ad[..], "clear header");
        assert_eq!(
            &wrapped[17..49],
            &hex(o.tag)[..],
            "tag differs from the capture"
        );
        // The receiving role authenticates and decrypts it back.
        let receiver = match sender {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut out = vec![0u8; n];
        let u = TlsCryptKey::new(key, receiver)
            .unwrap(&wrapped, &mut out)
            .unwrap();
        assert_eq!((u.packet_id, u.timestamp), (pid, ts));
        assert_eq!(u.packet, &plain[..]);
        wrapped
    }

    #[test]
    fn observed_client_hard_reset_tag() {
        // clientA.log: the 54-byte HARD_RESET_CLIENT_V2, replay id 1, time 1795953310.
        let w = check_observed(
            &capture_key(),
            Role::Client,
            &Observed {
                ad: "386a496c 79d7970e 24000000 016b0c12 9e",
                p: "00000000 00",
                tag: "9d1b9910 9e5a1e18 72d1f563 aa609407 b76fa491 5811a16a a44b21fd ec7cbf0d",
            },
        );
        assert_eq!(w.len(), 54, "doc §11.2: client reset is 54 B wrapped");
        let mut o = vec![0; 54];
        let n = TlsCryptKey::new(&capture_key(), Role::Server)
            .unwrap(&w, &mut o)
            .unwrap()
            .packet
            .len();
        let Packet::Control(p) = decode(&o[..n]).unwrap() else {
            panic!()
        };
        assert_eq!(p.opcode, Opcode::HardResetClientV2);
    }

    #[test]
    fn observed_server_hard_reset_tag() {
        // serverA.log: the stateless 66-byte HARD_RESET_SERVER_V2 acking the client's pid 0.
        let w = check_observed(
            &capture_key(),
            Role::Server,
            &Observed {
                ad: "406d2c72 dfca72db bf000000 016b0c12 9e",
                p: "01000000 006a496c 79d7970e 24000000 00",
                tag: "cfbc6b18 9809c730 9b064755 bd0b2420 4faec969 82f87e19 b1c4ad6f e280bf1b",
            },
        );
        assert_eq!(w.len(), 66);
    }

    #[test]
    fn observed_client_ack_tag() {
        // clientA.log: P_ACK_V1 [1, 0] with replay id 3.
        check_observed(
            &capture_key(),
            Role::Client,
            &Observed {
                ad: "286a496c 79d7970e 24000000 036b0c12 9e",
                p: "02000000 01000000 006d2c72 dfca72db bf",
                tag: "d7865076 b8860d84 2b296534 f1f54e53 6bc89000 d1068e5a 2de005e1 bc6ef7a8",
            },
        );
    }

    #[test]
    fn observed_dynamic_tls_crypt_soft_reset_tags() {
        // Renegotiation to kid 1 under the dynamic key (doc §11.5): server and client soft resets.
        let k = capture_dynamic_key();
        check_observed(
            &k,
            Role::Server,
            &Observed {
                ad: "196d2c72 dfca72db bf000000 016b0c12 aa",
                p: "00000000 00",
                tag: "946061d6 2eccbd29 d1f0749c 825baf93 82077a91 30951868 82725b92 5fa54180",
            },
        );
        check_observed(
            &k,
            Role::Client,
            &Observed {
                ad: "196a496c 79d7970e 24000000 016b0c12 aa",
                p: "01000000 006d2c72 dfca72db bf000000 00",
                tag: "35c455a8 edf1f131 e0261614 fb31b478 d7e47d51 780e2b13 6f7aa46c 0ed2b1a0",
            },
        );
    }

    #[test]
    fn aes_256_ctr_matches_sp800_38a() {
        // NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, blocks 1–2.
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .try_into()
            .unwrap();
        let iv = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let mut data = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        ctr_apply(&key, &iv, &mut data);
        assert_eq!(
            data,
            hex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5")
        );
    }

    #[test]
    fn ctr_counter_carries_across_all_128_bits() {
        // OpenSSL increments the whole block (doc §11.2): with IV = 00…00 ff…ff (low 64 bits all
        // ones) block 2 uses counter 00…01 00…00, which a 64-bit counter would get wrong.
        use aes::cipher::{BlockEncrypt, KeyInit};
        let key = [7u8; 32];
        let iv = hex("0000000000000000 ffffffffffffffff");
        let mut data = [0u8; 32];
        ctr_apply(&key, &iv, &mut data);
        let aes = Aes256::new(&key.into());
        let mut b2 = hex("0000000000000001 0000000000000000");
        let block = aes::Block::from_mut_slice(&mut b2);
        aes.encrypt_block(block);
        assert_eq!(&data[16..], &block[..]);
    }

    fn pem_of_capture() -> String {
        capture_key().to_pem()
    }

    #[test]
    fn key_file_round_trip_and_comments() {
        let pem = pem_of_capture();
        assert!(pem.contains("-----BEGIN OpenVPN Static key V1-----\n"));
        assert_eq!(pem.lines().filter(|l| l.len() == 32).count(), 16);
        assert_eq!(StaticKey::parse(&pem).unwrap(), capture_key());
        // Text outside the markers is ignored, CRLF and indentation are fine.
        let noisy = format!(
            "garbage ### !!\r\n{}trailing junk\n",
            pem.replace('\n', "\r\n  ")
        );
        assert_eq!(noisy.parse::<StaticKey>().unwrap(), capture_key());
        assert_eq!(format!("{:?}", capture_key()), "StaticKey(..)");
    }

    #[test]
    fn key_file_errors() {
        let pem = pem_of_capture();
        assert_eq!(StaticKey::parse(""), Err(KeyFileError::MissingBegin));
        let no_end = pem.replace(END, "");
        assert_eq!(StaticKey::parse(&no_end), Err(KeyFileError::MissingEnd));
        let short = pem.replacen("b1064e1d", "", 1);
        assert_eq!(
            StaticKey::parse(&short),
            Err(KeyFileError::WrongLength { hex_digits: 504 })
        );
        let long = pem.replacen("b1064e1d", "b1064e1d00", 1);
        assert_eq!(
            StaticKey::parse(&long),
            Err(KeyFileError::WrongLength { hex_digits: 514 })
        );
        let bad = pem.replacen("b1064e1d", "b1064g1d", 1);
        assert_eq!(
            StaticKey::parse(&bad),
            Err(KeyFileError::InvalidCharacter { line: 5, ch: 'g' })
        );
    }

    #[test]
    fn key_halves_follow_role() {
        // The doc's §11.1 table: the server sends with bytes 0..31/64..95, the client with
        // 128..159/192..223. A key whose halves are swapped must fail to authenticate.
        let k = capture_key();
        let server = TlsCryptKey::new(&k, Role::Server);
        assert_eq!(&server.encrypt[..], &k.as_bytes()[..32]);
        assert_eq!(&server.decrypt[..], &k.as_bytes()[128..160]);
        let plain = hex("40 6d2c72dfca72dbbf 00 00000000");
        let mut w = [0u8; 128];
        let n = server.wrap(&plain, 1, 1, &mut w).unwrap();
        let mut out = [0u8; 128];
        assert_eq!(
            TlsCryptKey::new(&k, Role::Server).unwrap(&w[..n], &mut out),
            Err(UnwrapError::BadTag)
        );
    }

    fn wrapped_sample() -> (TlsCryptKey, TlsCryptKey, Vec<u8>) {
        let k = capture_key();
        let c = TlsCryptKey::new(&k, Role::Client);
        let s = TlsCryptKey::new(&k, Role::Server);
        let plain = hex("20 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf 00000001 160301");
        let mut w = vec![0u8; plain.len() + OVERHEAD];
        c.wrap(&plain, 2, 0x6b0c129e, &mut w).unwrap();
        (c, s, w)
    }

    #[test]
    fn any_flipped_bit_fails_before_anything_else() {
        let (_, s, w) = wrapped_sample();
        let mut out = vec![0u8; w.len()];
        assert!(s.unwrap(&w, &mut out).is_ok());
        for i in 0..w.len() {
            for bit in 0..8 {
                let mut bad = w.clone();
                bad[i] ^= 1 << bit;
                let r = s.unwrap(&bad, &mut out);
                assert!(
                    matches!(r, Err(UnwrapError::BadTag) | Err(UnwrapError::NotControl)),
                    "byte {i} bit {bit}: {r:?}"
                );
                // No plaintext is left behind on failure.
                if r == Err(UnwrapError::BadTag) {
                    assert!(out[..w.len() - 32].iter().all(|&b| b == 0));
                }
            }
        }
    }

    #[test]
    fn unwrap_rejects_short_long_and_data() {
        let (_, s, w) = wrapped_sample();
        let mut out = vec![0u8; 4096];
        assert_eq!(
            s.unwrap(&[], &mut out),
            Err(UnwrapError::TooShort { len: 0 })
        );
        assert_eq!(
            s.unwrap(&[0x38], &mut out),
            Err(UnwrapError::TooShort { len: 1 })
        );
        assert_eq!(
            s.unwrap(&w[..48], &mut out),
            Err(UnwrapError::TooShort { len: 48 })
        );
        let mut data = w.clone();
        data[0] = 0x48;
        assert_eq!(s.unwrap(&data, &mut out), Err(UnwrapError::NotControl));
        data[0] = 0x00;
        assert_eq!(s.unwrap(&data, &mut out), Err(UnwrapError::NotControl));
        let huge = {
            let mut v = w.clone();
            v.resize(MAX_CONTROL_PACKET_LEN + OVERHEAD + 1, 0);
            v
        };
        assert!(matches!(
            s.unwrap(&huge, &mut out),
            Err(UnwrapError::Oversized { .. })
        ));
        let mut small = [0u8; 10];
        assert!(matches!(
            s.unwrap(&w, &mut small),
            Err(UnwrapError::BufferTooSmall { .. })
        ));
        // Exactly 49 bytes (empty P) is structurally fine but fails authentication.
        assert_eq!(s.unwrap(&w[..49], &mut out), Err(UnwrapError::BadTag));
    }

    #[test]
    fn bad_input_unknown_and_obsolete_opcodes_are_not_control() {
        // Checked before any crypto: unknown (12..=31), key-method-1 (1, 2) and data opcodes.
        let (_, s, w) = wrapped_sample();
        let mut out = vec![0u8; 4096];
        for op in [1u8, 2, 6, 9, 12, 13, 31] {
            for kid in [0u8, 7] {
                let mut bad = w.clone();
                bad[0] = (op << 3) | kid;
                assert_eq!(s.unwrap(&bad, &mut out), Err(UnwrapError::NotControl));
            }
        }
    }

    #[test]
    fn wrap_rejects_non_control_and_oversized() {
        let (c, _, _) = wrapped_sample();
        let mut out = vec![0u8; 4096];
        assert_eq!(
            c.wrap(&hex("48000000 00000001 aa"), 1, 1, &mut out),
            Err(WrapError::NotControl)
        );
        assert_eq!(c.wrap(&[0x38], 1, 1, &mut out), Err(WrapError::NotControl));
        let mut big = hex("20 6a496c79d7970e24 00 00000001");
        big.resize(MAX_CONTROL_PACKET_LEN + 1, 0);
        assert!(matches!(
            c.wrap(&big, 1, 1, &mut out),
            Err(WrapError::Oversized { .. })
        ));
    }

    #[test]
    fn session_replay_protection() {
        let k = capture_key();
        let (ck, sk) = (
            TlsCryptKey::new(&k, Role::Client),
            TlsCryptKey::new(&k, Role::Server),
        );
        let t = Instant::now();
        let mut client = TlsCryptSession::new(PacketIdSender::new(1000));
        let mut server = TlsCryptSession::new(PacketIdSender::starting_at(2, 1000));
        let plain = hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf");
        let mut w1 = [0u8; 128];
        let n1 = client.wrap(&ck, &plain, &mut w1).unwrap();
        let mut w2 = [0u8; 128];
        let n2 = client.wrap(&ck, &plain, &mut w2).unwrap();
        // Every transmission gets a new id, so identical packets wrap differently.
        assert_ne!(&w1[..n1], &w2[..n2]);
        let mut out = [0u8; 128];
        let u = server.unwrap(&sk, &w2[..n2], &mut out, t).unwrap();
        assert_eq!((u.packet_id, u.timestamp), (2, 1000));
        assert_eq!(u.packet, &plain[..]);
        // Reordered older id: accepted once, then a replay.
        assert!(server.unwrap(&sk, &w1[..n1], &mut out, t).is_ok());
        assert_eq!(
            server.unwrap(&sk, &w1[..n1], &mut out, t),
            Err(UnwrapError::Replay(ReplayError::Replay))
        );
        assert_eq!(
            server.unwrap(&sk, &w2[..n2], &mut out, t),
            Err(UnwrapError::Replay(ReplayError::Replay))
        );
        // A forged packet never touches the replay state.
        let mut forged = w2;
        forged[60] ^= 1;
        assert_eq!(
            server.unwrap(&sk, &forged[..n2], &mut out, t),
            Err(UnwrapError::BadTag)
        );
        assert_eq!(server.sender().peek(), Ok((2, 1000)));
    }

    #[test]
    fn packet_id_ffffffff_is_the_last() {
        let k = capture_key();
        let ck = TlsCryptKey::new(&k, Role::Client);
        let mut s = TlsCryptSession::new(PacketIdSender::starting_at(u32::MAX, 5));
        let plain = hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf");
        let mut w = [0u8; 128];
        let n = s.wrap(&ck, &plain, &mut w).unwrap();
        assert_eq!(&w[9..13], &[0xff; 4]);
        assert_eq!(
            s.wrap(&ck, &plain, &mut w),
            Err(WrapError::PacketIdExhausted)
        );
        // The receiver takes 0xFFFFFFFF once and rejects it after.
        let mut r = TlsCryptSession::new(PacketIdSender::new(1));
        let sk = TlsCryptKey::new(&k, Role::Server);
        let mut out = [0u8; 128];
        let t = Instant::now();
        assert_eq!(
            r.unwrap(&sk, &w[..n], &mut out, t).unwrap().packet_id,
            u32::MAX
        );
        assert_eq!(
            r.unwrap(&sk, &w[..n], &mut out, t),
            Err(UnwrapError::Replay(ReplayError::Replay))
        );
        assert_eq!(
            PacketIdSender::starting_at(0, 1).peek(),
            Err(WrapError::PacketIdExhausted)
        );
    }

    #[test]
    fn replay_window_rules() {
        let t = Instant::now();
        let mut w = ReplayWindow::default();
        assert_eq!(w.check_and_update(0, 10, t), Err(ReplayError::ZeroId));
        w.check_and_update(5, 10, t).unwrap();
        assert_eq!(w.check_and_update(5, 10, t), Err(ReplayError::Replay));
        w.check_and_update(100, 10, t).unwrap();
        assert_eq!(w.check(36, 10, t), Err(ReplayError::TooOld));
        assert_eq!(w.check(37, 10, t), Ok(()));
        assert_eq!(w.check(100, 10, t), Err(ReplayError::Replay));
        // A gap older than the backtrack time is expired.
        let late = t + Duration::from_secs(16);
        assert_eq!(w.check(99, 10, late), Err(ReplayError::Expired));
        assert_eq!(w.check(99, 10, t + Duration::from_secs(15)), Ok(()));
        // Older timestamp rejected; newer timestamp restarts the window.
        assert_eq!(w.check(101, 9, t), Err(ReplayError::OldTimestamp));
        w.check_and_update(1, 11, t).unwrap();
        assert_eq!(w.check(1, 11, t), Err(ReplayError::Replay));
        assert_eq!(w.check(100, 10, t), Err(ReplayError::OldTimestamp));
        assert_eq!(w.check(2, 11, t), Ok(()));
        // Huge jumps do not wrap or panic.
        w.check_and_update(u32::MAX, 11, t).unwrap();
        assert_eq!(w.check(u32::MAX - 63, 11, t), Ok(()));
        assert_eq!(w.check(u32::MAX - 64, 11, t), Err(ReplayError::TooOld));
        assert_eq!(w.check(1, 11, t), Err(ReplayError::TooOld));
    }

    #[test]
    fn xor_is_an_involution() {
        let a = capture_key();
        let b = *capture_dynamic_key().as_bytes();
        assert_eq!(a.xor(&b).xor(&b), a);
    }

    proptest! {
        #[test]
        fn wrap_unwrap_round_trip(
            sid in 1u64..,
            body in prop::collection::vec(any::<u8>(), 0..1200),
            id in 1u32..,
            ts in any::<u32>(),
            server_sends in any::<bool>(),
        ) {
            let k = capture_key();
            let (tx, rx) = if server_sends { (Role::Server, Role::Client) } else { (Role::Client, Role::Server) };
            let mut plain = vec![0x20];
            plain.extend_from_slice(&sid.to_be_bytes());
            plain.extend_from_slice(&body);
            let mut w = vec![0u8; plain.len() + OVERHEAD];
            TlsCryptKey::new(&k, tx).wrap(&plain, id, ts, &mut w).unwrap();
            let mut out = vec![0u8; w.len()];
            let u = TlsCryptKey::new(&k, rx).unwrap(&w, &mut out).unwrap();
            prop_assert_eq!((u.packet_id, u.timestamp), (id, ts));
            prop_assert_eq!(u.packet, &plain[..]);
        }

        #[test]
        fn unwrap_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1700)) {
            let s = TlsCryptKey::new(&capture_key(), Role::Server);
            let mut out = vec![0u8; 1700];
            let r = s.unwrap(&bytes, &mut out);
            prop_assert!(r.is_err());
        }

        #[test]
        fn replay_window_accepts_each_id_at_most_once(
            ids in prop::collection::vec((1u32..200, 0u64..30), 0..300),
        ) {
            let t = Instant::now();
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::HashSet::new();
            for (id, dt) in ids {
                if w.check_and_update(id, 1, t + Duration::from_secs(dt)).is_ok() {
                    prop_assert!(accepted.insert(id), "id {} accepted twice", id);
                }
            }
        }
    }

    #[test]
    fn plain_of_observed_decodes() {
        // Sanity: the observed P fields rebuild valid control packets.
        let o = Observed {
            ad: "406d2c72 dfca72db bf000000 016b0c12 9e",
            p: "01000000 006a496c 79d7970e 24000000 00",
            tag: "",
        };
        let plain = plain_of(&o);
        let p = ControlPacket::decode(&plain).unwrap();
        assert_eq!(p.opcode, Opcode::HardResetServerV2);
        assert_eq!(p.acks.ids(), &[0]);
    }
}
