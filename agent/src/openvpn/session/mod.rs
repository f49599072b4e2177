//! One client's OpenVPN session, server side, sans-IO: raw control packets and `now` in,
//! wire packets, events and a timer out (protocol doc §3.2 state machine, §8 control
//! messages, §9 renegotiation and keepalive).
//!
//! A session owns one key state per live key id: the reliability layer, a rustls
//! `ServerConnection` (a new full TLS session per key id, §4.1) and the key-method-2
//! exchange. When a key state becomes active and the client is authorized, its data keys go
//! into the shared [`DataPeer`], which the packet workers use; the session keeps only what its
//! timers need. Authentication is a separate step ([`Session::authorize`]) so that a directory
//! lookup can run asynchronously between the key exchange and the push.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::crypto::{Cipher, DataFormat};
use super::env::Rng;
use super::keys::{KeyBlock, PrfInputs};
use super::options::{protocol_flags_option, KeyDerivation, PeerInfo, PushReply};
use super::packet::{
    decode, split_first_byte, ControlPacket, KeyId, Opcode, Packet, Role, SessionId,
    MAX_CONTROL_PACKET_LEN,
};
use super::peer::DataPeer;
use super::reliable::Reliable;
use super::tls::ClientIdentity;
use super::tls_crypt::{TlsCryptKey, TlsCryptSession};
use super::tls_crypt_v2::split_wkc;
// The vocabulary shared with authentication lives in `verdict`; re-exported for the callers
// that name it through the session.
pub use super::verdict::{AuthRequest, CloseReason, FailureCode, Refusal, TEMPORARY_BACKOFF_SECS};

mod config;
mod key_state;

pub use config::{Renegotiation, SessionConfig, TlsProvider, CLIENT_RENEG_BURST};
use key_state::{pump_tls, step_key, write_message, Auth, KeyState, Negotiated, Phase};

#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Decide with [`Session::authorize`].
    Authenticate(Box<AuthRequest>),
    /// Key 0 is active, authorized and the push went out: the client is connected.
    Established {
        cipher: Cipher,
        tls_version: String,
        peer_info: PeerInfo,
    },
    /// A renegotiated key is in use.
    Rekeyed { key_id: KeyId },
    /// A control message we do not act on (logged by the caller).
    Message(String),
    /// The session is over; the caller removes it after draining transmits.
    Closed(CloseReason),
}

/// Where the session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    /// Refused or shutting down: still transmitting (AUTH_FAILED, RESTART) until `until`.
    Closing {
        until: Instant,
    },
    Closed,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    /// Key-method-2 randoms.
    rng: Rng,
    tls_provider: Arc<dyn TlsProvider>,
    local: SessionId,
    remote: SessionId,
    wrap: Option<(Arc<TlsCryptKey>, TlsCryptSession)>,
    primary: KeyState,
    /// A renegotiation in progress (its key id is `primary.id.next()`).
    pending: Option<KeyState>,
    negotiated: Option<Negotiated>,
    push: Option<Vec<String>>,
    pushed: bool,
    established: bool,
    peer: Arc<DataPeer>,
    life: Life,
    events: VecDeque<SessionEvent>,
    /// Encoded, wrapped packets ready for the wire (control packets and pings).
    out: VecDeque<Vec<u8>>,
    created: Instant,
    /// Last renegotiation start, for `reneg.interval`; counters at that moment.
    reneg_base: (Instant, u64, u64),
    /// Lame duck decrypt key expiry, if one exists.
    lame_duck_until: Option<Instant>,
    /// Client-initiated renegotiations still allowed now, and when that was counted.
    reneg_credit: (u32, Instant),
    pending_close: Option<CloseReason>,
    /// Closing after a RESTART/HALT: end as soon as the client acked it (instead of waiting
    /// out the linger), so a stopping server does not hold its clients for long.
    close_on_ack: bool,
}

/// How a session starts.
pub enum Start<'a> {
    /// The client's HARD_RESET_CLIENT_V2 (stateful handshake, TCP): we queue our reset.
    Reset(&'a ControlPacket<'a>),
    /// A verified HMAC cookie (UDP): both resets count as exchanged (doc §3.3).
    Cookie {
        client: SessionId,
        server: SessionId,
    },
}

impl Session {
    /// `wrap`: the tls-crypt key and this session's wrapping state (replay ids continue after
    /// the stateless reset on the cookie path). `peer` carries the data channel. `rng` makes
    /// our session id on the stateful path and the key-method-2 randoms.
    pub fn new(
        cfg: Arc<SessionConfig>,
        tls_provider: Arc<dyn TlsProvider>,
        start: Start<'_>,
        wrap: Option<(Arc<TlsCryptKey>, TlsCryptSession)>,
        peer: Arc<DataPeer>,
        rng: Rng,
        now: Instant,
    ) -> Result<Session, CloseReason> {
        let tls = ServerConnection::new(tls_provider.server_config())
            .map_err(|e| CloseReason::TlsError(e.to_string()))?;
        let (reliable, remote) = match start {
            Start::Cookie { client, server } => (
                Reliable::after_cookie(cfg.reliable.clone(), server, client),
                client,
            ),
            Start::Reset(pkt) => {
                let mut sid = [0u8; 8];
                rng.fill(&mut sid)
                    .map_err(|_| CloseReason::Server("no randomness".into()))?;
                sid[0] |= 1;
                let local = SessionId::new(sid).expect("non-zero");
                let mut r = Reliable::new(cfg.reliable.clone(), KeyId::ZERO, local, None);
                r.on_packet(pkt, now)
                    .map_err(|e| CloseReason::ProtocolError(e.to_string()))?;
                r.queue_reset(Opcode::HardResetServerV2)
                    .map_err(|e| CloseReason::ProtocolError(e.to_string()))?;
                (r, pkt.session_id)
            }
        };
        let local = reliable.local_session();
        peer.touch_rx(now);
        let mut s = Session {
            primary: KeyState::new(KeyId::ZERO, reliable, tls, now),
            cfg,
            rng,
            tls_provider,
            local,
            remote,
            wrap,
            pending: None,
            negotiated: None,
            push: None,
            pushed: false,
            established: false,
            peer,
            life: Life::Running,
            events: VecDeque::new(),
            out: VecDeque::new(),
            created: now,
            reneg_base: (now, 0, 0),
            lame_duck_until: None,
            reneg_credit: (CLIENT_RENEG_BURST, now),
            pending_close: None,
            close_on_ack: false,
        };
        // The stateful path has our reset queued: it goes out now.
        s.flush(now);
        Ok(s)
    }

    pub fn local_session(&self) -> SessionId {
        self.local
    }

    pub fn remote_session(&self) -> SessionId {
        self.remote
    }

    pub fn peer(&self) -> &Arc<DataPeer> {
        &self.peer
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    pub fn is_closed(&self) -> bool {
        self.life == Life::Closed
    }

    pub fn common_name(&self) -> Option<&str> {
        self.negotiated.as_ref().map(|n| n.common_name.as_str())
    }

    /// The user name the client sent in key-method 2, once that message was read (None when
    /// empty): failed attempts are logged with the name that was tried.
    pub fn username(&self) -> Option<&str> {
        self.negotiated
            .as_ref()
            .map(|n| n.username.as_str())
            .or_else(|| self.primary.client_km.as_ref().map(|k| k.username.as_str()))
            .filter(|u| !u.is_empty())
    }

    /// The server pushes a session token with `auth-token-user <name>`: renegotiations may
    /// send `name` (the user the authenticator admitted) instead of key 0's user name.
    pub fn allow_token_user(&mut self, name: &str) {
        if let Some(n) = self.negotiated.as_mut() {
            n.token_user = Some(name.to_owned());
        }
    }

    /// The client certificate's identity (from key 0).
    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.negotiated.as_ref().map(|n| &n.identity)
    }

    pub fn cipher(&self) -> Option<Cipher> {
        self.negotiated.as_ref().map(|n| n.cipher)
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// A raw control packet from the client's address (tls-crypt wrapped if configured).
    /// Returns false when the packet was not for this session or failed a check; such packets
    /// change nothing.
    pub fn on_control(&mut self, raw: &[u8], now: Instant) -> bool {
        if self.life == Life::Closed {
            return false;
        }
        // A tls-crypt-v2 client's P_CONTROL_WKC_V1 carries its wrapped key again (its
        // retransmission can reach the session): the key is already ours, and the packet in
        // front of it is authenticated with it, so the trailing copy is dropped unread.
        let raw = match raw.first().map(|b| split_first_byte(*b)) {
            Some(Ok((Opcode::ControlWkcV1, _))) => match split_wkc(raw) {
                Ok((wrapped, _)) => wrapped,
                Err(_) => return false,
            },
            _ => raw,
        };
        let mut buf = [0u8; MAX_CONTROL_PACKET_LEN];
        let plain: &[u8] = match &mut self.wrap {
            Some((key, st)) => match st.unwrap(key, raw, &mut buf, now) {
                Ok(u) => u.packet,
                Err(_) => return false,
            },
            None => raw,
        };
        let Ok(Packet::Control(pkt)) = decode(plain) else {
            return false;
        };
        if pkt.session_id != self.remote {
            return false;
        }
        let ok = self.dispatch(&pkt, now);
        if ok {
            self.peer.touch_rx(now);
            self.drive(now);
        }
        ok
    }

    fn dispatch(&mut self, pkt: &ControlPacket<'_>, now: Instant) -> bool {
        // Includes a retransmitted SOFT_RESET of the current key: re-acked as a duplicate.
        if pkt.key_id == self.primary.id {
            return self.primary.reliable.on_packet(pkt, now).is_ok();
        }
        if let Some(p) = &mut self.pending {
            if pkt.key_id == p.id {
                return p.reliable.on_packet(pkt, now).is_ok();
            }
        }
        // A client-initiated renegotiation: a SOFT_RESET for our next key id, accepted only
        // once the current key is fully established (doc §9.2).
        if pkt.opcode == Opcode::SoftResetV1
            && self.pending.is_none()
            && pkt.key_id == self.primary.id.next()
            && self.primary.phase == Phase::Active
            && self.established
            && self.life == Life::Running
            && self.take_reneg_credit(now)
        {
            let Ok(mut ks) = self.new_key_state(pkt.key_id, now) else {
                return false;
            };
            if ks.reliable.on_packet(pkt, now).is_err() {
                return false;
            }
            let _ = ks.reliable.queue_reset(Opcode::SoftResetV1);
            self.pending = Some(ks);
            return true;
        }
        false
    }

    /// One client-initiated renegotiation from the bucket (refilled one per interval); the
    /// client's SOFT_RESET is ignored while it is empty, and its retransmission is taken later.
    fn take_reneg_credit(&mut self, now: Instant) -> bool {
        let interval = self.cfg.client_reneg_interval;
        if interval.is_zero() {
            return true;
        }
        let (mut credit, mut since) = self.reneg_credit;
        let earned = now.saturating_duration_since(since).as_nanos() / interval.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if credit.saturating_add(earned) >= CLIENT_RENEG_BURST {
            (credit, since) = (CLIENT_RENEG_BURST, now);
        } else {
            credit += earned;
            since += interval * earned;
        }
        if credit == 0 {
            self.reneg_credit = (credit, since);
            return false;
        }
        self.reneg_credit = (credit - 1, since);
        true
    }

    fn new_key_state(&self, id: KeyId, now: Instant) -> Result<KeyState, CloseReason> {
        let tls = ServerConnection::new(self.tls_provider.server_config())
            .map_err(|e| CloseReason::TlsError(e.to_string()))?;
        let reliable = Reliable::new(self.cfg.reliable.clone(), id, self.local, Some(self.remote));
        Ok(KeyState::new(id, reliable, tls, now))
    }

    /// Starts a server-initiated renegotiation now (timer, byte/packet limits, or the
    /// operator). No-op while one is running or before the session is established.
    pub fn renegotiate(&mut self, now: Instant) {
        if self.pending.is_some() || !self.established || self.life != Life::Running {
            return;
        }
        let id = self.primary.id.next();
        if let Ok(mut ks) = self.new_key_state(id, now) {
            let _ = ks.reliable.queue_reset(Opcode::SoftResetV1);
            self.pending = Some(ks);
            let (bytes, packets) = self.peer.counters.totals();
            self.reneg_base = (now, bytes, packets);
            self.drive(now);
        }
    }

    /// The server's verdict on an [`SessionEvent::Authenticate`]. For key 0, `push` are the
    /// options of the PUSH_REPLY without the ones the session negotiates itself (`peer-id`,
    /// `cipher`, protocol flags, ping), see [`PushReply`]; use [`Session::push_reply`] to
    /// build them.
    pub fn authorize(
        &mut self,
        key_id: KeyId,
        verdict: Result<Vec<String>, Refusal>,
        now: Instant,
    ) {
        let ks = if self.primary.id == key_id {
            &mut self.primary
        } else {
            match &mut self.pending {
                Some(p) if p.id == key_id => p,
                _ => return,
            }
        };
        if ks.auth != Auth::Pending {
            return;
        }
        match verdict {
            Ok(push) => {
                ks.auth = Auth::Accepted;
                if key_id == KeyId::ZERO || self.push.is_none() {
                    self.push = Some(push);
                } else {
                    // After a renegotiation: what the verdict adds (a renewed auth-token) goes
                    // on the new key's channel, as the 2.6 server sends it.
                    for m in &push {
                        let _ = write_message(&mut ks.tls, m);
                    }
                }
            }
            Err(reason) => {
                ks.auth = Auth::Refused;
                let msg = if reason.temporary {
                    super::options::auth_failed_temp(
                        self.negotiated
                            .as_ref()
                            .map(|n| n.peer_info.proto)
                            .unwrap_or_default(),
                        Some(TEMPORARY_BACKOFF_SECS),
                        &reason.message,
                    )
                } else {
                    super::options::auth_failed(Some(&reason.message))
                };
                let _ = write_message(&mut ks.tls, &msg);
                self.close_after(
                    now + self.cfg.auth_failed_linger,
                    CloseReason::AuthFailed(reason),
                );
            }
        }
        self.drive(now);
    }

    /// Authentication continues out of band (a web login, doc §8.2): tells the client to keep
    /// waiting `timeout` for the verdict (`AUTH_PENDING,timeout N`, or bare `AUTH_PENDING`
    /// for a client without IV_PROTO bit 4) and sends it `INFO_PRE,<info>` (for example
    /// `WEB_AUTH::<url>`). Only for a key whose verdict is still pending; nothing is pushed or
    /// installed before [`Session::authorize`].
    pub fn auth_pending(&mut self, key_id: KeyId, timeout: Duration, info: &str, now: Instant) {
        let proto = self
            .negotiated
            .as_ref()
            .map(|n| n.peer_info.proto)
            .unwrap_or_default();
        let ks = if self.primary.id == key_id {
            &mut self.primary
        } else {
            match &mut self.pending {
                Some(p) if p.id == key_id => p,
                _ => return,
            }
        };
        if ks.auth != Auth::Pending || ks.phase == Phase::Handshake || self.life != Life::Running {
            return;
        }
        let _ = write_message(
            &mut ks.tls,
            &super::options::auth_pending(proto, timeout.as_secs()),
        );
        let _ = write_message(&mut ks.tls, &format!("INFO_PRE,{info}"));
        self.drive(now);
    }

    /// The PUSH_REPLY for this session, with the negotiated cipher, peer-id, key-derivation
    /// flags and keepalive filled in. `base` carries routes, DNS, address, timeouts.
    pub fn push_reply(&self, mut base: PushReply) -> Option<PushReply> {
        let n = self.negotiated.as_ref()?;
        base.cipher = n.cipher;
        base.peer_id = n.peer_info.proto.data_v2().then_some(self.peer.peer_id);
        base.protocol_flags = protocol_flags_option(n.peer_info.proto, n.derivation);
        base.ping = self.cfg.ping.as_secs() as u32;
        base.ping_restart = self.cfg.ping_restart.as_secs() as u32;
        base.tun_mtu = n.peer_info.mtu().map(|_| 1500);
        if let Some(max) = self.cfg.max_session {
            base.session_timeout = Some(max.as_secs().min(u64::from(u32::MAX)) as u32);
        }
        Some(base)
    }

    /// Tells the client to reconnect (server shutdown or restart, doc §8.4) and closes after a
    /// short linger.
    pub fn shutdown(&mut self, message: &str, reason: CloseReason, now: Instant) {
        if self.life != Life::Running {
            return;
        }
        if self.primary.phase == Phase::Active {
            let _ = write_message(&mut self.primary.tls, message);
        }
        self.close_after(now + Duration::from_secs(2), reason);
        self.close_on_ack = true;
        self.drive(now);
    }

    /// Tells the client `message` (`HALT,…`) once, best effort, and ends the session now: for
    /// cuts that must not wait for an acknowledgement (an operator's terminate).
    pub fn halt_now(&mut self, message: &str, reason: CloseReason, now: Instant) {
        if self.life == Life::Closed {
            return;
        }
        if self.primary.phase == Phase::Active {
            let _ = write_message(&mut self.primary.tls, message);
        }
        self.drive(now);
        self.kill(reason);
    }

    /// Ends the session now, without notifying the client.
    pub fn kill(&mut self, reason: CloseReason) {
        if self.life != Life::Closed {
            self.life = Life::Closed;
            self.peer.close();
            self.events.push_back(SessionEvent::Closed(reason));
        }
    }

    /// OCC_EXIT seen on the data channel (by a worker).
    pub fn client_exit(&mut self) {
        self.kill(CloseReason::ClientExit);
    }

    fn close_after(&mut self, until: Instant, reason: CloseReason) {
        if self.life == Life::Running {
            self.life = Life::Closing { until };
            self.pending_close = Some(reason);
        }
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The next packet for the client's address.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.life {
            Life::Closed => return,
            Life::Closing { until } if now >= until => {
                let reason = self
                    .pending_close
                    .take()
                    .unwrap_or(CloseReason::Server("closing".into()));
                self.kill(reason);
                return;
            }
            _ => {}
        }
        if let Some(max) = self.cfg.max_session {
            if self.life == Life::Running && now.saturating_duration_since(self.created) >= max {
                // The client is told to reconnect (and re-authenticate), as AWS does.
                let msg = if self.cfg.halt_on_session_timeout {
                    "HALT,session timeout"
                } else {
                    "RESTART"
                };
                self.shutdown(msg, CloseReason::SessionTimeout, now);
                return;
            }
        }
        let last_rx = self.peer.last_rx().unwrap_or(self.created);
        if now.saturating_duration_since(last_rx) >= self.cfg.ping_restart * 2 {
            self.kill(CloseReason::PingTimeout);
            return;
        }
        if self.primary.phase != Phase::Active
            && now.saturating_duration_since(self.primary.started) >= self.cfg.hand_window
        {
            self.kill(CloseReason::HandshakeTimeout);
            return;
        }
        if let Some(p) = &self.pending {
            if now.saturating_duration_since(p.started) >= self.cfg.hand_window {
                // A failed renegotiation ends the session: the old key would expire anyway.
                self.kill(CloseReason::HandshakeTimeout);
                return;
            }
        }
        if let Some(until) = self.lame_duck_until {
            if now >= until {
                self.lame_duck_until = self.peer.expire_lame_duck(now);
            }
        }
        if self.established && self.life == Life::Running && self.pending.is_none() {
            let (bytes, packets) = self.peer.counters.totals();
            let bytes = bytes - self.reneg_base.1;
            let packets = packets - self.reneg_base.2;
            let r = &self.cfg.reneg;
            let due = r
                .interval
                .is_some_and(|i| now.saturating_duration_since(self.reneg_base.0) >= i)
                || r.bytes.is_some_and(|b| bytes >= b)
                || r.packets.is_some_and(|p| packets >= p)
                || self.peer.send_key_exhausted();
            if due {
                self.renegotiate(now);
            }
        }
        if self.peer.has_keys() {
            let last_tx = self.peer.last_tx().unwrap_or(self.created);
            if now.saturating_duration_since(last_tx) >= self.cfg.ping {
                if let Ok(p) = self.peer.ping_packet(now) {
                    self.out.push_back(p);
                }
            }
        }
        self.drive(now);
    }

    /// The next deadline; `now` is the time of the input that was just handled.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.life == Life::Closed {
            return None;
        }
        let mut t: Vec<Instant> = Vec::with_capacity(8);
        if let Life::Closing { until } = self.life {
            t.push(until);
        }
        t.push(self.peer.last_rx().unwrap_or(self.created) + self.cfg.ping_restart * 2);
        if let (Some(max), Life::Running) = (self.cfg.max_session, self.life) {
            t.push(self.created + max);
        }
        if self.primary.phase != Phase::Active {
            t.push(self.primary.started + self.cfg.hand_window);
        }
        t.extend(self.primary.reliable.poll_timeout());
        if let Some(p) = &self.pending {
            t.push(p.started + self.cfg.hand_window);
            t.extend(p.reliable.poll_timeout());
        }
        t.extend(self.lame_duck_until);
        // Only a running session renegotiates (see handle_timeout): a closing one must not
        // report a due renegotiation, or the server would be woken for it again and again.
        if self.established && self.life == Life::Running && self.pending.is_none() {
            if let Some(i) = self.cfg.reneg.interval {
                t.push(self.reneg_base.0 + i);
            }
            if self.cfg.reneg.bytes.is_some() || self.cfg.reneg.packets.is_some() {
                // Counters move without telling us: look again every second.
                t.push(now + Duration::from_secs(1));
            }
        }
        if self.peer.has_keys() {
            t.push(self.peer.last_tx().unwrap_or(self.created) + self.cfg.ping);
        }
        t.into_iter().min()
    }

    /// Moves everything forward after an input: TLS in and out, key-method-2, activation,
    /// pushes, and the packets that result.
    fn drive(&mut self, now: Instant) {
        if self.life == Life::Closed {
            return;
        }
        if let Err(reason) = self.drive_key(false, now) {
            self.fail(reason, now);
            return;
        }
        if self.pending.is_some() {
            if let Err(reason) = self.drive_key(true, now) {
                self.fail(reason, now);
                return;
            }
            self.maybe_promote(now);
        }
        self.flush(now);
        if self.close_on_ack
            && matches!(self.life, Life::Closing { .. })
            && self.primary.reliable.all_acked()
            && !self.primary.tls.wants_write()
        {
            let reason = self
                .pending_close
                .take()
                .unwrap_or(CloseReason::Server("closing".into()));
            self.kill(reason);
        }
    }

    fn fail(&mut self, reason: CloseReason, now: Instant) {
        // Whatever TLS queued (an alert) still goes out.
        self.flush(now);
        self.kill(reason);
    }

    fn drive_key(&mut self, pending: bool, now: Instant) -> Result<(), CloseReason> {
        let cfg = self.cfg.clone();
        let prior = self.negotiated.clone();
        let ks = if pending {
            self.pending.as_mut().expect("checked")
        } else {
            &mut self.primary
        };
        let step = step_key(ks, &cfg, prior.as_ref(), &*self.rng)?;
        let needs_rx =
            ks.phase != Phase::Handshake && ks.auth == Auth::Accepted && !ks.rx_installed;
        let needs_tx = ks.phase == Phase::Active && ks.auth == Auth::Accepted && !ks.tx_installed;
        if self.negotiated.is_none() {
            self.negotiated = step.negotiated;
        }
        if let Some(reason) = step.refused {
            self.close_after(
                now + cfg.auth_failed_linger,
                CloseReason::AuthFailed(reason),
            );
        }
        if let Some(req) = step.authenticate {
            self.events.push_back(SessionEvent::Authenticate(req));
        }
        for m in step.messages {
            match m.as_str() {
                // Pushed once per session, as soon as authorized (doc §8.2).
                "PUSH_REQUEST" => {}
                "EXIT" => {
                    self.kill(CloseReason::ClientExit);
                    return Ok(());
                }
                _ => self.events.push_back(SessionEvent::Message(m)),
            }
        }
        if needs_rx {
            self.install_keys(pending, now)?;
        }
        if needs_tx {
            self.activate_send_key(pending)?;
            if !pending {
                self.send_push(now)?;
            }
        }
        Ok(())
    }

    fn activate_send_key(&mut self, pending: bool) -> Result<(), CloseReason> {
        let ks = if pending {
            self.pending.as_mut().expect("checked")
        } else {
            &mut self.primary
        };
        let Some((keys, format)) = &ks.data_keys else {
            return Err(CloseReason::ProtocolError(
                "send key before receive key".into(),
            ));
        };
        self.peer
            .install_send(ks.id.get(), keys, *format)
            .map_err(|e| CloseReason::ProtocolError(e.to_string()))?;
        ks.tx_installed = true;
        Ok(())
    }

    fn install_keys(&mut self, pending: bool, now: Instant) -> Result<(), CloseReason> {
        let n = self
            .negotiated
            .clone()
            .ok_or_else(|| CloseReason::ProtocolError("keys before negotiation".into()))?;
        let (local, remote) = (self.local, self.remote);
        let ks = if pending {
            self.pending.as_mut().expect("checked")
        } else {
            &mut self.primary
        };
        let block = match n.derivation {
            KeyDerivation::TlsEkm => KeyBlock::from_ekm(|out, label, ctx| {
                ks.tls.export_keying_material(out, label, ctx).map(|_| ())
            })
            .map_err(|e| CloseReason::TlsError(format!("keying material export: {e}")))?,
            KeyDerivation::LegacyPrf => {
                let (Some(c), Some(s)) = (&ks.client_km, &ks.server_km) else {
                    return Err(CloseReason::ProtocolError("key exchange incomplete".into()));
                };
                KeyBlock::from_prf(&PrfInputs {
                    client: &c.key_source,
                    server_random1: &s.random1,
                    server_random2: &s.random2,
                    client_session_id: remote.as_bytes(),
                    server_session_id: local.as_bytes(),
                })
            }
        };
        let keys = block.data_keys(n.cipher, Role::Server);
        let format = if n.peer_info.proto.data_v2() {
            DataFormat::V2 {
                peer_id: self.peer.peer_id,
            }
        } else {
            DataFormat::V1
        };
        let until = now + self.cfg.transition_window;
        self.peer
            .install_recv(ks.id.get(), &keys, until)
            .map_err(|e| CloseReason::ProtocolError(e.to_string()))?;
        ks.data_keys = Some((keys, format));
        ks.rx_installed = true;
        if pending {
            self.lame_duck_until = Some(until);
        }
        Ok(())
    }

    fn send_push(&mut self, _now: Instant) -> Result<(), CloseReason> {
        if self.pushed {
            return Ok(());
        }
        let Some(messages) = self.push.clone() else {
            return Ok(());
        };
        for m in &messages {
            write_message(&mut self.primary.tls, m)?;
        }
        self.pushed = true;
        pump_tls(&mut self.primary)?;
        let n = self.negotiated.as_ref().expect("negotiated before push");
        self.established = true;
        let tls_version = self
            .primary
            .tls
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        self.events.push_back(SessionEvent::Established {
            cipher: n.cipher,
            tls_version,
            peer_info: n.peer_info.clone(),
        });
        Ok(())
    }

    /// A renegotiated key that is active and authorized replaces the primary; the old key's
    /// decrypt half stays in the data peer as lame duck (doc §9.3).
    fn maybe_promote(&mut self, now: Instant) {
        let ready = self
            .pending
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Active && p.tx_installed);
        if ready {
            let p = self.pending.take().expect("checked");
            self.primary = p;
            // Whoever started it, the next server-initiated renegotiation counts from here.
            let (bytes, packets) = self.peer.counters.totals();
            self.reneg_base = (now, bytes, packets);
            self.events.push_back(SessionEvent::Rekeyed {
                key_id: self.primary.id,
            });
        }
    }

    /// Encodes and wraps everything the reliability layers want to send.
    fn flush(&mut self, now: Instant) {
        let mut plain = [0u8; MAX_CONTROL_PACKET_LEN];
        let mut wrapped = [0u8; MAX_CONTROL_PACKET_LEN + 64];
        let mut any = false;
        for ks in std::iter::once(&mut self.primary).chain(self.pending.as_mut()) {
            while let Some(pkt) = ks.reliable.poll_transmit(now) {
                let Ok(n) = pkt.encode(&mut plain) else {
                    continue;
                };
                let bytes = match &mut self.wrap {
                    Some((key, st)) => match st.wrap(key, &plain[..n], &mut wrapped) {
                        Ok(m) => wrapped[..m].to_vec(),
                        Err(_) => continue,
                    },
                    None => plain[..n].to_vec(),
                };
                self.out.push_back(bytes);
                any = true;
            }
        }
        if any {
            // Control packets count as sent traffic for the keepalive (doc §9.4).
            self.peer.touch_tx(now);
        }
    }
}
