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
#[path = "crypto_tests.rs"]
mod tests;
