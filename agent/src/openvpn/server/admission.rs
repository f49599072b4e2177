//! The front door: control packets routed to their session, the stateless HMAC-cookie
//! handshake for new clients on either transport (no state before the round trip, replies
//! never larger than the request plus a fixed reset, rate-limited on UDP in total and per
//! source), and the creation of sessions (half-open ones bounded per source).
use std::sync::Arc;
use std::time::Instant;

use super::super::packet::{
    decode, split_first_byte, ControlPacket, KeyId, Opcode, Packet, SessionId,
    MAX_CONTROL_PACKET_LEN,
};
use super::super::peer::{DataPeer, Link};
use super::super::session::{CloseReason, Session, Start};
use super::super::tls_crypt::{PacketIdSender, TlsCryptKey, TlsCryptSession, MIN_WRAPPED_LEN};
use super::super::tls_crypt_v2::{announces_early_neg, RESEND_WKC_TLV};
use super::{Entry, Server};

/// The tls-crypt key a new session wraps with: the group key, a v2 client's own, or none.
type WrapKey = Option<Arc<TlsCryptKey>>;

impl Server {
    /// A control packet (anything that is not P_DATA_V1/V2) from `link`.
    pub fn handle_control(&mut self, link: Link, raw: &[u8], now: Instant) {
        let Some(&first) = raw.first() else {
            self.stats.malformed += 1;
            return;
        };
        let Ok((opcode, key_id)) = split_first_byte(first) else {
            self.stats.malformed += 1;
            return;
        };
        if opcode.is_data() {
            self.stats.malformed += 1;
            return;
        }
        if let Some(e) = self.sessions.get_mut(&link) {
            if e.session.on_control(raw, now) {
                self.after(link, now);
                return;
            }
            // One TCP connection carries one session (a client restarts on a new one).
            if link.is_tcp() {
                self.stats.unroutable += 1;
                return;
            }
            // A new hard reset from a known address is a client restart (doc §1.6, pitfall
            // 29), and its cookie round trip follows: handled below as a new session;
            // anything else is unroutable.
            if !matches!(
                opcode,
                Opcode::HardResetClientV2
                    | Opcode::HardResetClientV3
                    | Opcode::ControlV1
                    | Opcode::ControlWkcV1
                    | Opcode::AckV1
            ) {
                self.stats.unroutable += 1;
                return;
            }
        }
        if key_id != KeyId::ZERO {
            self.stats.unroutable += 1;
            return;
        }
        // tls-crypt first, so unauthenticated packets cost no TLS work (doc §11.4). A
        // tls-crypt-v2 client's packets that carry its wrapped key are opened with that key;
        // every other packet with the group key (or none).
        let mut buf = [0u8; MAX_CONTROL_PACKET_LEN];
        let v2_opcode = matches!(opcode, Opcode::HardResetClientV3 | Opcode::ControlWkcV1);
        let (plain, wrap_id, key): (&[u8], Option<(u32, u32)>, WrapKey) = if v2_opcode {
            let Some(v2) = &self.tls_crypt_v2 else {
                self.stats.tls_crypt_rejected += 1;
                return;
            };
            let opened = v2.open(raw, i64::from(self.unix_now(now)));
            let Ok((wrapped, key)) = opened else {
                self.stats.tls_crypt_v2_rejected += 1;
                return;
            };
            match key.unwrap(wrapped, &mut buf) {
                Ok(u) => (
                    u.packet,
                    Some((u.packet_id, u.timestamp)),
                    Some(Arc::new(key)),
                ),
                Err(_) => {
                    self.stats.tls_crypt_rejected += 1;
                    return;
                }
            }
        } else {
            match &self.tls_crypt {
                Some(key) => {
                    if raw.len() < MIN_WRAPPED_LEN {
                        self.stats.malformed += 1;
                        return;
                    }
                    match key.unwrap(raw, &mut buf) {
                        Ok(u) => (
                            u.packet,
                            Some((u.packet_id, u.timestamp)),
                            Some(key.clone()),
                        ),
                        Err(_) => {
                            self.stats.tls_crypt_rejected += 1;
                            return;
                        }
                    }
                }
                // tls-crypt-v2 never runs next to unwrapped clients (its DoS protection
                // would be void).
                None if self.tls_crypt_v2.is_some() => {
                    self.stats.tls_crypt_rejected += 1;
                    return;
                }
                None => (raw, None, None),
            }
        };
        let Ok(Packet::Control(pkt)) = decode(plain) else {
            self.stats.malformed += 1;
            return;
        };
        // TCP too: the TCP handshake proves the address, but not that the client speaks the
        // protocol; no session state before the client's second packet on either transport.
        let addr = link.addr();
        if matches!(
            pkt.opcode,
            Opcode::HardResetClientV2 | Opcode::HardResetClientV3
        ) {
            // A connection whose session ended does not start another one.
            if link.is_tcp() && self.closed.contains_key(&link) {
                self.stats.unroutable += 1;
                return;
            }
            // A V3 reset from a client that cannot resend its wrapped key (2.5 and older)
            // would need state before the cookie round trip: refused.
            let resend_wkc = pkt.opcode == Opcode::HardResetClientV3;
            if resend_wkc && !wrap_id.is_some_and(|(id, _)| announces_early_neg(id)) {
                self.stats.tls_crypt_v2_rejected += 1;
                return;
            }
            self.stateless_reset(link, addr, &pkt, key.as_deref(), resend_wkc, now);
            return;
        }
        // A tls-crypt-v2 client's first packet after the cookie must carry its key again.
        if self.tls_crypt.is_none() && self.tls_crypt_v2.is_some() && !v2_opcode {
            self.stats.tls_crypt_rejected += 1;
            return;
        }
        if self
            .closed
            .get(&link)
            .is_some_and(|(sid, until)| link.is_tcp() || (*sid == pkt.session_id && now < *until))
        {
            self.stats.unroutable += 1;
            return;
        }
        match self.cookie.verify(&pkt, addr, now) {
            Ok(acc) => {
                // A live session is replaced only by a new client session (a restart): a
                // duplicate or replay of the packets that set up the live session itself
                // carries its client session id, still within the cookie's lifetime, and must
                // not end it.
                if self
                    .sessions
                    .get(&link)
                    .is_some_and(|e| e.session.remote_session() == acc.client_session)
                {
                    self.stats.unroutable += 1;
                    return;
                }
                self.create(
                    link,
                    Start::Cookie {
                        client: acc.client_session,
                        server: acc.server_session,
                    },
                    key,
                    // Our stateless reset was wrapped with id 1 (doc §11.3).
                    2,
                    now,
                );
                if let Some(e) = self.sessions.get_mut(&link) {
                    e.session.on_control(raw, now);
                }
                self.after(link, now);
            }
            Err(_) => self.stats.cookie_rejected += 1,
        }
    }

    pub(super) fn stateless_reset(
        &mut self,
        link: Link,
        addr: std::net::SocketAddr,
        pkt: &ControlPacket<'_>,
        key: Option<&TlsCryptKey>,
        resend_wkc: bool,
        now: Instant,
    ) {
        // Over TCP a reply reflects nothing (the address is proven), so only UDP is limited.
        if !link.is_tcp() && !self.limiter.allow(addr.ip(), now) {
            self.stats.reset_rate_limited += 1;
            return;
        }
        let Ok(mut reply) = self.cookie.reset_reply(pkt, addr, now) else {
            self.stats.malformed += 1;
            return;
        };
        if resend_wkc {
            reply.payload = &RESEND_WKC_TLV;
        }
        let mut plain = [0u8; 64];
        let Ok(n) = reply.encode(&mut plain) else {
            return;
        };
        let bytes = match key {
            Some(key) => {
                let mut out = [0u8; 128];
                match key.wrap(&plain[..n], 1, self.unix_now(now), &mut out) {
                    Ok(m) => out[..m].to_vec(),
                    Err(_) => return,
                }
            }
            None => plain[..n].to_vec(),
        };
        self.stats.stateless_replies += 1;
        self.out.push_back((link, bytes));
    }

    pub(super) fn create(
        &mut self,
        link: Link,
        start: Start<'_>,
        key: Option<Arc<TlsCryptKey>>,
        first_wrap_id: u32,
        now: Instant,
    ) {
        if let Some(old) = self.sessions.get_mut(&link) {
            old.session.kill(CloseReason::Server(
                "client restarted with a new session".into(),
            ));
            self.collect(link, now);
        }
        if self.sessions.len() >= self.settings.max_sessions {
            self.stats.session_limit += 1;
            return;
        }
        let source = link.addr().ip();
        let half_open = self.half_open.get(&source).copied().unwrap_or(0);
        if half_open >= self.half_open_limit() {
            self.stats.half_open_limit += 1;
            return;
        }
        let Some(peer_id) = self.free_peer_ids.pop_front() else {
            self.stats.session_limit += 1;
            return;
        };
        let cfg = if link.is_tcp() {
            self.tcp_cfg.clone()
        } else {
            self.udp_cfg.clone()
        };
        let wrap = key.map(|k| {
            (
                k,
                TlsCryptSession::new(PacketIdSender::starting_at(
                    first_wrap_id,
                    self.unix_now(now),
                )),
            )
        });
        let serial = self.next_serial;
        let peer = Arc::new(DataPeer::for_session(peer_id, serial, link, self.base));
        match Session::new(
            cfg,
            self.tls.clone(),
            start,
            wrap,
            peer.clone(),
            self.env.rng.clone(),
            now,
        ) {
            Ok(session) => {
                self.peers.insert(peer);
                self.next_serial += 1;
                self.sessions.insert(
                    link,
                    Entry {
                        session,
                        serial,
                        tunnel_addr: None,
                        deadline: None,
                        half_open: true,
                        auth_token: None,
                    },
                );
                self.half_open.insert(source, half_open + 1);
            }
            Err(_) => {
                self.free_peer_ids.push_back(peer_id);
                self.stats.malformed += 1;
            }
        }
    }

    pub(super) fn remember_closed(&mut self, link: Link, sid: SessionId, now: Instant) {
        // A cookie is valid for up to 1.5 hand-windows (doc §3.3).
        let until = now + self.settings.udp.hand_window * 2;
        if self.closed.len() >= self.settings.max_sessions.max(64) {
            self.closed.retain(|_, (_, u)| *u > now);
            if self.closed.len() >= self.settings.max_sessions.max(64) {
                // Bounded memory under churn: the oldest entries go first.
                let mut v: Vec<_> = self.closed.iter().map(|(l, (_, u))| (*u, *l)).collect();
                v.sort();
                for (_, l) in v.iter().take(v.len() / 2) {
                    self.closed.remove(l);
                }
            }
        }
        self.closed.insert(link, (sid, until));
    }
}
