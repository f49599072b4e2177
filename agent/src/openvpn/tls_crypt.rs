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
    pub fn generate(rng: &dyn super::env::Random) -> Result<Self, ring::error::Unspecified> {
        let mut k = [0u8; STATIC_KEY_LEN];
        rng.fill(&mut k)?;
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
#[path = "tls_crypt_tests.rs"]
mod tests;
