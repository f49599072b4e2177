//! Session tokens in a running gateway (see [`super::token`] for the token itself): which
//! token session each admitted VPN session belongs to, minting at a login and renewing at a
//! renegotiation or a reconnect, checking a token the client sends instead of its password,
//! and revoking the token of a terminated session ([`super::revoked`]).
//!
//! A token stands for the login only. A reconnect with one still reads the directory user's
//! state and groups (with the service account, no bind as the user), so a disabled user or
//! lost groups are refused as at any login; certificates are checked by TLS at every key
//! exchange; and the periodic group re-check covers token sessions as any other. A web
//! login's user and groups travel in the token, so any gateway with the secret admits the
//! reconnect (no provider can be asked again: the groups are the login's until the token's
//! lifetime).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::grants::Grant;
use super::revoked::Revoked;
use super::token::{unix_now, Claims, Granted, Kind, TokenError, TokenKey, SESSION_ID_LEN};
use crate::io::Pending;
use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, IssuedToken, Refusal};

type SessionId = [u8; SESSION_ID_LEN];

/// The token session of one VPN session.
#[derive(Clone)]
struct Held {
    id: SessionId,
    initial: u64,
    /// The name the client sends with the token (pushed as `auth-token-user`).
    user: String,
    granted: Granted,
}

/// What an accepted token admits.
pub struct Admitted {
    pub claims: Claims,
    /// A web login's grant (from the token, or kept here when it did not fit).
    pub sso: Option<Grant>,
}

/// Session tokens of one endpoint.
pub struct SessionTokens {
    key: TokenKey,
    /// By link and session serial (the [`AuthRequest::session`]).
    held: Mutex<HashMap<(Link, u64), Held>>,
    /// Web logins whose groups did not fit in the token ([`Kind::SsoHeldLocally`]): kept
    /// on the gateway that saw the login.
    sso: Mutex<HashMap<SessionId, (Grant, u64)>>,
    revoked: Arc<Revoked>,
}

impl SessionTokens {
    pub fn new(key: TokenKey, revoked: Revoked) -> SessionTokens {
        SessionTokens {
            key,
            held: Mutex::new(HashMap::new()),
            sso: Mutex::new(HashMap::new()),
            revoked: Arc::new(revoked),
        }
    }

    /// The revoked token sessions (the fleet member shares them with the other gateways).
    pub fn revoked(&self) -> Arc<Revoked> {
        self.revoked.clone()
    }

    /// A real login succeeded (password, TOTP or web login): a new token session. `sso`:
    /// the provider's grant.
    /// `directory`: the login checked a directory password (a reconnect reads the entry).
    pub fn issue(
        &self,
        link: Link,
        req: &AuthRequest,
        sso: Option<Grant>,
        directory: bool,
        pending: &Pending,
    ) -> Option<IssuedToken> {
        let now = unix_now();
        let granted = match &sso {
            Some(g) => Granted {
                kind: Kind::Sso,
                user: g.username.clone(),
                groups: g.groups.clone(),
            },
            None if directory => Granted {
                kind: Kind::Directory,
                user: req.username.clone(),
                groups: Vec::new(),
            },
            None => Granted {
                kind: Kind::Certificate,
                user: String::new(),
                groups: Vec::new(),
            },
        };
        // The name the client sends with the token from now on: the user the login proved
        // (a web login's, which the client never typed), else the certificate's name, as a
        // client without `auth-user-pass` has none to send.
        let user = [&granted.user, &req.username, &req.identity.common_name]
            .into_iter()
            .find(|n| !n.is_empty())
            .cloned()
            .unwrap_or_default();
        let mut held = Held {
            id: self.key.new_session_id(),
            initial: now,
            user,
            granted,
        };
        let Some(token) = self.mint(&mut held, now) else {
            tracing::warn!(%link, "no session token: the user name is too long for one");
            return None;
        };
        if held.granted.kind == Kind::SsoHeldLocally {
            if let Some(g) = sso {
                let mut m = lock(&self.sso);
                let life = self.key.lifetime_secs;
                m.retain(|_, (_, initial)| initial.saturating_add(life) > now);
                m.insert(held.id, (g, now));
            }
        }
        self.hold(link, req.session, held, now);
        pending.issue_token(token.clone());
        Some(token)
    }

    /// A renegotiation checked by its password: the session's token is renewed (none if the
    /// session holds none).
    pub fn renew(&self, link: Link, req: &AuthRequest, pending: &Pending) {
        let held = lock(&self.held).get(&(link, req.session)).cloned();
        if let Some(mut h) = held {
            if let Some(t) = self.mint(&mut h, unix_now()) {
                pending.issue_token(t);
            }
        }
    }

    /// The client sent `token` as its password. A renegotiation needs its own session's
    /// token; a new connection (a reconnect) takes over the token's session. A revoked
    /// token is refused.
    pub fn check(&self, link: Link, req: &AuthRequest, token: &str) -> Result<Admitted, Refusal> {
        let now = unix_now();
        let claims = self
            .key
            .verify(&req.username, token, now)
            .map_err(refusal)?;
        if self.revoked.contains(&claims.session_id) {
            return Err(Refusal::new(
                FailureCode::TokenRevoked,
                "SESSION:session ended by the administrator, log in again",
            ));
        }
        if !req.initial {
            let held = lock(&self.held).get(&(link, req.session)).map(|h| h.id);
            if held != Some(claims.session_id) {
                return Err(Refusal::new(
                    FailureCode::TokenInvalid,
                    "SESSION:session token of another session",
                ));
            }
            return Ok(Admitted { claims, sso: None });
        }
        let g = &claims.granted;
        let sso = match g.kind {
            Kind::Sso => Some(Grant {
                username: g.user.clone(),
                groups: g.groups.clone(),
                name_unverified: !req.identity.has_certificate(),
            }),
            Kind::SsoHeldLocally => Some(
                lock(&self.sso)
                    .get(&claims.session_id)
                    .map(|(g, _)| g.clone())
                    // Groups too many for the token, kept where the login was seen: the
                    // user logs in again (a 2.6 client does so by itself).
                    .ok_or_else(|| {
                        Refusal::new(
                            FailureCode::TokenInvalid,
                            "SESSION:session unknown on this gateway, log in again",
                        )
                    })?,
            ),
            Kind::Directory | Kind::Certificate => None,
        };
        Ok(Admitted { claims, sso })
    }

    /// A token was accepted ([`SessionTokens::check`]): the session holds the token's
    /// session from now on, and gets a renewed token.
    pub fn accepted(&self, link: Link, req: &AuthRequest, claims: &Claims, pending: &Pending) {
        let now = unix_now();
        let mut held = Held {
            id: claims.session_id,
            initial: claims.initial,
            user: req.username.clone(),
            granted: claims.granted.clone(),
        };
        if let Some(t) = self.mint(&mut held, now) {
            self.hold(link, req.session, held, now);
            pending.issue_token(t);
        }
    }

    /// The sessions at `link` were terminated by the operator: their tokens are refused
    /// from now on, here and after a restart, and in a fleet on every gateway
    /// (`crate::fleet::revocations`).
    pub fn revoke_link(&self, link: Link) -> usize {
        let now = unix_now();
        let life = self.key.lifetime_secs;
        let ids: Vec<(SessionId, u64)> = lock(&self.held)
            .iter()
            .filter(|((l, _), _)| *l == link)
            .map(|(_, h)| (h.id, h.initial.saturating_add(life)))
            .collect();
        self.revoked.revoke(&ids, now);
        ids.len()
    }

    /// Mints `held`'s token at `now` (its kind becomes the one the token holds).
    fn mint(&self, held: &mut Held, now: u64) -> Option<IssuedToken> {
        let (token, kind) = self
            .key
            .mint(&held.user, held.id, held.initial, now, &held.granted)?;
        held.granted.kind = kind;
        if kind == Kind::SsoHeldLocally {
            held.granted.groups.clear();
        }
        Some(IssuedToken {
            token,
            user: held.user.clone(),
        })
    }

    fn hold(&self, link: Link, session: u64, held: Held, now: u64) {
        let mut m = lock(&self.held);
        // Sessions end without telling; their tokens die at the lifetime, so do the entries.
        let life = self.key.lifetime_secs;
        m.retain(|_, h| h.initial.saturating_add(life) > now);
        m.insert((link, session), held);
    }
}

/// The refusal of a token (`SESSION:` as OpenVPN's server says it: a 2.6 client that holds a
/// token drops it and reconnects with the user's credentials).
fn refusal(e: TokenError) -> Refusal {
    match e {
        TokenError::Expired => Refusal::new(
            FailureCode::TokenExpired,
            "SESSION:session expired, log in again",
        ),
        TokenError::Invalid | TokenError::Malformed => {
            Refusal::new(FailureCode::TokenInvalid, "SESSION:session token not valid")
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
