//! Data-channel crypto: OpenVPN 2.6's AEAD packet format, packet ids and the replay window.
//!
//! Wire facts (docs/openvpn-protocol.md §7): for P_DATA_V2 the AAD is the 4-byte
//! opcode/peer-id header plus the 4-byte packet id; for P_DATA_V1 only the packet id (the
//! opcode byte is *not* authenticated). The nonce is packet-id ‖ 8-byte implicit IV taken from
//! the key material (§6.1), and the 16-byte tag sits *before* the ciphertext (§7.1, pitfall 19).
//!
//! Everything here works on caller buffers: [`Encryptor::seal_in_place`] and
//! [`Decryptor::open_in_place`] never allocate, so the data path can encrypt a TUN frame read at
//! offset [`Encryptor::overhead`] of a datagram buffer and send that very buffer.

use std::ops::Range;
use std::time::Instant;

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// AEAD tag length for all three ciphers (§13).
pub const TAG_LEN: usize = 16;
/// Length of the implicit IV: the 12-byte nonce minus the 4-byte packet id (§6.1).
pub const IMPLICIT_IV_LEN: usize = 8;
/// Packet-id length in data packets (short form, no time field; §7.1).
pub const PACKET_ID_LEN: usize = 4;
/// Header length of P_DATA_V1 (opcode byte only).
pub const V1_HEADER_LEN: usize = 1;
/// Header length of P_DATA_V2 (opcode byte + 24-bit peer id).
pub const V2_HEADER_LEN: usize = 4;
/// Opcode of P_DATA_V1 (§1.2).
pub const OPCODE_DATA_V1: u8 = 6;
/// Opcode of P_DATA_V2 (§1.2).
pub const OPCODE_DATA_V2: u8 = 9;
pub use super::packet::NO_PEER_ID;
/// Size of the sliding replay window in packets (`replay-window 64 15`, §7.4).
pub const REPLAY_WINDOW: u32 = 64;
/// Seconds an unseen id inside the window stays acceptable (`time_backtrack`, §7.4).
pub const REPLAY_TIME_BACKTRACK_SECS: u64 = 15;
/// Once the next send id reaches this, the sender must start a renegotiation (§7.2,
/// `PACKET_ID_WRAP_TRIGGER`).
pub const PACKET_ID_WRAP_TRIGGER: u32 = 0xFF00_0000;

/// The keepalive ping: a data packet whose plaintext is exactly these 16 bytes (§7.5).
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];
/// Prefix of OCC messages inside the data channel, followed by a 1-byte type (§7.5).
pub const OCC_MAGIC: [u8; 16] = [
    0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81, 0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c,
];
/// OCC type of explicit-exit-notify over the data channel (§7.5).
pub const OCC_EXIT: u8 = 6;
/// The OCC_EXIT plaintext a peer sends on explicit-exit-notify (magic ‖ type).
pub const OCC_EXIT_MESSAGE: [u8; 17] = {
    let mut m = [0u8; 17];
    let mut i = 0;
    while i < 16 {
        m[i] = OCC_MAGIC[i];
        i += 1;
    }
    m[16] = OCC_EXIT;
    m
};

/// The data-channel ciphers a stock 2.6 client negotiates with us (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    /// All supported ciphers, in our default preference order.
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::ChaCha20Poly1305,
    ];

    /// The canonical (OpenSSL, uppercase) name: what `IV_CIPHERS` carries and what must be
    /// pushed with `cipher` (pitfall 17: the client compares exact normalised names).
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::ChaCha20Poly1305 => "CHACHA20-POLY1305",
        }
    }

    /// Parses a cipher name. OpenSSL names are case-insensitive, so `aes-256-gcm` is accepted
    /// too; unknown names (e.g. `BF-CBC`, `AES-256-CBC`) give `None`.
    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// Key length in bytes (the prefix of the 64-byte "cipher" half of a key, §6.1).
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::ChaCha20Poly1305 => 32,
        }
    }

    /// Key size in bits as the options string's `keysize` item writes it (§10).
    pub fn key_bits(self) -> usize {
        self.key_len() * 8
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Key material for one direction of one key_id: the AEAD key and the implicit IV.
/// Built by `keys::KeyBlock::data_keys`; `Debug` never prints the secret bytes.
#[derive(Clone)]
pub struct DirectionKey {
    cipher: Cipher,
    key: [u8; 32],
    implicit_iv: [u8; IMPLICIT_IV_LEN],
}

impl DirectionKey {
    /// `key` must be at least `cipher.key_len()` bytes; extra bytes are ignored, as OpenVPN
    /// uses only the prefix of the 64-byte cipher half (§6.1).
    pub fn new(
        cipher: Cipher,
        key: &[u8],
        implicit_iv: [u8; IMPLICIT_IV_LEN],
    ) -> Result<Self, CryptoError> {
        let n = cipher.key_len();
        if key.len() < n {
            return Err(CryptoError::BadKeyLength {
                need: n,
                have: key.len(),
            });
        }
        let mut k = [0u8; 32];
        k[..n].copy_from_slice(&key[..n]);
        Ok(DirectionKey {
            cipher,
            key: k,
            implicit_iv,
        })
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The key bytes actually used (16 or 32).
    pub fn key(&self) -> &[u8] {
        &self.key[..self.cipher.key_len()]
    }

    pub fn implicit_iv(&self) -> &[u8; IMPLICIT_IV_LEN] {
        &self.implicit_iv
    }

    fn aead_key(&self) -> LessSafeKey {
        // The length is checked in `new`, so ring cannot refuse it.
        let unbound = UnboundKey::new(self.cipher.algorithm(), self.key())
            .expect("key length matches the algorithm");
        LessSafeKey::new(unbound)
    }
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        self.key.fill(0);
        self.implicit_iv.fill(0);
        std::hint::black_box(&self.key);
    }
}

/// Which data packet format to send (§1.5). P_DATA_V2 whenever a peer-id was pushed; DCO
/// clients accept nothing else (§7.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    V1,
    /// The 24-bit peer id to put in the header.
    V2 {
        peer_id: u32,
    },
}

/// The parsed header of a data packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub key_id: u8,
    /// `None` for P_DATA_V1; for P_DATA_V2 the raw 24-bit value, which may be [`NO_PEER_ID`].
    pub peer_id: Option<u32>,
    pub packet_id: u32,
}

impl DataHeader {
    /// Parses the opcode byte, optional peer id and packet id of a data packet (§1.5, §7.1),
    /// without touching the crypto. Demultiplexing uses this to find the session and key.
    pub fn parse(packet: &[u8]) -> Result<DataHeader, CryptoError> {
        let first = *packet.first().ok_or(CryptoError::Truncated)?;
        let key_id = first & 0x07;
        let (hdr_len, peer_id) = match first >> 3 {
            OPCODE_DATA_V1 => (V1_HEADER_LEN, None),
            OPCODE_DATA_V2 => {
                let b = packet.get(1..4).ok_or(CryptoError::Truncated)?;
                (
                    V2_HEADER_LEN,
                    Some(u32::from_be_bytes([0, b[0], b[1], b[2]])),
                )
            }
            op => return Err(CryptoError::NotData { opcode: op }),
        };
        let pid = packet
            .get(hdr_len..hdr_len + PACKET_ID_LEN)
            .ok_or(CryptoError::Truncated)?;
        Ok(DataHeader {
            key_id,
            peer_id,
            packet_id: u32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]),
        })
    }

    /// Length of the opcode (+ peer id) header.
    pub fn header_len(&self) -> usize {
        if self.peer_id.is_some() {
            V2_HEADER_LEN
        } else {
            V1_HEADER_LEN
        }
    }
}

/// Errors of the data channel. None of them panics; all are per-packet and leave the key usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("data packet truncated")]
    Truncated,
    #[error("opcode {opcode} is not a data opcode")]
    NotData { opcode: u8 },
    #[error("packet is for key_id {got}, this key is key_id {expected}")]
    KeyIdMismatch { expected: u8, got: u8 },
    #[error("data packet has an empty payload")]
    EmptyPayload,
    #[error("AEAD authentication failed")]
    AuthFailed,
    #[error("AEAD seal failed (input beyond the algorithm's limit)")]
    SealFailed,
    #[error("replay check failed: {0}")]
    Replay(#[from] ReplayError),
    #[error("packet id space exhausted; this key must be renegotiated")]
    PacketIdExhausted,
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall { need: usize, have: usize },
    #[error("key material too short: need {need} bytes, have {have}")]
    BadKeyLength { need: usize, have: usize },
    #[error("key_id {0} out of range 0..=7")]
    BadKeyId(u8),
    #[error("peer id {0:#x} does not fit in 24 bits")]
    BadPeerId(u32),
}

/// Why the replay window refused a packet id (§7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("packet id 0 is never valid")]
    Zero,
    #[error("packet id {id} already seen")]
    Replayed { id: u32 },
    #[error("packet id {id} is {behind} behind the highest id, beyond the window")]
    TooOld { id: u32, behind: u32 },
    #[error("packet id {id} arrived more than the time backtrack after it was skipped")]
    Expired { id: u32 },
}

/// Sliding replay window of [`REPLAY_WINDOW`] ids with the 15-second time rule (§7.4).
///
/// `check` never mutates, `accept` records an id; the data channel calls `accept` only after the
/// AEAD opened, so forged packets cannot move the window (§7.3).
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest id accepted so far (0 = none yet).
    highest: u32,
    /// Bit `i` set ⇔ id `highest - i` has been accepted.
    seen: u64,
    /// For an unseen id in the window, the time (seconds since `base`) at which a higher id
    /// arrived and left it as a gap, indexed by `id % 64`. OpenVPN's 1-s clock makes whole
    /// seconds enough.
    gap_since: [u32; REPLAY_WINDOW as usize],
    base: Option<Instant>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        ReplayWindow {
            highest: 0,
            seen: 0,
            gap_since: [0; REPLAY_WINDOW as usize],
            base: None,
        }
    }

    /// Highest accepted packet id (0 before the first packet).
    pub fn highest(&self) -> u32 {
        self.highest
    }

    fn secs(&self, now: Instant) -> u32 {
        match self.base {
            Some(b) => {
                u32::try_from(now.saturating_duration_since(b).as_secs()).unwrap_or(u32::MAX)
            }
            None => 0,
        }
    }

    /// Would `id` be accepted at `now`? Does not record it.
    pub fn check(&self, id: u32, now: Instant) -> Result<(), ReplayError> {
        if id == 0 {
            return Err(ReplayError::Zero);
        }
        if id > self.highest {
            return Ok(());
        }
        let behind = self.highest - id;
        if behind >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld { id, behind });
        }
        if self.seen & (1u64 << behind) != 0 {
            return Err(ReplayError::Replayed { id });
        }
        let since = self.gap_since[(id % REPLAY_WINDOW) as usize];
        if u64::from(self.secs(now).saturating_sub(since)) > REPLAY_TIME_BACKTRACK_SECS {
            return Err(ReplayError::Expired { id });
        }
        Ok(())
    }

    /// Checks and, if acceptable, records `id`.
    pub fn accept(&mut self, id: u32, now: Instant) -> Result<(), ReplayError> {
        self.check(id, now)?;
        if self.base.is_none() {
            self.base = Some(now);
        }
        let t = self.secs(now);
        if id > self.highest {
            let shift = id - self.highest;
            // Ids strictly between the old highest and `id` become gaps as of now; only the
            // last 63 of them can still be inside the window.
            let first_gap = self
                .highest
                .saturating_add(1)
                .max(id.saturating_sub(REPLAY_WINDOW - 1));
            for gap in first_gap..id {
                self.gap_since[(gap % REPLAY_WINDOW) as usize] = t;
            }
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = id;
        } else {
            self.seen |= 1u64 << (self.highest - id);
        }
        Ok(())
    }
}

/// What a decrypted data-channel plaintext is (§7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The 16-byte keepalive ping: drop it, but count it as activity.
    Ping,
    /// OCC_EXIT: the peer is going away (explicit-exit-notify without cc-exit).
    OccExit,
    /// Some other OCC message (type byte and the rest); safe to ignore in TLS mode.
    Occ { kind: u8, body: &'a [u8] },
    /// An IP packet for the tunnel.
    Ip(&'a [u8]),
}

/// Classifies a plaintext. The ping matches only at exactly 16 bytes; OCC needs the magic plus
/// a type byte. Everything else is tunnel traffic.
pub fn classify(plaintext: &[u8]) -> Payload<'_> {
    if plaintext == PING_MAGIC {
        return Payload::Ping;
    }
    if plaintext.len() > OCC_MAGIC.len() && plaintext[..OCC_MAGIC.len()] == OCC_MAGIC {
        let kind = plaintext[OCC_MAGIC.len()];
        if kind == OCC_EXIT {
            return Payload::OccExit;
        }
        return Payload::Occ {
            kind,
            body: &plaintext[OCC_MAGIC.len() + 1..],
        };
    }
    Payload::Ip(plaintext)
}

fn nonce(packet_id: [u8; 4], implicit_iv: &[u8; IMPLICIT_IV_LEN]) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..4].copy_from_slice(&packet_id);
    n[4..].copy_from_slice(implicit_iv);
    Nonce::assume_unique_for_key(n)
}

/// Sending half of one key_id's data channel.
pub struct Encryptor {
    key: LessSafeKey,
    implicit_iv: [u8; IMPLICIT_IV_LEN],
    /// Header bytes for this key and format: 1 (V1) or 4 (V2).
    header: [u8; V2_HEADER_LEN],
    header_len: usize,
    /// Next packet id to use; `None` once 0xFFFFFFFF has been sent.
    next_id: Option<u32>,
}

impl Encryptor {
    /// A fresh sender: packet ids start at 1 for every new key (§7.2).
    pub fn new(key: &DirectionKey, key_id: u8, format: DataFormat) -> Result<Self, CryptoError> {
        if key_id > 7 {
            return Err(CryptoError::BadKeyId(key_id));
        }
        let mut header = [0u8; V2_HEADER_LEN];
        let header_len = match format {
            DataFormat::V1 => {
                header[0] = (OPCODE_DATA_V1 << 3) | key_id;
                V1_HEADER_LEN
            }
            DataFormat::V2 { peer_id } => {
                if peer_id > NO_PEER_ID {
                    return Err(CryptoError::BadPeerId(peer_id));
                }
                let word = (u32::from((OPCODE_DATA_V2 << 3) | key_id) << 24) | peer_id;
                header = word.to_be_bytes();
                V2_HEADER_LEN
            }
        };
        Ok(Encryptor {
            key: key.aead_key(),
            implicit_iv: key.implicit_iv,
            header,
            header_len,
            next_id: Some(1),
        })
    }

    /// Bytes in front of the plaintext: header + packet id + tag.
    pub fn overhead(&self) -> usize {
        self.header_len + PACKET_ID_LEN + TAG_LEN
    }

    /// The packet id the next packet will carry (`None` when exhausted).
    pub fn next_packet_id(&self) -> Option<u32> {
        self.next_id
    }

    /// True once the send id has reached [`PACKET_ID_WRAP_TRIGGER`]: start a renegotiation now,
    /// so a new key exists long before 0xFFFFFFFF (§7.2, §9.1).
    pub fn needs_renegotiation(&self) -> bool {
        self.next_id.is_none_or(|id| id >= PACKET_ID_WRAP_TRIGGER)
    }

    /// Encrypts in place. `buf[overhead()..overhead() + len]` holds the plaintext; on success
    /// `buf[..overhead() + len]` is the complete packet and its length is returned.
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<usize, CryptoError> {
        let off = self.overhead();
        let total = off.checked_add(len).ok_or(CryptoError::BufferTooSmall {
            need: usize::MAX,
            have: buf.len(),
        })?;
        if buf.len() < total {
            return Err(CryptoError::BufferTooSmall {
                need: total,
                have: buf.len(),
            });
        }
        if len == 0 {
            // The 2.6 peer drops empty data packets ("missing payload", §7.1).
            return Err(CryptoError::EmptyPayload);
        }
        // The id must never wrap under a key (§7.2): after 0xFFFFFFFF we refuse to send.
        let id = self.next_id.ok_or(CryptoError::PacketIdExhausted)?;
        let pid = id.to_be_bytes();
        let h = self.header_len;
        buf[..h].copy_from_slice(&self.header[..h]);
        buf[h..h + PACKET_ID_LEN].copy_from_slice(&pid);
        // AAD: V2 authenticates the op/peer-id header and the id, V1 only the id (§7.1).
        let aad_start = if h == V2_HEADER_LEN { 0 } else { h };
        let mut aad = [0u8; V2_HEADER_LEN + PACKET_ID_LEN];
        let aad_len = h + PACKET_ID_LEN - aad_start;
        aad[..aad_len].copy_from_slice(&buf[aad_start..h + PACKET_ID_LEN]);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(pid, &self.implicit_iv),
                Aad::from(&aad[..aad_len]),
                &mut buf[off..total],
            )
            .map_err(|_| CryptoError::SealFailed)?;
        // Tag before ciphertext (§7.1).
        buf[h + PACKET_ID_LEN..off].copy_from_slice(tag.as_ref());
        self.next_id = id.checked_add(1);
        Ok(total)
    }

    /// Encrypts `plaintext` into `out` (which must hold `overhead() + plaintext.len()` bytes)
    /// and returns the packet length. No allocation.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        let off = self.overhead();
        let need = off + plaintext.len();
        if out.len() < need {
            return Err(CryptoError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        out[off..need].copy_from_slice(plaintext);
        self.seal_in_place(out, plaintext.len())
    }
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("header", &&self.header[..self.header_len])
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// What [`Decryptor::open_in_place`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub header: DataHeader,
    /// Where the plaintext now lies inside the caller's buffer.
    pub plaintext: Range<usize>,
}

/// Receiving half of one key_id's data channel, with its own replay window (§2.6: fresh replay
/// state per key_id).
pub struct Decryptor {
    key: LessSafeKey,
    implicit_iv: [u8; IMPLICIT_IV_LEN],
    key_id: u8,
    replay: ReplayWindow,
}

impl Decryptor {
    pub fn new(key: &DirectionKey, key_id: u8) -> Result<Self, CryptoError> {
        if key_id > 7 {
            return Err(CryptoError::BadKeyId(key_id));
        }
        Ok(Decryptor {
            key: key.aead_key(),
            implicit_iv: key.implicit_iv,
            key_id,
            replay: ReplayWindow::new(),
        })
    }

    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    pub fn replay_window(&self) -> &ReplayWindow {
        &self.replay
    }

    /// Authenticates and decrypts a whole data packet (V1 or V2) in place. The order follows
    /// §7.3: open the AEAD first, then run the replay check, and only then record the id, so
    /// neither forged nor replayed packets change any state. On error the buffer contents are
    /// unspecified.
    pub fn open_in_place(
        &mut self,
        packet: &mut [u8],
        now: Instant,
    ) -> Result<Opened, CryptoError> {
        let header = DataHeader::parse(packet)?;
        if header.key_id != self.key_id {
            return Err(CryptoError::KeyIdMismatch {
                expected: self.key_id,
                got: header.key_id,
            });
        }
        let h = header.header_len();
        let ct_start = h + PACKET_ID_LEN + TAG_LEN;
        if packet.len() < ct_start {
            return Err(CryptoError::Truncated);
        }
        if packet.len() == ct_start {
            return Err(CryptoError::EmptyPayload);
        }
        let pid = header.packet_id.to_be_bytes();
        let aad_start = if h == V2_HEADER_LEN { 0 } else { h };
        let mut aad = [0u8; V2_HEADER_LEN + PACKET_ID_LEN];
        let aad_len = h + PACKET_ID_LEN - aad_start;
        aad[..aad_len].copy_from_slice(&packet[aad_start..h + PACKET_ID_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&packet[h + PACKET_ID_LEN..ct_start]);
        let len = self
            .key
            .open_in_place_separate_tag(
                nonce(pid, &self.implicit_iv),
                Aad::from(&aad[..aad_len]),
                Tag::from(tag),
                &mut packet[ct_start..],
                0..,
            )
            .map_err(|_| CryptoError::AuthFailed)?
            .len();
        self.replay.accept(header.packet_id, now)?;
        Ok(Opened {
            header,
            plaintext: ct_start..ct_start + len,
        })
    }

    /// Decrypts `packet` into `out` (at least `packet.len()` bytes are needed; the plaintext is
    /// shorter) and returns the header and plaintext length. No allocation.
    pub fn decrypt(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<(DataHeader, usize), CryptoError> {
        if out.len() < packet.len() {
            return Err(CryptoError::BufferTooSmall {
                need: packet.len(),
                have: out.len(),
            });
        }
        let buf = &mut out[..packet.len()];
        buf.copy_from_slice(packet);
        let opened = self.open_in_place(buf, now)?;
        let n = opened.plaintext.len();
        out.copy_within(opened.plaintext, 0);
        Ok((opened.header, n))
    }
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("key_id", &self.key_id)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn iv(s: &str) -> [u8; 8] {
        hex(s).try_into().unwrap()
    }

    fn key(c: Cipher, byte: u8) -> DirectionKey {
        DirectionKey::new(c, &[byte; 64], [byte ^ 0x55; 8]).unwrap()
    }

    fn pair(c: Cipher, format: DataFormat, key_id: u8) -> (Encryptor, Decryptor) {
        let k = key(c, 7);
        (
            Encryptor::new(&k, key_id, format).unwrap(),
            Decryptor::new(&k, key_id).unwrap(),
        )
    }

    #[test]
    fn round_trip_all_ciphers_both_formats() {
        let now = Instant::now();
        for c in Cipher::ALL {
            for format in [DataFormat::V1, DataFormat::V2 { peer_id: 0x12_3456 }] {
                let (mut enc, mut dec) = pair(c, format, 3);
                for (i, msg) in [&b"hello"[..], &[0xAB; 1400][..], b"x"].iter().enumerate() {
                    let mut buf = [0u8; 1600];
                    let n = enc.encrypt(msg, &mut buf).unwrap();
                    assert_eq!(n, enc.overhead() + msg.len());
                    let hdr = DataHeader::parse(&buf[..n]).unwrap();
                    assert_eq!(hdr.key_id, 3);
                    assert_eq!(hdr.packet_id, i as u32 + 1, "ids start at 1");
                    let mut out = [0u8; 1600];
                    let (h2, m) = dec.decrypt(&buf[..n], &mut out, now).unwrap();
                    assert_eq!(h2, hdr);
                    assert_eq!(&out[..m], *msg, "{c} {format:?}");
                }
            }
        }
    }

    #[test]
    fn v2_header_layout() {
        let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0xABCDEF }, 2);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"abc", &mut buf).unwrap();
        assert_eq!(n, 4 + 4 + 16 + 3);
        assert_eq!(&buf[..8], &[0x4a, 0xAB, 0xCD, 0xEF, 0, 0, 0, 1]);
        let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V1, 1);
        let n = enc.encrypt(b"abc", &mut buf).unwrap();
        assert_eq!(n, 1 + 4 + 16 + 3);
        assert_eq!(&buf[..5], &[0x31, 0, 0, 0, 1]);
    }

    #[test]
    fn seal_in_place_uses_headroom() {
        let (mut enc, mut dec) = pair(Cipher::ChaCha20Poly1305, DataFormat::V2 { peer_id: 1 }, 0);
        let mut buf = [0u8; 100];
        let off = enc.overhead();
        buf[off..off + 5].copy_from_slice(b"frame");
        let n = enc.seal_in_place(&mut buf, 5).unwrap();
        let opened = dec.open_in_place(&mut buf[..n], Instant::now()).unwrap();
        assert_eq!(&buf[opened.plaintext], b"frame");
    }

    #[test]
    fn tamper_anywhere_is_rejected() {
        let now = Instant::now();
        for format in [DataFormat::V1, DataFormat::V2 { peer_id: 5 }] {
            let (mut enc, _) = pair(Cipher::Aes128Gcm, format, 0);
            let mut buf = [0u8; 64];
            let n = enc.encrypt(b"some payload", &mut buf).unwrap();
            for i in 0..n {
                // In V1 the opcode byte is not authenticated; flipping its key_id bits is caught
                // by the key_id check instead, flipping its opcode bits by the parser.
                let mut p = buf[..n].to_vec();
                p[i] ^= 0x01;
                let (_, mut dec) = pair(Cipher::Aes128Gcm, format, 0);
                let r = dec.decrypt(&p, &mut [0u8; 64], now);
                assert!(r.is_err(), "flip at {i} accepted ({format:?})");
                if i > 0 {
                    assert_eq!(r, Err(CryptoError::AuthFailed), "byte {i} {format:?}");
                }
            }
        }
    }

    #[test]
    fn v2_peer_id_is_authenticated() {
        let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 9 }, 0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"p", &mut buf).unwrap();
        buf[3] = 10;
        assert_eq!(
            dec.decrypt(&buf[..n], &mut [0u8; 64], Instant::now()),
            Err(CryptoError::AuthFailed)
        );
    }

    #[test]
    fn wrong_key_or_direction_fails() {
        let mut enc = Encryptor::new(&key(Cipher::Aes256Gcm, 1), 0, DataFormat::V1).unwrap();
        let mut dec = Decryptor::new(&key(Cipher::Aes256Gcm, 2), 0).unwrap();
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"p", &mut buf).unwrap();
        assert_eq!(
            dec.decrypt(&buf[..n], &mut [0u8; 64], Instant::now()),
            Err(CryptoError::AuthFailed)
        );
    }

    #[test]
    fn replayed_packet_is_rejected_after_auth() {
        let now = Instant::now();
        let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"once", &mut buf).unwrap();
        let pkt = buf[..n].to_vec();
        assert!(dec.decrypt(&pkt, &mut [0u8; 64], now).is_ok());
        assert_eq!(
            dec.decrypt(&pkt, &mut [0u8; 64], now),
            Err(CryptoError::Replay(ReplayError::Replayed { id: 1 }))
        );
    }

    #[test]
    fn forged_packet_does_not_move_the_window() {
        let now = Instant::now();
        let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V1, 0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"a", &mut buf).unwrap();
        let good = buf[..n].to_vec();
        // A forgery claiming id 1000 fails authentication and leaves the window at 0...
        let mut forged = good.clone();
        forged[1..5].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            dec.decrypt(&forged, &mut [0u8; 64], now),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(dec.replay_window().highest(), 0);
        // ...so the genuine id 1 is still accepted.
        assert!(dec.decrypt(&good, &mut [0u8; 64], now).is_ok());
    }

    #[test]
    fn bad_input_never_panics() {
        let now = Instant::now();
        let (_, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
        let mut out = [0u8; 64];
        assert_eq!(dec.decrypt(&[], &mut out, now), Err(CryptoError::Truncated));
        assert_eq!(
            dec.decrypt(&[0x48], &mut out, now),
            Err(CryptoError::Truncated)
        );
        assert_eq!(
            dec.decrypt(&[0x48, 0, 0, 0, 0, 0, 0], &mut out, now),
            Err(CryptoError::Truncated)
        );
        // Header + id + tag and nothing else: the 2.6 rule "missing payload".
        assert_eq!(
            dec.decrypt(&[0x48; 24], &mut out, now),
            Err(CryptoError::EmptyPayload)
        );
        assert_eq!(
            dec.decrypt(&[0x20; 30], &mut out, now),
            Err(CryptoError::NotData { opcode: 4 })
        );
        assert_eq!(
            dec.decrypt(&[0x49; 30], &mut out, now),
            Err(CryptoError::KeyIdMismatch {
                expected: 0,
                got: 1
            })
        );
        assert!(matches!(
            dec.decrypt(&[0x48; 40], &mut [0u8; 10], now),
            Err(CryptoError::BufferTooSmall { .. })
        ));
        let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V1, 0);
        assert_eq!(
            enc.encrypt(b"", &mut [0u8; 64]),
            Err(CryptoError::EmptyPayload)
        );
        assert!(matches!(
            enc.encrypt(b"0123456789", &mut [0u8; 20]),
            Err(CryptoError::BufferTooSmall { .. })
        ));
        assert!(Encryptor::new(&key(Cipher::Aes256Gcm, 0), 8, DataFormat::V1).is_err());
        assert!(Encryptor::new(
            &key(Cipher::Aes256Gcm, 0),
            0,
            DataFormat::V2 {
                peer_id: 0x100_0000
            }
        )
        .is_err());
        assert!(DirectionKey::new(Cipher::Aes256Gcm, &[0; 16], [0; 8]).is_err());
        // Every short prefix of a real packet is refused without panicking.
        let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"payload", &mut buf).unwrap();
        for cut in 0..n {
            assert!(dec.decrypt(&buf[..cut], &mut [0u8; 64], now).is_err());
        }
    }

    #[test]
    fn bad_input_unknown_opcodes_are_not_data() {
        let now = Instant::now();
        let (_, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
        for op in (0u8..32).filter(|&op| op != OPCODE_DATA_V1 && op != OPCODE_DATA_V2) {
            let mut pkt = [0u8; 40];
            pkt[0] = op << 3;
            assert_eq!(
                DataHeader::parse(&pkt),
                Err(CryptoError::NotData { opcode: op })
            );
            assert_eq!(
                dec.decrypt(&pkt, &mut [0u8; 64], now),
                Err(CryptoError::NotData { opcode: op })
            );
        }
        assert_eq!(dec.replay_window().highest(), 0);
    }

    #[test]
    fn bad_input_packet_id_zero_is_refused_after_auth() {
        // A genuine (authenticated) packet with id 0 is still refused: 0 is never sent (§7.2).
        let now = Instant::now();
        let (mut enc, mut dec) = pair(Cipher::ChaCha20Poly1305, DataFormat::V1, 0);
        enc.next_id = Some(0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"zero", &mut buf).unwrap();
        assert_eq!(
            dec.decrypt(&buf[..n], &mut [0u8; 64], now),
            Err(CryptoError::Replay(ReplayError::Zero))
        );
        assert_eq!(dec.replay_window().highest(), 0);
    }

    #[test]
    fn bad_input_packet_id_ffffffff_then_replays() {
        let now = Instant::now();
        let (mut enc, mut dec) = pair(Cipher::Aes128Gcm, DataFormat::V2 { peer_id: 5 }, 3);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"first", &mut buf).unwrap();
        let first = buf[..n].to_vec();
        enc.next_id = Some(u32::MAX);
        let n = enc.encrypt(b"last", &mut buf).unwrap();
        let last = buf[..n].to_vec();
        assert!(dec.decrypt(&last, &mut [0u8; 64], now).is_ok());
        assert_eq!(dec.replay_window().highest(), u32::MAX);
        assert_eq!(
            dec.decrypt(&last, &mut [0u8; 64], now),
            Err(CryptoError::Replay(ReplayError::Replayed { id: u32::MAX }))
        );
        // Id 1 is now far behind the window: refused, even though it was never seen.
        assert_eq!(
            dec.decrypt(&first, &mut [0u8; 64], now),
            Err(CryptoError::Replay(ReplayError::TooOld {
                id: 1,
                behind: u32::MAX - 1
            }))
        );
    }

    #[test]
    fn window_edges() {
        let t = Instant::now();
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(0, t), Err(ReplayError::Zero));
        w.accept(100, t).unwrap();
        // 63 behind is the oldest id still inside a 64-wide window; 64 behind is out.
        assert_eq!(w.check(37, t), Ok(()));
        assert_eq!(
            w.check(36, t),
            Err(ReplayError::TooOld { id: 36, behind: 64 })
        );
        w.accept(37, t).unwrap();
        assert_eq!(w.accept(37, t), Err(ReplayError::Replayed { id: 37 }));
        assert_eq!(w.accept(100, t), Err(ReplayError::Replayed { id: 100 }));
        // Out of order within the window is fine, once.
        w.accept(99, t).unwrap();
        w.accept(101, t).unwrap();
        assert_eq!(w.accept(99, t), Err(ReplayError::Replayed { id: 99 }));
        // A big jump forgets everything older than the window.
        w.accept(1_000_000, t).unwrap();
        assert!(matches!(w.check(101, t), Err(ReplayError::TooOld { .. })));
        assert_eq!(w.check(999_999, t), Ok(()));
        assert_eq!(w.check(1_000_000 - 63, t), Ok(()));
    }

    #[test]
    fn window_time_backtrack() {
        let t0 = Instant::now();
        let mut w = ReplayWindow::new();
        w.accept(1, t0).unwrap();
        w.accept(5, t0).unwrap(); // 2, 3, 4 become gaps at t0
        assert_eq!(w.check(3, t0 + Duration::from_secs(15)), Ok(()));
        assert_eq!(
            w.check(3, t0 + Duration::from_secs(16)),
            Err(ReplayError::Expired { id: 3 })
        );
        // A gap made later has its own clock.
        w.accept(8, t0 + Duration::from_secs(10)).unwrap(); // 6, 7 gaps at t0+10
        assert_eq!(w.check(6, t0 + Duration::from_secs(25)), Ok(()));
        assert_eq!(
            w.check(4, t0 + Duration::from_secs(25)),
            Err(ReplayError::Expired { id: 4 })
        );
    }

    #[test]
    fn window_at_u32_max() {
        let t = Instant::now();
        let mut w = ReplayWindow::new();
        w.accept(u32::MAX - 1, t).unwrap();
        w.accept(u32::MAX, t).unwrap();
        assert_eq!(
            w.accept(u32::MAX, t),
            Err(ReplayError::Replayed { id: u32::MAX })
        );
        assert!(w.check(u32::MAX - 2, t).is_ok());
        assert!(matches!(w.check(1, t), Err(ReplayError::TooOld { .. })));
    }

    #[test]
    fn sender_stops_before_wrapping() {
        let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
        assert!(!enc.needs_renegotiation());
        enc.next_id = Some(PACKET_ID_WRAP_TRIGGER - 1);
        assert!(!enc.needs_renegotiation());
        let mut buf = [0u8; 64];
        enc.encrypt(b"a", &mut buf).unwrap();
        assert!(enc.needs_renegotiation());
        enc.next_id = Some(u32::MAX);
        let n = enc.encrypt(b"last", &mut buf).unwrap();
        assert_eq!(DataHeader::parse(&buf[..n]).unwrap().packet_id, u32::MAX);
        let (_, m) = dec
            .decrypt(&buf[..n], &mut [0u8; 64], Instant::now())
            .unwrap();
        assert_eq!(m, 4);
        assert_eq!(enc.next_packet_id(), None);
        assert!(enc.needs_renegotiation());
        assert_eq!(
            enc.encrypt(b"wrap", &mut buf),
            Err(CryptoError::PacketIdExhausted)
        );
    }

    #[test]
    fn ping_and_occ_recognition() {
        assert_eq!(classify(&PING_MAGIC), Payload::Ping);
        let mut longer = PING_MAGIC.to_vec();
        longer.push(0);
        assert_eq!(classify(&longer), Payload::Ip(&longer));
        assert_eq!(classify(&OCC_EXIT_MESSAGE), Payload::OccExit);
        assert_eq!(&OCC_EXIT_MESSAGE[..16], &OCC_MAGIC);
        let mut req = OCC_MAGIC.to_vec();
        req.extend_from_slice(&[0, b'x']);
        assert_eq!(
            classify(&req),
            Payload::Occ {
                kind: 0,
                body: b"x"
            }
        );
        // The bare magic without a type byte is not OCC.
        assert_eq!(classify(&OCC_MAGIC), Payload::Ip(&OCC_MAGIC));
        assert_eq!(classify(&[]), Payload::Ip(&[]));
        assert_eq!(classify(&[0x45, 0]), Payload::Ip(&[0x45, 0]));
    }

    #[test]
    fn cipher_names() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_name("aes-256-gcm"), Some(Cipher::Aes256Gcm));
        assert_eq!(Cipher::from_name("BF-CBC"), None);
        assert_eq!(Cipher::from_name(""), None);
    }

    // Run (a) of the capture, client.log: the server's first data packet (P_DATA_V2, kid 0,
    // peer-id 0, pid 1, 72 bytes) logged with its key "Incoming Data Channel: CIPHER KEY",
    // "DECRYPT IV" (pid ‖ implicit IV), "DECRYPT MAC" (tag), "DECRYPT FROM" (ciphertext) and
    // "DECRYPT AD". The plaintext starts with an IPv6 header (logged "DECRYPT TO", truncated).
    const CAPTURE_S2C_KEY: &str =
        "fea57122 e20dbf49 1d86b3b9 46192646 e59e7527 3a0e2372 7a870a5a e96d15a7";
    const CAPTURE_S2C_IV: &str = "6f131f64 a5b7e5b6";
    const CAPTURE_S2C_TAG: &str = "5c840d3f 2555a048 2256c1ff 97b51fca";
    const CAPTURE_S2C_CT: &str = "9f485e86 3a3a2348 0153ac04 4a347a51 de6f00e2 e2530eab \
        96d497c2 9bbdb0c8 e3653262 20178668 cf86b3a3 7fa58dab";
    const CAPTURE_S2C_PT_PREFIX: &str =
        "60000000 00083aff fe800000 00000000 58d2b9a9 34f2b616 ff020000";

    fn capture_s2c_packet() -> Vec<u8> {
        let mut p = hex("48000000 00000001");
        p.extend(hex(CAPTURE_S2C_TAG));
        p.extend(hex(CAPTURE_S2C_CT));
        assert_eq!(p.len(), 72, "the logged UDP read was 72 bytes");
        p
    }

    #[test]
    fn capture_run_a_server_to_client_packet_decrypts() {
        // The client decrypts with the s2c key; so does our test "client" side.
        let k = DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_S2C_KEY), iv(CAPTURE_S2C_IV))
            .unwrap();
        let mut dec = Decryptor::new(&k, 0).unwrap();
        let mut out = [0u8; 128];
        let (h, n) = dec
            .decrypt(&capture_s2c_packet(), &mut out, Instant::now())
            .unwrap();
        assert_eq!(h.peer_id, Some(0));
        assert_eq!(h.packet_id, 1);
        assert_eq!(n, 48);
        let prefix = hex(CAPTURE_S2C_PT_PREFIX);
        assert_eq!(&out[..prefix.len()], &prefix[..]);
        assert!(matches!(classify(&out[..n]), Payload::Ip(_)));
    }

    // Run (a), server.log: the client's first keepalive ping (P_DATA_V2 kid 0, pid 1, 40 bytes)
    // as the server decrypted it: key = server "Incoming Data Channel: CIPHER KEY", "DECRYPT IV",
    // "DECRYPT MAC", "DECRYPT FROM", "DECRYPT TO" = the ping magic.
    const CAPTURE_C2S_KEY: &str =
        "a8eaf09a 3eab8ac6 8de1f657 4299ff74 90117279 b37ed6b4 9e7e1f3e c8ba8128";
    const CAPTURE_C2S_IV: &str = "16debe9e 25e25f12";
    const CAPTURE_C2S_PING: &str = "48000000 00000001 7d09a702 e9f4e6fb 44b6377a 4903820d \
        9701abb8 add8503f 318bde86 c65051b3";

    #[test]
    fn capture_run_a_client_ping_decrypts_and_is_recognised() {
        let k = DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_C2S_KEY), iv(CAPTURE_C2S_IV))
            .unwrap();
        let mut pkt = hex(CAPTURE_C2S_PING);
        assert_eq!(pkt.len(), 40, "the logged UDP read was 40 bytes");
        let expected = pkt.clone();
        let mut dec = Decryptor::new(&k, 0).unwrap();
        let opened = dec.open_in_place(&mut pkt, Instant::now()).unwrap();
        assert_eq!(classify(&pkt[opened.plaintext]), Payload::Ping);
        // And the same ping sent by us with pid 1 is byte-identical to the client's.
        let mut enc = Encryptor::new(&k, 0, DataFormat::V2 { peer_id: 0 }).unwrap();
        let mut out = [0u8; 64];
        let n = enc.encrypt(&PING_MAGIC, &mut out).unwrap();
        assert_eq!(&out[..n], &expected[..]);
    }

    // Run (b), serverA.log after the first renegotiation: a client packet on key_id 1
    // (opcode byte 0x49), decrypted by the server with its kid-1 "Incoming" key.
    #[test]
    fn capture_run_b_key_id_1_packet_decrypts() {
        let k = DirectionKey::new(
            Cipher::Aes256Gcm,
            &hex("4958cc0e 452975e1 b0311985 015b49c3 a0627c21 3b62ca6a 0b0927da 36f47fe0"),
            iv("de987fe7 5b4c5b00"),
        )
        .unwrap();
        let mut pkt = hex("49000000 00000001 32bb7627 be0f3a15 ba6ed974 c9076a29");
        pkt.extend(hex(
            "ac396d60 7705f0e0 1fd6587e 6e6bb3fd 04704eb8 ce6346ed d3b51be0 \
            db127c17 6b9f1f49 c614f3b9 269cb685 e37fe221",
        ));
        assert_eq!(pkt.len(), 72);
        let now = Instant::now();
        // The kid-0 decryptor refuses it before doing any crypto.
        assert!(matches!(
            Decryptor::new(&k, 0)
                .unwrap()
                .decrypt(&pkt, &mut [0u8; 128], now),
            Err(CryptoError::KeyIdMismatch {
                expected: 0,
                got: 1
            })
        ));
        let mut out = [0u8; 128];
        let (h, n) = Decryptor::new(&k, 1)
            .unwrap()
            .decrypt(&pkt, &mut out, now)
            .unwrap();
        assert_eq!((h.key_id, h.peer_id, h.packet_id, n), (1, Some(0), 1, 48));
        let prefix = hex("60000000 00083aff fe800000 00000000 be87fb7a ff3e8851 ff020000");
        assert_eq!(&out[..prefix.len()], &prefix[..]);
    }

    #[test]
    fn capture_run_a_reencrypts_identically() {
        // Determinism check of our sender: with the same key, IV, pid 1 and the decrypted
        // plaintext, we must produce the exact logged bytes.
        let k = DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_S2C_KEY), iv(CAPTURE_S2C_IV))
            .unwrap();
        let pkt = capture_s2c_packet();
        let mut pt = [0u8; 128];
        let (_, n) = Decryptor::new(&k, 0)
            .unwrap()
            .decrypt(&pkt, &mut pt, Instant::now())
            .unwrap();
        let mut enc = Encryptor::new(&k, 0, DataFormat::V2 { peer_id: 0 }).unwrap();
        let mut out = [0u8; 128];
        let m = enc.encrypt(&pt[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &pkt[..]);
    }
}
