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
use crate::io::Authorizer;
use crate::openvpn::peer::Link;
use crate::openvpn::session::{AuthRequest, FailureCode, Refusal};

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

/// Entries kept per limiter. Past it, full buckets are dropped first; if the map is still at
/// the cap (a spray of distinct names or sources, whose buckets are not full yet), the
/// least recently used eighth is forgotten, so memory stays bounded. A forgotten key starts
/// with a full bucket again: an attacker must fail this many times across other keys to
/// reset one, which the other limiter (per source, per user) still counts.
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
        self.set(key, t, now);
    }

    /// Takes a token when one is left (true), before the directory is asked: logins in
    /// flight at once cannot all pass one check. [`FailureLimiter::give_back`] returns it.
    pub fn try_take(&mut self, key: &str, now: Instant) -> bool {
        if self.capacity == 0.0 {
            return true;
        }
        let l = self.level(key, now);
        if l < 1.0 {
            return false;
        }
        self.set(key, l - 1.0, now);
        true
    }

    /// Returns a token taken by [`FailureLimiter::try_take`] (the login did not fail).
    pub fn give_back(&mut self, key: &str, now: Instant) {
        if self.capacity == 0.0 {
            return;
        }
        let l = (self.level(key, now) + 1.0).min(self.capacity);
        if l >= self.capacity {
            // A full bucket is the same as no entry.
            self.buckets.remove(key);
        } else {
            self.set(key, l, now);
        }
    }

    fn set(&mut self, key: &str, tokens: f64, now: Instant) {
        if self.buckets.len() >= LIMITER_ENTRIES && !self.buckets.contains_key(key) {
            let (cap, per_sec) = (self.capacity, self.per_sec);
            self.buckets.retain(|_, (t, at)| {
                t.to_owned() + now.saturating_duration_since(*at).as_secs_f64() * per_sec < cap
            });
            if self.buckets.len() >= LIMITER_ENTRIES {
                // Still full: forget the least recently used eighth (one O(n) pass per
                // LIMITER_ENTRIES / 8 new keys).
                let mut by_age: Vec<(Instant, String)> = self
                    .buckets
                    .iter()
                    .map(|(k, (_, at))| (*at, k.clone()))
                    .collect();
                let n = LIMITER_ENTRIES / 8;
                by_age.select_nth_unstable_by_key(n, |(at, _)| *at);
                for (_, k) in &by_age[..n] {
                    self.buckets.remove(k);
                }
            }
        }
        self.buckets.insert(key.to_owned(), (tokens, now));
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
            // The directory ignores leading and trailing spaces (RFC 4518): such a spelling
            // would be another limiter bucket and replay-guard key for the same entry.
            if user.trim() != user || user.chars().any(char::is_control) {
                tracing::warn!(%link, user = ?user, "login refused: user name with leading or trailing spaces or control characters");
                return Err(Refusal::new(
                    FailureCode::InvalidCredentials,
                    "user name with leading or trailing spaces or control characters",
                ));
            }
            let source = source_key(link.addr().ip());
            let user_key = format!("user:{}", user.to_lowercase());
            let now = Instant::now();
            // Tokens are taken now and given back unless the login fails (check-then-act
            // would let every login in flight pass the same check).
            let mut tokens = Tokens {
                auth: self,
                user: Vec::new(),
                source: None,
                spent: false,
            };
            let allowed = tokens.take_user(&user_key, now) && tokens.take_source(&source, now);
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
            // Spellings of one entry (case, inner spaces, compatibility forms) share the bucket
            // of its DN, taken once the DN is known and before the password is checked.
            let mut limited = false;
            let checked = dir
                .authenticate_checked(user, &password, |dn| {
                    limited = !tokens.take_user(&format!("dn:{}", dn.to_lowercase()), now);
                    !limited
                })
                .and_then(|u| match &code {
                    None => Ok(u),
                    Some(c) => self
                        .check_code(user, &u.dn, u.totp_secret.as_deref(), c)
                        .map(|()| u),
                });
            if limited {
                tracing::warn!(%link, user, "login refused: too many failed logins for this directory entry");
                return Err(Refusal::new(
                    FailureCode::RateLimited,
                    "too many failed logins, try again later",
                ));
            }
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
                    tokens.spent = !matches!(e, DirError::Unavailable(_));
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

    /// The TOTP code for `user` (entry `dn`), once per time step and entry.
    fn check_code(
        &self,
        user: &str,
        dn: &str,
        secret: Option<&str>,
        code: &str,
    ) -> Result<(), DirError> {
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
        // By entry, not by the typed name, which has many spellings.
        let key = dn.to_lowercase();
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

/// Limiter tokens one login took: given back when dropped unless `spent` (the login failed).
struct Tokens<'a> {
    auth: &'a Authenticator,
    user: Vec<String>,
    source: Option<String>,
    spent: bool,
}

impl Tokens<'_> {
    fn take_user(&mut self, key: &str, now: Instant) -> bool {
        let ok = lock(&self.auth.per_user).try_take(key, now);
        if ok {
            self.user.push(key.to_owned());
        }
        ok
    }

    fn take_source(&mut self, key: &str, now: Instant) -> bool {
        let ok = lock(&self.auth.per_source).try_take(key, now);
        if ok {
            self.source = Some(key.to_owned());
        }
        ok
    }
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        let now = Instant::now();
        let mut u = lock(&self.auth.per_user);
        for k in &self.user {
            u.give_back(k, now);
        }
        drop(u);
        if let Some(k) = &self.source {
            lock(&self.auth.per_source).give_back(k, now);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// Rate-limit key of a source: the IPv4 address (IPv4-mapped IPv6 as IPv4), or the /64 of
/// an IPv6 address (one subnet hands its holder 2^64 addresses).
fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("src:{v4}"),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                format!("src:{}/64", std::net::Ipv6Addr::from(net))
            }
        },
        v4 => format!("src:{v4}"),
    }
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
        // A spray of distinct keys 1 ms apart with the defaults: no bucket refills in time
        // (one token per minute), so dropping full buckets alone frees nothing.
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(5, Duration::from_secs(300));
        let n = LIMITER_ENTRIES + LIMITER_ENTRIES / 2;
        for i in 0..n {
            let at = t0 + Duration::from_millis(i as u64);
            l.failed(&format!("k{i}"), at);
            assert!(l.try_take(&format!("t{i}"), at));
        }
        assert!(l.buckets.len() <= LIMITER_ENTRIES, "{}", l.buckets.len());
        // The newest keys are kept (the least recently used ones went).
        let end = t0 + Duration::from_millis(n as u64);
        assert!(l.buckets.contains_key(&format!("k{}", n - 1)));
        assert!(l.level(&format!("t{}", n - 1), end) < 5.0);
    }

    #[test]
    fn tokens_taken_before_and_given_back() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, Duration::from_secs(60));
        assert!(l.try_take("u", t0));
        assert!(l.try_take("u", t0));
        assert!(!l.try_take("u", t0), "both tokens are out");
        l.give_back("u", t0);
        assert!(l.try_take("u", t0));
        l.give_back("u", t0);
        l.give_back("u", t0);
        l.give_back("u", t0);
        assert!(l.buckets.is_empty(), "a full bucket is no entry");
    }

    #[test]
    fn ipv6_sources_share_a_key_per_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(k("2001:db8:1:2::1"), "src:2001:db8:1:2::/64");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("192.0.2.1"), "src:192.0.2.1");
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

    /// A minimal LDAP server on 127.0.0.1 (BER by hand): every search finds the one entry
    /// `dn` (with `pcTotpSecret` = `totp` when set), the service account and `right` passwords
    /// bind, any other password is invalidCredentials after `delay`. Counts the user binds.
    struct FakeLdap {
        url: String,
        user_binds: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn ber(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let n = content.len();
        if n < 128 {
            v.push(n as u8);
        } else {
            v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
        v.extend_from_slice(content);
        v
    }

    /// Reads one TLV: (tag, content); `None` at the end.
    fn read_tlv(r: &mut impl std::io::Read) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        r.read_exact(&mut h).ok()?;
        let mut len = usize::from(h[1]);
        if len >= 0x80 {
            let mut b = vec![0u8; len & 0x7f];
            r.read_exact(&mut b).ok()?;
            len = b.iter().fold(0, |a, &x| (a << 8) | usize::from(x));
        }
        let mut c = vec![0u8; len];
        r.read_exact(&mut c).ok()?;
        Some((h[0], c))
    }

    fn fake_ldap(dn: &'static str, totp: Option<&'static str>, delay: Duration) -> FakeLdap {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ldap://{}", l.local_addr().unwrap());
        let user_binds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = user_binds.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let count = count.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    while let Some((_, msg)) = read_tlv(&mut s) {
                        let mut m = &msg[..];
                        let Some((_, id)) = read_tlv(&mut m) else {
                            break;
                        };
                        let Some((op, body)) = read_tlv(&mut m) else {
                            break;
                        };
                        let reply = |op: u8, content: &[u8]| {
                            let mut c = ber(0x02, &id);
                            c.extend(ber(op, content));
                            ber(0x30, &c)
                        };
                        let done =
                            |rc: u8| [vec![0x0a, 1, rc], ber(0x04, b""), ber(0x04, b"")].concat();
                        match op {
                            0x60 => {
                                let mut b = &body[..];
                                let _version = read_tlv(&mut b);
                                let name = read_tlv(&mut b).map(|t| t.1).unwrap_or_default();
                                let pw = read_tlv(&mut b).map(|t| t.1).unwrap_or_default();
                                let rc = if name.starts_with(b"cn=svc") || pw == b"right" {
                                    0
                                } else {
                                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    std::thread::sleep(delay);
                                    49
                                };
                                let _ = s.write_all(&reply(0x61, &done(rc)));
                            }
                            0x63 => {
                                let mut attrs = Vec::new();
                                if let Some(t) = totp {
                                    let vals = ber(0x31, &ber(0x04, t.as_bytes()));
                                    attrs = ber(0x30, &[ber(0x04, b"pcTotpSecret"), vals].concat());
                                }
                                let entry = [ber(0x04, dn.as_bytes()), ber(0x30, &attrs)].concat();
                                let _ = s.write_all(&reply(0x64, &entry));
                                let _ = s.write_all(&reply(0x65, &done(0)));
                            }
                            _ => break,
                        }
                    }
                });
            }
        });
        FakeLdap { url, user_binds }
    }

    fn service_authenticator(f: &FakeLdap, per_user: u32, otp: bool) -> Authenticator {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pw = std::env::temp_dir().join(format!("pc-auth-svc-{}-{n}", std::process::id()));
        std::fs::write(&pw, "svc\n").unwrap();
        let mut cfg = format!(
            "url = \"{}\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"{}\"\nuser_base = \"dc=x\"\ntimeout_secs = 5\n",
            f.url,
            pw.display()
        );
        if otp {
            cfg.push_str("totp_secret_attribute = \"pcTotpSecret\"\n");
        }
        let cfg: crate::directory::DirectoryConfig = toml::from_str(&cfg).unwrap();
        let mut a = authenticator(otp);
        a.directory = Some(Arc::new(Directory::new(&cfg).unwrap()));
        // Read by Directory::new.
        let _ = std::fs::remove_file(&pw);
        a.username_must_match_cn = false;
        a.per_user = Mutex::new(FailureLimiter::new(per_user, Duration::from_secs(300)));
        a.per_source = Mutex::new(FailureLimiter::new(100, Duration::from_secs(300)));
        a
    }

    #[test]
    fn parallel_guesses_cannot_all_pass_the_limit() {
        let f = fake_ldap("uid=alice,dc=x", None, Duration::from_millis(300));
        let a = Arc::new(service_authenticator(&f, 2, false));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let a = a.clone();
                std::thread::spawn(move || {
                    a.decide(link(), &request("x", "alice", &format!("guess{i}")))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let limited = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .err()
                    .is_some_and(|e| e.message.contains("too many"))
            })
            .count();
        assert_eq!(
            f.user_binds.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{results:?}"
        );
        assert_eq!(limited, 6, "{results:?}");
        // A success gives its tokens back.
        let a = service_authenticator(&f, 2, false);
        for _ in 0..5 {
            assert_eq!(a.decide(link(), &request("x", "alice", "right")), Ok(()));
        }
    }

    #[test]
    fn spellings_of_one_entry_share_its_limit_and_replay_guard() {
        // Every name the directory resolves to the same entry (as `alice` and `ａｌｉｃｅ` do
        // in a directory that applies NFKC) shares the entry's bucket.
        let f = fake_ldap("uid=alice,dc=x", None, Duration::ZERO);
        let a = service_authenticator(&f, 2, false);
        for name in ["alice", "Alice2"] {
            assert_eq!(
                a.decide(link(), &request("x", name, "wrong"))
                    .map_err(|r| r.message),
                Err("invalid username or password".into())
            );
        }
        assert_eq!(
            a.decide(link(), &request("x", "ａｌｉｃｅ", "wrong"))
                .map_err(|r| r.message),
            Err("too many failed logins, try again later".into())
        );
        assert_eq!(f.user_binds.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Spaces around the name are refused before anything is counted.
        for name in [" alice", "alice ", "alice\t", "al\u{7}ice"] {
            assert_eq!(
                a.decide(link(), &request("x", name, "wrong"))
                    .map_err(|r| r.message),
                Err("user name with leading or trailing spaces or control characters".into())
            );
        }
        // A code used once does not work again under another spelling of the same entry.
        const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let f = fake_ldap("uid=alice,dc=x", Some(SECRET), Duration::ZERO);
        let a = service_authenticator(&f, 5, true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let secret = crate::otp::base32_decode(SECRET).unwrap();
        let code = format!(
            "{:06}",
            crate::otp::totp_at(&secret, now / crate::otp::STEP_SECS)
        );
        let scrv1 = |p: &str, c: &str| {
            format!(
                "SCRV1:{}:{}",
                crate::otp::base64_encode(p.as_bytes()),
                crate::otp::base64_encode(c.as_bytes())
            )
        };
        assert_eq!(
            a.decide(link(), &request("x", "alice", &scrv1("right", &code))),
            Ok(())
        );
        assert_eq!(
            a.decide(link(), &request("x", "ALICE2", &scrv1("right", &code)))
                .map_err(|r| r.message),
            Err("invalid username or password".into()),
            "a replayed code is refused with the same message as a wrong password"
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
