//! Session tokens in the manner of OpenVPN's `auth-gen-token`: after a login the server
//! pushes `auth-token <token>` (and `auth-token-user <base64 name>`, the name to send with
//! it), and the client sends the token instead of its password on every renegotiation and on
//! reconnects while it holds one, so these ask the user nothing and cost no directory bind or
//! web login. OpenVPN's layout (`auth_token.c`), with what the login granted after the times:
//!
//! `SESS_ID_AT_` base64url( session id (12) | initial (8, BE) | renewed (8, BE) |
//!   kind (1) | user (1 + n) | groups (1 + Σ (1 + n)) | HMAC (32) )
//!
//! - the session id is random at the login and kept by every renewal and reconnect, so a
//!   renegotiation can check that the token is its session's own, and an operator can revoke
//!   it ([`super::sessions`]);
//! - `initial` is the time of the real login: the token dies `lifetime` after it, however
//!   often it was renewed (then the user logs in again);
//! - `renewed` is when this token was minted: the server mints a new one at each
//!   renegotiation, so a token not renewed for two renewal periods (a client away that long)
//!   is stale;
//! - `kind`, `user`, `groups`: how the user logged in and what that granted, so any gateway
//!   holding the secret (another one of the fleet, or this one after a restart) can admit a
//!   reconnect without the gateway that saw the login ([`Kind`]).
//!
//! The HMAC-SHA256 is keyed by `auth.token_secret_file` (the same file on every gateway of a
//! fleet) over the body and the user name the client sends next to the token. The body is
//! signed, not encrypted: its holder (the client) can read its own user name and groups.
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// OpenVPN's session-token prefix.
pub const PREFIX: &str = "SESS_ID_AT_";
pub const SESSION_ID_LEN: usize = 12;
/// Session id and the two times.
const FIXED: usize = SESSION_ID_LEN + 8 + 8;
const TAG: usize = 32;
/// Longest token: `auth-token <token>` must fit a pushed option (255 bytes, and the
/// OpenVPN 3 core reads at most 256 characters of it).
pub const MAX_TOKEN_LEN: usize = 240;
/// Longest raw token (base64url without padding: 4 characters per 3 bytes).
const MAX_RAW: usize = (MAX_TOKEN_LEN - PREFIX.len()) * 3 / 4;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a session token")]
    Malformed,
    /// Another secret (another gateway's, or the secret was changed), another user, tampered
    /// with, or another session's token on a renegotiation.
    #[error("session token not valid")]
    Invalid,
    #[error("session token expired")]
    Expired,
}

/// How the token's user logged in, so what a reconnect with it must check again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory password (and code): a reconnect reads the entry again (disabled or
    /// removed: refused; today's groups).
    Directory = 1,
    /// A web login whose groups are in the token: no provider can be asked again, so the
    /// groups are the login's until the token's lifetime.
    Sso = 2,
    /// A web login whose groups did not fit: they are kept by the gateway that saw the login
    /// (elsewhere, or after a restart, the user logs in again).
    SsoHeldLocally = 3,
    /// The certificate (and the client-connect hook) only.
    Certificate = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Directory,
            2 => Kind::Sso,
            3 => Kind::SsoHeldLocally,
            4 => Kind::Certificate,
            _ => return None,
        })
    }
}

/// What a login granted, carried in its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub kind: Kind,
    /// The user the login proved (the provider's user for a web login; empty for a
    /// certificate only).
    pub user: String,
    /// A web login's groups ([`Kind::Sso`]); empty otherwise.
    pub groups: Vec<String>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub session_id: [u8; SESSION_ID_LEN],
    /// When the user really logged in (Unix seconds).
    pub initial: u64,
    pub renewed: u64,
    pub granted: Granted,
}

/// Mints and checks tokens with one secret.
pub struct TokenKey {
    key: hmac::Key,
    /// A token dies this long after the real login.
    pub lifetime_secs: u64,
    /// Renewed at every renegotiation; stale after twice this without a renewal.
    pub renewal_secs: u64,
    rng: SystemRandom,
}

impl TokenKey {
    /// `secret`: at least 32 bytes (the first line of the secret file).
    pub fn new(secret: &[u8], lifetime_secs: u64, renewal_secs: u64) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_secs,
            renewal_secs,
            rng: SystemRandom::new(),
        }
    }

    /// The secret file's first line (config validation checks its length too).
    pub fn from_file(
        path: &std::path::Path,
        lifetime_secs: u64,
        renewal_secs: u64,
    ) -> anyhow::Result<TokenKey> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading auth.token_secret_file {}", path.display()))?;
        let secret = first_line(&text);
        anyhow::ensure!(
            secret.len() >= 32,
            "auth.token_secret_file {}: the secret (first line) must have at least 32 characters (e.g. `openssl rand -base64 48`)",
            path.display()
        );
        Ok(TokenKey::new(
            secret.as_bytes(),
            lifetime_secs,
            renewal_secs,
        ))
    }

    /// A new random session id, for a real login.
    pub fn new_session_id(&self) -> [u8; SESSION_ID_LEN] {
        let mut id = [0; SESSION_ID_LEN];
        // SystemRandom fails only without a kernel RNG, where nothing else works either.
        self.rng.fill(&mut id).expect("system random");
        id
    }

    /// A token for `username` (the name the client sends with it) in session `session_id`
    /// (logged in at `initial`), minted `now`. A web login's groups that make the token too
    /// long are left out ([`Kind::SsoHeldLocally`]); `None` only for a user name too long for
    /// any token.
    pub fn mint(
        &self,
        username: &str,
        session_id: [u8; SESSION_ID_LEN],
        initial: u64,
        now: u64,
        granted: &Granted,
    ) -> Option<(String, Kind)> {
        let mut body = Vec::with_capacity(MAX_RAW);
        body.extend_from_slice(&session_id);
        body.extend_from_slice(&initial.to_be_bytes());
        body.extend_from_slice(&now.to_be_bytes());
        let mut kind = granted.kind;
        let fixed = body.len();
        if !encode_grant(&mut body, kind, &granted.user, &granted.groups) {
            if kind != Kind::Sso {
                return None;
            }
            body.truncate(fixed);
            kind = Kind::SsoHeldLocally;
            if !encode_grant(&mut body, kind, &granted.user, &[]) {
                return None;
            }
        }
        let tag = hmac::sign(&self.key, &signed(username, &body));
        body.extend_from_slice(tag.as_ref());
        Some((format!("{PREFIX}{}", B64.encode(body)), kind))
    }

    /// Checks `token` for `username` at `now` (Unix seconds).
    pub fn verify(&self, username: &str, token: &str, now: u64) -> Result<Claims, TokenError> {
        let raw = token
            .strip_prefix(PREFIX)
            .filter(|t| t.len() <= MAX_TOKEN_LEN)
            .and_then(|t| B64.decode(t).ok())
            .filter(|b| b.len() >= FIXED + 3 + TAG)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = raw.split_at(raw.len() - TAG);
        // ring's verify compares in constant time.
        hmac::verify(&self.key, &signed(username, body), tag).map_err(|_| TokenError::Invalid)?;
        let session_id = body[..SESSION_ID_LEN].try_into().expect("12 bytes");
        let initial = u64::from_be_bytes(body[12..20].try_into().expect("8 bytes"));
        let renewed = u64::from_be_bytes(body[20..28].try_into().expect("8 bytes"));
        // Signed by us, so a body that does not parse was minted by another version.
        let granted = decode_grant(&body[FIXED..]).ok_or(TokenError::Invalid)?;
        // Minted by us (the HMAC holds), so times out of order mean a clock gone backwards by
        // more than a minute on one gateway of the fleet: not trusted.
        if initial > renewed || renewed > now.saturating_add(60) {
            return Err(TokenError::Invalid);
        }
        if now >= initial.saturating_add(self.lifetime_secs)
            || now >= renewed.saturating_add(self.renewal_secs.saturating_mul(2))
        {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            session_id,
            initial,
            renewed,
            granted,
        })
    }
}

/// Appends kind, user and groups, each string length-prefixed; `false` when the token would
/// pass [`MAX_TOKEN_LEN`] (or a string 255 bytes).
fn encode_grant(body: &mut Vec<u8>, kind: Kind, user: &str, groups: &[String]) -> bool {
    let put = |s: &str, body: &mut Vec<u8>| match u8::try_from(s.len()) {
        Ok(n) => {
            body.push(n);
            body.extend_from_slice(s.as_bytes());
            true
        }
        Err(_) => false,
    };
    body.push(kind as u8);
    if !put(user, body) {
        return false;
    }
    let Ok(n) = u8::try_from(groups.len()) else {
        return false;
    };
    body.push(n);
    groups.iter().all(|g| put(g, body)) && body.len() + TAG <= MAX_RAW
}

fn decode_grant(mut b: &[u8]) -> Option<Granted> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.len() >= n).then(|| b.split_at(n))?;
        *b = t;
        Some(h)
    }
    fn string(b: &mut &[u8]) -> Option<String> {
        let n = take(b, 1)?[0] as usize;
        String::from_utf8(take(b, n)?.to_vec()).ok()
    }
    let kind = Kind::from_u8(take(&mut b, 1)?[0])?;
    let user = string(&mut b)?;
    let n = take(&mut b, 1)?[0];
    let groups = (0..n).map(|_| string(&mut b)).collect::<Option<Vec<_>>>()?;
    b.is_empty().then_some(Granted { kind, user, groups })
}

/// The secret: the file's first line, trimmed.
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// The signed bytes: the token body, then the user name, length-prefixed (no two pairs of
/// name and body share them).
fn signed(username: &str, body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&(username.len() as u64).to_be_bytes());
    v.extend_from_slice(username.as_bytes());
    v
}

/// Whether a password is a session token (rather than a password to check).
pub fn is_token(password: &str) -> bool {
    password.starts_with(PREFIX)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SID: [u8; 12] = *b"session-id-1";

    fn dir(user: &str) -> Granted {
        Granted {
            kind: Kind::Directory,
            user: user.into(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_token_holds_for_its_user_until_it_expires_or_goes_stale() {
        let k = TokenKey::new(SECRET, 3600, 600);
        let (t, kind) = k.mint("alice", SID, 1_000, 1_000, &dir("alice")).unwrap();
        assert_eq!(kind, Kind::Directory);
        assert!(is_token(&t) && t.len() <= MAX_TOKEN_LEN, "{t}");
        let c = k.verify("alice", &t, 1_000).unwrap();
        assert_eq!((c.session_id, c.initial, c.renewed), (SID, 1_000, 1_000));
        assert_eq!(c.granted, dir("alice"));
        assert!(k.verify("alice", &t, 2_199).is_ok());
        // Not renewed for two renewal periods: stale.
        assert_eq!(k.verify("alice", &t, 2_200), Err(TokenError::Expired));
        // Renewed, it lives to the lifetime counted from the real login, not longer.
        let (r, _) = k.mint("alice", SID, 1_000, 4_000, &dir("alice")).unwrap();
        assert_eq!(k.verify("alice", &r, 4_599).unwrap().initial, 1_000);
        assert_eq!(k.verify("alice", &r, 4_600), Err(TokenError::Expired));
        assert_eq!(k.verify("bob", &t, 1_000), Err(TokenError::Invalid));
    }

    /// A web login's user and groups travel in the token, so a gateway that never saw the
    /// login admits it; groups too long for a pushed option stay with the gateway instead.
    #[test]
    fn a_web_logins_grant_travels_in_the_token_when_it_fits() {
        let k = TokenKey::new(SECRET, 3600, 600);
        let sso = Granted {
            kind: Kind::Sso,
            user: "alice@example.com".into(),
            groups: vec!["eng".into(), "vpn-finance-readers".into()],
        };
        let (t, kind) = k
            .mint("alice@example.com", SID, 1_000, 1_000, &sso)
            .unwrap();
        assert_eq!(kind, Kind::Sso);
        let elsewhere = TokenKey::new(SECRET, 3600, 600);
        let c = elsewhere.verify("alice@example.com", &t, 1_001).unwrap();
        assert_eq!(c.granted, sso);
        // Many groups (a provider's GUIDs): the token stays short enough to be pushed.
        let many = Granted {
            groups: (0..8)
                .map(|i| format!("{i:08}-0000-0000-0000-000000000000"))
                .collect(),
            ..sso.clone()
        };
        let (t, kind) = k
            .mint("alice@example.com", SID, 1_000, 1_000, &many)
            .unwrap();
        assert_eq!(kind, Kind::SsoHeldLocally);
        assert!(t.len() <= MAX_TOKEN_LEN);
        let c = k.verify("alice@example.com", &t, 1_001).unwrap();
        assert_eq!(
            (
                c.granted.kind,
                c.granted.user.as_str(),
                c.granted.groups.len()
            ),
            (Kind::SsoHeldLocally, "alice@example.com", 0)
        );
        // A user name no token can hold.
        assert!(k
            .mint("x", SID, 1_000, 1_000, &dir(&"x".repeat(300)))
            .is_none());
    }

    #[test]
    fn another_secret_a_changed_byte_or_a_future_token_is_refused() {
        let k = TokenKey::new(SECRET, 3600, 600);
        let other = TokenKey::new(b"another gateway's secret, 32 bytes", 3600, 600);
        let sso = Granted {
            kind: Kind::Sso,
            user: "alice".into(),
            groups: vec!["eng".into()],
        };
        let (t, _) = k.mint("alice", SID, 1_000, 1_000, &sso).unwrap();
        assert_eq!(other.verify("alice", &t, 1_000), Err(TokenError::Invalid));
        let raw = B64.decode(&t[PREFIX.len()..]).unwrap();
        // Every byte matters: a later login time, another kind, another group.
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x04;
            let forged = format!("{PREFIX}{}", B64.encode(r));
            assert_eq!(
                k.verify("alice", &forged, 1_000),
                Err(TokenError::Invalid),
                "byte {i}"
            );
        }
        let (future, _) = k.mint("alice", SID, 1_000, 5_000, &sso).unwrap();
        assert_eq!(k.verify("alice", &future, 1_000), Err(TokenError::Invalid));
        assert_eq!(
            k.verify("alice", "SESS_ID_AT_!!", 1_000),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            k.verify("alice", "hunter2", 1_000),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn session_ids_are_random() {
        let k = TokenKey::new(SECRET, 3600, 600);
        assert_ne!(k.new_session_id(), k.new_session_id());
    }
}
