//! Connection authentication beyond the certificate: the directory check, the failed-login
//! rate limit and the client-connect hook, run as one [`Authorizer`] on the tunnel's
//! authorizer threads (never on the control thread, so other sessions keep flowing). What it
//! admits a session with goes to the [`Grants`].
//!
//! The server sends no PUSH_REPLY and makes no data-path entry before the verdict
//! (`AuthMode::External`); a session whose verdict never comes times out in its handshake
//! window.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::directory::{DirError, Directory};
use super::grants::{combined_groups, Grant, Grants};
use super::hook::ConnectHook;
use super::limiter::{source_key, FailureLimiter};
use super::oidc::Sso;
use super::sessions::SessionTokens;
use super::slots::LoginSlots;
use super::token::Kind;
use crate::config::EndpointConfig;
use crate::io::{Authorizer, Pending};
use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, Refusal};

/// Local groups of a user name (from the live policy).
pub type LocalGroups = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// How a connection is authenticated.
pub struct Authenticator {
    pub directory: Option<Arc<Directory>>,
    /// The directory user name must equal the certificate's common name.
    pub username_must_match_cn: bool,
    pub hook: Option<ConnectHook>,
    pub local_groups: LocalGroups,
    // The limiters, the replay guard, the login slots and the session tokens are shared
    // with the authenticator that replaces this one on a reload ([`AuthState`]): a reload
    // must not forget failed logins, let a code be used twice or lose issued tokens.
    pub per_user: Arc<Mutex<FailureLimiter>>,
    pub per_source: Arc<Mutex<FailureLimiter>>,
    pub grants: Arc<Grants>,
    /// `auth.static_challenge` is set: the password carries a TOTP code (SCRV1).
    pub otp: bool,
    /// The last TOTP step accepted per user: a code works once.
    pub otp_used: Arc<Mutex<HashMap<String, u64>>>,
    /// Directory logins in progress (each holds a thread while the directory answers).
    pub logins: Arc<LoginSlots>,
    /// How long a renegotiation waits for a login slot before it is refused for now.
    pub renegotiation_wait: Duration,
    /// Single sign-on (`"oidc"` in `auth.methods`): the web login replaces the directory.
    pub sso: Option<Arc<Sso>>,
    /// Session tokens (`auth.token_secret_file`): pushed after a login, accepted instead of
    /// the password on renegotiations and reconnects.
    pub tokens: Option<Arc<SessionTokens>>,
}

/// What outlives one authenticator: built once at start, handed to each authenticator a
/// reload builds (see `auth::live`).
#[derive(Clone)]
pub struct AuthState {
    pub grants: Arc<Grants>,
    pub local_groups: LocalGroups,
    pub per_user: Arc<Mutex<FailureLimiter>>,
    pub per_source: Arc<Mutex<FailureLimiter>>,
    pub otp_used: Arc<Mutex<HashMap<String, u64>>>,
    pub logins: Arc<LoginSlots>,
    /// The client-connect hook (top-level `client_connect*`, restart-only).
    pub hook: Option<ConnectHook>,
    /// Session tokens: the secret is a host-local file read at start (restart-only).
    pub tokens: Option<Arc<SessionTokens>>,
}

/// A renegotiation's wait for a login slot: well inside the 60 s handshake window, so the
/// session's key exchange does not time out while it waits.
pub const RENEGOTIATION_WAIT: Duration = Duration::from_secs(20);

impl AuthState {
    /// The state of an endpoint's configuration at start. `grants` receives what each
    /// admitted session was granted; `local_groups` resolves the policy's local groups.
    pub fn new(
        cfg: &EndpointConfig,
        grants: Arc<Grants>,
        local_groups: LocalGroups,
    ) -> anyhow::Result<AuthState> {
        let tokens = match &cfg.auth.token_secret_file {
            Some(f) => Some(Arc::new(SessionTokens::new(
                super::token::TokenKey::from_file(
                    f,
                    cfg.auth.token_lifetime_secs,
                    cfg.token_renewal_secs(),
                )?,
                super::revoked::Revoked::load(
                    cfg.auth.token_revocation_path(),
                    super::token::unix_now(),
                )?,
            ))),
            None => None,
        };
        let window = Duration::from_secs(cfg.auth.failed_login_window_secs.max(1));
        Ok(AuthState {
            grants,
            local_groups,
            per_user: Arc::new(Mutex::new(FailureLimiter::new(
                cfg.auth.failed_logins_per_user,
                window,
            ))),
            per_source: Arc::new(Mutex::new(FailureLimiter::new(
                cfg.auth.failed_logins_per_source,
                window,
            ))),
            otp_used: Arc::default(),
            logins: Arc::default(),
            hook: ConnectHook::from_config(cfg)?,
            tokens,
        })
    }
}

impl Authenticator {
    /// The authenticator an endpoint's configuration asks for, over `state`: `None` when it
    /// uses neither a directory, single sign-on nor a client-connect hook (the certificate
    /// alone decides, and the server answers at once instead of waiting for an external
    /// verdict). `sso` is the running single sign-on when `cfg` uses it (its listener is
    /// the caller's to keep). The limiters are `state`'s, with the limits it holds.
    pub fn build(
        cfg: &EndpointConfig,
        state: &AuthState,
        sso: Option<Arc<Sso>>,
    ) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        let directory = match (&cfg.directory, cfg.auth.uses_directory()) {
            (Some(d), true) => Some(Arc::new(
                Directory::new(d).context("setting up the directory client")?,
            )),
            _ => None,
        };
        if directory.is_none() && state.hook.is_none() && sso.is_none() {
            return Ok(None);
        }
        Ok(Some(Authenticator {
            directory,
            username_must_match_cn: cfg.auth.username_must_match_cn,
            hook: state.hook.clone(),
            local_groups: state.local_groups.clone(),
            per_user: state.per_user.clone(),
            per_source: state.per_source.clone(),
            grants: state.grants.clone(),
            otp: cfg.auth.static_challenge.is_some(),
            otp_used: state.otp_used.clone(),
            logins: state.logins.clone(),
            renegotiation_wait: RENEGOTIATION_WAIT,
            sso,
            tokens: state.tokens.clone(),
        }))
    }

    pub fn into_authorizer(self) -> Authorizer {
        Self::shared_authorizer(Arc::new(self))
    }

    /// The authorizer over an authenticator shared with the console's self-service portal
    /// (one failed-login limit and one-time-code replay guard for both).
    pub fn shared_authorizer(a: Arc<Self>) -> Authorizer {
        Arc::new(move |link, req, pending| a.decide_caught(link, req, pending))
    }

    /// [`Authenticator::decide_pending`]; a panic in a directory library must still produce
    /// a verdict (fail closed).
    pub fn decide_caught(
        &self,
        link: Link,
        req: &AuthRequest,
        pending: &Pending,
    ) -> Result<(), Refusal> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decide_pending(link, req, pending)
        })) {
            Ok(v) => v,
            Err(_) => {
                tracing::error!(%link, "authentication panicked; connection refused");
                Err(Refusal::new(FailureCode::Internal, "internal error"))
            }
        }
    }

    /// [`Authenticator::decide`], with a web login first for a new connection when single
    /// sign-on is on: the groups then come from the provider's claim. A renegotiation keeps
    /// the session's web login (its TLS session is the one that logged in; the certificate
    /// name and user name cannot change, see the session). With session tokens, a token sent
    /// as the password replaces the password or web login, and every admitted login or
    /// renegotiation gets a new or renewed token.
    pub fn decide_pending(
        &self,
        link: Link,
        req: &AuthRequest,
        pending: &Pending,
    ) -> Result<(), Refusal> {
        if let Some(t) = &self.tokens {
            if super::token::is_token(req.password.expose()) {
                return self.decide_token(t, link, req, pending);
            }
        }
        let sso_grant = match &self.sso {
            None => self.decide(link, req).map(|()| None),
            Some(sso) => self.decide_sso(sso, link, req, pending),
        }?;
        if let Some(t) = &self.tokens {
            if req.initial {
                t.issue(link, req, sso_grant, self.directory.is_some(), pending);
            } else {
                t.renew(link, req, pending);
            }
        }
        Ok(())
    }

    /// A web login for a new connection; `Ok` with the provider's grant (`None` for a
    /// renegotiation, which keeps the login).
    fn decide_sso(
        &self,
        sso: &Sso,
        link: Link,
        req: &AuthRequest,
        pending: &Pending,
    ) -> Result<Option<Grant>, Refusal> {
        if !req.initial {
            tracing::info!(%link, "renegotiation keeps the session's web login");
            return Ok(None);
        }
        let who = sso.login(link, req, pending)?;
        let grant = Grant {
            username: who.username,
            groups: who.groups,
            name_unverified: !req.identity.has_certificate(),
        };
        self.after_sso(link, req, grant.clone())?;
        Ok(Some(grant))
    }

    /// The hook and the grant of a web login (or of a reconnect that resumes one).
    fn after_sso(&self, link: Link, req: &AuthRequest, grant: Grant) -> Result<(), Refusal> {
        // The client-connect hook is told the provider's user, not what the client typed.
        let mut req = req.clone();
        req.username = grant.username.clone();
        self.after_login(link, &req, grant)
    }

    /// The client sent a session token as its password: no bind as the user, no web login.
    /// A reconnect still reads a directory user's state and groups (service account), so a
    /// disabled user or one whose groups went is refused as at any login. A new connection's
    /// token counts against the failed-login limits as a password does (per user, per
    /// source): a refused one spends them, so tokens cannot be tried faster than passwords.
    fn decide_token(
        &self,
        t: &SessionTokens,
        link: Link,
        req: &AuthRequest,
        pending: &Pending,
    ) -> Result<(), Refusal> {
        let user = req.username.as_str();
        // A renegotiation's token is checked against its own session's (a refused one ends
        // the session, and its reconnect comes here as a new connection).
        let mut limits = Tokens {
            auth: self,
            user: Vec::new(),
            source: None,
            spent: false,
        };
        if req.initial {
            let now = Instant::now();
            let allowed = limits.take_user(&format!("user:{}", user.to_lowercase()), now)
                && limits.take_source(&source_key(link.addr().ip()), now);
            if !allowed {
                tracing::warn!(%link, user, "session token refused: too many failed logins");
                return Err(Refusal::new(
                    FailureCode::RateLimited,
                    "too many failed logins, try again later",
                ));
            }
        }
        let admitted = t.check(link, req, req.password.expose()).inspect_err(|r| {
            limits.spent = true;
            tracing::warn!(%link, user, code = %r.code, "session token refused");
        })?;
        drop(limits);
        let claims = admitted.claims;
        if req.initial {
            let wrong_endpoint = || {
                // Minted with this secret for a login this endpoint no longer does (its
                // methods changed): the user logs in again.
                Refusal::new(
                    FailureCode::TokenInvalid,
                    "SESSION:session token for another sign-in method, log in again",
                )
            };
            match (claims.granted.kind, admitted.sso) {
                (_, Some(g)) if self.sso.is_some() => self.after_sso(link, req, g)?,
                (Kind::Directory, None) => {
                    let Some(dir) = &self.directory else {
                        return Err(wrong_endpoint());
                    };
                    if self.username_must_match_cn && user != req.identity.common_name {
                        return Err(Refusal::new(
                            FailureCode::UsernameMismatch,
                            "username does not match the certificate",
                        ));
                    }
                    let u = dir.refresh(user).map_err(|e| {
                        tracing::warn!(%link, user, reason = %e, "reconnect with a session token refused by the directory");
                        e.refusal()
                    })?;
                    let grant = Grant {
                        username: user.to_owned(),
                        groups: u.groups,
                        ..Grant::default()
                    };
                    self.after_login(link, req, grant)?;
                }
                (Kind::Certificate, None) if self.directory.is_none() && self.sso.is_none() => {
                    self.after_login(link, req, Grant::default())?
                }
                _ => return Err(wrong_endpoint()),
            }
        }
        tracing::info!(%link, user, initial = req.initial, kind = ?claims.granted.kind, "session token accepted");
        t.accepted(link, req, &claims, pending);
        Ok(())
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
            let must_match = self.username_must_match_cn.then_some(cn);
            grant = self.directory_login(
                dir,
                &link,
                req.username.as_str(),
                must_match,
                link.addr().ip(),
                Credentials::Openvpn(req.password.expose()),
            )?;
        }
        self.after_login(link, req, grant)
    }

    /// The directory check shared by VPN logins and the self-service portal: the user name's
    /// spelling, the failed-login limits (per user, per source, per directory entry), the
    /// login slots, the password and the one-time code. `must_match` is the certificate name
    /// the user name must equal (`username_must_match_cn`); `link` names the login in logs.
    pub(super) fn directory_login(
        &self,
        dir: &Directory,
        link: &dyn std::fmt::Display,
        user: &str,
        must_match: Option<&str>,
        source: std::net::IpAddr,
        credentials: Credentials<'_>,
    ) -> Result<Grant, Refusal> {
        // The directory ignores leading and trailing spaces (RFC 4518): such a spelling
        // would be another limiter bucket and replay-guard key for the same entry.
        if user.trim() != user || user.chars().any(char::is_control) {
            tracing::warn!(%link, user = ?user, "login refused: user name with leading or trailing spaces or control characters");
            return Err(Refusal::new(
                FailureCode::InvalidCredentials,
                "user name with leading or trailing spaces or control characters",
            ));
        }
        let source = source_key(source);
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
        if let Some(cn) = must_match.filter(|cn| *cn != user) {
            tracing::warn!(%link, user, common_name = cn, "username does not match the certificate");
            return Err(Refusal::new(
                FailureCode::UsernameMismatch,
                "username does not match the certificate",
            ));
        }
        let Some(_slot) = self.logins.try_take() else {
            tracing::warn!(%link, user, "login refused: too many directory logins in progress");
            return Err(Refusal::temporary(
                FailureCode::DirectoryBusy,
                "directory busy, try again later",
            ));
        };
        let t0 = Instant::now();
        let Some((password, code)) = credentials.split(self.otp) else {
            tracing::warn!(%link, user, "login without the one-time code (no static-challenge in the profile?)");
            return Err(Refusal::new(
                FailureCode::OneTimeCode,
                "one-time code required",
            ));
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
                Ok(Grant {
                    username: user.to_owned(),
                    groups: u.groups,
                    ..Grant::default()
                })
            }
            Err(e) => {
                // An outage is not the user's fault: it does not use up their tokens.
                tokens.spent = !matches!(e, DirError::Unavailable(_));
                tracing::warn!(%link, user, reason = %e, "directory login failed");
                Err(e.refusal())
            }
        }
    }

    /// The client-connect hook, then the grant offered to the session.
    fn after_login(&self, link: Link, req: &AuthRequest, grant: Grant) -> Result<(), Refusal> {
        let cn = req.identity.common_name.as_str();
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
            match crate::auth::otp::parse_scrv1(req.password.expose()) {
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
        // Never waved through unchecked (a flood of logins would otherwise let every
        // renegotiation pass, changed password or not): it waits for a slot, and if none
        // comes free in time, a temporary refusal ends the session and the client
        // reconnects after its backoff, checked then.
        let Some(_slot) = self.logins.take_within(self.renegotiation_wait) else {
            tracing::warn!(%link, user, "renegotiation refused: too many directory logins in progress");
            return Err(Refusal::temporary(
                FailureCode::DirectoryBusy,
                "directory busy, try again later",
            ));
        };
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
        let step = crate::auth::otp::verify(secret, code, now)
            .ok_or(DirError::Otp("invalid one-time code"))?;
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

/// What a login typed, as it arrives.
#[derive(Clone, Copy)]
pub(super) enum Credentials<'a> {
    /// The OpenVPN password field: `SCRV1:<password>:<code>` when the endpoint asks a code.
    Openvpn(&'a str),
    /// The portal's form: the password and the code in their own fields.
    Portal { password: &'a str, code: &'a str },
}

impl Credentials<'_> {
    /// The password and, when `otp`, the code; `None` when the code is missing.
    fn split(&self, otp: bool) -> Option<(String, Option<String>)> {
        match (*self, otp) {
            (Credentials::Openvpn(p), true) => {
                crate::auth::otp::parse_scrv1(p).map(|(p, c)| (p, Some(c)))
            }
            (Credentials::Openvpn(p), false) => Some((p.to_owned(), None)),
            (Credentials::Portal { password, code }, true) => {
                let code = code.trim();
                (!code.is_empty()).then(|| (password.to_owned(), Some(code.to_owned())))
            }
            (Credentials::Portal { password, .. }, false) => Some((password.to_owned(), None)),
        }
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

#[cfg(test)]
#[path = "authenticator_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "authenticator_token_tests.rs"]
mod token_tests;
