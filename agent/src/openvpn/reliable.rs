//! The control channel's reliability layer, one instance per key_id (protocol doc §2).
//!
//! Sans-IO: packets and `now` go in through [`Reliable::on_packet`], the TLS byte stream goes in
//! through [`Reliable::write`] and comes out through [`Reliable::read`], packets to send come out
//! of [`Reliable::poll_transmit`], and [`Reliable::poll_timeout`] says when to call again. The
//! caller wraps each transmitted packet afresh (tls-crypt needs a new replay id on every
//! retransmission, doc §11.3).
//!
//! Behaviour mirrors a 2.6 peer: selective acks, every reliable packet acked including
//! duplicates (§2.2), receive window 12 and send window 6 (§2.3), in-order delivery of the
//! concatenated P_CONTROL_V1 payloads (§2.5), retransmission after 2 s doubling, and fast
//! retransmit after 3 later acks (§2.4). Memory is bounded by the configuration whatever the peer
//! sends: at most `recv_window` out-of-order packets, about `max_recv_buffer` unread bytes, and a fixed
//! number of pending acks.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::packet::{
    max_sendable_control_len, AckArray, ControlPacket, KeyId, Opcode, SessionId,
    CONTROL_HEADER_LEN, MAX_ACKS, MAX_CONTROL_PACKET_LEN, MAX_PIGGYBACK_ACKS, SESSION_ID_LEN,
};

/// `TLS_RELIABLE_N_SEND_BUFFERS` (doc §2.3).
pub const SEND_WINDOW: usize = 6;
/// `TLS_RELIABLE_N_REC_BUFFERS` (doc §2.3).
pub const RECV_WINDOW: usize = 12;
/// `tls-timeout` (doc §2.4).
pub const INITIAL_RTO: Duration = Duration::from_secs(2);
/// The hand-window (doc §2.7): no key state lives longer without becoming active, so a longer
/// retransmit interval is never useful; it also keeps the doubling from overflowing.
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// `N_ACK_RETRANSMIT` (doc §2.4).
pub const FAST_RETRANSMIT_ACKS: u8 = 3;
/// Pending acks beyond this are dropped oldest first; the peer then retransmits and is re-acked.
/// Only a misbehaving peer (replaying many old ids between two of our transmissions) gets here.
const MAX_PENDING_ACKS: usize = 2 * RECV_WINDOW;

/// Tunables; [`Config::default`] is what a 2.6 peer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub send_window: usize,
    pub recv_window: usize,
    pub initial_rto: Duration,
    pub max_rto: Duration,
    pub fast_retransmit_acks: u8,
    /// Acks piggy-backed on reliable packets (at most 8; 2.6 sends 4, doc §2.2).
    pub piggyback_acks: usize,
    /// Acks in a P_ACK_V1 (at most 8).
    pub ack_packet_acks: usize,
    /// Largest control packet this layer emits, before any tls-crypt wrapping. The payload of a
    /// P_CONTROL_V1 is this minus the header and room for `piggyback_acks` acks.
    pub max_packet_len: usize,
    /// Bytes accepted by [`Reliable::write`] and not yet put into packets.
    pub max_send_buffer: usize,
    /// In-order bytes not yet [`Reliable::read`]. A packet that does not fit is dropped unacked,
    /// which makes the peer retransmit later (flow control); an empty buffer takes any packet.
    /// Undelivered memory is bounded by this plus `recv_window` packets of at most
    /// [`MAX_CONTROL_PACKET_LEN`] bytes.
    pub max_recv_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            send_window: SEND_WINDOW,
            recv_window: RECV_WINDOW,
            initial_rto: INITIAL_RTO,
            max_rto: MAX_RTO,
            fast_retransmit_acks: FAST_RETRANSMIT_ACKS,
            piggyback_acks: MAX_PIGGYBACK_ACKS,
            ack_packet_acks: MAX_ACKS,
            // Safe for IPv6 and tls-crypt alike (doc §2.5, §11.4); callers may raise it per path.
            max_packet_len: max_sendable_control_len(true, 40),
            max_send_buffer: 64 * 1024,
            max_recv_buffer: 64 * 1024,
        }
    }
}

impl Config {
    /// Clamps every field into a range the layer and the wire can handle.
    fn sanitized(mut self) -> Self {
        self.send_window = self.send_window.clamp(1, 64);
        self.recv_window = self.recv_window.clamp(1, 64);
        self.piggyback_acks = self.piggyback_acks.min(MAX_ACKS);
        self.ack_packet_acks = self.ack_packet_acks.clamp(1, MAX_ACKS);
        self.fast_retransmit_acks = self.fast_retransmit_acks.max(1);
        // Bounded so that `now + rto` cannot overflow an Instant in any realistic clock.
        self.max_rto = self
            .max_rto
            .clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self.initial_rto = self
            .initial_rto
            .clamp(Duration::from_millis(1), self.max_rto);
        let overhead = Self::overhead(self.piggyback_acks);
        // A full P_ACK_V1 must fit too: with few piggy-backed acks it can be the longest packet
        // (found by fuzzing: 2 acks made a 26-byte packet against a 23-byte limit).
        let ack_packet = CONTROL_HEADER_LEN + 1 + 4 * self.ack_packet_acks + SESSION_ID_LEN;
        self.max_packet_len = self
            .max_packet_len
            .clamp((overhead + 1).max(ack_packet), MAX_CONTROL_PACKET_LEN);
        self
    }

    /// Header, ack array with `acks` entries, and message id of a reliable packet.
    const fn overhead(acks: usize) -> usize {
        CONTROL_HEADER_LEN + 1 + 4 * acks + SESSION_ID_LEN + 4
    }

    pub fn max_payload(&self) -> usize {
        self.max_packet_len
            .saturating_sub(Self::overhead(self.piggyback_acks))
            .max(1)
    }
}

/// Why an incoming packet (or its message) was dropped; nothing of it is acked. Packets failing
/// the header checks change no state at all; for `OutOfWindow` and `ReceiveBufferFull` only the
/// message is refused, the packet's (authentic) acks are still taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ReliableError {
    #[error("packet for key id {got}, this state is for key id {expected}")]
    WrongKeyId { expected: u8, got: u8 },
    #[error("sender session id {got} is not the peer's {expected}")]
    WrongSessionId { expected: SessionId, got: SessionId },
    #[error("{0:?} from a peer whose session id is not known yet")]
    UnknownPeer(Opcode),
    #[error("ack array names session {got}, ours is {expected}")]
    WrongAckSessionId { expected: SessionId, got: SessionId },
    #[error("{0:?} is not a control packet")]
    NotControl(Opcode),
    #[error("{opcode:?} with message id {id}: resets are id 0 and only resets are")]
    ResetIdMismatch { opcode: Opcode, id: u32 },
    #[error("message id {id} outside the receive window starting at {next_expected}")]
    OutOfWindow { id: u32, next_expected: u64 },
    #[error("receive buffer full")]
    ReceiveBufferFull,
}

/// Why [`Reliable::queue_reset`] refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum QueueResetError {
    #[error("{0:?} is not a reset opcode")]
    NotReset(Opcode),
    #[error("a reset is message id 0, which is already used")]
    AlreadySent,
    #[error("{opcode:?} cannot start key id {key_id}")]
    InvalidKeyId { opcode: Opcode, key_id: u8 },
}

/// What an accepted packet was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// P_ACK_V1: acks only.
    AckOnly,
    /// A reliable packet seen for the first time (now acked and buffered or delivered).
    New,
    /// A reliable packet seen before: acked again, not delivered again (doc §2.2).
    Duplicate,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    opcode: Opcode,
    payload: Vec<u8>,
    rto: Duration,
    deadline: Instant,
    later_acks: u8,
}

/// Reliability state of one key_id.
#[derive(Debug)]
pub struct Reliable {
    cfg: Config,
    key_id: KeyId,
    local_session: SessionId,
    remote_session: Option<SessionId>,

    // Send side. Ids are u64 inside so that reaching 2^32 stops sending instead of wrapping.
    next_send_id: u64,
    pending_reset: Option<Opcode>,
    send_buf: VecDeque<u8>,
    in_flight: VecDeque<InFlight>,

    // Receive side. `recv_slots[i]` holds message id `next_recv_id + i`.
    next_recv_id: u64,
    recv_slots: VecDeque<Option<Vec<u8>>>,
    out_of_order_bytes: usize,
    recv_buf: VecDeque<u8>,

    pending_acks: VecDeque<u32>,
    /// Recently acked ids, newest first, re-sent to fill free ack slots as 2.6 does (§2.2), so
    /// one lost ack does not cost a retransmission.
    recent_acks: VecDeque<u32>,
}

impl Reliable {
    /// A fresh key state: both directions start at message id 0, which must be a reset
    /// ([`Reliable::queue_reset`]). `remote_session` is `None` when the peer's session id is
    /// learnt from its reset (the client side).
    pub fn new(
        cfg: Config,
        key_id: KeyId,
        local_session: SessionId,
        remote_session: Option<SessionId>,
    ) -> Self {
        let cfg = cfg.sanitized();
        let recv_slots = (0..cfg.recv_window).map(|_| None).collect();
        Self {
            key_id,
            local_session,
            remote_session,
            next_send_id: 0,
            pending_reset: None,
            send_buf: VecDeque::new(),
            in_flight: VecDeque::with_capacity(cfg.send_window),
            next_recv_id: 0,
            recv_slots,
            out_of_order_bytes: 0,
            recv_buf: VecDeque::new(),
            pending_acks: VecDeque::new(),
            recent_acks: VecDeque::with_capacity(MAX_ACKS),
            cfg,
        }
    }

    /// The server's key-0 state after a valid HMAC cookie (doc §3.3): both resets (id 0) count
    /// as exchanged, so sending and receiving continue at id 1.
    pub fn after_cookie(cfg: Config, local_session: SessionId, remote_session: SessionId) -> Self {
        let mut r = Self::new(cfg, KeyId::ZERO, local_session, Some(remote_session));
        r.next_send_id = 1;
        r.next_recv_id = 1;
        r
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn local_session(&self) -> SessionId {
        self.local_session
    }

    pub fn remote_session(&self) -> Option<SessionId> {
        self.remote_session
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Queues our reset (HARD_RESET_SERVER_V2, SOFT_RESET_V1, …) as message id 0. Stream data
    /// written earlier waits behind it.
    pub fn queue_reset(&mut self, opcode: Opcode) -> Result<(), QueueResetError> {
        if !opcode.is_reset() {
            return Err(QueueResetError::NotReset(opcode));
        }
        // The codec refuses e.g. a soft reset on key 0: it would be retransmitted unsendable.
        if !opcode.allows_key_id(self.key_id) {
            return Err(QueueResetError::InvalidKeyId {
                opcode,
                key_id: self.key_id.get(),
            });
        }
        if self.next_send_id != 0 || self.pending_reset.is_some() {
            return Err(QueueResetError::AlreadySent);
        }
        self.pending_reset = Some(opcode);
        Ok(())
    }

    /// Appends TLS ciphertext to the outgoing stream; returns how many bytes were taken (fewer
    /// than `data.len()` when the send buffer is full).
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_buffer_free());
        self.send_buf.extend(&data[..n]);
        n
    }

    pub fn send_buffer_free(&self) -> usize {
        self.cfg.max_send_buffer.saturating_sub(self.send_buf.len())
    }

    /// Takes in-order received stream bytes; returns how many were copied.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.recv_buf.len());
        for (o, b) in out.iter_mut().zip(self.recv_buf.drain(..n)) {
            *o = b;
        }
        n
    }

    /// In-order stream bytes ready for [`Reliable::read`].
    pub fn readable(&self) -> usize {
        self.recv_buf.len()
    }

    /// Whether our message `id` has been sent and acknowledged.
    pub fn is_acked(&self, id: u32) -> bool {
        let id = u64::from(id);
        id < self.next_send_id && !self.in_flight.iter().any(|p| p.id == id)
    }

    /// Everything written or queued has been sent and acknowledged: the SENT_KEY → ACTIVE
    /// condition of doc §3.2.
    pub fn all_acked(&self) -> bool {
        self.pending_reset.is_none() && self.send_buf.is_empty() && self.in_flight.is_empty()
    }

    /// The peer's reset (message id 0) has arrived.
    pub fn peer_reset_received(&self) -> bool {
        self.next_recv_id > 0
    }

    /// The next message id the peer is expected to send in order.
    pub fn next_expected_id(&self) -> u64 {
        self.next_recv_id
    }

    /// Message ids are exhausted (2^32 sent): the key state must be renegotiated. Unreachable in
    /// practice; here so that it stops instead of wrapping.
    pub fn send_ids_exhausted(&self) -> bool {
        self.next_send_id > u64::from(u32::MAX)
    }

    /// Processes one decoded control packet for this key_id. The caller has already checked
    /// (or unwrapped) tls-crypt; session demultiplexing by address is also the caller's.
    pub fn on_packet(
        &mut self,
        pkt: &ControlPacket<'_>,
        now: Instant,
    ) -> Result<Received, ReliableError> {
        self.check(pkt)?;
        if self.remote_session.is_none() {
            self.remote_session = Some(pkt.session_id);
        }
        self.process_acks(pkt.acks.ids(), now);

        let Some(mid) = pkt.message_id else {
            return Ok(Received::AckOnly);
        };
        let id = u64::from(mid);
        if id < self.next_recv_id {
            // Already delivered: ack again, even a replay, or the peer retransmits until the
            // hand-window expires (doc §2.2).
            self.queue_ack(mid);
            return Ok(Received::Duplicate);
        }
        // Out of the window: drop without ack, as 2.6 does (doc §2.3). `id - next` cannot
        // underflow here, and u64 cannot overflow for u32 ids.
        let offset = id - self.next_recv_id;
        if offset >= self.recv_slots.len() as u64 {
            return Err(ReliableError::OutOfWindow {
                id: mid,
                next_expected: self.next_recv_id,
            });
        }
        let offset = offset as usize;
        if self.recv_slots[offset].is_some() {
            self.queue_ack(mid);
            return Ok(Received::Duplicate);
        }
        // Reset payloads are early-negotiation TLVs for the session (§3.4), not TLS bytes.
        let stream = if pkt.opcode.is_reset() {
            &[][..]
        } else {
            pkt.payload
        };
        // Flow control on what the application has not read yet. Out-of-order bytes are not
        // counted: the window already bounds them, and counting them could starve the one
        // in-order packet that would let everything drain.
        // An empty buffer takes any packet, or one larger than the whole buffer would be
        // refused for ever (found by fuzzing: a 207-byte buffer deadlocked).
        if !self.recv_buf.is_empty()
            && self.recv_buf.len() + stream.len() > self.cfg.max_recv_buffer
        {
            return Err(ReliableError::ReceiveBufferFull);
        }
        self.recv_slots[offset] = Some(stream.to_vec());
        self.out_of_order_bytes += stream.len();
        self.queue_ack(mid);
        self.deliver_in_order();
        Ok(Received::New)
    }

    /// All checks that make a packet not ours; nothing is changed before they pass.
    fn check(&self, pkt: &ControlPacket<'_>) -> Result<(), ReliableError> {
        if !pkt.opcode.is_control() {
            return Err(ReliableError::NotControl(pkt.opcode));
        }
        if pkt.key_id != self.key_id {
            return Err(ReliableError::WrongKeyId {
                expected: self.key_id.get(),
                got: pkt.key_id.get(),
            });
        }
        match self.remote_session {
            Some(expected) if expected != pkt.session_id => {
                return Err(ReliableError::WrongSessionId {
                    expected,
                    got: pkt.session_id,
                })
            }
            // The peer's session id is learnt from its reset only.
            None if !pkt.opcode.is_reset() => return Err(ReliableError::UnknownPeer(pkt.opcode)),
            _ => {}
        }
        // 2.6 drops the whole packet when the ack array names another session (doc §2.2).
        if let Some(got) = pkt.acks.remote_session() {
            if got != self.local_session {
                return Err(ReliableError::WrongAckSessionId {
                    expected: self.local_session,
                    got,
                });
            }
        }
        if let Some(id) = pkt.message_id {
            if pkt.opcode.is_reset() != (id == 0) {
                return Err(ReliableError::ResetIdMismatch {
                    opcode: pkt.opcode,
                    id,
                });
            }
        }
        Ok(())
    }

    fn process_acks(&mut self, ids: &[u32], now: Instant) {
        for &id in ids {
            // Acks for ids never sent or already acked are ignored (doc §2.2): no state grows.
            let id = u64::from(id);
            let Some(i) = self.in_flight.iter().position(|p| p.id == id) else {
                continue;
            };
            self.in_flight.remove(i);
            for p in self.in_flight.iter_mut().filter(|p| p.id < id) {
                p.later_acks = p.later_acks.saturating_add(1);
                if p.later_acks >= self.cfg.fast_retransmit_acks {
                    // Fast retransmit (doc §2.4): due now.
                    p.deadline = p.deadline.min(now);
                    p.later_acks = 0;
                }
            }
        }
    }

    fn queue_ack(&mut self, id: u32) {
        if self.pending_acks.contains(&id) {
            return;
        }
        if self.pending_acks.len() >= MAX_PENDING_ACKS {
            self.pending_acks.pop_front();
        }
        self.pending_acks.push_back(id);
    }

    fn deliver_in_order(&mut self) {
        while let Some(Some(_)) = self.recv_slots.front() {
            let Some(Some(bytes)) = self.recv_slots.pop_front() else {
                break;
            };
            self.recv_slots.push_back(None);
            self.out_of_order_bytes -= bytes.len();
            self.recv_buf.extend(bytes);
            self.next_recv_id += 1;
        }
    }

    /// Builds an ack array of at most `max` ids: pending acks first, then recent ones.
    fn take_acks(&mut self, max: usize) -> AckArray {
        let Some(remote) = self.remote_session else {
            return AckArray::EMPTY;
        };
        let max = max.min(MAX_ACKS);
        let mut ids = [0u32; MAX_ACKS];
        let mut n = 0;
        while n < max {
            let Some(id) = self.pending_acks.pop_front() else {
                break;
            };
            ids[n] = id;
            n += 1;
            self.recent_acks.retain(|&r| r != id);
            if self.recent_acks.len() >= MAX_ACKS {
                self.recent_acks.pop_back();
            }
            self.recent_acks.push_front(id);
        }
        for &id in &self.recent_acks {
            if n >= max {
                break;
            }
            if !ids[..n].contains(&id) {
                ids[n] = id;
                n += 1;
            }
        }
        if n == 0 {
            AckArray::EMPTY
        } else {
            AckArray::new(&ids[..n], remote).unwrap_or(AckArray::EMPTY)
        }
    }

    fn can_send_new(&self) -> bool {
        let lowest_unacked = self.in_flight.front().map_or(self.next_send_id, |p| p.id);
        !self.send_ids_exhausted()
            && self.in_flight.len() < self.cfg.send_window
            && self.next_send_id < lowest_unacked + self.cfg.send_window as u64
            // Id 0 is the reset: no stream data may take it.
            && (self.pending_reset.is_some()
                || (self.next_send_id > 0 && !self.send_buf.is_empty()))
    }

    /// The next packet to send, if any: a due retransmission first, then new data (within the
    /// send window), then a bare P_ACK_V1 for acks that could not be piggy-backed. Call it until
    /// it returns `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ControlPacket<'_>> {
        // Lowest id first: the peer delivers in order, so the oldest gap matters most.
        if let Some(i) = self.in_flight.iter().position(|p| p.deadline <= now) {
            let acks = self.take_acks(self.cfg.piggyback_acks);
            let max_rto = self.cfg.max_rto;
            let p = &mut self.in_flight[i];
            p.rto = p.rto.saturating_mul(2).min(max_rto);
            p.deadline = later(now, p.rto);
            p.later_acks = 0;
            return Some(self.reliable_packet(i, acks));
        }
        if self.can_send_new() {
            let (opcode, payload) = match self.pending_reset.take() {
                Some(op) => (op, Vec::new()),
                None => {
                    let n = self.send_buf.len().min(self.cfg.max_payload());
                    (Opcode::ControlV1, self.send_buf.drain(..n).collect())
                }
            };
            let acks = self.take_acks(self.cfg.piggyback_acks);
            self.in_flight.push_back(InFlight {
                id: self.next_send_id,
                opcode,
                payload,
                rto: self.cfg.initial_rto,
                deadline: later(now, self.cfg.initial_rto),
                later_acks: 0,
            });
            self.next_send_id += 1;
            return Some(self.reliable_packet(self.in_flight.len() - 1, acks));
        }
        if !self.pending_acks.is_empty() && self.remote_session.is_some() {
            let acks = self.take_acks(self.cfg.ack_packet_acks);
            return Some(ControlPacket {
                opcode: Opcode::AckV1,
                key_id: self.key_id,
                session_id: self.local_session,
                acks,
                message_id: None,
                payload: &[],
            });
        }
        None
    }

    fn reliable_packet(&self, i: usize, acks: AckArray) -> ControlPacket<'_> {
        let p = &self.in_flight[i];
        ControlPacket {
            opcode: p.opcode,
            key_id: self.key_id,
            session_id: self.local_session,
            acks,
            // In-flight ids are < 2^32 (checked by `can_send_new`).
            message_id: Some(p.id as u32),
            payload: &p.payload,
        }
    }

    /// When the next retransmission is due. Pending acks and unsent data are due immediately
    /// and are not reflected here: drain [`Reliable::poll_transmit`] first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.iter().map(|p| p.deadline).min()
    }
}

/// `now + d`, saturating instead of panicking at the end of the clock's range.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// `read_tls`-friendly: `WouldBlock` rather than `Ok(0)` when empty, since rustls takes `Ok(0)`
/// for end of stream.
impl io::Read for Reliable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.recv_buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Reliable::read(self, buf))
    }
}

/// `write_tls`-friendly: `WouldBlock` when the send buffer is full.
impl io::Write for Reliable {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.send_buffer_free() == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Reliable::write(self, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "reliable_tests.rs"]
mod tests;
