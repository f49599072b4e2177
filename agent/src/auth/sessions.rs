//! Session tokens in a running gateway (see [`super::token`] for the token itself): which
//! token session each admitted VPN session belongs to, minting at a login and renewing at a
//! renegotiation or a reconnect, and checking a token the client sends instead of its
//! password.
//!
//! A token stands for the login only. A reconnect with one still reads the directory user's
//! state and groups (with the service account, no bind as the user), so a disabled user or
//! lost groups are refused as at any login; certificates are checked by TLS at every key
//! exchange; and the periodic group re-check covers token sessions as any other.
use std::collections::HashMap;
use std::sync::Mutex;

use super::grants::Grant;
use super::token::{unix_now, Claims, TokenError, TokenKey, SESSION_ID_LEN};
use crate::io::Pending;
use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, IssuedToken, Refusal};

type SessionId = [u8; SESSION_ID_LEN];

/// The token session of one VPN session.
#[derive(Clone, Copy)]
struct Held {
    id: SessionId,
    initial: u64,
}

/// Session tokens of one endpoint.
pub struct SessionTokens {
    key: TokenKey,
    /// By link and session serial (the [`AuthRequest::session`]).
    held: Mutex<HashMap<(Link, u64), Held>>,
    /// Single sign-on: the provider's user and groups of each token session, for a reconnect
    /// (the provider is not asked again). Only on the gateway that saw the web login.
    sso: Mutex<HashMap<SessionId, (Grant, u64)>>,
}

impl SessionTokens {
    pub fn new(key: TokenKey) -> SessionTokens {
        SessionTokens {
            key,
            held: Mutex::new(HashMap::new()),
            sso: Mutex::new(HashMap::new()),
        }
    }

    /// A real login succeeded (password, TOTP or web login): a new token session. `sso`:
    /// the provider's grant, kept for reconnects.
    pub fn issue(&self, link: Link, req: &AuthRequest, sso: Option<Grant>, pending: &Pending) {
        let now = unix_now();
        let held = Held {
            id: self.key.new_session_id(),
            initial: now,
        };
        if let Some(g) = sso {
            let mut m = lock(&self.sso);
            let life = self.key.lifetime_secs;
            m.retain(|_, (_, initial)| initial.saturating_add(life) > now);
            m.insert(held.id, (g, now));
        }
        self.hold(link, req.session, held, now);
        pending.issue_token(IssuedToken(self.key.mint(
            &req.username,
            held.id,
            held.initial,
            now,
        )));
    }

    /// A renegotiation checked by its password: the session's token is renewed (none if the
    /// session holds none).
    pub fn renew(&self, link: Link, req: &AuthRequest, pending: &Pending) {
        let held = lock(&self.held).get(&(link, req.session)).copied();
        if let Some(h) = held {
            pending.issue_token(IssuedToken(self.key.mint(
                &req.username,
                h.id,
                h.initial,
                unix_now(),
            )));
        }
    }

    /// The client sent `token` as its password. A renegotiation needs its own session's
    /// token; a new connection (a reconnect) takes over the token's session. `Ok` with the
    /// claims and, for a web login, the grant it resumes.
    pub fn check(
        &self,
        link: Link,
        req: &AuthRequest,
        token: &str,
    ) -> Result<(Claims, Option<Grant>), Refusal> {
        let now = unix_now();
        let claims = self
            .key
            .verify(&req.username, token, now)
            .map_err(refusal)?;
        if !req.initial {
            let held = lock(&self.held).get(&(link, req.session)).copied();
            if held.map(|h| h.id) != Some(claims.session_id) {
                return Err(Refusal::new(
                    FailureCode::TokenInvalid,
                    "SESSION:session token of another session",
                ));
            }
            return Ok((claims, None));
        }
        let sso = lock(&self.sso)
            .get(&claims.session_id)
            .map(|(g, _)| g.clone());
        Ok((claims, sso))
    }

    /// A token was accepted ([`SessionTokens::check`]): the session holds the token's session from
    /// now on, and gets a renewed token.
    pub fn accepted(&self, link: Link, req: &AuthRequest, claims: &Claims, pending: &Pending) {
        let now = unix_now();
        let held = Held {
            id: claims.session_id,
            initial: claims.initial,
        };
        self.hold(link, req.session, held, now);
        pending.issue_token(IssuedToken(self.key.mint(
            &req.username,
            held.id,
            held.initial,
            now,
        )));
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
