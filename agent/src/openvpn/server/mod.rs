//! The OpenVPN server's control side, sans-IO: demultiplexes control packets to sessions,
//! runs the stateless HMAC-cookie handshake (no per-client state before the cookie round trip,
//! replies rate-limited and never larger than the request plus a fixed reset),
//! assigns peer-ids and tunnel addresses, authorizes, and reports connects and disconnects.
//!
//! Data packets do not come here: workers open them through the shared [`PeerTable`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;
use ring::hmac;

use super::cookie::{HmacCookie, ResetLimiter};
use super::crypto::Cipher;
use super::env::Env;
use super::fence::{AddressFence, Closed};
use super::options::{PushReply, RedirectGateway};
use super::packet::{KeyId, SessionId};
use super::peer::{Float, Link, PeerTable};
use super::pool::AddressPool;
use super::session::{
    CloseReason, FailureCode, Refusal, Session, SessionConfig, SessionEvent, TlsProvider,
};
use super::tls::ClientIdentity;
use super::tls_crypt::TlsCryptKey;
use super::tls_crypt_v2::TlsCryptV2Server;
use super::verdict::IssuedToken;

mod admission;
mod events;
mod settings;

pub use events::{ServerEvent, ServerStats};
use settings::session_configs;
pub use settings::{AuthMode, PushSettings, ServerSettings, DEFAULT_RESET_RATE};

struct Entry {
    session: Session,
    /// Unique per session of this server (links and peer ids are reused): verdicts and
    /// grants name it, so one meant for a replaced session never reaches its successor.
    serial: u64,
    tunnel_addr: Option<Ipv4Addr>,
    deadline: Option<Instant>,
    /// Not connected yet: counted in `Server::half_open` for its source.
    half_open: bool,
    /// The session token to push with the next verdict that admits (initial or renewal).
    auth_token: Option<IssuedToken>,
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

/// Who a session belongs to, for floats: the certificate (issuer and serial), or the user name
/// of a client without one.
fn owner_key(id: &ClientIdentity) -> String {
    if id.has_certificate() {
        format!("cert\0{}\0{}", id.issuer, id.serial_hex)
    } else {
        format!("user\0{}", id.common_name)
    }
}

pub struct Server {
    settings: ServerSettings,
    udp_cfg: Arc<SessionConfig>,
    tcp_cfg: Arc<SessionConfig>,
    tls: Arc<dyn TlsProvider>,
    tls_crypt: Option<Arc<TlsCryptKey>>,
    tls_crypt_v2: Option<Arc<TlsCryptV2Server>>,
    cookie: HmacCookie,
    limiter: ResetLimiter,
    sessions: HashMap<Link, Entry>,
    /// Sessions that ended recently, by address and client session id: their client's
    /// retransmissions still carry a valid cookie, and must not bring them back (a refused
    /// client would otherwise get a fresh session, and its tls-crypt ids from the start).
    closed: HashMap<Link, (SessionId, Instant)>,
    timers: BinaryHeap<Reverse<(Instant, Link)>>,
    pool: AddressPool,
    /// In a fleet: the blocks of the pool this gateway may lease from now.
    fence: Option<Arc<AddressFence>>,
    peers: Arc<PeerTable>,
    /// First in, first out: the id freed longest ago is reused first, so a worker's late
    /// report about an ended session is unlikely to meet a new one on the same id (and the
    /// serial it carries settles it when it does).
    free_peer_ids: VecDeque<u32>,
    /// Half-open sessions per source address: one host may hold only a share of the table.
    half_open: HashMap<std::net::IpAddr, usize>,
    events: VecDeque<ServerEvent>,
    out: VecDeque<(Link, Vec<u8>)>,
    base: Instant,
    unix_base: u32,
    env: Env,
    pub stats: ServerStats,
    next_serial: u64,
}

impl Server {
    pub fn new(
        settings: ServerSettings,
        tls: Arc<dyn TlsProvider>,
        tls_crypt: Option<Arc<TlsCryptKey>>,
        env: Env,
        now: Instant,
    ) -> Result<Server, String> {
        let pool = AddressPool::new(settings.client_cidr).map_err(|e| e.to_string())?;
        let mut secret = [0u8; 32];
        env.fill(&mut secret)
            .map_err(|_| "no randomness".to_owned())?;
        let hand_window = settings.udp.hand_window;
        // tls-crypt packet ids carry a wall-clock timestamp (doc §11.3); `now` moves it on.
        let unix_base = env.unix_secs() as u32;
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
            tls_crypt_v2: None,
            sessions: HashMap::new(),
            closed: HashMap::new(),
            timers: BinaryHeap::new(),
            pool,
            fence: None,
            peers: Arc::new(PeerTable::default()),
            free_peer_ids: (0..n).collect(),
            half_open: HashMap::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            base: now,
            unix_base,
            env,
            stats: ServerStats::default(),
            next_serial: 1,
        })
    }

    /// Accepts tls-crypt-v2 clients whose keys are wrapped under `v2` (next to tls-crypt v1
    /// clients if a v1 key was given to [`Server::new`]). Set before the first packet.
    pub fn set_tls_crypt_v2(&mut self, v2: Option<Arc<TlsCryptV2Server>>) {
        self.tls_crypt_v2 = v2;
    }

    /// In a fleet: new sessions get addresses only inside the fence's blocks, and none when
    /// the fence is closed (refused with `AUTH_FAILED,TEMP`). Set before the first packet.
    pub fn set_address_fence(&mut self, fence: Option<Arc<AddressFence>>) {
        if let Some(f) = &fence {
            f.report_free(self.pool.free_in(&f.blocks()));
        }
        self.fence = fence;
    }

    /// Tells the fence how many addresses its blocks have left.
    fn report_free(&self) {
        if let Some(f) = &self.fence {
            f.report_free(self.pool.free_in(&f.blocks()));
        }
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
            // Read once by the listeners when the tunnel starts.
            tcp_handshake_timeout: self.settings.tcp_handshake_timeout,
            tcp_idle_timeout: self.settings.tcp_idle_timeout,
            ..new
        };
        (self.udp_cfg, self.tcp_cfg) = session_configs(&keep);
        self.settings = keep;
    }

    fn unix_now(&self, now: Instant) -> u32 {
        self.unix_base
            .saturating_add(now.saturating_duration_since(self.base).as_secs() as u32)
    }

    /// After any input to a session: collect its packets and events, reschedule its timer.
    fn after(&mut self, link: Link, now: Instant) {
        self.collect(link, now);
        if let Some(e) = self.sessions.get_mut(&link) {
            let d = e.session.poll_timeout(now);
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
                    if let Some(id) = e.session.identity() {
                        peer.set_owner(owner_key(id));
                    }
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
                        self.report_free();
                    }
                    self.free_peer_ids.push_back(peer.peer_id);
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
                let a = match &self.fence {
                    None => self.pool.acquire(user).ok_or_else(|| {
                        Refusal::new(
                            FailureCode::AddressPoolExhausted,
                            "client address pool exhausted",
                        )
                    })?,
                    Some(f) => {
                        let got = f.open_blocks(Instant::now()).and_then(|b| {
                            self.pool.acquire_in(user, &b).ok_or(Closed::NoFreeAddress)
                        });
                        f.report_free(self.pool.free_in(&f.blocks()));
                        // Temporary: another gateway, or this one in a moment, has addresses.
                        got.map_err(|c| {
                            Refusal::temporary(
                                FailureCode::AddressBlockUnavailable,
                                match c {
                                    Closed::NoLease => "gateway lost its fleet lease, try another",
                                    Closed::NoFreeAddress => {
                                        "no leased address free on this gateway"
                                    }
                                },
                            )
                        })?
                    }
                };
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
            auth_token_user: e.auth_token.as_ref().map(|t| t.user.clone()),
            auth_token: e.auth_token.take().map(|t| t.token),
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
            // A renewed token goes alone, as OpenVPN's `send_push_reply_auth_token`.
            Ok(()) => Ok(self
                .sessions
                .get_mut(&link)
                .and_then(|e| e.auth_token.take())
                .map(|t| vec![format!("PUSH_REPLY,auth-token {}", t.token)])
                .unwrap_or_default()),
            Err(e) => Err(e),
        };
        self.authorize(link, key_id, v, now);
        // Called from outside the collect loop: send the push (or AUTH_FAILED) now rather
        // than at the session's next timer or the client's next PUSH_REQUEST.
        self.after(link, now);
    }

    /// The authenticator minted a session token for the verdict on session `session` that
    /// follows (dropped if that session is gone).
    pub fn set_auth_token(&mut self, link: Link, session: u64, token: IssuedToken) {
        if let Some(e) = self.sessions.get_mut(&link) {
            if e.serial == session {
                // The client sends the token with this name from now on.
                e.session.allow_token_user(&token.user);
                e.auth_token = Some(token);
            }
        }
    }

    /// The authenticator continues out of band (a web login): the session of `link` (if it is
    /// still the one with serial `session`) tells its client to wait and where to log in.
    pub fn auth_pending(
        &mut self,
        link: Link,
        session: u64,
        key_id: KeyId,
        timeout: std::time::Duration,
        info: &str,
        now: Instant,
    ) {
        match self.sessions.get_mut(&link) {
            Some(e) if e.serial == session => e.session.auth_pending(key_id, timeout, info, now),
            _ => return,
        }
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

    /// A worker floated a peer to a new UDP address (an authenticated packet came from there,
    /// see [`PeerTable::open`]): the session follows, with its timers. A report about a session
    /// that is gone (its serial differs) changes nothing.
    pub fn floated(&mut self, f: Float, now: Instant) {
        // Workers report in any order: the session follows its peer to wherever the peer is
        // now, and a report that finds them together changes nothing.
        let at = self
            .sessions
            .iter()
            .find(|(_, e)| e.serial == f.session)
            .map(|(l, _)| *l);
        let Some(from) = at else {
            // The session ended meanwhile; a worker that moved its peer after the removal left
            // it in the table at `to`: take it out, or it would hold that address.
            if let Some(p) = self.peers.by_link(&f.to) {
                if p.session == f.session && p.peer_id == f.peer_id {
                    self.peers.remove(&p);
                }
            }
            return;
        };
        let e = &self.sessions[&from];
        let peer = e.session.peer().clone();
        let to = peer.link();
        if to == from {
            return;
        }
        if let Some(other) = self.sessions.get(&to) {
            // What OpenVPN does (multi_process_float): a client may take over an address its
            // own stale session holds (same certificate), which is then closed like any other
            // session; an address of another client's session (or a half-open one) is refused,
            // so no one can end a session by floating onto its address.
            let same_owner = match (e.session.identity(), other.session.identity()) {
                (Some(a), Some(b)) => owner_key(a) == owner_key(b),
                _ => false,
            };
            if !same_owner {
                self.stats.float_refused += 1;
                // The worker moved the peer already: back to where its session is.
                self.peers.relink(&peer, from);
                return;
            }
            if let Some(o) = self.sessions.get_mut(&to) {
                o.session.kill(CloseReason::Server(
                    "replaced by the same client from this address".into(),
                ));
            }
            // Disconnected event, address and peer id back, as for any end of a session.
            self.collect(to, now);
            // The stale session's peer left the table: the floating one is found at `to`.
            self.peers.relink(&peer, to);
        }
        let Some(mut e) = self.sessions.remove(&from) else {
            return;
        };
        // The timer heap is keyed by link: the session's deadline is scheduled anew at `to`
        // (an entry left at `from` is stale and skipped).
        e.deadline = None;
        if e.half_open {
            release_half_open(&mut self.half_open, from);
            *self.half_open.entry(to.addr().ip()).or_default() += 1;
        }
        let session = e.serial;
        self.sessions.insert(to, e);
        self.events.push_back(ServerEvent::Floated {
            peer_id: peer.peer_id,
            session,
            from,
            to,
        });
        self.after(to, now);
    }

    /// OCC_EXIT seen by a worker on the data channel of session `session` (its serial): that
    /// session ends; a late report about an ended session changes nothing.
    pub fn client_exit(&mut self, peer_id: u32, session: u64, now: Instant) {
        let link = self
            .sessions
            .iter()
            .find(|(_, e)| e.serial == session && e.session.peer().peer_id == peer_id)
            .map(|(l, _)| *l);
        if let Some(link) = link {
            if let Some(e) = self.sessions.get_mut(&link) {
                e.session.kill(CloseReason::ClientExit);
            }
            self.after(link, now);
        }
    }

    /// Ends the session on `peer_id` now: an operator's disconnect ([`CloseReason::Server`]:
    /// the client gets `HALT,<why>` first), or any other reason without notice. Workers'
    /// reports name the session too and go to [`Self::client_exit`].
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
