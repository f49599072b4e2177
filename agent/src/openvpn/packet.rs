//! Wire codec of OpenVPN 2.x packets as a stock 2.6 client sends them (protocol doc §1, §2.2, §13).
//!
//! Decoders are `fn(&[u8]) -> Result<_, DecodeError>`: they borrow from the input, never panic and
//! never allocate, so they can be fed untrusted datagrams (and later `cargo fuzz`) directly. The
//! encoders write into a caller buffer. Nothing here knows about sockets, clocks or sessions.
//!
//! Layout of a control packet (no tls-auth / tls-crypt; doc §1.4):
//!
//! ```text
//! opcode|key_id (1) | sender session id (8) | n (1) | n × ack id (4, BE) | receiver session id (8, iff n > 0)
//!   | message packet-id (4, BE; absent in P_ACK_V1) | payload (rest)
//! ```

use thiserror::Error;

/// Session id length (doc §1.3).
pub const SESSION_ID_LEN: usize = 8;
/// opcode/key_id byte plus the sender's session id: the part tls-crypt leaves in clear (doc §11.2).
pub const CONTROL_HEADER_LEN: usize = 1 + SESSION_ID_LEN;
/// Parse limit of the ack array (`RELIABLE_ACK_SIZE`, doc §2.2): more is a malformed packet.
pub const MAX_ACKS: usize = 8;
/// Acks a sender piggy-backs on a reliable packet (`CONTROL_SEND_ACK_MAX`, doc §2.2).
pub const MAX_PIGGYBACK_ACKS: usize = 4;
/// `tls-mtu` default: a whole control packet including the IP and UDP headers (doc §2.5).
pub const TLS_MTU: usize = 1250;
/// Largest control packet (after any unwrapping) we accept. 2.6 peers send at most
/// `TLS_MTU - 28` = 1222 bytes; their own receive buffer is about 1600 bytes (doc §2.5, the
/// capture's "Control Channel MTU parms … payload:1600"), so anything longer is not from a stock
/// peer and is rejected before it reaches the reliability layer.
pub const MAX_CONTROL_PACKET_LEN: usize = 1600;
/// Header of P_DATA_V1 (opcode byte only) and P_DATA_V2 (opcode + 24-bit peer-id) (doc §1.5).
pub const DATA_V1_HEADER_LEN: usize = 1;
pub const DATA_V2_HEADER_LEN: usize = 4;
/// The P_DATA_V2 peer-id meaning "no peer-id" (doc §1.5); never assign it to a client.
pub const NO_PEER_ID: u32 = 0x00FF_FFFF;
/// Largest TCP frame length a BE u16 can carry (doc §1.1).
pub const MAX_TCP_FRAME_LEN: usize = u16::MAX as usize;

const OPCODE_SHIFT: u8 = 3;
const KEY_ID_MASK: u8 = 0x07;

/// Largest control packet (before tls-crypt wrapping) that keeps the datagram within
/// [`TLS_MTU`]: 28 bytes of IPv4+UDP or 48 of IPv6+UDP, plus `wrap_overhead` (40 for tls-crypt)
/// (doc §2.5, §11.2).
pub const fn max_sendable_control_len(ipv6: bool, wrap_overhead: usize) -> usize {
    let ip_udp = if ipv6 { 48 } else { 28 };
    TLS_MTU.saturating_sub(ip_udp).saturating_sub(wrap_overhead)
}

/// Which end of the TLS connection we are. Shared by everything that picks key halves by role
/// (tls-crypt §11.1, data-channel keys §6.1 — note the two use opposite halves).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    Server,
    Client,
}

/// The 8-byte session id each peer picks (doc §1.3). Never all-zero: 2.6 drops such packets
/// ("session-id not found"), so the type cannot hold it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    /// `None` for the all-zero id.
    pub const fn new(bytes: [u8; SESSION_ID_LEN]) -> Option<Self> {
        if u64::from_be_bytes(bytes) == 0 {
            None
        } else {
            Some(Self(bytes))
        }
    }

    /// Infallible form for ids known to be non-zero.
    pub const fn from_nonzero(id: core::num::NonZeroU64) -> Self {
        Self(id.get().to_be_bytes())
    }

    pub const fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }

    pub const fn to_bytes(self) -> [u8; SESSION_ID_LEN] {
        self.0
    }
}

impl core::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SessionId({:016x})", u64::from_be_bytes(self.0))
    }
}

impl core::fmt::Display for SessionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:016x}", u64::from_be_bytes(self.0))
    }
}

/// The 3-bit key id (doc §1.2). 0 is the session's first key; renegotiations count 1..=7 and
/// wrap to 1, never back to 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct KeyId(u8);

impl KeyId {
    pub const ZERO: KeyId = KeyId(0);

    /// `None` if `id` does not fit in 3 bits.
    pub const fn new(id: u8) -> Option<Self> {
        if id <= KEY_ID_MASK {
            Some(Self(id))
        } else {
            None
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// The key id of the next renegotiation: 0 → 1 → … → 7 → 1 (doc §1.2, §9.2).
    pub const fn next(self) -> KeyId {
        if self.0 >= KEY_ID_MASK {
            KeyId(1)
        } else {
            KeyId(self.0 + 1)
        }
    }
}

/// Every opcode a 2.x peer may legally send (doc §1.2). The key-method-1 resets (1, 2) are gone
/// since 2.5 and decode as [`DecodeError::ObsoleteOpcode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Opcode {
    SoftResetV1 = 3,
    ControlV1 = 4,
    AckV1 = 5,
    DataV1 = 6,
    HardResetClientV2 = 7,
    HardResetServerV2 = 8,
    DataV2 = 9,
    /// tls-crypt-v2 only; recognised so it can be classified and refused by name.
    HardResetClientV3 = 10,
    /// tls-crypt-v2 only; recognised so it can be classified and refused by name.
    ControlWkcV1 = 11,
}

impl Opcode {
    pub const fn value(self) -> u8 {
        self as u8
    }

    pub const fn from_value(value: u8) -> Result<Self, DecodeError> {
        Ok(match value {
            3 => Self::SoftResetV1,
            4 => Self::ControlV1,
            5 => Self::AckV1,
            6 => Self::DataV1,
            7 => Self::HardResetClientV2,
            8 => Self::HardResetServerV2,
            9 => Self::DataV2,
            10 => Self::HardResetClientV3,
            11 => Self::ControlWkcV1,
            1 | 2 => return Err(DecodeError::ObsoleteOpcode(value)),
            _ => return Err(DecodeError::UnknownOpcode(value)),
        })
    }

    pub const fn is_data(self) -> bool {
        matches!(self, Self::DataV1 | Self::DataV2)
    }

    pub const fn is_control(self) -> bool {
        !self.is_data()
    }

    /// Hard and soft resets: reliable packets with message id 0 that start a key state.
    pub const fn is_reset(self) -> bool {
        matches!(
            self,
            Self::SoftResetV1
                | Self::HardResetClientV2
                | Self::HardResetServerV2
                | Self::HardResetClientV3
        )
    }

    pub const fn is_hard_reset(self) -> bool {
        matches!(
            self,
            Self::HardResetClientV2 | Self::HardResetServerV2 | Self::HardResetClientV3
        )
    }

    /// Control packets carry a message packet-id except P_ACK_V1 (doc §1.4).
    pub const fn has_message_id(self) -> bool {
        self.is_control() && !matches!(self, Self::AckV1)
    }

    /// Whether `key_id` is legal with this opcode: hard resets only start key 0, soft resets
    /// never restart key 0 (doc §1.2, §9.2).
    pub const fn allows_key_id(self, key_id: KeyId) -> bool {
        if self.is_hard_reset() {
            key_id.0 == 0
        } else if matches!(self, Self::SoftResetV1) {
            key_id.0 != 0
        } else {
            true
        }
    }
}

/// Splits byte 0 into opcode and key id (doc §1.2): the first step of demultiplexing.
pub const fn split_first_byte(byte: u8) -> Result<(Opcode, KeyId), DecodeError> {
    match Opcode::from_value(byte >> OPCODE_SHIFT) {
        Ok(op) => Ok((op, KeyId(byte & KEY_ID_MASK))),
        Err(e) => Err(e),
    }
}

pub const fn first_byte(opcode: Opcode, key_id: KeyId) -> u8 {
    (opcode.value() << OPCODE_SHIFT) | key_id.0
}

/// Which field a too-short packet ran out in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    SessionId,
    AckCount,
    AckIds,
    AckSessionId,
    MessageId,
    PeerId,
    DataPayload,
}

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Field::SessionId => "session id",
            Field::AckCount => "ack count",
            Field::AckIds => "ack array",
            Field::AckSessionId => "ack receiver session id",
            Field::MessageId => "message packet-id",
            Field::PeerId => "peer-id",
            Field::DataPayload => "data payload",
        })
    }
}

/// Why a packet was rejected by the decoder. Each variant is a drop reason worth counting.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("obsolete key-method-1 opcode {0}")]
    ObsoleteOpcode(u8),
    #[error("key id {key_id} is not valid with {opcode:?}")]
    InvalidKeyId { opcode: Opcode, key_id: u8 },
    #[error("packet of {len} bytes truncated in the {field}")]
    Truncated { field: Field, len: usize },
    #[error("all-zero sender session id")]
    ZeroSessionId,
    #[error("all-zero receiver session id in the ack array")]
    ZeroAckSessionId,
    #[error("ack array of {0} entries (at most 8)")]
    TooManyAcks(u8),
    #[error("control packet of {len} bytes (at most {max})")]
    OversizedControl { len: usize, max: usize },
    #[error("{0} trailing bytes after a P_ACK_V1")]
    TrailingBytes(usize),
    #[error("{0:?} where a control packet was expected")]
    NotControl(Opcode),
}

/// Why a packet could not be encoded: the caller built something the wire cannot carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum EncodeError {
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("{0:?} is not a control opcode")]
    NotControl(Opcode),
    #[error("{0:?} needs a message packet-id")]
    MissingMessageId(Opcode),
    #[error("P_ACK_V1 has no message packet-id and no payload")]
    AckWithMessage,
    #[error("key id {key_id} is not valid with {opcode:?}")]
    InvalidKeyId { opcode: Opcode, key_id: u8 },
    #[error("control packet of {len} bytes (at most {max})")]
    OversizedControl { len: usize, max: usize },
    #[error("ack array of {0} entries (1..=8 with a receiver session id)")]
    BadAckCount(usize),
    #[error("peer-id {0:#x} does not fit in 24 bits")]
    PeerIdTooLarge(u32),
}

/// Selective acks: 0..=8 message ids plus, when there is at least one, the session id of the
/// peer whose packets are acked (doc §1.4, §2.2). Fixed capacity, so decoding never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AckArray {
    ids: [u32; MAX_ACKS],
    len: u8,
    remote_session: Option<SessionId>,
}

impl AckArray {
    pub const EMPTY: AckArray = AckArray {
        ids: [0; MAX_ACKS],
        len: 0,
        remote_session: None,
    };

    /// `ids` must hold 1..=8 entries (use [`AckArray::EMPTY`] for none).
    pub fn new(ids: &[u32], remote_session: SessionId) -> Result<Self, EncodeError> {
        if ids.is_empty() || ids.len() > MAX_ACKS {
            return Err(EncodeError::BadAckCount(ids.len()));
        }
        let mut a = Self::EMPTY;
        a.ids[..ids.len()].copy_from_slice(ids);
        a.len = ids.len() as u8;
        a.remote_session = Some(remote_session);
        Ok(a)
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The receiver session id; `Some` exactly when the array is non-empty.
    pub fn remote_session(&self) -> Option<SessionId> {
        self.remote_session
    }

    pub fn encoded_len(&self) -> usize {
        1 + self.len() * 4 + if self.is_empty() { 0 } else { SESSION_ID_LEN }
    }
}

/// A control-channel packet: resets, P_CONTROL_V1, P_ACK_V1 (and the tls-crypt-v2 opcodes,
/// recognised only). `message_id` is `None` exactly for P_ACK_V1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ControlPacket<'a> {
    pub opcode: Opcode,
    pub key_id: KeyId,
    /// The sender's own session id.
    pub session_id: SessionId,
    pub acks: AckArray,
    pub message_id: Option<u32>,
    /// TLS ciphertext for P_CONTROL_V1; early-negotiation TLVs (usually empty) for resets (§3.4).
    pub payload: &'a [u8],
}

impl<'a> ControlPacket<'a> {
    /// Decodes an (unwrapped) control packet; use [`decode`] when the opcode is not known yet.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        match decode(buf)? {
            Packet::Control(c) => Ok(c),
            Packet::Data(d) => Err(DecodeError::NotControl(d.opcode())),
        }
    }

    pub fn encoded_len(&self) -> usize {
        CONTROL_HEADER_LEN
            + self.acks.encoded_len()
            + if self.message_id.is_some() { 4 } else { 0 }
            + self.payload.len()
    }

    fn validate(&self) -> Result<usize, EncodeError> {
        if !self.opcode.is_control() {
            return Err(EncodeError::NotControl(self.opcode));
        }
        if !self.opcode.allows_key_id(self.key_id) {
            return Err(EncodeError::InvalidKeyId {
                opcode: self.opcode,
                key_id: self.key_id.0,
            });
        }
        match (self.opcode.has_message_id(), self.message_id) {
            (true, None) => return Err(EncodeError::MissingMessageId(self.opcode)),
            (false, Some(_)) => return Err(EncodeError::AckWithMessage),
            (false, None) if !self.payload.is_empty() => return Err(EncodeError::AckWithMessage),
            _ => {}
        }
        let len = self.encoded_len();
        if len > MAX_CONTROL_PACKET_LEN {
            return Err(EncodeError::OversizedControl {
                len,
                max: MAX_CONTROL_PACKET_LEN,
            });
        }
        Ok(len)
    }

    /// Writes the packet to the start of `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.validate()?;
        if out.len() < len {
            return Err(EncodeError::BufferTooSmall {
                needed: len,
                available: out.len(),
            });
        }
        let mut w = Writer { buf: out, pos: 0 };
        w.put(&[first_byte(self.opcode, self.key_id)]);
        w.put(self.session_id.as_bytes());
        w.put(&[self.acks.len]);
        for id in self.acks.ids() {
            w.put(&id.to_be_bytes());
        }
        if let Some(remote) = self.acks.remote_session {
            w.put(remote.as_bytes());
        }
        if let Some(mid) = self.message_id {
            w.put(&mid.to_be_bytes());
        }
        w.put(self.payload);
        debug_assert_eq!(w.pos, len);
        Ok(len)
    }

    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = vec![0; self.validate()?];
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// P_DATA_V1 or P_DATA_V2: the header is parsed, the crypto payload (packet-id, tag,
/// ciphertext; doc §7.1) is left to the data-channel crypto.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataPacket<'a> {
    pub key_id: KeyId,
    /// `Some` for P_DATA_V2 (possibly [`NO_PEER_ID`]), `None` for P_DATA_V1.
    pub peer_id: Option<u32>,
    /// The opcode byte (V1) or the 4-byte opcode+peer-id word (V2): for V2 this is the first part
    /// of the AEAD additional data (doc §7.1).
    pub header: &'a [u8],
    /// Everything after the header; never empty.
    pub payload: &'a [u8],
}

impl DataPacket<'_> {
    pub fn opcode(&self) -> Opcode {
        if self.peer_id.is_some() {
            Opcode::DataV2
        } else {
            Opcode::DataV1
        }
    }
}

/// The header of an outgoing data packet: `0x30|kid` for V1, or the BE word
/// `((0x48|kid) << 24) | peer_id` for V2 (doc §1.5). Returns the buffer and its used length.
pub fn encode_data_header(
    key_id: KeyId,
    peer_id: Option<u32>,
) -> Result<([u8; DATA_V2_HEADER_LEN], usize), EncodeError> {
    match peer_id {
        None => Ok((
            [first_byte(Opcode::DataV1, key_id), 0, 0, 0],
            DATA_V1_HEADER_LEN,
        )),
        Some(p) if p > NO_PEER_ID => Err(EncodeError::PeerIdTooLarge(p)),
        Some(p) => {
            let word = (u32::from(first_byte(Opcode::DataV2, key_id)) << 24) | p;
            Ok((word.to_be_bytes(), DATA_V2_HEADER_LEN))
        }
    }
}

/// Any packet a 2.6 peer sends, after tls-crypt unwrapping of control packets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Packet<'a> {
    Control(ControlPacket<'a>),
    Data(DataPacket<'a>),
}

/// Decodes one UDP datagram (or one de-framed TCP packet).
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let first = *buf.first().ok_or(DecodeError::Empty)?;
    let (opcode, key_id) = split_first_byte(first)?;
    match opcode {
        Opcode::DataV1 => decode_data(buf, key_id, false).map(Packet::Data),
        Opcode::DataV2 => decode_data(buf, key_id, true).map(Packet::Data),
        _ => decode_control(buf, opcode, key_id).map(Packet::Control),
    }
}

fn decode_data(buf: &[u8], key_id: KeyId, v2: bool) -> Result<DataPacket<'_>, DecodeError> {
    let hlen = if v2 {
        DATA_V2_HEADER_LEN
    } else {
        DATA_V1_HEADER_LEN
    };
    if buf.len() < hlen {
        return Err(DecodeError::Truncated {
            field: Field::PeerId,
            len: buf.len(),
        });
    }
    let (header, payload) = buf.split_at(hlen);
    // The 2.6 client rejects data packets without payload ("missing payload", doc §7.1).
    if payload.is_empty() {
        return Err(DecodeError::Truncated {
            field: Field::DataPayload,
            len: buf.len(),
        });
    }
    let peer_id = v2.then(|| u32::from_be_bytes([0, header[1], header[2], header[3]]));
    Ok(DataPacket {
        key_id,
        peer_id,
        header,
        payload,
    })
}

fn decode_control(
    buf: &[u8],
    opcode: Opcode,
    key_id: KeyId,
) -> Result<ControlPacket<'_>, DecodeError> {
    // Size first: an oversized packet is rejected before looking at anything else (doc §2.5).
    if buf.len() > MAX_CONTROL_PACKET_LEN {
        return Err(DecodeError::OversizedControl {
            len: buf.len(),
            max: MAX_CONTROL_PACKET_LEN,
        });
    }
    if !opcode.allows_key_id(key_id) {
        return Err(DecodeError::InvalidKeyId {
            opcode,
            key_id: key_id.0,
        });
    }
    let mut r = Reader { buf, pos: 1 };
    let session_id =
        SessionId::new(r.array(Field::SessionId)?).ok_or(DecodeError::ZeroSessionId)?;
    let n = r.array::<1>(Field::AckCount)?[0];
    if usize::from(n) > MAX_ACKS {
        return Err(DecodeError::TooManyAcks(n));
    }
    let mut acks = AckArray::EMPTY;
    if n > 0 {
        for slot in acks.ids.iter_mut().take(usize::from(n)) {
            *slot = u32::from_be_bytes(r.array(Field::AckIds)?);
        }
        acks.len = n;
        // 2.6 drops a packet whose ack array lacks the receiver session id (doc §2.2).
        acks.remote_session = Some(
            SessionId::new(r.array(Field::AckSessionId)?).ok_or(DecodeError::ZeroAckSessionId)?,
        );
    }
    let message_id = if opcode.has_message_id() {
        Some(u32::from_be_bytes(r.array(Field::MessageId)?))
    } else {
        None
    };
    let payload = &buf[r.pos..];
    if opcode == Opcode::AckV1 && !payload.is_empty() {
        return Err(DecodeError::TrailingBytes(payload.len()));
    }
    Ok(ControlPacket {
        opcode,
        key_id,
        session_id,
        acks,
        message_id,
        payload,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], DecodeError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(DecodeError::Truncated {
            field,
            len: self.buf.len(),
        })?;
        let mut a = [0; N];
        a.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(a)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    /// Callers have checked the total length up front.
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

// ---------------------------------------------------------------------------------------------
// TCP framing (doc §1.1)
// ---------------------------------------------------------------------------------------------

/// A TCP stream that cannot be framed any more. OpenVPN restarts the connection in this case
/// ("Bad encapsulated packet length"); so must the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum FramingError {
    #[error("zero-length frame")]
    ZeroLength,
    #[error("frame of {len} bytes (at most {max})")]
    TooLong { len: usize, max: usize },
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall { needed: usize, available: usize },
}

/// Reassembles packets from a TCP byte stream framed by a BE u16 length. The buffer is fixed at
/// `2 + max_len` bytes, so a peer cannot make it grow; a frame longer than `max_len` (or of
/// length 0) poisons the stream for good, because the framing is lost after it.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_len: usize,
    error: Option<FramingError>,
}

impl StreamDecoder {
    /// `max_len` is clamped to 1..=65535. OpenVPN's own limit is its buffer size, about 1600 B
    /// for control packets and somewhat more for data packets (doc §1.1).
    pub fn new(max_len: usize) -> Self {
        let max_len = max_len.clamp(1, MAX_TCP_FRAME_LEN);
        Self {
            buf: vec![0; 2 + max_len].into_boxed_slice(),
            start: 0,
            end: 0,
            max_len,
            error: None,
        }
    }

    /// Copies as many bytes of `data` as fit and returns how many. Drain with
    /// [`StreamDecoder::next_packet`] and feed the rest again.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, FramingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.start > 0 {
            // Compact: at most one partial frame (≤ 2 + max_len bytes) moves.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = data.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
        Ok(n)
    }

    /// The next complete packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<&[u8]>, FramingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let avail = self.end - self.start;
        if avail < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([
            self.buf[self.start],
            self.buf[self.start + 1],
        ]));
        if len == 0 || len > self.max_len {
            let e = if len == 0 {
                FramingError::ZeroLength
            } else {
                FramingError::TooLong {
                    len,
                    max: self.max_len,
                }
            };
            self.error = Some(e);
            return Err(e);
        }
        if avail < 2 + len {
            return Ok(None);
        }
        let range = self.start + 2..self.start + 2 + len;
        self.start = range.end;
        Ok(Some(&self.buf[range]))
    }

    /// Bytes buffered but not yet returned as packets.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// Writes the 2-byte BE length and `packet` to `out`; returns the bytes written.
pub fn encode_frame(packet: &[u8], out: &mut [u8]) -> Result<usize, FramingError> {
    if packet.is_empty() {
        return Err(FramingError::ZeroLength);
    }
    let len = u16::try_from(packet.len()).map_err(|_| FramingError::TooLong {
        len: packet.len(),
        max: MAX_TCP_FRAME_LEN,
    })?;
    let needed = 2 + packet.len();
    if out.len() < needed {
        return Err(FramingError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    out[..2].copy_from_slice(&len.to_be_bytes());
    out[2..needed].copy_from_slice(packet);
    Ok(needed)
}

#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
