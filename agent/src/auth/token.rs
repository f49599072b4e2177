//! Session tokens in the manner of OpenVPN's `auth-gen-token`: after a login the server
//! pushes `auth-token <token>`, and the client sends the token instead of its password on
//! every renegotiation, so these ask the user nothing and cost no directory bind or web
//! login. A token is an HMAC-SHA256 (keyed by `auth.token_secret_file`, which gateways can
//! share) over the user name it was issued to and its issue and expiry times:
//!
//! `SESS_ID_AT_` base64url( version (1) | issued (8, BE) | expires (8, BE) | HMAC (32) )
//!
//! The user name is not in the token: the client sends it next to the token, and the HMAC
//! binds them. The prefix is OpenVPN's, so clients treat it as a token.
//!
//! Not wired yet (issue 15, session tokens): nothing mints or checks tokens in a running
//! gateway; this is the tested primitive the authenticator will use.
use base64::Engine as _;
use ring::hmac;

/// OpenVPN's session-token prefix.
pub const PREFIX: &str = "SESS_ID_AT_";
const VERSION: u8 = 1;
const BODY: usize = 1 + 8 + 8;

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a session token")]
    Malformed,
    /// Another secret (another gateway's, or the secret was changed), another user, or
    /// tampered with.
    #[error("session token not valid")]
    Invalid,
    #[error("session token expired")]
    Expired,
}

/// Mints and checks tokens with one secret.
pub struct TokenKey {
    key: hmac::Key,
    lifetime_secs: u64,
}

impl TokenKey {
    /// `secret`: at least 32 bytes (the first line of the secret file).
    pub fn new(secret: &[u8], lifetime_secs: u64) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_secs,
        }
    }

    /// The secret file's first line (config validation checks its length).
    pub fn from_file(path: &std::path::Path, lifetime_secs: u64) -> anyhow::Result<TokenKey> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading auth.token_secret_file {}", path.display()))?;
        let secret = text.lines().next().unwrap_or("").trim();
        anyhow::ensure!(
            secret.len() >= 32,
            "auth.token_secret_file {}: the secret (first line) must have at least 32 characters",
            path.display()
        );
        Ok(TokenKey::new(secret.as_bytes(), lifetime_secs))
    }

    /// A token for `username`, issued at `now` (Unix seconds).
    pub fn mint(&self, username: &str, now: u64) -> String {
        let mut body = Vec::with_capacity(BODY + 32);
        body.push(VERSION);
        body.extend_from_slice(&now.to_be_bytes());
        body.extend_from_slice(&now.saturating_add(self.lifetime_secs).to_be_bytes());
        let tag = hmac::sign(&self.key, &signed(username, &body));
        body.extend_from_slice(tag.as_ref());
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
        )
    }

    /// Checks `token` for `username` at `now`; `Ok` with the time it was issued.
    pub fn verify(&self, username: &str, token: &str, now: u64) -> Result<u64, TokenError> {
        let raw = token
            .strip_prefix(PREFIX)
            .and_then(|t| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
            })
            .filter(|b| b.len() == BODY + 32 && b[0] == VERSION)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = raw.split_at(BODY);
        // ring's verify compares in constant time.
        hmac::verify(&self.key, &signed(username, body), tag).map_err(|_| TokenError::Invalid)?;
        let issued = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        let expires = u64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(issued)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_holds_for_its_user_until_it_expires() {
        let k = TokenKey::new(SECRET, 3600);
        let t = k.mint("alice", 1_000);
        assert!(is_token(&t) && t.len() < 100, "{t}");
        assert_eq!(k.verify("alice", &t, 1_000), Ok(1_000));
        assert_eq!(k.verify("alice", &t, 4_599), Ok(1_000));
        assert_eq!(k.verify("alice", &t, 4_600), Err(TokenError::Expired));
        assert_eq!(k.verify("bob", &t, 1_000), Err(TokenError::Invalid));
    }

    #[test]
    fn another_secret_or_a_changed_byte_is_refused() {
        let k = TokenKey::new(SECRET, 3600);
        let other = TokenKey::new(b"another gateway's secret, 32 bytes", 3600);
        let t = k.mint("alice", 1_000);
        assert_eq!(other.verify("alice", &t, 1_000), Err(TokenError::Invalid));
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t[PREFIX.len()..])
            .unwrap();
        // A later expiry, signed with the old tag.
        raw[16] ^= 0x40;
        let forged = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        assert_eq!(k.verify("alice", &forged, 1_000), Err(TokenError::Invalid));
        assert_eq!(
            k.verify("alice", "SESS_ID_AT_!!", 1_000),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            k.verify("alice", "hunter2", 1_000),
            Err(TokenError::Malformed)
        );
    }
}
