//! Console logins: a random session token (the cookie) and a random CSRF token per login,
//! both ending at a fixed expiry. Time is passed in, so expiry is testable.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::config::Role;

/// The session cookie's name.
pub const COOKIE: &str = "portcullis_console";

/// One logged-in administrator.
#[derive(Clone, Debug)]
pub struct Session {
    pub admin: String,
    pub role: Role,
    /// Sent back in every state-changing form; compared with the session's.
    pub csrf: String,
    pub expires: Instant,
}

/// Live sessions by token; bounded so a flood of logins cannot grow memory without end.
pub struct Sessions {
    lifetime: Duration,
    by_token: HashMap<String, Session>,
    rng: SystemRandom,
}

/// Most sessions kept at once; the oldest is dropped past it.
const MAX_SESSIONS: usize = 1024;

fn token(rng: &SystemRandom) -> String {
    let mut b = [0u8; 32];
    rng.fill(&mut b).expect("the system random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The hidden field of every state-changing form.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Equal-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            by_token: HashMap::new(),
            rng: SystemRandom::new(),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session; returns its token.
    pub fn start(&mut self, admin: &str, role: Role, now: Instant) -> String {
        self.by_token.retain(|_, s| s.expires > now);
        if self.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        let t = token(&self.rng);
        self.by_token.insert(
            t.clone(),
            Session {
                admin: admin.to_owned(),
                role,
                csrf: token(&self.rng),
                expires: now + self.lifetime,
            },
        );
        t
    }

    /// The live session of `token`; an expired one is removed.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Session> {
        let s = self.by_token.get(token)?;
        if s.expires <= now {
            self.by_token.remove(token);
            return None;
        }
        Some(s.clone())
    }

    pub fn end(&mut self, token: &str) -> Option<Session> {
        self.by_token.remove(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_at_their_expiry() {
        let mut s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let t = s.start("ann", Role::Operator, t0);
        assert_eq!(t.len(), 64);
        let got = s.get(&t, t0 + Duration::from_secs(59)).unwrap();
        assert_eq!((got.admin.as_str(), got.role), ("ann", Role::Operator));
        assert_ne!(got.csrf, t);
        assert!(s.get(&t, t0 + Duration::from_secs(60)).is_none());
        assert!(s.get(&t, t0).is_none(), "an expired session is gone");
    }

    #[test]
    fn logout_ends_the_session_and_tokens_differ() {
        let mut s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a = s.start("ann", Role::ReadOnly, t0);
        let b = s.start("ann", Role::ReadOnly, t0);
        assert_ne!(a, b);
        assert!(s.end(&a).is_some());
        assert!(s.get(&a, t0).is_none());
        assert!(s.get(&b, t0).is_some());
        assert!(same_token(&a, &a.clone()) && !same_token(&a, &b) && !same_token(&a, "x"));
    }
}
