//! Session tokens in the manner of OpenVPN's `auth-gen-token`: after a login the server
//! pushes `auth-token <token>`, and the client sends the token instead of its password on
//! every renegotiation and on reconnects while it holds one, so these ask the user nothing and
//! cost no directory bind or web login. The layout is OpenVPN's (`auth_token.c`):
//!
//! `SESS_ID_AT_` base64url( session id (12) | initial (8, BE) | renewed (8, BE) | HMAC (32) )
//!
//! - the session id is random at the login and kept by every renewal and reconnect, so a
//!   renegotiation can check that the token is its session's own;
//! - `initial` is the time of the real login: the token dies `lifetime` after it, however
//!   often it was renewed (then the user logs in again);
//! - `renewed` is when this token was minted: the server mints a new one at each
//!   renegotiation, so a token not renewed for two renewal periods (a client away that long)
//!   is stale.
//!
//! The HMAC-SHA256 is keyed by `auth.token_secret_file` (the same file on every gateway of a
//! fleet, so a client reconnecting to another gateway keeps its session) over the body and the
//! user name the client sends next to the token.
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// OpenVPN's session-token prefix.
pub const PREFIX: &str = "SESS_ID_AT_";
pub const SESSION_ID_LEN: usize = 12;
const BODY: usize = SESSION_ID_LEN + 8 + 8;
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

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub session_id: [u8; SESSION_ID_LEN],
    /// When the user really logged in (Unix seconds).
    pub initial: u64,
    pub renewed: u64,
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

    /// A token for `username` in session `session_id` (logged in at `initial`), minted `now`.
    pub fn mint(
        &self,
        username: &str,
        session_id: [u8; SESSION_ID_LEN],
        initial: u64,
        now: u64,
    ) -> String {
        let mut body = Vec::with_capacity(BODY + 32);
        body.extend_from_slice(&session_id);
        body.extend_from_slice(&initial.to_be_bytes());
        body.extend_from_slice(&now.to_be_bytes());
        let tag = hmac::sign(&self.key, &signed(username, &body));
        body.extend_from_slice(tag.as_ref());
        format!("{PREFIX}{}", B64.encode(body))
    }

    /// Checks `token` for `username` at `now` (Unix seconds).
    pub fn verify(&self, username: &str, token: &str, now: u64) -> Result<Claims, TokenError> {
        let raw = token
            .strip_prefix(PREFIX)
            .and_then(|t| B64.decode(t).ok())
            .filter(|b| b.len() == BODY + 32)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = raw.split_at(BODY);
        // ring's verify compares in constant time.
        hmac::verify(&self.key, &signed(username, body), tag).map_err(|_| TokenError::Invalid)?;
        let session_id = body[..SESSION_ID_LEN].try_into().expect("12 bytes");
        let initial = u64::from_be_bytes(body[12..20].try_into().expect("8 bytes"));
        let renewed = u64::from_be_bytes(body[20..28].try_into().expect("8 bytes"));
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
        })
    }
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

    #[test]
    fn a_token_holds_for_its_user_until_it_expires_or_goes_stale() {
        let k = TokenKey::new(SECRET, 3600, 600);
        let t = k.mint("alice", SID, 1_000, 1_000);
        // Short enough for a pushed option (256 bytes) and OpenVPN's password field.
        assert!(is_token(&t) && t.len() == PREFIX.len() + 80, "{t}");
        let c = k.verify("alice", &t, 1_000).unwrap();
        assert_eq!((c.session_id, c.initial, c.renewed), (SID, 1_000, 1_000));
        assert!(k.verify("alice", &t, 2_199).is_ok());
        // Not renewed for two renewal periods: stale.
        assert_eq!(k.verify("alice", &t, 2_200), Err(TokenError::Expired));
        // Renewed, it lives to the lifetime counted from the real login, not longer.
        let r = k.mint("alice", SID, 1_000, 4_000);
        assert_eq!(k.verify("alice", &r, 4_599).unwrap().initial, 1_000);
        assert_eq!(k.verify("alice", &r, 4_600), Err(TokenError::Expired));
        assert_eq!(k.verify("bob", &t, 1_000), Err(TokenError::Invalid));
    }

    #[test]
    fn another_secret_a_changed_byte_or_a_future_token_is_refused() {
        let k = TokenKey::new(SECRET, 3600, 600);
        let other = TokenKey::new(b"another gateway's secret, 32 bytes", 3600, 600);
        let t = k.mint("alice", SID, 1_000, 1_000);
        assert_eq!(other.verify("alice", &t, 1_000), Err(TokenError::Invalid));
        let mut raw = B64.decode(&t[PREFIX.len()..]).unwrap();
        // A later login time, signed with the old tag.
        raw[19] ^= 0x40;
        let forged = format!("{PREFIX}{}", B64.encode(raw));
        assert_eq!(k.verify("alice", &forged, 1_000), Err(TokenError::Invalid));
        let future = k.mint("alice", SID, 1_000, 5_000);
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
