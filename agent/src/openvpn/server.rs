//! The OpenVPN server's control side, sans-IO: demultiplexes control packets to sessions,
//! runs the stateless HMAC-cookie handshake on UDP (no per-client state before the cookie
//! round trip, replies rate-limited and never larger than the request plus a fixed reset),
//! assigns peer-ids and tunnel addresses, authorizes, and reports connects and disconnects.
//!
//! Data packets do not come here: workers open them through the shared [`PeerTable`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::cookie::{HmacCookie, ResetLimiter};
use super::crypto::Cipher;
use super::options::{PeerInfo, PushReply, RedirectGateway, Transport};
use super::packet::{decode, split_first_byte, ControlPacket, KeyId, Opcode, Packet, SessionId};
use super::peer::{DataPeer, Link, PeerTable};
use super::pool::AddressPool;
use super::session::{
    AuthRequest, CloseReason, FailureCode, Refusal, Session, SessionConfig, SessionEvent, Start,
    TlsProvider,
};
use super::tls::ClientIdentity;
use super::tls_crypt::{PacketIdSender, TlsCryptKey, TlsCryptSession, MIN_WRAPPED_LEN};

/// What every client is told to reach through the tunnel (doc §8.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushSettings {
    /// Split tunnel: these routes. Ignored when `full_tunnel`.
    pub routes: Vec<Ipv4Net>,
    pub dns: Vec<Ipv4Addr>,
    /// `redirect-gateway def1`: everything through the tunnel.
    pub full_tunnel: bool,
    /// Maximum session duration (AWS: 8–24 h): pushed as `session-timeout` and enforced by
    /// the server (it overrides `max_session` of both transports' session settings).
    pub session_timeout: Option<Duration>,
    /// Pushed last, as is: the login banner (see `options::banner_echo_options`).
    pub echo: Vec<String>,
}

/// How clients are authenticated beyond their certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Mutual TLS only: a verified certificate is enough (AWS "mutual authentication").
    #[default]
    CertificateOnly,
    /// Every key exchange is reported as [`ServerEvent::AuthRequired`] and waits for
    /// [`Server::authorize`] (directory lookups, client-connect hooks).
    External,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub client_cidr: Ipv4Net,
    pub push: PushSettings,
    pub auth: AuthMode,
    /// Concurrent sessions (including half-open ones after the cookie).
    pub max_sessions: usize,
    /// Stateless reset replies per second (and burst), all sources together; one source gets
    /// an eighth of it (`cookie::ResetLimiter`).
    pub reset_rate: (u32, u32),
    pub udp: SessionConfig,
    pub tcp: SessionConfig,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            client_cidr: "10.100.0.0/24".parse().expect("literal"),
            push: PushSettings::default(),
            auth: AuthMode::default(),
            max_sessions: 4096,
            reset_rate: (200, 400),
            udp: SessionConfig::default(),
            tcp: SessionConfig {
                transport: Transport::Tcp,
                ..SessionConfig::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// A client finished the handshake, was authorized and got its push.
    Connected {
        link: Link,
        /// The session's serial, as in its `AuthRequest` (see [`Server::authorize_external`]).
        session: u64,
        peer_id: u32,
        common_name: String,
        tunnel_addr: Ipv4Addr,
        cipher: Cipher,
        tls_version: String,
        peer_info: PeerInfo,
        /// From the session's first packet to the push.
        handshake: Duration,
    },
    /// With [`AuthMode::External`]: decide with [`Server::authorize`].
    AuthRequired {
        link: Link,
        request: Box<AuthRequest>,
    },
    Rekeyed {
        link: Link,
        peer_id: u32,
        key_id: KeyId,
    },
    /// A client moved to a new UDP address (after an authenticated packet).
    Floated { peer_id: u32, from: Link, to: Link },
    /// A session ended (or never got established: TLS failure, refused, timeout).
    Disconnected {
        link: Link,
        peer_id: u32,
        common_name: Option<String>,
        /// The key-method-2 user name, when the client sent one (also on failed attempts).
        username: Option<String>,
        tunnel_addr: Option<Ipv4Addr>,
        reason: CloseReason,
        rx_bytes: u64,
        tx_bytes: u64,
        duration: Duration,
    },
    /// Informational control message from a client.
    Message { link: Link, text: String },
}

/// Why a control packet from an unknown source was dropped, counted for operators.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerStats {
    pub malformed: u64,
    pub tls_crypt_rejected: u64,
    pub cookie_rejected: u64,
    pub reset_rate_limited: u64,
    pub session_limit: u64,
    /// New sessions refused because their source already has as many half-open sessions
    /// as one source may (see [`Server::half_open_limit`]).
    pub half_open_limit: u64,
    pub stateless_replies: u64,
    pub unroutable: u64,
}

struct Entry {
    session: Session,
    /// Unique per session of this server (links and peer ids are reused): verdicts and
    /// grants name it, so one meant for a replaced session never reaches its successor.
    serial: u64,
    tunnel_addr: Option<Ipv4Addr>,
    deadline: Option<Instant>,
    /// Not connected yet: counted in `Server::half_open` for its source.
    half_open: bool,
}

/// One half-open session from `link`'s source address connected or ended.
fn release_half_open(half_open: &mut HashMap<std::net::IpAddr, usize>, link: Link) {
    let source = link.addr().ip();
    if let Some(n) = half_open.get_mut(&source) {
        *n -= 1;
        if *n == 0 {
            half_open.remove(&source);
        }
    }
}

/// Each transport's session settings, with the pushed session timeout as their limit.
fn session_configs(settings: &ServerSettings) -> (Arc<SessionConfig>, Arc<SessionConfig>) {
    (
        Arc::new(SessionConfig {
            transport: Transport::Udp,
            max_session: settings.push.session_timeout.or(settings.udp.max_session),
            ..settings.udp.clone()
        }),
        Arc::new(SessionConfig {
            transport: Transport::Tcp,
            max_session: settings.push.session_timeout.or(settings.tcp.max_session),
            ..settings.tcp.clone()
        }),
    )
}

pub struct Server {
    settings: ServerSettings,
    udp_cfg: Arc<SessionConfig>,
    tcp_cfg: Arc<SessionConfig>,
    tls: Arc<dyn TlsProvider>,
    tls_crypt: Option<Arc<TlsCryptKey>>,
    cookie: HmacCookie,
    limiter: ResetLimiter,
    sessions: HashMap<Link, Entry>,
    /// Sessions that ended recently, by address and client session id: their client's
    /// retransmissions still carry a valid cookie, and must not bring them back (a refused
    /// client would otherwise get a fresh session, and its tls-crypt ids from the start).
    closed: HashMap<Link, (SessionId, Instant)>,
    timers: BinaryHeap<Reverse<(Instant, Link)>>,
    pool: AddressPool,
    peers: Arc<PeerTable>,
    free_peer_ids: Vec<u32>,
    /// Half-open sessions per source address: one host may hold only a share of the table.
    half_open: HashMap<std::net::IpAddr, usize>,
    events: VecDeque<ServerEvent>,
    out: VecDeque<(Link, Vec<u8>)>,
    base: Instant,
    unix_base: u32,
    pub stats: ServerStats,
    next_serial: u64,
}

impl Server {
    pub fn new(
        settings: ServerSettings,
        tls: Arc<dyn TlsProvider>,
        tls_crypt: Option<Arc<TlsCryptKey>>,
        now: Instant,
    ) -> Result<Server, String> {
        let pool = AddressPool::new(settings.client_cidr).map_err(|e| e.to_string())?;
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| "no system randomness".to_owned())?;
        let hand_window = settings.udp.hand_window;
        let unix_base = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        // Peer-ids double as data-path session slots, so they stay below MAX_CLIENTS.
        let n = settings
            .max_sessions
            .min(portcullis_common::ORPHAN_SLOT as usize) as u32;
        let (udp_cfg, tcp_cfg) = session_configs(&settings);
        Ok(Server {
            udp_cfg,
            tcp_cfg,
            limiter: ResetLimiter::new(
                settings.reset_rate.0,
                settings.reset_rate.1,
                hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &secret),
                    b"reset limiter",
                )
                .as_ref(),
                now,
            ),
            cookie: HmacCookie::new(secret, hand_window, now),
            settings,
            tls,
            tls_crypt,
            sessions: HashMap::new(),
            closed: HashMap::new(),
            timers: BinaryHeap::new(),
            pool,
            peers: Arc::new(PeerTable::default()),
            free_peer_ids: (0..n).rev().collect(),
            half_open: HashMap::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            base: now,
            unix_base,
            stats: ServerStats::default(),
            next_serial: 1,
        })
    }

    /// The table the packet workers use.
    pub fn peers(&self) -> Arc<PeerTable> {
        self.peers.clone()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Half-open sessions (handshake or authorization pending) one source address may hold:
    /// an eighth of the table, so one host cannot fill it, and enough for the clients of a
    /// whole office behind one NAT connecting at once.
    pub fn half_open_limit(&self) -> usize {
        (self.settings.max_sessions / 8).max(16)
    }

    pub fn pool(&self) -> &AddressPool {
        &self.pool
    }

    pub fn tls_provider(&self) -> &Arc<dyn TlsProvider> {
        &self.tls
    }

    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// New settings for sessions that start from now on (push, ciphers, timers, session
    /// timeout); live sessions keep theirs. The address pool, the session limit, the reset
    /// rate and the authentication mode are fixed at start and kept.
    pub fn update_settings(&mut self, new: ServerSettings) {
        let keep = ServerSettings {
            client_cidr: self.settings.client_cidr,
            max_sessions: self.settings.max_sessions,
            reset_rate: self.settings.reset_rate,
            auth: self.settings.auth,
            ..new
        };
        (self.udp_cfg, self.tcp_cfg) = session_configs(&keep);
        self.settings = keep;
    }

    fn unix_now(&self, now: Instant) -> u32 {
        self.unix_base
            .saturating_add(now.saturating_duration_since(self.base).as_secs() as u32)
    }

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
                Opcode::HardResetClientV2 | Opcode::ControlV1 | Opcode::AckV1
            ) {
                self.stats.unroutable += 1;
                return;
            }
        }
        if key_id != KeyId::ZERO {
            self.stats.unroutable += 1;
            return;
        }
        // tls-crypt first, so unauthenticated packets cost no TLS work (doc §11.4).
        let mut buf = [0u8; super::packet::MAX_CONTROL_PACKET_LEN];
        let (plain, wrap_id): (&[u8], Option<(u32, u32)>) = match &self.tls_crypt {
            Some(key) => {
                if raw.len() < MIN_WRAPPED_LEN {
                    self.stats.malformed += 1;
                    return;
                }
                match key.unwrap(raw, &mut buf) {
                    Ok(u) => (u.packet, Some((u.packet_id, u.timestamp))),
                    Err(_) => {
                        self.stats.tls_crypt_rejected += 1;
                        return;
                    }
                }
            }
            None => (raw, None),
        };
        let Ok(Packet::Control(pkt)) = decode(plain) else {
            self.stats.malformed += 1;
            return;
        };
        // TCP too: the TCP handshake proves the address, but not that the client speaks
        // the protocol; no session state before the client's second packet, on either
        // transport.
        let addr = link.addr();
        if pkt.opcode == Opcode::HardResetClientV2 {
            // A connection whose session ended does not start another one.
            if link.is_tcp() && self.closed.contains_key(&link) {
                self.stats.unroutable += 1;
                return;
            }
            self.stateless_reset(link, addr, &pkt, now);
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
                let _ = wrap_id;
                self.create(
                    link,
                    Start::Cookie {
                        client: acc.client_session,
                        server: acc.server_session,
                    },
                    acc.server_session,
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

    fn stateless_reset(
        &mut self,
        link: Link,
        addr: std::net::SocketAddr,
        pkt: &ControlPacket<'_>,
        now: Instant,
    ) {
        // Over TCP a reply reflects nothing (the address is proven), so only UDP is limited.
        if !link.is_tcp() && !self.limiter.allow(addr.ip(), now) {
            self.stats.reset_rate_limited += 1;
            return;
        }
        let Ok(reply) = self.cookie.reset_reply(pkt, addr, now) else {
            self.stats.malformed += 1;
            return;
        };
        let mut plain = [0u8; 64];
        let Ok(n) = reply.encode(&mut plain) else {
            return;
        };
        let bytes = match &self.tls_crypt {
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

    fn create(
        &mut self,
        link: Link,
        start: Start<'_>,
        local: SessionId,
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
        let Some(peer_id) = self.free_peer_ids.pop() else {
            self.stats.session_limit += 1;
            return;
        };
        let cfg = if link.is_tcp() {
            self.tcp_cfg.clone()
        } else {
            self.udp_cfg.clone()
        };
        let wrap = self.tls_crypt.as_ref().map(|k| {
            (
                k.clone(),
                TlsCryptSession::new(PacketIdSender::starting_at(
                    first_wrap_id,
                    self.unix_now(now),
                )),
            )
        });
        let peer = Arc::new(DataPeer::new(peer_id, link, self.base));
        match Session::new(cfg, self.tls.clone(), start, local, wrap, peer.clone(), now) {
            Ok(session) => {
                self.peers.insert(peer);
                let serial = self.next_serial;
                self.next_serial += 1;
                self.sessions.insert(
                    link,
                    Entry {
                        session,
                        serial,
                        tunnel_addr: None,
                        deadline: None,
                        half_open: true,
                    },
                );
                self.half_open.insert(source, half_open + 1);
            }
            Err(_) => {
                self.free_peer_ids.push(peer_id);
                self.stats.malformed += 1;
            }
        }
    }

    /// After any input to a session: collect its packets and events, reschedule its timer.
    fn after(&mut self, link: Link, now: Instant) {
        self.collect(link, now);
        if let Some(e) = self.sessions.get_mut(&link) {
            let d = e.session.poll_timeout();
            if d != e.deadline {
                e.deadline = d;
                if let Some(d) = d {
                    self.timers.push(Reverse((d, link)));
                }
            }
        }
    }

    fn collect(&mut self, link: Link, now: Instant) {
        loop {
            let Some(e) = self.sessions.get_mut(&link) else {
                return;
            };
            while let Some(p) = e.session.poll_transmit() {
                self.out.push_back((link, p));
            }
            let Some(ev) = e.session.poll_event() else {
                break;
            };
            match ev {
                SessionEvent::Authenticate(req) => match self.settings.auth {
                    AuthMode::CertificateOnly => {
                        // Defence in depth: a certificate-less client is only ever let through
                        // by a directory-only TLS setup, which runs in External mode.
                        let verdict = if req.identity.has_certificate() {
                            self.decide(link, &req.identity, req.initial)
                        } else {
                            Err(Refusal::new(
                                FailureCode::CertificateRequired,
                                "client certificate required",
                            ))
                        };
                        self.authorize(link, req.key_id, verdict, now);
                    }
                    AuthMode::External => {
                        let mut req = req;
                        req.session = self.sessions.get(&link).map_or(0, |e| e.serial);
                        self.events
                            .push_back(ServerEvent::AuthRequired { link, request: req })
                    }
                },
                SessionEvent::Established {
                    cipher,
                    tls_version,
                    peer_info,
                } => {
                    let e = self.sessions.get_mut(&link).expect("present");
                    if std::mem::take(&mut e.half_open) {
                        release_half_open(&mut self.half_open, link);
                    }
                    let addr = e.tunnel_addr.expect("assigned before push");
                    let peer = e.session.peer().clone();
                    self.peers.set_addr(&peer, addr);
                    self.events.push_back(ServerEvent::Connected {
                        link,
                        session: e.serial,
                        peer_id: peer.peer_id,
                        common_name: e.session.common_name().unwrap_or_default().to_owned(),
                        tunnel_addr: addr,
                        cipher,
                        tls_version,
                        peer_info,
                        handshake: now.saturating_duration_since(e.session.created()),
                    });
                }
                SessionEvent::Rekeyed { key_id } => {
                    let peer_id = e.session.peer().peer_id;
                    self.events.push_back(ServerEvent::Rekeyed {
                        link,
                        peer_id,
                        key_id,
                    });
                }
                SessionEvent::Message(text) => {
                    self.events.push_back(ServerEvent::Message { link, text })
                }
                SessionEvent::Closed(reason) => {
                    let e = self.sessions.remove(&link).expect("present");
                    if e.half_open {
                        release_half_open(&mut self.half_open, link);
                    }
                    // Whatever the session still had to say (an alert, AUTH_FAILED) goes out.
                    let mut s = e.session;
                    while let Some(p) = s.poll_transmit() {
                        self.out.push_back((link, p));
                    }
                    let peer = s.peer().clone();
                    self.peers.remove(&peer);
                    self.remember_closed(link, s.remote_session(), now);
                    if let Some(a) = e.tunnel_addr {
                        self.pool.release(a);
                    }
                    self.free_peer_ids.push(peer.peer_id);
                    use std::sync::atomic::Ordering::Relaxed;
                    self.events.push_back(ServerEvent::Disconnected {
                        link,
                        peer_id: peer.peer_id,
                        common_name: s.common_name().map(str::to_owned),
                        username: s.username().map(str::to_owned),
                        tunnel_addr: e.tunnel_addr,
                        reason,
                        rx_bytes: peer.counters.rx_bytes.load(Relaxed),
                        tx_bytes: peer.counters.tx_bytes.load(Relaxed),
                        duration: now.saturating_duration_since(s.created()),
                    });
                    return;
                }
            }
        }
    }

    fn remember_closed(&mut self, link: Link, sid: SessionId, now: Instant) {
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

    /// Certificate-only authorization: a tunnel address and the push options.
    fn decide(
        &mut self,
        link: Link,
        identity: &ClientIdentity,
        initial: bool,
    ) -> Result<Vec<String>, Refusal> {
        if !initial {
            return Ok(Vec::new());
        }
        self.assign(link, &identity.common_name)
    }

    fn assign(&mut self, link: Link, user: &str) -> Result<Vec<String>, Refusal> {
        let internal = |m: String| Refusal::new(FailureCode::Internal, m);
        let e = self
            .sessions
            .get_mut(&link)
            .ok_or_else(|| internal("session gone".into()))?;
        let addr = match e.tunnel_addr {
            Some(a) => a,
            None => {
                let a = self.pool.acquire(user).ok_or_else(|| {
                    Refusal::new(
                        FailureCode::AddressPoolExhausted,
                        "client address pool exhausted",
                    )
                })?;
                e.tunnel_addr = Some(a);
                a
            }
        };
        let p = &self.settings.push;
        let base = PushReply {
            routes: if p.full_tunnel {
                Vec::new()
            } else {
                p.routes.clone()
            },
            dns: p.dns.clone(),
            redirect_gateway: p
                .full_tunnel
                .then_some(RedirectGateway { bypass_dhcp: true }),
            route_gateway: self.pool.gateway(),
            ifconfig: Ipv4Net::new(addr, self.settings.client_cidr.prefix_len())
                .map_err(|e| internal(e.to_string()))?,
            ping: 0,
            ping_restart: 0,
            peer_id: None,
            cipher: Cipher::Aes256Gcm,
            protocol_flags: None,
            tun_mtu: None,
            // Filled in by the session from its `max_session`.
            session_timeout: None,
            auth_token: None,
            echo: p.echo.clone(),
        };
        let reply = e
            .session
            .push_reply(base)
            .ok_or_else(|| internal("key exchange not finished".into()))?;
        reply.build().map_err(|e| internal(e.to_string()))
    }

    /// The verdict on an [`ServerEvent::AuthRequired`]: `Ok(())` assigns an address and pushes
    /// (for key 0), `Err(reason)` sends `AUTH_FAILED,<reason>` and closes.
    pub fn authorize_external(
        &mut self,
        link: Link,
        session: u64,
        key_id: KeyId,
        verdict: Result<(), Refusal>,
        initial: bool,
        now: Instant,
    ) {
        // A client that restarts from the same address replaces its session at the same link
        // (and key id 0): the old session's verdict must not admit the new one.
        if self.sessions.get(&link).map(|e| e.serial) != Some(session) {
            tracing::debug!(%link, session, "verdict for a session that is gone: dropped");
            return;
        }
        let v = match verdict {
            Ok(()) if initial => {
                let user = self
                    .sessions
                    .get(&link)
                    .and_then(|e| e.session.common_name().map(str::to_owned))
                    .unwrap_or_default();
                self.assign(link, &user)
            }
            Ok(()) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        self.authorize(link, key_id, v, now);
        // Called from outside the collect loop: send the push (or AUTH_FAILED) now rather
        // than at the session's next timer or the client's next PUSH_REQUEST.
        self.after(link, now);
    }

    fn authorize(
        &mut self,
        link: Link,
        key_id: KeyId,
        v: Result<Vec<String>, Refusal>,
        now: Instant,
    ) {
        if let Some(e) = self.sessions.get_mut(&link) {
            e.session.authorize(key_id, v, now);
        }
        // `collect` loops, so events this produced are handled by the caller's loop.
    }

    /// An authenticated data packet arrived from a new UDP address.
    pub fn floated(&mut self, from: Link, to: Link, now: Instant) {
        if let Some(e) = self.sessions.remove(&from) {
            let peer_id = e.session.peer().peer_id;
            if let Some(old) = self.sessions.remove(&to) {
                // Someone else's half-open session at that address loses.
                if old.half_open {
                    release_half_open(&mut self.half_open, to);
                }
                let mut s = old.session;
                s.kill(CloseReason::Server(
                    "address taken over by a floating client".into(),
                ));
                self.peers.remove(s.peer());
                self.free_peer_ids.push(s.peer().peer_id);
            }
            if e.half_open {
                release_half_open(&mut self.half_open, from);
                *self.half_open.entry(to.addr().ip()).or_default() += 1;
            }
            self.sessions.insert(to, e);
            self.events
                .push_back(ServerEvent::Floated { peer_id, from, to });
            self.after(to, now);
        }
    }

    /// OCC_EXIT from a worker (the session just ends), or an operator's disconnect
    /// ([`CloseReason::Server`]: the client gets `HALT,<why>` first).
    pub fn close_peer(&mut self, peer_id: u32, reason: CloseReason, now: Instant) {
        let link = self
            .sessions
            .iter()
            .find(|(_, e)| e.session.peer().peer_id == peer_id)
            .map(|(l, _)| *l);
        if let Some(link) = link {
            if let Some(e) = self.sessions.get_mut(&link) {
                match &reason {
                    // An operator's cut: the client is told to stop rather than to retry.
                    CloseReason::Server(why) => {
                        let msg = format!("HALT,{why}");
                        e.session.halt_now(&msg, reason, now);
                    }
                    _ => e.session.kill(reason),
                }
            }
            self.after(link, now);
        }
    }

    /// The TCP connection closed: its session ends.
    pub fn link_closed(&mut self, link: Link, now: Instant) {
        if let Some(e) = self.sessions.get_mut(&link) {
            e.session
                .kill(CloseReason::Server("connection closed".into()));
            self.after(link, now);
        }
    }

    /// Asks every client to reconnect (`RESTART`, doc §8.4) and closes the sessions shortly
    /// after; call [`Self::handle_timeout`] until [`Self::session_count`] is 0.
    pub fn shutdown(&mut self, now: Instant) {
        let links: Vec<Link> = self.sessions.keys().copied().collect();
        for l in links {
            if let Some(e) = self.sessions.get_mut(&l) {
                e.session.shutdown(
                    "RESTART",
                    CloseReason::Server("server shutdown".into()),
                    now,
                );
            }
            self.after(l, now);
        }
    }

    /// Ends one session with `HALT,<reason>` (the client exits instead of reconnecting):
    /// the directory disabled the user or took every authorized group away.
    pub fn halt_peer(&mut self, peer_id: u32, reason: &str, now: Instant) {
        let reason = super::options::sanitize_text(reason, 200);
        let link = self
            .sessions
            .iter()
            .find(|(_, e)| e.session.peer().peer_id == peer_id)
            .map(|(l, _)| *l);
        if let Some(link) = link {
            if let Some(e) = self.sessions.get_mut(&link) {
                e.session.shutdown(
                    &format!("HALT,{reason}"),
                    CloseReason::Server(reason.clone()),
                    now,
                );
            }
            self.after(link, now);
        }
    }

    /// Ends the sessions whose certificate the current CRLs revoke (after a CRL reload): the
    /// client is told `HALT` (a 2.6 client then exits instead of retrying a refused
    /// certificate).
    pub fn cut_revoked(&mut self, now: Instant) -> usize {
        let tls = self.tls.clone();
        let revoked: Vec<Link> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.session.identity().is_some_and(|id| tls.is_revoked(id)))
            .map(|(l, _)| *l)
            .collect();
        for l in &revoked {
            if let Some(e) = self.sessions.get_mut(l) {
                e.session.shutdown(
                    "HALT,certificate revoked",
                    CloseReason::Server("certificate revoked".into()),
                    now,
                );
            }
            self.after(*l, now);
        }
        revoked.len()
    }

    /// Starts a renegotiation of every established session now (operator request, tests).
    pub fn renegotiate_all(&mut self, now: Instant) {
        let links: Vec<Link> = self.sessions.keys().copied().collect();
        for l in links {
            if let Some(e) = self.sessions.get_mut(&l) {
                e.session.renegotiate(now);
            }
            self.after(l, now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // One pass handles the entries present when it starts; deadlines a session reports
        // during the pass (even already due ones) wait for the next call, so a session that
        // keeps reporting a due deadline cannot spin the control thread.
        let mut budget = self.timers.len();
        while let Some(Reverse((t, link))) = self.timers.peek().copied() {
            if t > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.timers.pop();
            let Some(e) = self.sessions.get_mut(&link) else {
                continue;
            };
            if e.deadline != Some(t) {
                continue; // stale entry
            }
            e.deadline = None;
            e.session.handle_timeout(now);
            self.after(link, now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    pub fn poll_transmit(&mut self) -> Option<(Link, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Established sessions, for status output.
    pub fn sessions(&self) -> impl Iterator<Item = (&Link, &Session, Option<Ipv4Addr>)> {
        self.sessions
            .iter()
            .map(|(l, e)| (l, &e.session, e.tunnel_addr))
    }
}
