//! Connection authentication beyond the certificate: the directory check, the failed-login
//! rate limit and the client-connect hook, run as one [`Authorizer`] on the tunnel's
//! authorizer threads (never on the control thread, so other sessions keep flowing), and the
//! registry of what each admitted session was granted (its username and directory groups),
//! which the data-path hooks and the group re-check read.
//!
//! The server sends no PUSH_REPLY and makes no data-path entry before the verdict
//! (`AuthMode::External`); a session whose verdict never comes times out in its handshake
//! window.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connect_hook::ConnectHook;
use crate::directory::{DirError, Directory};
use crate::openvpn::peer::Link;
use crate::openvpn::session::{AuthRequest, FailureCode, Refusal};
use crate::tunnel::Authorizer;

/// What a session was admitted with, beyond its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The directory user name (empty with certificate-only authentication).
    pub username: String,
    /// Directory groups (names, DNs or SIDs, as `directory.group_id` says).
    pub groups: Vec<String>,
}

/// How long an offered grant waits for its session to be established.
const PENDING_TTL: Duration = Duration::from_secs(300);

/// Grants by link and session serial until the session is established (a link is reused by a
/// client that restarts, so the serial tells its sessions apart), then by peer id until it
/// ends.
#[derive(Debug, Default)]
pub struct Grants {
    pending: Mutex<HashMap<(Link, u64), (Grant, Instant)>>,
    live: Mutex<HashMap<u32, Grant>>,
}

impl Grants {
    pub fn offer(&self, link: Link, session: u64, g: Grant) {
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A verdict that arrives after its session died leaves an entry no event removes:
        // a session is established within its handshake window, so older ones are stale.
        p.retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_TTL);
        p.insert((link, session), (g, now));
    }

    /// Session `session` on `link` is established as `peer_id`: its grant moves to the live
    /// set.
    pub fn establish(&self, link: Link, session: u64, peer_id: u32) -> Option<Grant> {
        let g = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(link, session))?
            .0;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer_id, g.clone());
        Some(g)
    }

    /// A session ended: a peer id belongs to one session at a time, so its entry goes.
    pub fn end(&self, link: Link, peer_id: u32) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(l, _), _| *l != link);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer_id);
    }

    pub fn get(&self, peer_id: u32) -> Option<Grant> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer_id)
            .cloned()
    }

    pub fn update(&self, peer_id: u32, groups: Vec<String>) {
        if let Some(g) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&peer_id)
        {
            g.groups = groups;
        }
    }

    /// (peer id, username) of every live session with a directory user.
    pub fn directory_users(&self) -> Vec<(u32, String)> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, g)| !g.username.is_empty())
            .map(|(p, g)| (*p, g.username.clone()))
            .collect()
    }
}

/// Token buckets of failed logins: each failure takes a token, tokens come back at
/// `capacity / window`; with no token left, logins are refused before the directory is asked.
#[derive(Debug)]
pub struct FailureLimiter {
    capacity: f64,
    per_sec: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

/// Entries kept before full buckets are dropped (memory stays bounded under a spray).
const LIMITER_ENTRIES: usize = 10_000;

impl FailureLimiter {
    /// `capacity` failures per `window`; 0 = no limit.
    pub fn new(capacity: u32, window: Duration) -> Self {
        Self {
            capacity: f64::from(capacity),
            per_sec: f64::from(capacity) / window.as_secs_f64().max(1.0),
            buckets: HashMap::new(),
        }
    }

    fn level(&self, key: &str, now: Instant) -> f64 {
        match self.buckets.get(key) {
            None => self.capacity,
            Some((t, at)) => (t + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
                .min(self.capacity),
        }
    }

    pub fn allowed(&self, key: &str, now: Instant) -> bool {
        self.capacity == 0.0 || self.level(key, now) >= 1.0
    }

    pub fn failed(&mut self, key: &str, now: Instant) {
        if self.capacity == 0.0 {
            return;
        }
        let t = (self.level(key, now) - 1.0).max(0.0);
        if self.buckets.len() >= LIMITER_ENTRIES && !self.buckets.contains_key(key) {
            let (cap, per_sec) = (self.capacity, self.per_sec);
            self.buckets.retain(|_, (t, at)| {
                t.to_owned() + now.saturating_duration_since(*at).as_secs_f64() * per_sec < cap
            });
        }
        self.buckets.insert(key.to_owned(), (t, now));
    }
}

/// Local groups of a user name (from the live policy).
pub type LocalGroups = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// How a connection is authenticated.
pub struct Authenticator {
    pub directory: Option<Arc<Directory>>,
    /// The directory user name must equal the certificate's common name.
    pub username_must_match_cn: bool,
    pub hook: Option<ConnectHook>,
    pub local_groups: LocalGroups,
    pub per_user: Mutex<FailureLimiter>,
    pub per_source: Mutex<FailureLimiter>,
    pub grants: Arc<Grants>,
    /// `auth.static_challenge` is set: the password carries a TOTP code (SCRV1).
    pub otp: bool,
    /// The last TOTP step accepted per user: a code works once.
    pub otp_used: Mutex<HashMap<String, u64>>,
    /// Directory logins in progress (each holds a thread while the directory answers).
    pub in_flight: std::sync::atomic::AtomicUsize,
}

/// Directory logins at once: past this, logins are refused at once instead of piling up
/// threads behind a slow directory (each waits out its timeouts).
pub const MAX_LOGINS_IN_FLIGHT: usize = 64;

/// Decrements the in-flight count however the login ends.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Authenticator {
    pub fn into_authorizer(self) -> Authorizer {
        let a = Arc::new(self);
        Arc::new(move |link, req| {
            // A panic in a directory library must still produce a verdict (fail closed).
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.decide(link, req))) {
                Ok(v) => v,
                Err(_) => {
                    tracing::error!(%link, "authentication panicked; connection refused");
                    Err(Refusal::new(FailureCode::Internal, "internal error"))
                }
            }
        })
    }

    /// `Err` carries the short text sent in `AUTH_FAILED` and the code the connection log and
    /// the metrics record.
    pub fn decide(&self, link: Link, req: &AuthRequest) -> Result<(), Refusal> {
        if !req.initial {
            return self.reverify(link, req);
        }
        let cn = req.identity.common_name.as_str();
        let mut grant = Grant::default();
        if let Some(dir) = &self.directory {
            let user = req.username.as_str();
            let source = source_key(link.addr().ip());
            let user_key = format!("user:{}", user.to_lowercase());
            let now = Instant::now();
            let allowed = self
                .per_user
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allowed(&user_key, now)
                && self
                    .per_source
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allowed(&source, now);
            if !allowed {
                tracing::warn!(%link, user, "login refused: too many failed logins");
                return Err(Refusal::new(
                    FailureCode::RateLimited,
                    "too many failed logins, try again later",
                ));
            }
            if self.username_must_match_cn && user != cn {
                tracing::warn!(%link, user, common_name = cn, "username does not match the certificate");
                return Err(Refusal::new(
                    FailureCode::UsernameMismatch,
                    "username does not match the certificate",
                ));
            }
            let n = self
                .in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _guard = InFlight(&self.in_flight);
            if n >= MAX_LOGINS_IN_FLIGHT {
                tracing::warn!(%link, user, in_flight = n, "login refused: too many directory logins in progress");
                return Err(Refusal::temporary(
                    FailureCode::DirectoryBusy,
                    "directory busy, try again later",
                ));
            }
            let t0 = Instant::now();
            let (password, code) = if self.otp {
                match crate::otp::parse_scrv1(req.password.expose()) {
                    Some((p, c)) => (p, Some(c)),
                    None => {
                        tracing::warn!(%link, user, "login without the one-time code (no static-challenge in the profile?)");
                        return Err(Refusal::new(
                            FailureCode::OneTimeCode,
                            "one-time code required",
                        ));
                    }
                }
            } else {
                (req.password.expose().to_owned(), None)
            };
            let checked = dir.authenticate(user, &password).and_then(|u| match &code {
                None => Ok(u),
                Some(c) => self
                    .check_code(user, u.totp_secret.as_deref(), c)
                    .map(|()| u),
            });
            match checked {
                Ok(u) => {
                    tracing::info!(%link, user, dn = u.dn, groups = ?u.groups, took_ms = t0.elapsed().as_millis() as u64, "directory login");
                    grant = Grant {
                        username: user.to_owned(),
                        groups: u.groups,
                    };
                }
                Err(e) => {
                    // An outage is not the user's fault: it does not use up their tokens.
                    if !matches!(e, DirError::Unavailable(_)) {
                        self.per_user
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .failed(&user_key, now);
                        self.per_source
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .failed(&source, now);
                    }
                    tracing::warn!(%link, user, reason = %e, "directory login failed");
                    return Err(e.refusal());
                }
            }
        }
        if let Some(hook) = &self.hook {
            let mut groups = self.groups_for(cn, &grant);
            groups.sort();
            groups.dedup();
            if let Err(reason) = hook.decide(link, req, &groups) {
                tracing::info!(%link, user = cn, code = %reason.code, message = reason.message, "client-connect hook refused");
                return Err(reason);
            }
        }
        self.grants.offer(link, req.session, grant);
        Ok(())
    }

    /// A renegotiation. Without an `auth-token` (none is pushed), a 2.6 client sends its user
    /// name and password again with every key exchange; OpenVPN's own server checks them
    /// again too, so a password changed (or an account disabled or removed) since the login
    /// ends the session at its next renegotiation instead of lasting until the session
    /// timeout. The user name cannot change (the session refuses that before). Not asked
    /// again: the hook (AWS runs it at connection time only) and a one-time code (the resent
    /// one was used at login). An outage keeps the session: the directory's absence revokes
    /// nothing, as with the group re-check.
    fn reverify(&self, link: Link, req: &AuthRequest) -> Result<(), Refusal> {
        let Some(dir) = &self.directory else {
            return Ok(());
        };
        let user = req.username.as_str();
        let password = if self.otp {
            match crate::otp::parse_scrv1(req.password.expose()) {
                Some((p, _)) => p,
                None => {
                    tracing::warn!(%link, user, "renegotiation without the static-challenge response");
                    return Err(Refusal::new(
                        FailureCode::OneTimeCode,
                        "one-time code required",
                    ));
                }
            }
        } else {
            req.password.expose().to_owned()
        };
        let n = self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _guard = InFlight(&self.in_flight);
        if n >= MAX_LOGINS_IN_FLIGHT {
            tracing::warn!(%link, user, "renegotiation not re-checked: too many directory logins in progress");
            return Ok(());
        }
        match dir.authenticate(user, &password) {
            Ok(_) => Ok(()),
            Err(e @ (DirError::Unavailable(_) | DirError::Protocol(_))) => {
                tracing::warn!(%link, user, error = %e, "renegotiation not re-checked: directory unavailable; session kept");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%link, user, reason = %e, "renegotiation refused by the directory; session ended");
                Err(e.refusal())
            }
        }
    }

    /// The TOTP code for `user`, once per time step.
    fn check_code(&self, user: &str, secret: Option<&str>, code: &str) -> Result<(), DirError> {
        let Some(secret) = secret else {
            // Said only in our log: the client is not told who has a secret enrolled.
            tracing::warn!(user, "no TOTP secret in the directory for this user");
            return Err(DirError::Otp("invalid one-time code"));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let step =
            crate::otp::verify(secret, code, now).ok_or(DirError::Otp("invalid one-time code"))?;
        let mut used = self.otp_used.lock().unwrap_or_else(|e| e.into_inner());
        let key = user.to_lowercase();
        if used.get(&key).is_some_and(|&s| s >= step) {
            return Err(DirError::Otp("one-time code already used"));
        }
        used.insert(key, step);
        Ok(())
    }

    /// Local groups of the certificate name and the directory user, plus directory groups.
    pub fn groups_for(&self, cn: &str, grant: &Grant) -> Vec<String> {
        combined_groups(&*self.local_groups, cn, grant)
    }
}

/// Local groups of `cn` and of the grant's username, with the grant's directory groups.
pub fn combined_groups(
    local: &dyn Fn(&str) -> Vec<String>,
    cn: &str,
    grant: &Grant,
) -> Vec<String> {
    let mut g = local(cn);
    if !grant.username.is_empty() && grant.username != cn {
        g.extend(local(&grant.username));
    }
    g.extend(grant.groups.iter().cloned());
    g
}

/// Rate-limit key of a source: the address (IPv4-mapped IPv6 as IPv4).
fn source_key(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    format!("src:{ip}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_capacity_and_refills() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(30));
        for _ in 0..3 {
            assert!(l.allowed("u", t0));
            l.failed("u", t0);
        }
        assert!(!l.allowed("u", t0));
        assert!(l.allowed("other", t0));
        // One token back every 10 s.
        assert!(!l.allowed("u", t0 + Duration::from_secs(9)));
        assert!(l.allowed("u", t0 + Duration::from_secs(10)));
        let off = FailureLimiter::new(0, Duration::from_secs(30));
        assert!(off.allowed("u", t0));
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(5, Duration::from_secs(1));
        for i in 0..(LIMITER_ENTRIES + 10) {
            l.failed(
                &format!("k{i}"),
                t0 + Duration::from_secs(if i < LIMITER_ENTRIES { 0 } else { 10 }),
            );
        }
        assert!(l.buckets.len() <= LIMITER_ENTRIES, "{}", l.buckets.len());
    }

    #[test]
    fn grants_follow_the_session() {
        let g = Grants::default();
        let link = Link::Udp {
            listener: 0,
            addr: "192.0.2.1:1000".parse().unwrap(),
        };
        g.offer(
            link,
            1,
            Grant {
                username: "alice".into(),
                groups: vec!["eng".into()],
            },
        );
        // Another session on the same link (a client restart) does not get it.
        assert!(g.establish(link, 2, 7).is_none());
        assert_eq!(g.establish(link, 1, 7).unwrap().groups, ["eng"]);
        assert_eq!(g.directory_users(), vec![(7, "alice".to_owned())]);
        g.update(7, vec![]);
        assert!(g.get(7).unwrap().groups.is_empty());
        g.end(link, 7);
        assert!(g.get(7).is_none());
        assert!(g.establish(link, 1, 7).is_none());
    }

    #[test]
    fn groups_combine_local_and_directory() {
        let local = |u: &str| match u {
            "alice" => vec!["local-a".to_owned()],
            "cert-cn" => vec!["local-cn".to_owned()],
            _ => vec![],
        };
        let grant = Grant {
            username: "alice".into(),
            groups: vec!["dir".into()],
        };
        assert_eq!(
            combined_groups(&local, "cert-cn", &grant),
            ["local-cn", "local-a", "dir"]
        );
        assert_eq!(
            combined_groups(&local, "alice", &Grant::default()),
            ["local-a"]
        );
    }

    fn authenticator(otp: bool) -> Authenticator {
        // 192.0.2.1 (TEST-NET-1) is never contacted: every case below is decided first.
        let cfg: crate::directory::DirectoryConfig = toml::from_str(
            r#"
            url = "ldap://192.0.2.1:389"
            user_dn_template = "uid={username},dc=example,dc=org"
            "#,
        )
        .unwrap();
        Authenticator {
            directory: Some(Arc::new(Directory::new(&cfg).unwrap())),
            username_must_match_cn: true,
            hook: None,
            local_groups: Arc::new(|_: &str| Vec::new()),
            per_user: Mutex::new(FailureLimiter::new(2, Duration::from_secs(60))),
            per_source: Mutex::new(FailureLimiter::new(10, Duration::from_secs(60))),
            grants: Arc::new(Grants::default()),
            otp,
            otp_used: Mutex::new(HashMap::new()),
            in_flight: Default::default(),
        }
    }

    fn request(cn: &str, user: &str, password: &str) -> AuthRequest {
        use crate::openvpn::{crypto::Cipher, keys::Password, options::PeerInfo, packet::KeyId};
        AuthRequest {
            session: 1,
            key_id: KeyId::ZERO,
            initial: true,
            identity: crate::openvpn::tls::ClientIdentity {
                common_name: cn.into(),
                serial_hex: "01".into(),
                not_after: std::time::SystemTime::now(),
                issuer: "CN=test".into(),
            },
            username: user.into(),
            password: Password::new(password),
            peer_info: PeerInfo::parse("IV_VER=2.6.14\n"),
            cipher: Cipher::Aes256Gcm,
        }
    }

    fn link() -> Link {
        Link::Udp {
            listener: 0,
            addr: "192.0.2.50:4000".parse().unwrap(),
        }
    }

    #[test]
    fn decisions_made_before_the_directory_is_asked() {
        let a = authenticator(false);
        assert_eq!(
            a.decide(link(), &request("alice", "bob", "pw")),
            Err(Refusal::new(
                FailureCode::UsernameMismatch,
                "username does not match the certificate"
            ))
        );
        assert_eq!(
            a.decide(link(), &request("alice", "alice", "")),
            Err(Refusal::new(
                FailureCode::InvalidCredentials,
                "invalid username or password"
            ))
        );
        // Used-up tokens refuse before any bind, even with the right password.
        let now = Instant::now();
        for _ in 0..2 {
            a.per_user.lock().unwrap().failed("user:alice", now);
        }
        assert_eq!(
            a.decide(link(), &request("alice", "alice", "right")),
            Err(Refusal::new(
                FailureCode::RateLimited,
                "too many failed logins, try again later"
            ))
        );
        let a = authenticator(true);
        assert_eq!(
            a.decide(link(), &request("alice", "alice", "no-challenge-response")),
            Err(Refusal::new(
                FailureCode::OneTimeCode,
                "one-time code required"
            ))
        );
        a.in_flight
            .store(MAX_LOGINS_IN_FLIGHT, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            a.decide(link(), &request("alice", "alice", "pw")),
            Err(Refusal::temporary(
                FailureCode::DirectoryBusy,
                "directory busy, try again later"
            ))
        );
        assert_eq!(
            a.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            MAX_LOGINS_IN_FLIGHT,
            "the guard gives its slot back"
        );
        assert!(
            a.grants.pending.lock().unwrap().is_empty(),
            "no grant for a refusal"
        );
    }

    /// Renegotiations are re-checked by the directory only: no rate limit, no name match,
    /// no hook, no grant; an empty password is refused before any bind, an unreachable
    /// directory keeps the session.
    #[test]
    fn renegotiations_recheck_only_the_password() {
        let renegotiation = |cn: &str, user: &str, pw: &str| AuthRequest {
            initial: false,
            key_id: crate::openvpn::packet::KeyId::ZERO.next(),
            ..request(cn, user, pw)
        };
        let a = authenticator(false);
        let now = Instant::now();
        for _ in 0..2 {
            a.per_user.lock().unwrap().failed("user:alice", now);
        }
        assert_eq!(
            a.decide(link(), &renegotiation("alice", "alice", "")),
            Err(Refusal::new(
                FailureCode::InvalidCredentials,
                "invalid username or password"
            )),
            "an empty password on a renegotiation ends the session"
        );
        assert_eq!(
            a.decide(link(), &renegotiation("alice", "bob", "")),
            Err(Refusal::new(
                FailureCode::InvalidCredentials,
                "invalid username or password"
            )),
            "no username_must_match_cn check on a renegotiation (the session holds the name)"
        );
        // Nothing listens on 127.0.0.1:1: the directory is unavailable, the session stays.
        let cfg: crate::directory::DirectoryConfig = toml::from_str(
            r#"
            url = "ldap://127.0.0.1:1"
            user_dn_template = "uid={username},dc=example,dc=org"
            connect_timeout_secs = 1
            timeout_secs = 1
            "#,
        )
        .unwrap();
        let a = Authenticator {
            directory: Some(Arc::new(Directory::new(&cfg).unwrap())),
            ..authenticator(false)
        };
        assert_eq!(
            a.decide(link(), &renegotiation("alice", "alice", "pw")),
            Ok(())
        );
        let otp = authenticator(true);
        assert_eq!(
            otp.decide(
                link(),
                &renegotiation("alice", "alice", "no-challenge-response")
            ),
            Err(Refusal::new(
                FailureCode::OneTimeCode,
                "one-time code required"
            ))
        );
        assert!(a.grants.pending.lock().unwrap().is_empty(), "no grant");
        let none = Authenticator {
            directory: None,
            ..authenticator(false)
        };
        assert_eq!(
            none.decide(link(), &renegotiation("alice", "bob", "")),
            Ok(())
        );
    }

    #[test]
    fn mapped_sources_share_a_key() {
        assert_eq!(
            source_key("::ffff:192.0.2.1".parse().unwrap()),
            source_key("192.0.2.1".parse().unwrap())
        );
    }
}
