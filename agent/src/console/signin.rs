//! The sign-in forms' CSRF guard (double submit). A sign-in form page sets a random value in a
//! `SameSite=Strict` cookie and in a hidden field; a sign-in is taken only when both arrive and
//! match. A page elsewhere cannot read the value nor make the browser send the cookie, so it
//! cannot sign a victim into the attacker's account (login CSRF).
use axum::http::{header, HeaderMap, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};

use super::sessions::same_token;
use super::state::cookie_named;

/// One sign-in form: its cookie, scoped to the form's path.
pub struct SigninGuard {
    cookie: &'static str,
    path: &'static str,
}

/// The administrators' `/login`.
pub const ADMIN: SigninGuard = SigninGuard {
    cookie: "portcullis_login",
    path: "/login",
};

/// The self-service portal's `/portal/login`.
pub const PORTAL: SigninGuard = SigninGuard {
    cookie: "portcullis_portal_login",
    path: "/portal/login",
};

/// A fresh value for one form: the hidden field's, and the `Set-Cookie` header that carries it.
pub struct Issued {
    pub value: String,
    pub set_cookie: HeaderValue,
}

impl SigninGuard {
    pub fn issue(&self) -> Issued {
        let mut b = [0u8; 16];
        SystemRandom::new()
            .fill(&mut b)
            .expect("the system random source");
        let value: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let set_cookie = format!(
            "{}={value}; Path={}; Secure; HttpOnly; SameSite=Strict; Max-Age=3600",
            self.cookie, self.path
        );
        Issued {
            value,
            // Hex and fixed words only: always a valid header value.
            set_cookie: HeaderValue::from_str(&set_cookie).expect("an ASCII cookie"),
        }
    }

    /// Whether the form's hidden `field` matches the cookie this guard set.
    pub fn check(&self, headers: &HeaderMap, field: &str) -> bool {
        cookie_named(headers, self.cookie).is_some_and(|c| !c.is_empty() && same_token(&c, field))
    }

    /// Adds the cookie of `issued` to a response's headers.
    pub fn set(headers: &mut HeaderMap, issued: &Issued) {
        headers.append(header::SET_COOKIE, issued.set_cookie.clone());
    }
}
